"""The benchmark: the webhook against its own floor, over TLS, from separate load-generator processes.

    python -m bench            # the full run, a few minutes; updates docs/benchmarks.md
    python -m bench --quick    # a tiny load, end to end, in seconds (the smoke test)

Servers (each its own process, started as users start them, generated dev CA trusted by the clients):
  webhook      python -m webhook serve --config <10 rules>
  webhook-10k  python -m webhook serve --config <10,000 rules>   (throughput only, small pod)
  floor        python -m bench.floor: the same stack and settings, a handler that does no work

Measures, A/B interleaved (floor, webhook, webhook, floor, ...) over several rounds, medians reported:
  max throughput    wrk, 1 thread, keep-alive connections, closed loop (Python client if wrk is missing)
  fixed-rate load   bench.paced, open loop at 200 and 1000 req/s: p50/p99/p99.9 from the scheduled time
  peak RSS          VmHWM of each server process at the end
  scaling           bench.micro (in-process): 10/1,000/10,000 rules and 1/20/100 containers
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench import bodies, load, servers

RESULTS_DIR = servers.REPO / "bench" / "results"
DOCS = servers.REPO / "docs" / "benchmarks.md"
MARK_START = "<!-- bench:results:start -->"
MARK_END = "<!-- bench:results:end -->"

TARGETS = {
    "throughput_ratio_min": 0.80,
    "p99_delta_ms_max_at_200": 2.0,
    "rules_10k_vs_10_max": 1.10,
    "rss_mb_max": 100.0,
}


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "orjson"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    import ssl

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "packages": versions,
        "loadavg_start": list(os.getloadavg()),
    }


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return round(statistics.median(values), 3) if values else float("nan")


def check_answers(server: servers.Server, body_files: dict[str, Path], is_webhook: bool) -> None:
    """Every body gets a 200 with a valid AdmissionReview; the webhook patches exactly when it should."""
    for name, path in body_files.items():
        status, raw = server.request("POST", "/mutate", path.read_bytes())
        if status != 200:
            raise RuntimeError(f"{server.name}: {name}: HTTP {status}: {raw[:300]!r}")
        answer = orjson.loads(raw)
        response = answer.get("response") or {}
        if answer.get("kind") != "AdmissionReview" or response.get("allowed") is not True:
            raise RuntimeError(f"{server.name}: {name}: not an allowing AdmissionReview: {raw[:300]!r}")
        if is_webhook and bool(response.get("patch")) != bodies.EXPECT_PATCH[name]:
            raise RuntimeError(f"{server.name}: {name}: unexpected answer {raw[:500]!r}")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    tput_seconds = args.duration or (1.0 if quick else 5.0)
    paced_seconds = args.paced_duration or (1.0 if quick else 5.0)
    rates = [200] if quick else [200, 1000]
    tput_bodies = ["small"] if quick else ["small", "large", "unchanged"]
    paced_bodies = ["small"] if quick else ["small", "large"]

    wrk_version, wrk_note = (None, "skipped (--python-client)") if args.python_client else load.ensure_wrk(args.install)
    if wrk_version is None:
        log(f"wrk unavailable ({wrk_note}): max throughput falls back to the Python closed-loop client")

    result: dict = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "targets": TARGETS,
        "settings": {
            "rounds": rounds,
            "throughput_seconds": tput_seconds,
            "throughput_connections": args.connections,
            "paced_seconds": paced_seconds,
            "paced_connections": args.paced_connections,
            "rates": rates,
            "order": "A/B interleaved per scenario, order alternating each round (ABBA)",
        },
        "load_generators": {
            "throughput": wrk_version or "bench.paced --rate 0 (Python closed loop; wrk unavailable: " + wrk_note + ")",
            "fixed_rate": "bench.paced (Python asyncio + uvloop, open loop, latency from the scheduled time)",
        },
    }

    work = Path(tempfile.mkdtemp(prefix="pullsecrets-bench-"))
    body_files = {}
    for name, make in bodies.BODIES.items():
        body_files[name] = work / f"{name}.json"
        body_files[name].write_bytes(make())
    result["bodies_bytes"] = {name: path.stat().st_size for name, path in body_files.items()}
    rules10, rules10k = work / "rules-10.yaml", work / "rules-10000.yaml"
    rules10.write_text(bodies.rules_yaml(10))
    rules10k.write_text(bodies.rules_yaml(10000))
    lua = work / "post.lua"
    lua.write_text(load.WRK_LUA)

    targets = {
        "floor": servers.floor(work),
        "webhook": servers.webhook("webhook", rules10, work),
        "webhook-10k": servers.webhook("webhook-10k", rules10k, work),
    }
    try:
        for server in targets.values():
            server.start()
            check_answers(server, body_files, is_webhook=server.name != "floor")
        log(f"servers up in {work}: " + ", ".join(f"{s.name} :{s.port}" for s in targets.values()))

        def max_tput(server: servers.Server, body: str, seconds: float) -> dict:
            if wrk_version:
                return load.wrk(server, body_files[body], lua, seconds, args.connections)
            return load.paced(server, body_files[body], 0, seconds, args.connections)

        # Warm up every server on every body (JIT-free Python still warms allocators and caches).
        for server in targets.values():
            for body in tput_bodies:
                max_tput(server, body, 1.0)

        # --- max throughput, interleaved
        tput: dict = {b: {"floor": [], "webhook": []} for b in tput_bodies}
        tput["small"]["webhook-10k"] = []
        for r in range(rounds):
            for body in tput_bodies:
                names = ["floor", "webhook"] + (["webhook-10k"] if body == "small" else [])
                if r % 2:
                    names.reverse()
                for name in names:
                    out = max_tput(targets[name], body, tput_seconds)
                    tput[body][name].append(out)
                    log(f"round {r + 1}/{rounds} throughput {body:9} {name:11} {out['rps']:8.0f} req/s")
        result["throughput"] = {}
        for body, per in tput.items():
            entry: dict = {}
            for name, runs in per.items():
                entry[name] = {
                    "median_rps": median([x["rps"] for x in runs]),
                    "median_server_cpu": median([x["server_cpu_fraction"] for x in runs]),
                    "median_server_cpu_us_per_request": median([x["server_cpu_us_per_request"] for x in runs]),
                    "errors": sum(x.get("non_2xx", 0) + x.get("socket_errors", 0) + x.get("errors", 0) for x in runs),
                    "rounds": runs,
                }
            ratios = [w["rps"] / f["rps"] for w, f in zip(per["webhook"], per["floor"], strict=True)]
            entry["ratio_to_floor"] = median(ratios)
            entry["ratio_per_round"] = [round(x, 3) for x in ratios]
            if "webhook-10k" in per:
                r10k = [w["rps"] / f["rps"] for w, f in zip(per["webhook-10k"], per["webhook"], strict=True)]
                entry["ratio_10k_rules_to_10"] = median(r10k)
            result["throughput"][body] = entry

        # --- fixed rates, interleaved
        lat: dict = {str(rate): {b: {"floor": [], "webhook": []} for b in paced_bodies} for rate in rates}
        for r in range(rounds):
            for rate in rates:
                for body in paced_bodies:
                    names = ["floor", "webhook"] if r % 2 == 0 else ["webhook", "floor"]
                    for name in names:
                        out = load.paced(targets[name], body_files[body], rate, paced_seconds, args.paced_connections)
                        lat[str(rate)][body][name].append(out)
                        log(
                            f"round {r + 1}/{rounds} {rate:5} req/s {body:9} {name:11} "
                            f"achieved {out['achieved_rate']:7.1f} p50 {out['latency_us']['p50'] / 1000:6.2f} ms "
                            f"p99 {out['latency_us']['p99'] / 1000:6.2f} ms"
                        )
        result["latency"] = {}
        for rate, per_body in lat.items():
            result["latency"][rate] = {}
            for body, per in per_body.items():
                entry = {}
                for name, runs in per.items():
                    entry[name] = {
                        "achieved_rate": median([x["achieved_rate"] for x in runs]),
                        "p50_ms": median([x["latency_us"]["p50"] / 1000 for x in runs]),
                        "p99_ms": median([x["latency_us"]["p99"] / 1000 for x in runs]),
                        "p99.9_ms": median([x["latency_us"]["p99.9"] / 1000 for x in runs]),
                        "service_p99_ms": median([x["service_latency_us"]["p99"] / 1000 for x in runs]),
                        "client_cpu_fraction": median([x["client_cpu_fraction"] for x in runs]),
                        "server_cpu_fraction": median([x["server_cpu_fraction"] for x in runs]),
                        "errors": sum(x["errors"] + x["completed"] - x["statuses"].get("200", 0) for x in runs),
                        "rounds": runs,
                    }
                deltas = [
                    (w["latency_us"]["p99"] - f["latency_us"]["p99"]) / 1000
                    for w, f in zip(per["webhook"], per["floor"], strict=True)
                ]
                entry["p99_minus_floor_ms"] = median(deltas)
                entry["p99_minus_floor_per_round_ms"] = [round(x, 3) for x in deltas]
                entry["p50_minus_floor_ms"] = median(
                    [
                        (w["latency_us"]["p50"] - f["latency_us"]["p50"]) / 1000
                        for w, f in zip(per["webhook"], per["floor"], strict=True)
                    ]
                )
                result["latency"][rate][body] = entry

        # --- peak memory
        result["rss_mb"] = {
            name: {k: round(v / 1024, 1) for k, v in s.proc_status().items()} for name, s in targets.items()
        }
    finally:
        for server in targets.values():
            server.stop()

    # --- in-process scaling series
    log("in-process scaling series (bench.micro)")
    cmd = [sys.executable, "-m", "bench.micro", *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=servers.REPO, check=True, timeout=600)
    result["scaling"] = json.loads(out.stdout)
    log("in-process breakdown of the webhook's cost over the floor (bench.breakdown)")
    result["breakdown"] = {}
    for body in ["small"] if quick else ["small", "large"]:
        cmd = [sys.executable, "-m", "bench.breakdown", "--body", body, *(["--quick"] if quick else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=servers.REPO, check=True, timeout=600)
        result["breakdown"][body] = json.loads(out.stdout)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["headline"] = headline(result)
    return result


def headline(result: dict) -> dict:
    small = result["throughput"]["small"]
    lat200 = result["latency"]["200"]["small"]
    rss = result["rss_mb"]["webhook"].get("VmHWM", float("nan"))
    rules = result["scaling"]["rules_10k_vs_10"]
    h = {
        "throughput_ratio_small": small["ratio_to_floor"],
        "throughput_ratio_large": result["throughput"].get("large", {}).get("ratio_to_floor"),
        "throughput_ratio_unchanged": result["throughput"].get("unchanged", {}).get("ratio_to_floor"),
        "webhook_rps_small": small["webhook"]["median_rps"],
        "floor_rps_small": small["floor"]["median_rps"],
        "p99_minus_floor_ms_at_200": lat200["p99_minus_floor_ms"],
        "p99_minus_floor_ms_at_1000": result["latency"].get("1000", {}).get("small", {}).get("p99_minus_floor_ms"),
        "rules_10k_vs_10_miss": rules["miss"],
        "rules_10k_vs_10_warm": rules["warm"],
        "rss_mb_webhook": rss,
        "rss_mb_webhook_10k": result["rss_mb"]["webhook-10k"].get("VmHWM", float("nan")),
        "rss_mb_floor": result["rss_mb"]["floor"].get("VmHWM", float("nan")),
    }
    t = result["targets"]
    h["met"] = {
        "throughput": h["throughput_ratio_small"] >= t["throughput_ratio_min"],
        "p99_at_200": h["p99_minus_floor_ms_at_200"] <= t["p99_delta_ms_max_at_200"],
        "rules_10k": max(rules["miss"], rules["warm"]) <= t["rules_10k_vs_10_max"],
        "rss": max(rss, h["rss_mb_webhook_10k"]) <= t["rss_mb_max"],
    }
    return h


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None or v != v else format(v, spec)


def markdown(result: dict) -> str:
    m = result["machine"]
    h = result["headline"]
    ok = {True: "met", False: "**not met**"}
    lines = [
        f"Run {result['date']} ({result['mode']}) on {m['nproc']} x {m['cpu_model']}, Python {m['python']}, "
        f"{m['openssl']}; load average {m['loadavg_start'][0]:.2f} at start (the machine was shared). "
        f"{result['settings']['rounds']} interleaved rounds, medians. "
        f"Throughput: {result['load_generators']['throughput']}, "
        f"{result['settings']['throughput_connections']} keep-alive TLS connections. Fixed rate: bench.paced, "
        f"{result['settings']['paced_connections']} connections.",
        "",
        "| measure | webhook | floor | result | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for body, entry in result["throughput"].items():
        size = result["bodies_bytes"][body]
        target = "≥ 0.80 x floor" if body == "small" else "(same)"
        lines.append(
            f"| max req/s, {body} pod ({size / 1024:.1f} KB) | {entry['webhook']['median_rps']:.0f} | "
            f"{entry['floor']['median_rps']:.0f} | {entry['ratio_to_floor']:.2f} x floor"
            + (f" ({ok[entry['ratio_to_floor'] >= TARGETS['throughput_ratio_min']]})" if body == "small" else "")
            + f" | {target} |"
        )
    for rate, per_body in result["latency"].items():
        for body, entry in per_body.items():
            w, f = entry["webhook"], entry["floor"]
            target = "p99 ≤ floor + 2 ms" if rate == "200" else ""
            lines.append(
                f"| {rate} req/s, {body}: p50 / p99 / p99.9 ms | {w['p50_ms']:.2f} / {w['p99_ms']:.2f} / "
                f"{w['p99.9_ms']:.2f} | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} / {f['p99.9_ms']:.2f} | "
                f"p99 {entry['p99_minus_floor_ms']:+.2f} ms"
                + (f" ({ok[entry['p99_minus_floor_ms'] <= 2.0]})" if rate == "200" and body == "small" else "")
                + f" | {target} |"
            )
    client = ", ".join(
        f"{entry['floor']['achieved_rate']:.0f} of {rate} req/s "
        f"({body}, client CPU {entry['floor']['client_cpu_fraction']:.2f})"
        for rate, per_body in result["latency"].items()
        for body, entry in per_body.items()
    )
    lines.append(f"| fixed-rate client against the floor (not the bottleneck) | | {client} | | |")
    s = result["scaling"]
    lines.append(
        f"| µs/request, 10 / 1,000 / 10,000 rules (new image) | "
        f"{s['rules']['10']['miss_us']:.0f} / {s['rules']['1000']['miss_us']:.0f} / "
        f"{s['rules']['10000']['miss_us']:.0f}"
        f" | | 10k = {s['rules_10k_vs_10']['miss']:.2f} x 10 ({ok[s['rules_10k_vs_10']['miss'] <= 1.10]}) | < 1.10 x |"
    )
    lines.append(
        f"| µs/request, 10 / 1,000 / 10,000 rules (seen image) | "
        f"{s['rules']['10']['warm_us']:.0f} / {s['rules']['1000']['warm_us']:.0f} / "
        f"{s['rules']['10000']['warm_us']:.0f}"
        f" | | 10k = {s['rules_10k_vs_10']['warm']:.2f} x 10 | < 1.10 x |"
    )
    lines.append(
        f"| µs/request, 1 / 20 / 100 containers | "
        f"{s['containers']['1']['warm_us']:.0f} / {s['containers']['20']['warm_us']:.0f} / "
        f"{s['containers']['100']['warm_us']:.0f} | | | |"
    )
    tk = result["throughput"]["small"].get("ratio_10k_rules_to_10")
    if tk is not None:
        lines.append(f"| max req/s with 10,000 rules vs 10 (HTTP, small pod) | {tk:.2f} x | | | |")
    for body, entry in result["throughput"].items():
        w, f = entry["webhook"], entry["floor"]
        lines.append(
            f"| server CPU µs/request at max load, {body} pod | {w['median_server_cpu_us_per_request']:.0f} | "
            f"{f['median_server_cpu_us_per_request']:.0f} | "
            f"{f['median_server_cpu_us_per_request'] / w['median_server_cpu_us_per_request']:.2f} x floor | |"
        )
    rss = result["rss_mb"]
    lines.append(
        f"| peak RSS (VmHWM), MB | {rss['webhook'].get('VmHWM', float('nan')):.0f} "
        f"(10,000 rules: {rss['webhook-10k'].get('VmHWM', float('nan')):.0f}) | "
        f"{rss['floor'].get('VmHWM', float('nan')):.0f} | {ok[h['met']['rss']]} | < 100 MB |"
    )
    for body, b in result.get("breakdown", {}).items():
        steps = ", ".join(f"{name} {us:+.0f}" for name, us in b["step_us"].items())
        lines += [
            "",
            f"Where the time goes ({body} pod, in-process ASGI calls, µs/request): floor "
            f"{b['per_request_us']['floor']:.0f}, then {steps}; webhook {b['per_request_us']['webhook']:.0f} "
            f"(+{b['webhook_minus_floor_us']:.0f}).",
        ]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    if MARK_START not in text or MARK_END not in text:
        text += f"\n{MARK_START}\n{MARK_END}\n"
    pattern = re.compile(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(lambda _: f"{MARK_START}\n{table}{MARK_END}", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_headline(result: dict) -> None:
    h = result["headline"]
    yes = {True: "met", False: "NOT MET"}
    print(
        "\n".join(
            [
                "",
                f"throughput vs floor (small pod):   {fmt(h['throughput_ratio_small'])} x "
                f"({h['webhook_rps_small']:.0f} vs {h['floor_rps_small']:.0f} req/s)   target ≥ 0.80: "
                f"{yes[h['met']['throughput']]}",
                f"  large / unchanged pod:           {fmt(h['throughput_ratio_large'])} x / "
                f"{fmt(h['throughput_ratio_unchanged'])} x",
                f"p99 at 200 req/s minus floor p99:  {fmt(h['p99_minus_floor_ms_at_200'], '+.2f')} ms   "
                f"target ≤ 2 ms: {yes[h['met']['p99_at_200']]}",
                f"  at 1000 req/s:                   {fmt(h['p99_minus_floor_ms_at_1000'], '+.2f')} ms",
                f"10k rules vs 10 rules per request: {fmt(h['rules_10k_vs_10_miss'])} x (new image), "
                f"{fmt(h['rules_10k_vs_10_warm'])} x (seen image)   target < 1.10: {yes[h['met']['rules_10k']]}",
                f"peak RSS:                          {fmt(h['rss_mb_webhook'], '.0f')} MB "
                f"(10k rules {fmt(h['rss_mb_webhook_10k'], '.0f')} MB, floor {fmt(h['rss_mb_floor'], '.0f')} MB)   "
                f"target < 100 MB: {yes[h['met']['rss']]}",
            ]
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny load, end to end (the smoke test)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (default 5; 1 with --quick)")
    parser.add_argument("--paced-duration", type=float, help="seconds per fixed-rate run (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections for max throughput")
    parser.add_argument("--paced-connections", type=int, default=16, help="connections of the fixed-rate client")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs", type=Path, help=f"Markdown to update (default {DOCS}; none with --quick)")
    parser.add_argument("--no-install", dest="install", action="store_false", help="do not apt-get install wrk")
    parser.add_argument("--python-client", action="store_true", help="use the Python client even if wrk exists")
    args = parser.parse_args(argv)
    for name in ("rounds", "duration", "paced_duration"):
        value = getattr(args, name)
        if value is not None and not (0 < value <= (20 if name == "rounds" else 60)):
            parser.error(f"--{name.replace('_', '-')} out of range")

    result = run(args)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"bench-{result['date'].replace(':', '')}-{result['mode']}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    docs = args.docs or (None if args.quick else DOCS)
    if docs is not None:
        update_docs(docs, markdown(result))
    print_headline(result)
    print(f"\nresults: {out}" + (f"\ntable:   {docs}" if docs else ""))
    return 0
