"""The processes under test: ``pullsecrets-webhook serve`` as users run it, and the floor."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess on 127.0.0.1 with its own generated dev CA in ``cert_dir``."""

    def __init__(self, name: str, argv: list[str], workdir: Path, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = free_port(host)
        self.cert_dir = workdir / f"certs-{name}"
        self.log_path = workdir / f"{name}.log"
        self.argv = [*argv, "--host", host, "--port", str(self.port), "--cert-dir", str(self.cert_dir)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/mutate"

    def start(self, timeout: float = 30.0) -> Server:
        # stderr (one JSON log line per admission) goes to a file, as a container runtime would take it.
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ca_file.exists():
                try:
                    status, _ = self.request("GET", "/readyz")
                    if status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def proc_status(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS in KiB, from /proc/<pid>/status."""
        out: dict[str, int] = {}
        if self.proc is None:
            return out
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0])
        except OSError:
            pass
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far, from /proc/<pid>/stat."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def webhook(name: str, config: Path, workdir: Path) -> Server:
    return Server(name, ["-m", "webhook", "serve", "--config", str(config)], workdir)


def floor(workdir: Path) -> Server:
    return Server("floor", ["-m", "bench.floor"], workdir)
