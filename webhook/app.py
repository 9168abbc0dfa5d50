"""The HTTP edge: FastAPI routes around the pure admission logic.

The review is read as raw bytes and decoded into plain dicts holding the
fields the webhook reads (``admission.parse_review``): no request model and
no per-request Pydantic cost, and since the answer is an append-only patch,
nothing of the pod can be dropped. Every answer to a well-formed review is a 200 that
allows the pod: an internal fault degrades to "admitted without injection",
never to a 500 that failurePolicy could turn into a lost pod.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from webhook import logs, metrics
from webhook.admission import Decision, ReviewError, describe, make_response, parse_review, review
from webhook.config import Config
from webhook.mutation import ClusterView

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # etcd caps objects at ~1.5 MiB; a review wraps one
DEFAULT_BODY_TIMEOUT = 10.0  # the apiserver's own default webhook timeout
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_JSON = "application/json"
# While draining (readiness false after SIGTERM) every answer ends its connection: the client
# reconnects through the Service to a ready replica, instead of reusing this connection until
# the server closes it under a request in flight (Go's client does not retry a POST on EOF).
_CLOSE = {"connection": "close"}


@dataclass
class AppState:
    """Mutable state shared with the server: the live config and readiness."""

    config: Config
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ready: bool = True
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    cluster: ClusterView | None = None  # the Secret/Namespace cache, when enabled


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message, "status": status}), status_code=status, media_type=_JSON)


async def read_body(receive: Receive, limit: int, declared: int | None, deadline: float) -> bytes:
    """Read at most ``limit`` bytes within ``deadline`` seconds; larger bodies are refused unbuffered.

    Straight from the ASGI ``receive``: Starlette's stream generator and ``asyncio.timeout``
    cost more than the rest of reading a small review, and both are on every admission.
    """
    if declared is not None and declared > limit:
        raise ReviewError(f"request body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(deadline, expire)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # e.g. the apiserver gave up: nobody to answer
                raise ReviewError("client disconnected before the request body was complete", 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ReviewError(f"request body exceeds the limit of {limit} bytes", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:  # someone else cancelled too (shutdown): theirs wins
            raise
        raise ReviewError(f"request body not received within {deadline:g}s", 408) from None
    finally:
        timer.cancel()
    return b"".join(chunks)  # one chunk: the same bytes object, no copy


def request_deadline(query_timeout: str | None, default: float) -> float:
    """Seconds to allow for reading the body: the apiserver's ``?timeout=`` if shorter.

    Past its timeout the apiserver has given up on us (and applied failurePolicy),
    so work beyond it only holds resources.
    """
    if query_timeout:
        match = _DURATION.match(query_timeout)
        if match:
            value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
            if value > 0:
                return min(value, default)
    return default


# The apiserver sends the same query (``timeout=10s``) every time: parse each distinct one once.
_deadlines: dict[tuple[bytes, float], float] = {}


def _deadline_for(query_string: bytes, default: float) -> float:
    key = (query_string, default)
    deadline = _deadlines.get(key)
    if deadline is None:
        if len(_deadlines) >= 64:  # bounded: queries come from clients
            _deadlines.clear()
        timeout = dict(parse_qsl(query_string.decode("latin-1"))).get("timeout")
        deadline = _deadlines[key] = request_deadline(timeout, default)
    return deadline


def _content_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str, int | None]:
    """The media type and the declared length, in one pass over the raw headers."""
    ctype = _JSON
    length: int | None = None
    for name, value in headers:
        if name == b"content-type":
            ctype = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return ctype, length


# Metric.labels() locks and rebuilds the label key on every call; a child, once made, never changes.
# Bounded: outcomes, configured secrets x bounded registry labels.
_children: dict[tuple[Any, ...], Any] = {}


def _labelled(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _fields(decision: Decision) -> dict[str, Any]:
    """The admission line's fields that every review has."""
    return {
        "uid": decision.uid,
        "namespace": decision.namespace,
        "pod": decision.name,
        "operation": decision.operation,
        "dry_run": decision.dry_run,
        "result": decision.outcome,
    }


def _record(decision_fields: dict[str, Any], started: float) -> None:
    elapsed = time.perf_counter() - started
    metrics.LATENCY.observe(elapsed)
    decision_fields["duration_ms"] = round(elapsed * 1000, 3)
    logs.admission(decision_fields)


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(
        title="flyte-pullsecrets-webhook",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.webhook = state

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths and wrong methods answer in the same {"error", "status"} shape as the rest.
        response = _error(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    def reply(body: Any, status: int = 200) -> Response:
        # While draining, every answer ends its connection (see _CLOSE), errors included.
        headers = None if state.ready else _CLOSE
        return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)

    def reject(exc: ReviewError, started: float, **fields: Any) -> Response:
        _labelled(metrics.ADMISSIONS, "invalid").inc()
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        logs.warning("rejected request", status=exc.status, reason=exc.message, duration_ms=duration_ms, **fields)
        return reply({"error": exc.message, "status": exc.status}, exc.status)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        scope = request.scope
        ctype, declared = _content_headers(scope["headers"])
        if ctype not in (_JSON, "", "*/*"):
            return reject(ReviewError(f"unsupported content type {ctype!r}: send {_JSON}", 415), started)
        try:
            deadline = _deadline_for(scope["query_string"], state.body_timeout)
            body = await read_body(request.receive, state.max_body_bytes, declared, deadline)
            review_obj = parse_review(body)
        except ReviewError as exc:
            return reject(exc, started)

        uid = review_obj["request"]["uid"]
        try:
            decision = review(review_obj, state.config, state.cluster)
        except ReviewError as exc:
            return reject(exc, started, uid=uid)
        except Exception as exc:  # a bug must not cost the user a pod: admit untouched
            _labelled(metrics.ADMISSIONS, "error").inc()
            logs.error("admission failed; pod admitted without injection", exc_info=True, uid=uid)
            response = reply(
                make_response(uid, warnings=[f"pullsecrets-webhook: internal error ({type(exc).__name__})"])
            )
            # Still one admission line (and a latency sample), so the fault shows where operators look.
            failed = describe(review_obj)
            failed.outcome = "error"
            _record({**_fields(failed), "error": type(exc).__name__}, started)
            return response

        _labelled(metrics.ADMISSIONS, decision.outcome).inc()
        fields = _fields(decision)
        mutation = decision.mutation
        if mutation is not None:
            for secret, registry in mutation.added_for_registry.items():
                _labelled(metrics.INJECTED, secret, metrics.injected_registry_label(registry)).inc()
            fields["added"] = list(mutation.added_for_registry)
            if mutation.unmatched_registries:
                for registry in mutation.unmatched_registries:
                    _labelled(metrics.UNMATCHED, metrics.unmatched_registry_label(registry)).inc()
                fields["unmatched"] = list(mutation.unmatched_registries)
            if mutation.missing_secrets:
                for secret in mutation.missing_secrets:
                    _labelled(metrics.MISSING_SECRETS, secret).inc()
                fields["missing_secrets"] = list(mutation.missing_secrets)
            if mutation.problems:
                metrics.INVALID_IMAGES.inc(len(mutation.problems))
                fields["invalid_images"] = [p.field for p in mutation.problems]
        response = reply(decision.response)
        _record(fields, started)
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.ready:
            return JSONResponse({"status": "ready", "rules": len(state.config.rules)})
        return JSONResponse({"status": "shutting down"}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return app
