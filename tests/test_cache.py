"""The metadata-only Secret/Namespace cache: against the real apiserver, and its watch protocol on a fake.

The end-to-end tests record every byte the cache receives from the apiserver, to prove what the
module docstring claims: Secrets come as server-side printed Tables (type, no data) and nothing
the cache reads or keeps contains a Secret's data.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import pytest

from tests.controlplane import ControlPlane
from tests.e2e import wait_until
from webhook.cache import (
    ACCEPT_TABLE,
    TYPE_UNKNOWN,
    ClusterCache,
    MetadataCodec,
    Reflector,
    TableCodec,
    _secret_entry,
)

BOUND = 5.0  # seconds within which a change must show in the cache


def wait_for(predicate: Callable[[], bool], timeout: float = BOUND, what: str = "") -> float:
    return wait_until(predicate, timeout, what, interval=0.02)


# --------------------------------------------------------------------------------------------------
# Recording what the cache receives
# --------------------------------------------------------------------------------------------------


class _Tee:
    """Wraps a urllib3 response, appending every byte read to ``sink``."""

    def __init__(self, resp: Any, sink: list[bytes]) -> None:
        self._resp = resp
        self._sink = sink

    @property
    def data(self) -> bytes:
        data = self._resp.data
        self._sink.append(data)
        return data

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        for chunk in self._resp.stream(*args, **kwargs):
            self._sink.append(chunk)
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)


@pytest.fixture
def recording_client(control_plane: ControlPlane) -> Iterator[tuple[Any, list[tuple[str, str]], list[bytes]]]:
    """An admin ApiClient whose requests (url, Accept) and received bytes are recorded."""
    api = control_plane.api_client()
    requests: list[tuple[str, str]] = []
    received: list[bytes] = []
    original = api.call_api

    def call_api(method: str, url: str, headers: dict[str, str] | None = None, *args: Any, **kwargs: Any) -> Any:
        requests.append((url, (headers or {}).get("Accept", "")))
        resp = original(method, url, headers, *args, **kwargs)
        resp.response = _Tee(resp.response, received)
        return resp

    api.call_api = call_api  # type: ignore[method-assign]
    yield api, requests, received
    api.close()


# --------------------------------------------------------------------------------------------------
# Against the real apiserver
# --------------------------------------------------------------------------------------------------


def _finalize(core: kubernetes.client.CoreV1Api, name: str) -> None:
    """Delete a namespace for real: no namespace controller runs here, so drop its finalizer by hand."""
    core.delete_namespace(name)
    ns = core.api_client.sanitize_for_serialization(core.read_namespace(name))
    ns["spec"]["finalizers"] = []
    core.replace_namespace_finalize(name, ns)


def test_cache_follows_secrets_and_namespaces_without_ever_reading_data(
    recording_client: tuple[Any, list[tuple[str, str]], list[bytes]],
    core_v1: kubernetes.client.CoreV1Api,
    namespace: Callable[..., str],
) -> None:
    api, requests, received = recording_client
    marker = f"top-secret-{uuid.uuid4().hex}"
    docker_config = json.dumps({"auths": {"ghcr.io": {"auth": base64.b64encode(marker.encode()).decode()}}})
    encoded = base64.b64encode(docker_config.encode()).decode()
    ns = namespace(labels={"team": "a"})
    core_v1.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "before"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": encoded},
        },
    )

    cache = ClusterCache(api, secrets=True, namespaces=True)
    assert not cache.synced()
    cache.start()
    try:
        took: dict[str, float] = {}
        took["initial sync"] = wait_for(cache.synced, 15, "initial lists")
        # What existed before the start is in the initial list.
        assert cache.secret_type(ns, "before") == "kubernetes.io/dockerconfigjson"
        assert cache.namespace_labels(ns) is not None
        assert cache.namespace_labels(ns)["team"] == "a"
        assert cache.secret_type(ns, "absent") is None
        assert cache.namespace_labels(f"absent-{uuid.uuid4().hex[:6]}") is None

        # Creates, updates and deletes of Secrets, through the watch.
        core_v1.create_namespaced_secret(
            ns, {"metadata": {"name": "cfg"}, "type": "kubernetes.io/dockercfg", "data": {".dockercfg": encoded}}
        )
        took["secret create"] = wait_for(lambda: cache.secret_type(ns, "cfg") == "kubernetes.io/dockercfg")
        core_v1.create_namespaced_secret(ns, {"metadata": {"name": "plain"}, "stringData": {"token": marker}})
        took["opaque create"] = wait_for(lambda: cache.secret_type(ns, "plain") == "Opaque")
        lists_before = cache.secrets.lists  # type: ignore[union-attr]
        core_v1.patch_namespaced_secret("plain", ns, {"metadata": {"labels": {"touched": "yes"}}})
        core_v1.delete_namespaced_secret("cfg", ns)
        took["secret delete"] = wait_for(lambda: cache.secret_type(ns, "cfg") is None)
        assert cache.secret_type(ns, "plain") == "Opaque"
        # Same name, another type: delete and create again.
        core_v1.delete_namespaced_secret("plain", ns)
        core_v1.create_namespaced_secret(
            ns,
            {
                "metadata": {"name": "plain"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": encoded},
            },
        )
        took["type change"] = wait_for(lambda: cache.secret_type(ns, "plain") == "kubernetes.io/dockerconfigjson")

        # Namespaces: created, relabelled, deleted.
        other = namespace(labels={"team": "b"})
        took["namespace create"] = wait_for(lambda: (cache.namespace_labels(other) or {}).get("team") == "b")
        core_v1.patch_namespace(other, {"metadata": {"labels": {"team": "c", "extra": "1"}}})
        took["namespace relabel"] = wait_for(lambda: (cache.namespace_labels(other) or {}).get("team") == "c")
        assert cache.namespace_labels(other)["extra"] == "1"
        gone = f"gone-{uuid.uuid4().hex[:8]}"
        core_v1.create_namespace({"metadata": {"name": gone}})
        wait_for(lambda: cache.namespace_labels(gone) is not None)
        _finalize(core_v1, gone)
        took["namespace delete"] = wait_for(lambda: cache.namespace_labels(gone) is None)
        assert cache.secrets.lists == lists_before, "the watch fell back to relisting"  # type: ignore[union-attr]
        print("cache latencies (s):", {k: round(v, 3) for k, v in took.items()})

        # Nothing held but names and types, and labels of namespaces (read-only).
        secrets = cache.secrets.snapshot()  # type: ignore[union-attr]
        assert all(isinstance(k, tuple) and isinstance(v, str) for k, v in secrets.items())
        assert secrets[(ns, "before")] == "kubernetes.io/dockerconfigjson"
        with pytest.raises(TypeError):
            cache.namespace_labels(ns)["x"] = "y"  # type: ignore[index]
    finally:
        cache.stop()

    # Every request for Secrets asked for a Table (metadata + printed columns), never the objects.
    secret_requests = [(url, accept) for url, accept in requests if urlsplit(url).path == "/api/v1/secrets"]
    assert secret_requests, requests
    for url, accept in secret_requests:
        assert accept == ACCEPT_TABLE, url
        assert parse_qs(urlsplit(url).query)["includeObject"] == ["Metadata"], url
    assert any("watch=true" in url for url, _ in secret_requests)
    # And no byte received carried Secret data: neither the base64 data nor the decoded marker.
    everything = b"".join(received)
    assert b'"Table"' in everything
    assert b"kubernetes.io/dockercfg" in everything  # the type did arrive
    for needle in (encoded.encode(), marker.encode(), base64.b64encode(marker.encode())):
        assert needle not in everything


def test_cache_keeps_only_the_namespaces_it_is_told(
    control_plane: ControlPlane, core_v1: kubernetes.client.CoreV1Api, namespace: Callable[..., str]
) -> None:
    kept, dropped = namespace(prefix="keep"), namespace(prefix="drop")
    for ns in (kept, dropped):
        core_v1.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"a": "b"}})
    with control_plane.api_client() as api:
        cache = ClusterCache(api, secrets=True, namespaces=False, secret_namespaces=lambda n: n.startswith("keep-"))
        cache.start()
        try:
            wait_for(cache.synced, 15, "initial list")
            assert cache.secret_type(kept, "s") == "Opaque"
            assert cache.secret_type(dropped, "s") is None
            core_v1.create_namespaced_secret(dropped, {"metadata": {"name": "t"}, "stringData": {"a": "b"}})
            core_v1.create_namespaced_secret(kept, {"metadata": {"name": "t"}, "stringData": {"a": "b"}})
            wait_for(lambda: cache.secret_type(kept, "t") == "Opaque")
            assert cache.secret_type(dropped, "t") is None
            assert cache.namespace_labels(kept) is None  # namespaces are not watched
            assert all(k[0].startswith("keep-") for k in cache.secrets.snapshot())  # type: ignore[union-attr]
        finally:
            cache.stop()


def test_cache_works_with_list_and_watch_rights_only(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: Callable[..., str]
) -> None:
    """The RBAC docs/secret-awareness.md gives the cache: list and watch, no get."""
    ns = namespace(prefix="rbac")
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    name = f"cache-reader-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(
        {
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["secrets", "namespaces"], "verbs": ["list", "watch"]}],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "cache", "namespace": ns}],
        }
    )
    try:
        token = control_plane.service_account_token(ns, "cache")
        with control_plane.api_client_for_token(token) as api:
            cache = ClusterCache(api, secrets=True, namespaces=True)
            cache.start()
            try:
                wait_for(cache.synced, 15, "initial lists as the ServiceAccount")
                kubernetes.client.CoreV1Api(kube_api).create_namespaced_secret(
                    ns, {"metadata": {"name": "x"}, "type": "kubernetes.io/dockercfg", "data": {".dockercfg": "e30="}}
                )
                wait_for(lambda: cache.secret_type(ns, "x") == "kubernetes.io/dockercfg")
                assert cache.namespace_labels(ns) is not None
            finally:
                cache.stop()
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def test_stop_returns_promptly_while_a_watch_is_open(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        cache = ClusterCache(api, secrets=True, namespaces=True)
        cache.start()
        wait_for(cache.synced, 15, "initial lists")
        time.sleep(0.3)  # the watches are open and idle now
        start = time.monotonic()
        cache.stop()
        assert time.monotonic() - start < 2
        for reflector in (cache.secrets, cache.namespaces):
            assert reflector is not None
            assert reflector._thread is not None
            assert not reflector._thread.is_alive()


# --------------------------------------------------------------------------------------------------
# The watch protocol, on a scripted fake apiserver
# --------------------------------------------------------------------------------------------------


class _FakeUrllib3:
    def __init__(self, body: bytes, block: threading.Event | None = None) -> None:
        self.data = body
        self._block = block

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        # Split mid-line, as a real chunked stream may.
        for i in range(0, len(self.data), 7):
            yield self.data[i : i + 7]
        if self._block is not None:
            self._block.wait(5)

    def shutdown(self) -> None:
        if self._block is not None:
            self._block.set()

    def release_conn(self) -> None:
        pass


class _FakeResponse:
    def __init__(self, status: int, body: bytes, block: threading.Event | None = None) -> None:
        self.status = status
        self.response = _FakeUrllib3(body, block)

    def read(self) -> bytes:
        return self.response.data


class FakeApi:
    """Answers list and watch requests from a script; the script's last entry repeats forever."""

    def __init__(self, script: list[tuple[str, int, Any]]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.block = threading.Event()

    def param_serialize(self, method: str, resource_path: str, query_params: list[tuple[str, str]], **kw: Any) -> Any:
        return method, (resource_path, dict(query_params)), kw["header_params"], None, None

    def call_api(self, method: str, url: tuple[str, dict[str, str]], headers: Any, *a: Any, **kw: Any) -> Any:
        _path, query = url
        kind = "watch" if query.get("watch") == "true" else "list"
        self.calls.append({"kind": kind, "query": query, "accept": headers["Accept"]})
        i = len(self.calls) - 1
        expected, status, payload = self.script[min(i, len(self.script) - 1)]
        assert kind == expected, f"call {i}: expected a {expected}, got a {kind} ({query})"
        if kind == "list":
            return _FakeResponse(status, json.dumps(payload).encode())
        body = b"".join(json.dumps(e).encode() + b"\n" for e in payload)
        final = i >= len(self.script) - 1
        return _FakeResponse(status, body, self.block if final else None)


def _table(rows: list[tuple[str, str, str, str]], rv: str, columns: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "rows": [
            {
                "cells": [name, kind, 1, "1s"],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "metadata": {"name": name, "namespace": ns, "resourceVersion": r},
                },
            }
            for ns, name, kind, r in rows
        ],
    }
    if columns:
        doc["columnDefinitions"] = [{"name": n} for n in ("Name", "Type", "Data", "Age")]
    return doc


