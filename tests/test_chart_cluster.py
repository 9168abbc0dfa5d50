"""The chart's cluster features (cluster.watchSecrets, cluster.watchNamespaces, cluster.sync):
rendering, RBAC per feature, values checks, and the features running as the chart's ServiceAccount
against the real apiserver.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.controlplane import ControlPlane
from tests.test_chart import (  # noqa: F401 - fixtures used by name
    CERT_MANAGER,
    CHART,
    FULLNAME,
    MWC_NAME,
    NAMESPACE,
    RELEASE,
    SECRET_MODE,
    Helm,
    container,
    find,
    get,
    helm,
    helm_bin,
    helm_home,
    kube_helm,
    parse_manifests,
    render,
    scoped,
)
from webhook.cache import ClusterCache
from webhook.cli import build_parser
from webhook.cluster import ClusterFeatureError, add_cluster_arguments, build_cluster_features
from webhook.config import load_config_text
from webhook.sync import SecretSync, load_sync_config

pytestmark = pytest.mark.helm

Render = Callable[..., list[dict[str, Any]]]

SYNC = {"cluster": {"sync": {"enabled": True, "secrets": ["ghcr-pull", "ecr-pull"]}}}
ALL = {
    "cluster": {
        "watchSecrets": True,
        "watchNamespaces": True,
        "sync": {"enabled": True, "secrets": ["ghcr-pull"]},
    }
}
SECRET_RULE = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}
NAMESPACE_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
SYNC_SECRET_RULE = {
    "apiGroups": [""],
    "resources": ["secrets"],
    "verbs": ["create", "delete", "list", "update", "watch"],
}
CLUSTER_ROLE = f"{MWC_NAME}-cluster"
SYNC_ROLE = f"{FULLNAME}-sync"


@pytest.fixture(scope="session")
def run_helm(request: pytest.FixtureRequest) -> Helm:
    """tests/test_chart.py's ``helm`` fixture (by another name, so no parameter shadows the import)."""
    return request.getfixturevalue("helm")


@pytest.fixture(scope="session")
def render_chart(request: pytest.FixtureRequest) -> Render:
    """tests/test_chart.py's ``render`` fixture: ``helm template`` parsed into objects."""
    return request.getfixturevalue("render")


