"""The official openai SDK against the gateway in process; /health, /ready, /metrics."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import gateway_client, make_settings
from tests.fakes import FakeBackend


async def test_sdk_chat_stream_models_and_errors(sdk):
    client, backend = sdk
    reply = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "2+2?"}],
        extra_body={"router": {"strategy": "direct"}})
    assert reply.choices[0].message.content.strip() == "The answer is 4."
    assert reply.usage.completion_tokens == 4
    assert reply.model_extra["router"]["strategy"] == "direct"

    stream = await client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "2+2?"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() \
        == "The answer is 4."
    assert chunks[-1].usage.completion_tokens == 4

    ids = [m.id async for m in client.models.list()]
    assert ids == ["auto", "fake-model"]
    auto = await client.models.retrieve("auto")
    assert (auto.id, auto.object, auto.owned_by) == ("auto", "model", "ttc-router")
    assert (await client.models.retrieve("fake-model")).owned_by == "fake"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("missing")

    with pytest.raises(openai.NotFoundError) as error:
        await client.chat.completions.create(model="missing",
                                             messages=[{"role": "user", "content": "x"}])
    assert error.value.body["code"] == "model_not_found"

    embedding = await client.embeddings.create(model="fake-model", input="hello")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]


async def test_health_ready_and_metrics():
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["backends"] == {"fake": "up"}
        await client.post("/v1/chat/completions",
                          json={"model": "fake-model", "messages": [{"role": "user",
                                                                     "content": "x"}]})
        text = (await client.get("/metrics")).text
    assert 'ttc_requests_total{arm="none",model="fake-model",policy="none",status="200",' \
           'strategy="direct"}' in text
    assert "ttc_overhead_seconds_bucket" in text
    assert 'ttc_upstream_requests_total{backend="fake",status="200"}' in text


async def test_ready_is_503_when_no_backend_answers():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with gateway_client(httpx.MockTransport(refuse)) as client:
        reply = await client.get("/ready")
        chat = await client.post("/v1/chat/completions",
                                 json={"model": "fake-model",
                                       "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 503
    assert reply.json()["backends"] == {"fake": "down"}
    assert chat.status_code == 503


async def test_ready_stays_ready_while_traffic_fills_the_backends_slots():
    """``/ready`` probes the backend outside the concurrency gate that traffic queues at, so
    a saturated replica is still ready."""
    import asyncio

    release = asyncio.Event()
    backend = FakeBackend()
    app = backend.app()

    async def slow(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            await release.wait()
        await app(scope, receive, send)

    settings = make_settings(backend_max_concurrency=1, backend_max_waiting=0)
    async with gateway_client(httpx.ASGITransport(app=slow), settings) as client:
        busy = asyncio.create_task(client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "x"}]}))
        await asyncio.sleep(0.1)
        refused = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "x"}]})
        ready = await client.get("/ready")
        release.set()
        assert (await busy).status_code == 200
    assert refused.status_code == 503  # the one slot is taken and nobody may wait
    assert ready.status_code == 200 and ready.json()["backends"] == {"fake": "up"}


async def test_an_upstream_url_without_v1_is_named_when_its_models_are_not_found(caplog):
    # `--upstream http://127.0.0.1:8500` (no /v1) left /ready at 503 with the warning
    # "GET /models: Not Found" and nothing to say which part of the URL was wrong.
    settings = make_settings(models=None, upstreams=[{"url": "http://backend.test",
                                                      "name": "fake"}])
    with caplog.at_level("WARNING", logger="service.backends"):
        async with gateway_client(FakeBackend().transport(), settings) as client:
            assert (await client.get("/ready")).status_code == 503
    assert "http://backend.test does not end in /v1" in caplog.text


async def test_openapi_operation_ids_are_unique_and_the_forwarded_paths_stay():
    # Seen on GET /openapi.json: the forwarded /v1/{path} route served five methods under one
    # operation id, forward_v1__path__post, and FastAPI warned "Duplicate Operation ID" four
    # times; a client generated from the document (openapi-generator) drops or renames them.
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.get("/openapi.json")  # strict pytest: a warning fails the test
    assert reply.status_code == 200
    operations = [(method, path, operation["operationId"])
                  for path, item in reply.json()["paths"].items()
                  for method, operation in item.items()]
    ids = [operation_id for _, _, operation_id in operations]
    assert len(ids) == len(set(ids)), sorted(ids)
    forwarded = {method for method, path, _ in operations if path == "/v1/{path}"}
    assert forwarded == {"get", "post", "put", "patch", "delete"}
