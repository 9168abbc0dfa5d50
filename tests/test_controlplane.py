"""The test control plane itself: binary discovery, the real apiserver, helm, and a clean teardown."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests import controlplane
from tests.controlplane import (
    KUBE_VERSION,
    Binaries,
    ControlPlane,
    ControlPlaneError,
    delete_mutating_webhook,
    find_binaries,
    port_is_free,
    register_mutating_webhook,
)

# --------------------------------------------------------------------------------------------------
# Binary discovery (no control plane needed)
# --------------------------------------------------------------------------------------------------

_ENV = ("TEST_ASSET_KUBE_APISERVER", "TEST_ASSET_ETCD", "TEST_ASSET_HELM", "KUBEBUILDER_ASSETS", "CI")


def _fake_bin(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No discovery variables, an empty cache and no helm on PATH."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FPW_CONTROL_PLANE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return monkeypatch


BUILD_SCRIPT = Path(__file__).parent.parent / "hack" / "control-plane-binaries.sh"


def test_cache_dir_matches_the_build_script(monkeypatch, tmp_path):
    def script_dir() -> Path:
        out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())

    monkeypatch.delenv("FPW_CONTROL_PLANE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert controlplane.cache_dir() == script_dir()
    assert controlplane.cache_dir().parent == tmp_path / "flyte-pullsecrets-webhook/control-plane"
    monkeypatch.setenv("FPW_CONTROL_PLANE_DIR", str(tmp_path / "elsewhere"))
    assert controlplane.cache_dir() == script_dir() == tmp_path / "elsewhere"


def test_explicit_assets_win(clean_env, tmp_path):
    api = _fake_bin(tmp_path / "a", "my-apiserver")
    etcd = _fake_bin(tmp_path / "b", "my-etcd")
    helm = _fake_bin(tmp_path / "c", "my-helm")
    _fake_bin(tmp_path / "kb", "kube-apiserver")
    _fake_bin(tmp_path / "kb", "etcd")
    clean_env.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "kb"))
    clean_env.setenv("TEST_ASSET_KUBE_APISERVER", str(api))
    clean_env.setenv("TEST_ASSET_ETCD", str(etcd))
    clean_env.setenv("TEST_ASSET_HELM", str(helm))
    assert find_binaries() == Binaries(kube_apiserver=api, etcd=etcd, helm=helm)


def test_kubebuilder_assets_before_cache_and_helm_from_path(clean_env, tmp_path):
    kb = tmp_path / "kb"
    _fake_bin(kb, "kube-apiserver")
    _fake_bin(kb, "etcd")
    cache = Path(os.environ["FPW_CONTROL_PLANE_DIR"])
    for name in ("kube-apiserver", "etcd"):
        _fake_bin(cache, name)
    helm = _fake_bin(tmp_path / "empty-path", "helm")
    clean_env.setenv("KUBEBUILDER_ASSETS", str(kb))
    assert find_binaries() == Binaries(kube_apiserver=kb / "kube-apiserver", etcd=kb / "etcd", helm=helm)


def test_cache_folder_is_the_fallback(clean_env):
    cache = Path(os.environ["FPW_CONTROL_PLANE_DIR"])
    paths = [_fake_bin(cache, name) for name in ("kube-apiserver", "etcd", "helm")]
    assert find_binaries() == Binaries(*paths)


@pytest.mark.parametrize("ci", [None, "", "false", "0", "FALSE"])
def test_missing_binaries_skip_locally_with_a_hint(clean_env, ci):
    if ci is not None:
        clean_env.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="make control-plane"):
        find_binaries()


@pytest.mark.parametrize("ci", ["true", "1", "yes", "True"])
def test_missing_binaries_fail_under_ci(clean_env, ci):
    clean_env.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="kube-apiserver"):
        find_binaries()


def test_wrong_explicit_path_is_not_silently_replaced(clean_env, tmp_path):
    cache = Path(os.environ["FPW_CONTROL_PLANE_DIR"])
    _fake_bin(cache, "kube-apiserver")
    _fake_bin(cache, "etcd")
    clean_env.setenv("TEST_ASSET_ETCD", str(tmp_path / "nope"))
    with pytest.raises(pytest.skip.Exception, match="TEST_ASSET_ETCD"):
        find_binaries()


# A stand-in for Go: records each call, and `go install` leaves a helm that reports the pinned version.
_FAKE_GO = """#!/bin/sh
echo "$*" >> "$FAKE_GO_LOG"
case "$1" in
  install) printf '#!/bin/sh\\necho %s\\n' "$HELM_VERSION" > "$GOBIN/helm"; chmod +x "$GOBIN/helm" ;;
  *) exit 1 ;;