def _run(api: FakeApi, calls: int, **kwargs: Any) -> Reflector:
    reflector = Reflector(
        api,
        path="/api/v1/secrets",
        kind="test",
        transform=_secret_entry,  # the real one: the Secret cache's transform
        codec=TableCodec(("Name", "Type")),
        fallback=MetadataCodec(),
        **kwargs,
    )
    reflector.start()
    try:
        wait_for(lambda: len(api.calls) >= calls, 10, f"{calls} calls, got {api.calls}")
    finally:
        reflector.stop()
    return reflector


@pytest.mark.parametrize(
    "gone",
    [
        pytest.param(("watch", 410, {"kind": "Status", "code": 410}), id="http-410"),
        pytest.param(
            ("watch", 200, [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]),
            id="error-event-410",
        ),
    ],
)
def test_gone_relists_and_watches_from_the_new_version(gone: tuple[str, int, Any]) -> None:
    script: list[tuple[str, int, Any]] = [
        ("list", 200, _table([("a", "s1", "Opaque", "5")], "10")),
        gone,
        ("list", 200, _table([("a", "s2", "kubernetes.io/dockercfg", "20")], "30")),
        ("watch", 200, []),
    ]
    api = FakeApi(script)
    reflector = _run(api, 4)
    assert [c["kind"] for c in api.calls[:4]] == ["list", "watch", "list", "watch"]
    assert api.calls[1]["query"]["resourceVersion"] == "10"
    assert api.calls[3]["query"]["resourceVersion"] == "30"
    # The relist replaced the store whole: s1 is gone, s2 is there.
    assert reflector.snapshot() == {("a", "s2"): "kubernetes.io/dockercfg"}
    assert reflector.lists == 2