def serve_parser() -> argparse.ArgumentParser:
    """The CLI's parser, with the cluster flags on ``serve`` (added here if cli.py does not yet)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    if not any("--watch-secrets" in a.option_strings for a in serve._actions):
        add_cluster_arguments(serve)
    return parser


def cluster_role(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    return find(objects, "ClusterRole", CLUSTER_ROLE)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def test_off_by_default(render_chart: Render) -> None:
    objects = render_chart({})
    assert cluster_role(objects) is None
    assert find(objects, "ClusterRoleBinding", CLUSTER_ROLE) is None
    assert find(objects, "Role", SYNC_ROLE) is None
    assert find(objects, "ConfigMap", f"{FULLNAME}-sync") is None
    main = container(objects)
    assert not {"--watch-secrets", "--watch-namespaces", "--sync-config"} & set(main["args"])
    assert [e["name"] for e in main["env"]] == ["POD_NAMESPACE"]
    assert [v["name"] for v in get(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]] == [
        "config",
        "certs",
        "tmp",
    ]
    # The rules file says what is done with missing secrets (the default, inject).
    rules = yaml.safe_load(get(objects, "ConfigMap")["data"]["rules.yaml"])
    assert rules["missingSecrets"] == "inject"


@pytest.mark.parametrize(
    ("values", "cluster_rules", "flags"),
    [
        pytest.param({"cluster": {"watchSecrets": True}}, [SECRET_RULE], ["--watch-secrets"], id="watch-secrets"),
        pytest.param(
            {"cluster": {"watchNamespaces": True}}, [NAMESPACE_RULE], ["--watch-namespaces"], id="watch-namespaces"
        ),
        pytest.param(SYNC, [SYNC_SECRET_RULE, NAMESPACE_RULE], ["--sync-config"], id="sync"),
        pytest.param(
            ALL,
            [SYNC_SECRET_RULE, NAMESPACE_RULE],
            ["--watch-secrets", "--watch-namespaces", "--sync-config"],
            id="all",
        ),
        pytest.param(
            {**CERT_MANAGER, "cluster": {"watchSecrets": True}}, [SECRET_RULE], ["--watch-secrets"], id="cert-manager"
        ),
    ],
)
def test_each_feature_gets_exactly_its_rbac(
    render_chart: Render, values: dict[str, Any], cluster_rules: list[dict[str, Any]], flags: list[str]
) -> None:
    objects = render_chart(values)
    role = cluster_role(objects)
    assert role is not None
    assert role["rules"] == cluster_rules
    binding = get(objects, "ClusterRoleBinding", CLUSTER_ROLE)
    assert binding["roleRef"]["name"] == CLUSTER_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    sync = values["cluster"].get("sync", {}).get("enabled", False)
    sync_role = find(objects, "Role", SYNC_ROLE)
    assert (sync_role is not None) == sync
    if sync_role is not None:
        names = sorted(values["cluster"]["sync"]["secrets"])
        assert sync_role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [f"{FULLNAME}-sync"],
                "verbs": ["get", "update"],
            },
        ]
        assert get(objects, "RoleBinding", SYNC_ROLE)["roleRef"]["name"] == SYNC_ROLE
    main = container(objects)
    present = {f for f in ("--watch-secrets", "--watch-namespaces", "--sync-config") if f in main["args"]}
    assert present == set(flags)
    # The token must be mounted whatever the certificate mode, since these features use the API.
    spec = get(objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    assert get(objects, "ServiceAccount")["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in main["env"]}
    assert ("POD_NAME" in env) == sync
    if sync:
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert {"name": "sync-config", "configMap": {"name": f"{FULLNAME}-sync"}} in spec["volumes"]
        assert "checksum/sync" in get(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]


def test_rbac_create_false_renders_no_rbac(render_chart: Render) -> None:
    objects = render_chart({**ALL, "rbac": {"create": False}})
    assert not [o for o in objects if o["apiVersion"].startswith("rbac.")]
    assert "--sync-config" in container(objects)["args"]


def test_secrets_from_rules_name_the_rules_secrets_in_the_role(render_chart: Render) -> None:
    values = {
        "rules": [
            {"registry": "ghcr.io", "secrets": ["ghcr-pull"]},
            {"registry": "docker.io", "secrets": ["hub", "ghcr-pull"], "namespaces": ["team-b-*"]},
        ],
        "cluster": {"sync": {"enabled": True, "secretsFromRules": True}},
    }
    objects = render_chart(values)
    assert get(objects, "Role", SYNC_ROLE)["rules"][0]["resourceNames"] == ["ghcr-pull", "hub"]
    sync_file = yaml.safe_load(get(objects, "ConfigMap", f"{FULLNAME}-sync")["data"]["sync.yaml"])
    assert sync_file["secretsFromRules"] is True
    assert sync_file["secrets"] == []


def test_args_and_files_build_the_features(render_chart: Render, tmp_path: Path) -> None:
    """The chart's command line and files, read by the real parser and builders."""
    values = {
        "rules": [
            {"registry": "ghcr.io", "secrets": ["ghcr-pull"], "namespaceSelector": {"matchLabels": {"team": "b"}}}
        ],
        "missingSecrets": "skip",
        "cluster": {
            "watchSecrets": True,
            "watchSecretsNamespaces": ["team-*", "flytesnacks-development"],
            "watchNamespaces": True,
            "sync": {
                "enabled": True,
                "secrets": ["ghcr-pull"],
                "namespaces": ["team-*"],
                "namespaceSelector": {"matchLabels": {"flyte": "yes"}},
                "resyncSeconds": 60,
                "leaderElection": {
                    "leaseName": "my-lease",
                    "leaseDurationSeconds": 30,
                    "renewDeadlineSeconds": 20,
                    "retryPeriodSeconds": 4,
                },
            },
        },
    }
    objects = render_chart(values)
    rules = load_config_text(get(objects, "ConfigMap", f"{FULLNAME}-rules")["data"]["rules.yaml"])
    assert rules.missing_secrets == "skip"
    sync_file = tmp_path / "sync.yaml"
    sync_file.write_text(get(objects, "ConfigMap", f"{FULLNAME}-sync")["data"]["sync.yaml"])
    config = load_sync_config(sync_file)
    assert config.source_namespace == NAMESPACE
    assert config.secrets == ("ghcr-pull",)
    assert config.namespaces == ("team-*",)
    assert config.matches_namespace("team-a", {"flyte": "yes"})
    assert not config.matches_namespace("team-a", {})
    assert config.resync_seconds == 60

    argv = [str(sync_file) if a == "/etc/pullsecrets-webhook-sync/sync.yaml" else a for a in container(objects)["args"]]
    args = serve_parser().parse_args(argv)
    assert (args.watch_secrets, args.watch_namespaces, args.sync_config) == (True, True, str(sync_file))
    assert (args.lease_name, args.lease_duration, args.lease_renew_deadline, args.lease_retry_period) == (
        "my-lease",
        30,
        20,
        4,
    )
    args.pod_name = "pod-x"
    cache, sync = build_cluster_features(args, api_client=object())
    assert isinstance(cache, ClusterCache)
    assert cache.secrets is not None
    assert cache.namespaces is not None
    assert args.secret_namespaces == ["team-*", "flytesnacks-development"]
    keeps = cache.secret_namespaces
    assert keeps is not None
    assert [keeps(n) for n in ("team-b", "flytesnacks-development", "flytesnacks-staging", "kube-system")] == [
        True,
        True,
        False,
        False,
    ]
    assert isinstance(sync, SecretSync)
    assert sync.namespaces is cache.namespaces, "two namespace watches where one serves"
    assert sync.source_namespace == NAMESPACE
    assert (sync.elector.name, sync.elector.namespace, sync.elector.identity) == ("my-lease", NAMESPACE, "pod-x")
    assert (sync.elector.lease_duration, sync.elector.renew_deadline, sync.elector.retry_period) == (30, 20, 4)
    # Nothing asked: nothing built, and no client needed.
    assert build_cluster_features(serve_parser().parse_args(["serve", "--config", "x"])) == (None, None)
    # A namespace limit without the cache it limits is a mistake, said as one.
    with pytest.raises(ClusterFeatureError, match="needs --watch-secrets"):
        build_cluster_features(serve_parser().parse_args(["serve", "--config", "x", "--secret-namespaces", "a-*"]))
    # A name no namespace could have is refused as the rules' namespace patterns are.
    with pytest.raises(ClusterFeatureError, match="--secret-namespaces: namespace pattern 'Team_B' is not"):
        build_cluster_features(
            serve_parser().parse_args(["serve", "--config", "x", "--watch-secrets", "--secret-namespaces", "Team_B"]),
            api_client=object(),
        )
    # Every namespace by default.
    everywhere, _ = build_cluster_features(
        serve_parser().parse_args(["serve", "--config", "x", "--watch-secrets"]), api_client=object()
    )
    assert everywhere is not None
    assert everywhere.secret_namespaces is None


