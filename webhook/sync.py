"""Optional sync of pull secrets into Flyte namespaces (off unless ``serve --sync-config`` is given).

The source Secrets live in one namespace (the webhook's, by default); :class:`SecretSync`
keeps a copy of each in every namespace the sync config selects (default: Flyte's
``*-development``, ``*-staging`` and ``*-production`` namespaces), and:

* copies carry the label ``pullsecrets-webhook/synced-from: <source namespace>`` (what marks
  them as ours) and the annotations ``pullsecrets-webhook/source`` (``ns/name``),
  ``pullsecrets-webhook/source-resource-version`` and ``pullsecrets-webhook/source-hash`` (a
  SHA-256 of the source's type and data, used to tell whether a copy is current);
* a change of a source rewrites its copies; a new matching namespace gets copies;
* only copies are ever deleted, and only ours (label value = our source namespace) whose
  source is gone, whose name left the sync config, or whose namespace no longer matches;
* a Secret of the same name that is not ours is never touched: it is logged once and counted in
  ``pullsecrets_webhook_sync_foreign_secrets`` (and retried every ``resyncSeconds``, in case it
  goes away).

Admissions play no part (a ``dryRun`` pod create therefore has no side effect). Every replica
watches, but only the holder of a Lease writes (:mod:`webhook.leader`); each write is
preceded by a leadership check, so a replica that lost the Lease stops at once.

What it reads: each source Secret by name (list/watch with ``fieldSelector=metadata.name=...``,
which RBAC authorizes per ``resourceNames``), namespaces as metadata, and its own copies as
metadata (``labelSelector`` on the owner label). Copies are written from the source data held in
memory; the copies' data is never read back.

The sync config (YAML)::

    sourceNamespace: flyte-pullsecrets   # default: the webhook's namespace ($POD_NAMESPACE)
    secrets: [ecr-pull, ghcr-my-org]     # Secret names in sourceNamespace; copies keep the name
    secretsFromRules: false              # also every secret the rules name
    namespaces: ["*-development", "*-staging", "*-production"]   # name globs (the default)
    namespaceSelector: {matchLabels: {}, matchExpressions: []}   # ANDed with the globs
    excludeNamespaces: [kube-system, kube-public, kube-node-lease]
    resyncSeconds: 300                   # full re-check, and retry of foreign-Secret conflicts
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter, Gauge

from webhook import FIELD_MANAGER, logs
from webhook.cache import Codec, MetadataCodec, Reflector, namespace_entry
from webhook.leader import LeaderElector
from webhook.metrics import REGISTRY
from webhook.rules import validate_secret_name
from webhook.selectors import LabelSelector, SelectorError, parse_selector

SYNCED_FROM_LABEL = "pullsecrets-webhook/synced-from"
SOURCE_ANNOTATION = "pullsecrets-webhook/source"
SOURCE_RV_ANNOTATION = "pullsecrets-webhook/source-resource-version"
SOURCE_HASH_ANNOTATION = "pullsecrets-webhook/source-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "pullsecrets-webhook"}

DEFAULT_NAMESPACE_GLOBS = ("*-development", "*-staging", "*-production")
DEFAULT_EXCLUDED = ("kube-system", "kube-public", "kube-node-lease")
_KEYS = {
    "sourceNamespace",
    "secrets",
    "secretsFromRules",
    "namespaces",
    "namespaceSelector",
    "excludeNamespaces",
    "resyncSeconds",
}
# A write whose effect the watch has not shown yet is not repeated for this long.
_EXPECT_TTL = 30.0

SYNC_WRITES = Counter(
    "pullsecrets_webhook_sync_writes",
    "Writes of synced pull secret copies, by action (create, update, delete).",
    ["action"],
    registry=REGISTRY,
)
SYNC_ERRORS = Counter(
    "pullsecrets_webhook_sync_errors", "Failed writes of synced pull secret copies.", registry=REGISTRY
)
SYNC_FOREIGN = Gauge(
    "pullsecrets_webhook_sync_foreign_secrets",
    "Target Secrets left alone because a Secret of that name exists and was not made by the sync.",
    registry=REGISTRY,
)
SYNC_COPIES = Gauge(
    "pullsecrets_webhook_sync_copies",
    "Copies made by the sync that exist, as last seen by the sync's watch.",
    registry=REGISTRY,
)


class SyncConfigError(ValueError):
    """The sync config is invalid; the message says which key and why."""


@dataclass(frozen=True)
class SyncConfig:
    source_namespace: str | None = None
    secrets: tuple[str, ...] = ()
    secrets_from_rules: bool = False
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACE_GLOBS
    namespace_selector: LabelSelector | None = None
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED
    resync_seconds: float = 300.0

    def matches_namespace(self, name: str, labels: Mapping[str, str] | None) -> bool:
        """Does namespace ``name`` (with ``labels``) get copies? The source namespace never does."""
        if name == self.source_namespace or name in self.exclude_namespaces:
            return False
        if self.namespaces and not any(fnmatch.fnmatchcase(name, g) for g in self.namespaces):
            return False
        return self.namespace_selector is None or self.namespace_selector.matches(labels or {})


def parse_sync_config(data: Any, source: str = "<sync config>") -> SyncConfig:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SyncConfigError(f"{source}: must be a mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise SyncConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")

    def str_list(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = data.get(key, list(default))
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SyncConfigError(f"{source}: '{key}' must be a list of non-empty strings")
        return tuple(value)

    secrets = str_list("secrets", ())
    for name in secrets:
        try:
            validate_secret_name(name)
        except ValueError as exc:
            raise SyncConfigError(f"{source}: secrets: {exc}") from None
    from_rules = data.get("secretsFromRules", False)
    if not isinstance(from_rules, bool):
        raise SyncConfigError(f"{source}: 'secretsFromRules' must be true or false")
    src_ns = data.get("sourceNamespace")
    if src_ns is not None and (not isinstance(src_ns, str) or not src_ns):
        raise SyncConfigError(f"{source}: 'sourceNamespace' must be a namespace name")
    selector = None
    if data.get("namespaceSelector"):
        try:
            selector = parse_selector(data["namespaceSelector"], "namespaceSelector")
        except SelectorError as exc:
            raise SyncConfigError(f"{source}: {exc}") from None
        if not selector.requirements:  # an empty selector selects everything: same as none
            selector = None
    globs = str_list("namespaces", DEFAULT_NAMESPACE_GLOBS)
    if not globs and selector is None:
        raise SyncConfigError(
            f"{source}: 'namespaces' is empty and there is no 'namespaceSelector': that would copy the secrets "
            "into every namespace; say namespaces: ['*'] if that is what you want"
        )
    resync = data.get("resyncSeconds", 300)
    if isinstance(resync, bool) or not isinstance(resync, int | float) or resync <= 0:
        raise SyncConfigError(f"{source}: 'resyncSeconds' must be a positive number")
    return SyncConfig(
        source_namespace=src_ns,
        secrets=secrets,
        secrets_from_rules=from_rules,
        namespaces=globs,
        namespace_selector=selector,
        exclude_namespaces=str_list("excludeNamespaces", DEFAULT_EXCLUDED),
        resync_seconds=float(resync),
    )


def load_sync_config(path: Path | str) -> SyncConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SyncConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise SyncConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_sync_config(data, str(path))


# --------------------------------------------------------------------------------------------------
# What the watches keep
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    type: str
    data: Mapping[str, str]
    resource_version: str
    digest: str


@dataclass(frozen=True)
class Copy:
    resource_version: str
    source: str | None
    digest: str | None


def _precondition(resource_version: str | None) -> Any:
    from kubernetes import client

    return client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=resource_version))


def source_digest(kind: str, data: Mapping[str, str]) -> str:
    payload = json.dumps({"type": kind, "data": dict(data)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _source_entry(obj: Mapping[str, Any]) -> tuple[str, Source] | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        return None
    kind = obj.get("type") or "Opaque"
    data = dict(obj.get("data") or {})
    return meta["name"], Source(kind, data, meta.get("resourceVersion") or "", source_digest(kind, data))


def _copy_entry(obj: Mapping[str, Any]) -> tuple[tuple[str, str], Copy] | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name") or not meta.get("namespace"):
        return None
    ann = meta.get("annotations") or {}
    copy = Copy(meta.get("resourceVersion") or "", ann.get(SOURCE_ANNOTATION), ann.get(SOURCE_HASH_ANNOTATION))
    return (meta["namespace"], meta["name"]), copy


# --------------------------------------------------------------------------------------------------
# The sync loop
# --------------------------------------------------------------------------------------------------


@dataclass
class _Expectation:
    before: str | None  # the copy's resourceVersion before our write (None: it did not exist)
    at: float = field(default_factory=time.monotonic)


class SecretSync:
    """Copies source Secrets into matching namespaces while holding the Lease; see the module doc.

    ``extra_names()`` (optional) adds secret names at each pass, e.g. every secret named by the
    rules when the config says ``secretsFromRules: true``. With ``config_path`` the file is
    re-read when its content changes (an invalid file is logged and the previous config kept).
    """

    def __init__(
        self,
        api_client: Any,
        config: SyncConfig,
        *,
        identity: str,
        lease_name: str = "pullsecrets-webhook-sync",
        lease_namespace: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        config_path: Path | str | None = None,
        extra_names: Callable[[], Iterable[str]] | None = None,
        watch_timeout: tuple[int, int] = (240, 360),
        namespaces: Reflector | None = None,
    ) -> None:
        if not config.source_namespace:
            raise SyncConfigError("the sync needs a source namespace (sourceNamespace, or $POD_NAMESPACE)")
        self.api_client = api_client
        self.config = config
        self.source_namespace: str = config.source_namespace
        self.identity = identity
        self.config_path = Path(config_path) if config_path else None
        self._config_text = self._read_config_text()
        self.extra_names = extra_names
        self.watch_timeout = watch_timeout
        self.elector = LeaderElector(
            api_client,
            name=lease_name,
            namespace=lease_namespace or self.source_namespace,
            identity=identity,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
            on_started_leading=self._on_started_leading,
        )
        # The namespace watch of the Secret cache, when it keeps one, serves here too: one watch
        # per process, not two. Whoever made it starts and stops it.
        self._owns_namespaces = namespaces is None
        if namespaces is None:
            namespaces = Reflector(
                api_client,
                path="/api/v1/namespaces",
                kind="sync-namespaces",
                transform=namespace_entry,
                codec=MetadataCodec(),
                watch_timeout=watch_timeout,
            )
        namespaces.add_listener(self.kick)
        self.namespaces = namespaces
        self.copies = Reflector(
            api_client,
            path="/api/v1/secrets",
            kind="sync-copies",
            transform=_copy_entry,
            codec=MetadataCodec(),
            label_selector=f"{SYNCED_FROM_LABEL}={self.source_namespace}",
            on_change=self.kick,
            watch_timeout=watch_timeout,
        )
        self.sources: dict[str, Reflector] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.foreign: set[tuple[str, str]] = set()  # copies refused by a Secret the sync did not create
        self._expect: dict[tuple[str, str], _Expectation] = {}
        self._kicked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._owns_namespaces:
            self.namespaces.start()
        self.copies.start()
        self._ensure_sources(self._wanted_names() or set())
        self.elector.start()
        self._thread = threading.Thread(target=self._run, name="secret-sync", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop writing at once, give the Lease up (unless ``release`` is False), stop the watches."""
        self._stop.set()
        self._kicked.set()
        self.elector.stop(release=release)
        if self._thread is not None:
            self._thread.join(10)
        owned = (self.namespaces,) if self._owns_namespaces else ()
        for reflector in (*owned, self.copies, *self.sources.values()):
            reflector.stop()

    def is_leader(self) -> bool:
        return self.elector.is_leader() and not self._stop.is_set()

    def synced(self) -> bool:
        # Not the sources: reconcile leaves a source it does not know yet alone (no copy, no delete),
        # so one that never lists (say, a name outside the Role's resourceNames) holds up no other.
        return self.namespaces.synced() and self.copies.synced()

    def kick(self) -> None:
        """Ask for a reconcile pass soon (called by the watches on every change)."""
        self._idle.clear()
        self._kicked.set()

    def wait_idle(self, timeout: float) -> bool:
        """Block until a pass finished with nothing left to write (tests)."""
        return self._idle.wait(timeout)

    def _on_started_leading(self) -> None:
        self._expect.clear()
        self.foreign.clear()
        SYNC_FOREIGN.set(0)
        self.kick()

    # ---- config ----------------------------------------------------------------------------------

    def _read_config_text(self) -> str | None:
        if self.config_path is None:
            return None
        try:
            return self.config_path.read_text()
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        text = self._read_config_text()
        if text is None or text == self._config_text:
            return
        self._config_text = text
        try:
            config = parse_sync_config(yaml.safe_load(text), str(self.config_path))
        except (SyncConfigError, yaml.YAMLError) as exc:
            logs.error("sync config invalid; keeping the previous one", reason=str(exc))
            return
        if config.source_namespace and config.source_namespace != self.source_namespace:
            logs.warning(
                "sync config changes sourceNamespace; restart to apply it",
                current=self.source_namespace,
                requested=config.source_namespace,
            )
        self.config = dataclasses.replace(config, source_namespace=self.source_namespace)
        logs.info("sync config reloaded", secrets=list(config.secrets), namespaces=list(config.namespaces))
        self.kick()

    def _wanted_names(self) -> set[str] | None:
        """The source names now, or None if they cannot be known (then nothing is written at all:
        a name missing by accident would otherwise delete its copies)."""
        names = set(self.config.secrets)
        if self.config.secrets_from_rules and self.extra_names is not None:
            try:
                names.update(n for n in self.extra_names() if isinstance(n, str))
            except Exception:
                logs.error("could not read the secret names of the rules; skipping this sync pass", exc_info=True)
                return None
        return names

    def _ensure_sources(self, names: set[str]) -> None:
        for name in names - set(self.sources):
            reflector = Reflector(
                self.api_client,
                path=f"/api/v1/namespaces/{self.source_namespace}/secrets",
                kind=f"sync-source:{name}",
                transform=_source_entry,
                codec=Codec(),
                field_selector=f"metadata.name={name}",
                on_change=self.kick,
                watch_timeout=self.watch_timeout,
            )
            self.sources[name] = reflector
            reflector.start()
        for name in set(self.sources) - names:
            self.sources.pop(name).stop(timeout=0)

    # ---- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        last_full = 0.0
        tick = min(1.0, self.elector.retry_period)
        while not self._stop.is_set():
            self._kicked.wait(tick)
            if self._stop.is_set():
                break
            self._kicked.clear()
            self._stop.wait(0.05)  # let a burst of events land in one pass
            try:
                self._maybe_reload()
                names = self._wanted_names()
                if names is None:
                    continue
                self._ensure_sources(names)
                if not self.is_leader() or not self.synced():
                    continue
                now = time.monotonic()
                full = now - last_full >= self.config.resync_seconds
                if full:
                    last_full = now
                pending = self.reconcile(names, retry_foreign=full)
                if not pending:
                    self._idle.set()
            except Exception:
                logs.error("sync pass failed", exc_info=True)

    def reconcile(self, names: set[str], *, retry_foreign: bool = False) -> int:
        """One pass: compare what should exist with what does and write the difference.

        Returns how many keys still await a write or the watch's confirmation of one.
        """
        sources: dict[str, Source | None] = {}
        for name in names:
            reflector = self.sources.get(name)
            if reflector is None or not reflector.synced():
                continue  # unknown yet: neither copy nor delete
            sources[name] = reflector.get(name)
        namespaces = self.namespaces.snapshot()
        copies = self.copies.snapshot()
        SYNC_COPIES.set(len(copies))
        targets = [
            ns
            for ns, info in namespaces.items()
            if not info.terminating and self.config.matches_namespace(ns, info.labels)
        ]
        desired: dict[tuple[str, str], Source] = {}
        for ns in targets:
            for name, src in sources.items():
                if src is not None:
                    desired[(ns, name)] = src
        now = time.monotonic()
        pending = 0
        for key, src in desired.items():
            copy = copies.get(key)
            if self._awaiting(key, copy, now):
                pending += 1
                continue
            if copy is None:
                if key in self.foreign and not retry_foreign:
                    continue
                if not self._write("create", key, src, None):
                    return pending + 1
                pending += 1
            elif copy.digest != src.digest:
                if not self._write("update", key, src, copy):
                    return pending + 1
                pending += 1
        for key, copy in copies.items():
            if key in desired or self._awaiting(key, copy, now):
                continue
            ns, name = key
            if ns == self.source_namespace:
                continue  # never anything in the source namespace, whatever its labels say
            info = namespaces.get(ns)
            if info is not None and info.terminating:
                continue  # the namespace's deletion takes its Secrets along
            if name in names and name not in sources:
                continue  # the source is not known yet
            if copy.source not in (None, f"{self.source_namespace}/{name}"):
                continue  # labelled as ours but copied from elsewhere: not ours to judge
            if not self._write("delete", key, None, copy):
                return pending + 1
            pending += 1
        self.foreign &= desired.keys()
        SYNC_FOREIGN.set(len(self.foreign))
        return pending

    def _awaiting(self, key: tuple[str, str], copy: Copy | None, now: float) -> bool:
        """True while the watch has not yet shown the effect of our last write to ``key``."""
        exp = self._expect.get(key)
        if exp is None:
            return False
        current = copy.resource_version if copy is not None else None
        if current == exp.before and now - exp.at < _EXPECT_TTL:
            return True
        del self._expect[key]
        return False

    def _body(self, key: tuple[str, str], src: Source, resource_version: str | None) -> dict[str, Any]:
        ns, name = key
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": ns,
            "labels": {SYNCED_FROM_LABEL: self.source_namespace, **MANAGED_BY},
            "annotations": {
                SOURCE_ANNOTATION: f"{self.source_namespace}/{name}",
                SOURCE_RV_ANNOTATION: src.resource_version,
                SOURCE_HASH_ANNOTATION: src.digest,
            },
        }
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "v1", "kind": "Secret", "type": src.type, "metadata": metadata, "data": dict(src.data)}

    def _write(self, action: str, key: tuple[str, str], src: Source | None, copy: Copy | None) -> bool:
        """Do one write if still leader; False means stop this pass (leadership lost)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        if not self.is_leader():
            return False
        core = client.CoreV1Api(self.api_client)
        ns, name = key
        before = copy.resource_version if copy is not None else None
        try:
            if action == "create":
                assert src is not None
                core.create_namespaced_secret(ns, self._body(key, src, None), field_manager=FIELD_MANAGER)
                if key in self.foreign:
                    self.foreign.discard(key)
                    logs.info("synced secret: the foreign Secret is gone; copy created", namespace=ns, secret=name)
            elif action == "update":
                assert src is not None
                try:
                    core.replace_namespaced_secret(name, ns, self._body(key, src, before), field_manager=FIELD_MANAGER)
                except ApiException as exc:
                    if exc.status != 422:  # 422: the type changed, and a Secret's type is immutable
                        raise
                    core.delete_namespaced_secret(name, ns, body=_precondition(before))
                    self._count("delete", ns, name, "the source's type changed")
                    core.create_namespaced_secret(ns, self._body(key, src, None), field_manager=FIELD_MANAGER)
                    action = "create"
            else:
                core.delete_namespaced_secret(name, ns, body=_precondition(before))
        except ApiException as exc:
            if action == "create" and exc.status == 409:
                if key not in self.foreign:
                    self.stats["foreign"] += 1
                    logs.warning(
                        "not syncing: a Secret of that name exists and was not created by the sync; leaving it alone",
                        namespace=ns,
                        secret=name,
                    )
                self.foreign.add(key)
                SYNC_FOREIGN.set(len(self.foreign))
                return True
            if exc.status in (404, 409):  # changed or gone under us: the watch will tell, next pass decides
                self._expect.pop(key, None)
                self.kick()
                return True
            self.stats["error"] += 1
            SYNC_ERRORS.inc()
            logs.error(
                "sync write failed", action=action, namespace=ns, secret=name, status=exc.status, reason=exc.reason
            )
            return True
        self._expect[key] = _Expectation(before)
        self._count(action, ns, name, None)
        return True

    def _count(self, action: str, ns: str, name: str, why: str | None) -> None:
        self.stats[action] += 1
        SYNC_WRITES.labels(action).inc()
        logs.info(f"synced secret {action}d", namespace=ns, secret=name, source=self.source_namespace, why=why)


__all__ = [
    "DEFAULT_NAMESPACE_GLOBS",
    "SOURCE_ANNOTATION",
    "SOURCE_HASH_ANNOTATION",
    "SOURCE_RV_ANNOTATION",
    "SYNCED_FROM_LABEL",
    "SecretSync",
    "SyncConfig",
    "SyncConfigError",
    "load_sync_config",
    "parse_sync_config",
]
