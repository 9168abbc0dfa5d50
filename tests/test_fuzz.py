"""Property tests and fuzzing: image parsing, the mutation and the admission layer, on any input.

Three layers, each with one property that must hold for every input hypothesis can think of:

* ``parse_image`` returns an :class:`ImageReference` whose ``str()`` parses back to an equal
  reference, or raises :class:`InvalidImageReference`; never anything else. Near-valid references
  built from the grammar exercise the valid path heavily, and an independent transcription of
  distribution's ``ReferenceRegexp`` (plus go-digest's rules) says which of them must be valid.
* ``mutate_pod`` on arbitrary pod-like dicts (random containers, images of any JSON type, existing
  ``imagePullSecrets`` with random entries, random labels, nulls and missing parts) returns
  operations that ``jsonpatch`` applies to the input, only appends, introduces no duplicate
  secret name, leaves the input untouched, and has nothing left to do on a second run.
* ``parse_review`` + ``review`` on arbitrary bytes and arbitrary JSON raise nothing but
  :class:`ReviewError`, and every answer they give is a serialisable, allowing AdmissionReview.
  Deciding on the fields ``parse_review`` decodes gives exactly the decision the whole document
  gives, whenever the whole document is valid JSON.

The example count is bounded by default (``FPW_FUZZ_EXAMPLES``, default 300 per property);
``FPW_SOAK=1`` raises it to 20000. The total tried is printed at the end of the module
(``pytest -s``).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import string
import time
from collections import Counter
from typing import Any
from unittest import mock

import jsonpatch
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from webhook.admission import API_VERSION, KIND, Decision, ReviewError, _decode_read_fields, parse_review, review
from webhook.config import INJECTED_ANNOTATION, Config, parse_config
from webhook.images import MAX_NAME_LENGTH, ImageReference, InvalidImageReference, parse_image
from webhook.mutation import MAX_WARNING_LENGTH, MAX_WARNINGS, Outcome, mutate_pod

SOAK = os.environ.get("FPW_SOAK", "") not in ("", "0")
EXAMPLES = int(os.environ.get("FPW_FUZZ_EXAMPLES") or (20000 if SOAK else 300))

settings.register_profile(
    "fpw-fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # a shared 2-core machine makes per-example timing meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("fpw-fuzz")

TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_inputs_tried():
    yield
    total = sum(TRIED.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
    print(f"\nfuzz inputs tried: {total} ({detail})")


# --------------------------------------------------------------------------------------------------
# Image references
# --------------------------------------------------------------------------------------------------

# distribution/reference regexp.go, transcribed independently of webhook.images (Go's \w and
# [[:xdigit:]] are ASCII classes). The domain is required here: ParseNormalizedNamed always parses
# "domain/remainder", and a "domain" the regexp cannot take as one (e.g. "a_b.c") would slip into
# the path in Go, leaving an empty domain; we count that as invalid, as webhook.images does.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_ORACLE = re.compile(
    rf"(?P<name>(?P<domain>{_HOST}(?::[0-9]+)?)/(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*))"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?",
    re.ASCII,
)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


def _oracle_split(name: str) -> tuple[str, str]:
    """splitDockerDomain, as in distribution/reference normalize.go."""
    first, slash, rest = name.partition("/")
    if not slash:
        return "docker.io", "library/" + name
    if first == "localhost":
        domain, remainder = first, rest
    elif first == "index.docker.io":
        domain, remainder = "docker.io", rest
    elif "." in first or ":" in first or first.lower() != first:
        domain, remainder = first, rest
    else:
        domain, remainder = "docker.io", name
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    return domain, remainder


def oracle(text: str) -> tuple[str, str, str | None, str | None] | None:
    """ParseNormalizedNamed's verdict: (domain, path, tag, digest), or None when it fails."""
    if re.fullmatch(r"[a-f0-9]{64}", text, re.ASCII):
        return None
    domain, remainder = _oracle_split(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        return None
    m = _ORACLE.fullmatch(f"{domain}/{remainder}")
    if m is None or len(m["path"]) > MAX_NAME_LENGTH:
        return None
    digest = m["digest"]
    if digest is not None:
        algorithm, _, encoded = digest.partition(":")
        size = _DIGEST_HEX.get(algorithm)
        if size is None or len(encoded) != size or not re.fullmatch(r"[a-f0-9]+", encoded):
            return None
    return m["domain"], m["path"], m["tag"], digest


def check_reference(text: Any) -> ImageReference | None:
    """The property: a reference that re-parses to itself, or InvalidImageReference."""
    TRIED["parse_image"] += 1
    try:
        ref = parse_image(text)
    except InvalidImageReference as exc:
        message = str(exc)
        assert message.startswith(("invalid reference format", "image reference")), message
        assert len(message) < 700, "error messages stay short whatever the input"
        return None
    assert isinstance(ref, ImageReference)
    assert all(isinstance(part, str) for part in (ref.registry, ref.repository))
    assert ref.tag is None or isinstance(ref.tag, str)
    assert ref.digest is None or isinstance(ref.digest, str)
    assert len(ref.repository) <= MAX_NAME_LENGTH
    again = parse_image(str(ref))
    assert again == ref, f"{text!r} -> {ref} -> {again}"
    assert str(again) == str(ref)
    return ref


LOWER_ALNUM = string.ascii_lowercase + string.digits
path_alnum = st.text(LOWER_ALNUM, min_size=1, max_size=6)
path_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    path_alnum,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), path_alnum), max_size=2),
)
domain_component = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
KNOWN_HOSTS = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "Docker.IO",
    "ghcr.io",
    "quay.io",
    "localhost",
    "LOCALHOST",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "europe-docker.pkg.dev",
    "[::1]",
    "[2001:db8::1]",
    "[fe80::1]",
    "library",
    "my-org",
]
host = st.one_of(
    st.sampled_from(KNOWN_HOSTS),
    st.builds(".".join, st.lists(domain_component, min_size=1, max_size=3)),
)
port = st.one_of(st.none(), st.sampled_from(["5000", "443", "0", "65535"]), st.integers(0, 999999).map(str))
tag = st.one_of(
    st.sampled_from(["latest", "v1", "1.2.3", "24.04", "_x", "A-b.c"]),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.builds(lambda n: "t" * n, st.integers(120, 132)),  # around the 128-character limit
)


