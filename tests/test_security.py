"""Security: least privilege asked of the real authorizer, Secret reads recorded, logs kept clean.

* RBAC: the chart is rendered with the real helm binary, its ServiceAccount and RBAC objects are
  applied to the real kube-apiserver, and SubjectAccessReviews ask what that ServiceAccount may do
  beyond what it needs. tests/test_chart.py covers the needed permissions in the release's own
  namespace; this covers the rest: other namespaces, cluster-wide reads, other webhook and policy
  configurations, pods, tokens, RBAC escalation, its own rules and namespaces.
* Secret reads: ``init-certs`` and ``serve --manage-certs`` run as that ServiceAccount through a
  recording proxy in front of the apiserver; every request is listed, and the only Secret requests
  are those on the webhook's own TLS Secret.
* Logs: admissions carrying secret-looking env values, a bearer token and credentials in userInfo
  are logged at debug level, in both formats; none of those values reaches the log.
* Image references that imitate a registry (lookalike hosts, userinfo, ports, other paths) never
  get that registry's secret.

The threat model these back up is docs/security.md.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import re
import secrets
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import orjson
import pytest
import yaml
from kubernetes.client.rest import ApiException
from kubernetes.utils import create_from_dict

from tests.controlplane import delete_mutating_webhook, register_mutating_webhook
from tests.reviews import flyte_pod, review_for
from tests.webhook_process import REPO, WebhookProcess, free_port
from webhook.certs import generate_ca, generate_serving_cert
from webhook.config import parse_config
from webhook.images import InvalidImageReference, parse_image

CHART = REPO / "charts" / "flyte-pullsecrets-webhook"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
OTHER_NS = "flytesnacks-development"  # any other namespace; SubjectAccessReviews need not see it exist


# --------------------------------------------------------------------------------------------------
# The chart's RBAC, applied to the real apiserver
# --------------------------------------------------------------------------------------------------


class Release:
    """The chart's ServiceAccount and RBAC objects in a fresh namespace, for one certs mode."""

    def __init__(self, control_plane: Any, kube_api: kubernetes.client.ApiClient, mode: str) -> None:
        self.kube_api = kube_api
        self.mode = mode
        self.id = uuid.uuid4().hex[:6]
        self.namespace = f"sec-{self.id}"
        self.release = f"sec-{self.id}"
        values: dict[str, Any] = {"certs": {"mode": mode}}
        if mode == "secret":
            values = {"certs": {"mode": "secret", "secretName": "my-tls"}, "webhook": {"caBundle": "Y2E="}}
        path = control_plane._require_dir() / f"values-{self.id}.yaml"
        path.write_text(yaml.safe_dump(values))
        out = control_plane.helm("template", self.release, str(CHART), "-n", self.namespace, "-f", str(path))
        self.objects = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
        kubernetes.client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": self.namespace}})
        for obj in self.of_kind(*RBAC_KINDS):
            create_from_dict(kube_api, obj, namespace=self.namespace)
        (sa,) = self.of_kind("ServiceAccount")
        self.service_account = sa["metadata"]["name"]
        self.tls_secret = f"{self.release}-flyte-pullsecrets-webhook-tls"
        self.webhook_config = f"{self.release}-flyte-pullsecrets-webhook-{self.namespace}"
        for role in self.of_kind("Role", "ClusterRole"):  # the names the chart really grants, if any
            for rule in role["rules"]:
                for name in rule.get("resourceNames", ()):
                    if "secrets" in rule["resources"]:
                        self.tls_secret = name
                    if "mutatingwebhookconfigurations" in rule["resources"]:
                        self.webhook_config = name

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in kinds]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def can(
        self,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        attrs: dict[str, Any] = {"verb": verb, "group": group, "resource": resource}
        if namespace is not None:
            attrs["namespace"] = namespace
        if name is not None:
            attrs["name"] = name
        if subresource is not None:
            attrs["subresource"] = subresource
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}", "system:authenticated"]
        review = kubernetes.client.AuthorizationV1Api(self.kube_api).create_subject_access_review(
            {"spec": {"user": self.user, "groups": groups, "resourceAttributes": attrs}}
        )
        return bool(review.status.allowed)

    def delete(self) -> None:
        rbac = kubernetes.client.RbacAuthorizationV1Api(self.kube_api)
        for obj in self.of_kind("ClusterRole", "ClusterRoleBinding"):
            delete = rbac.delete_cluster_role if obj["kind"] == "ClusterRole" else rbac.delete_cluster_role_binding
            with contextlib.suppress(ApiException):
                delete(obj["metadata"]["name"])
        with contextlib.suppress(ApiException):
            kubernetes.client.CoreV1Api(self.kube_api).delete_namespace(self.namespace)


