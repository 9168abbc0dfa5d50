"""Registry rules: which pull secrets an image's registry (and path) calls for.

Matching follows the kubelet's semantics for ``matchImages`` in a
CredentialProviderConfig and for docker config keys, so that a pattern an
operator already wrote for one of those works here unchanged:

* the image is normalized first (``ubuntu`` is ``docker.io/library/ubuntu``);
* each dot-separated host label of the pattern may hold a glob (``*``, ``?``,
  ``[...]``) that never spans a dot: ``*.azurecr.io`` does not match
  ``a.b.azurecr.io``;
* ports must be equal, and a pattern without a port matches only images
  without one;
* an optional pattern path is a prefix of the repository, compared segment by
  segment (``ghcr.io/my-org`` does not leak to ``ghcr.io/my-organization``;
  this is stricter than the kubelet's plain string prefix, on purpose, since a
  credential is at stake);
* ``https://``/``http://`` and a bare ``/v1/`` or ``/v2/`` path are ignored;
* all spellings of Docker Hub are one registry.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.images import PATH_COMPONENT_RE, ImageReference, normalize_registry_host, parse_image
from webhook.selectors import LabelSelector, is_dns_subdomain

_GLOB_CHARS = frozenset("*?[")
_HOST_LABEL_RE = re.compile(r"^[a-z0-9*?\[\]!^-]+$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
# Bounds the per-RuleSet memo of image -> secrets (or matching rules); a pod's images repeat a lot.
_CACHE_LIMIT = 16384


class PatternError(ValueError):
    """A rule's registry pattern cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed registry pattern."""

    host: str  # lower-case, Docker Hub aliases folded to docker.io
    port: str | None
    path: tuple[str, ...]  # prefix segments of the repository
    regex: re.Pattern[str] | None  # set when the host holds a glob

    @property
    def is_glob(self) -> bool:
        return self.regex is not None

    def matches(self, image: ImageReference) -> bool:
        host, port = split_host_port(normalize_registry_host(image.registry))
        return self.matches_parts(host, port, image.repository)

    def matches_parts(self, host: str, port: str | None, repository: str) -> bool:
        if port != self.port:
            return False
        if self.regex is None:
            if host != self.host:
                return False
        elif not self.regex.fullmatch(host):
            return False
        return _path_has_prefix(repository, self.path)


def _path_has_prefix(repository: str, prefix: tuple[str, ...]) -> bool:
    if not prefix:
        return True
    segments = repository.split("/")
    return len(segments) >= len(prefix) and tuple(segments[: len(prefix)]) == prefix


def _is_ipv6_literal(hostport: str) -> bool:
    # "[gq]cr.io" is a glob character class; only a colon inside makes it IPv6.
    end = hostport.find("]")
    return hostport.startswith("[") and end != -1 and ":" in hostport[:end]


def split_host_port(hostport: str) -> tuple[str, str | None]:
    """Split ``host[:port]``; IPv6 literals keep their brackets."""
    if _is_ipv6_literal(hostport):
        end = hostport.find("]")
        if hostport[end + 1 : end + 2] == ":":
            return hostport[: end + 1], hostport[end + 2 :]
        return hostport, None
    host, sep, port = hostport.rpartition(":")
    if sep:
        return host, port
    return hostport, None


