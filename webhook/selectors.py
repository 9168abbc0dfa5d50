"""Kubernetes label selectors and label syntax, evaluated in-process.

The webhook's registration already filters pods with an objectSelector, but the
same selector is checked again here so that a hand-edited or stale registration
cannot make the webhook mutate pods it was told to leave alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_DNS_SUBDOMAIN_RE = re.compile(_DNS_SUBDOMAIN)
_LABEL_KEY_RE = re.compile(rf"^(?:(?P<prefix>{_DNS_SUBDOMAIN})/)?(?P<name>{_NAME})$")
_LABEL_VALUE_RE = re.compile(rf"^(?:{_NAME})?$")

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A label, label key or selector does not follow Kubernetes syntax."""


def is_dns_subdomain(text: Any) -> bool:
    """An RFC 1123 subdomain of at most 253 characters (Secret names, label key prefixes)."""
    return isinstance(text, str) and len(text) <= 253 and _DNS_SUBDOMAIN_RE.fullmatch(text) is not None


def validate_label_key(key: Any) -> str:
    match = _LABEL_KEY_RE.match(key) if isinstance(key, str) else None
    if match is None:
        raise SelectorError(f"invalid label key {key!r}: want [prefix/]name, name of at most 63 characters")
    prefix = match.group("prefix")
    if prefix and not is_dns_subdomain(prefix):
        raise SelectorError(f"invalid label key {key!r}: prefix longer than 253 characters")
    return key


def validate_label_value(value: Any) -> str:
    if not isinstance(value, str) or not _LABEL_VALUE_RE.match(value):
        raise SelectorError(f"invalid label value {value!r}: at most 63 alphanumerics, '-', '_' or '.'")
    return value


def parse_label(text: Any) -> tuple[str, str]:
    """Parse ``key=value`` (the opt-out label's configuration syntax)."""
    if not isinstance(text, str) or "=" not in text:
        raise SelectorError(f"invalid label {text!r}: want key=value")
    key, _, value = text.partition("=")
    return validate_label_key(key), validate_label_value(value)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, Any]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if present and not isinstance(labels[self.key], str):  # not a label value; may be unhashable
            return self.operator == "NotIn"
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``: matchLabels and matchExpressions, all ANDed."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, Any] | None) -> bool:
        if not isinstance(labels, dict) and not isinstance(labels, Mapping):  # dict first: the ABC check is slow
            labels = {}
        for requirement in self.requirements:  # noqa: SIM110 - all() over a genexpr costs more, on every admission
            if not requirement.matches(labels):
                return False
        return True


def parse_selector(data: Any, where: str = "selector") -> LabelSelector:
    """Parse a Kubernetes LabelSelector dict; errors name ``where``."""
    if data is None:
        return LabelSelector()
    if not isinstance(data, Mapping):
        raise SelectorError(f"{where}: must be a mapping with matchLabels and/or matchExpressions")
    unknown = set(data) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{where}: unknown field(s) {sorted(unknown)}")
    reqs: list[Requirement] = []
    match_labels = data.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError(f"{where}.matchLabels: must be a mapping of label key to value")
    for key, value in match_labels.items():
        try:
            reqs.append(Requirement(validate_label_key(key), "In", frozenset({validate_label_value(value)})))
        except SelectorError as exc:
            raise SelectorError(f"{where}.matchLabels: {exc}") from None
    exprs = data.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError(f"{where}.matchExpressions: must be a list")
    for i, expr in enumerate(exprs):
        here = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise SelectorError(f"{here}: must be a mapping with key, operator and values")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise SelectorError(f"{here}: operator {op!r} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise SelectorError(f"{here}.values: must be a list")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{here}: operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{here}: operator {op} takes no values")
        try:
            key = validate_label_key(expr.get("key"))
            vals = frozenset(validate_label_value(v) for v in values)
        except SelectorError as exc:
            raise SelectorError(f"{here}: {exc}") from None
        reqs.append(Requirement(key, op, vals))
    return LabelSelector(tuple(reqs))
