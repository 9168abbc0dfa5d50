"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Every candidate tries, every ``retry_period`` seconds, to take or renew the Lease:

* no Lease: create it with ``holderIdentity`` = our identity (one create wins, the others get 409);
* held by someone else: take it only once the record has not changed for ``lease_duration``
  seconds *as observed by this process's monotonic clock* (so clock skew between nodes does
  not matter), by an update carrying the resourceVersion we read (one update wins);
* held by us: renew ``renewTime``.

The leader considers itself leader only while its last successful renewal is younger than
``renew_deadline`` (shorter than ``lease_duration``): if the apiserver becomes unreachable it
stops acting *before* another candidate can take over. :meth:`LeaderElector.is_leader` is that
check, cheap enough to call before every write. On :meth:`LeaderElector.stop` a leader
releases the Lease (empty holder, 1-second duration) so a successor takes over within one retry
period instead of a whole lease duration.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from webhook import FIELD_MANAGER, logs
from webhook.metrics import REGISTRY

IS_LEADER = Gauge(
    "pullsecrets_webhook_leader",
    "1 while this process holds the sync Lease.",
    ["lease"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "pullsecrets_webhook_leader_transitions",
    "Times this process gained or lost the sync Lease, by event (acquired, lost, released).",
    ["lease", "event"],
    registry=REGISTRY,
)


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaign for a Lease in a daemon thread; ``is_leader()`` says whether to act right now."""

    def __init__(
        self,
        api_client: Any,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.api_client = api_client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed_at: float | None = None  # monotonic time of our last successful write as holder
        self._leading = False
        # What we last saw of the record, and when (monotonic) it last changed.
        self._observed: tuple[str | None, str | None] | None = None
        self._observed_at = 0.0
        self.transitions = 0

    # ---- state -----------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while our last renewal is younger than ``renew_deadline`` (and we are not stopping)."""
        renewed = self._renewed_at
        return renewed is not None and not self._stop.is_set() and time.monotonic() - renewed < self.renew_deadline

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"leader-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, release: bool = True, timeout: float = 5.0) -> None:
        """Stop campaigning; a leader gives the Lease up at once unless ``release`` is False."""
        was_leader = self.is_leader()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._set_leading(False)
        if release and was_leader:
            with contextlib.suppress(Exception):
                self._release()

    # ---- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            # The deadline counts from before the request: the apiserver may record the renewal (and
            # a rival observe it) before our response arrives, never before we sent it.
            started = time.monotonic()
            try:
                if self._try_acquire_or_renew():
                    self._renewed_at = started
            except Exception as exc:
                logs.warning("lease update failed", lease=self._where(), error=f"{type(exc).__name__}: {exc}")
            self._set_leading(self.is_leader())
            self._stop.wait(self.retry_period)

    def _where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        IS_LEADER.labels(self._where()).set(1 if leading else 0)
        if leading:
            self.transitions += 1
            TRANSITIONS.labels(self._where(), "acquired").inc()
            logs.info("became leader", lease=self._where(), identity=self.identity)
            if self.on_started_leading is not None:
                try:
                    self.on_started_leading()
                except Exception:
                    logs.error("leader callback failed", exc_info=True, lease=self._where())
        else:
            TRANSITIONS.labels(self._where(), "lost").inc()
            logs.info("stopped leading", lease=self._where(), identity=self.identity)

    def _api(self) -> Any:
        from kubernetes import client

        return client.CoordinationV1Api(self.api_client)

    def _read(self, api: Any) -> dict[str, Any]:
        # Raw JSON, not the model: times are written back exactly as the apiserver formatted them.
        resp = api.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        return json.loads(resp.data)

    def _try_acquire_or_renew(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        api = self._api()
        now = _micro_time()
        try:
            lease = self._read(api)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": max(1, round(self.lease_duration)),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                api.create_namespaced_lease(self.namespace, body, field_manager=FIELD_MANAGER)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
            return True

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        mono = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and mono - self._observed_at < duration:
            return False  # someone else holds a live lease
        new_spec = dict(spec)
        new_spec["holderIdentity"] = self.identity
        new_spec["renewTime"] = now
        new_spec["leaseDurationSeconds"] = max(1, round(self.lease_duration))
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            api.replace_namespaced_lease(self.name, self.namespace, lease, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote in between: judge again next round
                return False
            raise
        if holder != self.identity:
            logs.info("acquired lease", lease=self._where(), identity=self.identity, previous=holder or None)
        return True

    def _release(self) -> None:
        api = self._api()
        lease = self._read(api)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
        lease["spec"] = spec
        api.replace_namespaced_lease(self.name, self.namespace, lease, field_manager=FIELD_MANAGER)
        TRANSITIONS.labels(self._where(), "released").inc()
        logs.info("released lease", lease=self._where(), identity=self.identity)


__all__ = ["LeaderElector"]
