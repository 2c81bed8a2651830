"""Contract tests of the direct strategy: the gateway in process before a fake backend."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from service.backends import BackendRegistry
from service.errors import UpstreamClientError, UpstreamError
from service.search import Hit
from service.upstream import refuses_temperature
from tests.conftest import gateway_client, make_settings, metric
from tests.fakes import FakeBackend, ScriptedStream, scripted_transport, sse_body


def sse_payloads(text: str) -> list[Any]:
    """The data payloads of an SSE body, ``[DONE]`` as the string."""
    out = []
    for event in text.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_chat_json_answer_has_router_object_and_headers(chat_body):
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 200
    body = reply.json()
    assert body["choices"][0]["message"]["content"].strip() == "The answer is 4."
    assert body["router"]["strategy"] == "direct"
    assert body["router"]["decision_id"] == reply.headers["x-ttc-decision-id"]
    assert reply.headers["x-ttc-strategy"] == "direct"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert body["router"]["spent_tokens"] == 4 and body["router"]["upstream_calls"] == 1


async def test_unknown_fields_reach_the_backend_untouched():
    backend = FakeBackend()
    request = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                         {"type": "image_url",
                                          "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "look", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "logprobs": True,
        "top_logprobs": 2, "seed": 7, "stop": ["\n\n"], "user": "u-1",
        "reasoning_effort": "low", "top_k": 20, "chat_template_kwargs": {"enable_thinking": False},
        "router": {"strategy": "direct"},
    }
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    assert reply.status_code == 200
    sent = backend.requests[0]
    expected = {k: v for k, v in request.items() if k != "router"}
    assert sent == expected  # byte-for-byte the same fields, router removed


async def test_max_completion_tokens_is_sent_as_max_tokens_too(chat_body):
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        await client.post("/v1/chat/completions", json={**chat_body, "max_completion_tokens": 2})
        await client.post("/v1/chat/completions",
                          json={**chat_body, "max_tokens": 9, "max_completion_tokens": 3})
    assert backend.requests[0]["max_tokens"] == 2
    assert backend.requests[0]["max_completion_tokens"] == 2
    assert backend.requests[1]["max_tokens"] == 3 == backend.requests[1]["max_completion_tokens"]


async def test_budget_caps_every_choice(chat_body):
    backend = FakeBackend(honours_n=False)
    async with gateway_client(backend.transport(), make_settings(supports_n=False)) as client:
        reply = await client.post("/v1/chat/completions",
                                  json={**chat_body, "n": 4, "router": {"budget_tokens": 8}})
    assert reply.status_code == 200
    assert [r["max_tokens"] for r in backend.requests] == [2, 2, 2, 2]
    assert reply.json()["router"]["spent_tokens"] <= 8


async def test_n_is_honoured_by_fan_out_against_a_backend_that_ignores_it(chat_body):
    backend = FakeBackend(honours_n=False)
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "n": 3, "seed": 5})
        again = await client.post("/v1/chat/completions", json={**chat_body, "n": 2})
    body = reply.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] == 21
    assert body["router"]["upstream_calls"] == 3
    # the first reply showed that n is ignored: 1 call asking n=3, then 2 single calls
    assert [r.get("n") for r in backend.requests[:3]] == [3, 1, 1]
    assert sorted(r["seed"] for r in backend.requests[1:3]) == [6, 7]
    # once detected, the next request fans out from the start
    assert [c["index"] for c in again.json()["choices"]] == [0, 1]
    assert [r.get("n") for r in backend.requests[3:]] == [1, 1]


async def test_n_is_passed_to_a_backend_that_honours_it(chat_body):
    backend = FakeBackend(honours_n=True)
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "n": 3})
    assert len(reply.json()["choices"]) == 3
    assert len(backend.requests) == 1


async def test_completions_endpoint(chat_body):
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/completions",
                                  json={"model": "fake-model", "prompt": "2+2=", "max_tokens": 3})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["text"]
    assert backend.paths == ["/v1/completions"]


async def test_models_lists_backend_models_and_auto():
    backend = FakeBackend(models=("m-a", "m-b"))
    async with gateway_client(backend.transport(), make_settings(models=None)) as client:
        reply = await client.get("/v1/models")
    ids = [m["id"] for m in reply.json()["data"]]
    assert ids == ["auto", "m-a", "m-b"]


async def test_auto_resolves_to_the_default_model(chat_body):
    backend = FakeBackend(models=("m-a", "m-b"))
    settings = make_settings(models=None, default_model="m-b")
    async with gateway_client(backend.transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "model": "auto"})
    assert reply.status_code == 200
    assert backend.requests[0]["model"] == "m-b"


async def test_a_default_model_no_backend_serves_is_named_in_the_error_and_at_start(
        chat_body, caplog):
    """``default_model`` mistyped (``m-c``): ``/v1/models`` lists ``auto``, so "the model
    'auto' does not exist" sent the user to a listing that shows it; the error names the
    setting and what the backends serve, and the start-up log says so at once."""
    backend = FakeBackend(models=("m-a", "m-b"))
    settings = make_settings(models=None, default_model="m-c")
    with caplog.at_level("WARNING", logger="service.backends"):
        async with gateway_client(backend.transport(), settings) as client:
            listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
            reply = await client.post("/v1/chat/completions", json={**chat_body,
                                                                    "model": "auto"})
            served = await client.post("/v1/chat/completions", json={**chat_body,
                                                                     "model": "m-a"})
    assert "auto" in listed
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "default_model 'm-c'" in error["message"] and "m-a, m-b" in error["message"]
    assert served.status_code == 200  # the models the backends serve still work
    assert not backend.requests[:-1]  # nothing was sent upstream for auto
    assert any("default_model 'm-c'" in r.getMessage() for r in caplog.records)


async def test_two_upstreams_each_serve_their_models(chat_body):
    first, second = FakeBackend(models=("m-a",)), FakeBackend(models=("m-b",))
    apps = {"one.test": first.transport(), "two.test": second.transport()}

    class ByHost(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await apps[request.url.host].handle_async_request(request)

    from service.settings import Settings, UpstreamSettings
    settings = Settings(upstreams=[UpstreamSettings(url="http://one.test/v1"),
                                   UpstreamSettings(url="http://two.test/v1")])
    async with gateway_client(ByHost(), settings) as client:
        await client.post("/v1/chat/completions", json={**chat_body, "model": "m-b"})
        await client.post("/v1/chat/completions", json={**chat_body, "model": "m-a"})
        models = (await client.get("/v1/models")).json()["data"]
    assert [r["model"] for r in first.requests] == ["m-a"]
    assert [r["model"] for r in second.requests] == ["m-b"]
    assert {m["id"]: m["owned_by"] for m in models}["m-b"] == "two.test"


# --- streaming ------------------------------------------------------------------------------


async def test_stream_with_include_usage_ends_with_summed_usage(chat_body):
    backend = FakeBackend()
    request = {**chat_body, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(reply.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["router"]["decision_id"] == reply.headers["x-ttc-decision-id"]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]
                   if e["choices"])
    assert text.strip() == "The answer is 4."


async def test_stream_without_include_usage_strips_usage_but_counts_tokens(chat_body):
    backend = FakeBackend()
    before = metric("ttc_tokens_total", kind="completion", strategy="direct", policy="none",
                    arm="none", model="fake-model")
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    events = sse_payloads(reply.text)
    assert all("usage" not in e or e.get("choices") for e in events if isinstance(e, dict))
    assert not any(isinstance(e, dict) and e.get("usage") for e in events)
    assert backend.requests[0]["stream_options"] == {"include_usage": True}
    after = metric("ttc_tokens_total", kind="completion", strategy="direct", policy="none",
                   arm="none", model="fake-model")
    assert after - before == 4


async def test_running_usage_totals_are_counted_once(chat_body):
    backend = FakeBackend(continuous_usage=True)
    request = {**chat_body, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    events = sse_payloads(reply.text)
    assert events[-2]["usage"]["completion_tokens"] == 4


async def test_stream_fan_out_reindexes_choices_and_sums_usage(chat_body):
    backend = FakeBackend(honours_n=False)
    request = {**chat_body, "n": 3, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway_client(backend.transport(), make_settings(supports_n=False)) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    events = [e for e in sse_payloads(reply.text) if isinstance(e, dict)]
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or "")
            if choice.get("finish_reason"):
                finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert sorted(texts) == [0, 1, 2]
    assert all(t.strip() == "The answer is 4." for t in texts.values())
    assert finishes == {0: ["stop"], 1: ["stop"], 2: ["stop"]}
    assert events[-1]["usage"] == {"prompt_tokens": 21, "completion_tokens": 12,
                                   "total_tokens": 33}


async def test_a_stream_from_a_backend_found_to_ignore_n_is_completed_by_fan_out(chat_body):
    # Seen before: n=3 streamed from a backend not known to ignore n (supports_n unset) gave
    # one choice, answered 200, and every later request asked it for n again.
    backend = FakeBackend(honours_n=False)
    request = {**chat_body, "n": 3, "seed": 5, "stream": True,
               "stream_options": {"include_usage": True}}
    async with gateway_client(backend.transport()) as client:
        replies = [await client.post("/v1/chat/completions", json=request) for _ in range(2)]
    for reply in replies:
        events = [e for e in sse_payloads(reply.text) if isinstance(e, dict)]
        finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"]
                    if c.get("finish_reason")}
        assert finishes == {0: "stop", 1: "stop", 2: "stop"}, reply.text
        assert events[-1]["usage"]["completion_tokens"] == 12
        assert events[-1]["router"]["upstream_calls"] == 3
    # one call asking n=3, then the two choices it did not give as single calls (seeds 6, 7);
    # once detected, the next request fans out from the start
    assert [r.get("n") for r in backend.requests] == [3, 1, 1, 1, 1, 1]
    assert sorted(r["seed"] for r in backend.requests[1:3]) == [6, 7]


async def test_tool_call_deltas_split_over_many_chunks_arrive_intact(chat_body):
    arguments = json.dumps({"city": "Zürich", "days": 3, "units": "metric"})
    backend = FakeBackend(tool_call=("get_weather", arguments))
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    calls: dict[int, dict[str, str]] = {}
    finish = []
    for event in sse_payloads(reply.text):
        if not isinstance(event, dict):
            continue
        for choice in event["choices"]:
            for fragment in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(fragment["index"], {"id": "", "name": "", "args": ""})
                call["id"] = fragment.get("id") or call["id"]
                function = fragment.get("function") or {}
                call["name"] = function.get("name") or call["name"]
                call["args"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                finish.append(choice["finish_reason"])
    assert calls == {0: {"id": "call_1", "name": "get_weather", "args": arguments}}
    assert finish == ["tool_calls"]


async def test_utf8_character_split_across_upstream_chunks_is_not_mangled(chat_body):
    text = "Grüße, 世界 🌍"
    event = b"data: " + json.dumps(
        {"id": "x", "object": "chat.completion.chunk", "model": "fake-model",
         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
        ensure_ascii=False).encode() + b"\n\n"
    cut = event.index("🌍".encode()) + 2  # in the middle of the 4-byte emoji
    cut_2 = event.index("世".encode()) + 1
    chunks = [event[:cut_2], event[cut_2:cut], event[cut:]] + sse_body(
        {"id": "x", "object": "chat.completion.chunk", "model": "fake-model",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, "data: [DONE]\n\n")
    transport = scripted_transport(lambda r: httpx.Response(200, stream=ScriptedStream(chunks)))
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    events = sse_payloads(reply.content.decode("utf-8"))
    assert events[0]["choices"][0]["delta"]["content"] == text


# --- backend failures -----------------------------------------------------------------------


async def test_upstream_500_becomes_502_after_retries(chat_body):
    backend = FakeBackend(failures=[500, 500, 500])
    before = metric("ttc_upstream_retries_total", backend="fake", reason="upstream_error")
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert len(backend.requests) == 3  # one try and max_retries=2 retries
    after = metric("ttc_upstream_retries_total", backend="fake", reason="upstream_error")
    assert after - before == 2


async def test_upstream_429_and_503_are_retried_then_answered(chat_body):
    backend = FakeBackend(failures=[429, 503])
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 200
    assert reply.json()["router"]["upstream_calls"] == 3


async def test_upstream_400_keeps_its_status_and_message(chat_body):
    backend = FakeBackend(failures=[400])
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "scripted failure 400"
    assert len(backend.requests) == 1  # a client error is not retried


async def test_upstream_read_timeout_becomes_504(chat_body):
    transport = scripted_transport(lambda r: httpx.ReadTimeout("slow", request=r))
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 504
    assert reply.json()["error"]["type"] == "timeout_error"


async def test_unreachable_upstream_becomes_503(chat_body):
    calls = []

    def refuse(request: httpx.Request) -> Exception:
        calls.append(request)
        return httpx.ConnectError("refused", request=request)

    async with gateway_client(scripted_transport(refuse)) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 503
    assert len(calls) == 3  # connection errors are retried


async def test_malformed_json_from_upstream_becomes_502(chat_body):
    transport = scripted_transport(lambda r: httpx.Response(200, content=b"{not json"))
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/chat/completions", json=chat_body)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_malformed"


async def test_stream_refused_before_first_byte_keeps_the_http_status(chat_body):
    backend = FakeBackend(failures=[400])
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["message"] == "scripted failure 400"


@pytest.mark.parametrize("strategy", ["parallel_vote", "search"])
async def test_a_voted_or_searched_stream_refused_at_once_keeps_the_http_status(
        chat_body, strategy, tmp_path):
    # A vote or a search streams its answer only at the end; a refusal that comes back before
    # the first keep-alive is due (a prompt over the context, a bad field) is an HTTP status,
    # as for a direct stream, not a 200 stream holding an error event.
    backend = FakeBackend(failures=[400] * 20)
    body = {**chat_body, "stream": True,
            "router": {"strategy": strategy, "budget_tokens": 512}}
    async with gateway_client(backend.transport(), make_settings(
            data_dir=tmp_path, max_retries=0)) as client:
        reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["message"] == "scripted failure 400"


async def test_stream_that_breaks_midway_ends_with_error_event_and_done_without_retry(chat_body):
    calls = []
    first = {"id": "x", "object": "chat.completion.chunk", "model": "fake-model",
             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}

    def breaking(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, stream=ScriptedStream(
            sse_body(first), error=httpx.ReadError("connection reset")))

    async with gateway_client(scripted_transport(breaking)) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    events = sse_payloads(reply.text)
    assert reply.status_code == 200
    assert events[0]["choices"][0]["delta"]["content"] == "Hel"
    assert "error" in events[-2] and events[-2]["error"]["code"] == "stream_broken"
    assert events[-1] == "[DONE]"
    assert len(calls) == 1  # no retry once bytes reached the client
    assert reply.text.count("Hel") == 1


async def test_truncated_stream_without_done_ends_with_error_event(chat_body):
    first = {"id": "x", "object": "chat.completion.chunk", "model": "fake-model",
             "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}]}
    transport = scripted_transport(
        lambda r: httpx.Response(200, stream=ScriptedStream(sse_body(first))))
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    events = sse_payloads(reply.text)
    assert events[-2]["error"]["code"] == "stream_truncated"
    assert events[-1] == "[DONE]"


async def test_stream_broken_before_first_byte_is_retried(chat_body):
    calls = []
    good = FakeBackend()
    good_transport = good.transport()

    async def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.path.endswith("/models"):
            return await good_transport.handle_async_request(request)
        if len(calls) < 3:
            return httpx.Response(200, stream=ScriptedStream(
                [], error=httpx.ReadError("reset before the first byte")))
        return await good_transport.handle_async_request(request)

    async with gateway_client(httpx.MockTransport(flaky)) as client:
        calls.clear()
        reply = await client.post("/v1/chat/completions", json={**chat_body, "stream": True})
    assert reply.status_code == 200
    assert sse_payloads(reply.text)[-1] == "[DONE]"
    assert len(calls) == 3


# --- other /v1/* endpoints ------------------------------------------------------------------


async def test_embeddings_are_proxied_and_counted():
    backend = FakeBackend()
    before = metric("ttc_proxied_requests_total", endpoint="embeddings", status="200")
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/embeddings", json={"model": "fake-model", "input": "hi"},
                                  headers={"authorization": "Bearer client-secret"})
    assert reply.status_code == 200
    assert reply.json()["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    assert metric("ttc_proxied_requests_total", endpoint="embeddings", status="200") == before + 1


async def test_streamed_responses_endpoint_is_proxied():
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/responses",
                                  json={"model": "auto", "input": "hi", "stream": True})
    assert reply.status_code == 200
    assert "event: response.completed" in reply.text
    assert backend.requests[0]["model"] == "fake-model"  # auto resolved


def responses_backend(output_tokens: int) -> httpx.MockTransport:
    """A backend whose ``/v1/responses`` spends ``output_tokens`` (Responses API usage: JSON,
    or a stream whose ``response.completed`` event carries it) and whose ``/v1/embeddings``
    reads 3 prompt tokens."""
    usage = {"input_tokens": 11, "output_tokens": output_tokens,
             "total_tokens": 11 + output_tokens}
    done = {"id": "resp_1", "object": "response", "status": "completed",
            "output": [{"type": "message", "content": [
                {"type": "output_text", "text": "The usage is here: \"usage\": {}"}]}],
            "usage": usage}

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json={"object": "list", "data": [], "usage": {
                "prompt_tokens": 3, "total_tokens": 3}})
        if not body.get("stream"):
            return httpx.Response(200, json=done)
        events = [("response.created", {"type": "response.created",
                                        "response": {**done, "status": "in_progress",
                                                     "usage": None}}),
                  ("response.completed", {"type": "response.completed", "response": done})]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=(
            ScriptedStream([f"event: {k}\ndata: {json.dumps(v)}\n\n".encode()
                            for k, v in events])))

    return scripted_transport(handle)


async def test_tokens_spent_through_other_endpoints_are_counted():
    def tokens(kind: str) -> float:
        return metric("ttc_tokens_total", kind=kind, strategy="none", policy="none",
                      arm="none", model="fake-model")

    before = tokens("completion"), tokens("prompt")
    async with gateway_client(responses_backend(30)) as client:
        for stream in (False, True):
            reply = await client.post("/v1/responses", json={
                "model": "auto", "input": "hi", "stream": stream})
            assert reply.status_code == 200
        await client.post("/v1/embeddings", json={"model": "fake-model", "input": "hi"})
    assert tokens("completion") - before[0] == 2 * 30
    assert tokens("prompt") - before[1] == 2 * 11 + 3


def test_a_forwarded_replys_usage_is_its_last_valid_one():
    from service.proxy_usage import read_usage

    chat = b'{"usage": {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}}'
    assert read_usage(chat) == (4, 9)
    running = (b'data: {"usage": {"input_tokens": 1, "output_tokens": 2}}\n\n'
               b'data: {"usage": {"input_tokens": 1, "output_tokens": 5}}\n\n')
    assert read_usage(running) == (1, 5)  # running totals: the last one
    broken = b'{"usage": {"prompt_tokens": 3, "total_tokens": 3}} {"usage": {"prompt_tokens": -1}}'
    assert read_usage(broken) == (3, 0)  # a negative count is no count
    assert read_usage(b'{"usage": null, "text": "\\"usage\\": {\\"output_tokens\\": 9}"}') is None


async def test_proxy_to_unknown_model_is_404():
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post("/v1/embeddings", json={"model": "nope", "input": "hi"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


async def test_client_authorization_is_not_forwarded_upstream(chat_body):
    seen = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"id": "x", "choices": [], "usage": None})

    from service.settings import Settings, UpstreamSettings
    settings = Settings(upstreams=[UpstreamSettings(url="http://b.test/v1", models=["fake-model"],
                                                    api_key="sk-upstream")])
    async with gateway_client(scripted_transport(record), settings) as client:
        await client.post("/v1/chat/completions", json=chat_body,
                          headers={"authorization": "Bearer sk-client"})
        await client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"},
                          headers={"authorization": "Bearer sk-client"})
    assert seen == ["Bearer sk-upstream", "Bearer sk-upstream"]


async def test_client_going_away_closes_the_upstream_and_counts_what_was_spent(chat_body):
    from router_models.plan import Plan
    from service.backends import BackendRegistry
    from service.protocol import parse_request
    from service.strategies.base import Call
    from service.strategies.direct import open_streams, relay
    from service.upstream import UpstreamClient

    closed = []

    class EndlessStream(httpx.AsyncByteStream):
        async def __aiter__(self):
            while True:
                yield sse_body({"id": "x", "object": "chat.completion.chunk", "model": "m",
                                "choices": [{"index": 0, "delta": {"content": "la "},
                                             "finish_reason": None}]})[0]

        async def aclose(self):
            closed.append(True)

    settings = make_settings()
    client = UpstreamClient(settings, transport=scripted_transport(
        lambda r: httpx.Response(200, stream=EndlessStream())))
    registry = BackendRegistry(settings.upstreams)
    backend, model = await registry.resolve("fake-model", client)
    call = Call(parse_request("chat", {**chat_body, "stream": True}), backend, model, client,
                registry, settings, Plan("direct"))
    body = relay(call, await open_streams(call))
    received = [await body.__anext__() for _ in range(3)]
    await body.aclose()  # what Starlette does when the client disconnects
    await client.aclose()
    assert all(b'"la "' in chunk for chunk in received)
    assert closed == [True]
    assert call.stream_error is None
    # No cap and no usage: the text seen bounds it ("la " is 3 bytes, each at most a token),
    # never fewer than the 3 chunks received.
    assert call.acct.completion_tokens >= 3 and call.acct.estimated
    assert call.acct.usage_source == "text_bytes"


async def test_a_backend_that_returns_no_choices_is_a_malformed_reply_not_a_spent_budget(
        chat_body):
    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": [],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 0,
                                                   "total_tokens": 5}})

    async with gateway_client(scripted_transport(empty)) as client:
        for strategy in ("sequential", "parallel_vote"):
            reply = await client.post("/v1/chat/completions", json={
                **chat_body, "router": {"strategy": strategy, "budget_tokens": 400}})
            assert reply.status_code == 502, (strategy, reply.text)
            assert reply.json()["error"]["code"] == "upstream_malformed", strategy


async def test_a_stream_completed_by_fan_out_stays_within_its_budget(chat_body):
    # The first call's grant (both choices' caps) must be settled with what it spent before
    # the rest are asked for: held, it left nothing to grant them ("budget_spent").
    backend = FakeBackend(honours_n=False)
    request = {**chat_body, "n": 2, "stream": True, "stream_options": {"include_usage": True},
               "router": {"budget_tokens": 64}}
    async with gateway_client(backend.transport()) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    events = [e for e in sse_payloads(reply.text) if isinstance(e, dict)]
    assert not any("error" in e for e in events), reply.text
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}
    assert [r["max_tokens"] for r in backend.requests] == [32, 32]
    assert events[-1]["router"]["spent_tokens"] == 8 <= 64


async def test_a_stream_completed_by_fan_out_frees_its_first_calls_slot(chat_body):
    # With one call at a time to the backend, the rest of the choices must not wait behind
    # the first stream's finished call.
    backend = FakeBackend(honours_n=False)
    config = make_settings(backend_max_concurrency=1, backend_queue_timeout_s=0.5)
    request = {**chat_body, "n": 2, "stream": True}
    async with gateway_client(backend.transport(), config) as client:
        reply = await client.post("/v1/chat/completions", json=request)
    events = [e for e in sse_payloads(reply.text) if isinstance(e, dict)]
    assert not any("error" in e for e in events), reply.text
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}


def _batch_backend(honours_n: bool) -> httpx.MockTransport:
    """A legacy-completions backend that answers a batch prompt with one choice per prompt
    and sample, prompt-major as OpenAI and vLLM order them, and honours ``n`` or not."""

    def choices(body: dict[str, Any]) -> list[tuple[str, int]]:
        n = int(body.get("n") or 1) if honours_n else 1
        return [(prompt, sample) for prompt in body["prompt"] for sample in range(n)]

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seed = body.get("seed", 0)
        answers = [f"answer to {p} #{seed + s}" for p, s in choices(body)]
        usage = {"prompt_tokens": 2, "completion_tokens": 4 * len(answers),
                 "total_tokens": 2 + 4 * len(answers)}
        if body.get("stream"):
            events = [{"id": "x", "object": "text_completion", "created": 1, "model": "m",
                       "choices": [{"index": i, "text": text, "finish_reason": None}]}
                      for i, text in enumerate(answers)]
            events += [{"id": "x", "object": "text_completion", "created": 1, "model": "m",
                        "choices": [{"index": i, "text": "", "finish_reason": "stop"}]}
                       for i in range(len(answers))]
            events.append({"id": "x", "object": "text_completion", "created": 1, "model": "m",
                           "choices": [], "usage": usage})
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=ScriptedStream(sse_body(*events, "data: [DONE]\n\n")))
        return httpx.Response(200, json={
            "id": "x", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
                        for i, text in enumerate(answers)], "usage": usage})

    return scripted_transport(handle)


@pytest.mark.parametrize("honours_n", [True, False])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_batch_prompt_with_n_gets_n_choices_per_prompt_in_openais_order(
        honours_n: bool, stream: bool):
    # Two prompts, n=2, from a backend that ignores n (llama-cpp-python's server): the
    # gateway took its 2 choices (one per prompt) for the 2 asked, so the client got p1's
    # answer at index 1, where OpenAI puts p0's second sample, and no second samples at all.
    body = {"model": "fake-model", "prompt": ["p0", "p1"], "n": 2, "max_tokens": 8,
            "seed": 10, "stream": stream}
    async with gateway_client(_batch_backend(honours_n)) as client:
        reply = await client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    if stream:
        texts: dict[int, str] = {}
        for payload in sse_payloads(reply.text):
            if isinstance(payload, dict):
                for choice in payload.get("choices", []):
                    texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    else:
        texts = {c["index"]: c["text"] for c in reply.json()["choices"]}
    assert sorted(texts) == [0, 1, 2, 3]
    # choices i*n .. i*n+n-1 answer prompt i, with n distinct samples
    assert [texts[i].split(" #")[0] for i in range(4)] == ["answer to p0"] * 2 + \
        ["answer to p1"] * 2
    assert texts[0] != texts[1] and texts[2] != texts[3]


# OpenAI's API refuses a body that sets both caps (gpt-4o, gpt-4.1: code
# invalid_parameter_combination), and its reasoning models refuse max_tokens at all; both
# messages name max_completion_tokens, the field they take. A server that knows only the older
# field refuses the newer one by name (a JSON schema of its own: "Unknown name").
BOTH_CAPS_REFUSALS = {
    "both_set": ("max_completion_tokens", {
        "message": "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not "
                   "supported.", "type": "invalid_request_error", "param": "max_tokens",
        "code": "invalid_parameter_combination"}),
    "reasoning_model": ("max_completion_tokens", {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
        "param": "max_tokens", "code": "unsupported_parameter"}),
    "older_field_only": ("max_tokens", {
        "message": 'Invalid JSON payload received. Unknown name "max_completion_tokens": '
                   "Cannot find field.", "type": "invalid_request_error", "param": None,
        "code": None}),
}


class OneCapBackend(FakeBackend):
    """A backend that takes one cap field (``takes``) and refuses with ``refusal`` (a 400)
    any body that carries the other; the field it takes caps the answer."""

    def __init__(self, takes: str, refusal: dict[str, Any]):
        super().__init__()
        self.takes, self.refusal = takes, refusal

    async def _receive(self, request: Any) -> Any:
        body = await super()._receive(request)
        other = "max_tokens" if self.takes == "max_completion_tokens" else "max_completion_tokens"
        if isinstance(body, dict) and other in body:
            return JSONResponse({"error": self.refusal}, status_code=400)
        if isinstance(body, dict) and self.takes in body:
            # how the fake caps its answer (``requests`` keeps the body as it came)
            return {**body, "max_tokens": body[self.takes]}
        return body


@pytest.mark.parametrize("refusal", list(BOTH_CAPS_REFUSALS), ids=list(BOTH_CAPS_REFUSALS))
@pytest.mark.parametrize("router", [None, {"strategy": "direct", "budget_tokens": 64},
                                    {"strategy": "sequential", "budget_tokens": 64},
                                    {"strategy": "parallel_vote", "budget_tokens": 240}],
                         ids=["passthrough", "direct", "sequential", "parallel_vote"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_backend_refusing_both_caps_gets_the_one_it_takes(
        chat_body, refusal, router, stream):
    takes, error = BOTH_CAPS_REFUSALS[refusal]
    backend = OneCapBackend(takes, error)
    request: dict[str, Any] = {**chat_body, "max_tokens": 3, "stream": stream}
    if router is not None:
        request["router"] = router
    async with gateway_client(backend.transport()) as client:
        first = await client.post("/v1/chat/completions", json=request)
        second = await client.post("/v1/chat/completions", json=request)
    for reply in (first, second):
        assert reply.status_code == 200, reply.text
        assert "error" not in reply.text
        text = (reply.json()["choices"][0]["message"]["content"] if not stream else
                "".join(p["choices"][0]["delta"].get("content") or ""
                        for p in sse_payloads(reply.text) if p != "[DONE]" and p["choices"]))
        assert text.split() == ["The", "answer", "is"]  # still capped at 3 tokens
    # refused until the field it takes was found, then learnt: every later call carries it
    other = "max_tokens" if takes == "max_completion_tokens" else "max_completion_tokens"
    refused = [r for r in backend.requests if other in r]
    assert len(refused) == (1 if takes == "max_completion_tokens" else 2)
    answered = [r for r in backend.requests if other not in r]
    assert answered and all(r[takes] <= 3 for r in answered)
    assert backend.requests[len(refused):] == answered  # no refusal once it was learnt


# OpenAI's reasoning models (o1, o3, o4-mini, the gpt-5 family) take only their default
# temperature (1) and refuse any other with a 400 naming the parameter; some servers and proxies
# say it in the message alone.
TEMPERATURE_REFUSALS = {
    "unsupported_value": {
        "message": "Unsupported value: 'temperature' does not support 0.0 with this model. "
                   "Only the default (1) value is supported.", "type": "invalid_request_error",
        "param": "temperature", "code": "unsupported_value"},
    "in_the_message": {
        "message": "Unsupported parameter: 'temperature' is not supported with this model.",
        "type": "invalid_request_error", "param": None, "code": None},
}


class DefaultTemperatureBackend(FakeBackend):
    """A backend that takes only its default temperature, as OpenAI's reasoning models: a
    body with any other (``temperature`` set and not 1) is a 400 (``refusal``)."""

    def __init__(self, refusal: dict[str, Any], **fields: Any):
        super().__init__(**fields)
        self.refusal = refusal

    async def _receive(self, request: Any) -> Any:
        body = await super()._receive(request)
        if isinstance(body, dict) and body.get("temperature") not in (None, 1):
            return JSONResponse({"error": self.refusal}, status_code=400)
        return body


def router_objects(reply: httpx.Response, stream: bool) -> list[dict[str, Any]]:
    """The ``router`` objects of a reply: the body's, or those of its stream's chunks."""
    if not stream:
        return [reply.json()["router"]]
    return [p["router"] for p in sse_payloads(reply.text) if p != "[DONE]" and "router" in p]


def answer_of(reply: httpx.Response, stream: bool) -> str:
    if not stream:
        return str(reply.json()["choices"][0]["message"]["content"])
    return "".join(p["choices"][0]["delta"].get("content") or ""
                   for p in sse_payloads(reply.text) if p != "[DONE]" and p["choices"])


def usage_of(reply: httpx.Response, stream: bool) -> dict[str, Any]:
    if not stream:
        return dict(reply.json()["usage"])
    return next(p["usage"] for p in reversed(sse_payloads(reply.text))
                if p != "[DONE]" and p.get("usage"))


# The plans whose calls carry a temperature the gateway chose: model auto's one chain
# (``chain_temperature``, 0) of each strategy, and votes, planned or named (their first sample
# greedy, the rest at 0.7).
GATEWAY_TEMPERATURES = {
    "auto_direct": "fixed:direct@64",
    "auto_sequential": "fixed:sequential@64",
    "auto_search": "fixed:search@256",
    "auto_vote": "fixed:parallel_vote@768",  # 3 samples of 256
    "named_vote": {"strategy": "parallel_vote", "budget_tokens": 240},
}


STRATEGY_OF = {"auto_direct": "direct", "auto_sequential": "sequential",
               "auto_search": "search", "auto_vote": "parallel_vote",
               "named_vote": "parallel_vote"}


def routed_request(case: str, stream: bool) -> tuple[dict[str, Any], Any]:
    """(request body, settings) of a ``GATEWAY_TEMPERATURES`` case: model auto with the
    case's policy as the default one, or the router object it names."""
    plan = GATEWAY_TEMPERATURES[case]
    messages = [{"role": "user", "content": "What is 2+2?"}]
    request: dict[str, Any] = {"model": "auto", "messages": messages, "stream": stream}
    if stream:  # the usage chunk carries the router object
        request["stream_options"] = {"include_usage": True}
    if isinstance(plan, dict):
        return {**request, "model": "fake-model", "router": plan}, make_settings()
    return request, make_settings(policies={"chosen": plan}, default_policy="chosen")


