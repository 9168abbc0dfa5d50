"""Open-loop load at a fixed rate over keep-alive TLS connections, with per-request latency.

Run as its own process (``python -m bench.paced ...``) so it never shares an interpreter with the
server. Requests are scheduled at fixed intervals from the start, whatever the responses do (open
loop, as the apiserver's admissions arrive), and spread over ``--connections`` persistent HTTP/1.1
connections; a request that finds every connection busy waits for one. Latency is measured with
time.perf_counter_ns from the request's *scheduled* time to the end of its response, so a slow
server cannot hide its queueing by slowing the client down (no coordinated omission); the latency
from the actual write is recorded too. With ``--rate 0`` it runs closed loop instead (each connection
sends its next request when the previous answer arrives): the fallback for max throughput when wrk
is not installed.

Prints one JSON object: counts, achieved rate, percentiles (microseconds), client CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time

import orjson

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return float(sorted_values[k])


def summarize_us(values_ns: list[int]) -> dict[str, float]:
    values = sorted(values_ns)
    out = {f"p{p:g}": round(percentile(values, p) / 1000, 1) for p in PERCENTILES}
    out["max"] = round(values[-1] / 1000, 1) if values else float("nan")
    out["mean"] = round(sum(values) / len(values) / 1000, 1) if values else float("nan")
    return out


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def roundtrip(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        return status


async def run(args: argparse.Namespace) -> dict:
    ctx = ssl.create_default_context(cafile=args.ca)
    body = open(args.body, "rb").read()  # noqa: SIM115
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    conns = []
    for _ in range(args.connections):
        reader, writer = await asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname=args.host)
        conns.append(Connection(reader, writer))
    for c in conns:  # warm each connection (handshake done, buffers sized)
        await c.roundtrip(request)

    free: asyncio.Queue[Connection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    total_lat: list[int] = []
    service_lat: list[int] = []
    statuses: dict[int, int] = {}
    errors = 0
    waited = 0  # requests that found no free connection
    clock = time.perf_counter_ns

    async def one(scheduled: int) -> None:
        nonlocal errors, waited
        if free.empty():
            waited += 1
        conn = await free.get()
        sent = clock()
        try:
            status = await conn.roundtrip(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return  # the connection is dropped
        end = clock()
        free.put_nowait(conn)
        statuses[status] = statuses.get(status, 0) + 1
        total_lat.append(end - scheduled)
        service_lat.append(end - sent)

    cpu0 = os.times()
    duration_ns = int(args.duration * 1e9)
    start = clock()
    tasks: list[asyncio.Task] = []
    if args.rate > 0:
        interval = 1e9 / args.rate
        count = int(args.rate * args.duration)
        i = 0
        while i < count:
            now = clock()
            while i < count and start + int(i * interval) <= now:
                tasks.append(asyncio.create_task(one(start + int(i * interval))))
                i += 1
            if i < count:
                await asyncio.sleep(max(0.0, (start + int(i * interval) - clock()) / 1e9))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + 30)
    else:

        async def loop() -> None:
            while clock() - start < duration_ns:
                await one(clock())

        await asyncio.gather(*(loop() for _ in conns))
    elapsed = (clock() - start) / 1e9
    cpu1 = os.times()
    for c in conns:
        c.writer.close()
    completed = len(total_lat)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "mode": "open-loop" if args.rate > 0 else "closed-loop",
        "target_rate": args.rate,
        "connections": args.connections,
        "duration_s": round(elapsed, 3),
        "completed": completed,
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "waited_for_connection": waited,
        "achieved_rate": round(completed / elapsed, 1) if elapsed else 0.0,
        "latency_us": summarize_us(total_lat),
        "service_latency_us": summarize_us(service_lat),
        "client_cpu_fraction": round(cpu / elapsed, 3) if elapsed else 0.0,
        "body_bytes": len(body),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paced")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mutate")
    parser.add_argument("--ca", required=True, help="CA bundle to verify the server with")
    parser.add_argument("--body", required=True, help="file holding the POST body")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s; 0 = closed loop, as fast as possible")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds (at most 120)")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    args.duration = min(args.duration, 120.0)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
