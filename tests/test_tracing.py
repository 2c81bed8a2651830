"""Where the time goes: the OpenTelemetry spans of one request (through an in-memory exporter),
the ``x-ttc-overhead-ms`` header, the streaming latency histograms and the in-flight gauge."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from service import tracing
from service.app import create_app
from service.search.documents import Document
from service.search.local import LocalIndex, index_path
from service.settings import Settings
from tests.conftest import gateway_client, make_settings
from tests.fakes import FakeBackend
from tests.scripted import ScriptedLLM


async def traced(transport: httpx.AsyncBaseTransport, body: dict[str, Any],
                 settings: Settings | None = None,
                 ) -> tuple[httpx.Response, list[ReadableSpan]]:
    """One request through the gateway with tracing on; its reply and every span it made."""
    exporter = InMemorySpanExporter()
    app = create_app(settings or make_settings(), transport=transport, span_exporter=exporter)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        reply = await client.post("/v1/chat/completions", json=body)
        reply.read()
    assert not tracing.enabled()  # the app's shutdown turned tracing off again
    return reply, list(exporter.get_finished_spans())


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children_of(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None
            and s.parent.span_id == parent.context.span_id]


async def test_one_auto_request_shows_classify_decide_and_the_upstream_call():
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}],
            "max_tokens": 64, "router": {"policy": "cheap"}}
    reply, spans = await traced(FakeBackend().transport(), body,
                                make_settings(policies={"cheap": "fixed:direct@128"}))
    assert reply.status_code == 200
    usage = reply.json()["usage"]
    root = one(spans, "chat auto")
    assert root.parent is None and root.kind == SpanKind.SERVER
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert sorted(s.name for s in children_of(spans, root)) == [
        "chat fake-model", "ttc.classify", "ttc.decide"]
    attributes = root.attributes or {}
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "auto"
    assert attributes["gen_ai.response.model"] == "fake-model"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["ttc.strategy"] == "direct"
    assert attributes["ttc.decision_id"] == reply.headers["x-ttc-decision-id"]
    assert attributes["http.response.status_code"] == 200
    assert 0 <= attributes["ttc.overhead_ms"] <= float(reply.headers["x-ttc-overhead-ms"]) + 50
    upstream = one(spans, "chat fake-model")
    assert upstream.kind == SpanKind.CLIENT
    up = upstream.attributes or {}
    assert up["gen_ai.request.model"] == "fake-model" and up["gen_ai.provider.name"] == "fake"
    assert up["server.address"] == "backend.test" and up["server.port"] == 80
    assert up["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    decide = one(spans, "ttc.decide")
    assert (decide.attributes or {})["ttc.budget_tokens"] == reply.json()["router"]["budget_tokens"]
    # The stages run in order inside the request.
    classify = one(spans, "ttc.classify")
    assert root.start_time <= classify.start_time <= classify.end_time <= decide.start_time
    assert decide.end_time <= upstream.start_time <= upstream.end_time <= root.end_time


async def test_a_vote_has_one_client_span_per_upstream_call():
    llm = ScriptedLLM(lambda i, body: "The answer is 4.", honours_n=False)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 256}}
    reply, spans = await traced(llm.transport(), body)
    assert reply.status_code == 200
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(calls) == reply.json()["router"]["upstream_calls"] == len(llm.requests)
    root = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert root.name == "chat fake-model"  # the model the client named
    assert {s.parent.span_id for s in calls if s.parent} == {root.context.span_id}
    assert sum((s.attributes or {})["gen_ai.usage.output_tokens"] for s in calls) == \
        reply.json()["usage"]["completion_tokens"]


async def test_a_streamed_call_span_lasts_until_the_stream_ends_and_carries_its_usage():
    body = {"model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "What is 2+2?"}]}
    reply, spans = await traced(FakeBackend().transport(), body)
    assert reply.status_code == 200 and "data: [DONE]" in reply.text
    upstream = next(s for s in spans if s.kind == SpanKind.CLIENT)
    assert (upstream.attributes or {})["gen_ai.usage.output_tokens"] > 0
    root = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert upstream.end_time <= root.end_time


async def test_each_search_is_a_retrieval_span(tmp_path: Path):
    data = tmp_path / "data"
    LocalIndex(index_path(data)).add([Document("owl", "Owls", "Owls are birds of prey.")])
    llm = ScriptedLLM(lambda i, body: "SEARCH: owls" if i == 0 else "The answer is birds.")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Owls are?"}],
            "router": {"strategy": "search", "budget_tokens": 512}}
    reply, spans = await traced(llm.transport(), body, make_settings(data_dir=data))
    assert reply.status_code == 200
    retrievals = [s for s in spans if s.name == "retrieval local"]
    assert len(retrievals) == reply.json()["router"]["search_calls"] >= 1
    root = next(s for s in spans if s.kind == SpanKind.SERVER)
    for retrieval in retrievals:
        attributes = retrieval.attributes or {}
        assert attributes["gen_ai.operation.name"] == "retrieval"
        assert attributes["gen_ai.data_source.id"] == "local"
        assert attributes["ttc.search.hits"] == 1  # the one document about owls
        assert retrieval.parent is not None and retrieval.parent.span_id == root.context.span_id
        assert root.start_time <= retrieval.start_time <= retrieval.end_time <= root.end_time


async def test_a_failing_backend_marks_the_call_and_the_request_as_errors():
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    reply, spans = await traced(FakeBackend(failures=[500, 500, 500]).transport(), body)
    assert reply.status_code == 502
    upstream = next(s for s in spans if s.kind == SpanKind.CLIENT)
    assert upstream.status.status_code == StatusCode.ERROR
    assert (upstream.attributes or {})["error.type"] == "upstream_5xx"
    root = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert root.status.status_code == StatusCode.ERROR
    assert (root.attributes or {})["http.response.status_code"] == 502


async def test_tracing_is_off_by_default_and_makes_no_span():
    async with gateway_client(FakeBackend().transport()) as client:
        assert not tracing.enabled()
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200
    with tracing.span("anything") as span:
        assert span is None


async def test_every_completion_reply_says_the_gateways_own_overhead():
    async with gateway_client(FakeBackend().transport()) as client:
        for stream in (False, True):
            reply = await client.post("/v1/chat/completions", json={
                "model": "fake-model", "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status_code == 200
            overhead_ms = float(reply.headers["x-ttc-overhead-ms"])
            assert 0 <= overhead_ms <= reply.elapsed.total_seconds() * 1000


def histogram_count(name: str, strategy: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", {"strategy": strategy}) or 0.0


async def test_streams_record_time_to_first_token_and_inter_token_latency():
    backend = FakeBackend(answer="one two three four")
    ttft = histogram_count("ttc_time_to_first_token_seconds", "direct")
    itl = histogram_count("ttc_inter_token_latency_seconds", "direct")
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "Count"}]})
        assert reply.status_code == 200
        await client.post("/v1/chat/completions", json={  # not a stream: neither is recorded
            "model": "fake-model", "messages": [{"role": "user", "content": "Count"}]})
    tokens = len(backend.answer.split())
    assert histogram_count("ttc_time_to_first_token_seconds", "direct") == ttft + 1
    assert histogram_count("ttc_inter_token_latency_seconds", "direct") == itl + tokens - 1


async def test_requests_in_flight_counts_the_requests_being_served():
    seen: list[float] = []
    backend = FakeBackend()
    inner = backend.transport()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            seen.append(REGISTRY.get_sample_value("ttc_requests_in_flight") or 0.0)
        return await inner.handle_async_request(request)

    before = REGISTRY.get_sample_value("ttc_requests_in_flight")
    async with gateway_client(httpx.MockTransport(handle)) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200
    assert seen == [before + 1]
    assert REGISTRY.get_sample_value("ttc_requests_in_flight") == before


def test_spans_reach_an_otlp_collector_over_http():
    """With ``otel_enabled`` the spans leave over OTLP/HTTP: a collector on 127.0.0.1 gets
    them as protobuf at /v1/traces when the gateway stops."""
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append((self.path, self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert tracing.start(make_settings(
            otel_enabled=True, otel_endpoint=f"http://127.0.0.1:{server.server_port}"))
        with tracing.span("ttc.classify"):
            pass
    finally:
        tracing.stop()  # exports what the batch processor still holds
        server.shutdown()
        server.server_close()
    assert [path for path, _ in received] == ["/v1/traces"]
    export = ExportTraceServiceRequest.FromString(received[0][1])
    names = [span.name for resource in export.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert names == ["ttc.classify"]
    resource = {a.key: a.value.string_value for a in export.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "ttc-router"
