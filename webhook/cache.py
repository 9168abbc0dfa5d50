"""A watch-backed, metadata-only cache of Secrets (names and types) and Namespaces (labels).

The admission path asks two questions synchronously, on the event loop: does Secret ``name``
exist in namespace ``ns`` (and of which type), and which labels does namespace ``ns`` carry.
:class:`ClusterCache` answers both from memory with one dict lookup; background threads keep
the memory current with the usual list-then-watch protocol (a ``Reflector`` per kind).

What is requested, and why no Secret data ever reaches this cache
-----------------------------------------------------------------
A Secret's ``type`` is not part of its metadata, so ``PartialObjectMetadata`` (the
metadata-only form) cannot answer "is it a docker config secret?". Verified against the
real kube-apiserver (v1.36) in ``tests/test_cache.py``:

* **Secrets** are listed and watched with server-side printing,
  ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` and ``includeObject=Metadata``.
  Each row carries the printed columns ``Name``, ``Type``, ``Data`` (the *number* of keys,
  never their values), ``Age``, plus the row's ``PartialObjectMetadata`` (name, namespace,
  resourceVersion). Table works for both list and watch, with resourceVersion, so the cache
  gets the type without the data. Only the name, namespace and type are kept. (With
  ``includeObject=None`` rows of a cluster-wide list lack the namespace, hence ``Metadata``.)
* **Namespaces** are listed with
  ``application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`` and watched with
  ``application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1``; only name and labels
  are kept.
* If an apiserver (or an aggregation proxy in front of it) answers the Table request with
  something other than a Table, the Secret reflector falls back to PartialObjectMetadata and
  records existence only: :meth:`ClusterCache.secret_type` then returns
  :data:`TYPE_UNKNOWN` (``""``) for Secrets that exist.

RBAC cannot express "metadata only": the ``list``/``watch`` verbs on ``secrets`` that this
cache needs let the same ServiceAccount read every Secret's data if it asked for it. That is
why the cache is opt-in (``--watch-secrets``) and documented in docs/secret-awareness.md.

Watch protocol: list (paginated) to get a consistent snapshot and its resourceVersion, swap
the whole store, then watch from that resourceVersion. A watch that ends (server timeout,
dropped connection) resumes from the last resourceVersion seen; ``410 Gone`` (the
resourceVersion was compacted away) relists at once; other errors back off exponentially
(0.5 s up to 30 s, with jitter) before retrying.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from prometheus_client import Counter, Gauge
from urllib3.exceptions import HTTPError

from webhook import logs
from webhook.metrics import REGISTRY

ACCEPT_TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1,application/json"
ACCEPT_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
ACCEPT_JSON = "application/json"

# secret_type() of a Secret that exists when the apiserver could not print its type (fallback).
TYPE_UNKNOWN = ""

_PAGE_SIZE = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0

CACHE_OBJECTS = Gauge(
    "pullsecrets_webhook_cache_objects",
    "Objects held by each watch, by kind (secrets and namespaces for the cache; sync-namespaces, "
    "sync-copies and sync-source:<name> for the secret sync).",
    ["kind"],
    registry=REGISTRY,
)
CACHE_SYNCED = Gauge(
    "pullsecrets_webhook_cache_synced",
    "1 once the watch of a kind (see pullsecrets_webhook_cache_objects) has completed its initial list.",
    ["kind"],
    registry=REGISTRY,
)
CACHE_LISTS = Counter(
    "pullsecrets_webhook_cache_lists",
    "Full lists by the watch loops, by kind and reason (initial, gone, error).",
    ["kind", "reason"],
    registry=REGISTRY,
)
CACHE_WATCH_ERRORS = Counter(
    "pullsecrets_webhook_cache_watch_errors",
    "Failed list or watch requests of the watch loops, by kind.",
    ["kind"],
    registry=REGISTRY,
)


class GoneError(Exception):
    """The watch's resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


