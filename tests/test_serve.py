"""The CLI's HTTPS server as a real subprocess: generated certificates, a real TLS client."""

import contextlib
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading

import httpx
import jsonpatch
import orjson
import pytest

from tests.reviews import ECR_IMAGE, decode_patch, flyte_pod, review_for
from tests.webhook_process import REPO, WebhookProcess

CONFIG = REPO / "examples" / "rules.yaml"


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    with WebhookProcess(CONFIG, base / "certs") as proc:
        yield proc


def test_generated_certificates_are_in_the_cert_dir_with_a_private_key_file(webhook):
    for name in ("ca.crt", "tls.crt", "tls.key"):
        assert (webhook.cert_dir / name).is_file()
    assert stat.S_IMODE((webhook.cert_dir / "tls.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("images", "existing", "expected"),
    [
        ([ECR_IMAGE, "ubuntu"], None, ["ecr-pull", "dockerhub"]),
        (["ghcr.io/my-org/app:1"], [{"name": "mine"}], ["mine", "ghcr-my-org"]),
        (["localhost:5000/tools/x"], [{"name": "local-registry"}], ["local-registry"]),
    ],
)
def test_https_review_yields_a_patch_that_applies(webhook, images, existing, expected):
    pod = flyte_pod(*images)
    if existing is not None:
        pod["spec"]["imagePullSecrets"] = existing
    with httpx.Client(verify=webhook.ssl_context()) as client:
        r = client.post(
            webhook.url + "?timeout=10s",
            content=orjson.dumps(review_for(pod)),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200
    patched = jsonpatch.apply_patch(pod, decode_patch(r.json()["response"]))
    assert [s["name"] for s in patched["spec"]["imagePullSecrets"]] == expected


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_certificate_is_valid_for_loopback_names(webhook, host):
    with httpx.Client(verify=webhook.ssl_context()) as client:
        assert client.get(f"https://{host}:{webhook.port}/healthz").status_code == 200


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(webhook):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(webhook.ca_file)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    # Control: this client does complete a TLS 1.1 handshake with a server that allows it, so the
    # refusal below is the webhook's doing, not a client that cannot offer TLS 1.1 at all.
    assert _handshake_with_permissive_server(ctx, webhook.cert_dir) == "TLSv1.1"
    with pytest.raises((ssl.SSLError, httpx.ConnectError)), httpx.Client(verify=ctx) as client:
        client.get(webhook.base_url + "/healthz")


def _handshake_with_permissive_server(client_ctx: ssl.SSLContext, cert_dir) -> str | None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server_ctx.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            version = tls.version()
        thread.join(5)
    return version


def test_ipv6_loopback(tmp_path):
    with WebhookProcess(CONFIG, tmp_path / "certs", host="::1") as proc, httpx.Client(verify=proc.ssl_context()) as c:
        assert c.get(proc.base_url + "/readyz").status_code == 200


def test_sigterm_exits_cleanly(tmp_path):
    proc = WebhookProcess(CONFIG, tmp_path / "certs").start()
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    proc.stop()


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args], cwd=REPO, capture_output=True, text=True, input=stdin, timeout=60
    )


def test_serve_refuses_a_bad_config_with_a_clear_message(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [{registry: ghcr.io, secrets: []}]")
    r = run_cli("serve", "--config", str(bad), "--cert-dir", str(tmp_path / "c"), "--port", "0")
    assert r.returncode == 1
    assert "rules[0] (registry 'ghcr.io'): 'secrets' must be a non-empty list" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("init-certs", "--cert-validity-days", "7"), "renewal window must be shorter than its validity"),
        (("init-certs", "--ca-validity-days", "300"), "the CA's renewal window must be shorter"),
        (
            ("serve", "--config", str(CONFIG), "--manage-certs", "--cert-check-interval", "600"),
            "--cert-check-interval must be shorter than --rotation-overlap",
        ),
    ],
)
def test_certificate_settings_that_cannot_settle_are_refused_before_any_api_call(tmp_path, args, message):
    names = ("--namespace", "ns", "--service", "svc", "--secret", "tls", "--kubeconfig", str(tmp_path / "none"))
    r = run_cli(*args, *names, *(("--cert-dir", str(tmp_path / "c")) if args[0] == "serve" else ()))
    assert r.returncode == 1, r.stderr
    assert message in r.stderr


