"""Certificate material for the webhook's serving TLS: CA, serving certificates, checks, on-disk layout.

Pure `cryptography` code with no Kubernetes or network access, so bootstrap, rotation and tests share it.
Nothing here logs, and no error message echoes its input: the input may be a private key.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_CERT_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

# Certificates start this far in the past so that nodes whose clocks lag a little accept them at once.
CLOCK_SKEW = timedelta(minutes=5)
DEV_DNS_NAMES = ("localhost",)
DEV_IP_ADDRESSES = ("127.0.0.1", "::1")

_RSA_KEY_SIZE = 2048
_MAX_CN_LENGTH = 64  # RFC 5280 ub-common-name
_PEM_BEGIN = re.compile(rb"-----BEGIN [^-\r\n]*-----")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([^-\r\n]*)-----.*?-----END \1-----", re.DOTALL)


class CertificateError(ValueError):
    """Certificate or key material is unusable."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its unencrypted PKCS8 PEM key; repr omits the key so it cannot reach logs."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def generate_ca(
    common_name: str = "flyte-pullsecrets-webhook-ca",
    *,
    key_type: KeyType = "ecdsa",
    validity: timedelta = timedelta(days=3650),
    now: datetime | None = None,
) -> KeyPair:
    """Create a self-signed CA that may sign leaf certificates only (path length 0)."""
    _check_validity(validity)
    now = _resolve_now(now)
    key = _generate_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def generate_serving_cert(
    ca: KeyPair,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    common_name: str | None = None,
    key_type: KeyType = "ecdsa",
    validity: timedelta = timedelta(days=90),
    now: datetime | None = None,
) -> KeyPair:
    """Issue a serverAuth leaf for the given SANs, signed by `ca`.

    Clients such as the kube-apiserver match only SANs, never the CN, so at least one SAN is required.
    Like cert-manager's CA issuer, the leaf never outlives its CA: validity is cut at the CA's notAfter.
    """
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise TypeError("dns_names and ip_addresses must be sequences of strings, not a single string")
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    _check_validity(validity)
    now = _resolve_now(now)
    problem = ca_problem(ca, now)
    if problem is not None:
        raise CertificateError(problem)
    ca_cert = load_certificate(ca.cert_pem)
    ca_key = _load_private_key(ca.key_pem)

    ips = [ipaddress.ip_address(ip) for ip in ip_addresses]
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    if common_name is None:
        candidates = [*dns_names, *map(str, ips)]
        common_name = next((n for n in candidates if len(n) <= _MAX_CN_LENGTH), None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])

    key = _generate_key(key_type)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # keyEncipherment only means something for RSA key transport; ECDSA keys only sign.
        .add_extension(_key_usage(digital_signature=True, key_encipherment=key_type == "rsa"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RFC 5280 4.2.1.6: the SAN extension must be critical when the subject is empty.
        .add_extension(x509.SubjectAlternativeName(sans), critical=not common_name)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_dns_names(service: str, namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The names a Service is reachable under in-cluster; the apiserver dials `svc.ns.svc`."""
    if not service or not namespace:
        raise ValueError("service and namespace must be non-empty")
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    domain = cluster_domain.strip(".")
    if domain:
        names.append(f"{service}.{namespace}.svc.{domain}")
    return names


def write_cert_dir(cert_dir: Path, ca_cert_pem: bytes, serving: KeyPair) -> None:
    """Write ca.crt, tls.crt and tls.key, each atomically, so readers never see a partly written file.

    The three files are replaced one by one, so a reader may briefly see a new key with an old cert;
    ReloadingTLS rejects such a mismatched pair and picks up the complete pair on its next check.
    """
    _write_cert_dir(Path(cert_dir), ca_cert_pem, serving, clobber=True)


def ensure_dev_certs(cert_dir: Path) -> bool:
    """Create a throwaway CA and a localhost serving certificate unless tls.crt and tls.key exist.

    Returns True when it generated. An existing tls.crt or tls.key is never overwritten: if only one of
    them exists the directory is in a state we did not create, so this raises FileExistsError instead.
    """
    cert_dir = Path(cert_dir)
    cert_file, key_file = cert_dir / TLS_CERT_FILE, cert_dir / TLS_KEY_FILE
    cert_exists, key_exists = cert_file.exists(), key_file.exists()
    if cert_exists and key_exists:
        return False
    if cert_exists or key_exists:
        present = cert_file if cert_exists else key_file
        raise FileExistsError(f"{present} exists without its pair; remove it to generate development certificates")
    ca = generate_ca("flyte-pullsecrets-webhook-dev-ca")
    serving = generate_serving_cert(
        ca, dns_names=DEV_DNS_NAMES, ip_addresses=DEV_IP_ADDRESSES, validity=timedelta(days=365)
    )
    _write_cert_dir(cert_dir, ca.cert_pem, serving, clobber=False)
    return True


def ca_problem(ca: KeyPair, now: datetime | None = None) -> str | None:
    """Why ``ca`` cannot sign serving certificates, or None if it can."""
    try:
        ca_cert = load_certificate(ca.cert_pem)
        ca_key = _load_private_key(ca.key_pem)
    except CertificateError as exc:
        return f"the CA certificate or key cannot be parsed: {exc}"
    if not _is_ca(ca_cert):
        return "the issuing certificate is not a CA (BasicConstraints ca=False or absent)"
    if not _same_public_key(ca_cert.public_key(), ca_key.public_key()):
        return "the CA private key does not match the CA certificate"
    if ca_cert.not_valid_after_utc <= _resolve_now(now):
        return f"the CA expired at {ca_cert.not_valid_after_utc.isoformat()}"
    return None


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse the first certificate of a PEM bundle (the leaf, for a tls.crt carrying its chain)."""
    certs = _parse_bundle(pem)
    if not certs:
        raise CertificateError("no PEM certificate found (input is empty)")
    return certs[0]


def not_after(cert_pem: bytes) -> datetime:
    """Expiry (timezone-aware UTC) of the first certificate in `cert_pem`."""
    return load_certificate(cert_pem).not_valid_after_utc


def needs_renewal(cert_pem: bytes, *, renew_before: timedelta, now: datetime | None = None) -> bool:
    """True once `now` is within `renew_before` of the certificate's expiry (or past it)."""
    return _resolve_now(now) >= not_after(cert_pem) - renew_before


def verify_serving_cert(
    ca_cert_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    now: datetime | None = None,
) -> list[str]:
    """List why this pair would fail as our serving certificate (empty list: it is fine).

    `ca_cert_pem` may be a bundle (old and new CA during rotation); any CA in it may be the issuer.
    """
    now = _resolve_now(now)
    try:
        cas = _parse_bundle(ca_cert_pem)
    except CertificateError as exc:
        return [f"CA bundle: {exc}"]
    if not cas:
        return ["CA bundle: no certificate found"]
    try:
        cert = load_certificate(cert_pem)
    except CertificateError as exc:
        return [f"serving certificate: {exc}"]

    problems: list[str] = []
    issuer = next((ca for ca in cas if _issued_by(cert, ca)), None)
    if issuer is None:
        problems.append("certificate is not signed by the given CA")
    elif now > issuer.not_valid_after_utc:
        problems.append(f"issuing CA certificate expired at {issuer.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        problems.append(f"certificate is not valid until {cert.not_valid_before_utc.isoformat()}")
    elif now > cert.not_valid_after_utc:
        problems.append(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
    try:
        key = _load_private_key(key_pem)
    except CertificateError as exc:
        problems.append(f"private key: {exc}")
    else:
        if not _same_public_key(cert.public_key(), key.public_key()):
            problems.append("private key does not match the certificate")
    problems += [f"missing subjectAltName {san}" for san in _missing_sans(cert, dns_names, ip_addresses)]
    if not _has_server_auth(cert):
        problems.append("certificate lacks the serverAuth extended key usage")
    if _is_ca(cert):
        problems.append("certificate is a CA certificate, not a leaf")
    return problems


def split_pem_bundle(pem: bytes) -> list[bytes]:
    """Split a PEM bundle into normalised single-certificate PEMs (text between blocks is ignored)."""
    return [cert.public_bytes(serialization.Encoding.PEM) for cert in _parse_bundle(pem)]


def join_pem_bundle(certs: Iterable[bytes]) -> bytes:
    """Concatenate certificates (each may itself be a bundle) in order, dropping duplicates.

    Used for a caBundle holding old and new CA while a CA rotation propagates.
    """
    if isinstance(certs, bytes | str):
        raise TypeError("join_pem_bundle takes an iterable of PEM blobs, not a single blob")
    seen: set[bytes] = set()
    out: list[bytes] = []
    for pem in certs:
        for cert in _parse_bundle(pem):
            der = cert.public_bytes(serialization.Encoding.DER)
            if der not in seen:
                seen.add(der)
                out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def _parse_bundle(pem: bytes) -> list[x509.Certificate]:
    """Parse every CERTIFICATE block, refusing truncated blocks and anything that is not a certificate."""
    if not isinstance(pem, bytes):
        raise TypeError(f"PEM input must be bytes, not {type(pem).__name__}")
    blocks = list(_PEM_BLOCK.finditer(pem))
    if len(_PEM_BEGIN.findall(pem)) != len(blocks):
        raise CertificateError("PEM input has a BEGIN line without a matching END line (truncated file?)")
    if not blocks and pem.strip():
        raise CertificateError("input is not PEM: no '-----BEGIN CERTIFICATE-----' block found")
    certs: list[x509.Certificate] = []
    for index, block in enumerate(blocks, start=1):
        label = block.group(1).decode("ascii", "replace")
        if "PRIVATE KEY" in label:
            raise CertificateError(f"PEM block #{index} is a private key where certificates were expected")
        if label != "CERTIFICATE":
            raise CertificateError(f"PEM block #{index} is a {label!r}, not a CERTIFICATE")
        try:
            certs.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as exc:
            raise CertificateError(f"PEM certificate #{index} is not valid X.509: {exc}") from None
    return certs


def _load_private_key(pem: bytes) -> PrivateKey:
    """Load an unencrypted PEM key; the error deliberately carries no detail that could quote the key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"unsupported private key type {type(key).__name__}")
    return key


def _generate_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_KEY_SIZE)
    raise ValueError(f"unsupported key type {key_type!r}; use 'ecdsa' or 'rsa'")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Reuse the CA's own SKI so chain building matches it byte for byte, whatever method produced it."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        issuer_key = ca_cert.public_key()
        if not isinstance(issuer_key, CertificateIssuerPublicKeyTypes):
            raise CertificateError(f"unsupported CA key type {type(issuer_key).__name__}") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _resolve_now(now: datetime | None) -> datetime:
    """Naive datetimes are ambiguous (local or UTC?), so they are refused rather than guessed."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _check_validity(validity: timedelta) -> None:
    if validity <= timedelta(0):
        raise ValueError("validity must be positive")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _has_server_auth(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in usages


def _same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Issuer name matches and the CA's key verifies the signature."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _missing_sans(cert: x509.Certificate, dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        have_dns: set[str] = set()
        have_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    else:
        have_dns = {name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)}
        have_ips = set(san.get_values_for_type(x509.IPAddress))

    def dns_covered(name: str) -> bool:
        name = name.lower().rstrip(".")
        parent = name.partition(".")[2]
        return name in have_dns or (bool(parent) and f"*.{parent}" in have_dns)

    missing = [f"DNS:{name}" for name in dns_names if not dns_covered(name)]
    missing += [f"IP:{ip}" for ip in ip_addresses if ipaddress.ip_address(ip) not in have_ips]
    return missing


def _write_cert_dir(cert_dir: Path, ca_cert_pem: bytes, serving: KeyPair, *, clobber: bool) -> None:
    """tls.key goes first: with clobber=False a concurrent writer then fails before touching anything else."""
    if not cert_dir.is_dir():
        cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _atomic_write(cert_dir / TLS_KEY_FILE, serving.key_pem, 0o600, clobber=clobber)
    _atomic_write(cert_dir / TLS_CERT_FILE, serving.cert_pem, 0o644, clobber=clobber)
    _atomic_write(cert_dir / CA_CERT_FILE, ca_cert_pem, 0o644, clobber=True)
    _fsync_dir(cert_dir)


def _atomic_write(path: Path, data: bytes, mode: int, *, clobber: bool) -> None:
    """Write a private temp file in the same directory, then rename (or, without clobber, hard-link) it.

    The temp file is created 0600 and only widened after, so key bytes are never world-readable.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if clobber:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # raises FileExistsError instead of replacing
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    """Persist the renames themselves, so a crash cannot leave the old names after new contents."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
