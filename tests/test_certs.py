"""Tests for webhook.certs: issued material is what a Go TLS client (the kube-apiserver) will accept."""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook import certs
from webhook.certs import CertificateError, KeyPair

KEY_TYPES = ["ecdsa", "rsa"]
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
DNS = ["webhook", "webhook.flyte", "webhook.flyte.svc", "webhook.flyte.svc.cluster.local"]
IPS = ["127.0.0.1", "::1"]


@pytest.fixture(scope="module", params=KEY_TYPES)
def key_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def ca(key_type: str) -> KeyPair:
    return certs.generate_ca(key_type=key_type, now=NOW)


@pytest.fixture(scope="module")
def leaf(ca: KeyPair, key_type: str) -> KeyPair:
    return certs.generate_serving_cert(ca, dns_names=DNS, ip_addresses=IPS, key_type=key_type, now=NOW)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def _verify_signature(issuer: x509.Certificate, cert: x509.Certificate) -> None:
    """Independent of certs._issued_by: check the raw signature with the issuer's public key."""
    key = issuer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


# --- generation ---------------------------------------------------------------------------------


def test_ca_extensions_and_key(ca: KeyPair, key_type: str) -> None:
    cert = _cert(ca.cert_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "flyte-pullsecrets-webhook-ca"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert (bc.value.ca, bc.value.path_length) == (True, 0)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    _verify_signature(cert, cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    if key_type == "rsa":
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 2048
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)


def test_leaf_is_signed_by_ca(ca: KeyPair, leaf: KeyPair) -> None:
    ca_cert, cert = _cert(ca.cert_pem), _cert(leaf.cert_pem)
    assert cert.issuer == ca_cert.subject
    _verify_signature(ca_cert, cert)
    other_ca = _cert(certs.generate_ca(now=NOW).cert_pem)
    with pytest.raises(InvalidSignature):
        _verify_signature(other_ca, cert)


def test_leaf_extensions(ca: KeyPair, leaf: KeyPair, key_type: str) -> None:
    ca_cert, cert = _cert(ca.cert_pem), _cert(leaf.cert_pem)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment is (key_type == "rsa")
    assert not ku.key_cert_sign
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == DNS
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in IPS]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "webhook"
    key = serialization.load_pem_private_key(leaf.key_pem, password=None)
    expected = rsa.RSAPrivateKey if key_type == "rsa" else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected)
    assert key.public_key() == cert.public_key()


def test_serials_are_random(ca: KeyPair) -> None:
    serials = {
        _cert(certs.generate_serving_cert(ca, dns_names=["a"], now=NOW).cert_pem).serial_number for _ in range(3)
    }
    assert len(serials) == 3
    assert all(s.bit_length() > 64 for s in serials)


@pytest.mark.parametrize(
    ("kind", "validity"),
    [
        ("ca", timedelta(days=3650)),
        ("ca", timedelta(days=1)),
        ("leaf", timedelta(days=90)),
        ("leaf", timedelta(hours=1)),
    ],
)
def test_validity_as_configured(kind: str, validity: timedelta) -> None:
    ca = certs.generate_ca(now=NOW, validity=timedelta(days=3650) if kind == "leaf" else validity)
    pem = (
        ca.cert_pem
        if kind == "ca"
        else certs.generate_serving_cert(ca, dns_names=["a"], validity=validity, now=NOW).cert_pem
    )
    cert = _cert(pem)
    assert cert.not_valid_before_utc == NOW - certs.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + validity
    assert certs.not_after(pem) == NOW + validity


def test_leaf_never_outlives_its_ca() -> None:
    ca = certs.generate_ca(now=NOW, validity=timedelta(days=30))
    leaf = certs.generate_serving_cert(ca, dns_names=["a"], validity=timedelta(days=90), now=NOW)
    assert certs.not_after(leaf.cert_pem) == certs.not_after(ca.cert_pem) == NOW + timedelta(days=30)


