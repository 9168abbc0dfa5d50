"""What operators see, through the real apiserver: warnings, audit annotations, metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e import SCOPE_LABEL, pod_manifest, pull_secret_names, registered, wait_for_injection, wait_until
from tests.webhook_process import WebhookProcess

pytestmark = pytest.mark.e2e

RULES = {
    "rules": [
        {"registry": "docker.io", "secrets": ["dockerhub"]},
        {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
    ]
}


@pytest.fixture(scope="module")
def webhook(tmp_path_factory, control_plane):
    with WebhookProcess.for_rules(tmp_path_factory.mktemp("ops"), RULES) as proc:
        yield proc


@pytest.fixture
def scoped(webhook, kube_api, core_v1, namespace):
    with registered(kube_api, webhook.url, webhook.ca_file.read_bytes()) as scope_id:
        ns = namespace({SCOPE_LABEL: scope_id})
        wait_for_injection(core_v1, ns, "ubuntu", "dockerhub")
        yield ns, f"{scope_id}.pullsecrets.flyte.test"


def create_with_headers(core_v1, ns, pod):
    data, _status, raw_headers = core_v1.create_namespaced_pod_with_http_info(ns, pod)
    headers = {k.lower(): v for k, v in (raw_headers or {}).items()}
    return data, headers.get("warning", "")


@pytest.mark.parametrize(
    ("images", "warning", "secrets"),
    [
        (
            ["quay.io/team/app:1"],
            "no rule for registry quay.io (image quay.io/team/app:1); pulled without credentials",
            [],
        ),
        (["ghcr.io/my-org/app", "UPPER/Case:1"], "containers[1].image 'UPPER/Case:1'", ["ghcr-my-org"]),
    ],
    ids=["unmatched registry", "unparseable image"],
)
def test_warnings_reach_the_client_that_created_the_pod(scoped, core_v1, images, warning, secrets):
    ns, _ = scoped
    pod, warnings = create_with_headers(core_v1, ns, pod_manifest(*images))
    assert warning in warnings
    assert pull_secret_names(pod) == secrets


def test_no_warning_when_every_image_is_covered(scoped, core_v1):
    ns, _ = scoped
    _, warnings = create_with_headers(core_v1, ns, pod_manifest("ubuntu", "ghcr.io/my-org/x"))
    assert "pullsecrets-webhook" not in warnings


def test_audit_log_records_what_was_injected(scoped, core_v1, control_plane):
    ns, webhook_name = scoped
    pod = core_v1.create_namespaced_pod(ns, pod_manifest("ubuntu", "ghcr.io/my-org/x", name="audited"))
    assert pull_secret_names(pod) == ["dockerhub", "ghcr-my-org"]

    def event():
        for e in control_plane.audit_events():
            ref = e.get("objectRef") or {}
            if ref.get("namespace") == ns and ref.get("name") == "audited" and e.get("stage") == "ResponseComplete":
                return e
        return None

    wait_until(lambda: event() is not None, 10, what="the audit event")
    annotations = event()["annotations"]
    assert annotations[f"{webhook_name}/injected"] == "dockerhub,ghcr-my-org"


def test_metrics_count_real_admissions(scoped, core_v1, webhook):
    ns, _ = scoped

    def scrape():
        with httpx.Client(verify=webhook.ssl_context()) as c:
            text = c.get(webhook.base_url + "/metrics").text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    before = scrape()
    core_v1.create_namespaced_pod(ns, pod_manifest("ubuntu"))
    core_v1.create_namespaced_pod(ns, pod_manifest("quay.io/x/y"))
    core_v1.create_namespaced_pod(ns, pod_manifest("ubuntu", pull_secrets=["dockerhub"]))
    after = scrape()

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta('pullsecrets_webhook_admission_requests_total{result="patched"}') == 1
    assert delta('pullsecrets_webhook_admission_requests_total{result="unchanged"}') == 2
    assert delta('pullsecrets_webhook_injected_secrets_total{registry="docker.io",secret="dockerhub"}') == 1
    assert delta('pullsecrets_webhook_unmatched_images_total{registry="quay.io"}') == 1
    assert delta("pullsecrets_webhook_admission_duration_seconds_count") == 3