@st.composite
def digest(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(["sha256", "sha384", "sha512", "sha1", "SHA256", "md5+x"]))
    size = _DIGEST_HEX.get(algorithm.lower(), 40)
    size = draw(st.sampled_from([size, size, size, size - 1, size + 1, 32]))
    hexchars = draw(st.sampled_from(["0123456789abcdef", "0123456789abcdef", "0123456789ABCDEF"]))
    return f"{algorithm}:" + draw(st.text(hexchars, min_size=size, max_size=size))


@st.composite
def grammar_reference(draw: st.DrawFn) -> str:
    """``[domain "/"] path [":" tag] ["@" digest]``, mostly valid."""
    text = "/".join(draw(st.lists(path_component, min_size=1, max_size=4)))
    if draw(st.booleans()):
        h = draw(host)
        p = draw(port)
        text = f"{h}:{p}/{text}" if p is not None else f"{h}/{text}"
    if draw(st.booleans()):
        text += ":" + draw(tag)
    if draw(st.integers(0, 3)) == 0:
        text += "@" + draw(digest())
    return text


NASTY = [*"/:@.-_A[]Z%+ \t\n\x00é\u2028ﬁ", "//", "::", "@@", "..", "__", "---", "\r\n"]


@st.composite
def near_valid_reference(draw: st.DrawFn) -> str:
    """A grammar reference with a few characters inserted, deleted or swapped."""
    text = draw(grammar_reference())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "upper", "repeat"]))
        if action == "insert":
            text = text[:i] + draw(st.sampled_from(NASTY)) + text[i:]
        elif action == "delete" and text:
            text = text[: max(i - 1, 0)] + text[i:]
        elif action == "upper":
            text = text[:i] + text[i:].upper()
        else:
            text = text[:i] + text[i : i + 4] * draw(st.integers(2, 70)) + text[i + 4 :]
    return text


