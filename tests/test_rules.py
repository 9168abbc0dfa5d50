"""Rule matching: kubelet matchImages semantics, plus the choices we made stricter."""

import pytest

from webhook.images import parse_image
from webhook.rules import Pattern, PatternError, Rule, RuleSet, image_matches, parse_pattern

MATCHES = [
    # pattern, image, expected, why
    ("docker.io", "ubuntu", True, "short names are Docker Hub"),
    ("docker.io", "library/ubuntu:24.04", True, "library names are Docker Hub"),
    ("docker.io", "docker.io/bitnami/redis", True, "explicit docker.io"),
    ("docker.io", "index.docker.io/bitnami/redis", True, "index.docker.io is Docker Hub"),
    ("index.docker.io", "ubuntu", True, "an index.docker.io rule covers short names"),
    ("registry-1.docker.io", "ubuntu", True, "registry-1.docker.io rule covers Docker Hub"),
    ("https://index.docker.io/v1/", "ubuntu", True, "docker config key form"),
    ("docker.io/library", "ubuntu", True, "official images path prefix"),
    ("docker.io/library", "bitnami/redis", False, "other Hub namespaces are not official"),
    ("docker.io/bitnami", "bitnami/redis:7", True, "Hub user path prefix"),
    ("docker.io", "ghcr.io/a/b", False, "other registry"),
    ("ghcr.io", "ghcr.io/my-org/app:1", True, "exact host"),
    ("GHCR.io", "ghcr.io/my-org/app", True, "hosts compare case-insensitively"),
    ("ghcr.io/my-org", "ghcr.io/my-org/app", True, "path prefix"),
    ("ghcr.io/my-org", "ghcr.io/my-org/team/app@sha256:" + "a" * 64, True, "deep path and digest"),
    ("ghcr.io/my-org", "ghcr.io/my-organization/app", False, "prefix is per segment, not per character"),
    ("ghcr.io/my-org", "ghcr.io/other/app", False, "other org"),
    ("ghcr.io/my-org/app", "ghcr.io/my-org/app:v2", True, "path equal to the repository"),
    ("ghcr.io/my-org/", "ghcr.io/my-org/app", True, "trailing slash ignored"),
    ("https://ghcr.io/v2/", "ghcr.io/x/y", True, "scheme and /v2/ ignored"),
    ("https://ghcr.io/v2/my-org", "ghcr.io/my-org/app", True, "leading /v2/ is the API version (kubelet)"),
    ("https://ghcr.io/v2/my-org", "ghcr.io/other/app", False, "the path after /v2/ still limits"),
    ("ghcr.io/v2", "ghcr.io/v2/app", True, "a bare v2 segment is a namespace"),
    ("ghcr.io/v2", "ghcr.io/other/app", False, "a bare v2 segment does not widen to the host"),
    ("index.docker.io/v1/library", "ubuntu", True, "leading /v1/ then a path"),
    ("http://ghcr.io", "ghcr.io/x/y", True, "http scheme ignored"),
    ("*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1", True, "ECR glob"),
    ("*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.eu-west-3.amazonaws.com/a/b", True, "any region"),
    ("*.dkr.ecr.*.amazonaws.com", "123.dkr.ecr.us-east-1.amazonaws.com.cn/app", False, "label count differs"),
    ("*.dkr.ecr.*.amazonaws.com", "a.b.dkr.ecr.us-east-1.amazonaws.com/app", False, "glob never spans a dot"),
    ("*.azurecr.io", "myreg.azurecr.io/app", True, "one-label glob"),
    ("*.azurecr.io", "a.b.azurecr.io/app", False, "glob never spans a dot (kubelet)"),
    ("*.azurecr.io", "azurecr.io/app", False, "glob needs its label"),
    ("*", "localhost/app", True, "single label glob matches single label host"),
    ("*", "ghcr.io/app", False, "single label glob does not match two labels"),
    ("*-docker.pkg.dev", "us-docker.pkg.dev/proj/repo/img", True, "Artifact Registry glob"),
    ("*-docker.pkg.dev", "europe-west1-docker.pkg.dev/p/r/i", True, "Artifact Registry region"),
    ("gcr.io", "us.gcr.io/p/i", False, "exact host does not cover subdomains"),
    ("?cr.io", "gcr.io/p/i", True, "? is one character"),
    ("?cr.io", "ghcr.io/p/i", False, "? is exactly one character"),
    ("[gq]cr.io", "gcr.io/p/i", True, "character class"),
    ("[!g]cr.io", "gcr.io/p/i", False, "negated character class"),
    ("[^g]cr.io", "qcr.io/p/i", True, "negated character class with ^"),
    ("localhost:5000", "localhost:5000/tools/x:1", True, "port equal"),
    ("localhost:5000", "localhost/tools/x", False, "pattern port needs the image port"),
    ("localhost", "localhost:5000/tools/x", False, "no port matches only no port"),
    ("localhost", "localhost/tools/x", True, "no port, no port"),
    ("registry.local:443", "registry.local/app", False, "no implicit default port"),
    ("*.corp.example:5000", "reg.corp.example:5000/app", True, "glob with port"),
    ("*.corp.example:5000", "reg.corp.example:5001/app", False, "glob with other port"),
    ("[::1]:5000", "[::1]:5000/app", True, "IPv6 host with port"),
    ("[::1]:5000", "[::1]/app", False, "IPv6 without port"),
    ("registry.gitlab.com/group", "registry.gitlab.com/group/sub/proj:tag", True, "GitLab group prefix"),
]


