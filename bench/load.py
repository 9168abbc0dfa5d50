"""Load generators, each its own process: wrk for max throughput, bench.paced for fixed rates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.servers import REPO, Server

# wrk sends the same POST on every keep-alive connection and prints one JSON line when done.
WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"latency_us": {"p50": %d, "p99": %d, "p99.9": %d, "max": %d, "mean": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).split("Copyright")[0].strip() or "wrk"


def ensure_wrk(install: bool) -> tuple[str | None, str]:
    """wrk's version, installing the Debian package when allowed; else (None, why)."""
    version = wrk_version()
    if version:
        return version, "found"
    if not install:
        return None, "wrk not installed (--no-install)"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "wrk not installed and cannot apt-get install it (not root or no apt-get)"
    print("preflight: installing wrk (apt-get install -y wrk)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        try:
            subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"apt-get failed: {exc}"
    version = wrk_version()
    return version, "installed" if version else "apt-get ran but wrk is still missing"


def wrk(server: Server, body: Path, lua: Path, duration: float, connections: int) -> dict:
    """Closed-loop max throughput: one wrk thread (the other core serves), ``connections`` connections."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(lua), server.url]
    env = {**os.environ, "BENCH_BODY": str(body)}
    cpu0 = server.cpu_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60, check=False)
    cpu1 = server.cpu_seconds()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data = json.loads(lines[-1])
    seconds = data["duration_us"] / 1e6
    data["rps"] = round(data["requests"] / seconds, 1)
    data["server_cpu_fraction"] = round((cpu1 - cpu0) / seconds, 3)
    # CPU time per request barely depends on what else runs on the machine, unlike req/s.
    data["server_cpu_us_per_request"] = round((cpu1 - cpu0) / data["requests"] * 1e6, 1) if data["requests"] else None
    return data


def paced(server: Server, body: Path, rate: float, duration: float, connections: int) -> dict:
    """Open-loop fixed rate (``rate`` > 0), or closed loop as fast as possible (``rate`` == 0)."""
    cmd = [
        sys.executable, "-m", "bench.paced",
        "--host", server.host, "--port", str(server.port), "--ca", str(server.ca_file),
        "--body", str(body), "--rate", str(rate), "--duration", str(duration), "--connections", str(connections),
    ]  # fmt: skip
    cpu0 = server.cpu_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=duration + 90, check=False)
    cpu1 = server.cpu_seconds()
    if out.returncode != 0:
        raise RuntimeError(f"bench.paced failed ({out.returncode}): {out.stderr[-3000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["server_cpu_fraction"] = round((cpu1 - cpu0) / data["duration_s"], 3) if data["duration_s"] else 0.0
    completed = data["completed"]
    data["server_cpu_us_per_request"] = round((cpu1 - cpu0) / completed * 1e6, 1) if completed else None
    if rate == 0:
        data["rps"] = data["achieved_rate"]
        data["non_2xx"] = data["completed"] - data["statuses"].get("200", 0)
    return data
