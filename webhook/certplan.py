"""Decide what the webhook's certificate Secret should hold next: pure, no I/O.

The Secret (``kubernetes.io/tls``) holds:

* ``ca.crt``: the CA bundle to trust, published as the webhook's ``caBundle``;
* ``ca-signer.crt`` / ``ca-signer.key``: the CA that signs the serving certificate;
* ``ca-next.crt`` / ``ca-next.key``: a successor CA while a CA rotation is under way;
* ``tls.crt`` / ``tls.key``: the serving certificate.

A CA rotation never leaves the apiserver unable to verify us. It moves through
phases recorded in an annotation, each lasting at least ``rotation_overlap``:

1. ``next-published``: a new CA is added to the bundle beside the old one; the
   serving certificate is still signed by the old CA.
2. ``switched``: once the published caBundle holds the new CA, the serving
   certificate is re-issued by it; the bundle keeps both CAs while replicas
   pick up the new certificate.
3. done: the old CA leaves the bundle.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from webhook.certs import (
    CertificateError,
    KeyPair,
    KeyType,
    ca_problem,
    generate_ca,
    generate_serving_cert,
    join_pem_bundle,
    needs_renewal,
    service_dns_names,
    split_pem_bundle,
    verify_serving_cert,
)

PHASE_ANNOTATION = "pullsecrets-webhook/ca-rotation"
SINCE_ANNOTATION = "pullsecrets-webhook/ca-rotation-since"
ROTATION_ANNOTATIONS = (PHASE_ANNOTATION, SINCE_ANNOTATION)
NEXT_PUBLISHED = "next-published"
SWITCHED = "switched"


@dataclass(frozen=True)
class CertOptions:
    namespace: str
    service: str
    secret: str
    webhook_config: str | None = None
    cluster_domain: str = "cluster.local"
    extra_dns_names: tuple[str, ...] = ()
    extra_ip_addresses: tuple[str, ...] = ()
    key_type: KeyType = "ecdsa"
    ca_validity: timedelta = timedelta(days=3650)
    cert_validity: timedelta = timedelta(days=90)
    renew_before: timedelta = timedelta(days=30)
    ca_renew_before: timedelta = timedelta(days=365)
    rotation_overlap: timedelta = timedelta(minutes=10)
    rotate_ca: bool = False
    renew_cert: bool = False

    def problems(self) -> list[str]:
        """Settings that could never settle: a window as long as the lifetime renews on every check."""
        found = []
        if self.renew_before >= self.cert_validity:
            found.append("the serving certificate's renewal window must be shorter than its validity")
        if self.ca_renew_before >= self.ca_validity:
            found.append("the CA's renewal window must be shorter than its validity")
        if self.rotation_overlap <= timedelta(0):
            found.append("the CA rotation overlap must be positive")
        return found

    @property
    def dns_names(self) -> list[str]:
        names = service_dns_names(self.service, self.namespace, self.cluster_domain)
        return names + [n for n in self.extra_dns_names if n not in names]


@dataclass(frozen=True)
class Material:
    """What the Secret holds, decoded."""

    signer: KeyPair
    leaf: KeyPair
    bundle: tuple[bytes, ...]  # PEM certificates, in publication order
    next_ca: KeyPair | None = None
    phase: str | None = None
    since: datetime | None = field(default=None, compare=False)

    @property
    def bundle_pem(self) -> bytes:
        return join_pem_bundle(self.bundle)

    def to_secret(self) -> tuple[dict[str, str], dict[str, str]]:
        """Secret ``data`` (base64) and the annotations that carry the rotation state."""
        raw = {
            "ca.crt": self.bundle_pem,
            "ca-signer.crt": self.signer.cert_pem,
            "ca-signer.key": self.signer.key_pem,
            "tls.crt": self.leaf.cert_pem,
            "tls.key": self.leaf.key_pem,
        }
        if self.next_ca is not None:
            raw["ca-next.crt"] = self.next_ca.cert_pem
            raw["ca-next.key"] = self.next_ca.key_pem
        data = {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}
        annotations: dict[str, str] = {}
        if self.phase:
            annotations[PHASE_ANNOTATION] = self.phase
            annotations[SINCE_ANNOTATION] = (self.since or datetime.now(UTC)).isoformat()
        return data, annotations


class InvalidMaterial(ValueError):
    """The Secret exists but cannot be used; the message says why (never echoing key bytes)."""


def material_from_secret(data: dict[str, str] | None, annotations: dict[str, str] | None) -> Material:
    data = data or {}
    annotations = annotations or {}
    try:
        raw = {k: base64.b64decode(v, validate=True) for k, v in data.items()}
    except (ValueError, TypeError):
        raise InvalidMaterial("Secret data is not valid base64") from None
    missing = [k for k in ("ca.crt", "ca-signer.crt", "ca-signer.key", "tls.crt", "tls.key") if not raw.get(k)]
    if missing:
        raise InvalidMaterial(f"Secret lacks {', '.join(missing)}")
    try:
        bundle = tuple(split_pem_bundle(raw["ca.crt"]))
    except CertificateError as exc:
        raise InvalidMaterial(f"ca.crt: {exc}") from None
    next_ca = None
    if raw.get("ca-next.crt") and raw.get("ca-next.key"):
        next_ca = KeyPair(raw["ca-next.crt"], raw["ca-next.key"])
    since = None
    if annotations.get(SINCE_ANNOTATION):
        try:
            since = datetime.fromisoformat(annotations[SINCE_ANNOTATION])
        except ValueError:
            since = None
    return Material(
        signer=KeyPair(raw["ca-signer.crt"], raw["ca-signer.key"]),
        leaf=KeyPair(raw["tls.crt"], raw["tls.key"]),
        bundle=bundle,
        next_ca=next_ca,
        phase=annotations.get(PHASE_ANNOTATION),
        since=since,
    )


def _new_leaf(signer: KeyPair, opts: CertOptions, now: datetime) -> KeyPair:
    return generate_serving_cert(
        signer,
        dns_names=opts.dns_names,
        ip_addresses=opts.extra_ip_addresses,
        common_name=None,  # certs picks the first SAN that fits X.509's 64-character limit
        key_type=opts.key_type,
        validity=opts.cert_validity,
        now=now,
    )


def _ca_name(opts: CertOptions) -> str:
    # X.509 caps a common name at 64 characters; release-derived names easily exceed it.
    return f"{opts.service}.{opts.namespace} webhook CA"[-64:].lstrip(".- ")


def fresh(opts: CertOptions, now: datetime) -> Material:
    signer = generate_ca(_ca_name(opts), key_type=opts.key_type, validity=opts.ca_validity, now=now)
    return Material(signer=signer, leaf=_new_leaf(signer, opts, now), bundle=(signer.cert_pem,))


def _normalised(pem: bytes) -> bytes:
    return split_pem_bundle(pem)[0]


def plan(
    current: Material | None,
    opts: CertOptions,
    *,
    now: datetime | None = None,
    published_bundle: bytes | None = None,
    invalid_reason: str | None = None,
) -> tuple[Material, list[str]]:
    """The material the Secret should hold, and why it changed (empty list: keep ``current``).

    ``published_bundle`` is the caBundle the webhook configuration holds now; the CA
    switch waits until the successor CA is in it.
    """
    now = now or datetime.now(UTC)
    if current is None:
        reason = invalid_reason or "no certificate Secret yet"
        return fresh(opts, now), [f"{reason}: created a new CA and serving certificate"]
    problem = ca_problem(current.signer, now)
    if problem is not None:
        return fresh(opts, now), [f"{problem}: replaced the CA and serving certificate"]

    reasons: list[str] = []
    m = current
    signer_pem = _normalised(m.signer.cert_pem)
    if signer_pem not in m.bundle:
        m = replace(m, bundle=(signer_pem, *m.bundle))
        reasons.append("ca.crt did not hold the signing CA: added it")

    if m.phase in (NEXT_PUBLISHED, SWITCHED) and m.since is None:
        # Without a start time the overlap could never end: start it over from now.
        m = replace(m, since=now)
        reasons.append(f"CA rotation phase {m.phase!r} had no readable start time: its overlap starts now")
    overlap_done = m.since is not None and now - m.since >= opts.rotation_overlap
    if m.phase == NEXT_PUBLISHED:
        if m.next_ca is None or ca_problem(m.next_ca, now) is not None:
            m = replace(m, next_ca=None, phase=None, since=None, bundle=(signer_pem,))
            reasons.append("the successor CA was unusable: rotation abandoned")
        elif (
            overlap_done
            and published_bundle is not None
            and _normalised(m.next_ca.cert_pem) in split_pem_bundle(published_bundle)
        ):
            new_signer = m.next_ca
            m = replace(
                m,
                signer=new_signer,
                next_ca=None,
                leaf=_new_leaf(new_signer, opts, now),
                bundle=(signer_pem, _normalised(new_signer.cert_pem)),
                phase=SWITCHED,
                since=now,
            )
            reasons.append("CA rotation: serving certificate now signed by the new CA (both CAs still trusted)")
    elif m.phase == SWITCHED:
        if overlap_done:
            m = replace(m, bundle=(signer_pem,), phase=None, since=None)
            reasons.append("CA rotation: old CA removed from the bundle")
    elif m.phase is None and (
        opts.rotate_ca or needs_renewal(m.signer.cert_pem, renew_before=opts.ca_renew_before, now=now)
    ):
        next_ca = generate_ca(_ca_name(opts), key_type=opts.key_type, validity=opts.ca_validity, now=now)
        m = replace(
            m, next_ca=next_ca, bundle=(signer_pem, _normalised(next_ca.cert_pem)), phase=NEXT_PUBLISHED, since=now
        )
        reasons.append("CA rotation: successor CA published beside the current one")
    elif m.phase not in (None, NEXT_PUBLISHED, SWITCHED):
        m = replace(m, phase=None, since=None, next_ca=None, bundle=(signer_pem,))
        reasons.append(f"unknown rotation phase {current.phase!r}: reset")

    problems = verify_serving_cert(
        m.signer.cert_pem,
        m.leaf.cert_pem,
        m.leaf.key_pem,
        dns_names=opts.dns_names,
        ip_addresses=opts.extra_ip_addresses,
        now=now,
    )
    if problems:
        m = replace(m, leaf=_new_leaf(m.signer, opts, now))
        reasons.append(f"serving certificate re-issued ({'; '.join(problems)})")
    elif opts.renew_cert:
        m = replace(m, leaf=_new_leaf(m.signer, opts, now))
        reasons.append("serving certificate re-issued on request")
    elif needs_renewal(m.leaf.cert_pem, renew_before=opts.renew_before, now=now):
        m = replace(m, leaf=_new_leaf(m.signer, opts, now))
        reasons.append("serving certificate renewed before expiry")
    return m, reasons
