"""The Helm chart: lint, rendering, schema, and install/upgrade/uninstall against the real apiserver.

Rendering tests need only the helm binary (marker ``helm``); the install tests also need the test
control plane (``e2e``). The end-to-end test points the chart's MutatingWebhookConfiguration at a
locally running webhook and creates pods through the apiserver.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from tests.controlplane import BinariesNotFoundError, ControlPlane, in_ci, locate_binaries
from tests.e2e import wait_for_injection
from tests.reviews import ECR_IMAGE, FLYTE_LABELS
from tests.webhook_process import REPO, WebhookProcess, free_port
from webhook import __version__
from webhook.cli import build_parser
from webhook.config import load_config_text

CHART = REPO / "charts" / "flyte-pullsecrets-webhook"
RELEASE = "fpw"
NAMESPACE = "flyte-pullsecrets"
FULLNAME = f"{RELEASE}-flyte-pullsecrets-webhook"
MWC_NAME = f"{FULLNAME}-{NAMESPACE}"
OPT_OUT = {"pullsecrets-injection": "disabled"}
# Only namespaces carrying this label (with the test's id) reach a webhook installed by these tests,
# so pods that other tests create in the shared control plane never see it.
SCOPE_LABEL = "fpw-chart-test"

pytestmark = pytest.mark.helm

SECRET_MODE = {"certs": {"mode": "secret", "secretName": "my-tls"}, "webhook": {"caBundle": "Y2E="}}
CERT_MANAGER = {"certs": {"mode": "cert-manager"}}


# --------------------------------------------------------------------------------------------------
# helm without a cluster
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The helm binary: the control-plane cache, $TEST_ASSET_HELM or PATH."""
    helm: Path | None = None
    try:
        helm = locate_binaries().helm
    except BinariesNotFoundError:
        explicit = os.environ.get("TEST_ASSET_HELM")
        found = explicit or shutil.which("helm")
        helm = Path(found) if found else None
    if helm is None:
        if in_ci():
            pytest.fail("helm binary not found: run `make control-plane` or set TEST_ASSET_HELM", pytrace=False)
        pytest.skip("helm binary not found: run `make control-plane` or set TEST_ASSET_HELM")
    return helm


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for helm runs without a cluster: private helm homes, an empty kubeconfig."""
    home = tmp_path_factory.mktemp("helm-home")
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    kubeconfig.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        KUBECONFIG=str(kubeconfig),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(helm_bin: Path, helm_home: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """``helm(*args, values=dict|None, check=True)``; values go through a temp file (-f)."""
    folder = tmp_path_factory.mktemp("values")

    def run(*args: str, values: dict[str, Any] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra: list[str] = []
        if values is not None:
            path = folder / f"{uuid.uuid4().hex}.yaml"
            path.write_text(yaml.safe_dump(values))
            extra = ["-f", str(path)]
        proc = subprocess.run([str(helm_bin), *args, *extra], env=helm_home, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
        return proc

    return run


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., list[dict[str, Any]]]:
    def run(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return parse_manifests(helm("template", RELEASE, str(CHART), "-n", namespace, values=values or {}).stdout)

    return run


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any] | None:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) <= 1, f"several {kind} objects: {[m['metadata']['name'] for m in matches]}"
    return matches[0] if matches else None


def get(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    obj = find(objects, kind, name)
    assert obj is not None, f"no {kind} {name or ''} in {sorted({o['kind'] for o in objects})}"
    return obj


def dig(obj: Any, path: str) -> Any:
    """``dig(o, "spec.template.spec.containers[0].args")``; keys with dots go in quotes."""
    for part in re.findall(r'"[^"]+"|[^.\[\]]+|\[\d+\]', path):
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part.strip('"')]
    return obj


def container(objects: list[dict[str, Any]], name: str = "webhook", init: bool = False) -> dict[str, Any]:
    spec = get(objects, "Deployment")["spec"]["template"]["spec"]
    containers = spec.get("initContainers" if init else "containers") or []
    return next(c for c in containers if c["name"] == name)


def webhook_entry(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = get(objects, "MutatingWebhookConfiguration")["webhooks"]
    return entry


def _rules_file(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(get(objects, "ConfigMap")["data"]["rules.yaml"])


# --------------------------------------------------------------------------------------------------
# Chart metadata and docs
# --------------------------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__, "Chart.yaml appVersion must follow webhook.__version__"
    assert chart["kubeVersion"] == ">=1.27.0-0"


def test_values_reference_is_complete_and_in_sync() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "helm-docs.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------------
# helm lint
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="default"),
        pytest.param({"certs": {"mode": "self"}, "rules": [{"registry": "ghcr.io", "secrets": ["g"]}]}, id="self"),
        pytest.param(CERT_MANAGER, id="cert-manager"),
        pytest.param(
            {"certs": {"mode": "cert-manager", "certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}},
            id="cert-manager-issuer",
        ),
        pytest.param(SECRET_MODE, id="secret"),
        pytest.param({"serviceMonitor": {"enabled": True}, "replicaCount": 1}, id="servicemonitor-1-replica"),
        pytest.param({"existingConfigMap": "mine"}, id="existing-configmap"),
    ],
)
def test_lint(helm: Helm, values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), "-n", NAMESPACE, values=values)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


# --------------------------------------------------------------------------------------------------
# helm template: a table of values and the fields they must produce
# --------------------------------------------------------------------------------------------------

ABSENT = object()

TEMPLATE_CASES: list[Any] = [
    # (id, values, [(kind, path, expected)]); path "" means the object itself, ABSENT that it is not rendered
    ("replicas-default", {}, [("Deployment", "spec.replicas", 2), ("PodDisruptionBudget", "spec.minAvailable", 1)]),
    ("replicas-3", {"replicaCount": 3}, [("Deployment", "spec.replicas", 3)]),
    (
        "replicas-1-no-pdb",
        {"replicaCount": 1},
        [("Deployment", "spec.replicas", 1), ("PodDisruptionBudget", "", ABSENT)],
    ),
    (
        "pdb-max-unavailable",
        {"podDisruptionBudget": {"maxUnavailable": 1}},
        [("PodDisruptionBudget", "spec.maxUnavailable", 1)],
    ),
    ("failure-policy-default", {}, [("MutatingWebhookConfiguration", "webhooks[0].failurePolicy", "Ignore")]),
    (
        "failure-policy-fail",
        {"webhook": {"failurePolicy": "Fail"}},
        [("MutatingWebhookConfiguration", "webhooks[0].failurePolicy", "Fail")],
    ),
    (
        "webhook-registration",
        {},
        [
            ("MutatingWebhookConfiguration", "metadata.name", MWC_NAME),
            ("MutatingWebhookConfiguration", "webhooks[0].admissionReviewVersions", ["v1"]),
            ("MutatingWebhookConfiguration", "webhooks[0].sideEffects", "None"),
            ("MutatingWebhookConfiguration", "webhooks[0].timeoutSeconds", 5),
            ("MutatingWebhookConfiguration", "webhooks[0].reinvocationPolicy", "IfNeeded"),
            ("MutatingWebhookConfiguration", "webhooks[0].matchPolicy", "Equivalent"),
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].rules",
                [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            ),
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].clientConfig",
                {"service": {"name": FULLNAME, "namespace": NAMESPACE, "path": "/mutate", "port": 443}},
            ),
        ],
    ),
    (
        "object-selector-default",
        {},
        [
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].objectSelector",
                {
                    "matchExpressions": [
                        {"key": "execution-id", "operator": "Exists"},
                        {"key": "node-id", "operator": "Exists"},
                        {"key": "pullsecrets-injection", "operator": "NotIn", "values": ["disabled"]},
                    ]
                },
            )
        ],
    ),
    (
        "object-selector-custom",
        {"podSelector": {"matchLabels": {"team": "ml"}, "matchExpressions": []}, "optOutLabel": "example.com/skip=yes"},
        [
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].objectSelector",
                {
                    "matchLabels": {"team": "ml"},
                    "matchExpressions": [{"key": "example.com/skip", "operator": "NotIn", "values": ["yes"]}],
                },
            ),
            (
                "ConfigMap",
                "data",
                {"optOutLabel": "example.com/skip=yes", "podSelector": {"matchLabels": {"team": "ml"}}},
            ),
            ("Deployment", 'spec.template.metadata.labels."example.com/skip"', "yes"),
        ],
    ),
    (
        "namespace-selector-default",
        {},
        [
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].namespaceSelector",
                {
                    "matchExpressions": [
                        {"key": "pullsecrets-injection", "operator": "NotIn", "values": ["disabled"]},
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", NAMESPACE],
                        },
                    ]
                },
            )
        ],
    ),
    (
        "namespace-selector-custom",
        {
            "webhook": {
                "excludeNamespaces": ["kube-system", "flyte", NAMESPACE],
                "namespaceSelectorExpressions": [{"key": "team", "operator": "Exists"}],
            }
        },
        [
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].namespaceSelector.matchExpressions[1].values",
                ["kube-system", "flyte", NAMESPACE],
            ),
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].namespaceSelector.matchExpressions[2]",
                {"key": "team", "operator": "Exists"},
            ),
        ],
    ),
    (
        "client-config-url",
        {"webhook": {"clientConfig": {"url": "https://127.0.0.1:9443/mutate"}, "caBundle": "Y2E="}},
        [
            (
                "MutatingWebhookConfiguration",
                "webhooks[0].clientConfig",
                {"url": "https://127.0.0.1:9443/mutate", "caBundle": "Y2E="},
            )
        ],
    ),
    (
        "self-mode",
        {},
        [
            ("Role", "", "present"),
            ("ClusterRole", "", "present"),
            ("Issuer", "", ABSENT),
            ("Certificate", "", ABSENT),
            ("MutatingWebhookConfiguration", "metadata.annotations", ABSENT),
            ("MutatingWebhookConfiguration", "webhooks[0].clientConfig.caBundle", ABSENT),
            (
                "Deployment",
                "spec.template.spec.volumes[1]",
                {"name": "certs", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            ),
            ("Deployment", "spec.template.spec.automountServiceAccountToken", True),
            ("Deployment", "spec.template.spec.initContainers[0].name", "init-certs"),
            ("ServiceAccount", "automountServiceAccountToken", True),
        ],
    ),
    (
        "cert-manager-mode",
        CERT_MANAGER,
        [
            ("Role", "", ABSENT),
            ("ClusterRole", "", ABSENT),
            ("RoleBinding", "", ABSENT),
            ("ClusterRoleBinding", "", ABSENT),
            (
                "MutatingWebhookConfiguration",
                'metadata.annotations."cert-manager.io/inject-ca-from"',
                f"{NAMESPACE}/{FULLNAME}-serving",
            ),
            ("Certificate", f"{FULLNAME}-ca:spec.isCA", True),
            ("Issuer", f"{FULLNAME}-selfsigned:spec", {"selfSigned": {}}),
            ("Issuer", f"{FULLNAME}-ca:spec", {"ca": {"secretName": f"{FULLNAME}-ca"}}),
            ("Certificate", f"{FULLNAME}-serving:spec.secretName", f"{FULLNAME}-tls"),
            (
                "Certificate",
                f"{FULLNAME}-serving:spec.dnsNames",
                [
                    FULLNAME,
                    f"{FULLNAME}.{NAMESPACE}",
                    f"{FULLNAME}.{NAMESPACE}.svc",
                    f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
                ],
            ),
            (
                "Certificate",
                f"{FULLNAME}-serving:spec.issuerRef",
                {"group": "cert-manager.io", "kind": "Issuer", "name": f"{FULLNAME}-ca"},
            ),
            (
                "Deployment",
                "spec.template.spec.volumes[1]",
                {"name": "certs", "secret": {"secretName": f"{FULLNAME}-tls", "defaultMode": 0o440}},
            ),
            ("Deployment", "spec.template.spec.automountServiceAccountToken", False),
            ("Deployment", "spec.template.spec.initContainers", ABSENT),
            ("ServiceAccount", "automountServiceAccountToken", False),
        ],
    ),
    (
        "cert-manager-issuer-ref",
        {"certs": {"mode": "cert-manager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}},
        [
            ("Issuer", "", ABSENT),
            ("Certificate", "spec.issuerRef", {"name": "corp-ca", "kind": "ClusterIssuer"}),
        ],
    ),
    (
        "secret-mode",
        SECRET_MODE,
        [
            ("Role", "", ABSENT),
            ("ClusterRole", "", ABSENT),
            ("Certificate", "", ABSENT),
            ("MutatingWebhookConfiguration", "webhooks[0].clientConfig.caBundle", "Y2E="),
            ("Deployment", "spec.template.spec.volumes[1].secret.secretName", "my-tls"),
            ("Deployment", "spec.template.spec.initContainers", ABSENT),
            ("Pod", "spec.containers[0].env[1]", {"name": "CA_BUNDLE", "value": "Y2E="}),
        ],
    ),
    (
        "rbac-disabled",
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "shared"}},
        [
            ("Role", "", ABSENT),
            ("ServiceAccount", "", ABSENT),
            ("Deployment", "spec.template.spec.serviceAccountName", "shared"),
        ],
    ),
    (
        "existing-configmap",
        {"existingConfigMap": "my-rules", "existingConfigMapKey": "config.yaml"},
        [
            ("ConfigMap", "", ABSENT),
            (
                "Deployment",
                "spec.template.spec.volumes[0].configMap",
                {"name": "my-rules", "items": [{"key": "config.yaml", "path": "rules.yaml"}]},
            ),
            ("Deployment", 'spec.template.metadata.annotations."checksum/config"', ABSENT),
        ],
    ),
    (
        "service-and-ports",
        {},
        [
            (
                "Service",
                "spec.ports",
                [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "appProtocol": "https"}],
            ),
            (
                "Deployment",
                "spec.template.spec.containers[0].ports",
                [{"name": "https", "containerPort": 8443, "protocol": "TCP"}],
            ),
        ],
    ),
    (
        "probes",
        {},
        [
            (
                "Deployment",
                "spec.template.spec.containers[0].livenessProbe.httpGet",
                {"path": "/healthz", "port": "https", "scheme": "HTTPS"},
            ),
            (
                "Deployment",
                "spec.template.spec.containers[0].readinessProbe.httpGet",
                {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
            ),
        ],
    ),
    (
        "security-context",
        {},
        [
            (
                "Deployment",
                "spec.template.spec.securityContext",
                {
                    "runAsNonRoot": True,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "fsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            ),
            ("Deployment", "spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem", True),
            ("Deployment", "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation", False),
            ("Deployment", "spec.template.spec.containers[0].securityContext.capabilities", {"drop": ["ALL"]}),
            ("Deployment", "spec.template.spec.containers[0].securityContext.runAsUser", 65532),
            (
                "Deployment",
                "spec.template.spec.containers[0].securityContext.seccompProfile",
                {"type": "RuntimeDefault"},
            ),
            ("Deployment", "spec.template.spec.initContainers[0].securityContext.readOnlyRootFilesystem", True),
            ("Deployment", "spec.template.spec.containers[0].resources.limits.memory", "256Mi"),
            ("Deployment", "spec.template.spec.containers[0].resources.requests.cpu", "250m"),
            # The webhook's own pods opt out, besides the namespace exclusion.
            ("Deployment", 'spec.template.metadata.labels."pullsecrets-injection"', "disabled"),
        ],
    ),
    (
        "spread",
        {},
        [
            (
                "Deployment",
                "spec.template.spec.topologySpreadConstraints[1]",
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "matchLabelKeys": ["pod-template-hash"],
                    "labelSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "flyte-pullsecrets-webhook",
                            "app.kubernetes.io/instance": RELEASE,
                        }
                    },
                },
            ),
            (
                "Deployment",
                "spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey",
                "kubernetes.io/hostname",
            ),
        ],
    ),
    (
        "anti-affinity-hard",
        {"podAntiAffinity": "hard"},
        [
            (
                "Deployment",
                "spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
                "kubernetes.io/hostname",
            )
        ],
    ),
    ("anti-affinity-none", {"podAntiAffinity": "none"}, [("Deployment", "spec.template.spec.affinity", ABSENT)]),
    (
        "priority-and-grace",
        {
            "priorityClassName": "system-cluster-critical",
            "shutdownDelaySeconds": 10,
            "terminationGracePeriodSeconds": 45,
        },
        [
            ("Deployment", "spec.template.spec.priorityClassName", "system-cluster-critical"),
            ("Deployment", "spec.template.spec.terminationGracePeriodSeconds", 45),
        ],
    ),
    ("no-priority-by-default", {}, [("Deployment", "spec.template.spec.priorityClassName", ABSENT)]),
    ("servicemonitor-off", {}, [("ServiceMonitor", "", ABSENT)]),
    (
        "servicemonitor-on",
        {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        [
            ("ServiceMonitor", "metadata.labels.release", "prom"),
            ("ServiceMonitor", "spec.endpoints[0].port", "https"),
            ("ServiceMonitor", "spec.endpoints[0].scheme", "https"),
            ("ServiceMonitor", "spec.endpoints[0].path", "/metrics"),
            ("ServiceMonitor", "spec.endpoints[0].tlsConfig.ca.secret", {"name": f"{FULLNAME}-tls", "key": "ca.crt"}),
        ],
    ),
    (
        "helm-test-hook",
        {},
        [
            ("Pod", 'metadata.annotations."helm.sh/hook"', "test"),
            ("Pod", "spec.containers[0].env[0].value", f"https://{FULLNAME}.{NAMESPACE}.svc:443/readyz"),
            ("Pod", "spec.securityContext.runAsNonRoot", True),
        ],
    ),
    ("helm-test-off", {"tests": {"enabled": False}}, [("Pod", "", ABSENT)]),
    (
        "image",
        {"image": {"repository": "registry.example/fpw", "tag": "1.2.3"}},
        [("Deployment", "spec.template.spec.containers[0].image", "registry.example/fpw:1.2.3")],
    ),
    (
        "image-digest",
        {"image": {"repository": "registry.example/fpw", "digest": "sha256:" + "a" * 64}},
        [("Deployment", "spec.template.spec.containers[0].image", "registry.example/fpw@sha256:" + "a" * 64)],
    ),
    (
        "image-default-tag",
        {},
        [("Deployment", "spec.template.spec.containers[0].image", f"flyte-pullsecrets-webhook:{__version__}")],
    ),
    (
        "fullname-override",
        {"fullnameOverride": "pullsecrets"},
        [
            ("Service", "metadata.name", "pullsecrets"),
            ("MutatingWebhookConfiguration", "metadata.name", f"pullsecrets-{NAMESPACE}"),
        ],
    ),
]


def _select(objects: list[dict[str, Any]], kind: str, path: str) -> tuple[dict[str, Any] | None, str]:
    name = None
    if ":" in path:
        name, path = path.split(":", 1)
    return find(objects, kind, name), path


@pytest.mark.parametrize(("values", "checks"), [pytest.param(v, c, id=i) for i, v, c in TEMPLATE_CASES])
def test_template(render: Callable[..., list[dict[str, Any]]], values: dict[str, Any], checks: list[Any]) -> None:
    objects = render(values)
    for kind, spec, expected in checks:
        obj, path = _select(objects, kind, spec)
        if kind == "ConfigMap" and path == "data" and obj is not None:
            rules = yaml.safe_load(obj["data"]["rules.yaml"])
            for key, value in expected.items():
                got = rules[key]
                if isinstance(value, dict):
                    got = {k: v for k, v in got.items() if v}
                assert got == value, f"rules.yaml {key}"
            continue
        if expected is ABSENT and not path:
            assert obj is None, f"{kind} should not be rendered"
            continue
        assert obj is not None, f"{kind} not rendered"
        if expected == "present" and not path:
            continue
        if expected is ABSENT:
            with pytest.raises((KeyError, IndexError, TypeError)):
                dig(obj, path)
            continue
        assert dig(obj, path) == expected, f"{kind} {path}"


def test_rbac_is_exactly_what_self_mode_needs(render: Callable[..., list[dict[str, Any]]]) -> None:
    objects = render({})
    assert get(objects, "Role")["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [f"{FULLNAME}-tls"],
            "verbs": ["get", "update", "patch"],
        },
    ]
    assert get(objects, "ClusterRole")["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [MWC_NAME],
            "verbs": ["get", "update", "patch"],
        }
    ]
    sa = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    assert get(objects, "RoleBinding")["subjects"] == [sa]
    assert get(objects, "ClusterRoleBinding")["subjects"] == [sa]
    kinds = sorted(o["kind"] for o in objects if o["apiVersion"].startswith("rbac."))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]


def test_every_object_is_labelled(render: Callable[..., list[dict[str, Any]]]) -> None:
    for values in ({}, CERT_MANAGER, {**SECRET_MODE, "serviceMonitor": {"enabled": True}}):
        for obj in render(values):
            labels = obj["metadata"].get("labels") or {}
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert labels.get("app.kubernetes.io/instance") == RELEASE, where
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
            assert labels.get("helm.sh/chart") == f"flyte-pullsecrets-webhook-{__version__}", where
            if obj["kind"] != "Pod":  # the test pod has its own name so the Service does not select it
                assert labels.get("app.kubernetes.io/name") == "flyte-pullsecrets-webhook", where
                assert labels.get("app.kubernetes.io/version") == __version__, where


def test_grace_period_exceeds_shutdown_delay_and_drain(render: Callable[..., list[dict[str, Any]]]) -> None:
    dep = get(render({}), "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    delay = float(args[args.index("--shutdown-delay") + 1])
    drain = float(args[args.index("--graceful-timeout") + 1])
    assert delay == 5
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > delay + drain


@pytest.mark.parametrize(
    ("values", "present", "absent"),
    [
        pytest.param(
            {},
            [
                "kubectl label namespace <namespace> pullsecrets-injection=disabled",
                'add the label pullsecrets-injection: "disabled"',
                "WARNING: no rules are configured",
                f"Secret/{FULLNAME}-tls",
                f"helm test {RELEASE} -n {NAMESPACE}",
                "pods matching the selector (execution-id Exists, node-id Exists)",
                f"Namespaces never sent to the webhook: kube-system, {NAMESPACE}.",
            ],
            [],
            id="default",
        ),
        pytest.param(
            {**SECRET_MODE, "rules": [{"registry": "ghcr.io", "secrets": ["g"]}]},
            ["1 rule(s)", "certificates: secret"],
            ["WARNING", "deleted with it on helm uninstall"],
            id="secret-with-rules",
        ),
        pytest.param(
            {"optOutLabel": "example.com/skip=yes", "podSelector": {"matchLabels": {"team": "ml"}}},
            ["kubectl label namespace <namespace> example.com/skip=yes", "(team=ml, execution-id Exists"],
            ["pullsecrets-injection"],
            id="custom-labels",
        ),
        pytest.param({"existingConfigMap": "mine"}, ["ConfigMap/mine (key rules.yaml)"], ["WARNING"], id="existing"),
        pytest.param(
            {"webhook": {"clientConfig": {"url": "https://hook.example:8443/mutate"}}},
            ["calling https://hook.example:8443/mutate"],
            [],
            id="url",
        ),
    ],
)
def test_notes(helm: Helm, values: dict[str, Any], present: list[str], absent: list[str]) -> None:
    out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", values=values).stdout
    notes = out.split("NOTES:", 1)[1]
    for text in present:
        assert text in notes
    for text in absent:
        assert text not in notes


def _hook_script(objects: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    pod = get(objects, "Pod")
    (test_container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in test_container["env"]}
    return [*test_container["command"], *test_container["args"]], env


@pytest.mark.parametrize(
    ("case", "passes", "says"),
    [
        pytest.param("ready", True, '"status":"ready"', id="ready"),
        pytest.param("wrong-ca", False, "CERTIFICATE_VERIFY_FAILED", id="wrong-ca"),
        pytest.param("nothing-listening", False, "Connection refused", id="nothing-listening"),
        pytest.param("not-ready", False, "503", id="not-ready"),
    ],
)
def test_helm_test_hook_checks_readyz(
    render: Callable[..., list[dict[str, Any]]], tmp_path: Path, case: str, passes: bool, says: str
) -> None:
    """The hook pod's script, run here against a local webhook (the URL and CA a pod would get)."""
    config = tmp_path / "rules.yaml"
    config.write_text("rules: []\n")
    # "not-ready": after SIGTERM the server keeps serving for the shutdown delay, /readyz says 503.
    extra = ("--shutdown-delay", "3") if case == "not-ready" else ()
    with WebhookProcess(config, tmp_path / "certs", extra_args=extra) as hook:
        ca = hook.ca_file.read_bytes()
        if case == "wrong-ca":
            with WebhookProcess(config, tmp_path / "other-certs") as other:
                ca = other.ca_file.read_bytes()
        objects = render({**SECRET_MODE, "webhook": {"caBundle": base64.b64encode(ca).decode()}})
        command, env = _hook_script(objects)
        assert command[0] == "python"
        assert env["READYZ_URL"] == f"https://{FULLNAME}.{NAMESPACE}.svc:443/readyz"
        env["READYZ_URL"] = f"{hook.base_url}/readyz"
        if case == "nothing-listening":
            env["READYZ_URL"] = f"https://127.0.0.1:{free_port()}/readyz"
        if case == "not-ready":
            hook.signal(signal.SIGTERM)
            time.sleep(0.5)
        proc = subprocess.run(
            [sys.executable, *command[1:]], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )
    output = proc.stdout + proc.stderr
    assert (proc.returncode == 0) is passes, output
    assert says in output.replace(" ", "") if passes else says in output, output