@pytest.fixture(scope="module", params=["self", "cert-manager", "secret"])
def release(request, control_plane, kube_api) -> Iterator[Release]:
    rel = Release(control_plane, kube_api, request.param)
    yield rel
    rel.delete()


NS, TLS, MWC, SA = "<release namespace>", "<tls secret>", "<webhook config>", "<service account>"
ADMISSION = "admissionregistration.k8s.io"
RBAC = "rbac.authorization.k8s.io"

# (verb, group, resource, subresource, namespace, name): none of these is allowed, in any certs mode.
DENIED = [
    # Secrets anywhere but its own TLS Secret in its own namespace
    ("get", "", "secrets", None, OTHER_NS, TLS),
    ("get", "", "secrets", None, OTHER_NS, "dockerhub"),
    ("get", "", "secrets", None, "kube-system", "bootstrap-token-abcdef"),
    ("list", "", "secrets", None, OTHER_NS, None),
    ("watch", "", "secrets", None, OTHER_NS, None),
    ("create", "", "secrets", None, OTHER_NS, None),
    ("update", "", "secrets", None, OTHER_NS, TLS),
    ("patch", "", "secrets", None, OTHER_NS, TLS),
    ("delete", "", "secrets", None, OTHER_NS, TLS),
    ("list", "", "secrets", None, "", None),  # cluster-wide
    ("watch", "", "secrets", None, "", None),
    ("get", "", "secrets", None, "", TLS),
    ("deletecollection", "", "secrets", None, NS, None),
    ("delete", "", "secrets", None, NS, TLS),
    # other webhook configurations and admission policies
    ("get", ADMISSION, "mutatingwebhookconfigurations", None, None, "another-webhook"),
    ("update", ADMISSION, "mutatingwebhookconfigurations", None, None, "another-webhook"),
    ("delete", ADMISSION, "mutatingwebhookconfigurations", None, None, "another-webhook"),
    ("deletecollection", ADMISSION, "mutatingwebhookconfigurations", None, None, None),
    ("watch", ADMISSION, "mutatingwebhookconfigurations", None, None, None),
    ("get", ADMISSION, "validatingwebhookconfigurations", None, None, MWC),
    ("update", ADMISSION, "validatingwebhookconfigurations", None, None, MWC),
    ("patch", ADMISSION, "validatingwebhookconfigurations", None, None, "another-webhook"),
    ("create", ADMISSION, "validatingwebhookconfigurations", None, None, None),
    ("create", ADMISSION, "validatingadmissionpolicies", None, None, None),
    ("create", ADMISSION, "validatingadmissionpolicybindings", None, None, None),
    ("create", ADMISSION, "mutatingadmissionpolicies", None, None, None),
    # pods and workloads: it can neither run nor change anything
    ("create", "", "pods", None, NS, None),
    ("create", "", "pods", None, OTHER_NS, None),
    ("create", "", "pods", "exec", OTHER_NS, "task-pod"),
    ("patch", "", "pods", "ephemeralcontainers", OTHER_NS, "task-pod"),
    ("get", "", "pods", "log", OTHER_NS, "task-pod"),
    ("update", "apps", "deployments", None, NS, None),
    ("create", "batch", "jobs", None, OTHER_NS, None),
    # identities: no tokens, no impersonation, no certificates
    ("create", "", "serviceaccounts", "token", NS, SA),
    ("create", "", "serviceaccounts", "token", NS, "default"),
    ("create", "", "serviceaccounts", "token", OTHER_NS, "default"),
    ("create", "", "serviceaccounts", None, NS, None),
    ("impersonate", "", "users", None, None, "system:admin"),
    ("impersonate", "", "groups", None, None, "system:masters"),
    ("impersonate", "", "serviceaccounts", None, OTHER_NS, "default"),
    ("create", "certificates.k8s.io", "certificatesigningrequests", None, None, None),
    ("approve", "certificates.k8s.io", "signers", None, None, "kubernetes.io/kube-apiserver-client"),
    # RBAC escalation
    ("create", RBAC, "rolebindings", None, NS, None),
    ("create", RBAC, "rolebindings", None, OTHER_NS, None),
    ("update", RBAC, "roles", None, NS, None),
    ("bind", RBAC, "clusterroles", None, None, "cluster-admin"),
    ("escalate", RBAC, "roles", None, NS, None),
    ("create", RBAC, "clusterrolebindings", None, None, None),
    ("update", RBAC, "clusterroles", None, None, None),
    # its own rules, the namespaces' opt-out labels, nodes, leases
    ("update", "", "configmaps", None, NS, None),
    ("patch", "", "namespaces", None, None, OTHER_NS),
    ("get", "", "nodes", None, None, None),
    ("get", "", "nodes", "proxy", None, None),
    ("create", "coordination.k8s.io", "leases", None, NS, None),
]

