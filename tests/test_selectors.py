import pytest

from webhook.selectors import SelectorError, parse_label, parse_selector

CASES = [
    ({"matchLabels": {"a": "1"}}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "x"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "x"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}, {"a": "y"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {"a": "y"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {"a": "x"}, False),
    (
        {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
        {"a": "1"},
        False,
    ),
    ({}, {}, True),
    (None, {"anything": "x"}, True),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), CASES)
def test_selector_semantics_match_kubernetes(selector, labels, expected):
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a=b", ("a", "b")), ("example.com/a=", ("example.com/a", "")), ("k=v.1_2-3", ("k", "v.1_2-3"))],
)
def test_parse_label(text, expected):
    assert parse_label(text) == expected


@pytest.mark.parametrize("text", ["a", "=b", "a=b c", "-a=b", "a" * 64 + "=b", "Ex.com/a=b", 5])
def test_parse_label_rejects(text):
    with pytest.raises(SelectorError):
        parse_label(text)