def test_lint_with_every_feature(run_helm: Helm) -> None:
    proc = run_helm("lint", "--strict", str(CHART), "-n", NAMESPACE, values=ALL)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("values", "messages"),
    [
        pytest.param(
            {"cluster": {"sync": {"enabled": True}}}, ["cluster.sync.enabled needs Secrets to copy"], id="no-secrets"
        ),
        pytest.param(
            {"existingConfigMap": "mine", "cluster": {"sync": {"enabled": True, "secretsFromRules": True}}},
            ["cluster.sync.secretsFromRules needs the rules in values"],
            id="from-rules-with-existing-configmap",
        ),
        pytest.param(
            {"cluster": {"sync": {"enabled": True, "secrets": ["a"], "namespaces": []}}},
            ["would copy the Secrets into every namespace"],
            id="everywhere",
        ),
        pytest.param(
            {"cluster": {"sync": {"enabled": True, "secrets": ["a"], "leaderElection": {"renewDeadlineSeconds": 20}}}},
            ["leaseDurationSeconds (15) > renewDeadlineSeconds (20)"],
            id="lease-timings",
        ),
        pytest.param(
            {"cluster": {"sync": {"enabled": True, "secrets": ["Bad_Name"]}}}, ["/cluster/sync/secrets/0"], id="name"
        ),
        pytest.param({"cluster": {"watchSecret": True}}, ["additional properties 'watchSecret'"], id="typo"),
        pytest.param({"missingSecrets": "warn"}, ["/missingSecrets"], id="missing-policy"),
        pytest.param(
            {"rules": [{"registry": "a.io", "secrets": ["a"], "namespaces": ["Team_B"]}]},
            ["/rules/0/namespaces/0"],
            id="rule-namespace",
        ),
    ],
)
def test_bad_values_are_rejected_readably(run_helm: Helm, values: dict[str, Any], messages: list[str]) -> None:
    proc = run_helm("template", RELEASE, str(CHART), values=values, check=False)
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0, f"helm template accepted {values}"
    for message in messages:
        assert message in output, f"{message!r} not in:\n{output}"