# What each mode must still allow, so the table above cannot pass because nothing was bound.
NEEDED = {
    "self": [
        ("get", "", "secrets", None, NS, TLS),
        ("patch", ADMISSION, "mutatingwebhookconfigurations", None, None, MWC),
    ],
    "cert-manager": [],
    "secret": [],
}
# In cert-manager and secret modes the pod never talks to the API (its token is not even mounted).
DENIED_WITHOUT_SELF = [
    ("get", "", "secrets", None, NS, TLS),
    ("create", "", "secrets", None, NS, None),
    ("patch", ADMISSION, "mutatingwebhookconfigurations", None, None, MWC),
]


def _ask(rel: Release, row: tuple[Any, ...]) -> bool:
    verb, group, resource, sub, ns, name = row
    subst = {NS: rel.namespace, TLS: rel.tls_secret, MWC: rel.webhook_config, SA: rel.service_account}
    return rel.can(
        verb, resource, group=group, namespace=subst.get(ns, ns), name=subst.get(name, name), subresource=sub
    )


def _describe(row: tuple[Any, ...]) -> str:
    verb, group, resource, sub, ns, name = row
    what = f"{group + '/' if group else ''}{resource}{'/' + sub if sub else ''}"
    return f"{verb} {what} {name or '*'} in {ns if ns is not None else '(cluster)'}"


def test_least_privilege_asked_of_the_authorizer(release):
    wrong = [f"needed but denied: {_describe(r)}" for r in NEEDED[release.mode] if not _ask(release, r)]
    denied = DENIED + (DENIED_WITHOUT_SELF if release.mode != "self" else [])
    wrong += [f"allowed: {_describe(r)}" for r in denied if _ask(release, r)]
    assert not wrong, f"{release.mode} mode ({release.user}):\n" + "\n".join(wrong)
    print(f"\n{release.mode} mode: {len(denied)} denials and {len(NEEDED[release.mode])} grants checked")


