"""Faults under load: pods keep being created through the real apiserver while the webhook is hurt.

The apiserver's registration has ONE url, as in production (a Service). Two replicas are modelled
with two ``serve`` processes behind a small TCP load balancer in this test (asyncio, loopback,
connection-level round robin, TLS passed through), which, like a Service whose endpoints follow
readiness, stops sending new connections to a replica whose ``/readyz`` fails or whose port
refuses connections. Both replicas serve the same certificate from one cert dir laid out the way
the kubelet mounts a Secret (``..data`` symlink swapped atomically), and read one rules file.

The registration uses ``failurePolicy: Ignore`` (the chart's default), so a failed call admits
the pod without injection: a pod is never lost, and what each fault costs is the number of pods
admitted without their pull secret. Each test streams pod creations through one fault and prints
its figures (``pytest -s``); ``FPW_SOAK=1`` repeats every fault more times.

Faults: (a) a replica is SIGKILLed and restarted, and, the graceful variant, SIGTERMed with the
shutdown delay and restarted; (b) the rules file is replaced by an invalid one and then by a new
valid one; (c) the serving certificate rotates, atomically and then file by file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e import SCOPE_LABEL, pod_manifest, pull_secret_names, registered, wait_for_injection, wait_until
from tests.reviews import flyte_pod, review_for
from tests.webhook_process import WebhookProcess, free_port
from webhook.certs import KeyPair, generate_ca, generate_serving_cert, load_certificate

SOAK = os.environ.get("FPW_SOAK", "") not in ("", "0")
ROUNDS = 5 if SOAK else 1  # each fault is injected this many times per replica (or per test)
CREATORS = 3  # threads creating pods concurrently, so requests are in flight when a fault hits
SHUTDOWN_DELAY = 2.0  # --shutdown-delay of the replicas (the chart uses 5 s)
PROBE_INTERVAL = 0.25  # the load balancer's readiness probe period

RULES_V1 = {"rules": [{"registry": "docker.io", "secrets": ["dockerhub"]}]}
RULES_V2 = {"rules": [{"registry": "docker.io", "secrets": ["dockerhub", "dockerhub-mirror"]}]}
INVALID_RULES = "rules: [{registry: docker.io, secrets: []}]\n"

FIGURES: dict[str, dict[str, Any]] = {}


# --------------------------------------------------------------------------------------------------
# The load balancer (a Service with readiness-driven endpoints)
# --------------------------------------------------------------------------------------------------


class LoadBalancer:
    """Round-robin TCP proxy on 127.0.0.1 over backend ports; TLS passes through untouched.

    A backend leaves the rotation when its ``/readyz`` probe fails or when a connect to it is
    refused (the connection then goes to the next backend); it comes back when a probe succeeds.
    Connections already established stay with their backend, like conntrack.
    """

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        self.healthy = dict.fromkeys(self.backends, False)
        self.stats: Counter[str] = Counter()
        self.baseline: Counter[str] = Counter()  # stats when the current test began
        self.active = Counter[int]()
        self._rr = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._probe_ctx = ssl.create_default_context()
        self._probe_ctx.check_hostname = False
        self._probe_ctx.verify_mode = ssl.CERT_NONE  # like the kubelet's HTTPS probes

    def __enter__(self) -> LoadBalancer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._prober = asyncio.create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            results = await asyncio.gather(*(self._probe(port) for port in self.backends))
            for port, ok in zip(self.backends, results, strict=True):
                if ok != self.healthy[port]:
                    self.stats["marked up" if ok else "marked down (probe)"] += 1
                self.healthy[port] = ok
            await asyncio.sleep(PROBE_INTERVAL)

    async def _probe(self, port: int) -> bool:
        writer = None
        try:
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=self._probe_ctx)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return (await reader.readline()).startswith(b"HTTP/1.1 200")
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        finally:
            if writer is not None:
                writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        start = next(self._rr)
        order = [self.backends[(start + i) % len(self.backends)] for i in range(len(self.backends))]
        candidates = [p for p in order if self.healthy[p]] or order  # none ready: try them all anyway
        backend = None
        for port in candidates:
            try:
                async with asyncio.timeout(1):
                    backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, TimeoutError):
                if self.healthy[port]:
                    self.stats["marked down (refused)"] += 1
                self.healthy[port] = False
                self.stats["connect failed, next backend"] += 1
                continue
            backend = port
            break
        if backend is None:
            self.stats["no backend"] += 1
            client_writer.close()
            return
        self.active[backend] += 1
        self.stats[f"to {backend}"] += 1
        pipes = [
            asyncio.create_task(self._pipe(client_reader, backend_writer)),
            asyncio.create_task(self._pipe(backend_reader, client_writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_writer, backend_writer):
                writer.close()
            self.active[backend] -= 1

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()

    def wait_healthy(self, port: int, timeout: float = 10) -> None:
        wait_until(lambda: self.healthy[port], timeout, interval=0.05, what=f"backend {port} back in rotation")


# --------------------------------------------------------------------------------------------------
# A cert dir mounted like a Secret volume
# --------------------------------------------------------------------------------------------------


class SecretVolume:
    """``ca.crt``, ``tls.crt``, ``tls.key`` as symlinks into ``..data``, itself a symlink swapped atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ca = generate_ca("faults-test-ca")
        self.serial = 0
        path.mkdir()
        self.serving = self._issue()
        self._publish(self.serving)
        for name in ("ca.crt", "tls.crt", "tls.key"):
            (path / name).symlink_to(Path("..data") / name)

    def _issue(self) -> KeyPair:
        return generate_serving_cert(self.ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])

    def _publish(self, serving: KeyPair) -> None:
        self.serial += 1
        version = self.path / f"..{self.serial:04d}"
        version.mkdir()
        (version / "ca.crt").write_bytes(self.ca.cert_pem)
        (version / "tls.crt").write_bytes(serving.cert_pem)
        (version / "tls.key").write_bytes(serving.key_pem)
        (version / "tls.key").chmod(0o600)
        link = self.path / "..data_tmp"
        link.symlink_to(version.name)
        link.replace(self.path / "..data")  # rename(2): readers see the old set or the new one

    def rotate_atomically(self) -> KeyPair:
        self.serving = self._issue()
        self._publish(self.serving)
        return self.serving

    def rotate_file_by_file(self, pause: float) -> KeyPair:
        """Overwrite the key, wait (a reload sees a mismatched pair), then the certificate."""
        self.serving = self._issue()
        current = (self.path / "..data").resolve()
        (current / "tls.key").write_bytes(self.serving.key_pem)
        time.sleep(pause)
        (current / "tls.crt").write_bytes(self.serving.cert_pem)
        return self.serving


