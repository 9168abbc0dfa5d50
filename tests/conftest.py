"""Shared fixtures: one real control plane per session (see tests/controlplane.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator, Mapping

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.controlplane import ControlPlane, find_binaries

# Set once the session's control plane is up, for the terminal summary.
_started: list[ControlPlane] = []


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver shared by the whole session (skipped, or failed under CI, without binaries)."""
    with ControlPlane(find_binaries()) as cp:
        _started.append(cp)
        yield cp


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """Admin ApiClient for the session's control plane."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture(scope="session")
def core_v1(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_api)


@pytest.fixture(scope="session")
def admission_v1(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.AdmissionregistrationV1Api:
    return kubernetes.client.AdmissionregistrationV1Api(kube_api)


NamespaceFactory = Callable[..., str]


@pytest.fixture
def namespace(core_v1: kubernetes.client.CoreV1Api) -> Iterator[NamespaceFactory]:
    """Factory: ``namespace(labels={...}, prefix="t")`` creates a uniquely named namespace.

    All are deleted after the test. With no namespace controller they stay Terminating (still
    readable, still matched by selectors), which unique names make harmless.
    """
    created: list[str] = []

    def make(labels: Mapping[str, str] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        core_v1.create_namespace({"metadata": {"name": name, "labels": dict(labels or {})}})
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core_v1.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the control plane are e2e, whether or not they say so."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()) and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On an e2e failure, attach the apiserver's log tail: admission errors are explained there."""
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None and _started:
        report.sections.append(("kube-apiserver log (last 80 lines)", _started[-1].log_tail(80)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the shared control plane's start-up time, to keep an eye on suite overhead."""
    for cp in _started:
        if cp.startup_seconds is not None:
            terminalreporter.write_line(f"control plane: ready in {cp.startup_seconds:.2f}s ({cp.url})")