def test_no_rbac_object_grants_wildcards_or_secret_reads_beyond_its_own(release):
    """The same, read off the rendered objects: no '*', and Secret get/list/watch only by resourceName."""
    for role in release.of_kind("Role", "ClusterRole"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            if "secrets" in rule["resources"] and set(rule["verbs"]) & {"get", "list", "watch"}:
                assert rule.get("resourceNames") == [release.tls_secret], rule
                assert role["kind"] == "Role", "Secret reads must be namespaced"
    for binding in release.of_kind("RoleBinding", "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}
        ]


# --------------------------------------------------------------------------------------------------
# What the process really asks the apiserver for
# --------------------------------------------------------------------------------------------------


class RecordingProxy:
    """HTTPS reverse proxy on loopback that records each request, then forwards it to the apiserver."""

    def __init__(self, upstream: str, upstream_ca: Path, workdir: Path) -> None:
        self.requests: list[tuple[str, str]] = []
        self.upstream = upstream.removeprefix("https://")
        self.upstream_ctx = ssl.create_default_context(cafile=str(upstream_ca))
        ca = generate_ca("recording-proxy")
        leaf = generate_serving_cert(ca, ip_addresses=["127.0.0.1"])
        self.ca_file = workdir / "proxy-ca.crt"
        self.ca_file.write_bytes(ca.cert_pem)
        (workdir / "proxy.crt").write_bytes(leaf.cert_pem)
        (workdir / "proxy.key").write_bytes(leaf.key_pem)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.requests.append((self.command, self.path))
                conn = http.client.HTTPSConnection(proxy.upstream, context=proxy.upstream_ctx, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(workdir / "proxy.crt", workdir / "proxy.key")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def kubeconfig(self, token: str, path: Path) -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_only_secret_it_touches_is_its_own_tls_secret(control_plane, kube_api, tmp_path):
    """init-certs and serve --manage-certs as the chart's ServiceAccount, every API request recorded."""
    rel = Release(control_plane, kube_api, "self")
    try:
        register_mutating_webhook(
            kube_api,
            rel.webhook_config,
            "https://127.0.0.1:9/mutate",
            generate_ca("placeholder").cert_pem,
            namespace_selector={"matchLabels": {"never": rel.id}},  # a registration that never applies
            webhook_name=f"{rel.id}.security.flyte.test",
        )
        token = control_plane.service_account_token(rel.namespace, rel.service_account)
        with RecordingProxy(control_plane.url, control_plane.ca_file, tmp_path) as proxy:
            kubeconfig = proxy.kubeconfig(token, tmp_path / "sa.kubeconfig")
            cert_args = [
                "--namespace", rel.namespace, "--service", "webhook", "--secret", rel.tls_secret,
                "--webhook-config", rel.webhook_config, "--extra-ip", "127.0.0.1", "--kubeconfig", str(kubeconfig),
            ]  # fmt: skip
            init = subprocess.run(
                [sys.executable, "-m", "webhook", "init-certs", *cert_args, "--cert-dir", str(tmp_path / "certs")],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert init.returncode == 0, init.stdout + init.stderr
            rules = tmp_path / "rules.yaml"
            rules.write_text(yaml.safe_dump({"rules": [{"registry": "docker.io", "secrets": ["dockerhub"]}]}))
            serve_args = ("--manage-certs", "--cert-check-interval", "0.3", *cert_args)
            with (
                WebhookProcess(rules, tmp_path / "certs", extra_args=serve_args) as hook,
                httpx.Client(verify=hook.ssl_context()) as client,
            ):
                for _ in range(5):
                    body = orjson.dumps(review_for(flyte_pod("ubuntu")))
                    assert client.post(hook.url, content=body).status_code == 200
                time.sleep(1.5)  # several certificate checks
                log = hook.log()
            recorded = list(proxy.requests)
    finally:
        delete_mutating_webhook(kube_api, rel.webhook_config)
        rel.delete()

    own = f"/api/v1/namespaces/{rel.namespace}/secrets"
    mwc = f"/apis/{ADMISSION}/v1/mutatingwebhookconfigurations/{rel.webhook_config}"
    allowed = {
        ("GET", f"{own}/{rel.tls_secret}"),
        ("POST", own),
        ("PUT", f"{own}/{rel.tls_secret}"),
        ("GET", mwc),
        ("PATCH", mwc),
        ("PUT", mwc),
    }
    paths = [(method, path.split("?", 1)[0]) for method, path in recorded]
    unexpected = sorted({p for p in paths if p not in allowed})
    assert not unexpected, f"requests beyond its own Secret and webhook configuration: {unexpected}"
    reads = [p for p in paths if p == ("GET", f"{own}/{rel.tls_secret}")]
    assert len(reads) >= 3, paths  # init-certs, then the server's periodic checks
    print(f"\n{len(recorded)} API requests recorded: {sorted(set(paths))}")
    key = (tmp_path / "certs" / "tls.key").read_text()
    key_body = "".join(key.splitlines()[1:-1])
    for text in (init.stdout + init.stderr, log):
        assert "PRIVATE KEY" not in text
        assert key_body[:40] not in text
        assert token not in text


# --------------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------------


def _marker(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


def secret_laden_review(markers: dict[str, str], *, image: str = "ubuntu") -> dict[str, Any]:
    pod = flyte_pod(image, "Invalid Image " + markers["image-arg"], "ghcr.io/my-org/app:1")
    container = pod["spec"]["containers"][0]
    container["env"] = [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": markers["env"]},
        {"name": "DB_PASSWORD", "value": markers["password"]},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]
    container["args"] = ["--token", markers["arg"]]
    container["command"] = ["sh", "-c", f"echo {markers['command']}"]
    pod["metadata"]["annotations"] = {"vault.hashicorp.com/agent-inject-token": markers["annotation"]}
    pod["spec"]["volumes"] = [{"name": "creds", "secret": {"secretName": "db"}}]
    pod["spec"]["imagePullSecrets"] = [{"name": "existing"}]
    review = review_for(pod)
    review["request"]["userInfo"] = {
        "username": "system:serviceaccount:flyte:flytepropeller",
        "uid": markers["uid"],
        "groups": ["system:serviceaccounts"],
        "extra": {
            "authentication.kubernetes.io/credential-id": [f"JTI={markers['credential']}"],
            "authentication.kubernetes.io/token": [f"eyJhbGciOiJSUzI1NiJ9.{markers['jwt']}.sig"],
        },
    }
    review["request"]["oldObject"] = {"data": {"password": base64.b64encode(markers["data"].encode()).decode()}}
    return review


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_logs_never_contain_env_values_secret_data_or_tokens(tmp_path, log_format):
    kinds = ["env", "password", "arg", "command", "annotation", "uid", "credential", "jwt", "data", "image-arg"]
    markers = {k: _marker(k) for k in kinds}
    bearer = _marker("bearer")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"registry": "docker.io", "secrets": ["dockerhub"]}]}))
    args = ("--log-level", "debug", "--log-format", log_format)
    with (
        WebhookProcess(rules, tmp_path / "certs", extra_args=args) as hook,
        httpx.Client(verify=hook.ssl_context(), headers={"Authorization": f"Bearer {bearer}"}) as client,
    ):
        sent = [
            secret_laden_review(markers),  # patched
            secret_laden_review(markers, image="quay.io/x/y:1"),  # unmatched registry
            {**secret_laden_review(markers), "apiVersion": "v1"},  # rejected: 400
        ]
        update = secret_laden_review(markers)
        update["request"]["operation"] = "UPDATE"  # ignored
        sent.append(update)
        statuses = [client.post(hook.url, content=orjson.dumps(r)).status_code for r in sent]
        statuses.append(client.post(hook.url, content=b'{"broken": "' + markers["env"].encode()).status_code)
        time.sleep(0.3)
        log = hook.log()
    assert statuses == [200, 200, 400, 200, 400]
    assert log.count("admission") >= 3, log  # the admissions were logged (not a vacuous pass)
    # Secret data travels base64-encoded (oldObject.data): look for it in both forms.
    encoded = {"data (base64)": base64.b64encode(markers["data"].encode()).decode()}
    leaked = [k for k, v in {**markers, **encoded, "bearer": bearer}.items() if v in log or v[-24:] in log]
    assert not leaked, f"logged: {leaked}\n{log[-3000:]}"
    if log_format == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        admissions = [entry for entry in lines if entry.get("msg") == "admission"]
        assert {e["result"] for e in admissions} >= {"patched", "unchanged", "ignored"}
        allowed_keys = {"ts", "level", "logger", "msg", "uid", "namespace", "pod", "operation", "dry_run", "result"}
        allowed_keys |= {"added", "unmatched", "invalid_images", "duration_ms", "missing_secrets"}
        for entry in admissions:
            assert set(entry) <= allowed_keys, set(entry) - allowed_keys