class OneDocumentSearch:
    """A search backend that finds one document for every query."""

    name = "local"

    async def search(self, query: str, k: int) -> list[Hit]:
        return [Hit("doc", "Sums", "2+2 is 4.", 1.0)]


async def asked_twice(backend: Any, request: dict[str, Any], settings: Any, **client_args: Any
                      ) -> tuple[httpx.Response, int, httpx.Response]:
    """The same chat request sent twice to one gateway in front of ``backend``: the first
    reply, the backend calls made by then, the second reply (each asserted to be a 200)."""
    async with gateway_client(backend.transport(), settings, **client_args) as client:
        first = await client.post("/v1/chat/completions", json=request)
        calls = len(backend.requests)
        second = await client.post("/v1/chat/completions", json=request)
    for reply in (first, second):
        assert reply.status_code == 200, reply.text
    return first, calls, second


@pytest.mark.parametrize("refusal", list(TEMPERATURE_REFUSALS), ids=list(TEMPERATURE_REFUSALS))
@pytest.mark.parametrize("case", list(GATEWAY_TEMPERATURES), ids=list(GATEWAY_TEMPERATURES))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_backend_refusing_the_gateways_temperature_gets_its_default(
        refusal, case, stream, caplog):
    backend = DefaultTemperatureBackend(TEMPERATURE_REFUSALS[refusal])
    request, settings = routed_request(case, stream)
    caplog.set_level(logging.INFO)
    first, calls, second = await asked_twice(backend, request, settings,
                                             search_backend=OneDocumentSearch())
    for reply in (first, second):
        assert '"error"' not in reply.text
        assert "The answer is 4." in answer_of(reply, stream)
        # no claim of a temperature that was not sent
        (info,) = router_objects(reply, stream)
        assert info["strategy"] == STRATEGY_OF[case]
        assert "temperature" not in info and not info.get("greedy_first")
        assert "chain_temperature" not in info.get("reason", "") or (
            "takes only its default temperature: sent none" in info["reason"])
    refused = [r for r in backend.requests if r.get("temperature") is not None]
    assert refused and all(r in backend.requests[:calls] for r in refused)
    # each refused call was sent again without the gateway's temperature, and the backend is
    # remembered as taking only its default: the next request sends it none
    assert all("temperature" not in r for r in backend.requests[calls:])
    # the refused attempts generated nothing and cost nothing: the first request spent what
    # the second one did (a vote's greedy first sample is a call of its own in the first)
    spent = [usage_of(reply, stream)["completion_tokens"] for reply in (first, second)]
    assert spent[0] == spent[1] > 0
    assert [router_objects(reply, stream)[0]["spent_tokens"] for reply in (first, second)] \
        == spent
    learnt = [r for r in caplog.records if "default temperature" in r.getMessage()]
    assert len(learnt) == 1 and "fake" in learnt[0].getMessage()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_chain_cut_before_its_answer_forces_it_at_the_backends_default_temperature(
        stream):
    # model auto's one chain (sequential, chain_temperature 0) is cut before it states an
    # answer: its forced-answer continuation is a call of its own, and must not carry the
    # temperature the backend refused either
    backend = DefaultTemperatureBackend(TEMPERATURE_REFUSALS["unsupported_value"],
                                        answer="Let us think " * 40, cut_reason="length")
    request: dict[str, Any] = {"model": "auto", "stream": stream,
                               "messages": [{"role": "user", "content": "What is 2+2?"}]}
    if stream:
        request["stream_options"] = {"include_usage": True}
    settings = make_settings(policies={"chain": "fixed:sequential@64"}, default_policy="chain",
                             answer_reserve_tokens=16)
    first, calls, second = await asked_twice(backend, request, settings)
    for reply in (first, second):
        assert '"error"' not in reply.text
        (info,) = router_objects(reply, stream)
        assert info["continued"] is True and "temperature" not in info
    assert [r.get("temperature") for r in backend.requests[:calls]] == [0.0, None, None]
    assert all("temperature" not in r for r in backend.requests[calls:])
    assert len(backend.requests) - calls == 2  # the chain, then its forced answer
    assert usage_of(first, stream) == usage_of(second, stream)


