"""Lease-based leader election against the real apiserver, with short timings.

A sampler thread checks every 10 ms that at most one elector considers itself leader, for the
whole of each test; takeover times are measured and bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import pytest

from tests.controlplane import ControlPlane
from tests.e2e import wait_until
from webhook.leader import LeaderElector

# Short timings for tests: lease 2 s, renew deadline 1.5 s, retry 0.25 s.
TIMINGS = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.25}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    return wait_until(predicate, timeout, what, interval=0.01)  # 10 ms: takeover times are asserted


class Sampler:
    """Records, every 10 ms, which electors think they lead; fails on two at once."""

    def __init__(self, electors: list[LeaderElector]) -> None:
        self.electors = electors
        self.overlaps: list[list[str]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            leaders = [e.identity for e in self.electors if e.is_leader()]
            if len(leaders) > 1:
                self.overlaps.append(leaders)
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def lease_ns(namespace: Callable[..., str]) -> str:
    return namespace(prefix="lease")


@pytest.fixture
def electors(control_plane: ControlPlane, lease_ns: str) -> Iterator[Callable[..., LeaderElector]]:
    made: list[tuple[LeaderElector, Any]] = []
    name = f"lease-{uuid.uuid4().hex[:6]}"

    def make(identity: str, **kwargs: Any) -> LeaderElector:
        api = control_plane.api_client()
        elector = LeaderElector(api, name=name, namespace=lease_ns, identity=identity, **{**TIMINGS, **kwargs})
        made.append((elector, api))
        return elector

    yield make
    for elector, api in made:
        elector.stop(release=False)
        api.close()


def _holder(core: kubernetes.client.ApiClient, elector: LeaderElector) -> str | None:
    lease = kubernetes.client.CoordinationV1Api(core).read_namespaced_lease(elector.name, elector.namespace)
    return lease.spec.holder_identity


def test_one_leader_at_a_time_and_takeover(
    electors: Callable[..., LeaderElector], kube_api: kubernetes.client.ApiClient
) -> None:
    a, b = electors("pod-a"), electors("pod-b")
    with Sampler([a, b]) as sampler:
        a.start()
        b.start()
        wait_for(lambda: a.is_leader() or b.is_leader(), 5, "a leader")
        first, second = (a, b) if a.is_leader() else (b, a)
        # Steady state for a while: the same one leads, it is the Lease's holder, the other waits.
        time.sleep(TIMINGS["lease_duration"] * 1.5)
        assert first.is_leader()
        assert not second.is_leader()
        assert _holder(kube_api, first) == first.identity
        assert first.transitions == 1
        assert second.transitions == 0

        # A graceful stop releases the Lease: the other takes over within a couple of retries.
        first.stop(release=True)
        took_release = wait_for(second.is_leader, TIMINGS["lease_duration"], "takeover after release")
        assert _holder(kube_api, second) == second.identity

        # A crash (no release): a new candidate must wait the lease out, then takes over.
        third = electors("pod-c")
        sampler.electors.append(third)
        third.start()
        time.sleep(0.5)
        assert not third.is_leader()
        second.stop(release=False)
        crashed_at = time.monotonic()
        wait_for(third.is_leader, TIMINGS["lease_duration"] + 4, "takeover after a crash")
        took_crash = time.monotonic() - crashed_at
    assert not sampler.overlaps, f"two leaders at once: {sampler.overlaps[:5]}"
    assert sampler.samples > 100
    assert took_release < 2.0, took_release  # a couple of retries (0.25 s each), and slack for a busy CI
    # Not before the lease ran out (counted from the last renewal), not much after.
    assert TIMINGS["lease_duration"] - TIMINGS["retry_period"] - 0.1 < took_crash
    # Upper bound: the lease, one retry to observe the last renewal, one to take over, and slack for a busy CI.
    assert took_crash < TIMINGS["lease_duration"] + 2 * TIMINGS["retry_period"] + 2.0, took_crash
    lease = kubernetes.client.CoordinationV1Api(kube_api).read_namespaced_lease(third.name, third.namespace)
    assert lease.spec.lease_transitions == 2
    print(f"takeover after release: {took_release:.2f}s, after a crash: {took_crash:.2f}s")


def test_a_leader_cut_off_from_the_apiserver_stops_before_anyone_takes_over(
    electors: Callable[..., LeaderElector],
) -> None:
    a = electors("pod-a")
    a.start()
    wait_for(a.is_leader, 5, "a leads")
    b = electors("pod-b")
    events: list[tuple[str, float]] = []
    b.on_started_leading = lambda: events.append(("b leads", time.monotonic()))
    with Sampler([a, b]) as sampler:
        b.start()
        time.sleep(0.5)

        def unreachable() -> bool:
            raise ConnectionError("apiserver unreachable")

        a._try_acquire_or_renew = unreachable  # type: ignore[method-assign]
        cut = time.monotonic()
        wait_for(lambda: not a.is_leader(), TIMINGS["renew_deadline"] + 0.5, "a steps down")
        stepped_down = time.monotonic() - cut
        wait_for(b.is_leader, TIMINGS["lease_duration"] + 2, "b takes over")
    assert not sampler.overlaps, sampler.overlaps[:5]
    assert stepped_down <= TIMINGS["renew_deadline"] + 0.3
    assert events
    assert events[0][1] - cut > stepped_down


def test_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="lease_duration > renew_deadline > retry_period"):
        LeaderElector(None, name="x", namespace="y", identity="z", lease_duration=5, renew_deadline=5, retry_period=1)
