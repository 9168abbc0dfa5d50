"""Where the webhook's time goes beyond the floor: the ASGI apps called in-process, no network.

Each variant is a FastAPI app served the same small review through the same ASGI call; variants
add one step at a time, from the floor's handler to the real one, so the differences between
consecutive rows are what each step costs per request:

  floor            read the body, answer fixed bytes           (bench.floor)
  +stream          read the body the webhook's way              (webhook.app.read_body, under its deadline)
  +parse           parse_review (decodes the fields the webhook reads)
  +review          admission.review + orjson.dumps of the answer
  webhook -log -metrics   webhook.app.create_app with logging and metrics stubbed out
  webhook -log     ... with metrics
  webhook          the real app, one JSON log line per admission (to a file)

Variants are interleaved batch by batch; medians of the batches are reported.

    python -m bench.breakdown [--quick] [--body small|large|unchanged]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench import bodies, floor
from webhook import app as webhook_app
from webhook import logs
from webhook.admission import parse_review, review
from webhook.config import parse_config


class _Stub:
    def labels(self, *_: object) -> _Stub:
        return self

    def inc(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass


class _NoMetrics:
    ADMISSIONS = INJECTED = UNMATCHED = INVALID_IMAGES = LATENCY = _Stub()

    @staticmethod
    def injected_registry_label(value: str) -> str:
        return value

    unmatched_registry_label = injected_registry_label


class _NoLogs:
    @staticmethod
    def info(*_: object, **__: object) -> None:
        pass

    warning = error = admission = info


def _stepwise(steps: str, config: Any) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        body = await webhook_app.read_body(request.receive, 4 * 1024 * 1024, None, 10)
        out = floor.RESPONSE
        if "parse" in steps:
            obj = parse_review(body)
            if "review" in steps:
                out = orjson.dumps(review(obj, config).response)
        return Response(out, media_type="application/json")

    return app


def run(body_name: str = "small", quick: bool = False) -> dict:
    logs.setup_logging("info", "json")
    log_file = Path(tempfile.mkstemp(prefix="bench-breakdown-", suffix=".log")[1])
    handler = logging.getLogger().handlers[0]
    handler.setStream(log_file.open("a"))  # type: ignore[attr-defined]
    logs._fast_stream = log_file.open("ab")  # the admission lines too, as a container runtime takes them
    config = parse_config(bodies.rules(10))
    state = webhook_app.AppState(config=config)
    real_logs, real_metrics = webhook_app.logs, webhook_app.metrics

    def patch(log: bool, metrics: bool) -> Callable[[], None]:
        def apply() -> None:
            webhook_app.logs = real_logs if log else _NoLogs  # type: ignore[assignment]
            webhook_app.metrics = real_metrics if metrics else _NoMetrics  # type: ignore[assignment]

        return apply

    variants: dict[str, tuple[Any, Callable[[], None]]] = {
        "floor": (floor.create_floor_app(state), patch(True, True)),
        "+stream": (_stepwise("stream", config), patch(True, True)),
        "+parse": (_stepwise("parse", config), patch(True, True)),
        "+review": (_stepwise("parse review", config), patch(True, True)),
        "webhook -log -metrics": (webhook_app.create_app(state), patch(False, False)),
        "webhook -log": (webhook_app.create_app(state), patch(False, True)),
        "webhook": (webhook_app.create_app(state), patch(True, True)),
    }
    body = bodies.BODIES[body_name]()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/mutate",
        "raw_path": b"/mutate",
        "query_string": b"timeout=10s",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    message = {"type": "http.request", "body": body, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict:
        return message

    async def send(msg: dict) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    async def main() -> dict[str, list[float]]:
        gc.collect()
        gc.freeze()
        for app, apply in variants.values():
            apply()
            for _ in range(50 if quick else 300):
                await app(dict(scope), receive, send)
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"non-200 answers: {set(statuses)}")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        batch = 100 if quick else 1000
        for _ in range(3 if quick else 11):
            for name, (app, apply) in variants.items():
                apply()
                start = time.perf_counter_ns()
                for _ in range(batch):
                    await app(dict(scope), receive, send)
                samples[name].append((time.perf_counter_ns() - start) / batch / 1000)
        return samples

    try:
        import uvloop

        samples = uvloop.run(main())
    finally:
        webhook_app.logs, webhook_app.metrics = real_logs, real_metrics
        log_file.unlink(missing_ok=True)
    per = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    names = list(per)
    return {
        "what": f"in-process ASGI call, {body_name} pod, microseconds per request (median of batches)",
        "per_request_us": per,
        "step_us": {names[i]: round(per[names[i]] - per[names[i - 1]], 1) for i in range(1, len(names))},
        "webhook_minus_floor_us": round(per["webhook"] - per["floor"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--body", default="small", choices=sorted(bodies.BODIES))
    args = parser.parse_args(argv)
    sys.stdout.write(orjson.dumps(run(args.body, args.quick), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
