"""Smoke test: the benchmark runs end to end on a tiny load (it is a script, not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_quick_runs_end_to_end(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-install", "--results-dir", str(tmp_path), "--docs", str(docs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    assert "throughput vs floor" in out.stdout

    (result_file,) = tmp_path.glob("bench-*-quick.json")
    result = json.loads(result_file.read_text())
    small = result["throughput"]["small"]
    for name in ("floor", "webhook", "webhook-10k"):
        assert small[name]["median_rps"] > 0
        assert small[name]["errors"] == 0
    lat = result["latency"]["200"]["small"]
    for name in ("floor", "webhook"):
        assert lat[name]["errors"] == 0
        assert lat[name]["achieved_rate"] > 100
    assert set(result["scaling"]["rules"]) == {"10", "1000", "10000"}
    assert set(result["scaling"]["containers"]) == {"1", "20", "100"}
    assert result["rss_mb"]["webhook"]["VmHWM"] > 0
    assert "| measure |" in docs.read_text()


def test_generated_bodies_are_what_they_claim() -> None:
    import orjson

    from bench import bodies
    from webhook.admission import parse_review, review
    from webhook.config import parse_config

    config = parse_config(bodies.rules(10))
    assert 40_000 < len(bodies.large()) < 60_000
    for name, make in bodies.BODIES.items():
        decision = review(parse_review(make()), config)
        assert bool(decision.response["response"].get("patch")) == bodies.EXPECT_PATCH[name], name
    big = orjson.loads(bodies.large())["request"]["object"]["spec"]
    assert len(big["containers"]) == 20
    assert big["initContainers"]
    assert len(parse_config(bodies.rules(10000)).rules) == 10000


GLOB_LABELS = ["*", "a*", "*b", "a?", "[ab]*", "[!a]b", "ab", "b", "a-b", "x*y"]
HOST_LABELS = ["a", "b", "ab", "ba", "abb", "a-b", "xy", "xzy", "c"]


@given(
    patterns=st.lists(
        st.tuples(
            st.lists(st.sampled_from(GLOB_LABELS), min_size=1, max_size=4),
            st.sampled_from([None, "5000"]),
        ),
        min_size=1,
        max_size=30,
    ),
    hosts=st.lists(
        st.tuples(st.lists(st.sampled_from(HOST_LABELS), min_size=1, max_size=4), st.sampled_from([None, "5000"])),
        min_size=1,
        max_size=10,
    ),
)
@settings(max_examples=300, deadline=None)
def test_glob_index_finds_what_a_full_scan_finds(patterns, hosts) -> None:
    """RuleSet's glob index (label count, port, literal suffix labels, literal prefix) loses no match."""
    from webhook.images import parse_image
    from webhook.rules import Rule, RuleSet

    rules = [
        Rule.create(".".join(labels) + (f":{port}" if port else ""), [f"s{i}"])
        for i, (labels, port) in enumerate(patterns)
    ]
    ruleset = RuleSet(rules)
    for labels, port in hosts:
        if len(labels) == 1 and port is None:
            labels = [*labels, "b"]  # a lone label without a port would be a Docker Hub path
        host = ".".join(labels) + (f":{port}" if port else "")
        image = parse_image(f"{host}/team/app:v1")
        expected = [i for i, rule in enumerate(rules) if rule.pattern.matches(image)]
        assert ruleset.matching_rules(image) == expected, (host, [r.registry for r in rules])