def served_certificate(port: int) -> bytes:
    """The certificate a replica presents to a new handshake right now."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def same_cert(pem_a: bytes, pem_b: bytes) -> bool:
    return load_certificate(pem_a) == load_certificate(pem_b)


# --------------------------------------------------------------------------------------------------
# The fleet: two replicas, the load balancer, the registration
# --------------------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename, as the kubelet updates a ConfigMap volume."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    tmp.replace(path)


class Fleet:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rules = base / "rules.yaml"
        self.rules.write_text(yaml.safe_dump(RULES_V1))
        self.volume = SecretVolume(base / "certs")
        self.ports = [free_port(), free_port()]
        self.replicas: list[WebhookProcess] = []
        self.lb: LoadBalancer  # set by the fixture once the balancer runs
        self.scope = ""  # the registration's scope label value
        self.namespaces: list[str] = []

    def spawn(self, port: int) -> WebhookProcess:
        args = ("--shutdown-delay", str(SHUTDOWN_DELAY), "--graceful-timeout", "5", "--no-generate-certs")
        return WebhookProcess(self.rules, self.volume.path, port=port, extra_args=args).start()

    def start(self) -> None:
        self.replicas = [self.spawn(port) for port in self.ports]

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def kill(self, i: int) -> None:
        replica = self.replicas[i]
        assert replica.proc is not None
        replica.proc.kill()
        replica.proc.wait(10)
        replica.stop()

    def terminate(self, i: int, timeout: float = 30) -> tuple[int, float]:
        replica = self.replicas[i]
        assert replica.proc is not None
        started = time.monotonic()
        replica.proc.send_signal(signal.SIGTERM)
        code = replica.proc.wait(timeout)
        elapsed = time.monotonic() - started
        replica.stop()
        return code, elapsed

    def restart(self, i: int) -> None:
        self.replicas[i] = self.spawn(self.ports[i])

    def metric(self, i: int, name: str) -> float | None:
        replica = self.replicas[i]
        with httpx.Client(verify=False, timeout=5) as client:
            text = client.get(replica.base_url + "/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture(scope="module")
def fleet(control_plane, kube_api, core_v1, tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("faults"))
    fleet.start()
    try:
        with LoadBalancer(fleet.ports) as lb:
            for port in fleet.ports:
                lb.wait_healthy(port)
            url = f"https://127.0.0.1:{lb.port}/mutate"
            with registered(kube_api, url, fleet.volume.ca.cert_pem, failure_policy="Ignore") as scope:
                fleet.lb = lb
                fleet.scope = scope
                yield fleet
                for ns in fleet.namespaces:
                    with contextlib.suppress(ApiException):
                        core_v1.delete_namespace(ns)
    finally:
        fleet.stop()
        if FIGURES:
            print("\n\nfaults under load (failurePolicy Ignore, 2 replicas behind one url):")
            for name, f in FIGURES.items():
                print(
                    f"  {name}: {f['faults']} faults, {f['attempted']} creations attempted, {f['created']} created, "
                    f"{f['lost']} lost, {f['failed']} failed, {f['uninjected']} admitted without injection"
                )


@pytest.fixture
def stream_namespace(fleet, core_v1):
    ns = f"faults-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace({"metadata": {"name": ns, "labels": {SCOPE_LABEL: fleet.scope}}})
    fleet.namespaces.append(ns)
    wait_for_injection(core_v1, ns, "ubuntu", "dockerhub")
    fleet.lb.baseline = Counter(fleet.lb.stats)
    return ns


# --------------------------------------------------------------------------------------------------
# The stream of pod creations
# --------------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    started: float
    ended: float
    outcome: str  # "injected", "uninjected" or "failed"
    secrets: tuple[str, ...] = ()
    error: str = ""


@dataclass
class PodStream:
    """``CREATORS`` threads creating Flyte pods through the apiserver until stopped."""

    core: Any
    namespace: str
    label: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CREATORS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            pod = pod_manifest("ubuntu", labels={"execution-id": "faults", "node-id": "n0", "stream": self.label})
            started = time.monotonic()
            try:
                created = self.core.create_namespaced_pod(self.namespace, pod)
            except ApiException as exc:
                self.attempts.append(Attempt(started, time.monotonic(), "failed", error=f"{exc.status}: {exc.body}"))
                continue
            secrets = tuple(pull_secret_names(created))
            outcome = "injected" if "dockerhub" in secrets else "uninjected"
            self.attempts.append(Attempt(started, time.monotonic(), outcome, secrets))

    def __enter__(self) -> PodStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def count(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Outcomes of the creations in flight at some point between ``since`` and ``until``."""
        return Counter(a.outcome for a in self.attempts if a.started < until and a.ended >= since)

    def stored(self) -> int:
        """Pods of this stream the apiserver holds (paginated list)."""
        total, token = 0, None
        while True:
            page = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"stream={self.label}", limit=500, _continue=token
            )
            total += len(page.items)
            token = page.metadata._continue
            if not token:
                return total