image_string = st.one_of(grammar_reference(), near_valid_reference(), st.text(max_size=40))


@FUZZ
@given(st.text())
def test_parse_image_on_arbitrary_text(text):
    check_reference(text)


@FUZZ
@given(st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_parse_image_on_arbitrary_bytes(text):
    check_reference(text)


@FUZZ
@given(grammar_reference())
def test_grammar_references_parse_exactly_as_distribution_does(text):
    ref = check_reference(text)
    expected = oracle(text)
    assert (ref is None) == (expected is None), f"{text!r}: parse_image {ref!r}, distribution {expected!r}"
    if ref is not None:
        assert expected == (ref.registry, ref.repository, ref.tag, ref.digest)
    TRIED["parse_image (valid)"] += ref is not None


@FUZZ
@given(near_valid_reference())
def test_near_valid_references_parse_exactly_as_distribution_does(text):
    ref = check_reference(text)
    expected = oracle(text)
    assert (ref is None) == (expected is None), f"{text!r}: parse_image {ref!r}, distribution {expected!r}"
    if ref is not None:
        assert expected == (ref.registry, ref.repository, ref.tag, ref.digest)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JUNK = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(JUNK.filter(lambda v: not isinstance(v, str)))
def test_non_string_images_are_invalid_references(value):
    assert check_reference(value) is None


PATHOLOGICAL = {
    "alnum-run": "a" * 100_000 + "!",
    "dotted-labels": "a." * 50_000 + "!",
    "dashes": ("a" + "-" * 1000) * 100 + "!",
    "slashes": "a/" * 50_000 + "A",
    "underscores": "a_" * 50_000 + "_",
    "double-underscores": "a" + "__" * 50_000 + "a",
    "ipv6-unterminated": "[" + ":" * 100_000,
    "long-tag": "a" * 100_000 + ":" + "b" * 100_000,
    "long-digest": "a@sha256:" + "0" * 100_000,
    "host-and-junk-digest": "x.y/" + "a" * 100_000 + "@" + "A" * 100_000,
    "digest-algorithm-run": "a@" + "a+" * 50_000 + ":" + "0" * 64,
}


@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_references_are_refused_in_linear_time(text):
    """No regular expression of the grammar backtracks badly: 100k-character inputs take milliseconds."""
    timings = []
    for i in range(5):  # distinct strings, so the cache cannot answer
        started = time.perf_counter()
        check_reference(text + "x" * i)
        timings.append(time.perf_counter() - started)
    # The fastest of five: a busy machine can pause any one run; backtracking would slow them all
    # (by orders of magnitude: seconds to hours at this length).
    elapsed = min(timings)
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"


def test_grammar_strategies_reach_both_outcomes():
    """The oracle tests are only as good as their inputs: both verdicts must come up often."""
    outcomes: Counter[bool] = Counter()

    @settings(FUZZ, max_examples=200, database=None, derandomize=True)
    @given(grammar_reference())
    def sample(text):
        outcomes[oracle(text) is not None] += 1

    sample()
    print(f"\ngrammar references: {dict(outcomes)} (valid: True)")
    assert outcomes[True] > 60, outcomes
    assert outcomes[False] > 10, outcomes


# --------------------------------------------------------------------------------------------------
# The mutation
# --------------------------------------------------------------------------------------------------

SECRET_NAMES = ["dockerhub", "ecr-pull", "ghcr-my-org", "local-registry", "team-default", "ipv6"]
RULES = [
    {"registry": "*.dkr.ecr.*.amazonaws.com", "secrets": ["ecr-pull"]},
    {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org", "team-default"]},
    {"registry": "docker.io", "secrets": ["dockerhub"]},
    {"registry": "localhost:5000", "secrets": ["local-registry"]},
    {"registry": "[::1]", "secrets": ["ipv6", "dockerhub"]},
    {"registry": "quay.io", "secrets": ["dockerhub", "team-default"]},
]
CONFIGS: list[Config] = [
    parse_config({"rules": RULES}, "default selector"),
    parse_config({"rules": RULES, "annotate": False, "warnUnmatched": False}, "no annotation"),
    parse_config(
        {
            "rules": RULES,
            "podSelector": {
                "matchLabels": {"team": "ml"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db", "cache"]}],
            },
            "optOutLabel": "skip=yes",
        },
        "matchLabels selector",
    ),
    parse_config({"rules": [], "podSelector": {}}, "no rules"),
    parse_config(
        {
            "rules": [
                {"registry": "docker.io", "secrets": ["team-dockerhub"], "namespaces": ["team-*", "flyte?"]},
                {"registry": "ghcr.io", "secrets": ["ghcr-ml"], "namespaceSelector": {"matchLabels": {"team": "ml"}}},
                *RULES,
            ]
        },
        "namespace-scoped rules",
    ),
]
NAMESPACES = st.one_of(st.sampled_from([None, "team-a", "flyte1", "flytesnacks-development", ""]), st.text(max_size=8))

LABEL_KEYS = ["execution-id", "node-id", "pullsecrets-injection", "team", "tier", "skip", "app"]
label_value = st.one_of(
    st.sampled_from(["e1", "n0", "disabled", "ml", "db", "yes", ""]),
    st.text(max_size=6),
    JUNK,
)
labels = st.one_of(
    st.just({"execution-id": "e1", "node-id": "n0", "team": "ml"}),
    st.dictionaries(st.sampled_from(LABEL_KEYS) | st.text(max_size=6), label_value, max_size=5),
    JUNK,
)
annotations = st.one_of(
    st.dictionaries(
        st.sampled_from([INJECTED_ANNOTATION, "other", "a/b~c"]),
        st.one_of(st.sampled_from(["", "dockerhub", "dockerhub,,ecr-pull", ",x,"]), st.text(max_size=8), JUNK),
        max_size=3,
    ),
    JUNK,
)
metadata = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "labels": labels,
            "annotations": annotations,
            "name": st.text(max_size=8) | JUNK,
            "generateName": st.text(max_size=8),
        },
    ),
    JUNK,
)
image_value = st.one_of(image_string, st.sampled_from(["ubuntu", "ghcr.io/my-org/app:1", "[::1]:5000/x"]), JUNK)
container = st.one_of(
    st.fixed_dictionaries(
        {"name": st.text(max_size=4)},
        optional={
            "image": image_value,
            "env": st.just([{"name": "PASSWORD", "value": "hunter2"}]),
            "imagePullPolicy": st.sampled_from(["Always", None]),
        },
    ),
    JUNK,
)
containers = st.one_of(st.lists(container, max_size=4), JUNK)
secret_entry = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(SECRET_NAMES)}),
    st.fixed_dictionaries({"name": st.one_of(st.text(max_size=6), JUNK)}),
    st.fixed_dictionaries({}, optional={"other": JUNK}),
    JUNK,
)
pull_secrets = st.one_of(st.lists(secret_entry, max_size=5), JUNK)
spec = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "initContainers": containers,
            "containers": containers,
            "ephemeralContainers": containers,
            "imagePullSecrets": pull_secrets,
            "restartPolicy": JUNK,
        },
    ),
    JUNK,
)
pod = st.fixed_dictionaries({}, optional={"apiVersion": st.just("v1"), "metadata": metadata, "spec": spec})
ALLOWED_PATHS = ("/spec/imagePullSecrets", "/metadata/annotations")


