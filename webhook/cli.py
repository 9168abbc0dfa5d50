"""Command line: ``pullsecrets-webhook serve | mutate | check-config | init-certs``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from webhook import __version__, logs
from webhook.certplan import CertOptions
from webhook.config import Config, ConfigError, load_config
from webhook.mutation import Outcome, mutate_pod

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"pullsecrets-webhook: error: {message}", file=sys.stderr)
    return code


def _load(path: str) -> Config:
    return load_config(Path(path))


# ---------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from webhook.app import AppState
    from webhook.certs import ensure_dev_certs
    from webhook.server import ServeOptions, run
    from webhook.tls import ReloadingTLS

    logs.setup_logging(args.log_level, args.log_format)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    cert_dir = Path(args.cert_dir)
    certfile, keyfile = cert_dir / "tls.crt", cert_dir / "tls.key"
    cert_manager = None
    if args.manage_certs:
        if not (args.namespace and args.service and args.secret):
            return _fail("--manage-certs needs --namespace, --service and --secret")
        from webhook.kubecerts import CertManagerLoop

        opts = _cert_options(args)
        problems = opts.problems()
        if args.cert_check_interval >= opts.rotation_overlap.total_seconds():
            # Every replica must pick up the new serving certificate before the old CA leaves the bundle.
            problems.append("--cert-check-interval must be shorter than --rotation-overlap")
        if problems:
            return _fail("; ".join(problems))
        try:
            cert_manager = CertManagerLoop(opts, cert_dir, args.kubeconfig, args.cert_check_interval)
            cert_manager.run_once()
        except Exception as exc:
            return _fail(f"cannot set up certificates in the cluster: {type(exc).__name__}: {exc}")
    if not (certfile.exists() and keyfile.exists()):
        if not args.generate_certs:
            return _fail(f"no tls.crt/tls.key in {cert_dir} and --no-generate-certs was given")
        try:
            ensure_dev_certs(cert_dir)
        except (FileExistsError, OSError) as exc:
            return _fail(f"cannot generate development certificates in {cert_dir}: {exc}")
        logs.info(
            "generated a development CA and serving certificate (localhost, 127.0.0.1, ::1)",
            ca=str(cert_dir / "ca.crt"),
            cert=str(certfile),
        )
    try:
        tls = ReloadingTLS(certfile, keyfile)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load the serving certificate from {cert_dir}: {exc}")
    state = AppState(config=config, max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout)
    from webhook.cluster import ClusterFeatureError, build_cluster_features

    try:
        cache, sync = build_cluster_features(
            args, rules_secret_names=lambda: {s for r in state.config.rules.rules for s in r.secrets}
        )
    except ClusterFeatureError as exc:
        return _fail(str(exc))
    except Exception as exc:
        return _fail(f"cannot reach the Kubernetes API for --watch-*/--sync-config: {type(exc).__name__}: {exc}")
    if cache is not None:
        cache.start()
        # Until the first list completes every Secret looks missing: wait, so a restart does not
        # greet pods with false warnings (mutation ignores an unsynced cache anyway).
        if not cache.wait_synced(args.cache_sync_timeout):
            logs.warning(
                "cluster cache not synced yet; serving without it until it is", timeout_s=args.cache_sync_timeout
            )
        state.cluster = cache
    if sync is not None:
        sync.start()
    options = ServeOptions(
        host=args.host,
        port=args.port,
        config_path=Path(args.config),
        shutdown_delay=args.shutdown_delay,
        graceful_timeout=args.graceful_timeout,
        keep_alive=args.keep_alive,
        reload_interval=args.reload_interval,
        cert_manager=cert_manager,
        header_timeout=args.header_timeout,
    )
    logs.info(
        "serving",
        url=f"https://{_url_host(args.host)}:{args.port}/mutate",
        rules=len(config.rules),
        config=args.config,
        version=__version__,
    )
    try:
        run(options, state, tls)
    finally:
        if sync is not None:
            sync.stop()  # releases the Lease so a standby takes over at once
        if cache is not None:
            cache.stop()
    logs.info("stopped")
    return EXIT_OK


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- mutate
def _documents(path: str) -> Iterator[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        yield orjson.loads(text)
        return
    for doc in yaml.safe_load_all(text):
        if doc is not None:
            yield doc


def _pods(doc: Any, source: str) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Each pod of a document, with the namespace it would be admitted in (if the document says)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: a document is not a mapping")
    kind = doc.get("kind")
    if kind == "AdmissionReview":
        request = doc.get("request")
        obj = request.get("object") if isinstance(request, dict) else None
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: AdmissionReview has no request.object mapping")
        namespace = request.get("namespace")
        yield obj, namespace if isinstance(namespace, str) else None
    elif kind == "Pod":
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: a Pod's metadata is not a mapping")
        namespace = meta.get("namespace")
        yield doc, namespace if isinstance(namespace, str) else None
    elif kind == "List" or kind == "PodList":
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ValueError(f"{source}: a {kind}'s items is not a list")
        for item in items:
            yield from _pods(item, source)
    else:
        print(f"{source}: skipping a {kind or 'kind-less'} document (only Pods are mutated)", file=sys.stderr)


def cmd_mutate(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    results: list[Any] = []
    try:
        for path in args.files:
            for doc in _documents(path):
                for pod, namespace in _pods(doc, path):
                    # Rules limited to namespaces need one: --namespace, else the document's own.
                    mutation = mutate_pod(pod, config, args.namespace or namespace)
                    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
                    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
                    note = ",".join(mutation.added) if mutation.outcome is Outcome.PATCHED else "-"
                    print(f"{path}: pod/{name}: {mutation.outcome.value}; added: {note}", file=sys.stderr)
                    for warning in mutation.warnings:
                        print(f"{path}: pod/{name}: warning: {warning}", file=sys.stderr)
                    if args.output == "patch":
                        results.append(mutation.patch)
                    else:
                        results.append(jsonpatch.apply_patch(pod, mutation.patch) if mutation.patch else pod)
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read input: {exc}")
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        return _fail(f"input is not valid YAML or JSON: {exc}")
    except ValueError as exc:
        return _fail(str(exc))
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(results, sort_keys=False))
    else:
        payload = results[0] if len(results) == 1 else results
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- check-config
def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args.file)
    except ConfigError as exc:
        return _fail(str(exc))
    globs = sum(1 for r in config.rules.rules if r.pattern.is_glob)
    print(f"{args.file}: OK: {len(config.rules)} rules ({globs} with globs)")
    return EXIT_OK


# ---------------------------------------------------------------- init-certs
def _cert_options(args: argparse.Namespace) -> CertOptions:
    from datetime import timedelta

    return CertOptions(
        namespace=args.namespace,
        service=args.service,
        secret=args.secret,
        webhook_config=args.webhook_config,
        cluster_domain=args.cluster_domain,
        extra_dns_names=tuple(args.extra_dns or ()),
        extra_ip_addresses=tuple(args.extra_ip or ()),
        key_type=args.key_type,
        ca_validity=timedelta(days=args.ca_validity_days),
        cert_validity=timedelta(days=args.cert_validity_days),
        renew_before=timedelta(days=args.renew_before_days),
        ca_renew_before=timedelta(days=args.ca_renew_before_days),
        rotation_overlap=timedelta(seconds=args.rotation_overlap),
        rotate_ca=getattr(args, "rotate_ca", False),
        renew_cert=getattr(args, "renew_cert", False),
    )


def cmd_init_certs(args: argparse.Namespace) -> int:
    from webhook.kubecerts import api_client, ensure_certificates

    logs.setup_logging(args.log_level, args.log_format)
    opts = _cert_options(args)
    problems = opts.problems()
    if problems:
        return _fail("; ".join(problems))
    try:
        api = api_client(args.kubeconfig)
        result = ensure_certificates(api, opts, Path(args.cert_dir) if args.cert_dir else None)
    except Exception as exc:
        logs.error("init-certs failed", reason=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    logs.info(
        "certificates ready",
        secret=f"{opts.namespace}/{opts.secret}",
        changed=result.secret_written,
        reasons=result.reasons,
        webhooks_patched=result.webhooks_patched,
        files_written=result.files_written,
        expires=_expiry(result.material.leaf.cert_pem),
    )
    return EXIT_OK


def _expiry(cert_pem: bytes) -> str:
    from webhook.certs import not_after

    return not_after(cert_pem).isoformat()


def _add_cert_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--namespace", required=required, help="namespace of the webhook's Service and Secret")
    p.add_argument("--service", required=required, help="the webhook's Service name (for the certificate SANs)")
    p.add_argument("--secret", required=required, help="the TLS Secret to create or reuse")
    p.add_argument("--webhook-config", help="MutatingWebhookConfiguration whose caBundle to keep current")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--extra-dns", action="append", metavar="NAME", help="extra DNS SAN (repeatable)")
    p.add_argument("--extra-ip", action="append", metavar="IP", help="extra IP SAN (repeatable)")
    p.add_argument("--key-type", default="ecdsa", choices=["ecdsa", "rsa"], help="ECDSA P-256 or RSA 2048")
    p.add_argument("--ca-validity-days", type=float, default=3650)
    p.add_argument("--cert-validity-days", type=float, default=90)
    p.add_argument("--renew-before-days", type=float, default=30, help="renew the serving cert this early")
    p.add_argument("--ca-renew-before-days", type=float, default=365, help="start a CA rotation this early")
    p.add_argument(
        "--rotation-overlap", type=float, default=600, help="seconds each CA rotation phase lasts (default: 600)"
    )


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullsecrets-webhook",
        description="Inject registry-specific imagePullSecrets into Flyte pods (Kubernetes mutating webhook).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the webhook over HTTPS")
    serve.add_argument("--config", required=True, help="rules file (YAML)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8443, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--cert-dir",
        default="certs",
        help="folder with tls.crt and tls.key; reloaded when they change (default: %(default)s)",
    )
    serve.add_argument(
        "--no-generate-certs",
        dest="generate_certs",
        action="store_false",
        help="fail instead of generating a development CA and certificate when --cert-dir has none",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="json", choices=["json", "text"])
    serve.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        help="seconds to keep serving after SIGTERM with readiness false (Kubernetes: ~5)",
    )
    serve.add_argument("--graceful-timeout", type=float, default=20.0, help="max seconds to drain in-flight requests")
    serve.add_argument(
        "--keep-alive",
        type=int,
        default=100,  # webhook.server.DEFAULT_KEEP_ALIVE (not imported: it pulls in uvicorn)
        help="idle keep-alive seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=2.0,
        help="seconds between checks of the rules and certificate files",
    )
    serve.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger requests get HTTP 413")
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="close connections whose TLS handshake or request headers take longer",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="answer 408 when a body takes longer (or the apiserver's ?timeout=, if shorter)",
    )
    serve.add_argument(
        "--manage-certs",
        action="store_true",
        help="keep the TLS Secret, caBundle and --cert-dir current (renewal, CA rotation); needs --namespace,"
        " --service and --secret",
    )
    serve.add_argument("--cert-check-interval", type=float, default=300, help="seconds between certificate checks")
    _add_cert_arguments(serve, required=False)
    from webhook.cluster import add_cluster_arguments

    add_cluster_arguments(serve)
    serve.add_argument(
        "--cache-sync-timeout", type=float, default=30.0, help="seconds to wait for the cluster cache at start"
    )
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser(
        "init-certs",
        help="create or reuse the TLS Secret, renew it when due, publish the CA as caBundle, write --cert-dir",
    )
    _add_cert_arguments(init, required=True)
    init.add_argument("--cert-dir", help="also write ca.crt, tls.crt and tls.key here")
    init.add_argument("--rotate-ca", action="store_true", help="start a CA rotation now (completed by serve)")
    init.add_argument(
        "--renew-cert", action="store_true", help="re-issue the serving certificate now (same CA; replicas reload it)"
    )
    init.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    init.add_argument("--log-format", default="json", choices=["json", "text"])
    init.set_defaults(func=cmd_init_certs)

    mutate = sub.add_parser("mutate", help="apply the rules offline to pod manifests and print the result")
    mutate.add_argument("--config", required=True, help="rules file (YAML)")
    mutate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="Pod YAML (multi-document allowed), AdmissionReview JSON, or -",
    )
    mutate.add_argument("-o", "--output", default="yaml", choices=["yaml", "json", "patch"])
    mutate.add_argument(
        "-n",
        "--namespace",
        help="the namespace the pods are admitted in, for rules limited to namespaces (default: each"
        " document's metadata.namespace, or the review's request.namespace)",
    )
    mutate.set_defaults(func=cmd_mutate)

    check = sub.add_parser("check-config", help="validate a rules file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
