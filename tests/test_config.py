"""Config loading: everything validated up front, errors name the rule."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.config import ConfigError, load_config, load_config_text, parse_config


def test_example_config_loads():
    config = load_config("examples/rules.yaml")
    assert len(config.rules) == 6
    assert config.opt_out_label == ("pullsecrets-injection", "disabled")
    assert config.pod_selector.matches({"execution-id": "a", "node-id": "n0"})
    assert not config.pod_selector.matches({"execution-id": "a"})


def test_defaults_when_only_rules_are_given():
    config = parse_config({"rules": [{"registry": "ghcr.io", "secrets": ["g"]}]})
    assert config.warn_unmatched
    assert config.annotate
    assert config.pod_selector.matches({"execution-id": "x", "node-id": "y"})
    assert config.opt_out_label == ("pullsecrets-injection", "disabled")


def test_a_single_secret_may_be_a_string_and_duplicates_collapse():
    config = parse_config(
        {"rules": [{"registry": "ghcr.io", "secrets": "g"}, {"registry": "q.io", "secrets": ["a", "a"]}]}
    )
    assert config.rules.rules[0].secrets == ("g",)
    assert config.rules.rules[1].secrets == ("a",)


BAD = [
    ("rules: {}", "'rules' must be a list"),
    ("- a\n- b", "must be a mapping"),
    ("rules: [oops]", r"rules\[0\]: must be a mapping"),
    (
        "rules: [{registry: ghcr.io}]",
        r"rules\[0\] \(registry 'ghcr.io'\): 'secrets' must be a non-empty list",
    ),
    ("rules: [{registry: ghcr.io, secrets: []}]", "non-empty list"),
    ("rules: [{registry: ghcr.io, secrets: [Bad_Name]}]", "not a valid Kubernetes name"),
    ("rules: [{registry: ghcr.io, secrets: [1]}]", "not a valid Kubernetes name"),
    (
        "rules: [{registry: 'ghcr..io', secrets: [a]}]",
        r"rules\[0\] \(registry 'ghcr..io'\): .*invalid host label",
    ),
    ("rules: [{secrets: [a]}]", "registry pattern must be a non-empty string"),
    ("rules: [{registry: ghcr.io, secrets: [a], extra: 1}]", r"unknown key\(s\) \['extra'\]"),
    (
        "rules:\n- {registry: ghcr.io, secrets: [a]}\n- {registry: 'x.io:port', secrets: [b]}",
        r"rules\[1\] \(registry 'x.io:port'\)",
    ),
    ("rulez: []", r"unknown top-level key\(s\) \['rulez'\]"),
    ("optOutLabel: disabled", "want key=value"),
    ("optOutLabel: 'bad key=x'", "invalid label key"),
    ("podSelector: {matchExpressions: [{key: a, operator: Has}]}", "operator 'Has'"),
    ("podSelector: {matchExpressions: [{key: a, operator: In}]}", "needs at least one value"),
    ("podSelector: {matchLabels: [a]}", "must be a mapping"),
    ("warnUnmatched: 'yes'", "must be true or false"),
    ("rules: [\n  unclosed", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_configs_are_refused_with_a_message_that_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        load_config_text(text, "rules.yaml")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_is_zero_rules():
    assert len(load_config_text("").rules) == 0


# load_yaml builds from parser events to keep big rule files from peaking at ~45x their size; it
# must give exactly what yaml.safe_load gives, errors included.
YAML_DOCUMENTS = {
    "rules": "rules:\n  - registry: ghcr.io/my-org\n    secrets: [a, b]\n  - {registry: docker.io, secrets: c}\n",
    "empty": "",
    "comment only": "# nothing\n",
    "explicit null": "~\n",
    "top-level scalar": "just text\n",
    "top-level list": "- 1\n- two\n- [3, {four: 4}]\n",
    "YAML 1.1 scalars": "a: yes\nb: off\nc: 0x1F\nd: 0o17\ne: 012\nf: 1_000\ng: 1e3\nh: .inf\ni: -.inf\nj: null\n",
    "timestamps": "d: 2001-12-14\nt: 2001-12-14t21:59:43.10-05:00\n",
    "quoted": "a: 'yes'\nb: \"0x1F\"\nc: '~'\n",
    "block scalars": "a: |\n  line 1\n  line 2\nb: >-\n  folded\n  text\n",
    "anchors and aliases": "base: &b {registry: ghcr.io, secrets: [x]}\nrules: [*b, *b]\n",
    "anchored scalar": "a: &s value\nb: *s\n",
    "merge key": "base: &b {secrets: [x]}\nrule:\n  <<: *b\n  registry: ghcr.io\n",
    "merge key list": "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n",
    "quoted merge-looking key": "'<<': not a merge\n",
    "explicit tags": "a: !!str 123\nb: !!int '7'\nc: !!float '1'\nd: !!binary aGVsbG8=\n",
    "tagged collections": "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\n",
    "duplicate keys": "a: 1\na: 2\n",
    "int and bool keys": "1: one\ntrue: yes\n~: none\n",
    "complex key": "? [a, b]\n: value\n",
    "recursive": "a: &a [*a]\n",
    "unicode": 'name: caf\u00e9\nemoji: "\\U0001F600"\n',
    "two documents": "a: 1\n---\nb: 2\n",
    "unknown tag": "a: !custom x\n",
    "python tag": "a: !!python/object:os.system ls\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "unclosed flow": "a: [1, 2\n",
    "undefined alias": "a: *nope\n",
    "tab indentation": "a:\n\tb: 1\n",
    "bad timestamp": "a: !!timestamp not-a-date\n",
}


def safe_load(text):
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _outcome(load, text):
    try:
        return "ok", repr(load(text))
    except Exception as exc:  # the comparison includes the error, type and message
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("text", YAML_DOCUMENTS.values(), ids=YAML_DOCUMENTS.keys())
def test_load_yaml_matches_safe_load(text):
    from webhook.config import load_yaml

    for given_as in (text, text.encode()):  # error messages name the input's type
        assert _outcome(load_yaml, given_as) == _outcome(safe_load, given_as)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=30,
    ),
    st.sampled_from([None, True, False]),
)
def test_load_yaml_round_trips_whatever_safe_dump_writes(data, flow):
    from webhook.config import load_yaml

    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    assert load_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "name",
    ["rules", "empty", "YAML 1.1 scalars", "timestamps", "quoted", "block scalars", "anchors and aliases", "unicode"],
)
def test_ordinary_documents_are_built_from_events_not_handed_back(name):
    from webhook.config import _build_from_events

    assert _build_from_events(YAML_DOCUMENTS[name]) == safe_load(YAML_DOCUMENTS[name])