def _label_regex(label: str, pattern: str) -> str:
    """Translate one host label's glob to a regex that never crosses a dot."""
    out: list[str] = []
    i = 0
    while i < len(label):
        c = label[i]
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = label.find("]", i + 2)
            if end == -1:
                raise PatternError(f"registry pattern {pattern!r}: unterminated '[' in host")
            body = label[i + 1 : end]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            if not body:
                raise PatternError(f"registry pattern {pattern!r}: empty character class in host")
            out.append("[" + ("^." if negate else "") + re.escape(body).replace(r"\-", "-") + "]")
            i = end
        elif c in "]!^":
            raise PatternError(f"registry pattern {pattern!r}: unexpected {c!r} in host")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_pattern(pattern: str) -> Pattern:
    """Parse a rule's ``registry`` value; raises PatternError naming what is wrong."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PatternError(f"registry pattern must be a non-empty string, got {pattern!r}")
    text = pattern.strip()
    lowered = text.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    hostport, _, path = text.partition("/")
    # Docker config keys such as https://index.docker.io/v1/: as in the kubelet's keyring, a leading
    # "v1/" or "v2/" is the registry API's version, while a bare "v2" segment is a namespace.
    if path.startswith(("v1/", "v2/")):
        path = path[3:]
    path = path.rstrip("/")
    if not hostport:
        raise PatternError(f"registry pattern {pattern!r}: no host")
    host, port = split_host_port(hostport.lower())
    if port is not None and not _PORT_RE.match(port):
        raise PatternError(f"registry pattern {pattern!r}: port {port!r} is not a number")
    ipv6 = _is_ipv6_literal(host)
    if ipv6:
        if not re.fullmatch(r"\[[0-9a-f:]+\]", host):
            raise PatternError(f"registry pattern {pattern!r}: invalid IPv6 host {host!r}")
        labels = [host]
    else:
        labels = host.split(".")
        for label in labels:
            if not label or not _HOST_LABEL_RE.match(label):
                raise PatternError(f"registry pattern {pattern!r}: invalid host label {label!r}")
    segments = tuple(path.split("/")) if path else ()
    for seg in segments:
        if not PATH_COMPONENT_RE.fullmatch(seg):
            raise PatternError(
                f"registry pattern {pattern!r}: path segment {seg!r} is not a valid lower-case repository path"
            )
    regex = None
    if ipv6:  # checked above: no glob, no Docker Hub alias
        return Pattern(host=host, port=port, path=segments, regex=None)
    if any(c in _GLOB_CHARS for c in host):
        try:
            regex = re.compile(r"\.".join(_label_regex(label, pattern) for label in labels))
        except re.error as exc:  # e.g. a reversed range such as [z-a]
            raise PatternError(f"registry pattern {pattern!r}: invalid character class in host ({exc.msg})") from None
    else:
        stray = next((c for c in host if c in "]!^"), None)
        if stray:
            raise PatternError(f"registry pattern {pattern!r}: unexpected {stray!r} in host")
        host = normalize_registry_host(host)
    return Pattern(host=host, port=port, path=segments, regex=regex)


def image_matches(pattern: str, image: str) -> bool:
    """Whether a rule's registry ``pattern`` covers the image reference ``image``."""
    return parse_pattern(pattern).matches(parse_image(image))


def validate_secret_name(name: object) -> str:
    """Secret names are DNS subdomains (RFC 1123), at most 253 characters."""
    if not is_dns_subdomain(name):
        raise ValueError(
            f"secret name {name!r} is not a valid Kubernetes name "
            "(lower-case alphanumerics, '-' and '.', at most 253 characters)"
        )
    return name


_NAMESPACE_GLOB_RE = re.compile(r"^[a-z0-9*?\[\]!^-]{1,63}$")


