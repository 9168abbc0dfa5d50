"""The floor: the webhook's server stack with a handler that does no admission work.

Same process layout, uvicorn settings, uvloop + httptools, TLS context (webhook.tls.ReloadingTLS),
FastAPI, logging setup and background watchers as ``pullsecrets-webhook serve``: it runs
webhook.server.run with only ``create_app`` swapped for an app whose POST /mutate reads the body and
answers a fixed, valid AdmissionReview without parsing it. Whatever the webhook costs beyond this
is the webhook's own.

    python -m bench.floor --host 127.0.0.1 --port 9443 --cert-dir /tmp/floor-certs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from webhook import logs, server
from webhook.app import AppState
from webhook.certs import ensure_dev_certs
from webhook.config import parse_config
from webhook.tls import ReloadingTLS

RESPONSE = orjson.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True},
    }
)


def create_floor_app(state: AppState) -> FastAPI:
    app = FastAPI(title="floor", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        await request.body()
        return Response(RESPONSE, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return JSONResponse({"status": "ready"})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--cert-dir", default="certs-floor")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--keep-alive", type=int, default=server.DEFAULT_KEEP_ALIVE)
    args = parser.parse_args(argv)

    logs.setup_logging(args.log_level, "json")
    cert_dir = Path(args.cert_dir)
    if not (cert_dir / "tls.crt").exists():
        ensure_dev_certs(cert_dir)
    tls = ReloadingTLS(cert_dir / "tls.crt", cert_dir / "tls.key")
    state = AppState(config=parse_config({"rules": []}, "<floor>"))
    options = server.ServeOptions(host=args.host, port=args.port, keep_alive=args.keep_alive)
    # The one difference from `serve`: the app.
    server.create_app = create_floor_app  # type: ignore[assignment]
    logs.info("serving floor", url=f"https://{args.host}:{args.port}/mutate")
    server.run(options, state, tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
