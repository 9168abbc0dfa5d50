"""Per-namespace rules and missing-secret awareness, in the pure core (the cluster view is a fake)."""

import jsonpatch
import pytest

from webhook.config import ConfigError, load_config_text, parse_config
from webhook.mutation import mutate_pod

FLYTE = {"execution-id": "e", "node-id": "n"}
CONFIG = parse_config(
    {
        "rules": [
            {"registry": "ghcr.io", "secrets": ["ghcr-flytesnacks"], "namespaces": ["flytesnacks-*"]},
            {"registry": "ghcr.io", "secrets": ["ghcr-team-b"], "namespaces": ["team-b-development", "team-b-prod?"]},
            {"registry": "ghcr.io", "secrets": ["ghcr-gpu"], "namespaceSelector": {"matchLabels": {"gpu": "true"}}},
            {
                "registry": "ghcr.io",
                "secrets": ["ghcr-both"],
                "namespaces": ["team-*"],
                "namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]},
            },
            {"registry": "docker.io", "secrets": ["dockerhub"]},
        ]
    }
)


class FakeCluster:
    def __init__(self, secrets=None, namespaces=None, synced=True):
        self.secrets = secrets or {}
        self.namespaces = namespaces or {}
        self._synced = synced

    def synced(self):
        return self._synced

    def secret_type(self, namespace, name):
        return self.secrets.get((namespace, name))

    def namespace_labels(self, namespace):
        return self.namespaces.get(namespace)


def pod(*images, secrets=None):
    spec = {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)]}
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {"metadata": {"name": "p", "labels": FLYTE}, "spec": spec}


def names(p, mutation):
    return [s["name"] for s in jsonpatch.apply_patch(p, mutation.patch)["spec"].get("imagePullSecrets") or []]


NAMESPACES = {
    "flytesnacks-development": {},
    "team-b-development": {"tier": "gold"},
    "team-c-development": {"tier": "gold", "gpu": "true"},
    "team-d": {"tier": "silver"},
}

CASES = [
    ("flytesnacks-development", ["ghcr-flytesnacks", "dockerhub"]),
    ("flytesnacks-production", ["ghcr-flytesnacks", "dockerhub"]),
    ("team-b-development", ["ghcr-team-b", "ghcr-both", "dockerhub"]),
    ("team-b-prod1", ["ghcr-team-b", "dockerhub"]),  # ? is one character; labels unknown: no selector rules
    ("team-b-production", ["dockerhub"]),
    ("team-c-development", ["ghcr-gpu", "ghcr-both", "dockerhub"]),
    ("team-d", ["dockerhub"]),  # name matches team-* but the tier is not gold
    ("other", ["dockerhub"]),
    (None, ["dockerhub"]),  # no namespace known: scoped rules never apply
]


@pytest.mark.parametrize(("namespace", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_rules_limited_to_namespaces_apply_only_there(namespace, expected):
    p = pod("ghcr.io/org/app", "ubuntu")
    mutation = mutate_pod(p, CONFIG, namespace, FakeCluster(namespaces=NAMESPACES))
    assert names(p, mutation) == expected


def test_selector_rules_do_not_apply_without_namespace_labels():
    p = pod("ghcr.io/org/app")
    assert names(p, mutate_pod(p, CONFIG, "team-c-development", None)) == []
    assert names(p, mutate_pod(p, CONFIG, "team-c-development", FakeCluster())) == []


def test_scoped_results_do_not_leak_between_namespaces_through_the_cache():
    p = pod("ghcr.io/org/app")
    for _ in range(3):
        assert names(p, mutate_pod(p, CONFIG, "flytesnacks-x", FakeCluster())) == ["ghcr-flytesnacks"]
        assert names(p, mutate_pod(p, CONFIG, "team-b-development", FakeCluster())) == ["ghcr-team-b"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"namespaces": []}, "'namespaces' must be a non-empty list"),
        ({"namespaces": ["Bad_NS"]}, "is not a namespace name or glob"),
        ({"namespaces": [5]}, "is not a namespace name or glob"),
        ({"namespaceSelector": {"matchLabels": ["x"]}}, "namespaceSelector.matchLabels: must be a mapping"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Nope"}]}}, "operator 'Nope'"),
    ],
)
def test_bad_namespace_scopes_are_refused(rule, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"rules": [{"registry": "ghcr.io", "secrets": ["s"], **rule}]})


AWARE = parse_config({"rules": [{"registry": "docker.io", "secrets": ["dockerhub", "mirror"]}]})


@pytest.mark.parametrize(
    ("secrets", "policy", "expected", "warning"),
    [
        (
            {("ns", "dockerhub"): "kubernetes.io/dockerconfigjson", ("ns", "mirror"): "kubernetes.io/dockercfg"},
            "inject",
            ["dockerhub", "mirror"],
            None,
        ),
        (
            {("ns", "dockerhub"): "kubernetes.io/dockerconfigjson"},
            "inject",
            ["dockerhub", "mirror"],
            "secret mirror for registry docker.io does not exist in namespace ns; injected anyway",
        ),
        (
            {("ns", "dockerhub"): "kubernetes.io/dockerconfigjson"},
            "skip",
            ["dockerhub"],
            "secret mirror for registry docker.io does not exist in namespace ns; not injected",
        ),
        (
            {("ns", "dockerhub"): "Opaque", ("ns", "mirror"): "kubernetes.io/dockerconfigjson"},
            "inject",
            ["dockerhub", "mirror"],
            "secret dockerhub in namespace ns is of type Opaque, not kubernetes.io/dockerconfigjson",
        ),
        (
            {("other", "dockerhub"): "kubernetes.io/dockerconfigjson"},
            "skip",
            [],
            "secret dockerhub for registry docker.io does not exist in namespace ns; not injected",
        ),
    ],
)
def test_missing_or_mistyped_secrets_are_warned_about_and_follow_the_policy(secrets, policy, expected, warning):
    config = parse_config(
        {"rules": [{"registry": "docker.io", "secrets": ["dockerhub", "mirror"]}], "missingSecrets": policy}
    )
    p = pod("ubuntu")
    mutation = mutate_pod(p, config, "ns", FakeCluster(secrets=secrets))
    assert names(p, mutation) == expected
    if warning:
        assert any(warning in w for w in mutation.warnings), mutation.warnings
    else:
        assert mutation.warnings == ()
    again = jsonpatch.apply_patch(p, mutation.patch)
    assert mutate_pod(again, config, "ns", FakeCluster(secrets=secrets)).patch == []


def test_an_unsynced_cache_is_not_trusted():
    p = pod("ubuntu")
    mutation = mutate_pod(p, AWARE, "ns", FakeCluster(synced=False))
    assert names(p, mutation) == ["dockerhub", "mirror"]
    assert mutation.warnings == ()
    assert mutation.missing_secrets == ()


def test_missing_secrets_are_reported_for_metrics():
    mutation = mutate_pod(pod("ubuntu"), AWARE, "ns", FakeCluster())
    assert mutation.missing_secrets == ("dockerhub", "mirror")


def test_missing_secrets_policy_is_validated():
    with pytest.raises(ConfigError, match="'missingSecrets' must be one of inject, skip"):
        load_config_text("missingSecrets: sometimes")