def report(
    name: str, stream: PodStream, faults: int, windows: list[tuple[str, float, float]], lb: LoadBalancer | None = None
) -> dict[str, Any]:
    counts = stream.count()
    attempted = len(stream.attempts)
    created = counts["injected"] + counts["uninjected"]
    stored = stream.stored()
    figures = {
        "faults": faults,
        "attempted": attempted,
        "created": created,
        "stored": stored,
        "lost": attempted - stored,
        "failed": counts["failed"],
        "injected": counts["injected"],
        "uninjected": counts["uninjected"],
    }
    FIGURES[name] = figures
    print(f"\n{name}: {figures}")
    for label, since, until in windows:
        during = stream.count(since, until)
        print(f"  {label}: {during.total()} creations, {during['uninjected']} without injection ({until - since:.1f}s)")
    outside = figures["uninjected"] - sum(stream.count(since, until)["uninjected"] for _, since, until in windows)
    print(f"  without injection outside the fault windows: {outside}")
    for a in stream.attempts:
        if a.outcome == "uninjected" and windows:
            label, since, _ = min(windows, key=lambda w: abs(a.started - w[1]))
            print(
                f"    without injection: started {a.started - since:+.2f}s, took {a.ended - a.started:.2f}s ({label})"
            )
    if lb is not None:
        print(f"  load balancer: {dict(lb.stats - lb.baseline)}")
    failures = [a.error for a in stream.attempts if a.outcome == "failed"]
    assert failures == [], failures[:5]
    assert created == attempted, figures
    assert stored == created, f"{created} pods created but {stored} stored: pods lost"
    return figures