def names_of(entries: Any) -> list[Any]:
    return [e.get("name") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def check_mutation(pod_obj: dict[str, Any], config: Config, namespace: str | None = None) -> None:
    TRIED["mutate_pod"] += 1
    before = copy.deepcopy(pod_obj)
    mutation = mutate_pod(pod_obj, config, namespace)
    assert pod_obj == before, "mutate_pod modified its input"
    assert (mutation.outcome is Outcome.PATCHED) == bool(mutation.patch)
    assert len(mutation.warnings) <= MAX_WARNINGS
    assert all(len(w) <= MAX_WARNING_LENGTH for w in mutation.warnings)
    for op in mutation.patch:
        assert op["op"] == "add", op
        assert op["path"].startswith(ALLOWED_PATHS), op
    orjson.dumps(mutation.patch)  # the response must serialise

    patched = jsonpatch.apply_patch(pod_obj, mutation.patch)  # raises if an op does not apply
    assert pod_obj == before
    if not mutation.patch:
        assert patched == before
    else:
        TRIED["mutate_pod (patched)"] += 1
        old = before["spec"].get("imagePullSecrets") or []
        new = patched["spec"]["imagePullSecrets"]
        assert new[: len(old)] == old, "an existing entry was dropped or moved"
        assert new[len(old) :] == [{"name": n} for n in mutation.added]
        assert len(set(mutation.added)) == len(mutation.added), "a secret added twice"
        old_names = names_of(old)
        assert not [n for n in mutation.added if n in old_names], "a secret the pod had was added again"
        assert set(mutation.added) <= {s for rule in config.rules.rules for s in rule.secrets}
        # nothing outside spec.imagePullSecrets and the annotation changed
        rest_before = {k: v for k, v in before.items() if k not in ("spec", "metadata")}
        assert {k: v for k, v in patched.items() if k not in ("spec", "metadata")} == rest_before
        assert {k: v for k, v in patched["spec"].items() if k != "imagePullSecrets"} == {
            k: v for k, v in before["spec"].items() if k != "imagePullSecrets"
        }
        if config.annotate and isinstance(before.get("metadata"), dict):
            recorded = patched["metadata"]["annotations"][INJECTED_ANNOTATION].split(",")
            assert set(mutation.added) <= set(recorded)
    again = mutate_pod(patched, config, namespace)
    assert again.patch == [], f"second run wants {again.patch}"


@FUZZ
@given(pod, st.sampled_from(CONFIGS), NAMESPACES)
def test_mutation_properties_on_arbitrary_pods(pod_obj, config, namespace):
    check_mutation(pod_obj, config, namespace)


@FUZZ
@given(
    st.lists(image_value, max_size=6),
    st.lists(image_value, max_size=2),
    st.lists(secret_entry, max_size=4) | st.none(),
    st.sampled_from([*CONFIGS[:3], CONFIGS[4]]),
    NAMESPACES,
)
def test_mutation_properties_on_flyte_pods(images, init_images, existing, config, namespace):
    """In-scope pods (labels match every config), so the injection path runs on almost every example."""
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)],
        "initContainers": [{"name": f"i{i}", "image": img} for i, img in enumerate(init_images)],
    }
    if existing is not None:
        spec["imagePullSecrets"] = existing
    pod_obj = {"metadata": {"labels": {"execution-id": "e", "node-id": "n", "team": "ml"}}, "spec": spec}
    check_mutation(pod_obj, config, namespace)