esac
"""


@pytest.mark.parametrize(
    ("given", "helm_from", "builds_helm"),
    [
        pytest.param("kubebuilder", None, True, id="envtest-assets-have-no-helm: helm alone is built"),
        pytest.param("test-asset", None, True, id="TEST_ASSET pair, no helm: helm alone is built"),
        pytest.param("kubebuilder", "assets", False, id="helm in the assets: nothing built"),
        pytest.param("kubebuilder", "path", False, id="helm on PATH: nothing built"),
        pytest.param("kubebuilder", "test-asset", False, id="TEST_ASSET_HELM: nothing built"),
    ],
)
def test_build_script_with_given_binaries_builds_at_most_helm(tmp_path, given, helm_from, builds_helm):
    if shutil.which("helm", path="/usr/bin:/bin"):
        pytest.skip("a system helm is on the base PATH this test relies on being helm-free")
    bin_dir, kb, out = tmp_path / "bin", tmp_path / "kb", tmp_path / "out"
    go = _fake_bin(bin_dir, "go")
    go.write_text(_FAKE_GO)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FPW_CONTROL_PLANE_DIR": str(out),
        "FAKE_GO_LOG": str(tmp_path / "go.log"),
        "HELM_VERSION": controlplane.HELM_VERSION,
    }
    if given == "kubebuilder":
        _fake_bin(kb, "kube-apiserver")
        _fake_bin(kb, "etcd")
        env["KUBEBUILDER_ASSETS"] = str(kb)
    else:
        env["TEST_ASSET_KUBE_APISERVER"] = str(_fake_bin(tmp_path / "a", "kube-apiserver"))
        env["TEST_ASSET_ETCD"] = str(_fake_bin(tmp_path / "b", "etcd"))
    if helm_from == "assets":
        _fake_bin(kb, "helm")
    elif helm_from == "path":
        _fake_bin(bin_dir, "helm")
    elif helm_from == "test-asset":
        env["TEST_ASSET_HELM"] = str(_fake_bin(tmp_path / "c", "helm"))

    run = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(kb if given == "kubebuilder" else out)
    go_calls = (tmp_path / "go.log").read_text().splitlines() if (tmp_path / "go.log").exists() else []
    assert [call.split()[0] for call in go_calls] == (["install"] if builds_helm else [])
    assert (out / "helm").exists() == builds_helm
    assert not (out / "kube-apiserver").exists()
    assert not (out / "etcd").exists()


# --------------------------------------------------------------------------------------------------
# Against the session's control plane
# --------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_reports_the_pinned_version(control_plane, kube_api):
    assert control_plane.version()["gitVersion"] == KUBE_VERSION
    info = kubernetes.client.VersionApi(kube_api).get_code()
    assert (info.git_version, info.major, info.minor) == (KUBE_VERSION, "1", KUBE_VERSION.split(".")[1])


@pytest.mark.e2e
def test_namespaces_keep_their_labels(namespace, core_v1):
    name = namespace(labels={"flyte.org/project": "alpha", "team": "ml"})
    assert name.startswith("t-")
    stored = core_v1.read_namespace(name)
    assert stored.metadata.labels["flyte.org/project"] == "alpha"
    assert stored.metadata.labels["team"] == "ml"
    assert namespace() != namespace()


@pytest.mark.e2e
def test_pods_are_stored_pending(namespace, core_v1):
    ns = namespace()
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/team/app:1"}]},
    }
    core_v1.create_namespaced_pod(ns, pod)
    stored = core_v1.read_namespaced_pod("p", ns)
    assert stored.status.phase == "Pending"
    assert stored.spec.containers[0].image == "registry.example.com/team/app:1"
    assert stored.spec.node_name is None  # nothing schedules here


@pytest.mark.e2e
@pytest.mark.helm
def test_kubeconfig_works_with_helm(control_plane):
    version = control_plane.helm("version", "--template", "{{.Version}}")
    assert version.returncode == 0, version.stderr
    if control_plane.binaries.helm.parent == controlplane.cache_dir():  # built by our script: pinned
        assert version.stdout.strip() == controlplane.HELM_VERSION
    listed = control_plane.helm("list", "-A", "--kubeconfig", str(control_plane.kubeconfig_path))
    assert listed.returncode == 0, listed.stderr
    assert "NAME" in listed.stdout


@pytest.mark.e2e
def test_other_identities(control_plane, namespace):
    ns = namespace()
    with control_plane.api_client_for_user("alice", groups=["system:masters"]) as admin_alice:
        assert kubernetes.client.CoreV1Api(admin_alice).read_namespace(ns).metadata.name == ns
    with control_plane.api_client_for_user("bob") as bob, pytest.raises(ApiException) as denied:
        kubernetes.client.CoreV1Api(bob).list_namespaced_pod(ns)
    assert denied.value.status == 403
    assert 'User \\"bob\\"' in denied.value.body or 'User "bob"' in denied.value.body

    token = control_plane.service_account_token(ns, "robot")
    with control_plane.api_client_for_token(token) as robot, pytest.raises(ApiException) as denied:
        kubernetes.client.CoreV1Api(robot).list_namespaced_pod(ns)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{ns}:robot" in denied.value.body
    assert control_plane.kubeconfig_for_token(token, "robot").read_text().count(token) == 1
    assert "client-certificate" in control_plane.kubeconfig_for_user("carol", ["dev"]).read_text()


@pytest.mark.e2e
def test_register_mutating_webhook_creates_then_replaces(kube_api, admission_v1):
    name = "cp-selftest.fpw.test"
    never = {"matchLabels": {"fpw.test/never": "true"}}  # must not affect the other tests' pods
    try:
        register_mutating_webhook(kube_api, name, "https://127.0.0.1:1/mutate", b"PEM", object_selector=never)
        stored = register_mutating_webhook(
            kube_api, name, "https://127.0.0.1:2/mutate", "PEM", object_selector=never, failure_policy="Fail"
        )
        hook = stored["webhooks"][0]
        assert hook["clientConfig"]["url"] == "https://127.0.0.1:2/mutate"
        assert hook["failurePolicy"] == "Fail"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["rules"][0]["operations"] == ["CREATE"]
        read = admission_v1.read_mutating_webhook_configuration(name)
        assert read.webhooks[0].client_config.ca_bundle == "UEVN"  # base64 of "PEM"
    finally:
        delete_mutating_webhook(kube_api, name)
    delete_mutating_webhook(kube_api, name)  # already gone: fine


# --------------------------------------------------------------------------------------------------
# Lifecycle of a private control plane
# --------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_teardown_frees_ports_and_processes(control_plane):
    with ControlPlane(control_plane.binaries) as cp:
        ports, pids, folder = cp.ports, cp.pids, cp.dir
        assert cp.running
        assert len(pids) == 2
        assert all(map(_alive, pids))
        assert not any(map(port_is_free, ports))
        with cp.api_client() as client:
            assert kubernetes.client.CoreV1Api(client).list_namespace().items is not None
    assert not cp.running
    assert not any(map(_alive, pids))
    assert all(map(port_is_free, ports))
    assert folder is not None
    assert not folder.exists()
    assert cp.log_tail(5).strip()  # kept in memory for failure reports
    cp.stop()  # idempotent


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_start_failure_reports_log_and_cleans_up(control_plane, tmp_path):
    broken = tmp_path / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'boom: no such flag' >&2\nexit 3\n")
    broken.chmod(0o755)
    cp = ControlPlane(dataclasses.replace(control_plane.binaries, kube_apiserver=broken))
    with pytest.raises(ControlPlaneError, match=r"(?s)exited with code 3.*boom: no such flag"):
        cp.start()
    assert cp.dir is None
    assert not any(map(_alive, cp.pids))


_KILLED_CHILD = """
import json, sys, time
from pathlib import Path
from tests.controlplane import Binaries, ControlPlane
cp = ControlPlane(Binaries(kube_apiserver=Path(sys.argv[1]), etcd=Path(sys.argv[2]), helm=None))
cp.start()
print(json.dumps({"pids": list(cp.pids), "ports": list(cp.ports), "dir": str(cp.dir)}), flush=True)
time.sleep(600)
"""


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_killed_test_process_leaves_no_control_plane_behind(control_plane):
    """SIGKILL runs no teardown at all: etcd and the apiserver must still die with their parent."""
    b = control_plane.binaries
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(b.kube_apiserver), str(b.etcd)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
    pids, ports = started["pids"], started["ports"]
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (any(map(_alive, pids)) or not all(map(port_is_free, ports))):
        time.sleep(0.2)
    assert not any(map(_alive, pids)), "orphaned control-plane processes"
    assert all(map(port_is_free, ports)), "ports still bound after the test process died"
    shutil.rmtree(started["dir"], ignore_errors=True)  # nothing could remove it: its owner was killed
