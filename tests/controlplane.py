"""A real kube-apiserver + etcd for end-to-end tests, in the spirit of controller-runtime's envtest.

No kubelet, scheduler or controllers run: pods stay Pending, Deployments create no pods and deleted
namespaces stay Terminating. That is enough to exercise admission webhooks against the real apiserver.

Binaries come from envtest's conventions or from the cache filled by ``hack/control-plane-binaries.sh``
(``make control-plane``); see :func:`find_binaries`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import kubernetes.client
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from kubernetes.client.rest import ApiException

from webhook.certs import generate_ca

# Pins: keep in step with hack/control-plane-binaries.sh (which honours the same variables).
KUBE_VERSION = os.environ.get("KUBE_VERSION") or "v1.36.3"
ETCD_VERSION = os.environ.get("ETCD_VERSION") or "v3.6.16"
HELM_VERSION = os.environ.get("HELM_VERSION") or "v4.3.2"

ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Lines of each log kept in memory when the temp dir goes away, so failures reported after teardown
# still show what the apiserver said.
_KEPT_LOG_LINES = 500


# --------------------------------------------------------------------------------------------------
# Binary discovery
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables; helm is optional (only helm tests need it)."""

    kube_apiserver: Path
    etcd: Path
    helm: Path | None


class BinariesNotFoundError(RuntimeError):
    """kube-apiserver or etcd could not be located."""


def cache_dir() -> Path:
    """The folder ``hack/control-plane-binaries.sh`` builds into (same rules, same env overrides)."""
    override = os.environ.get("FPW_CONTROL_PLANE_DIR")
    if override:
        return Path(override)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = f"k8s-{KUBE_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return root / "flyte-pullsecrets-webhook" / "control-plane" / name


def _executable(path: Path | str | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_file() and os.access(p, os.X_OK) else None


def _locate(env_var: str, name: str, folders: Sequence[Path]) -> tuple[Path | None, list[str]]:
    """First executable among the env var and folders, plus what was tried (for the error message)."""
    tried: list[str] = []
    explicit = os.environ.get(env_var)
    if explicit:
        tried.append(f"${env_var}={explicit}")
        # An explicit path that is wrong is a configuration error worth reporting, not skipping past.
        return _executable(explicit), tried
    for folder in folders:
        candidate = folder / name
        tried.append(str(candidate))
        if found := _executable(candidate):
            return found, tried
    return None, tried


def locate_binaries() -> Binaries:
    """Find the binaries without touching pytest; raises :class:`BinariesNotFoundError`."""
    folders: list[Path] = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        folders.append(Path(assets))
    folders.append(cache_dir())

    apiserver, tried_api = _locate("TEST_ASSET_KUBE_APISERVER", "kube-apiserver", folders)
    etcd, tried_etcd = _locate("TEST_ASSET_ETCD", "etcd", folders)
    if apiserver is None or etcd is None:
        missing = [
            f"{name} (tried: {', '.join(tried)})"
            for name, found, tried in (("kube-apiserver", apiserver, tried_api), ("etcd", etcd, tried_etcd))
            if found is None
        ]
        raise BinariesNotFoundError("control-plane binaries not found: " + "; ".join(missing))

    helm, _ = _locate("TEST_ASSET_HELM", "helm", folders)
    if helm is None and not os.environ.get("TEST_ASSET_HELM"):
        helm = _executable(shutil.which("helm"))
    return Binaries(kube_apiserver=apiserver, etcd=etcd, helm=helm)


def in_ci() -> bool:
    """CI runs set CI (to true, 1, ...); CI=false or CI=0 is a local run that says so."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_binaries() -> Binaries:
    """Locate the binaries for a test: skip locally when absent, but fail under CI so it cannot pass empty."""
    try:
        return locate_binaries()
    except BinariesNotFoundError as exc:
        if in_ci():
            pytest.fail(f"{exc}. CI must build them first (make control-plane).", pytrace=False)
        pytest.skip(f"{exc}. Run `make control-plane` (or set KUBEBUILDER_ASSETS) to run end-to-end tests.")


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


class ControlPlaneError(RuntimeError):
    """The control plane failed to start; the message carries the relevant log tail."""


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports; all are held open together so they cannot collide with each other."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (used to check teardown)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, n: int) -> str:
    try:
        with path.open("r", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except FileNotFoundError:
        return ""


_PR_SET_PDEATHSIG = 1
# Resolved up front: the child side of fork() should do as little as possible.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """Child-side: get SIGKILLed if the test process dies, so even a killed pytest leaves no orphans.

    Linux only; the signal fires when the *thread* that started the child exits, so start control
    planes from the main thread (pytest fixtures do).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen[bytes] | None, term_timeout: float, kill_timeout: float = 5) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc is None:
        return
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=kill_timeout)


