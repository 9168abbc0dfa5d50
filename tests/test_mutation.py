"""Mutation: the patch adds exactly the missing secrets, applies cleanly, and is idempotent."""

import copy

import jsonpatch
import pytest

from webhook.config import INJECTED_ANNOTATION, parse_config
from webhook.mutation import Outcome, mutate_pod

CONFIG = parse_config(
    {
        "rules": [
            {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
            {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
            {"registry": "docker.io", "secrets": ["dockerhub"]},
            {"registry": "localhost:5000", "secrets": ["local", "dockerhub"]},
        ]
    }
)
FLYTE = {"execution-id": "e1", "node-id": "n0"}
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1"


def pod(containers=None, init=None, ephemeral=None, secrets=None, labels=None, annotations=None):
    spec = {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(containers or [])]}
    if init is not None:
        spec["initContainers"] = [{"name": f"i{i}", "image": img} for i, img in enumerate(init)]
    if ephemeral is not None:
        spec["ephemeralContainers"] = [{"name": f"e{i}", "image": img} for i, img in enumerate(ephemeral)]
    if secrets is not None:
        spec["imagePullSecrets"] = secrets
    meta = {"name": "p", "labels": FLYTE if labels is None else labels}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def names(p):
    return [s.get("name") for s in p["spec"].get("imagePullSecrets") or []]


CASES = [
    # id, pod, expected imagePullSecrets after mutation
    ("ecr only", pod([ECR]), ["ecr-pull"]),
    ("short name is docker hub", pod(["ubuntu"]), ["dockerhub"]),
    ("ghcr path rule", pod(["ghcr.io/my-org/app"]), ["ghcr-my-org"]),
    ("ghcr other org untouched", pod(["ghcr.io/other/app"]), []),
    (
        "several registries in image order",
        pod([ECR, "ubuntu", "ghcr.io/my-org/a"]),
        ["ecr-pull", "dockerhub", "ghcr-my-org"],
    ),
    ("init containers first", pod(["ubuntu"], init=[ECR]), ["ecr-pull", "dockerhub"]),
    ("ephemeral containers count", pod([], ephemeral=["ghcr.io/my-org/debug"]), ["ghcr-my-org"]),
    ("rule with two secrets, dedup", pod(["localhost:5000/x", "ubuntu"]), ["local", "dockerhub"]),
    ("same registry twice", pod([ECR, ECR.replace("app", "b")]), ["ecr-pull"]),
    (
        "existing kept in order, missing appended",
        pod([ECR, "ubuntu"], secrets=[{"name": "z"}, {"name": "dockerhub"}]),
        ["z", "dockerhub", "ecr-pull"],
    ),
    ("all present: nothing", pod([ECR], secrets=[{"name": "ecr-pull"}]), ["ecr-pull"]),
    ("empty list", pod([ECR], secrets=[]), ["ecr-pull"]),
    ("null list", pod([ECR], secrets=None), ["ecr-pull"]),
    (
        "weird existing entries kept",
        pod([ECR], secrets=[{}, {"name": "x", "extra": 1}]),
        [None, "x", "ecr-pull"],
    ),
    ("no match", pod(["quay.io/a/b"]), []),
    ("no containers", pod([]), []),
]


@pytest.mark.parametrize(("case", "p", "expected"), CASES, ids=[c[0] for c in CASES])
def test_patch_adds_exactly_the_missing_secrets_and_is_idempotent(case, p, expected):
    original = copy.deepcopy(p)
    mutation = mutate_pod(p, CONFIG)
    assert p == original, "mutate_pod must not modify its input"
    patched = jsonpatch.apply_patch(p, mutation.patch)
    assert names(patched) == expected
    # the user's entries are untouched and in place
    before = p["spec"].get("imagePullSecrets") or []
    if before:
        assert patched["spec"]["imagePullSecrets"][: len(before)] == before
    # reinvocation adds nothing
    again = mutate_pod(patched, CONFIG)
    assert again.patch == []
    assert again.outcome is Outcome.UNCHANGED
    assert (mutation.outcome is Outcome.PATCHED) == bool(mutation.patch)


def test_unknown_fields_survive_because_only_appends_are_emitted():
    p = pod([ECR])
    p["spec"]["x-unknown"] = {"keep": [1, 2]}
    p["status"] = {"phase": "Pending"}
    ops = mutate_pod(p, CONFIG).patch
    assert {op["op"] for op in ops} == {"add"}
    patched = jsonpatch.apply_patch(p, ops)
    assert patched["spec"]["x-unknown"] == {"keep": [1, 2]}
    assert patched["status"] == {"phase": "Pending"}


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, "ecr-pull,dockerhub"),
        ({}, "ecr-pull,dockerhub"),
        ({"other": "x"}, "ecr-pull,dockerhub"),
        ({INJECTED_ANNOTATION: "ghcr-my-org"}, "ghcr-my-org,ecr-pull,dockerhub"),
        ({INJECTED_ANNOTATION: "ecr-pull"}, "ecr-pull,dockerhub"),
    ],
)
def test_annotation_records_what_was_added_cumulatively(annotations, expected):
    p = pod([ECR, "ubuntu"], annotations=annotations)
    patched = jsonpatch.apply_patch(p, mutate_pod(p, CONFIG).patch)
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == expected
    if annotations:
        for k, v in annotations.items():
            if k != INJECTED_ANNOTATION:
                assert patched["metadata"]["annotations"][k] == v