class WatchFailed(Exception):
    """A list or watch request failed; carries the HTTP status when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------
# Raw requests through the kubernetes client (custom Accept headers, streamed bodies)
# --------------------------------------------------------------------------------------------------


def raw_request(
    api_client: Any,
    path: str,
    query: list[tuple[str, str]],
    accept: str,
    timeout: float | tuple[float, float] | None,
) -> Any:
    """GET ``path`` with the client's auth and TLS; returns the client's RESTResponse, unread.

    The generated list methods would try to decode a Table into a ``V1SecretList``; going one
    level down keeps the client's configuration (host, CA, token refresh) and lets the caller
    choose the representation and stream the body.
    """
    method, url, headers, body, post = api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": accept},
        auth_settings=["BearerToken"],
    )
    return api_client.call_api(method, url, headers, body, post, _request_timeout=timeout)


def _status_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
        return str(doc.get("message") or doc)[:300]
    except (ValueError, AttributeError):
        return data[:300].decode(errors="replace")


def _check(resp: Any, what: str) -> None:
    if 200 <= resp.status <= 299:
        return
    data = resp.read() or b""
    if resp.status == 410:
        raise GoneError(f"{what}: 410 Gone")
    raise WatchFailed(f"{what}: HTTP {resp.status}: {_status_message(data)}", resp.status)


# --------------------------------------------------------------------------------------------------
# Codecs: how list bodies and watch events map to (metadata, extra) pairs
# --------------------------------------------------------------------------------------------------


class Codec:
    """Plain JSON objects (``items`` of a list, ``object`` of an event)."""

    list_accept = ACCEPT_JSON
    watch_accept = ACCEPT_JSON
    extra_query: tuple[tuple[str, str], ...] = ()

    def list_items(self, doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        yield from doc.get("items") or ()

    def event_items(self, obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        yield obj

    def accepts(self, doc: Mapping[str, Any]) -> bool:
        return True


class MetadataCodec(Codec):
    """PartialObjectMetadata(List): metadata only, for any resource."""

    list_accept = ACCEPT_METADATA_LIST
    watch_accept = ACCEPT_METADATA

    def accepts(self, doc: Mapping[str, Any]) -> bool:
        return doc.get("kind") in ("PartialObjectMetadataList", "PartialObjectMetadata")


class TableCodec(Codec):
    """Server-side printing: each row becomes ``{"metadata": ..., "columns": {name: cell}}``.

    Column definitions come with the list and with the first event of a watch; later events
    carry rows only, so the positions seen last are kept.
    """

    list_accept = ACCEPT_TABLE
    watch_accept = ACCEPT_TABLE
    extra_query = (("includeObject", "Metadata"),)

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self._positions: dict[str, int] = {}

    def accepts(self, doc: Mapping[str, Any]) -> bool:
        return doc.get("kind") == "Table"

    def _learn(self, doc: Mapping[str, Any]) -> None:
        defs = doc.get("columnDefinitions")
        if defs:
            names = [d.get("name") for d in defs]
            self._positions = {c: names.index(c) for c in self.columns if c in names}

    def _rows(self, doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        self._learn(doc)
        for row in doc.get("rows") or ():
            obj = row.get("object") or {}
            cells = row.get("cells") or []
            columns = {c: cells[i] for c, i in self._positions.items() if i < len(cells)}
            yield {"metadata": obj.get("metadata") or {}, "columns": columns}

    def list_items(self, doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        yield from self._rows(doc)

    def event_items(self, obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        if obj.get("kind") != "Table":  # a BOOKMARK may come as bare metadata
            yield obj
            return
        yield from self._rows(obj)


# --------------------------------------------------------------------------------------------------
# The reflector: list + watch one resource into a dict
# --------------------------------------------------------------------------------------------------

Key = Hashable
Transform = Callable[[Mapping[str, Any]], tuple[Key, Any] | None]


class Reflector:
    """Keeps ``{key: value}`` for one resource in step with the apiserver, in a daemon thread.

    ``transform(obj)`` maps a decoded object to ``(key, value)`` (or None to leave it out);
    it must keep only what is needed, since the value is what stays in memory. Reads
    (:meth:`get`, :meth:`snapshot`) are lock-free dict operations on a dict that is either
    replaced whole (after a list) or changed one key at a time under a lock (watch events).
    ``on_change`` (and every function given to :meth:`add_listener`) is called from the
    reflector's thread after every change that was applied.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        path: str,
        kind: str,
        transform: Transform,
        codec: Codec | None = None,
        fallback: Codec | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_change: Callable[[], None] | None = None,
        watch_timeout: tuple[int, int] = (240, 360),
    ) -> None:
        self.api_client = api_client
        self.path = path
        self.kind = kind
        self.transform = transform
        self.codec = codec or Codec()
        self.fallback = fallback
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._listeners: list[Callable[[], None]] = [on_change] if on_change is not None else []
        self.watch_timeout = watch_timeout
        self._items: dict[Key, Any] = {}
        self._write_lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self.resource_version: str | None = None
        self.lists = 0  # full lists done (tests look at it; the metric is CACHE_LISTS)
        self.last_error: str | None = None

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, key: Key) -> Any:
        return self._items.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def snapshot(self) -> dict[Key, Any]:
        return dict(self._items)

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:  # unblock a read waiting on the watch stream
            with contextlib.suppress(Exception):
                resp.response.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        need_list, reason = True, "initial"
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list(reason)
                    need_list = False
                self._watch()
                backoff = _BACKOFF_MIN  # a watch that ended normally: resume from the last version
            except GoneError:
                need_list, reason = True, "gone"
            except Exception as exc:
                if self._stop.is_set():
                    break
                CACHE_WATCH_ERRORS.labels(self.kind).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                logs.warning("watch failed; retrying", kind=self.kind, error=self.last_error, retry_s=round(backoff, 2))
                self._stop.wait(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto
                backoff = min(backoff * 2, _BACKOFF_MAX)
                # A dropped connection resumes the watch where it was; anything else starts over.
                if self.resource_version is None or not isinstance(exc, (OSError, HTTPError)):
                    need_list, reason = True, "error"

    def _query(self, codec: Codec) -> list[tuple[str, str]]:
        query = list(codec.extra_query)
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        if self.field_selector:
            query.append(("fieldSelector", self.field_selector))
        return query

    def _list(self, reason: str) -> None:
        codec = self.codec
        items: dict[Key, Any] = {}
        cont: str | None = None
        rv: str | None = None
        while True:
            query = [*self._query(codec), ("limit", str(_PAGE_SIZE))]
            if cont:
                query.append(("continue", cont))
            resp = raw_request(self.api_client, self.path, query, codec.list_accept, (10, 60))
            _check(resp, f"list {self.kind}")  # a 410 here (expired continue) relists from scratch
            doc = json.loads(resp.read())
            if not codec.accepts(doc):
                if self.fallback is None or codec is self.fallback:
                    raise WatchFailed(f"list {self.kind}: unexpected kind {doc.get('kind')!r}")
                logs.warning(
                    "apiserver cannot print this resource as a Table; keeping existence only",
                    kind=self.kind,
                    got=doc.get("kind"),
                )
                self.codec = codec = self.fallback
                items, cont = {}, None
                continue
            for obj in codec.list_items(doc):
                kv = self.transform(obj)
                if kv is not None:
                    items[kv[0]] = kv[1]
            meta = doc.get("metadata") or {}
            rv = meta.get("resourceVersion")
            cont = meta.get("continue")
            if not cont:
                break
        with self._write_lock:
            self._items = items
        self.resource_version = rv
        self.lists += 1
        CACHE_LISTS.labels(self.kind, reason).inc()
        CACHE_OBJECTS.labels(self.kind).set(len(items))
        first = not self._synced.is_set()
        self._synced.set()
        CACHE_SYNCED.labels(self.kind).set(1)
        if first:
            logs.info("cache synced", kind=self.kind, objects=len(items))
        self._notify()

    def _watch(self) -> None:
        codec = self.codec
        lo, hi = self.watch_timeout
        seconds = random.randint(lo, hi)  # noqa: S311 - spreads reconnects, not crypto
        query = [
            *self._query(codec),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(seconds)),
        ]
        if self.resource_version:
            query.append(("resourceVersion", self.resource_version))
        resp = raw_request(self.api_client, self.path, query, codec.watch_accept, (10, seconds + 30))
        self._resp = resp
        try:
            _check(resp, f"watch {self.kind}")
            if self._stop.is_set():
                return
            for line in _lines(resp.response):
                if self._stop.is_set():
                    return
                if line.strip():
                    self._event(json.loads(line))
        finally:
            self._resp = None
            with contextlib.suppress(Exception):
                resp.response.release_conn()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise GoneError(obj.get("message") or "410 Gone")
            raise WatchFailed(f"watch {self.kind}: {obj.get('message') or obj}", code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        changed = False
        for item in self.codec.event_items(obj):
            kv = self.transform(item)
            if kv is None:
                continue
            key, value = kv
            with self._write_lock:
                if kind == "DELETED":
                    changed |= self._items.pop(key, None) is not None
                elif self._items.get(key) != value:
                    self._items[key] = value
                    changed = True
            item_rv = (item.get("metadata") or {}).get("resourceVersion")
            rv = item_rv or rv
        if rv:
            self.resource_version = rv
        if changed:
            CACHE_OBJECTS.labels(self.kind).set(len(self._items))
            self._notify()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Also call ``listener`` after every applied change (a second reader of the same watch)."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # one reader's fault must not starve the others or stop the watch
                logs.error("change handler failed", exc_info=True, kind=self.kind)


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a streamed urllib3 response (chunks may split lines)."""
    buf = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf.strip():
        yield buf


# --------------------------------------------------------------------------------------------------
# The cache the admission path reads
# --------------------------------------------------------------------------------------------------


def _secret_entry(obj: Mapping[str, Any]) -> tuple[Key, Any] | None:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        return None
    # Only the Table codec gives a type ("columns"); metadata-only objects (the fallback) have none.
    columns = obj.get("columns")
    kind = columns.get("Type") if isinstance(columns, Mapping) else None
    return (namespace, name), str(kind) if kind else TYPE_UNKNOWN


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """What is kept of a Namespace: its labels (read-only) and whether it is being deleted.

    One shape for every reader, so the admission path and the secret sync can share one watch.
    """

    labels: Mapping[str, str]
    terminating: bool


def namespace_entry(obj: Mapping[str, Any]) -> tuple[Key, NamespaceInfo] | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    return name, NamespaceInfo(MappingProxyType(dict(meta.get("labels") or {})), bool(meta.get("deletionTimestamp")))


class ClusterCache:
    """Metadata-only, watch-backed cache of Secrets (names + types, never data) and Namespaces (labels).

    ``secret_namespaces(ns)``, when given, decides which namespaces' Secrets are kept (it is
    evaluated when a Secret is listed or changes); the others are dropped on arrival.
    ``on_change(kind)`` is called from a background thread after the store of ``kind``
    (``"secrets"`` or ``"namespaces"``) changed.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        secrets: bool,
        namespaces: bool,
        secret_namespaces: Callable[[str], bool] | None = None,
        on_change: Callable[[str], None] | None = None,
        watch_timeout: tuple[int, int] = (240, 360),
    ) -> None:
        self.api_client = api_client
        self.secret_namespaces = secret_namespaces
        self._on_change = on_change
        self.secrets: Reflector | None = None
        self.namespaces: Reflector | None = None
        if secrets:
            self.secrets = Reflector(
                api_client,
                path="/api/v1/secrets",
                kind="secrets",
                transform=self._keep_secret,
                codec=TableCodec(("Name", "Type")),
                fallback=MetadataCodec(),
                on_change=lambda: self._changed("secrets"),
                watch_timeout=watch_timeout,
            )
        if namespaces:
            self.namespaces = Reflector(
                api_client,
                path="/api/v1/namespaces",
                kind="namespaces",
                transform=namespace_entry,
                codec=MetadataCodec(),
                on_change=lambda: self._changed("namespaces"),
                watch_timeout=watch_timeout,
            )

    def _keep_secret(self, obj: Mapping[str, Any]) -> tuple[Key, Any] | None:
        entry = _secret_entry(obj)
        if entry is None:
            return None
        if self.secret_namespaces is not None and not self.secret_namespaces(entry[0][0]):
            return None
        return entry

    def _changed(self, kind: str) -> None:
        if self._on_change is not None:
            self._on_change(kind)

    def _reflectors(self) -> list[Reflector]:
        return [r for r in (self.secrets, self.namespaces) if r is not None]

    def start(self) -> None:
        """Start the list+watch threads (returns at once; see :meth:`synced`)."""
        for reflector in self._reflectors():
            reflector.start()

    def stop(self) -> None:
        for reflector in self._reflectors():
            reflector.stop()

    def synced(self) -> bool:
        """True once the initial list of every enabled kind has completed."""
        return all(r.synced() for r in self._reflectors())

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for reflector in self._reflectors():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not reflector.wait_synced(left):
                return False
        return True

    def secret_type(self, namespace: str, name: str) -> str | None:
        """The Secret's type, :data:`TYPE_UNKNOWN` if it exists but its type could not be read, or
        None if it does not exist (or the Secret cache is off). Meaningful once :meth:`synced`."""
        if self.secrets is None:
            return None
        return self.secrets.get((namespace, name))

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels (read-only), or None when the namespace is unknown."""
        if self.namespaces is None:
            return None
        info: NamespaceInfo | None = self.namespaces.get(namespace)
        return None if info is None else info.labels


__all__ = [
    "ACCEPT_METADATA",
    "ACCEPT_METADATA_LIST",
    "ACCEPT_TABLE",
    "TYPE_UNKNOWN",
    "ClusterCache",
    "Codec",
    "GoneError",
    "MetadataCodec",
    "Reflector",
    "TableCodec",
    "WatchFailed",
    "raw_request",
]
