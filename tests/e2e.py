"""Helpers for end-to-end tests: register our webhook with the real apiserver and wait until it bites.

The apiserver picks up a new or changed MutatingWebhookConfiguration asynchronously (an
informer), so every registration here is followed by a probe: a ``dryRun=All`` pod create
that is retried until the webhook's effect (or, for a webhook that is down, its failure)
shows. Each registration is scoped to namespaces carrying its own label, so registrations
of different tests never act on each other's pods.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

from tests.controlplane import delete_mutating_webhook, register_mutating_webhook

SCOPE_LABEL = "e2e.pullsecrets-webhook/scope"
FLYTE_OBJECT_SELECTOR = {
    "matchExpressions": [
        {"key": "execution-id", "operator": "Exists"},
        {"key": "node-id", "operator": "Exists"},
        {"key": "pullsecrets-injection", "operator": "NotIn", "values": ["disabled"]},
    ]
}


def scoped_namespace_selector(scope: str) -> dict[str, Any]:
    return {
        "matchExpressions": [
            {"key": SCOPE_LABEL, "operator": "In", "values": [scope]},
            {"key": "pullsecrets-injection", "operator": "NotIn", "values": ["disabled"]},
        ]
    }


def pod_manifest(
    *images: str,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    init_images: tuple[str, ...] = (),
    pull_secrets: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)],
    }
    if init_images:
        spec["initContainers"] = [{"name": f"i{i}", "image": img} for i, img in enumerate(init_images)]
    if pull_secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name or f"p-{uuid.uuid4().hex[:8]}",
            "labels": {"execution-id": "e2e", "node-id": "n0"} if labels is None else labels,
        },
        "spec": spec,
    }


def pull_secret_names(pod: Any) -> list[str]:
    """Names in spec.imagePullSecrets of a pod returned by the client (model or dict)."""
    if isinstance(pod, dict):
        return [s.get("name") for s in (pod.get("spec") or {}).get("imagePullSecrets") or []]
    return [s.name for s in pod.spec.image_pull_secrets or []]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "",
    *,
    interval: float = 0.2,
    ignore: tuple[type[Exception], ...] = (),
) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. ``ignore``: errors that mean "not yet"."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except ignore as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what or predicate}{f' (last: {last})' if last else ''}"
    )


def dry_run_create(core: kubernetes.client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """Create with dryRun=All and return the pod the apiserver would have stored, as a dict."""
    returned = core.create_namespaced_pod(namespace, pod, dry_run="All")
    return core.api_client.sanitize_for_serialization(returned)


def wait_for_injection(
    core: kubernetes.client.CoreV1Api, namespace: str, image: str, secret: str, timeout: float = 30.0
) -> None:
    """Block until a dry-run Flyte pod with ``image`` in ``namespace`` comes back with ``secret``."""

    def injected() -> bool:
        return secret in pull_secret_names(dry_run_create(core, namespace, pod_manifest(image)))

    wait_until(injected, timeout, what=f"{secret} injected in {namespace}")


def wait_for_rejection(core: kubernetes.client.CoreV1Api, namespace: str, timeout: float = 30.0) -> str:
    """Block until a dry-run Flyte pod create fails; returns the apiserver's message."""
    message: list[str] = []

    def rejected() -> bool:
        try:
            dry_run_create(core, namespace, pod_manifest("busybox"))
        except ApiException as exc:
            message.append(exc.body or str(exc))
            return True
        return False

    wait_until(rejected, timeout, what=f"a rejected pod create in {namespace}")
    return message[-1]


@contextmanager
def registered(
    api_client: kubernetes.client.ApiClient,
    url: str,
    ca_pem: bytes,
    *,
    scope: str | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """Register a scoped webhook for the duration of a block; yields the scope label value."""
    scope = scope or uuid.uuid4().hex[:10]
    name = name or f"pullsecrets-{scope}"
    kwargs.setdefault("namespace_selector", scoped_namespace_selector(scope))
    kwargs.setdefault("object_selector", FLYTE_OBJECT_SELECTOR)
    kwargs.setdefault("webhook_name", f"{scope}.pullsecrets.flyte.test")
    register_mutating_webhook(api_client, name, url, ca_pem, **kwargs)
    try:
        yield scope
    finally:
        delete_mutating_webhook(api_client, name)