def test_annotation_can_be_turned_off():
    config = parse_config({"rules": [{"registry": "docker.io", "secrets": ["d"]}], "annotate": False})
    ops = mutate_pod(pod(["ubuntu"]), config).patch
    assert [op["path"] for op in ops] == ["/spec/imagePullSecrets"]


@pytest.mark.parametrize(
    ("labels", "outcome"),
    [
        ({}, Outcome.SKIPPED_NOT_FLYTE),
        ({"execution-id": "e"}, Outcome.SKIPPED_NOT_FLYTE),
        ({"node-id": "n"}, Outcome.SKIPPED_NOT_FLYTE),
        ({**FLYTE, "pullsecrets-injection": "disabled"}, Outcome.SKIPPED_OPT_OUT),
        ({"pullsecrets-injection": "disabled"}, Outcome.SKIPPED_OPT_OUT),
        ({**FLYTE, "pullsecrets-injection": "enabled"}, Outcome.PATCHED),
        (FLYTE, Outcome.PATCHED),
    ],
)
def test_only_flyte_pods_that_did_not_opt_out_are_mutated(labels, outcome):
    mutation = mutate_pod(pod([ECR], labels=labels), CONFIG)
    assert mutation.outcome is outcome
    assert bool(mutation.patch) == (outcome is Outcome.PATCHED)


def test_custom_selector_and_opt_out_label():
    config = parse_config(
        {
            "rules": [{"registry": "docker.io", "secrets": ["d"]}],
            "podSelector": {"matchLabels": {"team": "ml"}},
            "optOutLabel": "example.com/no-secrets=true",
        }
    )
    assert mutate_pod(pod(["ubuntu"], labels={"team": "ml"}), config).outcome is Outcome.PATCHED
    assert mutate_pod(pod(["ubuntu"], labels=FLYTE), config).outcome is Outcome.SKIPPED_NOT_FLYTE
    opted = pod(["ubuntu"], labels={"team": "ml", "example.com/no-secrets": "true"})
    assert mutate_pod(opted, config).outcome is Outcome.SKIPPED_OPT_OUT


MALFORMED = [
    (
        "image is a number",
        {"containers": [{"name": "a", "image": 5}, {"name": "b", "image": ECR}]},
        ["ecr-pull"],
        1,
    ),
    (
        "image is invalid",
        {"containers": [{"name": "a", "image": "UPPER/Case"}, {"image": "ubuntu"}]},
        ["dockerhub"],
        1,
    ),
    ("containers not a list", {"containers": "nope", "initContainers": [{"image": ECR}]}, ["ecr-pull"], 1),
    ("container not an object", {"containers": ["ubuntu", {"image": "ubuntu"}]}, ["dockerhub"], 1),
    ("image missing", {"containers": [{"name": "a"}]}, [], 0),
    ("null containers", {"containers": None}, [], 0),
]


@pytest.mark.parametrize(("case", "spec", "expected", "problems"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_images_are_reported_not_fatal(case, spec, expected, problems):
    p = {"metadata": {"labels": FLYTE}, "spec": spec}
    mutation = mutate_pod(p, CONFIG)
    assert names(jsonpatch.apply_patch(p, mutation.patch)) == expected
    assert len(mutation.problems) == problems
    assert len([w for w in mutation.warnings if "no pull secret for it" in w]) == problems


@pytest.mark.parametrize(
    "p",
    [
        {"metadata": {"labels": FLYTE}},
        {"metadata": {"labels": FLYTE}, "spec": None},
        {"metadata": {"labels": FLYTE}, "spec": []},
        {"metadata": {"labels": FLYTE}, "spec": {"containers": [{"image": ECR}], "imagePullSecrets": "x"}},
    ],
)
def test_unpatchable_pods_are_left_alone_with_a_warning(p):
    mutation = mutate_pod(p, CONFIG)
    assert mutation.patch == []
    assert mutation.warnings


def test_pod_without_metadata_is_not_flyte():
    assert mutate_pod({"spec": {"containers": [{"image": ECR}]}}, CONFIG).outcome is Outcome.SKIPPED_NOT_FLYTE


@pytest.mark.parametrize(
    ("p", "warns"),
    [
        (pod(["quay.io/a/b"]), True),  # no rule, no secret at all: warn
        (pod(["quay.io/a/b", ECR]), True),  # the secret added is ECR's: nothing covers quay
        (pod(["quay.io/a/b", ECR], secrets=[{"name": "ecr-pull"}]), True),  # reinvocation: still ours only
        (pod(["quay.io/a/b"], secrets=[{"name": "user-set"}]), False),  # the user's own may cover quay
        (pod(["quay.io/a/b", ECR], secrets=[{"name": "user-set"}]), False),
        (pod([ECR]), False),
    ],
)
def test_unmatched_registry_warning_when_no_secret_could_be_for_it(p, warns):
    mutation = mutate_pod(p, CONFIG)
    assert any("no rule for registry quay.io" in w for w in mutation.warnings) is warns
    assert all(len(w) <= 250 for w in mutation.warnings)