def test_leaf_with_only_a_long_name_has_empty_subject_and_critical_san(ca: KeyPair) -> None:
    long_name = "a" * 60 + ".flyte.svc.cluster.local"
    cert = _cert(certs.generate_serving_cert(ca, dns_names=[long_name], now=NOW).cert_pem)
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),  # no SAN at all
        ({"dns_names": "localhost"}, TypeError),  # a str would be split into one-letter names
        ({"dns_names": ["a"], "validity": timedelta(0)}, ValueError),
        ({"ip_addresses": ["not-an-ip"]}, ValueError),
        ({"dns_names": ["a"], "key_type": "dsa"}, ValueError),
        ({"dns_names": ["a"], "now": datetime(2030, 1, 1)}, ValueError),  # naive datetime
    ],
)
def test_generate_serving_cert_rejects_bad_arguments(ca: KeyPair, kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        certs.generate_serving_cert(ca, **kwargs)


def test_generate_serving_cert_rejects_unusable_ca(ca: KeyPair, leaf: KeyPair) -> None:
    with pytest.raises(CertificateError, match="not a CA"):
        certs.generate_serving_cert(leaf, dns_names=["a"], now=NOW)
    other = certs.generate_ca(now=NOW)
    with pytest.raises(CertificateError, match="does not match"):
        certs.generate_serving_cert(KeyPair(ca.cert_pem, other.key_pem), dns_names=["a"], now=NOW)
    with pytest.raises(CertificateError, match="expired"):
        certs.generate_serving_cert(ca, dns_names=["a"], now=NOW + timedelta(days=3651))


def test_key_pair_repr_hides_key(leaf: KeyPair) -> None:
    assert b"PRIVATE KEY" in leaf.key_pem
    assert "PRIVATE" not in repr(leaf)
    assert "key_pem" not in repr(leaf)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("cluster.local", ["wh", "wh.ns", "wh.ns.svc", "wh.ns.svc.cluster.local"]),
        ("example.org.", ["wh", "wh.ns", "wh.ns.svc", "wh.ns.svc.example.org"]),
        ("", ["wh", "wh.ns", "wh.ns.svc"]),
    ],
)
def test_service_dns_names(domain: str, expected: list[str]) -> None:
    assert certs.service_dns_names("wh", "ns", domain) == expected


def test_service_dns_names_default_domain_and_validation() -> None:
    assert certs.service_dns_names("wh", "ns")[-1] == "wh.ns.svc.cluster.local"
    with pytest.raises(ValueError, match="non-empty"):
        certs.service_dns_names("", "ns")


# --- renewal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "renew_before", "expected"),
    [
        (NOW, timedelta(days=30), False),  # 90 days left
        (NOW + timedelta(days=59), timedelta(days=30), False),  # 31 days left
        (NOW + timedelta(days=60), timedelta(days=30), True),  # exactly at the threshold
        (NOW + timedelta(days=61), timedelta(days=30), True),
        (NOW + timedelta(days=91), timedelta(0), True),  # already expired
        (NOW + timedelta(days=89), timedelta(0), False),
        (NOW, timedelta(days=91), True),  # threshold longer than validity
    ],
)
def test_needs_renewal(leaf: KeyPair, now: datetime, renew_before: timedelta, expected: bool) -> None:
    assert certs.needs_renewal(leaf.cert_pem, renew_before=renew_before, now=now) is expected


def test_needs_renewal_defaults_to_wall_clock() -> None:
    ca = certs.generate_ca()
    leaf = certs.generate_serving_cert(ca, dns_names=["a"], validity=timedelta(days=10))
    assert not certs.needs_renewal(leaf.cert_pem, renew_before=timedelta(days=9))
    assert certs.needs_renewal(leaf.cert_pem, renew_before=timedelta(days=11))


# --- verify_serving_cert ------------------------------------------------------------------------


def test_verify_accepts_good_pair(ca: KeyPair, leaf: KeyPair) -> None:
    assert (
        certs.verify_serving_cert(ca.cert_pem, leaf.cert_pem, leaf.key_pem, dns_names=DNS, ip_addresses=IPS, now=NOW)
        == []
    )


def test_verify_accepts_issuer_anywhere_in_ca_bundle(ca: KeyPair, leaf: KeyPair) -> None:
    bundle = certs.join_pem_bundle([certs.generate_ca(now=NOW).cert_pem, ca.cert_pem])
    assert certs.verify_serving_cert(bundle, leaf.cert_pem, leaf.key_pem, now=NOW) == []


def test_verify_accepts_wildcard_and_case(ca: KeyPair) -> None:
    leaf = certs.generate_serving_cert(ca, dns_names=["*.Flyte.svc"], now=NOW)
    problems = certs.verify_serving_cert(
        ca.cert_pem, leaf.cert_pem, leaf.key_pem, dns_names=["webhook.flyte.svc", "flyte.svc"], now=NOW
    )
    assert problems == ["missing subjectAltName DNS:flyte.svc"]


