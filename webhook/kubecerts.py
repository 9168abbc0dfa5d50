"""The certificate Secret and the webhook's caBundle, in the cluster.

The thin Kubernetes layer around ``certplan``: read the Secret and the
MutatingWebhookConfiguration, let the pure planner decide, write back with
optimistic concurrency. Several replicas may run this at once: creation is
create-if-absent and every update carries the resourceVersion it read, so on a
conflict the loser re-reads the winner's Secret (which it then finds valid)
and all replicas end with the same chain.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webhook import FIELD_MANAGER, logs
from webhook.certplan import (
    ROTATION_ANNOTATIONS,
    CertOptions,
    InvalidMaterial,
    Material,
    material_from_secret,
    plan,
)
from webhook.certs import write_cert_dir

_MAX_ATTEMPTS = 6


def api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster credentials when running in a pod, else a kubeconfig (flag, $KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


@dataclass
class EnsureResult:
    material: Material
    reasons: list[str]
    secret_written: bool
    webhooks_patched: int
    files_written: bool


def _read_secret(core: Any, opts: CertOptions) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.api_client.sanitize_for_serialization(core.read_namespaced_secret(opts.secret, opts.namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _published_bundle(mwc: dict[str, Any] | None) -> bytes | None:
    if not mwc:
        return None
    bundles = {(w.get("clientConfig") or {}).get("caBundle") for w in mwc.get("webhooks") or []}
    if len(bundles) != 1 or None in bundles:
        return None  # not every entry publishes the same bundle yet
    return base64.b64decode(bundles.pop())


def _read_webhook_config(admission: Any, opts: CertOptions) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    if not opts.webhook_config:
        return None
    try:
        obj = admission.read_mutating_webhook_configuration(opts.webhook_config)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return admission.api_client.sanitize_for_serialization(obj)


def _owner_reference(mwc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The webhook configuration owns the Secret: removing it (helm uninstall) garbage-collects the CA key.

    No ``blockOwnerDeletion``: that would need ``update`` on the configuration's finalizers.
    """
    if not mwc:
        return None
    meta = mwc.get("metadata") or {}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


def _lacks_owner(secret: dict[str, Any], owner: dict[str, Any] | None) -> bool:
    if owner is None:
        return False
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    return not any(ref.get("uid") == owner["uid"] for ref in refs)


