"""Serving TLS: a hardened server SSLContext and hot reload of rotated certificates under a live listener.

Modelled on cert-manager's webhook server: the listener never restarts; every new handshake uses the
newest valid tls.crt/tls.key, while established connections keep the certificate they negotiated.

Reload mechanism: the listener holds one stable "outer" context whose `sni_callback` points each new
connection (`SSLObject.context = ...`) at the most recently loaded inner context. OpenSSL runs that
callback for every ClientHello, with server_name None when the client sent no SNI (clients dialling an
IP such as the kube-apiserver with `https://127.0.0.1:PORT` never send one); this was checked with
Python 3.11 / OpenSSL 3.0 on both asyncio and uvloop, and tests/test_tls.py keeps checking it. Swapping
whole immutable contexts means no lock is held during handshakes and a failed reload cannot leave a
half-updated context behind, unlike calling `load_cert_chain` again on the live context.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
from datetime import datetime
from pathlib import Path

from webhook import certs

log = logging.getLogger(__name__)

# TLS 1.2 suites limited to ECDHE key exchange with AEAD ciphers (Mozilla "intermediate" minus DHE):
# no CBC, no static RSA key exchange, no SHA1 MACs. TLS 1.3 suites are all AEAD and set_ciphers()
# does not touch them.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# The server speaks HTTP/1.1 only; offering h2 would make Go clients (the apiserver) pick it.
ALPN_PROTOCOLS = ["http/1.1"]
_LOAD_ATTEMPTS_AT_START = 5


def server_ssl_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A TLS >= 1.2 server context with only strong suites; load_cert_chain also checks key matches cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _FilesChanged(Exception):
    """The files changed while being loaded; the next check will see the settled content."""


class ReloadingTLS:
    """Serves whatever tls.crt/tls.key currently hold.

    New handshakes pick up new files; existing connections are untouched. A pair that fails to load
    (half-written, garbage, key not matching cert) is never swapped in: the previous one keeps serving.
    """

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        """Load the initial pair; raises OSError (incl. ssl.SSLError) or CertificateError if it is unusable."""
        self._certfile = Path(certfile)
        self._keyfile = Path(keyfile)
        self._lock = threading.Lock()
        self._last_failure: str | None = None
        for attempt in range(1, _LOAD_ATTEMPTS_AT_START + 1):
            try:
                # The last attempt takes whatever valid pair loaded: the digest read before loading then
                # differs from the files, so the first reload_if_changed() picks up the settled pair.
                loaded = self._load(*self._read(), require_settled=attempt < _LOAD_ATTEMPTS_AT_START)
            except _FilesChanged:
                continue
            self._digest, self._current, self._not_after = loaded
            break
        # The initially loaded context doubles as the stable outer context handed to the server.
        self._outer = self._current
        self._outer.sni_callback = self._select_context

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context to hand to the server; the same object for the lifetime of this instance."""
        return self._outer

    def not_after(self) -> datetime:
        """Expiry (aware UTC) of the certificate new handshakes are served, e.g. for a metric."""
        return self._not_after

    def reload_if_changed(self) -> bool:
        """Swap in the files' current pair if their content changed and it loads; True if swapped.

        Content is compared by hash, not mtime: Kubernetes updates a Secret volume by renaming its `..data`
        symlink to a new directory, and mtimes can repeat (coarse timestamps, copies that preserve them).
        """
        with self._lock:
            try:
                digest, cert_pem = self._read()
                if digest == self._digest:
                    self._last_failure = None  # back to the served pair: warn again if it breaks again
                    return False
                loaded = self._load(digest, cert_pem)
            except _FilesChanged:
                log.debug("certificate files changed while loading; retrying on the next check")
                return False
            except (OSError, ValueError) as exc:
                # ssl.SSLError is an OSError and CertificateError a ValueError; neither quotes key bytes.
                self._warn_once(exc)
                return False
            self._digest, self._current, self._not_after = loaded
            self._last_failure = None
        log.info("loaded new serving certificate from %s (expires %s)", self._certfile, loaded[2].isoformat())
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Check for new files every `interval` seconds until cancelled; file I/O runs off the event loop."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        while True:
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:
                log.exception("unexpected error while checking %s for a new certificate", self._certfile)
            await asyncio.sleep(interval)

    def _select_context(
        self, ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, outer: ssl.SSLContext
    ) -> None:
        """sni_callback: runs for every ClientHello, SNI or not, and points it at the newest context."""
        current = self._current
        if ssl_obj.context is not current:
            ssl_obj.context = current

    def _read(self) -> tuple[bytes, bytes]:
        """Digest of the pair plus the cert; only a hash of the key is kept, never its bytes."""
        cert_pem = self._certfile.read_bytes()
        key_digest = hashlib.sha256(self._keyfile.read_bytes()).digest()
        return hashlib.sha256(cert_pem).digest() + key_digest, cert_pem

    def _load(
        self, digest: bytes, cert_pem: bytes, *, require_settled: bool = True
    ) -> tuple[bytes, ssl.SSLContext, datetime]:
        """Build a context from the files, then re-read them: unchanged content proves what was loaded.

        ssl can only load from paths, so without the re-read a file replaced between our read and
        OpenSSL's could be served while we report (and compare against) the other one.
        """
        expires = certs.not_after(cert_pem)
        ctx = server_ssl_context(self._certfile, self._keyfile)
        if require_settled and self._read()[0] != digest:
            raise _FilesChanged
        return digest, ctx, expires

    def _warn_once(self, exc: Exception) -> None:
        """Warn once per distinct failure so a bad Secret does not log every interval."""
        reason = f"{type(exc).__name__}: {exc}"
        if reason != self._last_failure:
            self._last_failure = reason
            log.warning(
                "keeping the previously loaded certificate: %s / %s could not be loaded: %s",
                self._certfile,
                self._keyfile,
                reason,
            )
