"""Builders of AdmissionReview requests, shared by the HTTP and end-to-end tests."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

FLYTE_LABELS = {"execution-id": "f3a1b2c4d5e6f7a8b9c0", "node-id": "n0"}
ECR_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flytesnacks/app:v1"


def flyte_pod(*images: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "f3a1b2c4d5e6f7a8b9c0-n0-0-",
            "labels": FLYTE_LABELS if labels is None else labels,
        },
        "spec": {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)], **spec},
    }


def review_for(
    pod: Any,
    *,
    operation: str = "CREATE",
    kind: str = "Pod",
    dry_run: bool = False,
    namespace: str = "flytesnacks-development",
    uid: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:flyte:flytepropeller"},
            "dryRun": dry_run,
            "object": pod,
        },
    }


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    patch = response.get("patch")
    return orjson.loads(base64.b64decode(patch)) if patch else []