def _secret_body(
    opts: CertOptions,
    material: Material,
    existing: dict[str, Any] | None,
    owner: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Secret to write; what others put on an existing one (labels, annotations, owners) is kept."""
    data, ours = material.to_secret()
    old = (existing or {}).get("metadata") or {}
    # Our rotation annotations are rewritten whole (a finished rotation drops them); the rest stays.
    annotations = {k: v for k, v in (old.get("annotations") or {}).items() if k not in ROTATION_ANNOTATIONS}
    metadata: dict[str, Any] = {
        "name": opts.secret,
        "namespace": opts.namespace,
        "labels": {"app.kubernetes.io/managed-by": "pullsecrets-webhook", **(old.get("labels") or {})},
        "annotations": {**annotations, **ours},
    }
    refs = list(old.get("ownerReferences") or [])
    if owner is not None:
        # A configuration recreated under the same name has a new uid: the stale reference goes.
        refs = [r for r in refs if r.get("kind") != owner["kind"] or r.get("name") != owner["name"]] + [owner]
    if refs:
        metadata["ownerReferences"] = refs
    if old.get("resourceVersion"):
        metadata["resourceVersion"] = old["resourceVersion"]
    secret_type = (existing or {}).get("type")
    # A Secret's type is immutable: an existing one (say, Opaque made by hand) keeps its type.
    kind = secret_type or "kubernetes.io/tls"
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": metadata, "data": data}


def ensure_certificates(
    api: Any, opts: CertOptions, cert_dir: Path | None = None, now: datetime | None = None
) -> EnsureResult:
    """Bring the Secret, the caBundle and (optionally) the local cert files in line; idempotent."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    written = False
    for _attempt in range(_MAX_ATTEMPTS):
        secret = _read_secret(core, opts)
        mwc = _read_webhook_config(admission, opts)
        owner = _owner_reference(mwc)
        current: Material | None = None
        invalid: str | None = None
        if secret is not None:
            meta = secret.get("metadata") or {}
            try:
                current = material_from_secret(secret.get("data"), meta.get("annotations"))
            except InvalidMaterial as exc:
                invalid = f"Secret {opts.namespace}/{opts.secret} unusable ({exc})"
        material, reasons = plan(
            current, opts, now=now, published_bundle=_published_bundle(mwc), invalid_reason=invalid
        )
        if not reasons and secret is not None and _lacks_owner(secret, owner):
            reasons = [f"owner reference to {opts.webhook_config} added"]  # Secrets made before owners were set
        if not reasons:
            break
        body = _secret_body(opts, material, secret, owner)
        try:
            if secret is None:
                core.create_namespaced_secret(opts.namespace, body, field_manager=FIELD_MANAGER)
            else:
                core.replace_namespaced_secret(opts.secret, opts.namespace, body, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409:  # another replica wrote first: read its result and judge again
                continue
            raise
        written = True
        for reason in reasons:
            logs.info("certificate secret updated", secret=f"{opts.namespace}/{opts.secret}", reason=reason)
        break
    else:
        raise RuntimeError(f"could not settle Secret {opts.namespace}/{opts.secret} after {_MAX_ATTEMPTS} conflicts")

    patched = patch_ca_bundle(admission, opts, material.bundle_pem)
    files = write_files(cert_dir, material) if cert_dir is not None else False
    return EnsureResult(material, reasons, written, patched, files)


def patch_ca_bundle(admission: Any, opts: CertOptions, bundle_pem: bytes) -> int:
    """Set caBundle on every webhook of the configuration, touching no other field."""
    from kubernetes.client.exceptions import ApiException

    for _attempt in range(_MAX_ATTEMPTS):
        mwc = _read_webhook_config(admission, opts)
        if mwc is None:
            if opts.webhook_config:
                logs.warning(
                    "webhook configuration not found; caBundle not published yet", webhook_config=opts.webhook_config
                )
            return 0
        encoded = base64.b64encode(bundle_pem).decode("ascii")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": mwc["metadata"]["resourceVersion"]}
        ]
        for i, hook in enumerate(mwc.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") != encoded:
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded})
        if len(ops) == 1:
            return 0
        try:
            admission.patch_mutating_webhook_configuration(
                opts.webhook_config, ops, field_manager=FIELD_MANAGER, _content_type="application/json-patch+json"
            )
        except ApiException as exc:
            if exc.status in (409, 422):  # changed under us (the test op failed): re-read and retry
                continue
            raise
        count = (len(ops) - 1) // 2
        logs.info(
            "published caBundle",
            webhook_config=opts.webhook_config,
            webhooks=count,
            cas=len(bundle_pem.split(b"-----BEGIN CERTIFICATE-----")) - 1,
        )
        return count
    raise RuntimeError(f"could not patch {opts.webhook_config} after {_MAX_ATTEMPTS} conflicts")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def write_files(cert_dir: Path, material: Material) -> bool:
    """Write ca.crt/tls.crt/tls.key when they differ; the server's reloader picks them up."""
    wanted = {
        "ca.crt": material.bundle_pem,
        "tls.crt": material.leaf.cert_pem,
        "tls.key": material.leaf.key_pem,
    }
    if all(_digest(cert_dir / name) == hashlib.sha256(data).hexdigest() for name, data in wanted.items()):
        return False
    write_cert_dir(cert_dir, material.bundle_pem, material.leaf)
    return True


class CertManagerLoop:
    """Runs ensure_certificates periodically inside ``serve --manage-certs``.

    Each replica runs its own loop; the optimistic concurrency of
    ensure_certificates makes them converge on one chain. Failures are logged
    and retried on the next tick: the files already on disk keep serving.
    """

    def __init__(self, opts: CertOptions, cert_dir: Path, kubeconfig: str | None, interval: float) -> None:
        self.opts = opts
        self.cert_dir = cert_dir
        self.interval = interval
        self._api = api_client(kubeconfig)

    def run_once(self) -> EnsureResult:
        return ensure_certificates(self._api, self.opts, self.cert_dir)

    async def watch(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as exc:
                logs.error("certificate check failed; will retry", reason=f"{type(exc).__name__}: {exc}")
