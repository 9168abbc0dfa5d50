"""Config loading: everything validated up front, errors name the rule."""

import pytest

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
