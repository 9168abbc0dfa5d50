"""uvicorn's httptools protocol with a deadline for request headers.

uvicorn closes idle keep-alive connections between requests, but a new
connection that sends nothing, or a client that trickles its headers a byte at
a time, is kept forever. Each such connection costs memory and a slot under
``limit_concurrency``; this closes it after ``header_timeout`` seconds. Slow
bodies are bounded in the app (see ``webhook.app.read_body``).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.warning("closing a connection that sent no complete request headers in time")
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # the first request must begin and finish its headers in time

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # later requests on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def protocol_with_header_timeout(seconds: float) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``seconds`` (uvicorn instantiates the class itself)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"header_timeout": seconds})