@pytest.mark.parametrize(("pattern", "image", "expected", "why"), MATCHES, ids=[m[3] for m in MATCHES])
def test_image_matches(pattern, image, expected, why):
    assert image_matches(pattern, image) is expected, why


BAD_PATTERNS = [
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("/path", "no host"),
    ("ghcr..io", "invalid host label"),
    ("ghcr.io:abc", "not a number"),
    ("ghcr.io/My-Org", "path segment"),
    ("ghcr.io//x", "path segment"),
    ("[gq.io", "unterminated"),
    ("[].io", "unterminated"),
    ("gh_cr.io", "invalid host label"),
    ("[zz:1]:5000", "invalid IPv6"),
    ("a]b.io", "unexpected"),
    ("[z-a]cr.io", "invalid character class"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD_PATTERNS, ids=[b[0] or "empty" for b in BAD_PATTERNS])
def test_bad_patterns_are_refused_with_a_reason(pattern, message):
    with pytest.raises(PatternError, match=message):
        parse_pattern(pattern)


def test_every_matching_rule_contributes_in_rule_order_without_duplicates():
    rules = RuleSet(
        [
            Rule.create("ghcr.io", ["ghcr-all", "shared"]),
            Rule.create("*.io", ["star-io"]),
            Rule.create("ghcr.io/my-org", ["my-org", "shared"]),
            Rule.create("quay.io", ["quay"]),
        ]
    )
    assert rules.secrets_for(parse_image("ghcr.io/my-org/app")) == ("ghcr-all", "shared", "star-io", "my-org")
    assert rules.secrets_for(parse_image("ghcr.io/else/app")) == ("ghcr-all", "shared", "star-io")
    assert rules.secrets_for(parse_image("ubuntu")) == ("star-io",)  # docker.io is a .io host
    assert rules.secrets_for(parse_image("registry.example.com/x")) == ()


def test_index_and_scan_agree_with_the_single_pattern_matcher():
    """The indexed RuleSet must answer exactly what matching every pattern one by one answers."""
    patterns = sorted({m[0] for m in MATCHES})
    rules = RuleSet([Rule.create(p, [f"s{i}"]) for i, p in enumerate(patterns)])
    for _, image, _, _ in MATCHES:
        ref = parse_image(image)
        expected = tuple(f"s{i}" for i, p in enumerate(patterns) if parse_pattern(p).matches(ref))
        assert rules.secrets_for(ref) == expected, image


def test_many_rules_only_scan_globs_of_the_same_shape(monkeypatch):
    rules = RuleSet(
        [Rule.create(f"reg{i}.example.com", [f"s{i}"]) for i in range(5000)]
        + [Rule.create(f"*.r{i}.example.org", [f"g{i}"]) for i in range(5000)]
    )
    tried: list[str] = []
    real = Pattern.matches_parts

    def counting(self: Pattern, host: str, port: str | None, repository: str) -> bool:
        tried.append(host)
        return real(self, host, port, repository)

    monkeypatch.setattr(Pattern, "matches_parts", counting)
    assert rules.secrets_for(parse_image("reg4242.example.com/a")) == ("s4242",)
    assert tried == [], "an exact host needs no glob"
    assert rules.secrets_for(parse_image("x.r77.example.org/a")) == ("g77",)
    assert tried == ["x.r77.example.org"], "one glob of 5,000 tried: the one with the same literal suffix"
    # a three-label host never reaches the four-label globs
    assert rules.secrets_for(parse_image("r77.example.org/a")) == ()
    assert tried == ["x.r77.example.org"]
