"""Run the app under uvicorn over TLS, with live reloads and a graceful stop.

Shutdown follows what a rolling update needs: on SIGTERM readiness turns
false at once, the server keeps answering for ``shutdown_delay`` seconds
while endpoints converge, then stops accepting and drains in-flight reviews
for at most ``graceful_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

import uvicorn

from webhook import logs, metrics
from webhook.app import AppState, create_app
from webhook.protocol import DEFAULT_HEADER_TIMEOUT, protocol_with_header_timeout
from webhook.reloader import ConfigReloader
from webhook.tls import ReloadingTLS

# Go's HTTP transport (the apiserver's webhook client) drops idle connections
# after 90s. Idling longer than the client means the client always closes
# first, so it never sends a review on a connection we are closing.
DEFAULT_KEEP_ALIVE = 100


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    config_path: Path | None = None
    shutdown_delay: float = 0.0
    graceful_timeout: float = 20.0
    keep_alive: int = DEFAULT_KEEP_ALIVE
    reload_interval: float = 2.0
    limit_concurrency: int | None = None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    cert_manager: CertManager | None = None


class CertManager(Protocol):
    """Keeps the certificate files current (e.g. webhook.kubecerts.CertManagerLoop)."""

    async def watch(self) -> None: ...


class WebhookServer(uvicorn.Server):
    """uvicorn's server with a readiness-first, delayed stop."""

    def __init__(
        self,
        config: uvicorn.Config,
        state: AppState,
        shutdown_delay: float,
        handshake_timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.shutdown_delay = shutdown_delay
        self.handshake_timeout = handshake_timeout
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
        # uvicorn gives create_server no ssl_handshake_timeout, so a client that stalls mid-handshake
        # would keep its socket for asyncio's default 60 s: longer than any HTTP-level bound we set.
        # The listener is made here once; the bound applies to every handshake it ever accepts.
        loop = asyncio.get_running_loop()
        if self.config.ssl is None:
            await super().startup(sockets)
            return
        loop.create_server = functools.partial(  # type: ignore[method-assign]
            loop.create_server, ssl_handshake_timeout=self.handshake_timeout
        )
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # the loop's own method again

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after a graceful stop, so the process would die
        # by SIGTERM; a drained, orderly stop should exit 0 instead.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.ready = False
        if self._draining or self.shutdown_delay <= 0 or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        logs.info("termination requested; not ready, serving on before stop", delay_s=self.shutdown_delay)
        self._loop.call_soon_threadsafe(self._loop.call_later, self.shutdown_delay, super().handle_exit, sig, frame)


def build_server(options: ServeOptions, state: AppState, tls: ReloadingTLS) -> WebhookServer:
    def ssl_factory(_config: uvicorn.Config, _default: object) -> ssl.SSLContext:
        return tls.ssl_context

    config = uvicorn.Config(
        create_app(state),
        host=options.host,
        port=options.port,
        loop="uvloop",
        http=protocol_with_header_timeout(options.header_timeout),
        lifespan="off",
        ssl_context_factory=ssl_factory,
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=options.keep_alive,
        # uvicorn annotates an int but waits with asyncio: int() would turn 0.5 s into no drain at all.
        timeout_graceful_shutdown=options.graceful_timeout,  # type: ignore[arg-type]
        limit_concurrency=options.limit_concurrency,
    )
    return WebhookServer(config, state, options.shutdown_delay, handshake_timeout=options.header_timeout)


async def serve(options: ServeOptions, state: AppState, tls: ReloadingTLS) -> None:
    server = build_server(options, state, tls)
    # Everything loaded so far (modules, app, rules) lives as long as the process: move it out of
    # the cyclic GC's reach, so collections triggered by per-request garbage stop rescanning it.
    # Measured: gen1/gen2 pauses of 18-39 ms under load became under 1.2 ms.
    gc.collect()
    gc.freeze()
    # Read at scrape time, so it follows every reload without the watcher knowing about metrics.
    metrics.CERT_EXPIRY.set_function(lambda: tls.not_after().timestamp())
    tasks = [asyncio.create_task(tls.watch(options.reload_interval))]
    if options.cert_manager is not None:
        tasks.append(asyncio.create_task(options.cert_manager.watch()))
    if options.config_path is not None:
        reloader = ConfigReloader(options.config_path, state)
        tasks.append(asyncio.create_task(reloader.watch(options.reload_interval)))
    try:
        await server.serve()
    finally:
        logs.flush()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run(options: ServeOptions, state: AppState, tls: ReloadingTLS) -> None:
    import uvloop

    uvloop.run(serve(options, state, tls))


__all__ = ["ServeOptions", "WebhookServer", "build_server", "run", "serve"]
