"""Prometheus metrics.

Label values that come from pods (registry hosts) are bounded: after
``MAX_LABEL_VALUES`` distinct values the rest are counted as ``_other``, so a
stream of pods with random registries cannot grow the series without limit.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MAX_LABEL_VALUES = 100
OTHER = "_other"

REGISTRY = CollectorRegistry(auto_describe=True)
_NS = "pullsecrets_webhook"

ADMISSIONS = Counter(
    f"{_NS}_admission_requests",
    "Admission reviews answered, by result "
    "(patched, unchanged, skipped-opt-out, skipped-not-flyte, ignored, invalid, error).",
    ["result"],
    registry=REGISTRY,
)
INJECTED = Counter(
    f"{_NS}_injected_secrets",
    "Pull secrets added to pods, by secret name and the registry that called for it.",
    ["secret", "registry"],
    registry=REGISTRY,
)
UNMATCHED = Counter(
    f"{_NS}_unmatched_images",
    "Images whose registry no rule covers, by registry host (bounded cardinality).",
    ["registry"],
    registry=REGISTRY,
)
MISSING_SECRETS = Counter(
    f"{_NS}_missing_secrets",
    "Secrets a rule called for that did not exist in the pod's namespace (needs --watch-secrets).",
    ["secret"],
    registry=REGISTRY,
)
INVALID_IMAGES = Counter(f"{_NS}_invalid_images", "Image references that could not be parsed.", registry=REGISTRY)
LATENCY = Histogram(
    f"{_NS}_admission_duration_seconds",
    "Time to decide on one admission review, body read to response ready.",
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    f"{_NS}_config_reloads",
    "Rules file reloads, by result (success, failure).",
    ["result"],
    registry=REGISTRY,
)
RULES = Gauge(f"{_NS}_rules", "Rules in the configuration being served.", registry=REGISTRY)
CONFIG_VALID = Gauge(
    f"{_NS}_config_last_reload_successful",
    "1 when the last attempt to load the rules file succeeded, 0 when the old rules are kept.",
    registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    f"{_NS}_certificate_expiry_timestamp_seconds",
    "Expiry (Unix time) of the serving certificate currently in use.",
    registry=REGISTRY,
)

for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)


class BoundedLabel:
    """Maps arbitrary values to at most ``limit`` distinct label values."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


# One budget per metric: a flood of pods from random unmatched registries must not use up the
# labels of the registries that do get secrets.
injected_registry_label = BoundedLabel()
unmatched_registry_label = BoundedLabel()


def render() -> tuple[bytes, str]:
    """Exposition text of this process's metrics (one process per pod; replicas are scraped apart)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