# --------------------------------------------------------------------------------------------------
# Against the real apiserver: the features run as the chart's ServiceAccount
# --------------------------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.e2e
def test_features_run_with_exactly_the_chart_rbac(
    control_plane: ControlPlane,
    core_v1: kubernetes.client.CoreV1Api,
    kube_api: kubernetes.client.ApiClient,
    namespace: Callable[..., str],
    tmp_path: Path,
) -> None:
    test_id = uuid.uuid4().hex[:8]
    ns = namespace(prefix="fpw-cluster")
    target = namespace(prefix=f"t{test_id}", labels={"flyte": "yes"})
    unselected = namespace(prefix=f"t{test_id}", labels={"flyte": "no"})
    release = f"fpw-{test_id}"
    values = scoped(
        test_id,
        {
            **SECRET_MODE,
            "fullnameOverride": release,
            "rules": [{"registry": "ghcr.io", "secrets": ["ghcr-pull"]}],
            "cluster": {
                "watchSecrets": True,
                "watchNamespaces": True,
                "sync": {
                    "enabled": True,
                    "secretsFromRules": True,
                    "namespaces": [f"t{test_id}-*"],
                    "namespaceSelector": {"matchLabels": {"flyte": "yes"}},
                    "resyncSeconds": 1,
                    "leaderElection": {"leaseDurationSeconds": 3, "renewDeadlineSeconds": 2, "retryPeriodSeconds": 1},
                },
            },
        },
    )
    data = {".dockerconfigjson": base64.b64encode(json.dumps({"auths": {"ghcr.io": {}}}).encode()).decode()}
    core_v1.create_namespaced_secret(
        ns, {"metadata": {"name": "ghcr-pull"}, "type": "kubernetes.io/dockerconfigjson", "data": data}
    )
    core_v1.create_namespaced_secret(ns, {"metadata": {"name": "unrelated"}, "stringData": {"k": "v"}})
    kube_helm(control_plane, "install", release, str(CHART), "-n", ns, values=values)
    cache = sync = None
    try:
        manifest = parse_manifests(kube_helm(control_plane, "get", "manifest", release, "-n", ns))
        deployment = get(manifest, "Deployment")
        sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        user = f"system:serviceaccount:{ns}:{sa_name}"

        # Least privilege, asked of the apiserver's authorizer.
        authz = kubernetes.client.AuthorizationV1Api(kube_api)
        lease = f"{release}-sync"
        expected = [
            ("list", "secrets", "", None, None, True),  # cluster-wide: RBAC cannot limit this to metadata
            ("watch", "secrets", "", None, None, True),
            ("create", "secrets", target, None, None, True),
            ("update", "secrets", target, "ghcr-pull", None, True),
            ("delete", "secrets", target, "ghcr-pull", None, True),
            ("get", "secrets", target, "ghcr-pull", None, False),
            ("patch", "secrets", target, "ghcr-pull", None, False),
            ("get", "secrets", ns, "ghcr-pull", None, True),
            ("get", "secrets", ns, "unrelated", None, False),
            ("list", "namespaces", "", None, None, True),
            ("get", "namespaces", "", target, None, False),
            ("update", "namespaces", "", target, None, False),
            ("create", "leases", ns, None, "coordination.k8s.io", True),
            ("update", "leases", ns, lease, "coordination.k8s.io", True),
            ("update", "leases", ns, "someone-elses", "coordination.k8s.io", False),
            ("create", "leases", target, None, "coordination.k8s.io", False),
            ("list", "pods", "", None, None, False),
        ]
        wrong = []
        for verb, resource, where, name, group, allowed in expected:
            attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group or ""}
            if where:
                attrs["namespace"] = where
            if name:
                attrs["name"] = name
            review = authz.create_subject_access_review({"spec": {"user": user, "resourceAttributes": attrs}})
            if review.status.allowed != allowed:
                wrong.append(f"{verb} {resource} {where}/{name}: allowed={review.status.allowed}")
        assert not wrong, "\n".join(wrong)

        # Run the features as the ServiceAccount, from the chart's own command line and files.
        sync_file = tmp_path / "sync.yaml"
        sync_file.write_text(get(manifest, "ConfigMap", f"{release}-sync")["data"]["sync.yaml"])
        args = [
            str(sync_file) if a == "/etc/pullsecrets-webhook-sync/sync.yaml" else a for a in container(manifest)["args"]
        ]
        parsed = serve_parser().parse_args(args)
        parsed.pod_name = "webhook-pod-0"
        token = control_plane.service_account_token(ns, sa_name)
        api = control_plane.api_client_for_token(token)
        cache, sync = build_cluster_features(parsed, api_client=api, rules_secret_names=lambda: ["ghcr-pull"])
        assert cache is not None
        assert sync is not None
        cache.start()
        sync.start()
        _wait(cache.synced, 15, "the cache synced as the ServiceAccount")
        assert cache.secret_type(ns, "ghcr-pull") == "kubernetes.io/dockerconfigjson"
        assert (cache.namespace_labels(target) or {}).get("flyte") == "yes"

        def copied() -> bool:
            try:
                copy = core_v1.read_namespaced_secret("ghcr-pull", target)
            except ApiException:
                return False
            return copy.data == data and copy.type == "kubernetes.io/dockerconfigjson"

        _wait(copied, 15, "the copy made as the ServiceAccount")
        # The cache sees the copy: a missing-secret warning for this namespace would now stop.
        _wait(lambda: cache.secret_type(target, "ghcr-pull") == "kubernetes.io/dockerconfigjson", 5, "the copy cached")
        assert cache.secret_type(unselected, "ghcr-pull") is None
        with pytest.raises(ApiException) as info:
            core_v1.read_namespaced_secret("ghcr-pull", unselected)
        assert info.value.status == 404
        holder = kubernetes.client.CoordinationV1Api(kube_api).read_namespaced_lease(lease, ns).spec.holder_identity
        assert holder == "webhook-pod-0"
        assert sync.stats["error"] == 0
        for reflector in (*sync.sources.values(), sync.copies, sync.namespaces):
            assert reflector.last_error is None, reflector.last_error
    finally:
        for feature in (sync, cache):
            if feature is not None:
                feature.stop()
        kube_helm(control_plane, "uninstall", release, "-n", ns)
