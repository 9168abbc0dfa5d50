"""Tests for webhook.images: image reference parsing (distribution/reference grammar)."""

from __future__ import annotations

import pickle

import pytest

from webhook.images import (
    ImageReference,
    InvalidImageReference,
    normalize_registry_host,
    parse_image,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA384 = "sha384:" + "0123456789abcdef" * 6
SHA512 = "sha512:" + "0123456789abcdef" * 8
HEX64 = "0123456789abcdef" * 4

# The limit is on the path alone (distribution/reference v0.6, as the kubelet parses): the host
# does not count, the "library/" a Docker Hub short name gains does.
NAME_255 = "example.com/" + "a" * 255
NAME_256 = "example.com/" + "a" * 256
SHORT_255 = "a" * 247
SHORT_256 = "a" * 248

# (input, registry, repository, tag, digest)
VALID = [
    # Docker Hub short and library names
    pytest.param("ubuntu", "docker.io", "library/ubuntu", None, None, id="short-name"),
    pytest.param("a", "docker.io", "library/a", None, None, id="single-char"),
    pytest.param("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, id="short-name-tag"),
    pytest.param("ubuntu:latest", "docker.io", "library/ubuntu", "latest", None, id="short-name-latest"),
    pytest.param("library/ubuntu", "docker.io", "library/ubuntu", None, None, id="explicit-library"),
    pytest.param("docker.io/ubuntu", "docker.io", "library/ubuntu", None, None, id="docker-io-short"),
    pytest.param("docker.io/library/ubuntu", "docker.io", "library/ubuntu", None, None, id="docker-io-full"),
    pytest.param("index.docker.io/ubuntu", "docker.io", "library/ubuntu", None, None, id="index-docker-io"),
    pytest.param(
        "index.docker.io/library/ubuntu:20.04",
        "docker.io",
        "library/ubuntu",
        "20.04",
        None,
        id="index-docker-io-full",
    ),
    pytest.param("index.docker.io/user/app", "docker.io", "user/app", None, None, id="index-docker-io-user"),
    pytest.param(
        "registry-1.docker.io/ubuntu",
        "registry-1.docker.io",
        "ubuntu",
        None,
        None,
        id="registry-1-not-aliased",
    ),
    pytest.param("Docker.io/ubuntu", "Docker.io", "ubuntu", None, None, id="docker-io-uppercase-not-aliased"),
    pytest.param("user/repo", "docker.io", "user/repo", None, None, id="user-repo"),
    pytest.param("user/repo:v1.2.3", "docker.io", "user/repo", "v1.2.3", None, id="user-repo-tag"),
    pytest.param("user/team/repo", "docker.io", "user/team/repo", None, None, id="hub-three-components"),
    pytest.param(
        "flyteorg/flytekit:py3.11-1.10.0",
        "docker.io",
        "flyteorg/flytekit",
        "py3.11-1.10.0",
        None,
        id="flytekit",
    ),
    # Single component that looks like a host is still a Docker Hub image
    pytest.param("docker.io", "docker.io", "library/docker.io", None, None, id="bare-docker-io-is-repo"),
    pytest.param("example.com", "docker.io", "library/example.com", None, None, id="bare-domain-is-repo"),
    pytest.param("localhost", "docker.io", "library/localhost", None, None, id="bare-localhost-is-repo"),
    pytest.param("a:5000", "docker.io", "library/a", "5000", None, id="no-slash-port-is-tag"),
    pytest.param("localhost:5000", "docker.io", "library/localhost", "5000", None, id="bare-localhost-port-is-tag"),
    pytest.param(HEX64 + ":v1", "docker.io", "library/" + HEX64, "v1", None, id="hex64-with-tag"),
    pytest.param("a" * 63, "docker.io", "library/" + "a" * 63, None, None, id="hex-like-63"),
    # A bare digest is not a digest reference: "sha256" is the repository, the hex is a tag
    pytest.param(SHA256, "docker.io", "library/sha256", HEX64, None, id="bare-digest-is-repo-and-tag"),
    # Tags
    pytest.param("ubuntu:TAG", "docker.io", "library/ubuntu", "TAG", None, id="tag-uppercase"),
    pytest.param("ubuntu:_tag", "docker.io", "library/ubuntu", "_tag", None, id="tag-leading-underscore"),
    pytest.param("ubuntu:1", "docker.io", "library/ubuntu", "1", None, id="tag-single-char"),
    pytest.param("ubuntu:a-b.c_d", "docker.io", "library/ubuntu", "a-b.c_d", None, id="tag-all-separators"),
    pytest.param("ubuntu:v1..--", "docker.io", "library/ubuntu", "v1..--", None, id="tag-trailing-punct"),
    pytest.param("ubuntu:" + "t" * 128, "docker.io", "library/ubuntu", "t" * 128, None, id="tag-128"),
    # Digests
    pytest.param("ubuntu@" + SHA256, "docker.io", "library/ubuntu", None, SHA256, id="digest-sha256"),
    pytest.param("ubuntu@" + SHA384, "docker.io", "library/ubuntu", None, SHA384, id="digest-sha384"),
    pytest.param("ubuntu@" + SHA512, "docker.io", "library/ubuntu", None, SHA512, id="digest-sha512"),
    pytest.param("ubuntu:22.04@" + SHA256, "docker.io", "library/ubuntu", "22.04", SHA256, id="tag-and-digest"),
    pytest.param("ghcr.io/o/r:v1@" + SHA256, "ghcr.io", "o/r", "v1", SHA256, id="ghcr-tag-and-digest"),
    pytest.param("localhost:5000/a@" + SHA512, "localhost:5000", "a", None, SHA512, id="port-digest"),
    # localhost
    pytest.param("localhost/a", "localhost", "a", None, None, id="localhost"),
    pytest.param("localhost/a:v1", "localhost", "a", "v1", None, id="localhost-tag"),
    pytest.param("localhost:5000/a", "localhost:5000", "a", None, None, id="localhost-port"),
    pytest.param("localhost:5000/a/b:c", "localhost:5000", "a/b", "c", None, id="localhost-port-nested"),
    # host:port and IP addresses
    pytest.param("myregistry:5000/app", "myregistry:5000", "app", None, None, id="host-port"),
    pytest.param("registry.local:443/a/b:t", "registry.local:443", "a/b", "t", None, id="fqdn-port"),
    pytest.param("10.0.0.1/app", "10.0.0.1", "app", None, None, id="ipv4"),
    pytest.param("10.0.0.1:5000/app:1", "10.0.0.1:5000", "app", "1", None, id="ipv4-port"),
    pytest.param("[::1]:5000/a", "[::1]:5000", "a", None, None, id="ipv6-loopback-port"),
    pytest.param("[2001:db8::1]/a", "[2001:db8::1]", "a", None, None, id="ipv6"),
    pytest.param("[2001:DB8::1]:80/a:v", "[2001:DB8::1]:80", "a", "v", None, id="ipv6-uppercase-port-tag"),
    pytest.param("[::1]/a", "[::1]", "a", None, None, id="ipv6-loopback"),
    # Cloud registries
    pytest.param(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:v1",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "team/app",
        "v1",
        None,
        id="ecr",
    ),
    pytest.param("public.ecr.aws/lambda/python:3.12", "public.ecr.aws", "lambda/python", "3.12", None, id="ecr-public"),
    pytest.param("ghcr.io/my-org/app", "ghcr.io", "my-org/app", None, None, id="ghcr"),
    pytest.param("ghcr.io/flyteorg/flytekit:v1", "ghcr.io", "flyteorg/flytekit", "v1", None, id="ghcr-tag"),
    pytest.param(
        "registry.gitlab.com/group/sub/proj:tag",
        "registry.gitlab.com",
        "group/sub/proj",
        "tag",
        None,
        id="gitlab-nested",
    ),
    pytest.param(
        "us-docker.pkg.dev/proj/repo/img",
        "us-docker.pkg.dev",
        "proj/repo/img",
        None,
        None,
        id="artifact-registry",
    ),
    pytest.param("gcr.io/proj/img:latest", "gcr.io", "proj/img", "latest", None, id="gcr"),
    pytest.param("myacr.azurecr.io/ns/img:1.0", "myacr.azurecr.io", "ns/img", "1.0", None, id="acr"),
    pytest.param("quay.io/org/img", "quay.io", "org/img", None, None, id="quay"),
    pytest.param("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3", None, id="nvcr"),
    # Upper case in the first component makes it a registry host
    pytest.param("Foo/bar", "Foo", "bar", None, None, id="uppercase-domain"),
    pytest.param("REGISTRY.example.com/a", "REGISTRY.example.com", "a", None, None, id="uppercase-fqdn"),
    pytest.param("INDEX.docker.io/a", "INDEX.docker.io", "a", None, None, id="uppercase-index-not-aliased"),
    # Domain components
    pytest.param("a-b.c-d.io/x", "a-b.c-d.io", "x", None, None, id="domain-dashes"),
    pytest.param("a--b.io/x", "a--b.io", "x", None, None, id="domain-double-dash"),
    pytest.param("x.io:0/y", "x.io:0", "y", None, None, id="port-zero"),
    # Path separators
    pytest.param("a__b", "docker.io", "library/a__b", None, None, id="sep-double-underscore"),
    pytest.param("a---b", "docker.io", "library/a---b", None, None, id="sep-many-dashes"),
    pytest.param("a_b", "docker.io", "library/a_b", None, None, id="sep-underscore"),
    pytest.param("a.b", "docker.io", "library/a.b", None, None, id="sep-dot"),
    pytest.param("x/a.b-c_d__e", "docker.io", "x/a.b-c_d__e", None, None, id="sep-mixed"),
    pytest.param("0/1", "docker.io", "0/1", None, None, id="digits-only"),
    # Length boundary
    pytest.param(NAME_255, "example.com", "a" * 255, None, None, id="path-255"),
    pytest.param(NAME_255 + ":" + "t" * 128, "example.com", "a" * 255, "t" * 128, None, id="path-255-tag-not-counted"),
    pytest.param(
        "registry." + "x" * 60 + ".example.com:5000/" + "a" * 255,
        "registry." + "x" * 60 + ".example.com:5000",
        "a" * 255,
        None,
        None,
        id="path-255-long-host-not-counted",
    ),
    pytest.param(SHORT_255, "docker.io", "library/" + SHORT_255, None, None, id="short-name-path-255-with-library"),
]

# (input, expected message substring)
INVALID = [
    # Input type, emptiness, whitespace
    pytest.param("", "empty", id="empty"),
    pytest.param(" ubuntu", "leading or trailing whitespace", id="leading-space"),
    pytest.param("ubuntu ", "leading or trailing whitespace", id="trailing-space"),
    pytest.param("ubuntu\n", "leading or trailing whitespace", id="trailing-newline"),
    pytest.param("\tubuntu", "leading or trailing whitespace", id="leading-tab"),
    pytest.param("ubu ntu", "contains whitespace", id="inner-space"),
    pytest.param("ubuntu:la test", "contains whitespace", id="space-in-tag"),
    # Upper case in the repository path
    pytest.param("UBUNTU", "repository name (library/UBUNTU) must be lowercase", id="uppercase-short"),
    pytest.param("Ubuntu:22.04", "repository name (library/Ubuntu) must be lowercase", id="uppercase-short-tag"),
    pytest.param("foo/Bar", "repository name (foo/Bar) must be lowercase", id="uppercase-path"),
    pytest.param("Foo/Bar", "repository name (Bar) must be lowercase", id="uppercase-domain-and-path"),
    pytest.param("ghcr.io/Org/app", "repository name (Org/app) must be lowercase", id="uppercase-ghcr-org"),
    # Slashes
    pytest.param("foo//bar", "empty path component", id="double-slash"),
    pytest.param("ghcr.io//bar", "empty path component", id="double-slash-after-host"),
    pytest.param("foo/", "empty path component", id="trailing-slash"),
    pytest.param("ghcr.io/", "empty path component", id="host-only-trailing-slash"),
    pytest.param("/foo", "empty path component", id="leading-slash"),
    pytest.param("ghcr.io/org/:tag", "empty path component", id="trailing-slash-before-tag"),
    # Path components and separators
    pytest.param("a..b", "invalid repository path component 'a..b'", id="sep-double-dot"),
    pytest.param("a._b", "invalid repository path component 'a._b'", id="sep-dot-underscore"),
    pytest.param("a___b", "invalid repository path component", id="sep-triple-underscore"),
    pytest.param("-a", "invalid repository path component", id="leading-dash"),
    pytest.param("a-", "invalid repository path component", id="trailing-dash"),
    pytest.param("_a", "invalid repository path component", id="leading-underscore"),
    pytest.param("a.", "invalid repository path component", id="trailing-dot"),
    pytest.param("ghcr.io/a/b!c", "invalid repository path component 'b!c'", id="bang-in-path"),
    pytest.param("ghcr.io/caf\u00e9", "invalid repository path component", id="non-ascii-path"),
    # Registry host
    pytest.param("-bad.io/a", "invalid registry host '-bad.io'", id="domain-leading-dash"),
    pytest.param("bad-.io/a", "invalid registry host", id="domain-trailing-dash"),
    pytest.param("a..io/x", "invalid registry host", id="domain-double-dot"),
    pytest.param("my_registry.io/x", "invalid registry host 'my_registry.io'", id="domain-underscore"),
    pytest.param("host:/a", "invalid registry host", id="domain-empty-port"),
    pytest.param("host:port/a", "invalid registry host", id="domain-non-numeric-port"),
    pytest.param("::1/a", "invalid registry host", id="ipv6-unbracketed"),
    # "[]" has no "." or ":", so it is taken as a Docker Hub path component
    pytest.param("[]/a", "invalid repository path component '[]'", id="empty-brackets-is-path"),
    pytest.param("[]:5000/a", "invalid registry host '[]:5000'", id="ipv6-empty-brackets"),
    # First component with "." is a host even if it would be a valid path component
    pytest.param("a.b_c/f", "invalid registry host 'a.b_c'", id="dotted-underscore-is-host"),
    pytest.param("[::1%eth0]/a", "invalid registry host", id="ipv6-zone"),
    pytest.param("[1.2.3.4]/a", "invalid registry host", id="ipv6-brackets-ipv4"),
    pytest.param("https://ghcr.io/a", "invalid registry host 'https:'", id="url-scheme"),
    # Tags
    pytest.param("ubuntu:", "tag is empty", id="empty-tag"),
    pytest.param("ubuntu:-tag", "invalid tag '-tag'", id="tag-leading-dash"),
    pytest.param("ubuntu:.tag", "invalid tag '.tag'", id="tag-leading-dot"),
    pytest.param("ubuntu:ta+g", "invalid tag 'ta+g'", id="tag-plus"),
    pytest.param("ubuntu:a:b", "invalid tag 'a:b'", id="tag-double-colon"),
    pytest.param("ubuntu:v1/x", "invalid registry host 'ubuntu:v1'", id="tag-with-slash"),
    pytest.param("ubuntu:" + "t" * 129, "must not be more than 128 characters", id="tag-129"),
    # Digests
    pytest.param("ubuntu@", "digest is empty", id="empty-digest"),
    pytest.param("ubuntu@sha256", "invalid digest 'sha256'", id="digest-no-colon"),
    pytest.param("ubuntu@sha256:", "invalid digest 'sha256:'", id="digest-no-hex"),
    pytest.param("ubuntu@sha256:" + "a" * 31, "invalid digest", id="digest-31-hex"),
    pytest.param("ubuntu@sha256:" + "a" * 63, "exactly 64 lowercase hex characters (got 63)", id="sha256-63"),
    pytest.param("ubuntu@sha256:" + "a" * 65, "exactly 64 lowercase hex characters (got 65)", id="sha256-65"),
    pytest.param("ubuntu@sha256:" + "A" * 64, "exactly 64 lowercase hex characters", id="sha256-uppercase"),
    pytest.param("ubuntu@sha512:" + "a" * 64, "exactly 128 lowercase hex characters (got 64)", id="sha512-64"),
    pytest.param("ubuntu@sha256:" + "g" * 64, "invalid digest", id="digest-non-hex"),
    pytest.param("ubuntu@md5:" + "a" * 32, "unsupported digest algorithm 'md5'", id="digest-unsupported"),
    pytest.param("ubuntu@SHA256:" + "a" * 64, "unsupported digest algorithm 'SHA256'", id="digest-algo-case"),
    pytest.param("ubuntu@1sha:" + "a" * 64, "invalid digest", id="digest-algo-leading-digit"),
    pytest.param("ubuntu@" + SHA256 + "@" + SHA256, "invalid digest", id="two-digests"),
    pytest.param("ubuntu@" + SHA256 + ":tag", "invalid digest", id="tag-after-digest"),
    # Image IDs and misc
    pytest.param(HEX64, "64-character hexadecimal", id="bare-image-id"),
    pytest.param(":tag", "empty path component", id="tag-only"),
    pytest.param("@" + SHA256, "empty path component", id="digest-only"),
    # Length
    pytest.param(NAME_256, "must not be more than 255 characters", id="path-256"),
    pytest.param(SHORT_256, "must not be more than 255 characters", id="short-name-256-normalized"),
    pytest.param(
        "registry.example.com:5000/" + "/".join(["abcdefghij"] * 24),
        "must not be more than 255 characters",
        id="many-components-too-long",
    ),
]


@pytest.mark.parametrize(("reference", "registry", "repository", "tag", "digest"), VALID)
def test_valid(reference, registry, repository, tag, digest):
    ref = parse_image(reference)
    assert ref == ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)
    assert ref.name == f"{registry}/{repository}"


@pytest.mark.parametrize(("reference", "registry", "repository", "tag", "digest"), VALID)
def test_str_round_trips(reference, registry, repository, tag, digest):
    ref = parse_image(reference)
    expected = f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    assert str(ref) == expected
    assert parse_image(str(ref)) == ref


@pytest.mark.parametrize(("reference", "match"), INVALID)
def test_invalid(reference, match):
    with pytest.raises(InvalidImageReference) as excinfo:
        parse_image(reference)
    err = excinfo.value
    assert isinstance(err, ValueError)
    message = str(err)
    assert match in message
    assert message.startswith("invalid reference format: ")
    assert err.reference == reference
    assert repr(reference[:100]) in message


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
        pytest.param(b"ubuntu", id="bytes"),
        pytest.param(["ubuntu"], id="unhashable-list"),
        pytest.param({"image": "ubuntu"}, id="unhashable-dict"),
    ],
)
def test_non_str_input_is_invalid_not_type_error(value):
    with pytest.raises(InvalidImageReference, match=r"must be a string, not \w+") as excinfo:
        parse_image(value)
    assert excinfo.value.reference is value


