"""The real kube-apiserver calls our webhook over TLS: assertions are on what it stores.

One webhook subprocess serves the module; each test registers it (or a broken copy)
for namespaces carrying that test's scope label, waits until the registration is in
force, then creates pods through the apiserver.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import ssl
import threading

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e import (
    SCOPE_LABEL,
    dry_run_create,
    pod_manifest,
    pull_secret_names,
    registered,
    wait_for_injection,
    wait_for_rejection,
    wait_until,
)
from tests.webhook_process import REPO, WebhookProcess, free_port

pytestmark = pytest.mark.e2e

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flytesnacks/app:v1"
RULES = {
    "rules": [
        {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
        {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
        {"registry": "docker.io", "secrets": ["dockerhub"]},
        {"registry": "localhost:5000", "secrets": ["local-registry"]},
        {"registry": "quay.io/sidecars", "secrets": ["quay-sidecars"]},
    ]
}


@pytest.fixture(scope="module")
def webhook(tmp_path_factory, control_plane):
    with WebhookProcess.for_rules(tmp_path_factory.mktemp("e2e-webhook"), RULES) as proc:
        assert proc.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        yield proc


@contextlib.contextmanager
def _scope(webhook, kube_api, core_v1, namespace, **registration):
    with registered(kube_api, webhook.url, webhook.ca_file.read_bytes(), **registration) as scope_id:

        def make(labels=None, prefix="flytesnacks-development"):
            return namespace({SCOPE_LABEL: scope_id, **(labels or {})}, prefix=prefix)

        probe_ns = make()
        wait_for_injection(core_v1, probe_ns, "ubuntu", "dockerhub")
        make.scope_id = scope_id
        yield make


@pytest.fixture
def scope(webhook, kube_api, core_v1, namespace):
    """Register the webhook for a fresh scope; returns a factory of namespaces in that scope."""
    with _scope(webhook, kube_api, core_v1, namespace) as make:
        yield make


@pytest.fixture
def unfiltered_scope(webhook, kube_api, core_v1, namespace):
    """The same, registered with no objectSelector: every pod reaches the webhook, which decides."""
    with _scope(webhook, kube_api, core_v1, namespace, object_selector={}) as make:
        yield make


def create(core_v1, ns, pod):
    return core_v1.create_namespaced_pod(ns, pod)


def test_flyte_task_pod_gets_exactly_the_secrets_of_its_registries(scope, core_v1):
    ns = scope()
    pod = pod_manifest(
        ECR,
        "ghcr.io/my-org/tools/sidecar:2",  # path-prefix rule
        "ghcr.io/someone-else/x:1",  # same host, other path: no secret
        "ubuntu:24.04",  # Docker Hub short name
        "localhost:5000/team/app@sha256:" + "a" * 64,
    )
    stored = create(core_v1, ns, pod)
    assert pull_secret_names(stored) == ["ecr-pull", "ghcr-my-org", "dockerhub", "local-registry"]
    again = core_v1.read_namespaced_pod(stored.metadata.name, ns)
    assert pull_secret_names(again) == ["ecr-pull", "ghcr-my-org", "dockerhub", "local-registry"]
    assert again.metadata.annotations["pullsecrets-webhook/injected"] == "ecr-pull,ghcr-my-org,dockerhub,local-registry"
    assert again.status.phase == "Pending"


def test_existing_pull_secrets_keep_their_order_and_only_missing_ones_are_added(scope, core_v1):
    ns = scope()
    pod = pod_manifest(ECR, "ubuntu", pull_secrets=["team-default", "dockerhub"])
    assert pull_secret_names(create(core_v1, ns, pod)) == ["team-default", "dockerhub", "ecr-pull"]


def test_init_containers_count(scope, core_v1):
    ns = scope()
    pod = pod_manifest("ghcr.io/my-org/app:1", init_images=("localhost:5000/tools/wait:1",))
    assert pull_secret_names(create(core_v1, ns, pod)) == ["local-registry", "ghcr-my-org"]


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("spark-driver.yaml", ["team-default", "ghcr-my-org", "dockerhub"]),
        ("ray-head.yaml", ["local-registry"]),  # the GitLab image has no rule in this module's config
        ("task-pod.yaml", ["ecr-pull"]),
    ],
)
def test_plugin_pods_with_flyte_labels_are_injected(scope, core_v1, example, expected):
    ns = scope()
    pod = yaml.safe_load((REPO / "examples" / "pods" / example).read_text())
    pod["metadata"]["namespace"] = ns
    assert pull_secret_names(create(core_v1, ns, pod)) == expected


@pytest.mark.parametrize(
    "labels",
    [{}, {"execution-id": "e"}, {"node-id": "n"}, {"app": "not-flyte"}],
    ids=["no labels", "only execution-id", "only node-id", "other labels"],
)
def test_pods_without_the_flyte_labels_are_untouched(unfiltered_scope, core_v1, labels):
    ns = unfiltered_scope()
    stored = create(core_v1, ns, pod_manifest(ECR, labels=labels))
    assert pull_secret_names(stored) == []
    assert "pullsecrets-webhook/injected" not in (stored.metadata.annotations or {})


def test_opted_out_namespace_is_untouched(scope, core_v1):
    ns = scope(labels={"pullsecrets-injection": "disabled"}, prefix="opted-out")
    assert pull_secret_names(create(core_v1, ns, pod_manifest(ECR))) == []


@pytest.mark.parametrize("scope_kind", ["scope", "unfiltered_scope"], ids=["chart registration", "no objectSelector"])
def test_opted_out_pod_is_untouched(scope_kind, request, core_v1):
    ns = request.getfixturevalue(scope_kind)()
    labels = {"execution-id": "e", "node-id": "n", "pullsecrets-injection": "disabled"}
    assert pull_secret_names(create(core_v1, ns, pod_manifest(ECR, labels=labels))) == []


def test_dry_run_returns_the_mutated_pod_and_stores_nothing(scope, core_v1):
    ns = scope()
    pod = pod_manifest(ECR, name="dry-run-pod")
    returned = dry_run_create(core_v1, ns, pod)
    assert pull_secret_names(returned) == ["ecr-pull"]
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod("dry-run-pod", ns)
    assert info.value.status == 404


class _SidecarInjector(http.server.BaseHTTPRequestHandler):
    """A second mutating webhook: adds an init container from quay.io/sidecars once."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        pod = request["object"]
        response = {"uid": request["uid"], "allowed": True}
        inits = pod["spec"].get("initContainers") or []
        if not any(c.get("name") == "injected-sidecar" for c in inits):
            container = {"name": "injected-sidecar", "image": "quay.io/sidecars/proxy-init:1.0"}
            op = (
                {"op": "add", "path": "/spec/initContainers/-", "value": container}
                if inits
                else {"op": "add", "path": "/spec/initContainers", "value": [container]}
            )
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps([op]).encode()).decode()
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sidecar_injector(webhook):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _SidecarInjector)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(webhook.cert_dir / "tls.crt", webhook.cert_dir / "tls.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/inject"
    server.shutdown()
    server.server_close()


def test_reinvocation_covers_containers_added_by_a_later_webhook(
    webhook, sidecar_injector, kube_api, core_v1, namespace
):
    ca = webhook.ca_file.read_bytes()
    # Webhooks run in name order: ours ("a-...") first, the sidecar injector ("z-...") after it.
    with (
        registered(kube_api, webhook.url, ca, name="a-pullsecrets-reinvoke") as scope_id,
        registered(
            kube_api,
            sidecar_injector,
            ca,
            scope=scope_id,
            name="z-sidecar-injector",
            webhook_name=f"{scope_id}.sidecar.flyte.test",
            reinvocation_policy="Never",
        ),
    ):
        ns = namespace({SCOPE_LABEL: scope_id})

        def both_active() -> bool:
            pod = dry_run_create(core_v1, ns, pod_manifest("ubuntu"))
            return "dockerhub" in pull_secret_names(pod) and bool(pod["spec"].get("initContainers"))

        wait_until(both_active, what="both webhooks in force")
        stored = create(core_v1, ns, pod_manifest("ubuntu"))
        assert [c.name for c in stored.spec.init_containers] == ["injected-sidecar"]
        assert pull_secret_names(stored) == ["dockerhub", "quay-sidecars"]


@pytest.fixture
def dead_url():
    """An https URL on loopback where nothing listens."""
    return f"https://127.0.0.1:{free_port()}/mutate"


def test_webhook_down_with_failure_policy_fail_rejects_and_names_the_webhook(
    webhook, dead_url, kube_api, core_v1, namespace
):
    ca = webhook.ca_file.read_bytes()
    with registered(kube_api, dead_url, ca, failure_policy="Fail") as scope_id:
        ns = namespace({SCOPE_LABEL: scope_id})
        message = wait_for_rejection(core_v1, ns)
        assert f"{scope_id}.pullsecrets.flyte.test" in message
        assert "failed calling webhook" in message
        with pytest.raises(ApiException) as info:
            create(core_v1, ns, pod_manifest(ECR))
        assert info.value.status == 500
        assert core_v1.list_namespaced_pod(ns).items == []


def test_webhook_down_with_failure_policy_ignore_loses_no_pod(webhook, dead_url, kube_api, core_v1, namespace):
    ca = webhook.ca_file.read_bytes()
    with registered(kube_api, dead_url, ca, failure_policy="Fail") as scope_id:
        ns = namespace({SCOPE_LABEL: scope_id})
        wait_for_rejection(core_v1, ns)  # the registration is in force ...
        with registered(kube_api, dead_url, ca, scope=scope_id, failure_policy="Ignore"):

            def admitted() -> bool:
                try:
                    dry_run_create(core_v1, ns, pod_manifest("busybox"))
                except ApiException:
                    return False
                return True

            wait_until(admitted, what="failurePolicy Ignore in force")  # ... and now ignores the failure
            stored = create(core_v1, ns, pod_manifest(ECR, name="survivor"))
            assert stored.metadata.name == "survivor"
            assert pull_secret_names(stored) == []
            assert [p.metadata.name for p in core_v1.list_namespaced_pod(ns).items] == ["survivor"]
