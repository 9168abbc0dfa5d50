"""Secret awareness and per-namespace rules through the real apiserver (issue: secrets that do not exist)."""

from __future__ import annotations

import pytest

from tests.e2e import SCOPE_LABEL, pod_manifest, pull_secret_names, registered, wait_for_injection, wait_until
from tests.webhook_process import WebhookProcess

pytestmark = pytest.mark.e2e

RULES = {
    "rules": [
        {"registry": "docker.io", "secrets": ["dockerhub"]},
        {"registry": "ghcr.io", "secrets": ["ghcr-flytesnacks"], "namespaces": ["flytesnacks-*"]},
        {"registry": "ghcr.io", "secrets": ["ghcr-team-b"], "namespaces": ["team-b-*"]},
        {"registry": "ghcr.io", "secrets": ["ghcr-gpu"], "namespaceSelector": {"matchLabels": {"gpu": "true"}}},
    ]
}


@pytest.fixture(scope="module")
def webhook(tmp_path_factory, control_plane):
    args = ("--watch-secrets", "--watch-namespaces", "--kubeconfig", str(control_plane.kubeconfig_path))
    with WebhookProcess.for_rules(tmp_path_factory.mktemp("aware"), RULES, extra_args=args) as proc:
        yield proc


@pytest.fixture
def scope(webhook, kube_api, core_v1, namespace):
    with registered(kube_api, webhook.url, webhook.ca_file.read_bytes()) as scope_id:

        def make(prefix, labels=None):
            return namespace({SCOPE_LABEL: scope_id, **(labels or {})}, prefix=prefix)

        probe = make("probe")
        wait_for_injection(core_v1, probe, "ubuntu", "dockerhub")
        yield make


def docker_secret(core_v1, ns, name, kind="kubernetes.io/dockerconfigjson"):
    data = {".dockerconfigjson": "eyJhdXRocyI6e319"} if kind == "kubernetes.io/dockerconfigjson" else {"x": "eQ=="}
    core_v1.create_namespaced_secret(ns, {"metadata": {"name": name}, "type": kind, "data": data})


def create(core_v1, ns, pod):
    data, _status, headers = core_v1.create_namespaced_pod_with_http_info(ns, pod)
    warning = {k.lower(): v for k, v in (headers or {}).items()}.get("warning", "")
    return data, warning


def test_missing_secret_is_named_in_the_create_response(scope, core_v1):
    ns = scope("flytesnacks-development")
    pod, warning = create(core_v1, ns, pod_manifest("ubuntu"))
    assert pull_secret_names(pod) == ["dockerhub"]  # missingSecrets: inject (default)
    assert f"secret dockerhub for registry docker.io does not exist in namespace {ns}; injected anyway" in warning


def test_existing_secret_gives_no_warning_once_the_cache_sees_it(scope, core_v1):
    ns = scope("flytesnacks-development")
    docker_secret(core_v1, ns, "dockerhub")

    def quiet():
        _, warning = create(core_v1, ns, pod_manifest("ubuntu"))
        return "does not exist" not in warning

    wait_until(quiet, 10, what="the cache to see the new Secret")


def test_secret_of_the_wrong_type_is_warned_about(scope, core_v1):
    ns = scope("flytesnacks-development")
    docker_secret(core_v1, ns, "dockerhub", kind="Opaque")

    def warned():
        _, warning = create(core_v1, ns, pod_manifest("ubuntu"))
        return "is of type Opaque, not kubernetes.io/dockerconfigjson" in warning

    wait_until(warned, 10, what="the wrong-type warning")


@pytest.mark.parametrize(
    ("prefix", "labels", "expected"),
    [
        ("flytesnacks-development", {}, ["ghcr-flytesnacks"]),
        ("team-b-development", {}, ["ghcr-team-b"]),
        ("team-c", {"gpu": "true"}, ["ghcr-gpu"]),
        ("team-c", {}, []),
    ],
)
def test_per_namespace_rules_give_each_project_its_own_credentials(scope, core_v1, prefix, labels, expected):
    ns = scope(prefix, labels)

    def injected():
        pod, _ = create(core_v1, ns, pod_manifest("ghcr.io/shared/image:1"))
        return pull_secret_names(pod) == expected

    # a new namespace's labels reach the cache within moments
    wait_until(injected, 10, what=f"{expected} in {ns}")