# --------------------------------------------------------------------------------------------------
# The rendered files and commands are what the webhook's own code accepts
# --------------------------------------------------------------------------------------------------

RULE_SETS = [
    pytest.param([], id="none"),
    pytest.param(
        [
            {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
            {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
            {"registry": "registry.gitlab.com/my-group", "secrets": ["gitlab-pull"]},
            {"registry": "docker.io", "secrets": ["dockerhub", "dockerhub-mirror"]},
            {"registry": "*-docker.pkg.dev", "secrets": ["artifact-registry"]},
            {"registry": "localhost:5000", "secrets": ["local"]},
        ],
        id="common-registries",
    ),
]


@pytest.mark.parametrize("rules", RULE_SETS)
def test_configmap_loads_in_the_webhook(render: Callable[..., list[dict[str, Any]]], rules: list[Any]) -> None:
    objects = render({"rules": rules, "warnUnmatched": False})
    text = get(objects, "ConfigMap")["data"]["rules.yaml"]
    config = load_config_text(text, "configmap")
    assert len(config.rules) == len(rules)
    assert config.warn_unmatched is False
    assert config.opt_out_label == ("pullsecrets-injection", "disabled")


def test_checksum_follows_the_rules(render: Callable[..., list[dict[str, Any]]]) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return get(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({"rules": [{"registry": "ghcr.io", "secrets": ["a"]}]})
    assert base == checksum({"rules": [{"registry": "ghcr.io", "secrets": ["a"]}]})
    assert base != checksum({"rules": [{"registry": "ghcr.io", "secrets": ["b"]}]})
    assert base != checksum({"rules": [{"registry": "ghcr.io", "secrets": ["a"]}], "annotate": False})
    annotations = get(render({"checksumAnnotation": False}), "Deployment")["spec"]["template"]["metadata"]
    assert "checksum/config" not in (annotations.get("annotations") or {})


SELF_DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())["certs"]["self"]


@pytest.mark.parametrize(
    ("values", "init"),
    [
        pytest.param({}, True, id="self"),
        pytest.param(
            {"certs": {"extraDnsNames": ["webhook.example.com"], "extraIPs": ["10.0.0.9"]}}, True, id="self-extra-sans"
        ),
        pytest.param(
            {
                "certs": {
                    "self": {
                        "keyType": "rsa",
                        "caValidityDays": 730,
                        "caRenewBeforeDays": 60,
                        "certValidityDays": 14.5,
                        "renewBeforeDays": 4,
                        "rotationOverlapSeconds": 1200,
                        "checkIntervalSeconds": 60,
                    }
                }
            },
            True,
            id="self-lifetimes",
        ),
        pytest.param(CERT_MANAGER, False, id="cert-manager"),
        pytest.param(SECRET_MODE, False, id="secret"),
    ],
)
def test_container_args_parse_with_the_cli(
    render: Callable[..., list[dict[str, Any]]], values: dict[str, Any], init: bool
) -> None:
    """The chart's command lines are accepted by the real argument parser, with the meaning intended."""
    objects = render(values)
    parser = build_parser()
    main = container(objects)
    assert "command" not in main, "the image's ENTRYPOINT is the console script"
    args = parser.parse_args(main["args"])
    assert args.command == "serve"
    assert (args.config, args.host, args.port, args.cert_dir) == (
        "/etc/pullsecrets-webhook/rules.yaml",
        "0.0.0.0",
        8443,
        "/certs",
    )
    assert args.generate_certs is False
    assert (args.shutdown_delay, args.log_level, args.log_format) == (5, "info", "json")
    assert args.manage_certs is init
    if init:
        expected = ("$(POD_NAMESPACE)", FULLNAME, f"{FULLNAME}-tls", MWC_NAME)
        assert (args.namespace, args.service, args.secret, args.webhook_config) == expected
        init_args = parser.parse_args(container(objects, "init-certs", init=True)["args"])
        assert init_args.command == "init-certs"
        assert (init_args.namespace, init_args.service, init_args.secret, init_args.webhook_config) == expected
        assert init_args.cert_dir == "/certs"
        assert init_args.cluster_domain == "cluster.local"
        assert init_args.extra_dns == args.extra_dns == values.get("certs", {}).get("extraDnsNames")
        assert init_args.extra_ip == args.extra_ip == values.get("certs", {}).get("extraIPs")
        # Both commands get the same certificate settings, or they would fight over the Secret.
        own = {**SELF_DEFAULTS, **values.get("certs", {}).get("self", {})}
        for parsed in (args, init_args):
            assert (parsed.key_type, parsed.ca_validity_days, parsed.ca_renew_before_days) == (
                own["keyType"],
                own["caValidityDays"],
                own["caRenewBeforeDays"],
            )
            assert (parsed.cert_validity_days, parsed.renew_before_days, parsed.rotation_overlap) == (
                own["certValidityDays"],
                own["renewBeforeDays"],
                own["rotationOverlapSeconds"],
            )
        assert args.cert_check_interval == own["checkIntervalSeconds"]
        env = container(objects, "init-certs", init=True)["env"]
        assert env == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    else:
        assert "initContainers" not in get(objects, "Deployment")["spec"]["template"]["spec"]


# --------------------------------------------------------------------------------------------------
# The schema and the template checks reject bad values, saying which and why
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "messages"),
    [
        pytest.param(
            {"webhook": {"failurePolicy": "Sometimes"}},
            ["/webhook/failurePolicy", "'Ignore', 'Fail'"],
            id="failure-policy",
        ),
        pytest.param(
            {"rules": [{"registry": "ghcr.io"}]}, ["/rules/0", "missing property 'secrets'"], id="rule-without-secrets"
        ),
        pytest.param(
            {"rules": [{"registry": "ghcr.io", "secrets": []}]},
            ["/rules/0/secrets", "minItems"],
            id="rule-empty-secrets",
        ),
        pytest.param(
            {"rules": [{"secrets": ["a"]}]}, ["/rules/0", "missing property 'registry'"], id="rule-without-registry"
        ),
        pytest.param(
            {"rules": [{"registry": "ghcr.io", "secrets": ["Bad_Name"]}]}, ["/rules/0/secrets/0"], id="bad-secret-name"
        ),
        pytest.param({"rules": [{"registry": "ghcr.io", "secret": ["a"]}]}, ["/rules/0", "'secret'"], id="rule-typo"),
        pytest.param({"certs": {"mode": "vault"}}, ["/certs/mode", "'self', 'cert-manager', 'secret'"], id="cert-mode"),
        pytest.param({"replicaCount": 0}, ["/replicaCount", "minimum"], id="replicas-0"),
        pytest.param({"webhook": {"timeoutSeconds": 31}}, ["/webhook/timeoutSeconds", "maximum"], id="timeout"),
        pytest.param({"webhook": {"reinvocationPolicy": "Always"}}, ["/webhook/reinvocationPolicy"], id="reinvocation"),
        pytest.param({"optOutLabel": "no-equals-sign"}, ["/optOutLabel"], id="opt-out-label"),
        pytest.param(
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
            ["/podSelector/matchExpressions/0/operator"],
            id="selector-operator",
        ),
        pytest.param(
            {"webhook": {"clientConfig": {"url": "http://127.0.0.1/mutate"}}},
            ["/webhook/clientConfig/url"],
            id="url-not-https",
        ),
        pytest.param({"webhook": {"name": "pullsecrets"}}, ["/webhook/name"], id="webhook-name"),
        pytest.param({"replicas": 3}, ["additional properties 'replicas'"], id="unknown-key"),
        pytest.param({"containerPort": 443}, ["/containerPort", "minimum"], id="privileged-port"),
        pytest.param({"certs": {"extraIPs": ["nope"]}}, ["/certs/extraIPs/0"], id="extra-ip"),
        # Cross-field checks done by the templates' `fail`, with their own messages (helm lint only
        # logs template failures, so these are checked with helm template, as install would).
        pytest.param(
            {"certs": {"mode": "secret"}}, ["certs.mode=secret needs certs.secretName"], id="secret-without-name"
        ),
        pytest.param(
            {"certs": {"mode": "secret", "secretName": "x"}},
            ["certs.mode=secret needs webhook.caBundle"],
            id="secret-without-ca",
        ),
        pytest.param({"certs": {"self": {"keyType": "dsa"}}}, ["/certs/self/keyType", "'ecdsa', 'rsa'"], id="key-type"),
        pytest.param(
            {"certs": {"self": {"renewBeforeDays": 90}}},
            ["certs.self.renewBeforeDays (90) must be less than certs.self.certValidityDays (90)"],
            id="renew-window",
        ),
        pytest.param(
            {"certs": {"self": {"caValidityDays": 365}}},
            ["certs.self.caRenewBeforeDays (365) must be less than certs.self.caValidityDays (365)"],
            id="ca-renew-window",
        ),
        pytest.param(
            {"certs": {"self": {"checkIntervalSeconds": 600}}},
            ["certs.self.checkIntervalSeconds (600) must be less than certs.self.rotationOverlapSeconds (600)"],
            id="check-interval",
        ),
        pytest.param(
            {"terminationGracePeriodSeconds": 20},
            ["terminationGracePeriodSeconds (20) must exceed", "(25)"],
            id="grace-period",
        ),
    ],
)
def test_bad_values_are_rejected_readably(helm: Helm, values: dict[str, Any], messages: list[str]) -> None:
    schema_error = messages[0].startswith("/") or "additional properties" in messages[0]
    for command in ("template", "lint") if schema_error else ("template",):
        proc = helm(command, *([RELEASE] if command == "template" else []), str(CHART), values=values, check=False)
        output = proc.stderr + proc.stdout
        assert proc.returncode != 0, f"helm {command} accepted {values}"
        for message in messages:
            assert message in output, f"helm {command}: {message!r} not in:\n{output}"