def test_watch_events_apply_and_a_closed_watch_resumes_without_relisting() -> None:
    events = [
        {"type": "ADDED", "object": _table([("a", "s2", "kubernetes.io/dockercfg", "11")], "11")},
        {"type": "MODIFIED", "object": _table([("a", "s2", "kubernetes.io/dockercfg", "12")], "12", columns=False)},
        {"type": "DELETED", "object": _table([("a", "s1", "Opaque", "13")], "13", columns=False)},
        {"type": "BOOKMARK", "object": {"kind": "Table", "metadata": {"resourceVersion": "15"}}},
    ]
    api = FakeApi(
        [
            ("list", 200, _table([("a", "s1", "Opaque", "5")], "10")),
            ("watch", 200, events),  # then the server closes the stream (timeoutSeconds)
            ("watch", 200, []),
        ]
    )
    reflector = _run(api, 3)
    assert [c["kind"] for c in api.calls[:3]] == ["list", "watch", "watch"]
    assert api.calls[2]["query"]["resourceVersion"] == "15"  # from the bookmark
    assert reflector.snapshot() == {("a", "s2"): "kubernetes.io/dockercfg"}
    for call in api.calls:
        assert call["query"]["includeObject"] == "Metadata"
        assert call["accept"] == ACCEPT_TABLE


