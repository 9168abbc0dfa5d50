"""Day-two behaviour of the real server process: live reload, graceful stop, timeouts, metrics, logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import sys
import threading
import time

import httpx
import orjson
import pytest
import uvloop
import yaml

from tests.reviews import ECR_IMAGE, decode_patch, flyte_pod, review_for
from tests.webhook_process import WebhookProcess
from webhook import logs
from webhook.app import request_deadline

RULES_A = {"rules": [{"registry": "docker.io", "secrets": ["rules-a"]}]}
RULES_B = {"rules": [{"registry": "docker.io", "secrets": ["rules-b"]}]}


@pytest.mark.parametrize(
    ("query", "default", "expected"),
    [
        (None, 10, 10),
        ("5s", 10, 5),
        ("30s", 10, 10),
        ("1500ms", 10, 1.5),
        ("1m", 100, 60),
        ("0s", 10, 10),
        ("garbage", 10, 10),
        ("-1s", 10, 10),
    ],
)
def test_request_deadline_honours_a_shorter_apiserver_timeout(query, default, expected):
    assert request_deadline(query, default) == expected


def added(response_json):
    ops = decode_patch(response_json["response"])
    return [
        v["name"]
        for op in ops
        if op["path"].startswith("/spec/imagePullSecrets")
        for v in (op["value"] if isinstance(op["value"], list) else [op["value"]])
    ]


class Stream:
    """Posts reviews over keep-alive TLS in a thread; records what each answer injected."""

    def __init__(self, webhook, body):
        self.webhook, self.body = webhook, body
        self.results: list[tuple[int, tuple[str, ...]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with httpx.Client(verify=self.webhook.ssl_context(), timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.webhook.url, content=self.body, headers={"content-type": "application/json"})
                    self.results.append((r.status_code, tuple(added(r.json())) if r.status_code == 200 else ()))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(20)


def metric(webhook, name):
    with httpx.Client(verify=webhook.ssl_context()) as c:
        text = c.get(webhook.base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1]) if line.startswith(name + " ") else line
    return None


def test_invalid_rules_file_keeps_the_old_rules_serving_with_no_gap(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    body = orjson.dumps(review_for(flyte_pod("ubuntu")))
    with WebhookProcess(config, tmp_path / "certs") as webhook, Stream(webhook, body) as stream:
        time.sleep(0.5)
        config.write_text("rules: [{registry: docker.io, secrets: []}]")  # invalid
        time.sleep(2)  # several reload intervals
        assert metric(webhook, "pullsecrets_webhook_config_last_reload_successful") == 0
        config.write_text(yaml.safe_dump(RULES_B))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not stream.results or stream.results[-1][1] != ("rules-b",)):
            time.sleep(0.1)
        time.sleep(0.3)
        log = webhook.log()
    assert stream.errors == []
    statuses = {s for s, _ in stream.results}
    assert statuses == {200}
    outcomes = [a for _, a in stream.results]
    assert set(outcomes) == {("rules-a",), ("rules-b",)}, "every answer used a complete rule set"
    switch = outcomes.index(("rules-b",))
    assert all(o == ("rules-a",) for o in outcomes[:switch])
    assert all(o == ("rules-b",) for o in outcomes[switch:])
    assert "rules file invalid; keeping the previous rules" in log
    assert "'secrets' must be a non-empty list" in log
    print(f"{len(outcomes)} reviews across the reload, {switch} with the old rules")


def test_reload_metrics_and_rule_count(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    with WebhookProcess(config, tmp_path / "certs") as webhook:
        assert metric(webhook, "pullsecrets_webhook_rules") == 1
        config.write_text(yaml.safe_dump({"rules": RULES_A["rules"] + RULES_B["rules"]}))
        deadline = time.monotonic() + 10
        while metric(webhook, "pullsecrets_webhook_rules") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(webhook, "pullsecrets_webhook_rules") == 2
        assert 'result="success"} 1.0' in metric(webhook, "pullsecrets_webhook_config_reloads_total")
        assert metric(webhook, "pullsecrets_webhook_certificate_expiry_timestamp_seconds") > time.time()


def test_sigterm_during_a_burst_loses_no_request(tmp_path):
    """Readiness turns false at once; requests keep being answered through the delay; exit is bounded."""
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    big = flyte_pod(*[ECR_IMAGE] * 20, "ubuntu")
    for c in big["spec"]["containers"]:
        c["env"] = [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(40)]
    body = orjson.dumps(review_for(big))
    webhook = WebhookProcess(config, tmp_path / "certs", extra_args=("--shutdown-delay", "2")).start()
    streams = [Stream(webhook, body) for _ in range(4)]
    for s in streams:
        s.__enter__()
    time.sleep(0.5)
    sent_before = sum(len(s.results) for s in streams)
    terminated_at = time.monotonic()
    webhook.signal(signal.SIGTERM)
    time.sleep(0.3)
    with httpx.Client(verify=webhook.ssl_context()) as c:
        assert c.get(webhook.base_url + "/readyz").status_code == 503
        assert c.get(webhook.base_url + "/healthz").status_code == 200
    time.sleep(1.0)  # the load balancer notices readiness and stops routing, well inside the delay
    for s in streams:
        s.__exit__()
    code = webhook.proc.wait(20)
    elapsed = time.monotonic() - terminated_at
    webhook.stop()
    results = [r for s in streams for r in s.results]
    errors = [e for s in streams for e in s.errors]
    assert errors == []
    assert {status for status, _ in results} == {200}
    assert all(a == ("rules-a",) for _, a in results)
    assert len(results) > sent_before
    assert code == 0
    assert 2 <= elapsed < 2 + 20, elapsed
    # Admission lines are written in batches; the orderly stop writes out the last of them.
    logged = sum(1 for line in webhook.log().splitlines() if '"msg":"admission"' in line)
    assert logged == len(results)
    print(f"{len(results)} reviews answered, {len(results) - sent_before} after SIGTERM, exit after {elapsed:.1f}s")


def tls_socket(webhook):
    ctx = webhook.ssl_context()
    raw = socket.create_connection(("127.0.0.1", webhook.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_slow_headers_are_cut_off(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    with WebhookProcess(config, tmp_path / "certs", extra_args=("--header-timeout", "1")) as webhook:
        silent = tls_socket(webhook)
        slow = tls_socket(webhook)
        slow.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        for sock in (silent, slow):
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                assert sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - start < 4
        with httpx.Client(verify=webhook.ssl_context()) as c:  # still serving
            assert c.get(webhook.base_url + "/healthz").status_code == 200
        # The two peers never close their side; a cut-off connection must not hold the stop.
        start = time.monotonic()
        assert webhook.stop() == 0
        assert time.monotonic() - start < 5, "cut-off connections held the graceful stop"


def test_slow_body_gets_408_within_the_apiserver_timeout(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    with WebhookProcess(config, tmp_path / "certs") as webhook:
        sock = tls_socket(webhook)
        sock.sendall(
            b"POST /mutate?timeout=1s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        start = time.monotonic()
        sock.settimeout(10)
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        assert time.monotonic() - start < 5
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"request body not received within 1s" in answer


def test_one_json_log_line_per_admission_without_pod_values(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES_A))
    pod = flyte_pod("ubuntu", "Bad Image")
    pod["spec"]["containers"][0]["env"] = [{"name": "PASSWORD", "value": "hunter2-secret-value"}]
    with WebhookProcess(config, tmp_path / "certs") as webhook, httpx.Client(verify=webhook.ssl_context()) as c:
        c.post(webhook.url, content=orjson.dumps(review_for(pod, uid="uid-log-1", dry_run=True)))
        time.sleep(0.3)
        log = webhook.log()
    lines = [json.loads(line) for line in log.splitlines() if "uid-log-1" in line]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["msg"] == "admission"
    assert entry["uid"] == "uid-log-1"
    assert entry["namespace"] == "flytesnacks-development"
    assert entry["pod"] == "f3a1b2c4d5e6f7a8b9c0-n0-0-"
    assert entry["operation"] == "CREATE"
    assert entry["dry_run"] is True
    assert entry["result"] == "patched"
    assert entry["added"] == ["rules-a"]
    assert entry["invalid_images"] == ["containers[1].image"]
    assert isinstance(entry["duration_ms"], float)
    assert "hunter2" not in log
    assert all(json.loads(line) for line in log.splitlines() if line.startswith("{"))


def test_admission_lines_are_batched_then_flushed_soon_and_in_order(tmp_path, monkeypatch):
    out = (tmp_path / "stderr").open("w")
    monkeypatch.setattr(sys, "stderr", out)
    logs.setup_logging("info", "json")
    seen: dict[str, list[str]] = {}

    def lines() -> list[str]:
        return [
            json.loads(line)["msg"] + ":" + json.loads(line).get("uid", "")
            for line in (tmp_path / "stderr").read_text().splitlines()
        ]

    async def main() -> None:
        logs.admission({"uid": "a"})
        seen["right after"] = lines()
        logs.info("other line")  # flushes at once, the admission line before it first
        logs.admission({"uid": "b"})
        seen["after an ordinary line"] = lines()
        await asyncio.sleep(logs.FLUSH_AFTER * 4)
        seen["a moment later"] = lines()

    try:
        uvloop.run(main())
    finally:
        monkeypatch.undo()
        logs.setup_logging("info", "json")  # back to the real stderr
        out.close()
    assert seen == {
        "right after": [],
        "after an ordinary line": ["admission:a", "other line:"],
        "a moment later": ["admission:a", "other line:", "admission:b"],
    }