# --------------------------------------------------------------------------------------------------
# The faults
# --------------------------------------------------------------------------------------------------


def test_a_replica_killed_and_restarted(fleet, core_v1, stream_namespace):
    """SIGKILL: no readiness change first, so in-flight calls and pinned connections fail (the residual)."""
    windows = []
    faults = 0
    with PodStream(core_v1, stream_namespace) as stream:
        time.sleep(1.5)
        for _ in range(ROUNDS):
            for victim in (0, 1):
                killed = time.monotonic()
                fleet.kill(victim)
                faults += 1
                time.sleep(1.0)  # down for a while, as before a container restart
                fleet.restart(victim)
                fleet.lb.wait_healthy(fleet.ports[victim])
                recovered = time.monotonic()
                time.sleep(1.5)
                windows.append((f"SIGKILL replica {victim} -> back in rotation", killed, recovered))
                assert stream.count(killed, recovered).total() >= 5, "the stream stalled"
    figures = report("(a) SIGKILL + restart", stream, faults, windows, fleet.lb)
    # Only what was in flight on, or pinned to, the killed replica can miss; everything else is injected.
    assert figures["uninjected"] <= 12 * faults, figures


def test_a_replica_terminated_gracefully_and_restarted(fleet, core_v1, stream_namespace):
    """SIGTERM: readiness turns false, the balancer stops routing, the replica drains, then exits 0."""
    windows = []
    faults = 0
    with PodStream(core_v1, stream_namespace) as stream:
        time.sleep(1.5)
        for _ in range(ROUNDS):
            for victim in (0, 1):
                terminated = time.monotonic()
                code, took = fleet.terminate(victim)
                faults += 1
                assert code == 0
                assert SHUTDOWN_DELAY <= took < SHUTDOWN_DELAY + 6, took
                fleet.restart(victim)
                fleet.lb.wait_healthy(fleet.ports[victim])
                recovered = time.monotonic()
                time.sleep(1.5)
                windows.append((f"SIGTERM replica {victim} -> back in rotation", terminated, recovered))
                assert stream.count(terminated, recovered).total() >= 5, "the stream stalled"
    figures = report("(a) SIGTERM (graceful) + restart", stream, faults, windows, fleet.lb)
    assert figures["uninjected"] == 0, figures


