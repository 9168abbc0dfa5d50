"""In-process cost of one admission: parse_review + review + orjson.dumps of the response.

How it grows with the number of rules (10, 1,000, 10,000: a mix of exact hosts, path prefixes and
globs, see bench.bodies.rules) and with the number of containers (1, 20, 100). Cases are interleaved
batch by batch and the median batch is reported, so drift on a shared machine hits every case alike.

"warm" is the steady state: the RuleSet memoizes image -> secrets, and a cluster's images repeat.
"miss" clears that memo before every request, so every image is matched against the rules: the cost
of a never-seen image (the first pod of a new image, or right after a config reload).

    python -m bench.micro [--quick]     # prints JSON
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import orjson

from bench import bodies
from webhook.admission import parse_review, review
from webhook.config import Config, parse_config

RULE_COUNTS = (10, 1000, 10000)
CONTAINER_COUNTS = (1, 20, 100)


def _case(body: bytes, config: Config, miss: bool) -> Callable[[], None]:
    memo = config.rules._cache  # the RuleSet's image -> secrets memo

    def once() -> None:
        if miss:
            memo.clear()
        decision = review(parse_review(body), config)
        orjson.dumps(decision.response)

    once()  # check it runs, warm the caches
    return once


def run(quick: bool = False) -> dict:
    batch_seconds = 0.02 if quick else 0.1
    rounds = 3 if quick else 15
    configs = {n: parse_config(bodies.rules(n), f"<{n} rules>") for n in RULE_COUNTS}
    small = bodies.small()
    cases: dict[str, Callable[[], None]] = {}
    for n, config in configs.items():
        cases[f"rules={n} warm"] = _case(small, config, miss=False)
        cases[f"rules={n} miss"] = _case(small, config, miss=True)
    for c in CONTAINER_COUNTS:
        cases[f"containers={c} warm"] = _case(bodies.with_containers(c), configs[10], miss=False)
        cases[f"containers={c} miss"] = _case(bodies.with_containers(c), configs[10], miss=True)

    # Size each case's batch to about batch_seconds.
    sizes = {}
    for name, fn in cases.items():
        start = time.perf_counter_ns()
        n = 0
        while time.perf_counter_ns() - start < 5_000_000:
            fn()
            n += 1
        per = (time.perf_counter_ns() - start) / n
        sizes[name] = max(3, int(batch_seconds * 1e9 / per))

    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            n = sizes[name]
            start = time.perf_counter_ns()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter_ns() - start) / n / 1000)
    per_request = {name: round(statistics.median(v), 2) for name, v in samples.items()}

    def ratio(a: str, b: str) -> float:
        return round(per_request[a] / per_request[b], 3)

    return {
        "what": "parse_review + review + orjson.dumps(response), microseconds per request (median batch)",
        "rounds": rounds,
        "per_request_us": per_request,
        "rules": {
            str(n): {"warm_us": per_request[f"rules={n} warm"], "miss_us": per_request[f"rules={n} miss"]}
            for n in RULE_COUNTS
        },
        "containers": {
            str(c): {"warm_us": per_request[f"containers={c} warm"], "miss_us": per_request[f"containers={c} miss"]}
            for c in CONTAINER_COUNTS
        },
        "rules_10k_vs_10": {
            "warm": ratio("rules=10000 warm", "rules=10 warm"),
            "miss": ratio("rules=10000 miss", "rules=10 miss"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.stdout.write(orjson.dumps(run(args.quick), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