def test_str_subclass_is_accepted_and_returns_plain_strings():
    class Image(str):
        pass

    ref = parse_image(Image("ghcr.io/org/app:v1"))
    assert ref == ImageReference("ghcr.io", "org/app", "v1", None)
    assert type(ref.registry) is str
    assert type(ref.repository) is str


def test_long_input_is_truncated_in_message():
    reference = "ghcr.io/" + "x" * 300 + "/UPPER"
    with pytest.raises(InvalidImageReference) as excinfo:
        parse_image(reference)
    message = str(excinfo.value)
    assert len(message) < 400
    assert f"({len(reference)} characters)" in message
    assert reference not in message


def test_error_is_picklable():
    with pytest.raises(InvalidImageReference) as excinfo:
        parse_image("UBUNTU")
    clone = pickle.loads(pickle.dumps(excinfo.value))
    assert isinstance(clone, InvalidImageReference)
    assert str(clone) == str(excinfo.value)


def test_exception_without_reference_uses_reason_verbatim():
    err = InvalidImageReference("something is wrong")
    assert str(err) == "something is wrong"
    assert err.reference is None


def test_parse_image_is_cached():
    parse_image.cache_clear()
    first = parse_image("ghcr.io/org/cached:v1")
    second = parse_image("ghcr.io/org/cached:v1")
    assert first is second
    info = parse_image.cache_info()
    assert info.hits == 1
    assert info.misses == 1
    assert info.maxsize == 8192


