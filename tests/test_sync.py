"""The pull secret sync against the real apiserver: copy, update, delete, foreign Secrets, new
namespaces, config reloads, and two leader-elected replicas that never both write.

Each test uses its own source namespace (copies carry its name in their owner label) and a
namespace glob unique to the test, so syncs of different tests never see each other's objects.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.controlplane import ControlPlane
from tests.e2e import wait_until
from webhook import FIELD_MANAGER
from webhook import sync as sync_module
from webhook.cache import ClusterCache, Reflector
from webhook.sync import (
    SOURCE_ANNOTATION,
    SOURCE_HASH_ANNOTATION,
    SOURCE_RV_ANNOTATION,
    SYNCED_FROM_LABEL,
    SecretSync,
    SyncConfigError,
    load_sync_config,
    parse_sync_config,
)

BOUND = 5.0  # seconds within which a change must be reflected in the copies
FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.25}
DOCKER = "kubernetes.io/dockerconfigjson"


def wait_for(predicate: Callable[[], bool], timeout: float = BOUND, what: str = "") -> float:
    return wait_until(predicate, timeout, what, interval=0.05, ignore=(ApiException,))


def docker_data(token: str) -> dict[str, str]:
    config = {"auths": {"ghcr.io": {"auth": base64.b64encode(f"user:{token}".encode()).decode()}}}
    return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}


def read(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return core.api_client.sanitize_for_serialization(core.read_namespaced_secret(name, ns))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class Env:
    """A source namespace with secrets, target namespaces matched by a unique glob, a config file."""

    def __init__(
        self,
        control_plane: ControlPlane,
        core: kubernetes.client.CoreV1Api,
        namespace: Callable[..., str],
        tmp_path: Path,
    ) -> None:
        self.cp = control_plane
        self.core = core
        self.namespace = namespace
        self.tag = f"s{uuid.uuid4().hex[:6]}"
        self.source = namespace(prefix=f"{self.tag}src")
        self.config_path = tmp_path / "sync.yaml"
        self.syncs: list[SecretSync] = []

    def target(self, labels: dict[str, str] | None = None) -> str:
        return self.namespace(labels=labels, prefix=f"{self.tag}-flyte")

    def write_config(self, **config: Any) -> None:
        doc = {"sourceNamespace": self.source, "namespaces": [f"{self.tag}-flyte-*"], "resyncSeconds": 1, **config}
        self.config_path.write_text(yaml.safe_dump(doc))

    def source_secret(self, name: str, token: str, kind: str = DOCKER) -> None:
        body = {"metadata": {"name": name}, "type": kind, "data": docker_data(token)}
        try:
            self.core.create_namespaced_secret(self.source, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.source, body)

    def start(
        self,
        identity: str = "pod-a",
        extra_names: Callable[[], list[str]] | None = None,
        namespaces: Reflector | None = None,
        **timings: float,
    ) -> SecretSync:
        sync = SecretSync(
            self.cp.api_client(),
            load_sync_config(self.config_path),
            identity=identity,
            lease_name=f"sync-{self.tag}",
            config_path=self.config_path,
            extra_names=extra_names,
            namespaces=namespaces,
            **{**FAST, **timings},
        )
        sync.start()
        self.syncs.append(sync)
        return sync

    def copy_matches(self, ns: str, name: str, token: str) -> bool:
        copy = read(self.core, ns, name)
        return copy is not None and copy.get("data") == docker_data(token)

    def close(self) -> None:
        for sync in self.syncs:
            sync.stop()
            sync.api_client.close()


@pytest.fixture
def env(
    control_plane: ControlPlane, core_v1: kubernetes.client.CoreV1Api, namespace: Callable[..., str], tmp_path: Path
) -> Iterator[Env]:
    e = Env(control_plane, core_v1, namespace, tmp_path)
    yield e
    e.close()


def test_copy_update_foreign_new_namespace_and_delete(env: Env, core_v1: kubernetes.client.CoreV1Api) -> None:
    core = core_v1
    env.source_secret("pull-a", "token-1")
    env.source_secret("pull-b", "token-b")
    dev, prod = env.target(), env.target()
    other = env.namespace(prefix=f"{env.tag}-web")  # does not match the glob
    foreign_ns = env.target()
    foreign = {"metadata": {"name": "pull-a", "labels": {"mine": "yes"}}, "stringData": {"k": "hand-made"}}
    core.create_namespaced_secret(foreign_ns, foreign)
    env.write_config(secrets=["pull-a", "pull-b"])
    sync = env.start()
    took: dict[str, float] = {}

    took["initial copies"] = wait_for(
        lambda: all(env.copy_matches(ns, "pull-a", "token-1") for ns in (dev, prod)), 10, "copies of pull-a"
    )
    wait_for(lambda: all(env.copy_matches(ns, "pull-b", "token-b") for ns in (dev, prod, foreign_ns)))
    copy = read(core, dev, "pull-a")
    assert copy is not None
    source = read(core, env.source, "pull-a")
    assert source is not None
    assert copy["type"] == DOCKER
    assert copy["metadata"]["labels"][SYNCED_FROM_LABEL] == env.source
    annotations = copy["metadata"]["annotations"]
    assert annotations[SOURCE_ANNOTATION] == f"{env.source}/pull-a"
    assert annotations[SOURCE_RV_ANNOTATION] == source["metadata"]["resourceVersion"]
    assert len(annotations[SOURCE_HASH_ANNOTATION]) == 64
    assert [m["manager"] for m in copy["metadata"]["managedFields"]] == [FIELD_MANAGER]
    assert read(core, other, "pull-a") is None
    assert read(core, other, "pull-b") is None

    # A Secret the sync did not create is left exactly as it was, and counted.
    wait_for(lambda: sync.stats["foreign"] == 1, what="the foreign Secret noticed")
    kept = read(core, foreign_ns, "pull-a")
    assert kept is not None
    assert kept["data"] == {"k": base64.b64encode(b"hand-made").decode()}
    assert kept["metadata"]["labels"] == {"mine": "yes"}
    assert (foreign_ns, "pull-a") in sync.foreign

    # The source changes: every copy follows.
    env.source_secret("pull-a", "token-2")
    took["update"] = wait_for(lambda: all(env.copy_matches(ns, "pull-a", "token-2") for ns in (dev, prod)))

    # A new matching namespace gets copies.
    late = env.target()
    took["new namespace"] = wait_for(lambda: env.copy_matches(late, "pull-a", "token-2"))
    wait_for(lambda: env.copy_matches(late, "pull-b", "token-b"))

    # The source is deleted: its copies go, nothing else does.
    core.delete_namespaced_secret("pull-a", env.source)
    took["delete"] = wait_for(lambda: all(read(core, ns, "pull-a") is None for ns in (dev, prod, late)))
    kept = read(core, foreign_ns, "pull-a")
    assert kept is not None
    assert kept["data"] == {"k": base64.b64encode(b"hand-made").decode()}
    assert all(read(core, ns, "pull-b") is not None for ns in (dev, prod, late, foreign_ns))

    # The entry leaves the sync config (a live reload): its copies go too.
    env.write_config(secrets=[])
    took["entry removed"] = wait_for(
        lambda: all(read(core, ns, "pull-b") is None for ns in (dev, prod, late, foreign_ns))
    )
    assert read(core, env.source, "pull-b") is not None, "the source itself is never touched"
    assert read(core, foreign_ns, "pull-a") is not None
    assert sync.stats["error"] == 0
    print("sync latencies (s):", {k: round(v, 2) for k, v in took.items()}, dict(sync.stats))


def test_selector_relabel_and_a_foreign_copy_of_the_same_label(env: Env, core_v1: kubernetes.client.CoreV1Api) -> None:
    core = core_v1
    env.source_secret("pull", "t")
    yes, no = env.target({"flyte": "yes"}), env.target({"flyte": "no"})
    # Carries our owner label (so the copies watch sees it, in a namespace whose copies the sync
    # removes) but names another source: not ours to judge, never deleted.
    elsewhere = env.target({"flyte": "no"})
    alien = {
        "metadata": {
            "name": "pull",
            "labels": {SYNCED_FROM_LABEL: env.source},
            "annotations": {SOURCE_ANNOTATION: "another-namespace/pull"},
        },
        "stringData": {"k": "theirs"},
    }
    core.create_namespaced_secret(elsewhere, alien)
    env.write_config(secrets=["pull"], namespaceSelector={"matchLabels": {"flyte": "yes"}})
    sync = env.start()
    wait_for(lambda: env.copy_matches(yes, "pull", "t"), 10, "copy in the selected namespace")
    wait_for(lambda: sync.wait_idle(0.1), what="an idle pass")
    assert read(core, no, "pull") is None

    # Relabelled out: the copy goes. Relabelled in: it comes.
    core.patch_namespace(yes, {"metadata": {"labels": {"flyte": "no"}}})
    core.patch_namespace(no, {"metadata": {"labels": {"flyte": "yes"}}})
    wait_for(lambda: read(core, yes, "pull") is None, what="copy removed from the deselected namespace")
    wait_for(lambda: env.copy_matches(no, "pull", "t"), what="copy in the newly selected namespace")

    # A copy edited by hand is set right when the source next changes.
    core.patch_namespaced_secret("pull", no, {"data": docker_data("tampered")})
    env.source_secret("pull", "t2")
    wait_for(lambda: env.copy_matches(no, "pull", "t2"))
    alien_now = read(core, elsewhere, "pull")
    assert alien_now is not None
    assert alien_now["data"] == {"k": base64.b64encode(b"theirs").decode()}


def test_source_type_change_recreates_the_copies(env: Env, core_v1: kubernetes.client.CoreV1Api) -> None:
    env.source_secret("pull", "t")
    ns = env.target()
    env.write_config(secrets=["pull"])
    sync = env.start()
    wait_for(lambda: env.copy_matches(ns, "pull", "t"), 10)
    core_v1.delete_namespaced_secret("pull", env.source)
    env.source_secret("pull", "t", kind="Opaque")
    wait_for(lambda: (read(core_v1, ns, "pull") or {}).get("type") == "Opaque", what="copy with the new type")
    assert sync.stats["error"] == 0


def test_rule_names_unreadable_means_no_writes_and_the_source_namespace_is_never_touched(
    env: Env, core_v1: kubernetes.client.CoreV1Api
) -> None:
    env.source_secret("from-rules", "r")
    # A Secret in the source namespace that carries the owner label (say, a copy's YAML applied
    # there by hand): it is not a copy, and is never deleted.
    core_v1.create_namespaced_secret(
        env.source,
        {"metadata": {"name": "lookalike", "labels": {SYNCED_FROM_LABEL: env.source}}, "stringData": {"k": "v"}},
    )
    ns = env.target()
    names: list[Any] = [["from-rules"]]

    def rule_names() -> list[str]:
        if isinstance(names[-1], Exception):
            raise names[-1]
        return names[-1]

    env.write_config(secrets=[], secretsFromRules=True)
    sync = env.start(extra_names=rule_names)
    wait_for(lambda: env.copy_matches(ns, "from-rules", "r"), 10, "the copy of a rule's secret")
    wait_for(lambda: sync.stats["create"] == 1, what="the create counted")
    writes = sum(sync.stats.values())
    names.append(RuntimeError("rules are being reloaded"))
    time.sleep(1.0)  # several passes
    assert env.copy_matches(ns, "from-rules", "r"), "a failure to read the names deleted the copies"
    assert sum(sync.stats.values()) == writes
    names.append([])
    wait_for(lambda: read(core_v1, ns, "from-rules") is None, what="copy deleted once the rule is really gone")
    assert read(core_v1, env.source, "lookalike") is not None
    assert read(core_v1, env.source, "from-rules") is not None


def test_two_replicas_never_both_write_and_the_second_takes_over(
    env: Env, core_v1: kubernetes.client.CoreV1Api, kube_api: kubernetes.client.ApiClient
) -> None:
    env.source_secret("pull", "v1")
    targets = [env.target() for _ in range(3)]
    env.write_config(secrets=["pull"])
    a, b = env.start("pod-a"), env.start("pod-b")
    wait_for(lambda: all(env.copy_matches(ns, "pull", "v1") for ns in targets), 10, "first copies")
    leader, standby = (a, b) if a.is_leader() else (b, a)
    assert leader.is_leader()
    assert not standby.is_leader()
    # Both watch everything, only one writes: every write was the leader's, each made once.
    for version in ("v2", "v3"):
        env.source_secret("pull", version)
        wait_for(lambda v=version: all(env.copy_matches(ns, "pull", v) for ns in targets))
    wait_for(lambda: leader.wait_idle(0.1), what="the leader idle")
    assert sum(standby.stats.values()) == 0, standby.stats
    assert leader.stats["create"] == 3
    assert leader.stats["update"] == 6
    lease = kubernetes.client.CoordinationV1Api(kube_api).read_namespaced_lease(f"sync-{env.tag}", env.source)
    assert lease.spec.holder_identity == leader.identity

    # The leader goes away without releasing (a crash): the standby takes over within the lease
    # duration (plus a retry), and acts.
    leader.stop(release=False)
    stopped = time.monotonic()
    wait_for(standby.is_leader, FAST["lease_duration"] + 4, "the standby leads")
    took = time.monotonic() - stopped
    assert took < FAST["lease_duration"] + 2 * FAST["retry_period"] + 2.0, took  # slack for a busy CI
    env.source_secret("pull", "v4")
    wait_for(lambda: all(env.copy_matches(ns, "pull", "v4") for ns in targets))
    assert standby.stats["update"] == 3
    assert leader.stats["update"] == 6, "a stopped replica wrote"
    print(f"sync takeover after a crash: {took:.2f}s; writes: leader {dict(leader.stats)}, then {dict(standby.stats)}")


def test_a_replica_that_loses_the_lease_stops_writing(env: Env, core_v1: kubernetes.client.CoreV1Api) -> None:
    env.source_secret("pull", "v1")
    ns = env.target()
    env.write_config(secrets=["pull"])
    sync = env.start()
    wait_for(lambda: env.copy_matches(ns, "pull", "v1"), 10)
    # The copy is visible to us a moment before the sync counts its own write.
    wait_for(lambda: sync.stats["create"] == 1, what="the create counted")
    writes = sum(sync.stats.values())

    def unreachable() -> bool:
        raise ConnectionError("apiserver unreachable")

    sync.elector._try_acquire_or_renew = unreachable  # type: ignore[method-assign]
    wait_for(lambda: not sync.is_leader(), FAST["renew_deadline"] + 0.5, "lost leadership")
    env.source_secret("pull", "v2")
    time.sleep(1.5)
    assert env.copy_matches(ns, "pull", "v1"), "a replica without the lease wrote"
    assert sum(sync.stats.values()) == writes


def test_one_namespace_watch_serves_the_secret_cache_and_the_sync(env: Env) -> None:
    # With --watch-namespaces and the sync both on, the cache's namespace watch is the sync's too:
    # a namespace created later reaches the sync through it, and the sync, which did not start
    # that watch, does not stop it.
    env.source_secret("pull", "v1")
    env.write_config(secrets=["pull"], resyncSeconds=600)
    cache = ClusterCache(env.cp.api_client(), secrets=False, namespaces=True)
    cache.start()
    try:
        sync = env.start(namespaces=cache.namespaces)
        assert sync.namespaces is cache.namespaces
        wait_for(lambda: sync.is_leader() and sync.synced(), 10, "the sync leading and synced")
        ns = env.target(labels={"team": "a"})
        wait_for(lambda: env.copy_matches(ns, "pull", "v1"), BOUND, "the copy for a namespace created later")
        assert (cache.namespace_labels(ns) or {}).get("team") == "a"
        # Stopping the sync leaves the watch it borrowed running for the cache.
        sync.stop()
        later = env.target(labels={"team": "b"})
        wait_for(lambda: (cache.namespace_labels(later) or {}).get("team") == "b", BOUND, "the cache still watching")
    finally:
        cache.stop()
        cache.api_client.close()


def test_a_source_that_never_lists_holds_up_no_other_and_keeps_its_copies(
    env: Env, core_v1: kubernetes.client.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One source's list fails for good (in production: a name the Role does not cover, added by
    # a live rules change); the apiserver answers it 404 here.
    real = sync_module.Reflector

    def reflector(api_client: Any, *, kind: str, path: str, **kwargs: Any) -> Any:
        if kind == "sync-source:stuck":
            path += "-refused"
        return real(api_client, kind=kind, path=path, **kwargs)

    monkeypatch.setattr(sync_module, "Reflector", reflector)
    env.source_secret("pull", "v1")
    env.source_secret("stuck", "s1")
    ns = env.target()
    # A copy of the stuck source made earlier (say, by the previous leader).
    core_v1.create_namespaced_secret(
        ns, {"metadata": {"name": "stuck", "labels": {SYNCED_FROM_LABEL: env.source}}, "stringData": {"k": "v"}}
    )
    env.write_config(secrets=["pull", "stuck"])
    sync = env.start()
    wait_for(lambda: env.copy_matches(ns, "pull", "v1"), 10, "the copy of the source that lists")
    wait_for(lambda: sync.stats["create"] == 1, what="the create counted")
    time.sleep(1.5)  # a full resync or more
    assert not sync.sources["stuck"].synced()
    assert read(core_v1, ns, "stuck") is not None, "the copy of a source not known yet was deleted"
    assert sync.stats == {"create": 1}, sync.stats


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"secret": ["a"]}, "unknown key(s) ['secret']", id="typo"),
        pytest.param({"secrets": ["Bad_Name"]}, "not a valid Kubernetes name", id="bad-name"),
        pytest.param({"namespaces": []}, "every namespace", id="everywhere"),
        pytest.param({"namespaceSelector": {"matchLabels": {"a": "b c"}}}, "namespaceSelector", id="selector"),
        pytest.param({"resyncSeconds": 0}, "resyncSeconds", id="resync"),
        pytest.param({"secretsFromRules": "yes"}, "secretsFromRules", id="from-rules"),
        pytest.param(["a"], "must be a mapping", id="not-a-mapping"),
    ],
)
def test_bad_sync_configs_are_refused_readably(config: Any, message: str) -> None:
    with pytest.raises(SyncConfigError) as info:
        parse_sync_config(config, "sync.yaml")
    assert message in str(info.value)
    assert "sync.yaml" in str(info.value)


def test_namespace_matching_defaults() -> None:
    config = parse_sync_config({"sourceNamespace": "flyte", "secrets": ["a"]})
    assert config.matches_namespace("flytesnacks-development", {})
    assert config.matches_namespace("team-b-production", {})
    assert not config.matches_namespace("flytesnacks-dev", {})
    assert not config.matches_namespace("kube-system", {})
    with_selector = parse_sync_config(
        {"sourceNamespace": "flyte", "namespaces": ["*"], "namespaceSelector": {"matchLabels": {"flyte": "yes"}}}
    )
    assert with_selector.matches_namespace("anything", {"flyte": "yes"})
    assert not with_selector.matches_namespace("anything", {"flyte": "no"})
    assert not with_selector.matches_namespace("flyte", {"flyte": "yes"}), "never the source namespace"
    only_selector = parse_sync_config({"namespaces": [], "namespaceSelector": {"matchLabels": {"flyte": "yes"}}})
    assert only_selector.matches_namespace("x", {"flyte": "yes"})
    with pytest.raises(SyncConfigError, match="every namespace"):  # an empty selector selects everything
        parse_sync_config({"namespaces": [], "namespaceSelector": {"matchLabels": {}}})