def test_b_rules_file_replaced_by_an_invalid_one_then_a_valid_one(fleet, core_v1, stream_namespace):
    windows = []
    faults = 0
    try:
        with PodStream(core_v1, stream_namespace) as stream:
            time.sleep(1.0)
            for round_ in range(ROUNDS):
                started = time.monotonic()
                write_atomically(fleet.rules, INVALID_RULES)
                faults += 1
                wait_until(
                    lambda: all(
                        fleet.metric(i, "pullsecrets_webhook_config_last_reload_successful") == 0 for i in (0, 1)
                    ),
                    10,
                    what="both replicas to refuse the invalid rules",
                )
                time.sleep(1.0)
                new = RULES_V2 if round_ % 2 == 0 else RULES_V1
                write_atomically(fleet.rules, yaml.safe_dump(new))
                faults += 1
                wanted = tuple(new["rules"][0]["secrets"])
                wait_until(
                    lambda w=wanted: stream.attempts and stream.attempts[-1].secrets == w,
                    10,
                    what="the new rules in force",
                )
                time.sleep(1.0)
                windows.append((f"invalid rules, then valid rules (round {round_})", started, time.monotonic()))
    finally:
        write_atomically(fleet.rules, yaml.safe_dump(RULES_V1))
    seen = Counter(a.secrets for a in stream.attempts)
    print(f"  secrets seen: {dict(seen)}")
    figures = report("(b) invalid then valid rules", stream, faults, windows)
    assert figures["uninjected"] == 0, figures
    assert set(seen) == {("dockerhub",), ("dockerhub", "dockerhub-mirror")}, seen


def test_c_serving_certificate_rotates(fleet, core_v1, stream_namespace):
    windows = []
    faults = 0

    def served_everywhere(serving: KeyPair) -> bool:
        return all(same_cert(served_certificate(port), serving.cert_pem) for port in fleet.ports)

    with PodStream(core_v1, stream_namespace) as stream:
        time.sleep(1.0)
        for _ in range(ROUNDS):
            started = time.monotonic()
            serving = fleet.volume.rotate_atomically()
            faults += 1
            wait_until(lambda s=serving: served_everywhere(s), 10, what="the new certificate on both replicas")
            time.sleep(1.0)
            windows.append(("certificate swapped atomically (..data symlink)", started, time.monotonic()))

            started = time.monotonic()
            serving = fleet.volume.rotate_file_by_file(pause=1.2)  # > reload interval: a mismatched pair is seen
            faults += 1
            wait_until(lambda s=serving: served_everywhere(s), 10, what="the new certificate on both replicas")
            time.sleep(1.0)
            windows.append(("certificate rewritten file by file", started, time.monotonic()))
    figures = report("(c) serving certificate rotation", stream, faults, windows)
    assert figures["uninjected"] == 0, figures
    logs = "".join(r.log() for r in fleet.replicas)
    assert "loaded new serving certificate" in logs


def test_answers_close_their_connection_while_draining(tmp_path):
    """What keeps the graceful variant at zero: after SIGTERM, each answer ends its connection.

    Otherwise the client keeps sending on its pooled connection until the server closes it at the
    end of the delay, and a request sent at that moment fails (EOF); the apiserver does not retry.
    """
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES_V1))
    body = orjson.dumps(review_for(flyte_pod("ubuntu")))
    with WebhookProcess(rules, tmp_path / "certs", extra_args=("--shutdown-delay", "3")) as hook:
        with httpx.Client(verify=hook.ssl_context()) as client:
            before = client.post(hook.url, content=body)
            assert before.status_code == 200
            assert "connection" not in before.headers  # kept alive
            hook.signal(signal.SIGTERM)
            wait_until(lambda: client.get(hook.base_url + "/readyz").status_code == 503, 5)
            during = client.post(hook.url, content=body)
        assert during.status_code == 200
        assert during.headers["connection"] == "close"
        assert hook.proc is not None
        assert hook.proc.wait(15) == 0
