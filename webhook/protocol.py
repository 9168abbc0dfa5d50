"""uvicorn's httptools protocol with a deadline for request headers.

uvicorn closes idle keep-alive connections between requests, but a new
connection that sends nothing, or a client that trickles its headers a byte at
a time, is kept forever. Each such connection costs memory and a slot under
``limit_concurrency``; this closes it after ``header_timeout`` seconds. Slow
bodies are bounded in the app (see ``webhook.app.read_body``).

Nor does httptools bound the size of request headers: it accumulates a header
value, however long, before uvicorn sees it. Bytes that arrive while headers
are awaited are therefore counted, and past ``max_header_bytes`` (64 KiB, four
times h11's default; the apiserver sends well under 1 KiB) the connection gets
a 431 and is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
_HEADER_SLICE = 8 * 1024  # while headers are awaited, feed the parser this much at a time


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes: int = 0

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        # The timer is armed exactly while request headers are awaited: count what arrives then, in
        # slices, so that headers and the start of a body in one read are told apart.
        while self._header_timer is not None and data:
            piece, data = data[:_HEADER_SLICE], data[_HEADER_SLICE:]
            self._header_bytes += len(piece)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_large_headers()
                return
            super().data_received(piece)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def _refuse_large_headers(self) -> None:
        self._disarm_header_timer()
        self.logger.warning("closing a connection whose request headers exceed %d bytes", self.max_header_bytes)
        if self.cycle is None or self.cycle.response_complete:  # never interleave with a response in flight
            body = b'{"error":"request headers exceed %d bytes","status":431}' % self.max_header_bytes
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.warning("closing a connection that sent no complete request headers in time")
            # abort, not close: a peer this slow would hold a TLS close_notify exchange (and with it
            # a graceful shutdown) for as long as it stays silent.
            self.transport.abort()

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