def _client_auth_leaf(ca: KeyPair) -> KeyPair:
    """A leaf that is right in every way except its EKU (clientAuth only)."""
    ca_cert = _cert(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.DNSName(n) for n in DNS), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in IPS)]
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _problem_cases() -> list:
    """(name, builder) where builder(ca, leaf, key_type) -> (kwargs for verify, expected problem fragment)."""

    def wrong_ca(ca, leaf, kt):
        other = certs.generate_ca("other-ca", key_type=kt, now=NOW)
        return {"ca_cert_pem": other.cert_pem}, "not signed by the given CA"

    def forged_issuer_name(ca, leaf, kt):
        # Same subject name as the real CA, different key: a name match alone must not pass.
        return {"ca_cert_pem": certs.generate_ca(key_type=kt, now=NOW).cert_pem}, "not signed by the given CA"

    def expired(ca, leaf, kt):
        return {"now": NOW + timedelta(days=90, seconds=1)}, "certificate expired at"

    def not_yet_valid(ca, leaf, kt):
        return {"now": NOW - timedelta(minutes=6)}, "not valid until"

    def key_mismatch(ca, leaf, kt):
        other = certs.generate_serving_cert(ca, dns_names=DNS, key_type=kt, now=NOW)
        return {"key_pem": other.key_pem}, "private key does not match"

    def key_garbage(ca, leaf, kt):
        return {"key_pem": leaf.key_pem[: len(leaf.key_pem) // 2]}, "private key: not an unencrypted PEM"

    def missing_dns(ca, leaf, kt):
        return {"dns_names": [*DNS, "other.flyte.svc"]}, "missing subjectAltName DNS:other.flyte.svc"

    def missing_ip(ca, leaf, kt):
        return {"ip_addresses": ["10.0.0.1"]}, "missing subjectAltName IP:10.0.0.1"

    def no_server_auth(ca, leaf, kt):
        client_leaf = _client_auth_leaf(ca)
        return {"cert_pem": client_leaf.cert_pem, "key_pem": client_leaf.key_pem}, "lacks the serverAuth"

    def leaf_is_ca(ca, leaf, kt):
        return {
            "ca_cert_pem": ca.cert_pem,
            "cert_pem": ca.cert_pem,
            "key_pem": ca.key_pem,
        }, "is a CA certificate"

    def garbage_cert(ca, leaf, kt):
        return {"cert_pem": b"hello"}, "serving certificate: input is not PEM"

    def garbage_ca(ca, leaf, kt):
        return {"ca_cert_pem": b""}, "CA bundle: no certificate found"

    return [
        wrong_ca,
        forged_issuer_name,
        expired,
        not_yet_valid,
        key_mismatch,
        key_garbage,
        missing_dns,
        missing_ip,
        no_server_auth,
        leaf_is_ca,
        garbage_cert,
        garbage_ca,
    ]


@pytest.mark.parametrize("case", _problem_cases(), ids=lambda f: f.__name__)
def test_verify_reports_each_problem(ca: KeyPair, leaf: KeyPair, key_type: str, case) -> None:
    overrides, fragment = case(ca, leaf, key_type)
    args = {
        "ca_cert_pem": ca.cert_pem,
        "cert_pem": leaf.cert_pem,
        "key_pem": leaf.key_pem,
        "dns_names": DNS,
        "ip_addresses": IPS,
        "now": NOW,
    } | overrides
    problems = certs.verify_serving_cert(args.pop("ca_cert_pem"), args.pop("cert_pem"), args.pop("key_pem"), **args)
    assert any(fragment in p for p in problems), problems
    if case.__name__ != "leaf_is_ca":  # a CA used as leaf also lacks SANs and serverAuth
        assert len(problems) == 1, problems


def test_verify_reports_expired_issuing_ca() -> None:
    ca = certs.generate_ca(now=NOW, validity=timedelta(days=10))
    leaf = certs.generate_serving_cert(ca, dns_names=["a"], now=NOW)
    problems = certs.verify_serving_cert(ca.cert_pem, leaf.cert_pem, leaf.key_pem, now=NOW + timedelta(days=11))
    assert any("issuing CA certificate expired" in p for p in problems)


def test_verify_messages_never_quote_key(leaf: KeyPair, ca: KeyPair) -> None:
    body = leaf.key_pem.splitlines()[1].decode()
    problems = certs.verify_serving_cert(ca.cert_pem, leaf.key_pem, leaf.key_pem[:-40], now=NOW)
    assert problems
    assert not any(body[:16] in p for p in problems)


# --- files --------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_cert_dir_layout_and_modes(tmp_path: Path, ca: KeyPair, leaf: KeyPair) -> None:
    cert_dir = tmp_path / "new" / "certs"
    certs.write_cert_dir(cert_dir, ca.cert_pem, leaf)
    assert _mode(cert_dir) == 0o700
    assert (cert_dir / "ca.crt").read_bytes() == ca.cert_pem
    assert (cert_dir / "tls.crt").read_bytes() == leaf.cert_pem
    assert (cert_dir / "tls.key").read_bytes() == leaf.key_pem
    assert _mode(cert_dir / "tls.key") == 0o600
    assert _mode(cert_dir / "tls.crt") == 0o644
    assert _mode(cert_dir / "ca.crt") == 0o644
    assert sorted(p.name for p in cert_dir.iterdir()) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]  # no temp files left


def test_write_cert_dir_replaces_atomically(tmp_path: Path, ca: KeyPair, leaf: KeyPair) -> None:
    certs.write_cert_dir(tmp_path, ca.cert_pem, leaf)
    inode_before = (tmp_path / "tls.key").stat().st_ino
    with (tmp_path / "tls.key").open("rb") as held:  # a reader holding the old file keeps old content
        new = certs.generate_serving_cert(ca, dns_names=["b"], now=NOW)
        certs.write_cert_dir(tmp_path, ca.cert_pem, new)
        assert held.read() == leaf.key_pem
    assert (tmp_path / "tls.key").read_bytes() == new.key_pem
    assert (tmp_path / "tls.key").stat().st_ino != inode_before  # renamed into place, not rewritten
    assert _mode(tmp_path / "tls.key") == 0o600


def test_write_cert_dir_leaves_existing_dir_mode(tmp_path: Path, ca: KeyPair, leaf: KeyPair) -> None:
    tmp_path.chmod(0o755)
    certs.write_cert_dir(tmp_path, ca.cert_pem, leaf)
    assert _mode(tmp_path) == 0o755


def test_ensure_dev_certs_generates_valid_localhost_certs(tmp_path: Path) -> None:
    cert_dir = tmp_path / "dev"
    assert certs.ensure_dev_certs(cert_dir) is True
    assert _mode(cert_dir / "tls.key") == 0o600
    assert _mode(cert_dir / "tls.crt") == 0o644
    assert _mode(cert_dir) == 0o700
    problems = certs.verify_serving_cert(
        (cert_dir / "ca.crt").read_bytes(),
        (cert_dir / "tls.crt").read_bytes(),
        (cert_dir / "tls.key").read_bytes(),
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    assert problems == []


def test_ensure_dev_certs_does_not_overwrite(tmp_path: Path) -> None:
    assert certs.ensure_dev_certs(tmp_path) is True
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert certs.ensure_dev_certs(tmp_path) is False
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("present", ["tls.crt", "tls.key"])
def test_ensure_dev_certs_refuses_half_pair(tmp_path: Path, present: str) -> None:
    (tmp_path / present).write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=present):
        certs.ensure_dev_certs(tmp_path)
    assert (tmp_path / present).read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == [present]


def test_ensure_dev_certs_never_overwrites_a_concurrent_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process creating the pair between our existence check and our write wins."""
    real_generate = certs.generate_serving_cert

    def generate_while_another_process_writes(*args, **kwargs) -> KeyPair:
        (tmp_path / "tls.key").write_bytes(b"theirs-key")
        (tmp_path / "tls.crt").write_bytes(b"theirs-crt")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(certs, "generate_serving_cert", generate_while_another_process_writes)
    with pytest.raises(FileExistsError):
        certs.ensure_dev_certs(tmp_path)
    assert (tmp_path / "tls.key").read_bytes() == b"theirs-key"
    assert (tmp_path / "tls.crt").read_bytes() == b"theirs-crt"
    assert sorted(os.listdir(tmp_path)) == ["tls.crt", "tls.key"]


def test_no_clobber_write_loses_race_without_touching_files(tmp_path: Path, ca: KeyPair, leaf: KeyPair) -> None:
    """A concurrent dev-cert writer that lost the race on tls.key must not replace tls.crt or ca.crt."""
    certs.write_cert_dir(tmp_path, ca.cert_pem, leaf)
    other_ca = certs.generate_ca(now=NOW)
    other = certs.generate_serving_cert(other_ca, dns_names=["x"], now=NOW)
    with pytest.raises(FileExistsError):
        certs._write_cert_dir(tmp_path, other_ca.cert_pem, other, clobber=False)
    assert (tmp_path / "tls.crt").read_bytes() == leaf.cert_pem
    assert (tmp_path / "ca.crt").read_bytes() == ca.cert_pem
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "tls.crt", "tls.key"]


# --- PEM parsing ----------------------------------------------------------------------------------


def test_split_and_join_bundle(ca: KeyPair, leaf: KeyPair) -> None:
    other = certs.generate_ca(now=NOW).cert_pem
    bundle = certs.join_pem_bundle([ca.cert_pem, other])
    assert bundle == ca.cert_pem + other
    assert certs.split_pem_bundle(bundle) == [ca.cert_pem, other]
    # duplicates dropped, order kept, nested bundles flattened
    assert certs.join_pem_bundle([other, bundle, ca.cert_pem]) == other + ca.cert_pem
    assert certs.join_pem_bundle([]) == b""
    assert certs.split_pem_bundle(b"") == []


def test_split_tolerates_comments_and_crlf(ca: KeyPair) -> None:
    crlf = ca.cert_pem.replace(b"\n", b"\r\n")
    text = b"# old CA\n" + crlf + b"\n# new CA\n" + ca.cert_pem
    assert certs.split_pem_bundle(text) == [ca.cert_pem, ca.cert_pem]
    assert certs.load_certificate(text) == _cert(ca.cert_pem)


def test_load_certificate_returns_first(ca: KeyPair, leaf: KeyPair) -> None:
    assert certs.load_certificate(leaf.cert_pem + ca.cert_pem) == _cert(leaf.cert_pem)


def test_join_rejects_single_blob(ca: KeyPair) -> None:
    with pytest.raises(TypeError):
        certs.join_pem_bundle(ca.cert_pem)


def _garbage_cases(ca: KeyPair, leaf: KeyPair) -> dict[str, tuple[bytes, str]]:
    pem = ca.cert_pem
    lines = pem.splitlines(keepends=True)
    return {
        "empty": (b"", "no PEM certificate found"),
        "text": (b"not a certificate at all", "not PEM"),
        "truncated": (pem[: len(pem) // 2], "without a matching END"),
        "truncated-second": (pem + pem[:100], "without a matching END"),
        "bad-base64": (lines[0] + b"!!!!\n" + lines[-1], "not valid X.509"),
        "corrupt-der": (
            lines[0] + lines[1][:4] + b"AAAA" + lines[1][8:] + b"".join(lines[2:]),
            "not valid X.509",
        ),
        "private-key": (leaf.key_pem, "private key"),
        "key-in-bundle": (pem + leaf.key_pem, "private key"),
        "csr": (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a CERTIFICATE",
        ),
    }


GARBAGE = [
    "empty",
    "text",
    "truncated",
    "truncated-second",
    "bad-base64",
    "corrupt-der",
    "private-key",
    "key-in-bundle",
    "csr",
]


def test_every_garbage_case_is_run(ca: KeyPair, leaf: KeyPair) -> None:
    assert list(_garbage_cases(ca, leaf)) == GARBAGE


@pytest.mark.parametrize("case", GARBAGE)
def test_garbage_raises_certificate_error(ca: KeyPair, leaf: KeyPair, case: str) -> None:
    data, fragment = _garbage_cases(ca, leaf)[case]
    with pytest.raises(CertificateError, match=fragment) as exc_info:
        certs.load_certificate(data)
    assert isinstance(exc_info.value, ValueError)
    assert b"PRIVATE KEY" not in str(exc_info.value).encode()
    if case != "empty":
        with pytest.raises(CertificateError):
            certs.split_pem_bundle(data)
    with pytest.raises(CertificateError):
        certs.not_after(data)


def test_wrong_input_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        certs.load_certificate("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]
