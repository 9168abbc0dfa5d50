"""``serve`` flags and construction of the cluster-facing features (all off by default).

* ``--watch-secrets``: :class:`webhook.cache.ClusterCache` keeps Secret names and types (never
  data) so admissions can warn about missing or mistyped pull secrets;
* ``--watch-namespaces``: the same cache keeps namespace labels, for rules limited to namespaces
  by a label selector;
* ``--sync-config FILE``: :class:`webhook.sync.SecretSync` copies pull secrets into Flyte
  namespaces, leader-elected through a Lease.

``serve`` wiring: ``add_cluster_arguments(serve_parser)`` while building the parser, then
``cache, sync = build_cluster_features(args)``; start both before serving, stop both after.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from webhook.cache import ClusterCache
from webhook.rules import NamespaceScope
from webhook.sync import SecretSync, SyncConfigError, load_sync_config


class ClusterFeatureError(ValueError):
    """The cluster feature flags are inconsistent or a file is invalid; the message says which."""


def _default_identity() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cluster feature flags to ``serve`` (it already has ``--kubeconfig``)."""
    group = parser.add_argument_group("cluster features (off by default; each needs RBAC, see docs)")
    group.add_argument(
        "--watch-secrets",
        action="store_true",
        help="cache Secret names and types cluster-wide (list/watch, metadata and type only, never data)",
    )
    group.add_argument(
        "--secret-namespaces",
        action="append",
        metavar="GLOB",
        help="with --watch-secrets, keep only these namespaces' Secrets (name or glob, repeatable; default: all)."
        " The namespaces Flyte runs in, e.g. '*-development', bound the cache's memory on a large cluster",
    )
    group.add_argument(
        "--watch-namespaces",
        action="store_true",
        help="cache namespace labels (for rules limited to namespaces by label selector)",
    )
    group.add_argument(
        "--sync-config",
        metavar="FILE",
        help="copy pull secrets into matching namespaces, as this YAML file says (re-read when it changes)",
    )
    group.add_argument(
        "--sync-namespace",
        metavar="NS",
        help="namespace of the source Secrets when the sync config has no sourceNamespace (default: $POD_NAMESPACE)",
    )
    group.add_argument("--lease-name", default="pullsecrets-webhook-sync", help="Lease that elects the sync leader")
    group.add_argument("--lease-namespace", help="namespace of the Lease (default: the source namespace)")
    group.add_argument(
        "--pod-name",
        default=None,
        help="this replica's identity in the Lease (default: $POD_NAME, else the host name)",
    )
    group.add_argument("--lease-duration", type=float, default=15.0, help="seconds a Lease lasts unrenewed")
    group.add_argument("--lease-renew-deadline", type=float, default=10.0, help="a leader stops acting this late")
    group.add_argument("--lease-retry-period", type=float, default=2.0, help="seconds between Lease attempts")


def _api_client(args: argparse.Namespace) -> Any:
    from webhook.kubecerts import api_client

    return api_client(getattr(args, "kubeconfig", None))


def build_cluster_features(
    args: argparse.Namespace,
    *,
    api_client: Any = None,
    secret_namespaces: Callable[[str], bool] | None = None,
    rules_secret_names: Callable[[], Iterable[str]] | None = None,
) -> tuple[ClusterCache | None, SecretSync | None]:
    """Build (not start) what the flags ask for: ``(cache or None, sync or None)``.

    ``secret_namespaces`` limits which namespaces' Secrets the cache keeps;
    ``rules_secret_names`` returns the secret names of the rules in force (for the sync config's
    ``secretsFromRules``). Raises :class:`ClusterFeatureError` with a readable message.
    """
    watch_secrets = bool(getattr(args, "watch_secrets", False))
    watch_namespaces = bool(getattr(args, "watch_namespaces", False))
    sync_path = getattr(args, "sync_config", None)
    globs = tuple(getattr(args, "secret_namespaces", None) or ())
    if globs and not watch_secrets:
        raise ClusterFeatureError("--secret-namespaces limits the Secret cache: it needs --watch-secrets")
    if not (watch_secrets or watch_namespaces or sync_path):
        return None, None
    if secret_namespaces is None and globs:
        try:
            scope = NamespaceScope.parse(globs, None)  # the names and globs rules take, checked alike
        except ValueError as exc:
            raise ClusterFeatureError(f"--secret-namespaces: {exc}") from None
        secret_namespaces = functools.partial(scope.matches, labels=None)
    api = api_client if api_client is not None else _api_client(args)
    cache = None
    if watch_secrets or watch_namespaces:
        cache = ClusterCache(
            api, secrets=watch_secrets, namespaces=watch_namespaces, secret_namespaces=secret_namespaces
        )
    sync = None
    if sync_path:
        try:
            config = load_sync_config(sync_path)
        except SyncConfigError as exc:
            raise ClusterFeatureError(str(exc)) from None
        source = config.source_namespace or getattr(args, "sync_namespace", None) or os.environ.get("POD_NAMESPACE")
        if not source:
            raise ClusterFeatureError(
                f"{sync_path}: no sourceNamespace, and neither --sync-namespace nor $POD_NAMESPACE is set"
            )
        import dataclasses

        config = dataclasses.replace(config, source_namespace=source)
        try:
            sync = SecretSync(
                api,
                config,
                identity=args.pod_name or _default_identity(),
                lease_name=args.lease_name,
                lease_namespace=args.lease_namespace,
                lease_duration=args.lease_duration,
                renew_deadline=args.lease_renew_deadline,
                retry_period=args.lease_retry_period,
                config_path=sync_path,
                extra_names=rules_secret_names,
                namespaces=cache.namespaces if cache is not None else None,
            )
        except ValueError as exc:  # inconsistent lease timings
            raise ClusterFeatureError(f"lease timings: {exc}") from None
    return cache, sync


__all__ = ["ClusterFeatureError", "add_cluster_arguments", "build_cluster_features"]
