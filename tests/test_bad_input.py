"""A corpus of bad input over HTTPS against a real ``serve`` subprocess.

Every case sends raw bytes (over TLS unless it is about TLS itself) and expects a clear answer:
a 4xx with an error text, or an allowing AdmissionReview, or, for input that is not HTTP at all,
the connection closed promptly. Never a 500, never a hang. After every case the same server must
answer a good review with its patch, so a case that wedges or kills the process fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.reviews import flyte_pod, review_for
from tests.webhook_process import REPO, WebhookProcess

CONFIG = REPO / "examples" / "rules.yaml"
BODY_TIMEOUT = 2  # --body-timeout and --header-timeout of the server under test, in seconds
MAX_BODY = 4 * 1024 * 1024  # the default --max-body-bytes
CLOSED = None  # expected "status" of a case the server answers by closing the connection
HELD = -1  # "status" of an exchange the server neither answered nor closed in time: always a failure
CLOSE = object()  # in a case's parts: close the connection from the client side
TRIED: Counter[str] = Counter()


def free_of_500(status: int | None) -> bool:
    return status is None or status < 500


@dataclass
class Answer:
    status: int | None  # None: closed without an HTTP answer
    headers: dict[str, str]
    body: bytes
    sent: int  # bytes the client had sent when the first byte of the answer (or the close) arrived
    elapsed: float
    timed_out: bool = False  # still open, unanswered, when the client gave up
    rss_growth_kib: int = 0  # how much the server process grew during the exchange, at its peak
    extra: list[tuple[int, bytes]] = field(default_factory=list)  # further answers (pipelining)

    def json(self) -> Any:
        return orjson.loads(self.body)


def _parse(buf: bytes) -> tuple[int, dict[str, str], int, int] | None:
    """(status, headers, header end, content length) once a complete head is in ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, end + 4, int(headers.get("content-length", "-1"))


async def _exchange(
    port: int, ctx: ssl.SSLContext | None, parts: Iterable[Any], timeout: float, responses: int
) -> Answer:
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None), timeout
    )
    sent = 0

    async def send() -> None:
        nonlocal sent
        for part in parts:
            if part is CLOSE:
                writer.close()
                return
            if isinstance(part, int | float):
                await asyncio.sleep(part)
                continue
            writer.write(part)
            await writer.drain()
            sent += len(part)

    sender = asyncio.create_task(send())
    answers: list[tuple[int, dict[str, str], bytes]] = []
    buf = b""
    sent_at_answer: int | None = None
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            while len(answers) < responses:
                head = _parse(buf)
                if head is not None:
                    status, headers, start, length = head
                    if length >= 0 and len(buf) >= start + length:
                        answers.append((status, headers, buf[start : start + length]))
                        buf = buf[start + length :]
                        continue
                chunk = await reader.read(1 << 16)
                if sent_at_answer is None:
                    sent_at_answer = sent
                if not chunk:
                    if head is not None and head[3] < 0:  # no content-length: the body ends at EOF
                        answers.append((head[0], head[1], buf[head[2] :]))
                    break
                buf += chunk
    except TimeoutError:
        timed_out = True
    except (ConnectionError, ssl.SSLError, OSError):
        pass  # reset or TLS alert: closed
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)
    elapsed = time.monotonic() - started
    sent = sent if sent_at_answer is None else sent_at_answer
    if not answers:
        return Answer(HELD if timed_out else None, {}, b"", sent, elapsed, timed_out)
    (status, headers, body), *rest = answers
    return Answer(status, headers, body, sent, elapsed, timed_out, extra=[(s, b) for s, _, b in rest])


def exchange(
    webhook: WebhookProcess, parts: Iterable[Any], *, tls: bool = True, timeout: float = 20, responses: int = 1
) -> Answer:
    ctx = webhook.ssl_context() if tls else None
    return asyncio.run(_exchange(webhook.port, ctx, parts, timeout, responses))


