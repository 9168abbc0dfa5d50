"""Certificates against the real apiserver: bootstrap, concurrency, repair and rotation under load."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e import SCOPE_LABEL, pod_manifest, pull_secret_names, registered, wait_for_injection, wait_until
from tests.webhook_process import REPO, WebhookProcess, free_port
from webhook.certplan import CertOptions
from webhook.certs import generate_ca, generate_serving_cert, split_pem_bundle, verify_serving_cert

pytestmark = pytest.mark.e2e

RULES = {"rules": [{"registry": "docker.io", "secrets": ["dockerhub"]}]}
PLACEHOLDER_CA = generate_ca("placeholder, replaced by init-certs").cert_pem


@pytest.fixture
def setup(control_plane, kube_api, core_v1, namespace, tmp_path):
    """A webhook namespace, a registration with a placeholder caBundle, and an init-certs runner."""
    system_ns = namespace(prefix="pullsecrets-system")
    port = free_port()
    url = f"https://127.0.0.1:{port}/mutate"
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump(RULES))
    name = f"pullsecrets-{uuid.uuid4().hex[:8]}"

    class Setup:
        pass

    s = Setup()
    s.ns, s.port, s.url, s.config, s.mwc, s.secret = system_ns, port, url, config, name, "pullsecrets-tls"
    s.cert_args = [
        "--namespace", system_ns, "--service", "pullsecrets", "--secret", s.secret, "--webhook-config", name,
        "--extra-ip", "127.0.0.1", "--kubeconfig", str(control_plane.kubeconfig_path),
    ]  # fmt: skip

    def init_certs(*extra, cert_dir=None):
        args = [*s.cert_args, *extra]
        if cert_dir is not None:
            args += ["--cert-dir", str(cert_dir)]
        return subprocess.Popen(
            [sys.executable, "-m", "webhook", "init-certs", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run_init_certs(*extra, cert_dir=None):
        proc = init_certs(*extra, cert_dir=cert_dir)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        return out

    def read_secret():
        return core_v1.read_namespaced_secret(s.secret, system_ns)

    def published_bundle():
        mwc = kube_api.sanitize_for_serialization(
            __import__("kubernetes")
            .client.AdmissionregistrationV1Api(kube_api)
            .read_mutating_webhook_configuration(name)
        )
        return base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"])

    s.init_certs, s.run_init_certs, s.read_secret, s.published_bundle = (
        init_certs,
        run_init_certs,
        read_secret,
        published_bundle,
    )
    with registered(kube_api, url, PLACEHOLDER_CA, name=name, failure_policy="Fail") as scope:
        s.scope = scope
        s.flyte_ns = namespace({SCOPE_LABEL: scope})
        yield s


def secret_bytes(secret, key):
    return base64.b64decode(secret.data[key])


def test_init_certs_creates_the_secret_publishes_the_ca_and_the_apiserver_trusts_it(setup, core_v1, tmp_path):
    out = setup.run_init_certs(cert_dir=tmp_path / "certs")
    assert "created a new CA and serving certificate" in out
    secret = setup.read_secret()
    assert secret.type == "kubernetes.io/tls"
    ca = secret_bytes(secret, "ca.crt")
    assert setup.published_bundle() == ca
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca
    assert (tmp_path / "certs" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in out.encode()
    with WebhookProcess(setup.config, tmp_path / "certs", port=setup.port):
        wait_for_injection(core_v1, setup.flyte_ns, "ubuntu", "dockerhub")
        stored = core_v1.create_namespaced_pod(setup.flyte_ns, pod_manifest("ubuntu"))
        assert pull_secret_names(stored) == ["dockerhub"]

    # a second run reuses everything
    again = setup.run_init_certs(cert_dir=tmp_path / "certs")
    assert '"changed":false' in again
    assert secret_bytes(setup.read_secret(), "tls.crt") == secret_bytes(secret, "tls.crt")


def test_init_certs_sets_every_entrys_ca_bundle_and_nothing_else_and_the_configuration_owns_the_secret(
    setup, admission_v1, kube_api, core_v1
):
    def read():
        return kube_api.sanitize_for_serialization(admission_v1.read_mutating_webhook_configuration(setup.mwc))

    before = read()
    second = {**before["webhooks"][0], "name": "second." + before["webhooks"][0]["name"], "timeoutSeconds": 7}
    second["clientConfig"] = {k: v for k, v in second["clientConfig"].items() if k != "caBundle"}
    patch = [
        {"op": "add", "path": "/webhooks/-", "value": second},
        {"op": "add", "path": "/metadata/labels", "value": {"owned-by": "helm"}},
    ]
    admission_v1.patch_mutating_webhook_configuration(setup.mwc, patch, _content_type="application/json-patch+json")
    before = read()
    setup.run_init_certs()
    secret = setup.read_secret()
    assert [r.name for r in secret.metadata.owner_references] == [setup.mwc]  # set on creation
    # Now make it look like a Secret from an earlier version (no owner), with an annotation another
    # tool set: the next run adds the owner and keeps the annotation.
    secret.metadata.owner_references = None
    secret.metadata.annotations = {**(secret.metadata.annotations or {}), "backup.example.com/skip": "true"}
    core_v1.replace_namespaced_secret(setup.secret, setup.ns, secret)

    out = setup.run_init_certs()
    assert f"owner reference to {setup.mwc} added" in out
    after = read()
    ca = base64.b64encode(secret_bytes(setup.read_secret(), "ca.crt")).decode()
    assert [w["clientConfig"]["caBundle"] for w in after["webhooks"]] == [ca, ca]

    def without_bundles_and_bookkeeping(mwc):
        mwc = yaml.safe_load(yaml.safe_dump(mwc))
        for key in ("resourceVersion", "managedFields", "generation"):
            mwc["metadata"].pop(key, None)
        for hook in mwc["webhooks"]:
            hook["clientConfig"].pop("caBundle", None)
        return mwc

    assert without_bundles_and_bookkeeping(after) == without_bundles_and_bookkeeping(before)
    owned = setup.read_secret()
    assert [(r.kind, r.name, r.uid) for r in owned.metadata.owner_references] == [
        ("MutatingWebhookConfiguration", setup.mwc, after["metadata"]["uid"])
    ]
    assert not owned.metadata.owner_references[0].block_owner_deletion
    assert owned.metadata.annotations["backup.example.com/skip"] == "true"


def test_concurrent_init_certs_end_with_one_ca_and_the_same_secret(setup, tmp_path):
    procs = [setup.init_certs(cert_dir=tmp_path / f"replica-{i}") for i in range(4)]
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    created = sum("created a new CA" in out for out in outputs)
    assert created == 1, outputs
    secret = setup.read_secret()
    for i in range(4):
        d = tmp_path / f"replica-{i}"
        assert (d / "ca.crt").read_bytes() == secret_bytes(secret, "ca.crt")
        assert (d / "tls.crt").read_bytes() == secret_bytes(secret, "tls.crt")
    assert setup.published_bundle() == secret_bytes(secret, "ca.crt")


@pytest.mark.parametrize(
    ("breakage", "log"),
    [
        ("expired", "serving certificate re-issued (certificate expired at"),
        ("foreign-leaf", "certificate is not signed by the given CA"),
        ("no-key", "lacks tls.key"),
    ],
)
def test_expired_or_mismatched_material_is_replaced_with_a_clear_log_line(setup, core_v1, breakage, log):
    setup.run_init_certs()
    secret = setup.read_secret()
    opts = CertOptions(
        namespace=setup.ns, service="pullsecrets", secret=setup.secret, extra_ip_addresses=("127.0.0.1",)
    )
    if breakage == "expired":
        signer = (secret_bytes(secret, "ca-signer.crt"), secret_bytes(secret, "ca-signer.key"))
        from webhook.certs import KeyPair

        old = generate_serving_cert(
            KeyPair(*signer),
            dns_names=opts.dns_names,
            ip_addresses=["127.0.0.1"],
            validity=timedelta(days=1),
            now=datetime.now(UTC) - timedelta(days=10),
        )
        secret.data["tls.crt"] = base64.b64encode(old.cert_pem).decode()
        secret.data["tls.key"] = base64.b64encode(old.key_pem).decode()
    elif breakage == "foreign-leaf":
        foreign = generate_serving_cert(generate_ca(), dns_names=opts.dns_names, ip_addresses=["127.0.0.1"])
        secret.data["tls.crt"] = base64.b64encode(foreign.cert_pem).decode()
        secret.data["tls.key"] = base64.b64encode(foreign.key_pem).decode()
    else:
        del secret.data["tls.key"]
        secret.type = "Opaque"
        core_v1.delete_namespaced_secret(setup.secret, setup.ns)
        secret.metadata.resource_version = None
        core_v1.create_namespaced_secret(setup.ns, secret)
        secret = None
    if secret is not None:
        core_v1.replace_namespaced_secret(setup.secret, setup.ns, secret)
    out = setup.run_init_certs()
    assert log in out
    fixed = setup.read_secret()
    ca = secret_bytes(fixed, "ca.crt")
    problems = verify_serving_cert(
        ca,
        secret_bytes(fixed, "tls.crt"),
        secret_bytes(fixed, "tls.key"),
        dns_names=opts.dns_names,
        ip_addresses=["127.0.0.1"],
    )
    assert problems == []
    assert setup.published_bundle() == ca


class PodStream:
    """Creates Flyte pods through the apiserver until stopped; counts what happened to each."""

    def __init__(self, core_v1, namespace):
        self.core, self.ns = core_v1, namespace
        self.created = self.injected = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                pod = self.core.create_namespaced_pod(self.ns, pod_manifest("ubuntu"))
            except ApiException as exc:
                self.failures.append(f"{exc.status}: {(exc.body or '')[:300]}")
                continue
            self.created += 1
            self.injected += pull_secret_names(pod) == ["dockerhub"]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def test_rotation_under_a_stream_of_pod_creations_loses_no_admission(setup, core_v1, tmp_path, control_plane):
    """failurePolicy is Fail here, so any moment the apiserver cannot verify us would fail a create."""
    cert_dir = tmp_path / "certs"
    setup.run_init_certs(cert_dir=cert_dir)
    serve_args = ("--manage-certs", "--cert-check-interval", "0.5", "--rotation-overlap", "2", *setup.cert_args)
    with WebhookProcess(setup.config, cert_dir, port=setup.port, extra_args=serve_args) as webhook:
        wait_for_injection(core_v1, setup.flyte_ns, "ubuntu", "dockerhub")
        original = setup.read_secret()
        with PodStream(core_v1, setup.flyte_ns) as stream:
            time.sleep(1)
            # (a) the serving certificate is renewed (same CA) and the files change under the listener
            setup.run_init_certs("--renew-cert")
            wait_until(
                lambda: (cert_dir / "tls.crt").read_bytes() != secret_bytes(original, "tls.crt"),
                10,
                what="renewed certificate on disk",
            )
            time.sleep(2)
            during_leaf = stream.created
            # (b) the CA rotates with overlap, completed by the serving process itself
            setup.run_init_certs("--rotate-ca", "--rotation-overlap", "2")

            def rotated() -> bool:
                s = setup.read_secret()
                bundle = split_pem_bundle(secret_bytes(s, "ca.crt"))
                phase = (s.metadata.annotations or {}).get("pullsecrets-webhook/ca-rotation")
                return (
                    phase is None and len(bundle) == 1 and bundle != split_pem_bundle(secret_bytes(original, "ca.crt"))
                )

            wait_until(rotated, 60, interval=0.5, what="CA rotation to complete")
            wait_until(lambda: setup.published_bundle() == secret_bytes(setup.read_secret(), "ca.crt"), 10)
            time.sleep(2)
        assert stream.failures == [], webhook.log()
        print(f"pod creations during rotation: {stream.created} ({during_leaf} by the end of the leaf renewal)")
        assert stream.created > 20
        assert stream.injected == stream.created
        new_ca = secret_bytes(setup.read_secret(), "ca.crt")
        assert (cert_dir / "ca.crt").read_bytes() == new_ca
        # the served certificate now chains to the new CA only
        stored = core_v1.create_namespaced_pod(setup.flyte_ns, pod_manifest("ubuntu"))
        assert pull_secret_names(stored) == ["dockerhub"]
