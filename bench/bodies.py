"""Request bodies and rules files for the benchmark, generated (no fixtures to keep in sync).

The pods follow examples/pods/*.yaml and what flytepropeller actually submits, as the apiserver hands
them to a mutating webhook: defaults filled in, the service-account token volume already added.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
# Images by registry; every one but the last two is covered by BASE_RULES.
IMAGES = (
    f"{ECR}/flytesnacks/app:v1",
    "ghcr.io/my-org/spark-jobs:3.5.1",
    "registry.gitlab.com/my-group/ml/ray:2.9.0-py311",
    "us-docker.pkg.dev/my-project/images/trainer:2024.05.1",
    "ubuntu:24.04",
    "localhost:5000/tools/wait-for:1.2",
    "quay.io/prometheus/node-exporter:v1.8.0",
    "cr.flyte.org/flyteorg/flytecopilot:v1.13.0",
)
BASE_RULES: list[dict[str, Any]] = [
    {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
    {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
    {"registry": "registry.gitlab.com/my-group", "secrets": ["gitlab-pull"]},
    {"registry": "docker.io", "secrets": ["dockerhub"]},
    {"registry": "*-docker.pkg.dev", "secrets": ["artifact-registry"]},
    {"registry": "localhost:5000", "secrets": ["local-registry"]},
]
# Glob shapes for filler rules, one per host label count the pods' images have (2, 3, 5 and 6), so
# that every image has to be checked against its share of them: the worst case for a label-count index.
_GLOB_SHAPES = (
    "*.dkr.ecr.zz-region-{i}.amazonaws.com",  # 6 labels, like the ECR host
    "team{i}-*.pkg.dev",  # 3 labels, like us-docker.pkg.dev and registry.gitlab.com
    "*.unit{i}.corp.example.com",  # 5 labels
    "reg{i}-*.io",  # 2 labels, like ghcr.io and docker.io
)


def rules(count: int) -> dict[str, Any]:
    """A rules file with ``count`` rules: the example rules, then half exact hosts and half globs."""
    out = [dict(r) for r in BASE_RULES[:count]]
    i = 0
    while len(out) < count:
        if i % 2 == 0:
            host = f"registry-{i}.corp.example.com"
            registry = host if i % 4 == 0 else f"{host}/team-{i}"
        else:
            registry = _GLOB_SHAPES[(i // 2) % len(_GLOB_SHAPES)].format(i=i)
        out.append({"registry": registry, "secrets": [f"filler-{i}"]})
        i += 1
    return {"rules": out}


def rules_yaml(count: int) -> str:
    return yaml.safe_dump(rules(count), sort_keys=False)


def _env(n: int, execution_id: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FLYTE_INTERNAL_EXECUTION_WORKFLOW", "value": "flytesnacks:development:workflows.example.wf"},
        {"name": "FLYTE_INTERNAL_EXECUTION_ID", "value": execution_id},
        {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
        {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
        {"name": "FLYTE_ATTEMPT_NUMBER", "value": "0"},
        {"name": "FLYTE_INTERNAL_TASK_PROJECT", "value": "flytesnacks"},
        {"name": "FLYTE_INTERNAL_TASK_DOMAIN", "value": "development"},
        {"name": "FLYTE_INTERNAL_TASK_NAME", "value": "workflows.example.say_hello"},
        {"name": "FLYTE_INTERNAL_TASK_VERSION", "value": "Ve6Zx3rGQmJ1n0c2Ykq8Ag"},
        {"name": "FLYTE_AWS_ENDPOINT", "value": "http://minio.flyte.svc.cluster.local:9000"},
    ]
    for k in range(len(env), n):
        env.append({"name": f"APP_SETTING_{k:03d}", "value": f"value-{k:03d}-" + "x" * 40})
    return env[:n] if n < len(env) else env


def _container(name: str, image: str, env_count: int, execution_id: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "args": [
            "pyflyte-fast-execute",
            "--additional-distribution",
            f"s3://my-s3-bucket/flytesnacks/development/{execution_id}/fast.tar.gz",
            "--dest-dir",
            "/root",
            "--",
            "pyflyte-execute",
            "--inputs",
            f"s3://my-s3-bucket/metadata/propeller/{execution_id}/n0/data/inputs.pb",
            "--output-prefix",
            f"s3://my-s3-bucket/metadata/propeller/{execution_id}/n0/data/0",
        ],
        "env": _env(env_count, execution_id),
        "resources": {"requests": {"cpu": "500m", "memory": "500Mi"}, "limits": {"cpu": "500m", "memory": "500Mi"}},
        "volumeMounts": [
            {"name": "kube-api-access-x7k2p", "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/sa"}
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "imagePullPolicy": "IfNotPresent",
    }


def pod(containers: int = 1, init_containers: int = 0, env_count: int = 10, secrets: list[str] | None = None) -> dict:
    """A Flyte task pod with ``containers`` containers whose images cycle through IMAGES."""
    execution_id = "f3a1b2c4d5e6f7a8b9c0"
    spec: dict[str, Any] = {
        "volumes": [
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    ],
                    "defaultMode": 420,
                },
            }
        ],
        "containers": [
            _container(
                f"{execution_id}-n0-0-c{i}" if i else f"{execution_id}-n0-0",
                IMAGES[i % len(IMAGES)],
                env_count,
                execution_id,
            )
            for i in range(containers)
        ],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init_containers:
        spec["initContainers"] = [
            _container(f"init-{i}", IMAGES[(i + 4) % len(IMAGES)], env_count, execution_id)
            for i in range(init_containers)
        ]
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{execution_id}-n0-0",
            "namespace": "flytesnacks-development",
            "labels": {
                "domain": "development",
                "execution-id": execution_id,
                "interruptible": "false",
                "node-id": "n0",
                "project": "flytesnacks",
                "shard-key": "21",
                "task-name": "workflows-example-say-hello",
                "workflow-name": "workflows-example-wf",
            },
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            "ownerReferences": [
                {
                    "apiVersion": "flyte.lyft.com/v1alpha1",
                    "kind": "flyteworkflow",
                    "name": execution_id,
                    "uid": "0b3f6a52-8d0e-4b8a-9f2c-3d1e5a7b9c11",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "finalizers": ["flyte/flytek8s"],
        },
        "spec": spec,
    }


def review(pod_obj: dict[str, Any], uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod_obj["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:flyte:flytepropeller",
                "uid": "6f1c4d2e-3b5a-4c7d-8e9f-0a1b2c3d4e5f",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:flyte", "system:authenticated"],
            },
            "object": pod_obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def small() -> bytes:
    """A plain python task pod: one ECR container."""
    return orjson.dumps(review(pod(containers=1)))


def large() -> bytes:
    """A wide pod: 20 containers and 3 init containers over all registries, long env lists (~50 KB)."""
    return orjson.dumps(review(pod(containers=20, init_containers=3, env_count=17)))


def unchanged() -> bytes:
    """The small pod once mutated: it already lists its secret, so the answer carries no patch."""
    return orjson.dumps(review(pod(containers=1, secrets=["ecr-pull"])))


def with_containers(n: int) -> bytes:
    return orjson.dumps(review(pod(containers=n)))


BODIES = {"small": small, "large": large, "unchanged": unchanged}
EXPECT_PATCH = {"small": True, "large": True, "unchanged": False}