def test_check_config():
    r = run_cli("check-config", str(CONFIG))
    assert r.returncode == 0
    assert "OK: 6 rules (2 with globs)" in r.stdout


@pytest.mark.parametrize(
    ("pod_file", "expected"),
    [
        ("task-pod.yaml", ["ecr-pull"]),
        ("spark-driver.yaml", ["team-default", "ghcr-my-org", "dockerhub"]),
        ("ray-head.yaml", ["local-registry", "gitlab-pull"]),
    ],
)
def test_mutate_example_pods(pod_file, expected):
    r = run_cli("mutate", "--config", str(CONFIG), str(REPO / "examples" / "pods" / pod_file), "-o", "json")
    assert r.returncode == 0, r.stderr
    pod = orjson.loads(r.stdout)
    assert [s["name"] for s in pod["spec"]["imagePullSecrets"]] == expected
    assert "patched; added:" in r.stderr


def test_mutate_reads_multi_document_yaml_from_stdin():
    docs = "\n---\n".join((REPO / "examples" / "pods" / f).read_text() for f in ("task-pod.yaml", "ray-head.yaml"))
    r = run_cli("mutate", "--config", str(CONFIG), "-", stdin=docs + "\n---\nkind: Service\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("imagePullSecrets") == 2
    assert "skipping a Service document" in r.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid YAML or JSON"),
        ("- a\n- b\n", "not a mapping"),
        (None, "cannot read input"),
        ('{"kind": "AdmissionReview", "request": [1]}', "AdmissionReview has no request.object mapping"),
        ('{"kind": "AdmissionReview", "request": {"object": "pod"}}', "AdmissionReview has no request.object mapping"),
        ("kind: List\nitems: 5\n", "a List's items is not a list"),
        ("kind: Pod\nmetadata: hello\nspec: {containers: [{name: a, image: ubuntu}]}\n", "metadata is not a mapping"),
    ],
)
def test_mutate_bad_input_exits_non_zero(tmp_path, content, message):
    path = tmp_path / "in.yaml"
    if content is not None:
        path.write_text(content)
    r = run_cli("mutate", "--config", str(CONFIG), str(path))
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr


SCOPED = "rules:\n  - {registry: ghcr.io, secrets: [ghcr-team-b], namespaces: ['team-b-*']}\n"
GHCR_POD = "kind: Pod\nmetadata: {name: p%s}\nspec: {containers: [{name: a, image: ghcr.io/x/y}]}\n"


@pytest.mark.parametrize(
    ("document", "args", "added"),
    [
        pytest.param(GHCR_POD % "", (), "-", id="no-namespace-no-scoped-rule"),
        pytest.param(GHCR_POD % "", ("-n", "team-b-development"), "ghcr-team-b", id="flag"),
        pytest.param(GHCR_POD % ", namespace: team-b-production", (), "ghcr-team-b", id="metadata"),
        pytest.param(GHCR_POD % ", namespace: flytesnacks-development", (), "-", id="other-namespace"),
        pytest.param(
            "kind: Pod\nmetadata:\nspec: {containers: [{name: a, image: ghcr.io/x/y}]}\n",
            ("-n", "team-b-x"),
            "ghcr-team-b",
            id="null-metadata",
        ),
        pytest.param(
            '{"kind": "AdmissionReview", "request": {"namespace": "team-b-x", "object": '
            '{"metadata": {"labels": {"execution-id": "e", "node-id": "n"}}, '
            '"spec": {"containers": [{"name": "a", "image": "ghcr.io/x/y"}]}}}}',
            (),
            "ghcr-team-b",
            id="review-namespace",
        ),
    ],
)
def test_mutate_applies_namespace_scoped_rules_in_the_pods_namespace(tmp_path, document, args, added):
    config = tmp_path / "rules.yaml"
    config.write_text(SCOPED + "podSelector: {}\n" if "AdmissionReview" not in document else SCOPED)
    path = tmp_path / "in.yaml"
    path.write_text(document)
    r = run_cli("mutate", "--config", str(config), str(path), *args)
    assert r.returncode == 0, r.stderr
    assert f"added: {added}" in r.stderr