# --------------------------------------------------------------------------------------------------
# Against the real apiserver
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic(control_plane: ControlPlane) -> Iterator[DynamicClient]:
    with control_plane.api_client() as client:
        yield DynamicClient(client)


def kube_helm(control_plane: ControlPlane, *args: str, values: dict[str, Any] | None = None) -> str:
    extra: list[str] = []
    if values is not None:
        path = control_plane._require_dir() / f"values-{uuid.uuid4().hex}.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    proc = control_plane.helm(*args, *extra, "--kubeconfig", str(control_plane.kubeconfig_path), check=False)
    if proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc.stdout


def stored(dynamic: DynamicClient, obj: dict[str, Any]) -> dict[str, Any] | None:
    api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj["metadata"].get("namespace") if api.namespaced else None
    try:
        return api.get(name=obj["metadata"]["name"], namespace=namespace).to_dict()
    except NotFoundError:
        return None


def scoped(test_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """Values that restrict the webhook to namespaces labelled for this test."""
    webhook = dict(values.get("webhook") or {})
    webhook["namespaceSelectorExpressions"] = [{"key": SCOPE_LABEL, "operator": "In", "values": [test_id]}]
    return {**values, "webhook": webhook}


RULES_V1 = [{"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]}]
RULES_V2 = [*RULES_V1, {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]}]


@pytest.mark.e2e
def test_install_upgrade_uninstall(
    control_plane: ControlPlane, dynamic: DynamicClient, namespace: Callable[..., str]
) -> None:
    test_id = uuid.uuid4().hex[:10]
    ns = namespace(prefix="fpw-release")
    release = f"fpw-{test_id}"
    values = scoped(test_id, {"rules": RULES_V1, "serviceMonitor": {"enabled": False}})

    started = time.monotonic()
    kube_helm(control_plane, "install", release, str(CHART), "-n", ns, values=values)
    try:
        manifest = parse_manifests(kube_helm(control_plane, "get", "manifest", release, "-n", ns))
        kinds = sorted(o["kind"] for o in manifest)
        assert kinds == sorted(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "Deployment",
                "MutatingWebhookConfiguration",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]
        )
        for obj in manifest:
            live = stored(dynamic, obj)
            assert live is not None, f"{obj['kind']}/{obj['metadata']['name']} not stored"
            assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        mwc = stored(dynamic, get(manifest, "MutatingWebhookConfiguration"))
        assert mwc is not None
        assert mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][1]["values"] == ["kube-system", ns]
        configmap = stored(dynamic, get(manifest, "ConfigMap"))
        assert configmap is not None
        assert yaml.safe_load(configmap["data"]["rules.yaml"])["rules"] == RULES_V1
        checksum_v1 = stored(dynamic, get(manifest, "Deployment"))["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

        kube_helm(control_plane, "upgrade", release, str(CHART), "-n", ns, values={**values, "rules": RULES_V2})
        configmap = stored(dynamic, get(manifest, "ConfigMap"))
        assert configmap is not None
        assert yaml.safe_load(configmap["data"]["rules.yaml"])["rules"] == RULES_V2
        deployment = stored(dynamic, get(manifest, "Deployment"))
        assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum_v1
        history = json.loads(kube_helm(control_plane, "history", release, "-n", ns, "-o", "json"))
        assert [h["revision"] for h in history] == [1, 2]
        assert history[-1]["status"] == "deployed"
    finally:
        kube_helm(control_plane, "uninstall", release, "-n", ns)
    elapsed = time.monotonic() - started

    for obj in manifest:
        assert stored(dynamic, obj) is None, f"{obj['kind']}/{obj['metadata']['name']} left behind"
    core = kubernetes.client.CoreV1Api(dynamic.client)
    # Nothing of the release is left in its namespace: not even Helm's release records.
    assert [s.metadata.name for s in core.list_namespaced_secret(ns).items] == []
    assert [
        c.metadata.name for c in core.list_namespaced_config_map(ns).items if c.metadata.name != "kube-root-ca.crt"
    ] == []
    assert json.loads(kube_helm(control_plane, "list", "-n", ns, "-o", "json")) == []
    assert elapsed < 60, f"install/upgrade/uninstall took {elapsed:.1f}s"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "values",
    [
        pytest.param(SECRET_MODE, id="secret"),
        pytest.param(
            {"existingConfigMap": "my-rules", "replicaCount": 1, "serviceAccount": {"automount": False}},
            id="existing-configmap",
        ),
    ],
)
def test_install_other_modes(
    control_plane: ControlPlane, dynamic: DynamicClient, namespace: Callable[..., str], values: dict[str, Any]
) -> None:
    """The apiserver accepts the other modes' objects too (cert-manager's need its CRDs: template-only)."""
    test_id = uuid.uuid4().hex[:10]
    ns = namespace(prefix="fpw-release")
    release = f"fpw-{test_id}"
    kube_helm(control_plane, "install", release, str(CHART), "-n", ns, values=scoped(test_id, values))
    try:
        manifest = parse_manifests(kube_helm(control_plane, "get", "manifest", release, "-n", ns))
        rbac = [o for o in manifest if o["apiVersion"].startswith("rbac.")]
        assert bool(rbac) == (values.get("certs", {}).get("mode", "self") == "self")
        for obj in manifest:
            assert stored(dynamic, obj) is not None, f"{obj['kind']}/{obj['metadata']['name']} not stored"
    finally:
        kube_helm(control_plane, "uninstall", release, "-n", ns)
    for obj in manifest:
        assert stored(dynamic, obj) is None