def _ca_and_key(common_name: str) -> tuple[PrivateKeyTypes, x509.Certificate]:
    """A throwaway CA valid for a day (the webhook's own generator), as objects to sign client certs with."""
    ca = generate_ca(common_name, validity=dt.timedelta(days=1))
    return serialization.load_pem_private_key(ca.key_pem, password=None), x509.load_pem_x509_certificate(ca.cert_pem)


_DIR_PREFIX = "fpw-control-plane-"
_OWNER_FILE = "owner.pid"


def _remove_stale_dirs() -> None:
    """Remove temp dirs left by killed sessions (atexit cannot run on SIGKILL); their owner pid is gone."""
    for d in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            owner = int((d / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # alive, owned by someone else


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --------------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------------

# Control planes not yet stopped; the atexit hook stops them if a session is interrupted mid-way.
_RUNNING: weakref.WeakSet[ControlPlane] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cp in list(_RUNNING):
        cp.stop()


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create]
    resources: [{group: "", resources: [pods]}]
  - level: None
"""


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports in a temp dir; use as a context manager.

    ``url``, ``ca_file``, ``admin_token`` and ``kubeconfig_path`` are valid once started. Other
    identities: :meth:`api_client_for_token` / :meth:`kubeconfig_for_token` for bearer tokens (e.g.
    from :meth:`service_account_token`), and :meth:`api_client_for_user` / :meth:`kubeconfig_for_user`
    for any user and groups via client certificates (no restart needed, unlike the token file).
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        start_timeout: float = 90.0,
        extra_apiserver_args: Sequence[str] = (),
        keep_dir: bool | None = None,
    ) -> None:
        self.binaries = binaries or locate_binaries()
        self.start_timeout = start_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        # FPW_KEEP_CONTROL_PLANE_DIR=1 keeps the logs and certs for a post-mortem.
        self.keep_dir = bool(os.environ.get("FPW_KEEP_CONTROL_PLANE_DIR")) if keep_dir is None else keep_dir
        self.dir: Path | None = None
        self.etcd_proc: subprocess.Popen[bytes] | None = None
        self.apiserver_proc: subprocess.Popen[bytes] | None = None
        self.etcd_client_port = self.etcd_peer_port = self.secure_port = 0
        self.admin_token = secrets.token_urlsafe(32)
        self.startup_seconds: float | None = None
        self._kept_logs: dict[str, str] = {}
        self._client_ca: tuple[PrivateKeyTypes, x509.Certificate] | None = None
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd, then kube-apiserver, and wait for ``/readyz``; stops everything on any failure."""
        t0 = time.monotonic()
        _remove_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self.dir / _OWNER_FILE).write_text(str(os.getpid()))
        _RUNNING.add(self)
        try:
            # A port taken between picking and binding is rare but possible: retry with fresh ports.
            for attempt in range(3):
                try:
                    self._start_once()
                    break
                except _PortInUseError:
                    self._stop_processes()
                    if attempt == 2:
                        raise
        except BaseException:  # including KeyboardInterrupt: never leave half a control plane behind
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _start_once(self) -> None:
        assert self.dir is not None
        self.etcd_client_port, self.etcd_peer_port, self.secure_port = _free_ports(3)
        self.etcd_proc = self._spawn("etcd", self._etcd_args())
        # Writing the keys and token file overlaps with etcd's start-up.
        self._write_apiserver_inputs()
        self._wait_for_etcd()
        self.apiserver_proc = self._spawn("kube-apiserver", self._apiserver_args())
        self._write_kubeconfig(self.kubeconfig_path, self.admin_token, user=ADMIN_USER)
        self._wait_for_apiserver()

    def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL) and remove the temp dir; idempotent."""
        with self._lock:
            try:
                self._stop_processes()
            finally:
                _RUNNING.discard(self)
                if self.dir is not None:
                    self._kept_logs = {
                        name: _tail(self.dir / f"{name}.log", _KEPT_LOG_LINES) for name in ("kube-apiserver", "etcd")
                    }
                    if self.keep_dir:
                        print(f"control plane files kept in {self.dir}", file=sys.stderr)
                    else:
                        shutil.rmtree(self.dir, ignore_errors=True)
                    self.dir = None

    def _stop_processes(self) -> None:
        try:
            # The apiserver first: it would otherwise log etcd connection errors while draining.
            _stop_process(self.apiserver_proc, term_timeout=10)
        finally:
            _stop_process(self.etcd_proc, term_timeout=10)

    @property
    def running(self) -> bool:
        """Both processes are alive."""
        procs = (self.apiserver_proc, self.etcd_proc)
        return all(p is not None and p.poll() is None for p in procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of etcd and kube-apiserver (for leak checks)."""
        return [p.pid for p in (self.etcd_proc, self.apiserver_proc) if p is not None]

    @property
    def ports(self) -> list[int]:
        """Every port the control plane listens on."""
        return [self.etcd_client_port, self.etcd_peer_port, self.secure_port]

    # ---- process set-up --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        binary = self.binaries.etcd if name == "etcd" else self.binaries.kube_apiserver
        env = dict(os.environ)
        # Start-up allocates heavily; collecting less often saved ~10% of the apiserver's CPU
        # to /readyz here. The heap stays small, so the extra memory is a non-issue.
        env.setdefault("GOGC", "400")
        with (self.dir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # own process group: signals reach every child, Ctrl-C does not
                preexec_fn=_die_with_parent,
            )

    def _etcd_args(self) -> list[str]:
        assert self.dir is not None
        client = f"http://127.0.0.1:{self.etcd_client_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            "--name=default",
            f"--data-dir={self.dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # test data is thrown away: durability buys nothing
            "--log-level=warn",
        ]

    def _write_apiserver_inputs(self) -> None:
        assert self.dir is not None
        certs = self.cert_dir
        certs.mkdir(exist_ok=True)
        # One RSA key both signs and verifies service-account tokens.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(_pem_key(sa_key))
        # Static tokens: the admin only (the file is read once at start-up; other users use client certs).
        (self.dir / "tokens.csv").write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER}-uid,"{ADMIN_GROUP}"\n')
        # Audit pod creations only (at Metadata level, which carries webhook audit annotations).
        (self.dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self._client_ca = _ca_and_key("fpw-test-client-ca")
        (self.dir / "client-ca.crt").write_bytes(self._client_ca[1].public_bytes(serialization.Encoding.PEM))

    def _apiserver_args(self) -> list[str]:
        assert self.dir is not None
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.secure_port}",
            f"--cert-dir={self.cert_dir}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.dir / 'sa.key'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            "--authorization-mode=RBAC",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            f"--client-ca-file={self.dir / 'client-ca.crt'}",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # Start-up speed: nothing here needs these, and each costs work before /readyz passes.
            "--endpoint-reconciler-type=none",  # would only log that 127.0.0.1 is an invalid endpoint
            "--enable-priority-and-fairness=false",
            "--watch-cache=false",  # no per-resource cache to prime; reads go straight to etcd
            "--profiling=false",
            "--etcd-compaction-interval=0",
            f"--audit-policy-file={self.dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-format=json",
            *self.extra_apiserver_args,
        ]

    @property
    def audit_log_path(self) -> Path:
        return self._require_dir() / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        """Audit events written so far (pod creations; see AUDIT_POLICY)."""
        try:
            lines = self.audit_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def _wait_for_etcd(self) -> None:
        deadline = time.monotonic() + min(self.start_timeout, 30)
        while time.monotonic() < deadline:
            self._check_alive(self.etcd_proc, "etcd")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.etcd_client_port, timeout=2)
                conn.request("GET", "/health")
                body = conn.getresponse().read()
                conn.close()
                if b'"health":"true"' in body:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise ControlPlaneError(f"etcd did not become healthy in time\n--- etcd log ---\n{self.log_tail(50, 'etcd')}")

    def _wait_for_apiserver(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_alive(self.apiserver_proc, "kube-apiserver")
            self._check_alive(self.etcd_proc, "etcd")
            if self.ca_file.exists():
                try:
                    status, body = self._admin_get("/readyz")
                    if status == 200:
                        return
                    last = f"HTTP {status}: {body[-500:]}"
                except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                    last = repr(exc)
            time.sleep(0.05)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {self.start_timeout:.0f}s (last /readyz: {last})\n"
            f"--- kube-apiserver log tail ---\n{self.log_tail(60)}"
        )

    def _check_alive(self, proc: subprocess.Popen[bytes] | None, name: str) -> None:
        if proc is None or proc.poll() is None:
            return
        tail = self.log_tail(60, name)
        if "address already in use" in tail:
            raise _PortInUseError(name)
        raise ControlPlaneError(f"{name} exited with code {proc.returncode}\n--- {name} log tail ---\n{tail}")

    def _admin_get(self, path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection("127.0.0.1", self.secure_port, context=ctx, timeout=5)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.admin_token}"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    # ---- what tests use --------------------------------------------------------------------------

    def _require_dir(self) -> Path:
        if self.dir is None:
            raise RuntimeError("control plane is not running")
        return self.dir

    @property
    def url(self) -> str:
        """The apiserver's https URL on loopback."""
        return f"https://127.0.0.1:{self.secure_port}"

    @property
    def cert_dir(self) -> Path:
        """Where the apiserver self-signs its serving certificate."""
        return self._require_dir() / "certs"

    @property
    def ca_file(self) -> Path:
        """PEM bundle that verifies the apiserver (its self-signed cert plus the CA that signed it)."""
        return self.cert_dir / "apiserver.crt"

    @property
    def kubeconfig_path(self) -> Path:
        """An admin kubeconfig usable by helm, kubectl and ``kubernetes.config``."""
        return self._require_dir() / "admin.kubeconfig"

    def log_tail(self, n: int = 50, component: str = "kube-apiserver") -> str:
        """Last n lines of a component's log ("kube-apiserver" or "etcd"), even after stop()."""
        if self.dir is not None:
            return _tail(self.dir / f"{component}.log", n)
        kept = self._kept_logs.get(component, "")
        return "".join(kept.splitlines(keepends=True)[-n:])

    def version(self) -> dict[str, Any]:
        """The apiserver's ``/version`` document."""
        status, body = self._admin_get("/version")
        if status != 200:
            raise ControlPlaneError(f"/version: HTTP {status}: {body}")
        return json.loads(body)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new admin client (group system:masters)."""
        return self.api_client_for_token(self.admin_token)

    def _configuration(self) -> kubernetes.client.Configuration:
        cfg = kubernetes.client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.verify_ssl = True
        return cfg

    def api_client_for_token(self, token: str) -> kubernetes.client.ApiClient:
        """A client authenticating with a bearer token (admin, ServiceAccount, ...)."""
        cfg = self._configuration()
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(cfg)

    def kubeconfig_for_token(self, token: str, name: str = "user") -> Path:
        """Write a kubeconfig for a bearer token into the temp dir and return its path."""
        path = self._require_dir() / f"{_safe(name)}.kubeconfig"
        self._write_kubeconfig(path, token, user=name)
        return path

    def service_account_token(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> str:
        """A TokenRequest token for a ServiceAccount, created (by the admin) if missing."""
        core = kubernetes.client.CoreV1Api(self.api_client())
        with contextlib.suppress(ApiException):  # 409: it already exists
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        body = {"spec": {"audiences": [SERVICE_ACCOUNT_ISSUER], "expirationSeconds": expiration_seconds}}
        result = core.create_namespaced_service_account_token(name, namespace, body)
        return result.status.token

    def user_certificate(self, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        """Mint a client cert for any user/groups (CN=user, O=groups); returns (cert, key) paths."""
        d = self._require_dir()
        assert self._client_ca is not None
        ca_key, ca_cert = self._client_ca
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        stem = d / f"user-{_safe(user)}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path

    def api_client_for_user(self, user: str, groups: Sequence[str] = ()) -> kubernetes.client.ApiClient:
        """A client authenticating as any user/groups via a client certificate."""
        cert, key = self.user_certificate(user, groups)
        cfg = self._configuration()
        cfg.cert_file, cfg.key_file = str(cert), str(key)
        return kubernetes.client.ApiClient(cfg)

    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as any user/groups via a client certificate."""
        cert, key = self.user_certificate(user, groups)
        path = self._require_dir() / f"user-{_safe(user)}.kubeconfig"
        self._write_kubeconfig(path, None, user=user, cert=cert, key=key)
        return path

    def _write_kubeconfig(
        self, path: Path, token: str | None, *, user: str, cert: Path | None = None, key: Path | None = None
    ) -> None:
        creds: dict[str, str] = {"token": token} if token else {}
        if cert and key:
            creds = {"client-certificate": str(cert), "client-key": str(key)}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)  # helm warns about group/world-readable kubeconfigs

    # ---- helm ------------------------------------------------------------------------------------

    def helm_env(self) -> dict[str, str]:
        """Environment for helm: this cluster's kubeconfig and helm state kept inside the temp dir."""
        d = self._require_dir()
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig_path),
            HELM_CACHE_HOME=str(d / "helm" / "cache"),
            HELM_CONFIG_HOME=str(d / "helm" / "config"),
            HELM_DATA_HOME=str(d / "helm" / "data"),
        )
        return env

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the helm binary against this cluster; skips the test when helm is unavailable."""
        if self.binaries.helm is None:
            if in_ci():
                pytest.fail("helm binary not found (TEST_ASSET_HELM, control-plane cache, PATH)", pytrace=False)
            pytest.skip("helm binary not found: run `make control-plane` or set TEST_ASSET_HELM")
        return subprocess.run(
            [str(self.binaries.helm), *args],
            env=self.helm_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


class _PortInUseError(ControlPlaneError):
    """A chosen port was taken before the component bound it."""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------------------------------
# Admission webhook registration
# --------------------------------------------------------------------------------------------------


def register_mutating_webhook(
    api_client: kubernetes.client.ApiClient,
    name: str,
    url: str,
    ca_bundle_pem: bytes | str,
    *,
    failure_policy: str = "Ignore",
    namespace_selector: Mapping[str, Any] | None = None,
    object_selector: Mapping[str, Any] | None = None,
    reinvocation_policy: str = "IfNeeded",
    timeout_seconds: int = 5,
    webhook_name: str | None = None,
) -> dict[str, Any]:
    """Create or replace a MutatingWebhookConfiguration calling ``url`` on pod CREATE.

    ``url`` must be https (loopback is fine: the apiserver calls it directly, appending
    ``?timeout=Ns``). ``webhook_name`` defaults to ``name`` and must have at least three
    dot-separated segments (e.g. ``pullsecrets.flyte.test``). Returns the stored object as a dict.
    """
    ca = ca_bundle_pem.encode() if isinstance(ca_bundle_pem, str) else ca_bundle_pem
    webhook: dict[str, Any] = {
        "name": webhook_name or name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca).decode()},
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "reinvocationPolicy": reinvocation_policy,
        "timeoutSeconds": timeout_seconds,
        "namespaceSelector": dict(namespace_selector or {}),
        "objectSelector": dict(object_selector or {}),
    }
    body: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }
    api = kubernetes.client.AdmissionregistrationV1Api(api_client)
    try:
        created = api.create_mutating_webhook_configuration(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        existing = api.read_mutating_webhook_configuration(name)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        created = api.replace_mutating_webhook_configuration(name, body)
    return api_client.sanitize_for_serialization(created)


def delete_mutating_webhook(api_client: kubernetes.client.ApiClient, name: str) -> None:
    """Delete a MutatingWebhookConfiguration; missing is fine."""
    api = kubernetes.client.AdmissionregistrationV1Api(api_client)
    try:
        api.delete_mutating_webhook_configuration(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


__all__ = [
    "ADMIN_GROUP",
    "ADMIN_USER",
    "Binaries",
    "BinariesNotFoundError",
    "ControlPlane",
    "ControlPlaneError",
    "cache_dir",
    "delete_mutating_webhook",
    "find_binaries",
    "locate_binaries",
    "port_is_free",
    "register_mutating_webhook",
]