# --------------------------------------------------------------------------------------------------
# The admission layer
# --------------------------------------------------------------------------------------------------


def decide(body: bytes, config: Config) -> tuple[dict[str, Any] | None, Decision | ReviewError]:
    try:
        obj = parse_review(body)
        return obj, review(obj, config)
    except ReviewError as exc:
        return None, exc


def decide_on_the_whole_document(body: bytes, config: Config) -> Decision | ReviewError:
    with mock.patch("webhook.admission._decode_read_fields", side_effect=msgspec.DecodeError):
        return decide(body, config)[1]


def same(a: Decision | ReviewError, b: Decision | ReviewError) -> bool:
    if isinstance(a, ReviewError) or isinstance(b, ReviewError):
        return type(a) is type(b) and (a.status, a.message) == (b.status, b.message)  # type: ignore[union-attr]
    return a == b


def pod_create_review(pod_obj: Any, **request: Any) -> bytes:
    """An AdmissionReview of a pod CREATE, as bytes; ``request`` adds or overrides fields."""
    fields = {"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE", "object": pod_obj}
    return orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "request": {**fields, **request}})


def check_admission(body: bytes, config: Config) -> None:
    """parse_review + review raise nothing but ReviewError; what they answer is a valid allow."""
    TRIED["admission"] += 1
    obj, decision = decide(body, config)
    whole = decide_on_the_whole_document(body, config)
    try:
        _decode_read_fields(body)
        TRIED["admission (fields read decode)"] += 1
    except (msgspec.MsgspecError, RecursionError):
        pass
    # The subset decode skips what it never reads without checking number ranges (orjson refuses
    # 1e999): the one place it may answer where the whole document is refused as invalid JSON.
    if not (isinstance(whole, ReviewError) and whole.message.startswith("request body is not valid JSON")):
        assert same(decision, whole), (decision, whole)
    if isinstance(decision, ReviewError):
        refused = decision
        assert 400 <= refused.status < 500
        assert refused.message
        return
    TRIED["admission (answered)"] += 1
    out = orjson.loads(orjson.dumps(decision.response))
    assert out["apiVersion"] == API_VERSION
    assert out["kind"] == KIND
    response = out["response"]
    assert response["uid"] == obj["request"]["uid"]
    assert response["allowed"] is True
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = orjson.loads(base64.b64decode(response["patch"]))
        jsonpatch.apply_patch(obj["request"]["object"], ops)