# --------------------------------------------------------------------------------------------------
# Request builders
# --------------------------------------------------------------------------------------------------


def http(
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/mutate",
    version: str = "HTTP/1.1",
    ctype: str | None = "application/json",
    length: int | None = -1,
    headers: Iterable[str] = (),
) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length < 0 else length}")
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def envelope(request: Any = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    if request is not None:
        doc["request"] = request
    doc.update(top)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def good_review() -> dict[str, Any]:
    return review_for(flyte_pod("ubuntu"))


def with_request(**changes: Any) -> bytes:
    """A good pod-CREATE review with fields of ``request`` replaced (or dropped with _DROP)."""
    doc = good_review()
    for key, value in changes.items():
        if value is _DROP:
            doc["request"].pop(key, None)
        else:
            doc["request"][key] = value
    return orjson.dumps(doc)


def with_pod(mutate: Callable[[dict[str, Any]], Any]) -> bytes:
    """A good review whose pod is changed in place by ``mutate``."""
    doc = good_review()
    mutate(doc["request"]["object"])
    return orjson.dumps(doc)


def set_image(image: Any) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        pod["spec"]["containers"][0]["image"] = image

    return change


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj = pod
        for p in parents:
            obj = obj[p]
        obj[last] = value

    return change


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def client_hello() -> bytes:
    """The first flight of a real TLS client, to send truncated."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def chunked_body(total: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    piece = b"%x\r\n%s\r\n" % (chunk, b"a" * chunk)
    for _ in range(total // chunk):
        yield piece
    yield b"0\r\n\r\n"


def raw_body(total: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    piece = b" " * chunk
    for _ in range(total // chunk):
        yield piece


GOOD = orjson.dumps(good_review())
FIFTY_MB = 50 * 1024 * 1024
_JSON = "application/json"
ALLOWED = '"allowed":true'
PATCHED = '"patchType":"JSONPatch"'


@dataclass
class Case:
    id: str
    parts: Callable[[], Iterable[Any]]  # what the client sends (bytes, pauses in seconds, CLOSE)
    status: int | None  # expected HTTP status; CLOSED: the server closes the connection
    text: str | tuple[str, ...] = ""  # expected in the answer's body (one of them, for a tuple)
    tls: bool = True
    within: float = 5.0  # seconds the answer may take
    check: Callable[[Answer], None] | None = None
    responses: int = 1


def send(data: bytes) -> Callable[[], list[bytes]]:
    return lambda: [data]


def post(body: bytes, **kw: Any) -> Callable[[], list[bytes]]:
    return send(http(body, **kw))


def warnings_of(answer: Answer) -> list[str]:
    return answer.json()["response"].get("warnings", [])


def no_patch(answer: Answer) -> None:
    assert "patch" not in answer.json()["response"]


def at_most_ten_short_warnings(answer: Answer) -> None:
    warnings = warnings_of(answer)
    assert len(warnings) == 10
    assert all(len(w) <= 250 for w in warnings)


def small_answer(answer: Answer) -> None:
    assert len(answer.body) < 2000, len(answer.body)


def far_below_fifty_mb(answer: Answer) -> None:
    """Refused while streaming: the process grew by far less than the body (see test_bad_input)."""
    assert answer.rss_growth_kib < 12 * 1024, f"RSS grew by {answer.rss_growth_kib} KiB"
    print(f" [50 MB refused: the server's peak RSS grew by {answer.rss_growth_kib / 1024:.1f} MiB]", end="")


def two_answers(answer: Answer) -> None:
    assert [s for s, _ in answer.extra] == [200]
    assert PATCHED.encode() in answer.extra[0][1]


CASES = [
    # ---- not JSON --------------------------------------------------------------------------------
    Case("empty-body", post(b""), 400, "zero-length, empty document"),
    Case("not-json", post(b"{not json"), 400, "request body is not valid JSON"),
    Case("invalid-utf8", post(b'{"apiVersion":"\xff\xfe"}'), 400, "request body is not valid JSON"),
    Case("utf8-bom", post(b"\xef\xbb\xbf" + GOOD), 400, "byte order mark"),
    Case("lone-surrogate", post(b'{"a":"\\ud800"}'), 400, "surrogate"),
    Case("nan-literal", post(b'{"a": NaN}'), 400, "request body is not valid JSON"),
    Case("infinite-number", post(b"[1e999999]"), 400, "infinity"),
    Case("trailing-garbage", post(GOOD + b"}}"), 400, "request body is not valid JSON"),
    Case("two-documents", post(GOOD + GOOD), 400, "request body is not valid JSON"),
    Case("xml", post(b"<AdmissionReview/>"), 400, "request body is not valid JSON"),
    # ---- JSON, but not an object -----------------------------------------------------------------
    Case("array", post(b"[]"), 400, "expected a JSON object (an AdmissionReview), got list"),
    Case("string", post(b'"AdmissionReview"'), 400, "got str"),
    Case("number", post(b"42"), 400, "got int"),
    Case("null", post(b"null"), 400, "got NoneType"),
    Case("boolean", post(b"true"), 400, "got bool"),
    Case("array-of-reviews", post(b"[" + GOOD + b"]"), 400, "got list"),
    # ---- the envelope ----------------------------------------------------------------------------
    Case("empty-object", post(b"{}"), 400, "unsupported apiVersion None"),
    Case(
        "v1beta1",
        post(orjson.dumps({**good_review(), "apiVersion": "admission.k8s.io/v1beta1"})),
        400,
        "unsupported apiVersion 'admission.k8s.io/v1beta1'",
    ),
    Case("apiversion-number", post(orjson.dumps({**good_review(), "apiVersion": 1})), 400, "unsupported apiVersion 1"),
    Case("kind-pod", post(orjson.dumps({**good_review(), "kind": "Pod"})), 400, "unsupported kind 'Pod'"),
    Case("kind-missing", post(orjson.dumps(envelope(kind=_DROP, request={"uid": "u"}))), 400, "unsupported kind None"),
    Case("request-missing", post(orjson.dumps(envelope())), 400, "AdmissionReview has no 'request' object"),
    Case("request-null", post(orjson.dumps({**good_review(), "request": None})), 400, "no 'request' object"),
    Case("request-list", post(orjson.dumps({**good_review(), "request": [1]})), 400, "no 'request' object"),
    Case("request-string", post(orjson.dumps({**good_review(), "request": "x"})), 400, "no 'request' object"),
    Case("uid-missing", post(with_request(uid=_DROP)), 400, "AdmissionReview request has no 'uid'"),
    Case("uid-empty", post(with_request(uid="")), 400, "has no 'uid'"),
    Case("uid-number", post(with_request(uid=7)), 400, "has no 'uid'"),
    Case("uid-null", post(with_request(uid=None)), 400, "has no 'uid'"),
    Case("uid-object", post(with_request(uid={"id": "u"})), 400, "has no 'uid'"),
    Case("object-missing", post(with_request(object=_DROP)), 400, "pod CREATE has no 'object' pod"),
    Case("object-null", post(with_request(object=None)), 400, "has no 'object' pod"),
    Case("object-list", post(with_request(object=[{"spec": {}}])), 400, "has no 'object' pod"),
    Case("object-string", post(with_request(object="pod")), 400, "has no 'object' pod"),
    Case("object-number", post(with_request(object=3.5)), 400, "has no 'object' pod"),
    Case(
        "deeply-nested-object",
        post(with_request(object=None)[:-2] + b"," + b'"x":' + nested(5000) + b"}}"),
        400,
        "nested too deeply",
    ),
    Case("deeply-nested-array", post(b"[" * 100_000 + b"]" * 100_000), 400, "nested too deeply (over 1024 levels)"),
    # ---- well-formed reviews that are not pod creates: allowed untouched -------------------------
    Case("update", post(with_request(operation="UPDATE")), 200, ALLOWED, check=no_patch),
    Case("operation-missing", post(with_request(operation=_DROP)), 200, ALLOWED, check=no_patch),
    Case("operation-number", post(with_request(operation=1)), 200, ALLOWED, check=no_patch),
    Case(
        "deployment",
        post(with_request(kind={"group": "apps", "version": "v1", "kind": "Deployment"})),
        200,
        ALLOWED,
        check=no_patch,
    ),
    Case("request-kind-null", post(with_request(kind=None)), 200, ALLOWED, check=no_patch),
    Case("request-kind-string", post(with_request(kind="Pod")), 200, ALLOWED, check=no_patch),
    Case("subresource-status", post(with_request(subResource="status")), 200, ALLOWED, check=no_patch),
    Case(
        "null-everywhere",
        post(
            orjson.dumps(
                envelope(
                    {
                        "uid": "u",
                        "kind": None,
                        "operation": None,
                        "object": None,
                        "namespace": None,
                        "userInfo": None,
                        "dryRun": None,
                        "oldObject": None,
                    }
                )
            )
        ),
        200,
        ALLOWED,
        check=no_patch,
    ),
    # ---- pod creates with broken parts: allowed, with a warning where something was skipped -----
    Case(
        "pod-null-everywhere",
        post(with_request(object={"metadata": None, "spec": None, "status": None})),
        200,
        ALLOWED,
        check=no_patch,
    ),
    Case("metadata-null", post(with_pod(set_path("metadata", None))), 200, ALLOWED, check=no_patch),
    Case("labels-null", post(with_pod(set_path("metadata.labels", None))), 200, ALLOWED, check=no_patch),
    Case(
        "labels-list",
        post(with_pod(set_path("metadata.labels", ["execution-id", "node-id"]))),
        200,
        ALLOWED,
        check=no_patch,
    ),
    Case(
        "labels-not-strings",
        post(with_pod(set_path("metadata.labels", {"execution-id": 5, "node-id": None}))),
        200,
        PATCHED,
    ),
    Case("spec-null", post(with_pod(set_path("spec", None))), 200, "pod has no spec; nothing injected"),
    Case("spec-list", post(with_pod(set_path("spec", [{"containers": []}]))), 200, "pod has no spec"),
    Case("spec-string", post(with_pod(set_path("spec", "x"))), 200, "pod has no spec"),
    Case("containers-null", post(with_pod(set_path("spec.containers", None))), 200, ALLOWED, check=no_patch),
    Case(
        "containers-object",
        post(with_pod(set_path("spec.containers", {"image": "ubuntu"}))),
        200,
        "spec.containers is not a list",
    ),
    Case(
        "containers-string", post(with_pod(set_path("spec.containers", "ubuntu"))), 200, "spec.containers is not a list"
    ),
    Case(
        "init-containers-number",
        post(with_pod(set_path("spec.initContainers", 3))),
        200,
        "spec.initContainers is not a list",
    ),
    Case(
        "containers-of-numbers",
        post(with_pod(set_path("spec.containers", [1, 2.5, None]))),
        200,
        "spec.containers[0] is not an object",
    ),
    Case("image-int", post(with_pod(set_image(42))), 200, "image reference must be a string, not int"),
    Case("image-float", post(with_pod(set_image(1.5))), 200, "must be a string, not float"),
    Case(
        "image-huge-int",
        post(with_pod(set_image("<big>")).replace(b'"<big>"', b"1" + b"0" * 40)),
        200,
        "must be a string, not float",
    ),
    Case("image-bool", post(with_pod(set_image(True))), 200, "must be a string, not bool"),
    Case("image-list", post(with_pod(set_image(["ubuntu"]))), 200, "must be a string, not list"),
    Case("image-object", post(with_pod(set_image({"name": "ubuntu"}))), 200, "must be a string, not dict"),
    Case("image-null", post(with_pod(set_image(None))), 200, ALLOWED, check=no_patch),
    Case("image-empty", post(with_pod(set_image(""))), 200, "image reference is empty"),
    Case("image-whitespace", post(with_pod(set_image("ubuntu latest"))), 200, "contains whitespace"),
    Case("image-nul-byte", post(with_pod(set_image("ubuntu\x00"))), 200, "invalid reference format"),
    Case("image-unicode", post(with_pod(set_image("ghcr.io/my-org/caf\u00e9"))), 200, "invalid reference format"),
    Case(
        "image-100k-chars",
        post(with_pod(set_image("a" * 100_000))),
        200,
        "pullsecrets-webhook: containers[0].image 'aaaa",
        check=small_answer,
    ),
    Case(
        "one-thousand-bad-images",
        post(with_pod(set_path("spec.containers", [{"name": f"c{i}", "image": f"Bad {i}"} for i in range(1000)]))),
        200,
        "contains whitespace",
        check=at_most_ten_short_warnings,
    ),
    Case(
        "ten-thousand-containers",
        post(with_pod(set_path("spec.containers", [{"name": f"c{i}", "image": "ubuntu"} for i in range(10_000)]))),
        200,
        PATCHED,
    ),
    Case(
        "pull-secrets-object",
        post(with_pod(set_path("spec.imagePullSecrets", {"name": "x"}))),
        200,
        "spec.imagePullSecrets is not a list; left untouched",
        check=no_patch,
    ),
    Case(
        "pull-secrets-junk",
        post(with_pod(set_path("spec.imagePullSecrets", [None, 5, {"name": []}, {"x": 1}]))),
        200,
        PATCHED,
    ),
    Case("annotations-list", post(with_pod(set_path("metadata.annotations", ["x"]))), 200, PATCHED),
    Case(
        "deep-but-allowed",
        post(with_pod(set_path("spec.extra", "<deep>")).replace(b'"<deep>"', nested(1000))),
        200,
        PATCHED,
    ),
    Case("unicode-names", post(with_pod(set_path("metadata.generateName", "\U0001f680-\u00e9-"))), 200, PATCHED),
    Case("duplicate-keys", post(b'{"kind":"Pod",' + GOOD[1:]), 200, PATCHED),
    Case("timeout-garbage", post(GOOD, path="/mutate?timeout=banana"), 200, PATCHED),
    Case("timeout-negative", post(GOOD, path="/mutate?timeout=-5s"), 200, PATCHED),
    # ---- HTTP ------------------------------------------------------------------------------------
    Case("text-plain", post(GOOD, ctype="text/plain"), 415, "unsupported content type 'text/plain'"),
    Case("xml-type", post(GOOD, ctype="application/xml"), 415, "send application/json"),
    Case("form", post(b"a=1", ctype="application/x-www-form-urlencoded"), 415, "unsupported content type"),
    Case("multipart", post(GOOD, ctype="multipart/form-data; boundary=x"), 415, "unsupported content type"),
    Case("json-with-charset", post(GOOD, ctype="application/json; charset=utf-8"), 200, PATCHED),
    Case("no-content-type", post(GOOD, ctype=None), 200, PATCHED),
    Case("get-mutate", send(http(method="GET", length=None, ctype=None)), 405, "Method Not Allowed"),
    Case("put-mutate", post(GOOD, method="PUT"), 405, "Method Not Allowed"),
    Case("delete-healthz", send(http(method="DELETE", path="/healthz", length=None)), 405, "Method Not Allowed"),
    Case("unknown-path", post(GOOD, path="/validate"), 404, "Not Found"),
    Case("root", send(http(method="GET", path="/", length=None)), 404, "Not Found"),
    Case("traversal", send(http(method="GET", path="/../../etc/passwd", length=None)), 404, "Not Found"),
    Case("no-openapi", send(http(method="GET", path="/openapi.json", length=None)), 404, "Not Found"),
    Case("no-docs", send(http(method="GET", path="/docs", length=None)), 404, "Not Found"),
    Case("http-1.0", post(GOOD, version="HTTP/1.0"), 200, PATCHED),
    Case("http-1.0-no-length", post(GOOD, version="HTTP/1.0", length=None), 400, "zero-length, empty document"),
    Case("http-0.9-style", send(b"GET /healthz\r\n\r\n"), 200, '{"status":"ok"}'),
    Case("http-2-preface", send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400, "Invalid HTTP request received."),
    Case("not-http", send(b"HELLO WORLD\r\n\r\n"), 400, "Invalid HTTP request received."),
    Case(
        "length-and-chunked",
        send(http(b"0\r\n\r\n", headers=["Transfer-Encoding: chunked"])),
        400,
        "Invalid HTTP request received.",
    ),
    Case(
        "length-not-a-number",
        send(http(GOOD, length=None, headers=["Content-Length: abc"])),
        400,
        "Invalid HTTP request received.",
    ),
    Case(
        "length-negative",
        send(http(GOOD, length=None, headers=["Content-Length: -1"])),
        400,
        "Invalid HTTP request received.",
    ),
    Case("nul-in-header", send(http(GOOD, headers=["X-A: a\x00b"])), 400, "Invalid HTTP request received."),
    Case(
        "bad-chunk-size",
        send(http(b"zz\r\n", length=None, headers=["Transfer-Encoding: chunked"])),
        400,
        "Invalid HTTP request received.",
    ),
    Case("pipelined", send(http(GOOD) + http(GOOD)), 200, PATCHED, responses=2, check=two_answers),
    Case("huge-header", send(http(GOOD, headers=["X-Big: " + "a" * 1_000_000])), 431, "request headers exceed"),
    Case(
        "many-headers", send(http(GOOD, headers=[f"X-H{i}: v" for i in range(20_000)])), 431, "request headers exceed"
    ),
    Case("huge-url", post(GOOD, path="/mutate?x=" + "a" * 1_000_000), 431, "request headers exceed"),
    Case("declared-50mb", send(http(length=FIFTY_MB)), 413, "request body of 52428800 bytes exceeds the limit"),
    Case("declared-limit-plus-one", send(http(length=MAX_BODY + 1)), 413, "exceeds the limit of 4194304 bytes"),
    Case(
        "expect-continue-50mb", send(http(length=FIFTY_MB, headers=["Expect: 100-continue"])), 413, "exceeds the limit"
    ),
    Case(
        "streamed-50mb-chunked",
        lambda: [http(length=None, headers=["Transfer-Encoding: chunked"]), *chunked_body(FIFTY_MB)],
        413,
        "request body exceeds the limit of 4194304 bytes",
        within=10,
        check=far_below_fifty_mb,
    ),
    Case(
        "streamed-50mb-lying-length",  # declares a small body, then keeps sending
        lambda: [http(length=1000), *raw_body(FIFTY_MB)],
        400,
        # the app's answer to the first 1000 bytes, or the parser's to the "next request" if it comes first
        ("request body is not valid JSON", "Invalid HTTP request received."),
        within=10,
        check=far_below_fifty_mb,
    ),
    Case(
        "slow-body",
        lambda: [http(length=1000), b"{", 30],
        408,
        f"not received within {BODY_TIMEOUT}s",
        within=BODY_TIMEOUT + 3,
    ),
    Case(
        "slow-body-apiserver-timeout",
        lambda: [http(path="/mutate?timeout=1s", length=1000), b"{", 30],
        408,
        "request body not received within 1s",
        within=3,
    ),
    Case(
        "trickled-body",
        lambda: [http(length=len(GOOD)), *(x for b in GOOD[:40] for x in (bytes([b]), 0.1)), 30],
        408,
        "not received within",
        within=BODY_TIMEOUT + 3,
    ),
    Case("client-gone-mid-body", lambda: [http(length=1000), b"{", CLOSE], CLOSED),
    # ---- connections that never make a request ---------------------------------------------------
    Case("silent-connection", lambda: [30], CLOSED, within=BODY_TIMEOUT + 3),
    Case("slow-headers", lambda: [b"POST /mutate HTTP/1.1\r\nHost: x\r\n", 30], CLOSED, within=BODY_TIMEOUT + 3),
    Case(
        "trickled-headers",
        lambda: (x for b in http(GOOD)[:200] for x in (bytes([b]), 0.05)),
        CLOSED,
        within=BODY_TIMEOUT + 3,
    ),
    # ---- not TLS ---------------------------------------------------------------------------------
    Case("plaintext-http", send(http(GOOD)), CLOSED, tls=False),
    Case("plaintext-get", send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), CLOSED, tls=False),
    Case("garbage-bytes", send(bytes(range(256)) * 16), CLOSED, tls=False),
    Case("zero-bytes", send(b"\x00" * 4096), CLOSED, tls=False),
    Case("truncated-client-hello", lambda: [client_hello()[:60], 1, CLOSE], CLOSED, tls=False),
    # A TLS handshake that stalls is cut off after --header-timeout too (the listener's handshake
    # bound), not after asyncio's default of 60 s.
    Case("client-hello-then-silence", lambda: [client_hello(), 30], CLOSED, tls=False, within=BODY_TIMEOUT + 3),
    Case(
        "sslv2-style-hello",
        lambda: [b"\x80\x2e\x01\x00\x02\x00\x15" + b"\x00" * 40, 30],
        CLOSED,
        tls=False,
        within=BODY_TIMEOUT + 3,
    ),
    Case("tls-record-overflow", send(b"\x16\x03\x01\xff\xff" + b"\x01" * 65535), CLOSED, tls=False),
    Case("connect-and-close", lambda: [CLOSE], CLOSED, tls=False),
]


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-input")
    args = ("--body-timeout", str(BODY_TIMEOUT), "--header-timeout", str(BODY_TIMEOUT))
    with WebhookProcess(CONFIG, base / "certs", extra_args=args) as proc:
        yield proc
        print(
            f"\nbad-input corpus: {TRIED['case']} cases sent, {TRIED['good']} good reviews in between, "
            f"{TRIED['case'] + TRIED['good']} inputs in all"
        )


def _status_kib(webhook: WebhookProcess, field: str) -> int:
    assert webhook.proc is not None
    for line in Path(f"/proc/{webhook.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def rss_kib(webhook: WebhookProcess) -> int:
    return _status_kib(webhook, "VmRSS")


def reset_peak_rss(webhook: WebhookProcess) -> None:
    """Start a new peak: VmHWM then tracks this case only (Linux clear_refs, value 5)."""
    assert webhook.proc is not None
    with contextlib.suppress(OSError):
        Path(f"/proc/{webhook.proc.pid}/clear_refs").write_text("5")


def peak_rss_kib(webhook: WebhookProcess) -> int:
    return _status_kib(webhook, "VmHWM")


def assert_serves(webhook: WebhookProcess) -> None:
    """A good review gets its patch, promptly, from the same process."""
    assert webhook.proc is not None
    assert webhook.proc.poll() is None, webhook.log(4000)
    TRIED["good"] += 1
    answer = exchange(webhook, [http(GOOD)], timeout=10)
    assert answer.status == 200, (answer, webhook.log(4000))
    assert PATCHED.encode() in answer.body
    assert answer.elapsed < 3, answer.elapsed


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(webhook, case):
    TRIED["case"] += 1
    before = rss_kib(webhook)
    reset_peak_rss(webhook)
    answer = exchange(webhook, case.parts(), tls=case.tls, timeout=case.within + 10, responses=case.responses)
    assert free_of_500(answer.status), answer
    assert answer.status == case.status, (answer.status, answer.body[:500])
    assert answer.elapsed < case.within, f"took {answer.elapsed:.1f}s"
    if case.text:
        texts = (case.text,) if isinstance(case.text, str) else case.text
        assert any(t in answer.body.decode("utf-8", "replace") for t in texts), answer.body[:500]
    if answer.status is not None and answer.status >= 400 and answer.headers.get("content-type") == _JSON:
        error = answer.json()
        if "detail" in error:  # routing errors (404, 405) come from Starlette
            assert error["detail"]
        else:
            assert error["status"] == answer.status
            assert error["error"]
    if answer.status == 200 and b'"AdmissionReview"' in answer.body:
        assert answer.json()["response"]["allowed"] is True
    answer.rss_growth_kib = max(rss_kib(webhook), peak_rss_kib(webhook)) - before
    if case.check is not None:
        case.check(answer)
    # Nothing of a refused body is kept: no case may grow the process by more than a few MiB.
    assert answer.rss_growth_kib < 16 * 1024, f"RSS grew from {before} KiB by {answer.rss_growth_kib} KiB"
    assert_serves(webhook)


def test_no_internal_errors_and_no_tracebacks(webhook):
    """Every refusal was a decision, not an accident (runs after the corpus, in file order)."""
    assert_serves(webhook)
    metrics = exchange(webhook, [http(method="GET", path="/metrics", length=None, ctype=None)]).body.decode()
    counts = dict(re.findall(r'pullsecrets_webhook_admission_requests_total\{result="([^"]+)"\} (\S+)', metrics))
    assert float(counts.get("error", 0)) == 0, counts
    assert float(counts.get("invalid", 0)) >= 30, counts
    log = webhook.log()
    assert "client disconnected before the request body was complete" in log
    assert "Traceback" not in log
    assert '"level":"error"' not in log


def test_abusive_connections_in_parallel_do_not_starve_good_requests(webhook):
    """Silent, slow and oversized clients at once: good reviews keep their latency, all are cut off."""

    async def scenario() -> tuple[list[Answer], list[float]]:
        ctx = webhook.ssl_context()
        abusers = [
            *[[30] for _ in range(20)],  # silent
            *[[http(length=1000), b"{", 30] for _ in range(20)],  # slow body
            *[[http(length=None, headers=["Transfer-Encoding: chunked"]), *chunked_body(8 * 1024 * 1024)]] * 4,
        ]
        tasks = [asyncio.create_task(_exchange(webhook.port, ctx, parts, 20, 1)) for parts in abusers]
        stalled = [[client_hello(), 30] for _ in range(10)]  # TLS handshakes that never finish
        tasks += [asyncio.create_task(_exchange(webhook.port, None, parts, 20, 1)) for parts in stalled]
        await asyncio.sleep(0.3)
        latencies = []
        for _ in range(20):
            answer = await _exchange(webhook.port, ctx, [http(GOOD)], 10, 1)
            assert answer.status == 200
            latencies.append(answer.elapsed)
            await asyncio.sleep(0.05)
        return await asyncio.gather(*tasks), latencies

    TRIED["case"] += 54
    TRIED["good"] += 20
    answers, latencies = asyncio.run(scenario())
    statuses = Counter(a.status for a in answers)
    assert statuses == {None: 30, 408: 20, 413: 4}, statuses
    assert all(a.elapsed < BODY_TIMEOUT + 4 for a in answers), max(a.elapsed for a in answers)
    assert max(latencies) < 2, latencies
    median, worst = sorted(latencies)[10] * 1000, max(latencies) * 1000
    print(f"\ngood-review latency under abuse: median {median:.0f} ms, max {worst:.0f} ms")
    assert_serves(webhook)
