"""Container image reference parsing, matching what container runtimes accept.

The kubelet and containerd parse ``Pod.spec.containers[*].image`` with
``ParseNormalizedNamed`` from ``github.com/distribution/reference`` (digests are
then validated by ``github.com/opencontainers/go-digest``).  This module follows
that grammar so the webhook sees exactly the registry host the runtime will pull
from:

.. code-block:: text

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]
    host             := domain-name | "[" ipv6 "]"
    domain-name      := component ( "." component )*
    component        := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    port             := [0-9]+
    path             := path-component ( "/" path-component )*
    path-component   := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" hex     (sha256: 64, sha384: 96, sha512: 128
                                               lower-case hex characters)

Normalization (``splitDockerDomain``): the first ``/``-separated component is a
registry host only if it is ``localhost``, contains ``.`` or ``:``, or contains an
upper-case letter; otherwise the image lives on Docker Hub (``docker.io``).
``index.docker.io`` is rewritten to ``docker.io``, and single-component Docker Hub
paths get the ``library/`` prefix.

The module is pure (no I/O) and :func:`parse_image` is memoized because it runs
for every container of every admitted pod.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_NAME_LENGTH",
    "ImageReference",
    "InvalidImageReference",
    "normalize_registry_host",
    "parse_image",
]

DEFAULT_REGISTRY: Final = "docker.io"
"""Canonical Docker Hub host, used for references without a registry."""

MAX_NAME_LENGTH: Final = 255
"""Maximum length of the normalized name (``registry/repository``)."""

_LEGACY_DEFAULT_REGISTRY: Final = "index.docker.io"
_OFFICIAL_REPO_PREFIX: Final = "library/"
_LOCALHOST: Final = "localhost"
_MAX_TAG_LENGTH: Final = 128
_QUOTE_LIMIT: Final = 100
_DETAIL_LIMIT: Final = 64

_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# Hex length required by each digest algorithm the runtimes register
# (go-digest: sha256, sha384, sha512; encoded form is lower-case hex only).
_DIGEST_HEX_LENGTHS: Final = {"sha256": 64, "sha384": 96, "sha512": 128}

# All patterns are ASCII-only (Go's RE2 classes are ASCII) and used with
# fullmatch(), so "$" can never accept a trailing newline.
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?",
    re.ASCII,
)
PATH_COMPONENT_RE: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)
_DIGEST_ALGORITHM_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*", re.ASCII)
_DIGEST_HEX_RE: Final = re.compile(r"[0-9a-fA-F]{32,}", re.ASCII)
_LOWER_HEX_RE: Final = re.compile(r"[0-9a-f]+", re.ASCII)
_IDENTIFIER_RE: Final = re.compile(r"[a-f0-9]{64}", re.ASCII)
_WHITESPACE_RE: Final = re.compile(r"\s")


def _clip(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """Shorten ``text`` for inclusion in an error message."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _quote(value: object) -> str:
    """Quote the offending input for an error message, truncated to ~100 characters."""
    if isinstance(value, str):
        if len(value) <= _QUOTE_LIMIT:
            return repr(value)
        return f"{value[:_QUOTE_LIMIT]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not mask the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _QUOTE_LIMIT else f"{text[:_QUOTE_LIMIT]}..."


_NO_REFERENCE: Final = object()


class InvalidImageReference(ValueError):
    """An image reference that a container runtime would refuse to parse.

    ``reference`` is the offending input (if known); ``str(exc)`` says what is
    wrong with it, with the input truncated.
    """

    def __init__(self, reason: str, reference: object = _NO_REFERENCE) -> None:
        self.reference = None if reference is _NO_REFERENCE else reference
        if reference is _NO_REFERENCE:
            message = reason
        else:
            message = f"invalid reference format: {reason} (image reference {_quote(reference)})"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed, normalized image reference.

    ``registry`` is the host (with optional port) exactly as distribution
    normalizes it: only ``index.docker.io`` is rewritten (to ``docker.io``); case
    and other aliases are preserved.  Use :func:`normalize_registry_host` to
    compare hosts.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The normalized name without tag or digest, e.g. ``docker.io/library/ubuntu``."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text = f"{text}:{self.tag}"
        if self.digest is not None:
            text = f"{text}@{self.digest}"
        return text


def normalize_registry_host(host: str) -> str:
    """Canonical form of a registry host for case-insensitive comparison.

    Docker Hub aliases (``docker.io``, ``index.docker.io``,
    ``registry-1.docker.io``, any case) map to ``docker.io``; every other host is
    lower-cased.  Ports and IPv6 brackets are kept as-is.
    """
    lowered = host.lower()
    if lowered in _DOCKER_HUB_ALIASES:
        return DEFAULT_REGISTRY
    return lowered


def parse_image(reference: str) -> ImageReference:
    """Parse ``reference`` the way the kubelet/containerd do.

    Raises :class:`InvalidImageReference` (a :class:`ValueError`) for anything a
    runtime would reject, including non-string input.  Results are cached
    (``functools.lru_cache``, 8192 entries); ``cache_info``/``cache_clear`` are
    available on this function.
    """
    if type(reference) is not str:
        if not isinstance(reference, str):
            raise InvalidImageReference(f"image reference must be a string, not {type(reference).__name__}", reference)
        # A str subclass may override hashing/equality; cache on the plain value.
        reference = str.__str__(reference)
    return _parse_image_cached(reference)


