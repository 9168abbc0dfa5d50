"""The certificate planner: what the Secret should hold next, as time passes."""

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from webhook.certplan import (
    NEXT_PUBLISHED,
    SWITCHED,
    CertOptions,
    InvalidMaterial,
    material_from_secret,
    plan,
)
from webhook.certs import KeyPair, generate_ca, generate_serving_cert, not_after, split_pem_bundle, verify_serving_cert

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPTS = CertOptions(
    namespace="flyte",
    service="pullsecrets",
    secret="pullsecrets-tls",
    extra_ip_addresses=("127.0.0.1",),
    ca_validity=timedelta(days=1000),
    cert_validity=timedelta(days=90),
    renew_before=timedelta(days=30),
    ca_renew_before=timedelta(days=100),
    rotation_overlap=timedelta(minutes=10),
)


def roundtrip(material):
    data, annotations = material.to_secret()
    return material_from_secret(data, annotations)


def valid(material, now, opts=OPTS):
    return (
        verify_serving_cert(
            material.bundle_pem,
            material.leaf.cert_pem,
            material.leaf.key_pem,
            dns_names=opts.dns_names,
            ip_addresses=("127.0.0.1",),
            now=now,
        )
        == []
    )


@pytest.fixture
def initial():
    material, reasons = plan(None, OPTS, now=T0)
    assert reasons == ["no certificate Secret yet: created a new CA and serving certificate"]
    return roundtrip(material)


def test_fresh_material_is_a_valid_chain_for_the_service(initial):
    assert valid(initial, T0)
    assert OPTS.dns_names == [
        "pullsecrets",
        "pullsecrets.flyte",
        "pullsecrets.flyte.svc",
        "pullsecrets.flyte.svc.cluster.local",
    ]
    assert not_after(initial.leaf.cert_pem) - T0 >= timedelta(days=89)
    assert len(initial.bundle) == 1


@pytest.mark.parametrize("days", [0, 1, 59])
def test_valid_material_is_kept_as_is(initial, days):
    material, reasons = plan(initial, OPTS, now=T0 + timedelta(days=days))
    assert reasons == []
    assert material == initial


@pytest.mark.parametrize("days", [61, 89, 95])
def test_serving_certificate_is_renewed_near_or_past_expiry_with_the_same_ca(initial, days):
    now = T0 + timedelta(days=days)
    material, reasons = plan(initial, OPTS, now=now)
    assert reasons
    assert "renewed" in reasons[0] or "re-issued" in reasons[0]
    assert material.signer == initial.signer
    assert material.bundle == initial.bundle
    assert material.leaf != initial.leaf
    assert valid(material, now)


def test_mismatched_key_reissues_the_leaf(initial):
    other = generate_serving_cert(generate_ca(), dns_names=["x"])
    broken = replace(initial, leaf=KeyPair(initial.leaf.cert_pem, other.key_pem))
    material, reasons = plan(broken, OPTS, now=T0)
    assert "private key does not match the certificate" in reasons[0]
    assert valid(material, T0)


def test_leaf_from_a_foreign_ca_is_reissued(initial):
    foreign = generate_serving_cert(generate_ca(), dns_names=OPTS.dns_names, ip_addresses=["127.0.0.1"])
    broken = replace(initial, leaf=foreign)
    material, reasons = plan(broken, OPTS, now=T0)
    assert "not signed by the given CA" in reasons[0]
    assert valid(material, T0)


def test_missing_san_reissues_the_leaf(initial):
    opts = replace(OPTS, extra_dns_names=("webhook.example.com",))
    material, reasons = plan(initial, opts, now=T0)
    assert "missing subjectAltName" in reasons[0]
    assert material.leaf != initial.leaf
    assert material.signer == initial.signer, "the CA is kept"
    assert valid(material, T0, opts), "the new leaf carries the added name"


def test_expired_ca_replaces_everything(initial):
    now = T0 + timedelta(days=1001)
    material, reasons = plan(initial, OPTS, now=now)
    assert "CA expired" in reasons[0]
    assert material.signer != initial.signer
    assert valid(material, now)


def test_ca_rotation_walks_through_overlapping_phases(initial):
    """At no step is the served leaf's issuer missing from the published bundle."""
    opts = replace(OPTS, rotate_ca=True)
    old_ca = split_pem_bundle(initial.signer.cert_pem)[0]

    # 1. the successor CA is published beside the old one; the leaf is unchanged
    m1, reasons = plan(initial, opts, now=T0)
    assert "successor CA published" in reasons[0]
    m1 = roundtrip(m1)
    assert m1.phase == NEXT_PUBLISHED
    assert m1.leaf == initial.leaf
    assert m1.bundle[0] == old_ca
    assert len(m1.bundle) == 2
    new_ca = m1.bundle[1]

    # the switch waits for the overlap ...
    _, reasons = plan(m1, OPTS, now=T0 + timedelta(minutes=5), published_bundle=m1.bundle_pem)
    assert reasons == []
    # ... and for the apiserver's caBundle to hold the new CA
    _, reasons = plan(m1, OPTS, now=T0 + timedelta(minutes=11), published_bundle=initial.bundle_pem)
    assert reasons == []

    # 2. the leaf is re-issued by the new CA, both CAs are still trusted
    now = T0 + timedelta(minutes=11)
    m2, reasons = plan(m1, OPTS, now=now, published_bundle=m1.bundle_pem)
    assert "now signed by the new CA" in reasons[0]
    m2 = roundtrip(m2)
    assert m2.phase == SWITCHED
    assert m2.bundle == (old_ca, new_ca)
    assert split_pem_bundle(m2.signer.cert_pem)[0] == new_ca
    assert valid(m2, now)
    assert verify_serving_cert(new_ca, m2.leaf.cert_pem, m2.leaf.key_pem, now=now) == []

    # 3. after another overlap the old CA leaves the bundle
    _m, reasons = plan(m2, OPTS, now=now + timedelta(minutes=5))
    assert reasons == []
    m3, reasons = plan(m2, OPTS, now=now + timedelta(minutes=11))
    assert reasons == ["CA rotation: old CA removed from the bundle"]
    m3 = roundtrip(m3)
    assert m3.bundle == (new_ca,)
    assert m3.phase is None
    assert valid(m3, now + timedelta(minutes=11))