@dataclass(frozen=True, slots=True)
class NamespaceScope:
    """Limits a rule to some namespaces: by name (exact or glob) and/or by label selector.

    Lets ``flytesnacks-*`` and ``team-b-*`` use different credentials for the same
    registry. Both parts, when given, must hold. A namespace whose labels are not
    known (no namespace cache yet) does not satisfy a selector: a scoped rule
    then contributes nothing rather than a credential meant for someone else.
    """

    names: frozenset[str] = frozenset()
    globs: tuple[re.Pattern[str], ...] = ()
    selector: LabelSelector | None = None

    @classmethod
    def parse(cls, namespaces: Sequence[str] | None, selector: LabelSelector | None) -> NamespaceScope:
        names: set[str] = set()
        globs: list[re.Pattern[str]] = []
        for item in namespaces or ():
            if not isinstance(item, str) or not _NAMESPACE_GLOB_RE.match(item):
                raise ValueError(f"namespace pattern {item!r} is not a namespace name or glob")
            if any(c in _GLOB_CHARS for c in item):
                globs.append(re.compile(fnmatch.translate(item)))
            else:
                names.add(item)
        return cls(frozenset(names), tuple(globs), selector)

    @property
    def by_name(self) -> bool:
        return bool(self.names or self.globs)

    def matches(self, namespace: str | None, labels: Mapping[str, str] | None) -> bool:
        if namespace is None:
            return False
        if self.by_name and namespace not in self.names and not any(g.match(namespace) for g in self.globs):
            return False
        return self.selector is None or (labels is not None and self.selector.matches(labels))


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured rule: a registry pattern, the secrets it brings, and optionally where."""

    registry: str
    secrets: tuple[str, ...]
    pattern: Pattern = field(compare=False, repr=False)
    scope: NamespaceScope | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, registry: str, secrets: Iterable[str], scope: NamespaceScope | None = None) -> Rule:
        return cls(registry, tuple(secrets), parse_pattern(registry), scope)


class RuleSet:
    """Rules compiled for lookup: exact hosts in a dict, globs indexed by their literal parts.

    Immutable once built; a config reload builds a new one and swaps it in, so
    readers never see a half-loaded rule list.
    """

    __slots__ = (
        "_cache",
        "_exact",
        "_glob_shapes",
        "_globs",
        "_scoped",
        "needs_namespace_labels",
        "rules",
    )

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._exact: dict[tuple[str, str | None], list[tuple[int, Pattern]]] = {}
        # Globs are indexed by what an image host must share with them to match: the label count
        # (a glob never spans a dot), the port, the trailing run of literal labels and the literal
        # characters before the first glob character. A lookup tries each (suffix labels, prefix
        # length) shape present, so 10,000 globs cost a few dict lookups, not 10,000 regex matches.
        self._globs: dict[tuple[int, str | None, tuple[str, ...], str], list[tuple[int, Pattern]]] = {}
        self._glob_shapes: dict[tuple[int, str | None], list[tuple[int, int]]] = {}
        for index, rule in enumerate(self.rules):
            p = rule.pattern
            if p.is_glob:
                labels = p.host.split(".")
                literal = 0
                while literal < len(labels) and not any(c in _GLOB_CHARS for c in labels[-1 - literal]):
                    literal += 1
                prefix_len = next(i for i, c in enumerate(p.host) if c in _GLOB_CHARS)
                suffix = tuple(labels[len(labels) - literal :])
                key = (len(labels), p.port, suffix, p.host[:prefix_len])
                self._globs.setdefault(key, []).append((index, p))
                shapes = self._glob_shapes.setdefault((len(labels), p.port), [])
                if (literal, prefix_len) not in shapes:
                    shapes.append((literal, prefix_len))
            else:
                self._exact.setdefault((p.host, p.port), []).append((index, p))
        # (registry, repository) -> the secrets, or with scoped rules the matching rules' indexes.
        self._cache: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._scoped = any(rule.scope is not None for rule in self.rules)
        # Fixed per rule set: computed once here, not on every admission.
        self.needs_namespace_labels = any(r.scope is not None and r.scope.selector is not None for r in self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def matching_rules(self, image: ImageReference) -> list[int]:
        """Indexes of the rules that cover ``image``, in configuration order."""
        host, port = split_host_port(normalize_registry_host(image.registry))
        repo = image.repository
        hits = [i for i, p in self._exact.get((host, port), ()) if _path_has_prefix(repo, p.path)]
        labels = [host] if _is_ipv6_literal(host) else host.split(".")
        label_count = len(labels)
        for literal, prefix_len in self._glob_shapes.get((label_count, port), ()):
            if prefix_len > len(host):
                continue  # host[:prefix_len] would be shorter, and could name another shape's bucket
            suffix = tuple(labels[label_count - literal :]) if literal else ()
            for i, p in self._globs.get((label_count, port, suffix, host[:prefix_len]), ()):
                if p.matches_parts(host, port, repo):
                    hits.append(i)
        hits.sort()
        return hits

    def secrets_for(
        self,
        image: ImageReference,
        namespace: str | None = None,
        namespace_labels: Mapping[str, str] | None = None,
    ) -> tuple[str, ...]:
        """Secrets every matching rule contributes, deduplicated, in rule order.

        Rules limited to some namespaces count only for a pod in one of them.
        """
        key = (image.registry, image.repository)
        cached = self._cache.get(key)
        if cached is None:
            hits = self.matching_rules(image)
            # Unscoped rules: the answer itself. Scoped: the matching rules, filtered per call below.
            cached = _remember(self._cache, key, tuple(hits) if self._scoped else self._secrets_of(hits))
        if not self._scoped:
            return cached
        rules = self.rules
        return self._secrets_of(
            i for i in cached if (scope := rules[i].scope) is None or scope.matches(namespace, namespace_labels)
        )

    def _secrets_of(self, indexes: Iterable[int]) -> tuple[str, ...]:
        """The secrets of these rules, deduplicated, in rule order."""
        seen: dict[str, None] = {}
        for i in indexes:
            for secret in self.rules[i].secrets:
                seen.setdefault(secret, None)
        return tuple(seen)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """Store in a bounded memo: cleared whole when full (lookups repeat far more than they vary)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


__all__ = [
    "NamespaceScope",
    "Pattern",
    "PatternError",
    "Rule",
    "RuleSet",
    "image_matches",
    "parse_pattern",
    "split_host_port",
    "validate_secret_name",
]
