"""The configuration file: rules plus which pods are in scope.

Loading validates everything up front and names the offending rule, so a bad
file is refused whole (at start-up, by ``check-config``, or by a live reload,
which then keeps the previous configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from webhook.rules import NamespaceScope, Rule, RuleSet, validate_secret_name
from webhook.selectors import LabelSelector, SelectorError, parse_label, parse_selector

# Flyte labels every task pod (plugins included) with these two keys.
DEFAULT_POD_SELECTOR: dict[str, Any] = {
    "matchExpressions": [
        {"key": "execution-id", "operator": "Exists"},
        {"key": "node-id", "operator": "Exists"},
    ]
}
DEFAULT_OPT_OUT_LABEL = "pullsecrets-injection=disabled"
INJECTED_ANNOTATION = "pullsecrets-webhook/injected"

_TOP_LEVEL_KEYS = {"rules", "podSelector", "optOutLabel", "warnUnmatched", "annotate", "missingSecrets"}
_RULE_KEYS = {"registry", "secrets", "namespaces", "namespaceSelector"}
MISSING_SECRET_POLICIES = ("inject", "skip")


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Unusual(Exception):
    """The document uses a feature the event builder leaves to PyYAML's own loader."""


def load_yaml(text: str | bytes) -> Any:
    """What ``yaml.safe_load`` returns, built from the parser's events one at a time.

    safe_load first composes a node, with two position marks, for every scalar of the file and
    only then builds the data: for a 10,000-rule file (0.7 MB) that graph peaked at 32 MB, and a
    process keeps its high-water mark. Here each scalar is resolved and constructed by the same
    SafeLoader machinery as it arrives, so only the data is ever held. Documents using merge keys,
    tagged collections or anything else unusual (and every error) go through safe_load itself.
    """
    try:
        return _build_from_events(text)
    except _Unusual:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader, C-accelerated when available


def _build_from_events(text: str | bytes) -> Any:
    loader = _SafeLoader(text)
    try:
        anchors: dict[str, Any] = {}
        stack: list[tuple[Any, list[Any]]] = []  # (container, [pending key]) per open collection
        root: Any = None
        documents = 0

        def add(value: Any, anchor: str | None) -> None:
            nonlocal root
            if anchor is not None:
                anchors[anchor] = value
            if not stack:
                root = value
                return
            container, pending = stack[-1]
            if isinstance(container, list):
                container.append(value)
            elif pending:
                key = pending.pop()
                if key == "<<" or not isinstance(key, str | int | float | bool | None):
                    raise _Unusual  # merge keys; unhashable or unusual keys (PyYAML's errors)
                container[key] = value
            else:
                pending.append(value)

        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                construct = loader.yaml_constructors.get(tag)
                if construct is None or tag in (_MAP_TAG, _SEQ_TAG):
                    raise _Unusual
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
                add(construct(loader, node), event.anchor)
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                mapping = isinstance(event, yaml.MappingStartEvent)
                if event.tag not in (None, "!", _MAP_TAG if mapping else _SEQ_TAG):
                    raise _Unusual
                container: Any = {} if mapping else []
                add(container, event.anchor)  # before its items: an alias inside refers to it
                stack.append((container, []))
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                stack.pop()
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    raise _Unusual
                add(anchors[event.anchor], None)
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Unusual  # safe_load refuses a second document
        return root
    except yaml.YAMLError:
        raise _Unusual from None
    finally:
        loader.dispose()


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Config:
    """A validated, compiled configuration. Immutable: reloads swap whole objects."""

    rules: RuleSet
    pod_selector: LabelSelector
    opt_out_label: tuple[str, str]
    warn_unmatched: bool = True
    annotate: bool = True
    # What to do with a rule's secret that the namespace lacks (known only with the Secret cache).
    missing_secrets: str = "inject"


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Build a Config from parsed YAML/JSON data."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a mapping with a 'rules' list")
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; known: {sorted(_TOP_LEVEL_KEYS)}")
    raw_rules = data.get("rules", [])
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: 'rules' must be a list")
    rules = [_parse_rule(raw, i, source) for i, raw in enumerate(raw_rules)]
    try:
        selector = parse_selector(data.get("podSelector", DEFAULT_POD_SELECTOR), "podSelector")
        opt_out = parse_label(data.get("optOutLabel", DEFAULT_OPT_OUT_LABEL))
    except SelectorError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    flags = {}
    for key in ("warnUnmatched", "annotate"):
        value = data.get(key, True)
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key!r} must be true or false, got {value!r}")
        flags[key] = value
    missing = data.get("missingSecrets", "inject")
    if missing not in MISSING_SECRET_POLICIES:
        raise ConfigError(
            f"{source}: 'missingSecrets' must be one of {', '.join(MISSING_SECRET_POLICIES)}, got {missing!r}"
        )
    return Config(
        missing_secrets=missing,
        rules=RuleSet(rules),
        pod_selector=selector,
        opt_out_label=opt_out,
        warn_unmatched=flags["warnUnmatched"],
        annotate=flags["annotate"],
    )


def _parse_rule(raw: Any, index: int, source: str) -> Rule:
    where = f"{source}: rules[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with 'registry' and 'secrets'")
    where = f"{where} (registry {raw.get('registry')!r})"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_RULE_KEYS)}")
    secrets = raw.get("secrets")
    if isinstance(secrets, str):
        secrets = [secrets]
    if not isinstance(secrets, list) or not secrets:
        raise ConfigError(f"{where}: 'secrets' must be a non-empty list of Secret names")
    namespaces = raw.get("namespaces")
    if isinstance(namespaces, str):
        namespaces = [namespaces]
    if namespaces is not None and (not isinstance(namespaces, list) or not namespaces):
        raise ConfigError(f"{where}: 'namespaces' must be a non-empty list of namespace names or globs")
    scope = None
    try:
        selector = None
        if raw.get("namespaceSelector") is not None:
            selector = parse_selector(raw["namespaceSelector"], "namespaceSelector")
        if namespaces is not None or selector is not None:
            scope = NamespaceScope.parse(namespaces, selector)
        names = [validate_secret_name(s) for s in secrets]
        return Rule.create(raw.get("registry"), dict.fromkeys(names), scope)
    except ValueError as exc:  # PatternError, SelectorError and the name checks
        raise ConfigError(f"{where}: {exc}") from None


def load_config_text(text: str | bytes, source: str = "<config>") -> Config:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return parse_config(data, source)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_config_text(text, str(path))
