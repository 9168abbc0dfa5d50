"""Tests for webhook.tls against real TLS servers on 127.0.0.1: rotation under a live listener."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from webhook import certs
from webhook.app import AppState
from webhook.certs import KeyPair
from webhook.config import parse_config
from webhook.server import ServeOptions, build_server
from webhook.tls import ReloadingTLS, server_ssl_context

HOSTNAME = "localhost"
LOOPS = ["asyncio", "uvloop"]  # uvicorn's loop="auto" picks uvloop when installed


@dataclass
class Issued:
    ca: KeyPair
    leaf: KeyPair

    @property
    def leaf_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.leaf.cert_pem).public_bytes(serialization.Encoding.DER)


_issued_count = itertools.count()


def issue(key_type: certs.KeyType = "ecdsa", name: str = "ca") -> Issued:
    """Every leaf gets a distinct notAfter, so not_after() tells which one is loaded."""
    validity = timedelta(days=30, minutes=next(_issued_count))
    ca = certs.generate_ca(name, key_type=key_type)
    leaf = certs.generate_serving_cert(
        ca, dns_names=[HOSTNAME], ip_addresses=["127.0.0.1", "::1"], key_type=key_type, validity=validity
    )
    return Issued(ca, leaf)


def install(cert_dir: Path, issued: Issued) -> None:
    certs.write_cert_dir(cert_dir, issued.ca.cert_pem, issued.leaf)


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


class EchoServer:
    """Line echo server over asyncio TLS (the transport uvicorn uses) in a background thread."""

    def __init__(self, ssl_context: ssl.SSLContext, loop: str = "asyncio") -> None:
        self._loop = _loop_factory(loop)()
        self._ctx = ssl_context
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10), "server did not start"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(started))
        self._loop.close()

    async def _main(self, started: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ctx)
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        await self._stopping.wait()
        server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)


def trusting(*ca_pems: bytes, check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=b"".join(ca_pems).decode())
    ctx.check_hostname = check_hostname
    return ctx


def connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None = HOSTNAME) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def echo(conn: ssl.SSLSocket, payload: bytes = b"ping\n") -> bytes:
    conn.sendall(payload)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def served_der(port: int, ctx: ssl.SSLContext, server_hostname: str | None = HOSTNAME) -> bytes:
    with connect(port, ctx, server_hostname) as conn:
        assert echo(conn) == b"ping\n"
        return conn.getpeercert(binary_form=True)


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    return tmp_path / "certs"


@pytest.fixture
def serve() -> Iterator[Callable[..., EchoServer]]:
    servers: list[EchoServer] = []

    def start(ctx: ssl.SSLContext, loop: str = "asyncio") -> EchoServer:
        servers.append(EchoServer(ctx, loop))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def reloading(cert_dir: Path) -> ReloadingTLS:
    return ReloadingTLS(cert_dir / "tls.crt", cert_dir / "tls.key")


# --- server_ssl_context -------------------------------------------------------------------------


def test_server_context_settings(cert_dir: Path) -> None:
    install(cert_dir, issue())
    ctx = server_ssl_context(cert_dir / "tls.crt", cert_dir / "tls.key")
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert "CBC" not in cipher["description"], cipher["name"]


def test_server_context_rejects_mismatched_pair(cert_dir: Path, tmp_path: Path) -> None:
    install(cert_dir, issue())
    other = issue()
    (tmp_path / "other.key").write_bytes(other.leaf.key_pem)
    with pytest.raises(ssl.SSLError):
        server_ssl_context(cert_dir / "tls.crt", tmp_path / "other.key")


def _legacy_client(version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client willing to speak old protocols/ciphers, so a refusal can only come from the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = version
    ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return ctx


def _permissive_server(cert_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return ctx


@pytest.mark.parametrize(
    ("version", "ciphers", "refused"),
    [
        (ssl.TLSVersion.TLSv1_1, "ALL", True),
        (ssl.TLSVersion.TLSv1, "ALL", True),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA", True),  # CBC with SHA1 MAC
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256", True),  # CBC
        (ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256", True),  # static RSA key exchange
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256", False),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305", False),
        (ssl.TLSVersion.TLSv1_3, "ALL", False),
    ],
    ids=lambda v: v.name if isinstance(v, ssl.TLSVersion) else str(v),
)
def test_weak_protocols_and_ciphers_refused(
    cert_dir: Path, serve: Callable[..., EchoServer], version: ssl.TLSVersion, ciphers: str, refused: bool
) -> None:
    install(cert_dir, issue("rsa"))  # RSA so that the RSA-authenticated suites are candidates at all
    client = _legacy_client(version, ciphers)
    # Control: the same client gets through to a server that allows everything.
    control = serve(_permissive_server(cert_dir))
    with connect(control.port, client, None) as conn:
        assert echo(conn) == b"ping\n"

    server = serve(reloading(cert_dir).ssl_context)
    if refused:
        with pytest.raises(ssl.SSLError):
            connect(server.port, client, None)
    else:
        with connect(server.port, client, None) as conn:
            assert echo(conn) == b"ping\n"
            assert conn.version() == ("TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")


# --- ReloadingTLS -------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_rotation_under_live_listener(
    cert_dir: Path, serve: Callable[..., EchoServer], loop: str, key_type: certs.KeyType
) -> None:
    first, second = issue(key_type, "ca-1"), issue(key_type, "ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    server = serve(tls.ssl_context, loop)
    trust_first, trust_second = trusting(first.ca.cert_pem), trusting(second.ca.cert_pem)

    old_conn = connect(server.port, trust_first)
    try:
        assert echo(old_conn) == b"ping\n"
        assert old_conn.getpeercert(binary_form=True) == first.leaf_der

        install(cert_dir, second)
        # Files alone change nothing: new handshakes still get the loaded certificate until reload.
        assert served_der(server.port, trust_first) == first.leaf_der
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(server.port, trust_second)

        assert tls.reload_if_changed() is True
        assert tls.reload_if_changed() is False  # unchanged content: no second swap

        assert served_der(server.port, trust_second) == second.leaf_der
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(server.port, trust_first)
        # The connection established before the swap is untouched.
        assert echo(old_conn, b"still here\n") == b"still here\n"
        assert old_conn.getpeercert(binary_form=True) == first.leaf_der
    finally:
        old_conn.close()
    assert tls.not_after() == certs.not_after(second.leaf.cert_pem)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("server_hostname", "check_hostname"),
    [(None, False), ("127.0.0.1", True)],  # Python, like Go, sends no SNI for an IP address
    ids=["no-server-hostname", "ip-hostname"],
)
def test_client_without_sni_gets_new_cert(
    cert_dir: Path,
    serve: Callable[..., EchoServer],
    loop: str,
    server_hostname: str | None,
    check_hostname: bool,
) -> None:
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    seen_names: list[str | None] = []
    select = tls.ssl_context.sni_callback
    assert select is not None

    def spy(ssl_obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        seen_names.append(server_name)
        select(ssl_obj, server_name, ctx)

    tls.ssl_context.sni_callback = spy
    server = serve(tls.ssl_context, loop)
    assert served_der(server.port, trusting(first.ca.cert_pem, check_hostname=check_hostname), server_hostname) == (
        first.leaf_der
    )

    install(cert_dir, second)
    assert tls.reload_if_changed()
    ctx = trusting(second.ca.cert_pem, check_hostname=check_hostname)
    assert served_der(server.port, ctx, server_hostname) == second.leaf_der
    assert seen_names == [None, None]  # the callback ran, and really without SNI


def test_trust_bundle_spanning_ca_rotation(cert_dir: Path, serve: Callable[..., EchoServer]) -> None:
    """A caBundle holding old and new CA keeps clients working across the swap."""
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    server = serve(tls.ssl_context)
    both = trusting(certs.join_pem_bundle([first.ca.cert_pem, second.ca.cert_pem]))
    assert served_der(server.port, both) == first.leaf_der
    install(cert_dir, second)
    assert tls.reload_if_changed()
    assert served_der(server.port, both) == second.leaf_der


def test_alpn_survives_reload(cert_dir: Path, serve: Callable[..., EchoServer]) -> None:
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    server = serve(tls.ssl_context)
    install(cert_dir, second)
    assert tls.reload_if_changed()
    ctx = trusting(second.ca.cert_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with connect(server.port, ctx) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"


def _bad_pairs(good: Issued, other: Issued) -> dict[str, Callable[[Path], None]]:
    key = good.leaf.key_pem

    def write(cert: bytes, key: bytes) -> Callable[[Path], None]:
        def apply(d: Path) -> None:
            (d / "tls.crt").write_bytes(cert)  # deliberately non-atomic: readers may see partial files
            (d / "tls.key").write_bytes(key)

        return apply

    def key_missing(d: Path) -> None:
        (d / "tls.crt").write_bytes(good.leaf.cert_pem)
        (d / "tls.key").unlink()

    return {
        "half-written-key": write(good.leaf.cert_pem, key[: len(key) // 2]),
        "garbage-key": write(good.leaf.cert_pem, b"garbage"),
        "empty-key": write(good.leaf.cert_pem, b""),
        "half-written-cert": write(good.leaf.cert_pem[:300], key),
        "garbage-cert": write(b"garbage", key),
        "key-of-other-cert": write(good.leaf.cert_pem, other.leaf.key_pem),
        "key-missing": key_missing,
    }


BAD_PAIRS = [
    "half-written-key",
    "garbage-key",
    "empty-key",
    "half-written-cert",
    "garbage-cert",
    "key-of-other-cert",
    "key-missing",
]


def test_every_bad_pair_is_run() -> None:
    assert list(_bad_pairs(issue(name="a"), issue(name="b"))) == BAD_PAIRS


@pytest.mark.parametrize("case", BAD_PAIRS)
def test_bad_files_leave_old_cert_served(
    cert_dir: Path, serve: Callable[..., EchoServer], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    first, second, third = issue(name="ca-1"), issue(name="ca-2"), issue(name="ca-3")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    server = serve(tls.ssl_context)
    expires = tls.not_after()

    _bad_pairs(second, third)[case](cert_dir)
    with caplog.at_level(logging.WARNING, logger="webhook.tls"):
        assert tls.reload_if_changed() is False
        assert tls.reload_if_changed() is False
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1  # once per distinct failure, not every check
    assert "keeping the previously loaded certificate" in caplog.text
    for secret in (first.leaf.key_pem, second.leaf.key_pem, third.leaf.key_pem):
        assert secret.splitlines()[1].decode()[:20] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text

    assert served_der(server.port, trusting(first.ca.cert_pem)) == first.leaf_der
    assert tls.not_after() == expires

    install(cert_dir, second)  # the complete pair arrives: picked up on the next check
    assert tls.reload_if_changed() is True
    assert served_der(server.port, trusting(second.ca.cert_pem)) == second.leaf_der


def test_change_detected_by_content_not_mtime(cert_dir: Path, serve: Callable[..., EchoServer]) -> None:
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    stamps = {name: (cert_dir / name).stat() for name in ("tls.crt", "tls.key")}
    install(cert_dir, second)
    for name, st in stamps.items():
        os.utime(cert_dir / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tls.reload_if_changed() is True
    server = serve(tls.ssl_context)
    assert served_der(server.port, trusting(second.ca.cert_pem)) == second.leaf_der


def test_key_only_change_with_same_mtime_is_noticed(cert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only a content hash of tls.key notices a same-mtime key change (here: a corrupt key)."""
    issued = issue()
    install(cert_dir, issued)
    tls = reloading(cert_dir)
    key_file = cert_dir / "tls.key"
    st = key_file.stat()
    key_file.write_bytes(issued.leaf.key_pem[:-30])
    os.utime(key_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="webhook.tls"):
        assert tls.reload_if_changed() is False
    assert "keeping the previously loaded certificate" in caplog.text