@pytest.mark.parametrize("router", [None, {"policy": "chosen"},
                                    {"strategy": "parallel_vote", "budget_tokens": 240}],
                         ids=["passthrough", "auto", "parallel_vote"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_clients_own_temperature_is_sent_and_its_refusal_reaches_the_client(
        chat_body, router, stream):
    refusal = TEMPERATURE_REFUSALS["unsupported_value"]
    backend = DefaultTemperatureBackend(refusal)
    request: dict[str, Any] = {**chat_body, "temperature": 0.2, "stream": stream}
    if router is not None:
        request["router"] = router
    settings = make_settings(policies={"chosen": "fixed:direct@64"}, max_retries=0)
    async with gateway_client(backend.transport(), settings) as client:
        first = await client.post("/v1/chat/completions", json=request)
        second = await client.post("/v1/chat/completions", json=request)
    for reply in (first, second):
        # as OpenAI answers it: the status, and its error envelope
        assert reply.status_code == 400, reply.text
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json() == {"error": {**refusal, "message": refusal["message"]}}
    # sent as the client set it, never dropped, and nothing learnt from the client's choice
    assert backend.requests and all(r["temperature"] == 0.2 for r in backend.requests)


class ReasoningModelBackend(OneCapBackend):
    """OpenAI's reasoning models in both respects: they refuse ``max_tokens``, and any
    temperature but their default."""

    def __init__(self) -> None:
        super().__init__(*BOTH_CAPS_REFUSALS["reasoning_model"])

    async def _receive(self, request: Any) -> Any:
        body = await super()._receive(request)
        if isinstance(body, dict) and body.get("temperature") not in (None, 1):
            return JSONResponse({"error": TEMPERATURE_REFUSALS["unsupported_value"]},
                                status_code=400)
        return body


@pytest.mark.parametrize("case", ["auto_sequential", "auto_vote"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_reasoning_model_refusing_both_max_tokens_and_temperature_answers(
        case, stream):
    backend = ReasoningModelBackend()
    request, settings = routed_request(case, stream)
    first, calls, second = await asked_twice(backend, request, settings)
    for reply in (first, second):
        assert "The answer is 4." in answer_of(reply, stream)
    assert all("max_tokens" not in r and "temperature" not in r
               for r in backend.requests[calls:])


def test_only_a_backends_refusal_of_temperature_reads_as_one():
    assert refuses_temperature(UpstreamClientError(
        TEMPERATURE_REFUSALS["unsupported_value"]["message"], status=400, param="temperature"))
    assert refuses_temperature(UpstreamClientError(
        TEMPERATURE_REFUSALS["in_the_message"]["message"], status=400))
    # other refusals, and a failing backend, are not
    assert not refuses_temperature(UpstreamClientError(
        BOTH_CAPS_REFUSALS["reasoning_model"][1]["message"], status=400, param="max_tokens"))
    assert not refuses_temperature(UpstreamClientError(
        "This model's maximum context length is 4096 tokens.", status=400,
        param="messages"))
    assert not refuses_temperature(UpstreamError(
        "backend error 500: temperature is not supported", code="upstream_5xx"))


async def test_a_backend_learnt_to_take_only_its_default_temperature_keeps_it_on_rediscovery():
    registry = BackendRegistry(make_settings(models=None).upstreams)

    class Listing:
        """Lists one model, while a call to the backend learns of its refusal."""

        async def get_json(self, backend: Any, path: str, retries: int = 0) -> Any:
            registry.note_default_temperature_only(backend, "refused")
            return {"data": [{"id": "o4-mini"}]}

    await registry.discover(Listing())  # type: ignore[arg-type]
    (backend,) = registry.backends
    assert backend.models == ("o4-mini",) and backend.temperature is False


# llama.cpp's server refuses n != 1 (utils.hpp: "Only one completion choice is allowed"):
# a 500 server_error in the versions llama-cpp-python 0.3.16 bundles, a 400 in others.
N_REFUSALS = {
    "llama_cpp_500": (500, {"code": 500, "message": "Only one completion choice is allowed",
                            "type": "server_error"}),
    "llama_cpp_400": (400, {"code": 400, "message": "Only one completion choice is allowed",
                            "type": "invalid_request_error"}),
}


class RefusesNBackend(FakeBackend):
    """A backend that refuses any call asking for more than one choice, as llama.cpp's
    server does; single-choice calls are answered as ``FakeBackend`` answers them."""

    def __init__(self, status: int, error: dict[str, Any]):
        super().__init__(honours_n=False)
        self.status, self.error = status, error

    async def _receive(self, request: Any) -> Any:
        body = await super()._receive(request)
        if isinstance(body, dict) and (body.get("n") or 1) != 1:
            return JSONResponse({"error": self.error}, status_code=self.status)
        return body


@pytest.mark.parametrize("refusal", list(N_REFUSALS), ids=list(N_REFUSALS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_n_is_fanned_out_against_a_backend_that_refuses_it(chat_body, refusal, stream):
    backend = RefusesNBackend(*N_REFUSALS[refusal])
    async with gateway_client(backend.transport()) as client:
        first = await client.post("/v1/chat/completions",
                                  json={**chat_body, "n": 3, "stream": stream,
                                        "stream_options": {"include_usage": True} if stream
                                        else None})
        again = await client.post("/v1/chat/completions", json={**chat_body, "n": 2})
    assert first.status_code == 200, first.text
    if stream:
        payloads = [p for p in sse_payloads(first.text) if p != "[DONE]"]
        assert not any("error" in p for p in payloads)
        assert {c["index"] for p in payloads for c in p["choices"]} == {0, 1, 2}
        usage = payloads[-1]["usage"]
    else:
        assert [c["index"] for c in first.json()["choices"]] == [0, 1, 2]
        usage = first.json()["usage"]
    # three answers of 4 tokens; the refusal generated nothing and is charged nothing
    assert usage["completion_tokens"] == 12
    assert [c["index"] for c in again.json()["choices"]] == [0, 1]
    # refused once (not retried), then single-choice calls from then on
    assert [r.get("n") for r in backend.requests] == [3, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("refusal", list(N_REFUSALS), ids=list(N_REFUSALS))
async def test_a_vote_against_a_backend_that_refuses_n_draws_every_sample(chat_body, refusal):
    backend = RefusesNBackend(*N_REFUSALS[refusal])
    # 8 samples of 75 tokens: a first wave of 1 greedy + 2 sampled (asked as one call of n=2)
    vote = {**chat_body, "router": {"strategy": "parallel_vote", "budget_tokens": 600}}
    async with gateway_client(backend.transport()) as client:
        replies = [await client.post("/v1/chat/completions", json=vote) for _ in range(2)]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        router = reply.json()["router"]
        assert router["strategy"] == "parallel_vote"
        assert not router.get("failed_samples")
        assert router["samples"] == 3  # the first wave agreed: stopped early
        # every sample answered in 4 tokens: nothing charged for the refused call
        assert router["spent_tokens"] == 4 * router["samples"]
    assert sum(1 for r in backend.requests if (r.get("n") or 1) != 1) == 1