@functools.lru_cache(maxsize=8192)
def _parse_image_cached(reference: str) -> ImageReference:
    return _parse(reference)


parse_image.cache_info = _parse_image_cached.cache_info  # type: ignore[attr-defined]
parse_image.cache_clear = _parse_image_cached.cache_clear  # type: ignore[attr-defined]


def _split_docker_domain(reference: str) -> tuple[str, str]:
    """Split into (registry, remainder) following distribution's splitDockerDomain."""
    first, slash, rest = reference.partition("/")
    if not slash:
        # A single component is always a Docker Hub image, even "localhost" or
        # "example.com" (the ":" would be a tag separator, not a port).
        return DEFAULT_REGISTRY, _OFFICIAL_REPO_PREFIX + reference
    if first == _LOCALHOST or "." in first or ":" in first or first.lower() != first:
        domain, remainder = first, rest
        if domain == _LEGACY_DEFAULT_REGISTRY:
            domain = DEFAULT_REGISTRY
    else:
        domain, remainder = DEFAULT_REGISTRY, reference
    if domain == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = _OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _check_path(path: str, reference: str) -> None:
    if path.lower() != path:
        raise InvalidImageReference(f"repository name ({_clip(path)}) must be lowercase", reference)
    for component in path.split("/"):
        if not component:
            raise InvalidImageReference(
                f"repository name ({_clip(path)}) has an empty path component (leading, trailing or double slash)",
                reference,
            )
        if not PATH_COMPONENT_RE.fullmatch(component):
            raise InvalidImageReference(
                f"invalid repository path component {_clip(component)!r}: components are lowercase "
                "letters and digits, separated by a single '.', '_' or '__', or by dashes",
                reference,
            )


def _check_tag(tag: str, reference: str) -> None:
    if not tag:
        raise InvalidImageReference("invalid tag: tag is empty (nothing after ':')", reference)
    if not _TAG_RE.fullmatch(tag):
        raise InvalidImageReference(
            f"invalid tag {_clip(tag)!r}: tags are letters, digits, '_', '.' and '-' "
            "and must not start with '.' or '-'",
            reference,
        )
    if len(tag) > _MAX_TAG_LENGTH:
        raise InvalidImageReference(
            f"invalid tag: tag must not be more than {_MAX_TAG_LENGTH} characters (got {len(tag)})",
            reference,
        )


def _check_digest(digest: str, reference: str) -> None:
    if not digest:
        raise InvalidImageReference("invalid digest: digest is empty (nothing after '@')", reference)
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not _DIGEST_ALGORITHM_RE.fullmatch(algorithm) or not _DIGEST_HEX_RE.fullmatch(encoded):
        raise InvalidImageReference(
            f"invalid digest {_clip(digest)!r}: expected <algorithm>:<hex>, e.g. sha256:<64 hex characters>",
            reference,
        )
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidImageReference(
            f"invalid digest: unsupported digest algorithm {_clip(algorithm)!r} "
            f"(supported: {', '.join(_DIGEST_HEX_LENGTHS)})",
            reference,
        )
    if len(encoded) != expected or not _LOWER_HEX_RE.fullmatch(encoded):
        raise InvalidImageReference(
            f"invalid digest: a {algorithm} digest must be exactly {expected} lowercase hex "
            f"characters (got {len(encoded)})",
            reference,
        )


def _parse(reference: str) -> ImageReference:
    if not reference:
        raise InvalidImageReference("image reference is empty", reference)
    if _WHITESPACE_RE.search(reference):
        if reference.strip() != reference:
            raise InvalidImageReference("image reference has leading or trailing whitespace", reference)
        raise InvalidImageReference("image reference contains whitespace", reference)
    if _IDENTIFIER_RE.fullmatch(reference):
        raise InvalidImageReference(
            "repository name cannot be a 64-character hexadecimal string (it looks like an image ID)",
            reference,
        )

    domain, remainder = _split_docker_domain(reference)

    # The path cannot contain ':' or '@', and neither can a tag, so the first
    # '@' starts the digest and the first ':' before it starts the tag.
    named_and_tag, at, digest = remainder.partition("@")
    path, colon, tag = named_and_tag.partition(":")

    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidImageReference(
            f"invalid registry host {_clip(domain)!r}: expected host[:port] or [ipv6][:port]",
            reference,
        )
    _check_path(path, reference)
    if colon:
        _check_tag(tag, reference)
    if at:
        _check_digest(digest, reference)

    # distribution/reference (v0.6, the kubelet's) limits the path, not host + path.
    if len(path) > MAX_NAME_LENGTH:
        raise InvalidImageReference(
            f"repository name must not be more than {MAX_NAME_LENGTH} characters "
            f"(path {_clip(path)!r} has {len(path)})",
            reference,
        )

    return ImageReference(
        registry=domain,
        repository=path,
        tag=tag if colon else None,
        digest=digest if at else None,
    )