def test_errors_back_off_then_relist() -> None:
    api = FakeApi(
        [
            ("list", 500, {"kind": "Status", "message": "etcd is sad"}),
            ("list", 403, {"kind": "Status", "message": "forbidden"}),
            ("list", 200, _table([("a", "s1", "Opaque", "5")], "10")),
            ("watch", 200, []),
        ]
    )
    start = time.monotonic()
    reflector = _run(api, 4)
    elapsed = time.monotonic() - start
    assert reflector.snapshot() == {("a", "s1"): "Opaque"}
    assert 0.4 * 3 <= elapsed < 5, elapsed  # 0.5 s then 1 s of backoff (with +-20% jitter)
    assert "forbidden" in (reflector.last_error or "")


def test_an_apiserver_without_tables_gives_existence_only() -> None:
    metadata_list = {
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "10"},
        "items": [{"kind": "PartialObjectMetadata", "metadata": {"name": "s1", "namespace": "a"}}],
    }
    api = FakeApi(
        [("list", 200, {"kind": "SecretList", "items": []}), ("list", 200, metadata_list), ("watch", 200, [])]
    )
    cache = ClusterCache(api, secrets=True, namespaces=False)
    cache.start()
    try:
        wait_for(cache.synced, 5, "fallback list")
        assert cache.secret_type("a", "s1") == TYPE_UNKNOWN == ""
        assert cache.secret_type("a", "s2") is None
        wait_for(lambda: len(api.calls) >= 3, 5, "the watch")
    finally:
        cache.stop()
    assert api.calls[1]["accept"].startswith("application/json;as=PartialObjectMetadataList")
    assert api.calls[2]["accept"].startswith("application/json;as=PartialObjectMetadata;")
