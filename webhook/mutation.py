"""From a pod and a configuration to the JSONPatch that adds missing pull secrets.

Pure: plain dicts in, plain data out, no I/O. The pod is never converted to a
model, so fields this code does not know about are neither dropped nor
reordered: the patch only ever appends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from webhook.config import INJECTED_ANNOTATION, Config
from webhook.images import ImageReference, InvalidImageReference, parse_image

# initContainers first: that is the order the kubelet pulls in.
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")
# The apiserver may truncate longer warnings; keep ours readable within it.
MAX_WARNING_LENGTH = 250
MAX_WARNINGS = 10


class Outcome(StrEnum):
    PATCHED = "patched"
    UNCHANGED = "unchanged"
    SKIPPED_OPT_OUT = "skipped-opt-out"
    SKIPPED_NOT_FLYTE = "skipped-not-flyte"


@dataclass(frozen=True, slots=True)
class ImageProblem:
    field: str  # e.g. "containers[0].image"
    image: Any
    reason: str


@dataclass(frozen=True, slots=True)
class Mutation:
    outcome: Outcome
    patch: list[dict[str, Any]] = field(default_factory=list)
    # secret added -> registry of the first image that called for it, in the order added
    added_for_registry: dict[str, str] = field(default_factory=dict)
    unmatched_registries: tuple[str, ...] = ()
    problems: tuple[ImageProblem, ...] = ()
    warnings: tuple[str, ...] = ()
    missing_secrets: tuple[str, ...] = ()  # wanted secrets the namespace lacks (needs the Secret cache)

    @property
    def added(self) -> tuple[str, ...]:
        """The secrets the patch adds, in order."""
        return tuple(self.added_for_registry)


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _warning(text: str) -> str:
    text = "pullsecrets-webhook: " + text
    return text if len(text) <= MAX_WARNING_LENGTH else text[: MAX_WARNING_LENGTH - 3] + "..."


def iter_images(spec: dict[str, Any]) -> tuple[list[ImageReference], list[ImageProblem]]:
    """Parse every container image of a pod spec; malformed entries become problems, not errors."""
    images: list[ImageReference] = []
    problems: list[ImageProblem] = []
    for kind in CONTAINER_FIELDS:
        containers = spec.get(kind)
        if containers is None:
            continue
        if not isinstance(containers, list):
            problems.append(ImageProblem(kind, None, f"spec.{kind} is not a list"))
            continue
        for i, container in enumerate(containers):
            if not isinstance(container, dict):
                problems.append(ImageProblem(f"{kind}[{i}].image", None, f"spec.{kind}[{i}] is not an object"))
                continue
            image = container.get("image")
            if image is None:
                continue  # nothing to pull, nothing to do
            try:
                images.append(parse_image(image))
            except InvalidImageReference as exc:
                problems.append(ImageProblem(f"{kind}[{i}].image", image, str(exc)))
    return images, problems


def skip_reason(pod: dict[str, Any], config: Config) -> Outcome | None:
    """Why this pod is out of scope, or None when it is in scope."""
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not isinstance(labels, dict):
        labels = {}
    key, value = config.opt_out_label
    if labels.get(key) == value:
        return Outcome.SKIPPED_OPT_OUT
    if not config.pod_selector.matches(labels):
        return Outcome.SKIPPED_NOT_FLYTE
    return None


class ClusterView(Protocol):
    """What the webhook knows of the cluster, from a watch-backed cache (``webhook.cache``).

    Lookups are in-memory; the core stays free of I/O.
    """

    def synced(self) -> bool: ...

    def secret_type(self, namespace: str, name: str) -> str | None: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None: ...


PULL_SECRET_TYPES = frozenset({"kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"})


def mutate_pod(
    pod: dict[str, Any],
    config: Config,
    namespace: str | None = None,
    cluster: ClusterView | None = None,
) -> Mutation:
    """Compute the RFC 6902 operations that add the pull secrets ``pod`` lacks.

    Applying the result and calling again yields no operations, which is what
    makes ``reinvocationPolicy: IfNeeded`` safe. ``namespace`` is the pod's
    (from the AdmissionReview); rules limited to namespaces need it, and the
    cluster view, when given, lets the webhook say that a secret is missing.
    """
    reason = skip_reason(pod, config)
    if reason is not None:
        return Mutation(reason)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return Mutation(Outcome.UNCHANGED, warnings=(_warning("pod has no spec; nothing injected"),))

    images, problems = iter_images(spec)
    wanted: dict[str, str] = {}  # secret -> registry, in first-wanted order
    unmatched: dict[str, ImageReference] = {}  # registry -> first image with no rule
    rules = config.rules
    labels = None
    if rules.needs_namespace_labels and namespace is not None and cluster is not None:
        labels = cluster.namespace_labels(namespace)
    for ref in images:
        secrets = rules.secrets_for(ref, namespace, labels)
        if not secrets and ref.registry not in unmatched:
            unmatched[ref.registry] = ref
        for secret in secrets:
            if secret not in wanted:
                wanted[secret] = ref.registry

    warnings = [_warning(f"{p.field} {p.image!r}: {p.reason}; no pull secret for it") for p in problems]

    existing = spec.get("imagePullSecrets")
    if existing is not None and not isinstance(existing, list):
        warnings.append(_warning("spec.imagePullSecrets is not a list; left untouched"))
        return Mutation(Outcome.UNCHANGED, problems=tuple(problems), warnings=tuple(warnings[:MAX_WARNINGS]))
    if existing:
        present = {e.get("name") for e in existing if isinstance(e, dict) and isinstance(e.get("name"), str)}
        to_add = [s for s in wanted if s not in present]
    else:
        present, to_add = set(), list(wanted)
    missing: list[str] = []
    if to_add and namespace is not None and cluster is not None and cluster.synced():
        to_add, missing = _check_secrets(to_add, wanted, namespace, cluster, config.missing_secrets == "skip", warnings)

    patch: list[dict[str, Any]] = []
    if to_add:
        entries = [{"name": s} for s in to_add]
        if existing:
            patch.extend({"op": "add", "path": "/spec/imagePullSecrets/-", "value": e} for e in entries)
        else:  # absent, null or empty: one op sets the whole list
            patch.append({"op": "add", "path": "/spec/imagePullSecrets", "value": entries})
        if config.annotate:
            patch.extend(_annotation_ops(pod, to_add))

    # The secrets our rules give are for the registries that matched; only one the pod brought
    # itself might hold credentials for an unmatched registry (we never read Secret data to know).
    if config.warn_unmatched and unmatched and not (present - wanted.keys()):
        for registry, image in unmatched.items():
            warnings.append(_warning(f"no rule for registry {registry} (image {image}); pulled without credentials"))

    return Mutation(
        Outcome.PATCHED if patch else Outcome.UNCHANGED,
        patch=patch,
        added_for_registry=wanted if len(to_add) == len(wanted) else {s: wanted[s] for s in to_add},
        unmatched_registries=tuple(unmatched),
        problems=tuple(problems),
        warnings=tuple(dict.fromkeys(warnings))[:MAX_WARNINGS] if warnings else (),
        missing_secrets=tuple(missing),
    )


def _check_secrets(
    to_add: list[str],
    wanted: dict[str, str],
    namespace: str,
    cluster: ClusterView,
    skip_missing: bool,
    warnings: list[str],
) -> tuple[list[str], list[str]]:
    """Warn about secrets the namespace lacks (the pod would sit in ImagePullBackOff) or of the wrong type."""
    kept: list[str] = []
    missing: list[str] = []
    for secret in to_add:
        kind = cluster.secret_type(namespace, secret)
        if kind is None:
            missing.append(secret)
            action = "not injected" if skip_missing else "injected anyway"
            warnings.append(
                _warning(
                    f"secret {secret} for registry {wanted[secret]} does not exist in namespace {namespace}; {action}"
                )
            )
            if skip_missing:
                continue
        elif kind and kind not in PULL_SECRET_TYPES:
            warnings.append(
                _warning(
                    f"secret {secret} in namespace {namespace} is of type {kind}, not kubernetes.io/dockerconfigjson"
                )
            )
        kept.append(secret)
    return kept, missing


def _annotation_ops(pod: dict[str, Any], added: list[str]) -> list[dict[str, Any]]:
    """Record what was added; cumulative across reinvocations."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        return []
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        return [{"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: ",".join(added)}}]
    previous = annotations.get(INJECTED_ANNOTATION)
    names = [n for n in previous.split(",") if n] if isinstance(previous, str) else []
    value = ",".join(dict.fromkeys([*names, *added]))
    path = "/metadata/annotations/" + _escape_pointer(INJECTED_ANNOTATION)
    return [{"op": "add", "path": path, "value": value}]