@FUZZ
@given(st.binary(max_size=200))
def test_admission_on_arbitrary_bytes(body):
    check_admission(body, CONFIGS[0])


@FUZZ
@given(JUNK)
def test_admission_on_arbitrary_json(value):
    check_admission(orjson.dumps(value), CONFIGS[0])


request_kind = st.one_of(
    st.just({"group": "", "version": "v1", "kind": "Pod"}),
    st.fixed_dictionaries(
        {}, optional={"group": JUNK, "version": JUNK, "kind": st.sampled_from(["Pod", "Job"]) | JUNK}
    ),
    JUNK,
)
request = st.fixed_dictionaries(
    {},
    optional={
        "uid": st.one_of(st.just("0b1e4c2a-uid"), st.text(max_size=8), JUNK),
        "kind": request_kind,
        "operation": st.one_of(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]), JUNK),
        "subResource": st.one_of(st.sampled_from(["", "status", "ephemeralcontainers"]), JUNK),
        "namespace": st.one_of(st.text(max_size=8), JUNK),
        "dryRun": JUNK,
        "userInfo": JUNK,
        "object": st.one_of(pod, JUNK),
        "oldObject": JUNK,
    },
)
envelope = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": st.one_of(st.just(API_VERSION), st.sampled_from(["admission.k8s.io/v1beta1", "v1"]), JUNK),
        "kind": st.one_of(st.just(KIND), st.sampled_from(["AdmissionRequest", "Pod"]), JUNK),
        "request": st.one_of(request, JUNK),
        "response": JUNK,
    },
)


@FUZZ
@given(envelope, st.sampled_from(CONFIGS))
def test_admission_on_near_valid_reviews(review_obj, config):
    check_admission(orjson.dumps(review_obj), config)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"uid": st.text(min_size=1, max_size=8), "kind": st.just({"group": "", "version": "v1", "kind": "Pod"})},
        optional={"object": pod, "dryRun": st.booleans(), "namespace": NAMESPACES},
    ),
    st.sampled_from(CONFIGS),
)
def test_admission_on_pod_creates(request_obj, config):
    """Valid envelopes around random pods: the decision path runs on every example."""
    request_obj["operation"] = "CREATE"
    body = orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "request": request_obj})
    assume(len(body) < 1_000_000)
    check_admission(body, config)