def test_files_replaced_during_load_are_not_misreported(
    cert_dir: Path, serve: Callable[..., EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the files change between our read and OpenSSL's, the swap waits for the settled content."""
    first, second, third = issue(name="ca-1"), issue(name="ca-2"), issue(name="ca-3")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    server = serve(tls.ssl_context)
    real_context = server_ssl_context

    def racing_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
        install(cert_dir, third)  # lands after reload_if_changed hashed `second`
        return real_context(certfile, keyfile)

    install(cert_dir, second)
    monkeypatch.setattr("webhook.tls.server_ssl_context", racing_context)
    assert tls.reload_if_changed() is False
    monkeypatch.setattr("webhook.tls.server_ssl_context", real_context)
    assert served_der(server.port, trusting(first.ca.cert_pem)) == first.leaf_der

    assert tls.reload_if_changed() is True
    assert served_der(server.port, trusting(third.ca.cert_pem)) == third.leaf_der
    assert tls.not_after() == certs.not_after(third.leaf.cert_pem)


@pytest.mark.parametrize("changes", [1, 100])
def test_init_while_files_are_being_replaced(cert_dir: Path, monkeypatch: pytest.MonkeyPatch, changes: int) -> None:
    """Startup retries a racing rotation; if the files never settle it serves a valid pair and catches up."""
    pairs = [issue(name=f"ca-{i}") for i in range(3)]
    install(cert_dir, pairs[0])
    real_context = server_ssl_context
    calls = 0

    def racing_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
        nonlocal calls
        ctx = real_context(certfile, keyfile)
        if calls < changes:
            install(cert_dir, pairs[1 + calls % 2])
        calls += 1
        return ctx

    monkeypatch.setattr("webhook.tls.server_ssl_context", racing_context)
    tls = reloading(cert_dir)
    monkeypatch.setattr("webhook.tls.server_ssl_context", real_context)
    on_disk = x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes())
    if changes == 1:  # settled on the second attempt: nothing left to reload
        assert tls.reload_if_changed() is False
    else:
        assert tls.reload_if_changed() is True
    assert tls.not_after() == on_disk.not_valid_after_utc


def _kubernetes_secret_volume(mount: Path, issued: Issued, generation: int) -> None:
    """Mimic kubelet's AtomicWriter: files live in a timestamped dir, ..data symlink is swapped by rename."""
    payload = mount / f"..2030_01_01_00_00_0{generation}.000000000"
    payload.mkdir(parents=True)
    (payload / "tls.crt").write_bytes(issued.leaf.cert_pem)
    (payload / "tls.key").write_bytes(issued.leaf.key_pem)
    (payload / "ca.crt").write_bytes(issued.ca.cert_pem)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(payload.name)
    os.replace(tmp_link, mount / "..data")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")


def test_kubernetes_secret_volume_swap(tmp_path: Path, serve: Callable[..., EchoServer]) -> None:
    first, second = issue(name="ca-1"), issue(name="ca-2")
    mount = tmp_path / "secret"
    _kubernetes_secret_volume(mount, first, 1)
    tls = reloading(mount)
    server = serve(tls.ssl_context)
    assert served_der(server.port, trusting(first.ca.cert_pem)) == first.leaf_der
    _kubernetes_secret_volume(mount, second, 2)
    assert tls.reload_if_changed() is True
    assert served_der(server.port, trusting(second.ca.cert_pem)) == second.leaf_der


def test_watch_reloads_and_is_cancellable(cert_dir: Path) -> None:
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)

    async def scenario() -> None:
        task = asyncio.create_task(tls.watch(interval=0.02))
        await asyncio.sleep(0.1)
        assert tls.not_after() == certs.not_after(first.leaf.cert_pem)
        install(cert_dir, second)
        deadline = time.monotonic() + 10
        while tls.not_after() != certs.not_after(second.leaf.cert_pem):
            assert time.monotonic() < deadline, "watch did not pick up the new certificate"
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_watch_survives_unexpected_errors(cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(cert_dir, issue())
    tls = reloading(cert_dir)
    calls = 0

    def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return False

    monkeypatch.setattr(tls, "reload_if_changed", flaky)

    async def scenario() -> None:
        task = asyncio.create_task(tls.watch(interval=0.01))
        deadline = time.monotonic() + 10
        while calls < 3:
            assert not task.done()
            assert time.monotonic() < deadline, "watch stopped checking"
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert calls >= 3


@pytest.mark.parametrize(
    ("case", "error"),
    [("missing", FileNotFoundError), ("garbage-key", ssl.SSLError), ("mismatch", ssl.SSLError)],
)
def test_init_requires_a_valid_pair(cert_dir: Path, case: str, error: type[Exception]) -> None:
    good, other = issue(), issue()
    cert_dir.mkdir()
    if case != "missing":
        (cert_dir / "tls.crt").write_bytes(good.leaf.cert_pem)
        (cert_dir / "tls.key").write_bytes(b"garbage" if case == "garbage-key" else other.leaf.key_pem)
    with pytest.raises(error):
        reloading(cert_dir)


# --- uvicorn ------------------------------------------------------------------------------------


def test_webhook_server_serves_rotated_certificate(cert_dir: Path) -> None:
    """The production hookup (webhook.server.build_server) serves whatever ReloadingTLS holds."""
    first, second = issue(name="ca-1"), issue(name="ca-2")
    install(cert_dir, first)
    tls = reloading(cert_dir)
    state = AppState(config=parse_config({}))
    server = build_server(ServeOptions(), state, tls)
    server.config.load()
    assert server.config.ssl is tls.ssl_context
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        url = f"https://127.0.0.1:{port}/healthz"
        with httpx.Client(verify=trusting(first.ca.cert_pem)) as client:
            assert client.get(url).json() == {"status": "ok"}
        install(cert_dir, second)
        assert tls.reload_if_changed()
        with httpx.Client(verify=trusting(second.ca.cert_pem)) as client:
            assert client.get(url).json() == {"status": "ok"}
        with httpx.Client(verify=trusting(first.ca.cert_pem)) as client, pytest.raises(httpx.ConnectError):
            client.get(url)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
