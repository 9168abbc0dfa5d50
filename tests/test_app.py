"""The HTTP edge, in-process (ASGI): status codes, limits and the never-a-500 rule."""

import httpx
import orjson
import pytest

from tests.reviews import ECR_IMAGE, decode_patch, flyte_pod, review_for
from webhook import app as app_module
from webhook import metrics
from webhook.app import AppState, create_app
from webhook.config import load_config

CONFIG = load_config("examples/rules.yaml")


@pytest.fixture
def state():
    return AppState(config=CONFIG, max_body_bytes=64 * 1024)


@pytest.fixture
async def client(state):
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as c:
        yield c


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_mutate_returns_a_patch_and_ignores_the_timeout_query(client):
    r = await client.post(
        "/mutate?timeout=5s",
        content=orjson.dumps(review_for(flyte_pod(ECR_IMAGE))),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    ops = decode_patch(r.json()["response"])
    assert ops[0] == {"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ecr-pull"}]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{", {}, 400, "not valid JSON"),
        (b"{}", {}, 400, "unsupported apiVersion"),
        (orjson.dumps(review_for(None)), {}, 400, "no 'object' pod"),
        (b"x" * (64 * 1024 + 1), {}, 413, "exceeds the limit"),
        (b"{}", {"content-type": "text/plain"}, 415, "unsupported content type"),
        (b"{}", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported content type"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(client, body, headers, status, message):
    r = await client.post("/mutate", content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status
    assert message in r.json()["error"]


async def test_oversized_body_without_content_length_is_refused_while_streaming(client):
    async def chunks():
        for _ in range(100):
            yield b"x" * 4096

    r = await client.post("/mutate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_internal_error_admits_the_pod_untouched_with_a_warning(client, monkeypatch):
    def boom(*_args, **_kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(app_module, "review", boom)
    lines: list[dict] = []
    monkeypatch.setattr(app_module.logs, "admission", lines.append)
    samples = metrics.REGISTRY.get_sample_value("pullsecrets_webhook_admission_duration_seconds_count") or 0
    r = await client.post("/mutate", content=orjson.dumps(review_for(flyte_pod(ECR_IMAGE), uid="u1", dry_run=True)))
    assert r.status_code == 200
    resp = r.json()["response"]
    assert resp == {
        "uid": "u1",
        "allowed": True,
        "warnings": ["pullsecrets-webhook: internal error (RuntimeError)"],
    }
    # The fault still has its admission line and latency sample, like every other review.
    (line,) = lines
    assert (line["uid"], line["result"], line["error"]) == ("u1", "error", "RuntimeError")
    # ... with the same envelope fields as a successful review's line.
    assert (line["namespace"], line["operation"], line["dry_run"]) == ("flytesnacks-development", "CREATE", True)
    assert line["duration_ms"] >= 0
    assert metrics.REGISTRY.get_sample_value("pullsecrets_webhook_admission_duration_seconds_count") == samples + 1


async def test_health_and_readiness(client, state):
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["rules"] == 6
    state.ready = False
    assert (await client.get("/readyz")).status_code == 503


async def test_metrics_count_results(client):
    # The registry is process-wide and other tests count too: compare before and after.
    samples = {
        "patched": ("pullsecrets_webhook_admission_requests_total", {"result": "patched"}),
        "skipped": ("pullsecrets_webhook_admission_requests_total", {"result": "skipped-not-flyte"}),
        "injected": (
            "pullsecrets_webhook_injected_secrets_total",
            {"registry": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "secret": "ecr-pull"},
        ),
    }

    def counts() -> dict[str, float]:
        return {k: metrics.REGISTRY.get_sample_value(name, labels) or 0.0 for k, (name, labels) in samples.items()}

    before = counts()
    await client.post("/mutate", content=orjson.dumps(review_for(flyte_pod(ECR_IMAGE))))
    await client.post("/mutate", content=orjson.dumps(review_for(flyte_pod(ECR_IMAGE, labels={}))))
    after = counts()
    assert {k: after[k] - before[k] for k in samples} == {"patched": 1, "skipped": 1, "injected": 1}
    text = (await client.get("/metrics")).text
    assert 'pullsecrets_webhook_admission_requests_total{result="patched"}' in text
    assert 'pullsecrets_webhook_admission_requests_total{result="skipped-not-flyte"}' in text
    assert (
        'pullsecrets_webhook_injected_secrets_total{registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",secret="ecr-pull"}'
        in text
    )


async def test_docs_are_not_exposed(client):
    assert (await client.get("/docs")).status_code == 404
    assert (await client.get("/openapi.json")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nope", 404, "Not Found"),
        ("GET", "/mutate", 405, "Method Not Allowed"),
        ("PUT", "/healthz", 405, "Method Not Allowed"),
    ],
)
async def test_unknown_paths_and_methods_answer_in_the_error_shape(client, method, path, status, error):
    r = await client.request(method, path)
    assert r.status_code == status
    assert r.json() == {"error": error, "status": status}


async def test_unmatched_registries_cannot_use_up_the_labels_of_injected_ones(client, monkeypatch):
    monkeypatch.setattr(metrics, "injected_registry_label", metrics.BoundedLabel(limit=2))
    monkeypatch.setattr(metrics, "unmatched_registry_label", metrics.BoundedLabel(limit=2))
    ecr_host = ECR_IMAGE.split("/")[0]

    def sample(name, **labels):
        return metrics.REGISTRY.get_sample_value(f"pullsecrets_webhook_{name}_total", labels) or 0

    before_ecr = sample("injected_secrets", secret="ecr-pull", registry=ecr_host)
    before_other = sample("unmatched_images", registry=metrics.OTHER)
    for i in range(5):  # five distinct registries no rule covers
        await client.post("/mutate", content=orjson.dumps(review_for(flyte_pod(f"reg{i}.example.net/app"))))
    await client.post("/mutate", content=orjson.dumps(review_for(flyte_pod(ECR_IMAGE))))
    assert sample("unmatched_images", registry=metrics.OTHER) == before_other + 3, "the budget bounds the labels"
    assert sample("unmatched_images", registry="reg4.example.net") == 0
    assert sample("injected_secrets", secret="ecr-pull", registry=ecr_host) == before_ecr + 1