# ---- end to end: the chart's webhook configuration drives a locally running webhook ---------------

E2E_RULES = [
    {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
    {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
    {"registry": "docker.io", "secrets": ["dockerhub"]},
]


def _pod(name: str, images: list[str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
    }


@pytest.fixture
def scope_label_on_kube_system(core_v1: kubernetes.client.CoreV1Api) -> Iterator[Callable[[str], None]]:
    """Label kube-system into a test's scope (so its exclusion is the chart's, not the scope's)."""
    labelled: list[str] = []

    def label(test_id: str) -> None:
        core_v1.patch_namespace("kube-system", {"metadata": {"labels": {SCOPE_LABEL: test_id}}})
        labelled.append(test_id)

    yield label
    if labelled:
        core_v1.patch_namespace("kube-system", {"metadata": {"labels": {SCOPE_LABEL: None}}})


# (case id, namespace key, pod labels, images, expected secrets)
E2E_CASES = [
    ("flyte-ecr", "flyte", FLYTE_LABELS, [ECR_IMAGE], ["ecr-pull"]),
    (
        "flyte-two-registries",
        "flyte",
        FLYTE_LABELS,
        ["ghcr.io/my-org/app:1", "ubuntu:24.04"],
        ["ghcr-my-org", "dockerhub"],
    ),
    ("flyte-no-rule", "flyte", FLYTE_LABELS, ["quay.io/other/app:1"], []),
    ("not-flyte", "flyte", {"app": "web"}, [ECR_IMAGE], []),
    ("only-execution-id", "flyte", {"execution-id": "abc"}, [ECR_IMAGE], []),
    ("pod-opted-out", "flyte", {**FLYTE_LABELS, **OPT_OUT}, [ECR_IMAGE], []),
    ("namespace-opted-out", "opted-out", FLYTE_LABELS, [ECR_IMAGE], []),
    ("kube-system", "kube-system", FLYTE_LABELS, [ECR_IMAGE], []),
    ("release-namespace", "release", FLYTE_LABELS, [ECR_IMAGE], []),
    ("unscoped-namespace", "unscoped", FLYTE_LABELS, [ECR_IMAGE], []),
]


@pytest.mark.e2e
def test_chart_webhook_configuration_drives_injection(
    control_plane: ControlPlane,
    core_v1: kubernetes.client.CoreV1Api,
    namespace: Callable[..., str],
    scope_label_on_kube_system: Callable[[str], None],
    tmp_path: Path,
) -> None:
    """Install the chart (secret mode) with its clientConfig pointed at a local webhook; create pods.

    The local webhook selects every pod and honours no opt-out label, so whatever is left alone
    below is left alone by the chart's objectSelector and namespaceSelector.
    """
    test_id = uuid.uuid4().hex[:10]
    config = tmp_path / "rules.yaml"
    config.write_text(
        yaml.safe_dump({"rules": E2E_RULES, "podSelector": {}, "optOutLabel": "fpw-never=never", "annotate": True})
    )
    scope = {SCOPE_LABEL: test_id}
    namespaces = {
        "flyte": namespace(labels=scope, prefix="flytesnacks-development"),
        "opted-out": namespace(labels={**scope, **OPT_OUT}, prefix="opted-out"),
        "release": namespace(labels=scope, prefix="fpw-release"),
        "unscoped": namespace(prefix="unscoped"),
        "kube-system": "kube-system",
    }
    scope_label_on_kube_system(test_id)
    release = f"fpw-{test_id}"
    with WebhookProcess(config, tmp_path / "certs") as hook:
        values = scoped(
            test_id,
            {
                "rules": E2E_RULES,
                "certs": {"mode": "secret", "secretName": "unused-tls"},
                "webhook": {
                    "clientConfig": {"url": hook.url},
                    "caBundle": base64.b64encode(hook.ca_file.read_bytes()).decode(),
                    "failurePolicy": "Fail",  # an unreachable webhook fails the test instead of passing it
                },
            },
        )
        kube_helm(control_plane, "install", release, str(CHART), "-n", namespaces["release"], values=values)
        try:
            # The apiserver picks the registration up asynchronously: wait until it bites.
            wait_for_injection(core_v1, namespaces["flyte"], ECR_IMAGE, "ecr-pull")
            results = {}
            for case, ns_key, labels, images, _ in E2E_CASES:
                pod = core_v1.create_namespaced_pod(namespaces[ns_key], _pod(f"{case}-{test_id}", images, labels))
                results[case] = pod
                if ns_key == "kube-system":
                    core_v1.delete_namespaced_pod(pod.metadata.name, "kube-system", grace_period_seconds=0)
        finally:
            kube_helm(control_plane, "uninstall", release, "-n", namespaces["release"])
    failures = []
    for case, _, _, _, expected in E2E_CASES:
        pod = results[case]
        got = [ref.name for ref in pod.spec.image_pull_secrets or []]
        if got != expected:
            failures.append(f"{case}: imagePullSecrets {got}, expected {expected}")
        annotated = "pullsecrets-webhook/injected" in (pod.metadata.annotations or {})
        if annotated != bool(expected):
            failures.append(f"{case}: injected annotation present={annotated}")
    assert not failures, "\n".join(failures)


# ---- self-managed certificates: the chart's own commands, with the chart's RBAC --------------------


def _resolve(args: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(a, a) for a in args]


def _drop_options(args: list[str], names: set[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        out.append(arg)
    return out


# (verb, resource kind, name or None, allowed) for the chart's ServiceAccount in self mode
SELF_MODE_ACCESS = [
    ("create", "secrets", None, True),
    ("get", "secrets", "TLS", True),
    ("update", "secrets", "TLS", True),
    ("patch", "secrets", "TLS", True),
    ("delete", "secrets", "TLS", False),
    ("get", "secrets", "someone-elses", False),
    ("list", "secrets", None, False),
    ("watch", "secrets", None, False),
    ("get", "mutatingwebhookconfigurations", "MWC", True),
    ("patch", "mutatingwebhookconfigurations", "MWC", True),
    ("update", "mutatingwebhookconfigurations", "MWC", True),
    ("delete", "mutatingwebhookconfigurations", "MWC", False),
    ("patch", "mutatingwebhookconfigurations", "another-webhook", False),
    ("list", "mutatingwebhookconfigurations", None, False),
    ("create", "mutatingwebhookconfigurations", None, False),
    ("get", "pods", None, False),
    ("get", "configmaps", None, False),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("release_name", "namespace_prefix", "naming"),
    [
        pytest.param("fpw-{id}", "fpw", {"fullnameOverride": "fpw-{id}"}, id="short-names"),
        # What docs/helm.md suggests: release "pullsecrets" in a "flyte-pullsecrets" namespace.
        pytest.param("pullsecrets", "flyte-pullsecrets", {}, id="documented-names"),
    ],
)
def test_self_mode_runs_with_the_chart_rbac(
    control_plane: ControlPlane,
    core_v1: kubernetes.client.CoreV1Api,
    admission_v1: kubernetes.client.AdmissionregistrationV1Api,
    kube_api: kubernetes.client.ApiClient,
    namespace: Callable[..., str],
    tmp_path: Path,
    release_name: str,
    namespace_prefix: str,
    naming: dict[str, str],
) -> None:
    """Run the init container's and the server's exact command lines as the chart's ServiceAccount.

    No pods run in the test cluster, so the commands run here, with only the substitutions a pod
    would make ($(POD_NAMESPACE), the mounts) and a kubeconfig holding the ServiceAccount's token.
    The webhook configuration points at the local server, whose certificate gets 127.0.0.1 as an
    extra IP SAN through the chart's certs.extraIPs.
    """
    test_id = uuid.uuid4().hex[:10]
    ns = namespace(labels={SCOPE_LABEL: test_id}, prefix=namespace_prefix)
    flyte_ns = namespace(labels={SCOPE_LABEL: test_id}, prefix="flyte-self")
    release = release_name.format(id=test_id[:6])
    port = free_port()
    values = scoped(
        test_id,
        {
            **{k: v.format(id=test_id[:6]) for k, v in naming.items()},
            "rules": E2E_RULES,
            "certs": {"mode": "self", "extraIPs": ["127.0.0.1"]},
            "webhook": {"clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"}, "failurePolicy": "Fail"},
        },
    )
    kube_helm(control_plane, "install", release, str(CHART), "-n", ns, values=values)
    manifest = parse_manifests(kube_helm(control_plane, "get", "manifest", release, "-n", ns))
    secret_name = get(manifest, "Role")["rules"][1]["resourceNames"][0]
    try:
        pod_spec = get(manifest, "Deployment")["spec"]["template"]["spec"]
        sa_name = pod_spec["serviceAccountName"]
        mwc_name = get(manifest, "MutatingWebhookConfiguration")["metadata"]["name"]

        # Least privilege, asked of the apiserver's authorizer.
        authz = kubernetes.client.AuthorizationV1Api(kube_api)
        wrong = []
        for verb, resource, name, allowed in SELF_MODE_ACCESS:
            group = "admissionregistration.k8s.io" if resource == "mutatingwebhookconfigurations" else ""
            attrs = {"verb": verb, "resource": resource, "group": group}
            if resource != "mutatingwebhookconfigurations":
                attrs["namespace"] = ns
            if name:
                attrs["name"] = {"TLS": secret_name, "MWC": mwc_name}.get(name, name)
            review = authz.create_subject_access_review(
                {"spec": {"user": f"system:serviceaccount:{ns}:{sa_name}", "resourceAttributes": attrs}}
            )
            if review.status.allowed != allowed:
                wrong.append(f"{verb} {resource}/{name}: allowed={review.status.allowed}")
        assert not wrong, "\n".join(wrong)

        kubeconfig = control_plane.kubeconfig_for_token(
            control_plane.service_account_token(ns, sa_name), f"sa-{test_id}"
        )
        cert_dir = tmp_path / "certs"
        cert_dir.mkdir()
        config = tmp_path / "rules.yaml"
        config.write_text(get(manifest, "ConfigMap")["data"]["rules.yaml"])
        subst = {"$(POD_NAMESPACE)": ns, "/certs": str(cert_dir), "/etc/pullsecrets-webhook/rules.yaml": str(config)}

        init = next(c for c in pod_spec["initContainers"] if c["name"] == "init-certs")
        cmd = [sys.executable, "-m", "webhook", *_resolve(init["args"], subst), "--kubeconfig", str(kubeconfig)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"init-certs failed:\n{proc.stdout}\n{proc.stderr}"
        secret = core_v1.read_namespaced_secret(secret_name, ns)
        assert {"ca.crt", "tls.crt", "tls.key"} <= set(secret.data)
        # Owned by the chart's webhook configuration: uninstall deletes it, and the garbage collector
        # (not running here) then deletes the Secret and its CA key.
        mwc_uid = admission_v1.read_mutating_webhook_configuration(mwc_name).metadata.uid
        assert [(r.kind, r.name, r.uid) for r in secret.metadata.owner_references] == [
            ("MutatingWebhookConfiguration", mwc_name, mwc_uid)
        ]
        bundle = admission_v1.read_mutating_webhook_configuration(mwc_name).webhooks[0].client_config.ca_bundle
        assert bundle, "init-certs did not publish the caBundle"
        assert {p.name for p in cert_dir.iterdir()} >= {"ca.crt", "tls.crt", "tls.key"}

        # The chart leaves caBundle out, so an upgrade keeps what the webhook published.
        kube_helm(control_plane, "upgrade", release, str(CHART), "-n", ns, values={**values, "warnUnmatched": False})
        after = admission_v1.read_mutating_webhook_configuration(mwc_name).webhooks[0].client_config.ca_bundle
        assert after == bundle, "helm upgrade reset the caBundle the webhook published"

        main = next(c for c in pod_spec["containers"] if c["name"] == "webhook")
        serve_args = _drop_options(
            _resolve(main["args"], subst), {"--config", "--host", "--port", "--cert-dir", "--reload-interval"}
        )
        assert serve_args[0] == "serve"
        # WebhookProcess puts "serve" and the substituted options first; the chart's other flags
        # follow. A zero shutdown delay only saves the test the pod's 5 s of draining.
        extra = (*serve_args[1:], "--kubeconfig", str(kubeconfig), "--shutdown-delay", "0")
        with WebhookProcess(config, cert_dir, port=port, extra_args=extra) as hook:
            wait_for_injection(core_v1, flyte_ns, ECR_IMAGE, "ecr-pull")
            pod = core_v1.create_namespaced_pod(flyte_ns, _pod(f"flyte-{test_id}", [ECR_IMAGE], FLYTE_LABELS))
            other = core_v1.create_namespaced_pod(flyte_ns, _pod(f"web-{test_id}", [ECR_IMAGE], {"app": "web"}))
            assert hook.proc is not None
            assert hook.proc.poll() is None, hook.log()
        assert [r.name for r in pod.spec.image_pull_secrets or []] == ["ecr-pull"]
        assert other.spec.image_pull_secrets is None
    finally:
        kube_helm(control_plane, "uninstall", release, "-n", ns)
        # Created at run time, not by Helm; a cluster's garbage collector removes it after the
        # configuration that owns it, but this control plane runs no controllers.
        with contextlib.suppress(ApiException):
            core_v1.delete_namespaced_secret(secret_name, ns)