def test_image_reference_is_frozen_and_slotted():
    ref = parse_image("ubuntu")
    with pytest.raises(AttributeError):
        ref.registry = "evil.io"  # type: ignore[misc]
    assert not hasattr(ref, "__dict__")


def test_equivalent_spellings_normalize_to_the_same_reference():
    spellings = [
        "ubuntu",
        "library/ubuntu",
        "docker.io/ubuntu",
        "docker.io/library/ubuntu",
        "index.docker.io/ubuntu",
    ]
    assert {parse_image(s) for s in spellings} == {ImageReference("docker.io", "library/ubuntu", None, None)}


def test_tables_are_large_enough():
    assert len(VALID) >= 60
    assert len(INVALID) >= 40


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("docker.io", "docker.io", id="docker-io"),
        pytest.param("index.docker.io", "docker.io", id="index"),
        pytest.param("registry-1.docker.io", "docker.io", id="registry-1"),
        pytest.param("Docker.IO", "docker.io", id="docker-io-mixed-case"),
        pytest.param("INDEX.DOCKER.IO", "docker.io", id="index-upper"),
        pytest.param("Registry-1.Docker.io", "docker.io", id="registry-1-mixed"),
        pytest.param("GHCR.io", "ghcr.io", id="other-lowercased"),
        pytest.param("Localhost:5000", "localhost:5000", id="port-kept"),
        pytest.param("[2001:DB8::1]:443", "[2001:db8::1]:443", id="ipv6"),
        pytest.param("docker.io:443", "docker.io:443", id="docker-io-with-port-not-alias"),
        pytest.param("mirror.docker.io", "mirror.docker.io", id="other-docker-subdomain"),
    ],
)
def test_normalize_registry_host(host, expected):
    assert normalize_registry_host(host) == expected


def test_parse_does_not_alias_registry_1_but_matching_does():
    ref = parse_image("registry-1.docker.io/library/ubuntu")
    assert ref.registry == "registry-1.docker.io"
    assert normalize_registry_host(ref.registry) == normalize_registry_host(parse_image("ubuntu").registry)
