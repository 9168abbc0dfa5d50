"""The AdmissionReview protocol, without HTTP."""

import jsonpatch
import orjson
import pytest

from tests.reviews import ECR_IMAGE, decode_patch, flyte_pod, review_for
from webhook.admission import ReviewError, parse_review, review
from webhook.config import load_config

CONFIG = load_config("examples/rules.yaml")


def decide(review_obj):
    return review(parse_review(orjson.dumps(review_obj)), CONFIG)


def test_pod_create_is_patched_with_same_uid_and_audit_annotation():
    r = review_for(flyte_pod(ECR_IMAGE, "ubuntu"), uid="abc-123")
    decision = decide(r)
    resp = decision.response["response"]
    assert decision.response["apiVersion"] == "admission.k8s.io/v1"
    assert decision.response["kind"] == "AdmissionReview"
    assert resp["uid"] == "abc-123"
    assert resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(r["request"]["object"], decode_patch(resp))
    assert patched["spec"]["imagePullSecrets"] == [{"name": "ecr-pull"}, {"name": "dockerhub"}]
    assert resp["auditAnnotations"] == {"injected": "ecr-pull,dockerhub"}
    assert decision.outcome == "patched"
    assert decision.namespace == "flytesnacks-development"
    assert decision.name == "f3a1b2c4d5e6f7a8b9c0-n0-0-"


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"operation": "UPDATE"}, "ignored"),
        ({"operation": "DELETE"}, "ignored"),
        ({"operation": "CONNECT"}, "ignored"),
        ({"kind": {"group": "", "version": "v1", "kind": "Service"}}, "ignored"),
        ({"kind": {"group": "apps", "version": "v1", "kind": "Pod"}}, "ignored"),
        ({"subResource": "ephemeralcontainers"}, "ignored"),
        ({"kind": "Pod"}, "ignored"),
        ({"dryRun": True}, "patched"),
    ],
)
def test_other_kinds_and_operations_are_allowed_untouched(change, outcome):
    r = review_for(flyte_pod(ECR_IMAGE))
    r["request"].update(change)
    decision = decide(r)
    assert decision.outcome == outcome
    assert decision.response["response"]["allowed"] is True
    assert ("patch" in decision.response["response"]) == (outcome == "patched")


def test_dry_run_is_reported_and_behaves_the_same():
    decision = decide(review_for(flyte_pod(ECR_IMAGE), dry_run=True))
    assert decision.dry_run is True
    assert decision.outcome == "patched"


def test_unparseable_image_is_a_warning_not_a_failure():
    decision = decide(review_for(flyte_pod("Not A Valid Image", ECR_IMAGE)))
    resp = decision.response["response"]
    assert resp["allowed"] is True
    assert any("containers[0].image" in w for w in resp["warnings"])
    assert decode_patch(resp)[0]["value"] == [{"name": "ecr-pull"}]


BAD_ENVELOPES = [
    (b"not json", "not valid JSON"),
    (b"[1,2]", "expected a JSON object"),
    (b'"str"', "expected a JSON object"),
    (b"{}", "unsupported apiVersion None"),
    (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "unsupported apiVersion"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Review"}', "unsupported kind"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "no 'request'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}', "no 'request'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', "no 'uid'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}', "no 'uid'"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
]


@pytest.mark.parametrize(("body", "message"), BAD_ENVELOPES, ids=[b[1] for b in BAD_ENVELOPES])
def test_bad_envelopes_raise_a_400_review_error(body, message):
    with pytest.raises(ReviewError, match=message) as info:
        parse_review(body)
    assert info.value.status == 400


@pytest.mark.parametrize("obj", [None, "pod", [], 5])
def test_pod_create_without_object_is_a_review_error(obj):
    r = review_for(obj)
    with pytest.raises(ReviewError, match="no 'object' pod"):
        decide(r)