# --------------------------------------------------------------------------------------------------
# Lookalike registries
# --------------------------------------------------------------------------------------------------

LOOKALIKE_RULES = parse_config(
    {
        "rules": [
            {"registry": "ghcr.io/my-org", "secrets": ["ghcr-my-org"]},
            {"registry": "*.dkr.ecr.us-east-1.amazonaws.com", "secrets": ["ecr"]},
            {"registry": "registry.internal:5000", "secrets": ["internal"]},
            {"registry": "docker.io/my-team", "secrets": ["dockerhub-team"]},
        ]
    }
)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/my-org/app:1", ("ghcr-my-org",)),
        ("GHCR.io/my-org/app", ("ghcr-my-org",)),  # same host, other case: same registry
        ("ghcr.io/my-organization/app", ()),  # a longer org name is another org
        ("ghcr.io/my-org-evil/app", ()),
        ("ghcr.io/other/my-org/app", ()),  # the org must be the first path segment
        ("ghcr.io.evil.com/my-org/app", ()),  # a host that starts like the registry
        ("evil.com/ghcr.io/my-org/app", ()),  # the registry's name inside the path
        ("evil-ghcr.io/my-org/app", ()),
        ("ghcr.io:443/my-org/app", ()),  # another port is another registry
        ("ghcr.io:8443/my-org/app", ()),
        ("ghcr.io@evil.com/my-org/app", None),  # userinfo is not part of the grammar
        ("my-org/app", ()),  # no host: Docker Hub, not ghcr.io
        ("ghcr.io/my-org", ("ghcr-my-org",)),
        ("ghcr.io/My-Org/app", None),  # repositories are lowercase
        ("gh\u0441r.io/my-org/app", None),  # a Cyrillic letter: not ASCII, not an image
        ("xn--ghcr-9za.io/my-org/app", ()),  # punycode of a lookalike is just another host
        ("ghcr.io./my-org/app", None),  # trailing dot
        ("ghcr.io%2Fmy-org/app", None),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/app", ("ecr",)),
        ("a.b.dkr.ecr.us-east-1.amazonaws.com/app", ()),  # a glob label never spans a dot
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.com/app", ()),
        ("123456789012.dkr.ecr.us-east-2.amazonaws.com/app", ()),
        ("registry.internal:5000/app", ("internal",)),
        ("registry.internal/app", ()),  # no port is not port 5000
        ("registry.internal:50000/app", ()),
        ("registry.internal:5000.evil.com/app", None),
        ("docker.io/my-team/app", ("dockerhub-team",)),
        ("index.docker.io/my-team/app", ("dockerhub-team",)),
        ("my-team/app", ("dockerhub-team",)),  # Docker Hub short form
        ("docker.io.evil.com/my-team/app", ()),
        ("my-team.evil.com/app", ()),
    ],
)
def test_lookalike_images_never_get_a_registrys_secret(image, expected):
    try:
        ref = parse_image(image)
    except InvalidImageReference:
        assert expected is None, f"{image!r} should parse"
        return
    assert expected is not None, f"{image!r} parsed as {ref}"
    assert LOOKALIKE_RULES.rules.secrets_for(ref) == expected


def test_threat_model_document_exists():
    text = (REPO / "docs" / "security.md").read_text()
    for heading in ("## Threat model", "cannot", "imagePullSecrets", "RBAC"):
        assert heading in text
    assert re.search(r"\btests/test_security\.py\b", text)