@pytest.mark.parametrize("phase", [NEXT_PUBLISHED, SWITCHED])
def test_a_rotation_phase_without_a_start_time_restarts_its_overlap_instead_of_stalling(initial, phase):
    started, _ = plan(initial, replace(OPTS, rotate_ca=True), now=T0)
    data, annotations = started.to_secret()
    annotations["pullsecrets-webhook/ca-rotation"] = phase
    annotations["pullsecrets-webhook/ca-rotation-since"] = "not a time"
    stalled = material_from_secret(data, annotations)
    later = T0 + timedelta(days=1)
    m, reasons = plan(stalled, OPTS, now=later, published_bundle=stalled.bundle_pem)
    assert reasons == [f"CA rotation phase {phase!r} had no readable start time: its overlap starts now"]
    assert roundtrip(m).since == later
    assert m.phase == phase
    # ... and the rotation moves on once that overlap has passed
    _, reasons = plan(roundtrip(m), OPTS, now=later + timedelta(minutes=11), published_bundle=m.bundle_pem)
    assert reasons
    assert "CA rotation" in reasons[0]


def test_renew_cert_reissues_the_leaf_with_the_same_ca(initial):
    m, reasons = plan(initial, replace(OPTS, renew_cert=True), now=T0 + timedelta(days=1))
    assert reasons == ["serving certificate re-issued on request"]
    assert m.signer == initial.signer
    assert m.bundle == initial.bundle
    assert m.leaf != initial.leaf
    assert valid(m, T0 + timedelta(days=1))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"renew_before": timedelta(days=90)}, "serving certificate's renewal window"),
        ({"cert_validity": timedelta(days=7)}, "serving certificate's renewal window"),
        ({"ca_validity": timedelta(days=100)}, "CA's renewal window"),
        ({"rotation_overlap": timedelta(0)}, "overlap must be positive"),
    ],
)
def test_options_that_would_renew_on_every_check_are_refused(change, problem):
    assert OPTS.problems() == []
    problems = replace(OPTS, **change).problems()
    assert len(problems) == 1
    assert problem in problems[0]


def test_ca_rotation_starts_by_itself_when_the_ca_nears_expiry(initial):
    material, reasons = plan(initial, OPTS, now=T0 + timedelta(days=901))
    assert any("successor CA published" in r for r in reasons)
    assert material.phase == NEXT_PUBLISHED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "lacks ca.crt"),
        ({"tls.crt": "!!!"}, "not valid base64"),
        ({"ca.crt": "Zm9v", "ca-signer.crt": "Zm9v", "ca-signer.key": "Zm9v", "tls.crt": "Zm9v"}, "lacks tls.key"),
    ],
)
def test_unusable_secret_data_is_reported(data, message):
    with pytest.raises(InvalidMaterial, match=message):
        material_from_secret(data, {})


def _ed25519_key_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return base64.b64encode(pem).decode()


@pytest.mark.parametrize(
    "signer_key",
    [lambda: "Zm9v", _ed25519_key_pem],
    ids=["garbage", "ed25519 (parses, but cannot sign here)"],
)
def test_garbage_signer_is_replaced_with_a_reason(initial, signer_key):
    data, annotations = initial.to_secret()
    data["ca-signer.key"] = signer_key()
    material, reasons = plan(material_from_secret(data, annotations), OPTS, now=T0)
    assert "cannot be parsed" in reasons[0]
    assert material.signer != initial.signer
    assert valid(material, T0)


def test_unreadable_secret_is_replaced_and_the_reason_is_kept():
    material, reasons = plan(None, OPTS, now=T0, invalid_reason="Secret flyte/x unusable (lacks tls.key)")
    assert reasons == ["Secret flyte/x unusable (lacks tls.key): created a new CA and serving certificate"]
    assert valid(material, T0)


def test_long_service_and_namespace_names_fit_x509_limits():
    opts = CertOptions(
        namespace="flyte-pullsecrets-production-cluster",
        service="pullsecrets-flyte-pullsecrets-webhook",
        secret="x",
    )
    material, _ = plan(None, opts, now=T0)
    assert (
        verify_serving_cert(
            material.bundle_pem, material.leaf.cert_pem, material.leaf.key_pem, dns_names=opts.dns_names, now=T0
        )
        == []
    )
    rotated, _ = plan(material, replace(opts, rotate_ca=True), now=T0)
    assert rotated.next_ca is not None
