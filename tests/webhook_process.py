"""Start ``pullsecrets-webhook serve`` as a real subprocess, the way users run it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WebhookProcess:
    """A ``serve`` subprocess on loopback; certificates are generated into ``cert_dir`` if absent."""

    def __init__(
        self,
        config: Path,
        cert_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cert_dir = cert_dir
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = extra_args
        self.env = env
        self.log_path = cert_dir.parent / f"webhook-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_rules(cls, base: Path, rules: dict[str, Any], **kwargs: Any) -> WebhookProcess:
        """Write ``rules`` to ``base/rules.yaml`` and serve it with certificates in ``base/certs``."""
        config = base / "rules.yaml"
        config.write_text(yaml.safe_dump(rules))
        return cls(config, base / "certs", **kwargs)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/mutate"

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    def start(self, timeout: float = 20.0) -> WebhookProcess:
        cmd = [
            sys.executable, "-m", "webhook", "serve",
            "--config", str(self.config),
            "--host", self.host,
            "--port", str(self.port),
            "--cert-dir", str(self.cert_dir),
            "--reload-interval", "0.5",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **(self.env or {})}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self.wait_ready(timeout)
        except BaseException:
            # __exit__ never runs when __enter__ raises: a server that came up late would outlive the test.
            self.stop()
            raise
        return self

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"webhook exited with {self.proc.returncode}:\n{self.log(8000)}")
            if self.ca_file.exists():
                try:
                    with urllib.request.urlopen(self.base_url + "/readyz", context=self.ssl_context(), timeout=1) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"webhook not ready after {timeout}s:\n{self.log(8000)}")

    def log(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return text[-tail:] if tail else text
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> WebhookProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