# Pods as the apiserver serialises them: every field well typed, plus fields the webhook never
# reads. These always take the fields-read decode, so the comparison with the whole document
# bites on every example.
words = st.text(string.ascii_lowercase + "-", max_size=6)
unread = st.dictionaries(
    st.sampled_from(["env", "volumes", "resources", "args", "status", "uid", "x"]),
    st.recursive(
        st.none() | st.integers(-(2**53), 2**53) | words, lambda c: st.lists(c, max_size=3) | st.dictionaries(words, c)
    ),
    max_size=3,
)
typed_container = st.builds(
    lambda image, extra: {"name": "c", **extra, **({} if image is None else {"image": image})},
    st.none() | image_string | st.sampled_from(["ubuntu", "ghcr.io/my-org/app:1", "localhost:5000/x"]),
    unread,
)
typed_pod = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"labels": st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(["e1", "n0", "disabled", ""]))},
            optional={
                "name": words,
                "generateName": words,
                "annotations": st.dictionaries(st.sampled_from([INJECTED_ANNOTATION, "other"]), words),
                "uid": words,
            },
        ),
        "spec": st.fixed_dictionaries(
            {"containers": st.lists(typed_container, min_size=1, max_size=4)},
            optional={
                "initContainers": st.lists(typed_container, max_size=3),
                "ephemeralContainers": st.lists(typed_container, max_size=2),
                "imagePullSecrets": st.lists(
                    st.fixed_dictionaries({"name": st.sampled_from(SECRET_NAMES)}), max_size=3
                ),
                "volumes": unread,
            },
        ),
        "status": unread,
    }
)


@FUZZ
@given(typed_pod, unread, st.sampled_from(CONFIGS), NAMESPACES, st.booleans())
def test_admission_on_apiserver_shaped_pods(pod_obj, extra, config, namespace, dry_run):
    known = {
        "uid": "u-1",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "dryRun": dry_run,
        "oldObject": None,
    }
    body = pod_create_review(pod_obj, **{**extra, **known})
    _decode_read_fields(body)  # the fast path is the one under test
    check_admission(body, config)


# --------------------------------------------------------------------------------------------------
# What the fuzzers found, kept as plain examples
# --------------------------------------------------------------------------------------------------

FLYTE = {"execution-id": "e", "node-id": "n"}


@pytest.mark.parametrize(
    ("pod_obj", "config", "outcome", "added"),
    [
        # an imagePullSecrets entry whose name is not a string (was: TypeError, unhashable list)
        ({"metadata": {"labels": FLYTE}, "spec": {"imagePullSecrets": [{"name": []}]}}, CONFIGS[0], "unchanged", ()),
        (
            {
                "metadata": {"labels": FLYTE},
                "spec": {"containers": [{"image": "ubuntu"}], "imagePullSecrets": [{"name": {}}]},
            },
            CONFIGS[0],
            "patched",
            ("dockerhub",),
        ),
        # a label value that is not a string, under an In/NotIn selector (was: TypeError, unhashable list)
        ({"metadata": {"labels": {"team": []}}, "spec": {}}, CONFIGS[2], "skipped-not-flyte", ()),
        (
            {"metadata": {"labels": {"team": "ml", "tier": ["db"]}}, "spec": {"containers": [{"image": "ubuntu"}]}},
            CONFIGS[2],
            "patched",
            ("dockerhub",),
        ),
    ],
    ids=["secret-name-list", "secret-name-dict", "label-in-list", "label-notin-list"],
)
def test_inputs_the_fuzzers_found(pod_obj, config, outcome, added):
    mutation = mutate_pod(pod_obj, config)
    assert mutation.outcome == outcome
    assert mutation.added == added
    check_mutation(pod_obj, config)
    body = pod_create_review(pod_obj, uid="u")
    check_admission(body, config)
