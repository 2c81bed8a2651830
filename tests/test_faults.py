"""Backend faults on real sockets (refuse, hang, garbage, cut off, trickle, saturated): each gets
a clean answer in OpenAI's envelope within its timeout, a backend that keeps failing is taken
out (circuit breaker) and a second upstream serving the same model takes over."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.settings import Settings, UpstreamSettings
from tests.conftest import gateway_client, make_settings, metric
from tests.fault_backend import closed_port_url, make_app, serve_in_thread

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fault_url() -> Iterator[str]:
    with serve_in_thread(make_app(delay_s=0.3, trickle_s=0.05)) as url:
        yield url


def settings_for(*upstreams: dict[str, Any], **overrides: Any) -> Settings:
    values: dict[str, Any] = {"upstreams": [UpstreamSettings(**u) for u in upstreams],
                              "retry_backoff_s": 0.0, "max_retries": 1,
                              "read_timeout_s": 1.0, "connect_timeout_s": 1.0}
    values.update(overrides)
    return Settings(**values)


def ask(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            **extra}


def assert_envelope(reply, status: int, error_type: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    return error


def stream_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_refused_connection_is_a_quick_503():
    settings = settings_for({"url": closed_port_url(), "name": "gone", "models": ["m"]})
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        started = time.perf_counter()
        reply = await client.post(CHAT, json=ask("m"))
        assert_envelope(reply, 503, "service_unavailable")
        assert time.perf_counter() - started < 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_hanging_backend_is_a_504_within_the_read_timeout(fault_url, stream):
    settings = settings_for({"url": fault_url, "name": "fault"}, read_timeout_s=0.5)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        started = time.perf_counter()
        reply = await client.post(CHAT, json=ask("hang-model", stream=stream))
        elapsed = time.perf_counter() - started
        assert_envelope(reply, 504, "timeout_error")
        assert 0.4 < elapsed < 3


async def test_garbage_is_a_502(fault_url):
    async with gateway_client(None, settings_for({"url": fault_url})) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("garbage-model"))
        error = assert_envelope(reply, 502, "upstream_error")
        assert error["code"] == "upstream_malformed"


async def test_garbage_stream_is_a_502(fault_url):
    async with gateway_client(None, settings_for({"url": fault_url})) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("garbage-model", stream=True))
        assert_envelope(reply, 502, "upstream_error")  # nothing had reached the client


async def test_reply_cut_off_is_a_502(fault_url):
    async with gateway_client(None, settings_for({"url": fault_url})) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("cut-model"))
        assert_envelope(reply, 502, "upstream_error")


async def test_stream_cut_off_mid_way_ends_with_an_error_event(fault_url):
    async with gateway_client(None, settings_for({"url": fault_url})) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("cut-model", stream=True))
        assert reply.status_code == 200  # the first tokens had been sent
        events = stream_events(reply.text)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "upstream_error"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                       for e in events[:-2] if json.loads(e).get("choices"))
        assert text == "w w "  # what arrived before the break, sent once


async def test_slow_trickle_within_the_timeout_completes(fault_url):
    async with gateway_client(None, settings_for({"url": fault_url})) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("trickle-model", stream=True, max_tokens=6))
        assert reply.status_code == 200
        events = stream_events(reply.text)
        assert events[-1] == "[DONE]"
        assert not any('"error"' in e for e in events)


async def test_trickle_slower_than_the_read_timeout_ends_with_a_timeout(fault_url):
    settings = settings_for({"url": fault_url}, read_timeout_s=0.02)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("trickle-model", stream=True))
        if reply.status_code == 200:  # the first word came in time, a later one did not
            events = stream_events(reply.text)
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["type"] in ("timeout_error", "upstream_error")
        else:
            assert_envelope(reply, 504, "timeout_error")


async def test_a_saturated_backend_answers_503_instead_of_queueing(fault_url):
    settings = settings_for({"url": fault_url, "name": "narrow"}, backend_max_concurrency=1,
                            backend_max_waiting=0)
    before = metric("ttc_rejected_total", reason="overload")
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        first = asyncio.create_task(client.post(CHAT, json=ask("slow-model")))
        await asyncio.sleep(0.1)  # the first holds the only slot
        second = await client.post(CHAT, json=ask("ok-model"))
        assert_envelope(second, 503, "service_unavailable")
        assert second.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        assert metric("ttc_upstream_in_flight", backend="narrow") == 0
        third = await client.post(CHAT, json=ask("ok-model"))  # the slot was given back
        assert third.status_code == 200
    assert metric("ttc_rejected_total", reason="overload") == before + 1


async def test_a_waiting_call_gives_up_after_the_queue_timeout(fault_url):
    settings = settings_for({"url": fault_url, "name": "queue"}, backend_max_concurrency=1,
                            backend_max_waiting=4, backend_queue_timeout_s=0.1)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        first = asyncio.create_task(client.post(CHAT, json=ask("slow-model")))
        await asyncio.sleep(0.05)
        second = await client.post(CHAT, json=ask("ok-model"))
        assert_envelope(second, 503, "service_unavailable")
        assert (await first).status_code == 200


async def test_second_upstream_takes_over_when_the_first_is_broken(fault_url):
    broken = {"url": closed_port_url(), "name": "broken", "models": ["ok-model"]}
    healthy = {"url": fault_url, "name": "healthy", "models": ["ok-model"]}
    settings = settings_for(broken, healthy, breaker_failures=2, breaker_cool_down_s=0.5,
                            max_retries=1)
    failovers = metric("ttc_upstream_failovers_total", backend="broken")
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        first = await client.post(CHAT, json=ask("ok-model"))
        assert_envelope(first, 503, "service_unavailable")
        # its two attempts (a retry) count as one failure: the circuit is still closed
        assert metric("ttc_circuit_open", backend="broken") == 0
        second = await client.post(CHAT, json=ask("ok-model"))
        assert_envelope(second, 503, "service_unavailable")  # the second failure opens it
        assert metric("ttc_circuit_open", backend="broken") == 1
        for _ in range(5):
            reply = await client.post(CHAT, json=ask("ok-model"))
            assert reply.status_code == 200, reply.text
        assert metric("ttc_upstream_failovers_total", backend="broken") == failovers + 5
        await asyncio.sleep(0.6)  # cool-down over: the broken one is tried again and fails
        again = await client.post(CHAT, json=ask("ok-model"))
        assert again.status_code == 503
        assert metric("ttc_circuit_open", backend="broken") == 1
        assert (await client.post(CHAT, json=ask("ok-model"))).status_code == 200


async def test_only_backend_cooling_down_is_a_fast_503_with_retry_after():
    settings = settings_for({"url": closed_port_url(), "name": "lonely", "models": ["m"]},
                            breaker_failures=1, breaker_cool_down_s=30, max_retries=0)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        assert (await client.post(CHAT, json=ask("m"))).status_code == 503
        reply = await client.post(CHAT, json=ask("m"))
        error = assert_envelope(reply, 503, "service_unavailable")
        assert error["code"] == "backends_cooling_down"
        assert 25 <= int(reply.headers["retry-after"]) <= 30


async def test_a_recovered_backend_closes_its_circuit(fault_url):
    settings = settings_for({"url": fault_url, "name": "flappy"}, breaker_failures=1,
                            breaker_cool_down_s=0.2, max_retries=0)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        assert (await client.post(CHAT, json=ask("garbage-model"))).status_code == 502
        assert metric("ttc_circuit_open", backend="flappy") == 1
        await asyncio.sleep(0.25)
        assert (await client.post(CHAT, json=ask("ok-model"))).status_code == 200
        assert metric("ttc_circuit_open", backend="flappy") == 0


# llama.cpp's server refuses parameters it does not take with a 500 server_error (a
# std::runtime_error while it parses the request), before generating anything.
LLAMA_CPP_REFUSALS = {
    "tools_without_jinja": ({"tools": [{"type": "function", "function": {"name": "f"}}]},
                            "Unsupported param (--jinja mode required for tool call): tools",
                            "tools"),
    "best_of": ({"best_of": 2}, "Unsupported param: best_of", "best_of"),
    "top_logprobs": ({"top_logprobs": 2}, "top_logprobs requires logprobs to be set to true",
                     "top_logprobs"),
}


@pytest.mark.parametrize("refusal", list(LLAMA_CPP_REFUSALS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_llama_cpp_parameter_refusal_is_a_400_not_a_backend_failure(refusal, stream):
    # Seen against an upstream process answering as llama.cpp's server does: five requests
    # with tools (no --jinja) were each retried twice, answered 502, charged 3 x max_tokens,
    # and opened the circuit breaker: the backend was taken out for 30 s for every client.
    import httpx

    from tests.fakes import scripted_transport

    fields, message, param = LLAMA_CPP_REFUSALS[refusal]
    calls: list[dict[str, Any]] = []

    def backend(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body)
        if any(key in body for key in fields):
            return httpx.Response(500, json={"error": {"code": 500, "message": message,
                                                       "type": "server_error"}})
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    labels = {"strategy": "direct", "policy": "none", "arm": "none", "model": "fake-model"}
    tokens = metric("ttc_tokens_total", kind="completion", **labels)
    settings = settings_for({"url": "http://llama.test/v1", "name": "llama-cpp",
                             "models": ["fake-model"]}, breaker_failures=2, max_retries=2)
    async with gateway_client(scripted_transport(backend), settings) as client:
        for _ in range(3):
            reply = await client.post(CHAT, json={**ask("fake-model", stream=stream), **fields})
            error = assert_envelope(reply, 400, "invalid_request_error")
            assert error["message"] == message and error["param"] == param
        # the backend is not failing: it still serves a request it can take
        assert (await client.post(CHAT, json=ask("fake-model"))).status_code == 200
    assert len(calls) == 4  # each refusal asked once, never retried
    assert metric("ttc_circuit_open", backend="llama-cpp") == 0
    # a refusal generated nothing: only the last answer's token is charged
    assert metric("ttc_tokens_total", kind="completion", **labels) == tokens + 1


def test_half_open_lets_exactly_one_trial_through():
    from service.breaker import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker("trial", failures_to_open=2, cool_down_s=10.0,
                             clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allows()  # one failure: still closed
    breaker.record_failure()
    assert not breaker.allows() and breaker.state == "open"
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allows()  # the trial
    assert [breaker.allows() for _ in range(5)] == [False] * 5  # everyone else waits
    breaker.record_failure()  # the trial failed: open for another cool-down
    assert breaker.state == "open" and not breaker.allows()
    now[0] = 20.0
    assert breaker.allows() and not breaker.allows()
    breaker.end_trial()  # the trial was refused for its own reasons: another may try
    assert breaker.allows() and not breaker.allows()
    now[0] = 30.0  # a trial that never reports frees the slot after a cool-down
    assert breaker.allows()
    breaker.record_success()
    assert breaker.state == "closed" and all(breaker.allows() for _ in range(3))


async def test_a_vote_whose_samples_all_fail_counts_once():
    from tests.scripted import ScriptedLLM

    llm = ScriptedLLM(lambda i, body: "The answer is 4.", fail=set(range(1000)))
    settings = make_settings(breaker_failures=2, breaker_cool_down_s=30, max_retries=1)
    vote = {"model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 1024}}
    async with gateway_client(llm.transport(), settings) as client:
        first = await client.post(CHAT, json=vote)
        assert first.status_code == 502 and len(llm.requests) >= 4  # several samples failed
        assert metric("ttc_circuit_open", backend="fake") == 0  # one request: one failure
        assert (await client.post(CHAT, json=vote)).status_code == 502
        assert metric("ttc_circuit_open", backend="fake") == 1


def upstream_counts(backend: str) -> dict[str, float]:
    return {status: metric("ttc_upstream_requests_total", backend=backend, status=status)
            for status in ("200", "stream_error")}


async def test_a_stream_broken_after_its_headers_is_counted_as_a_stream_error(fault_url):
    # Seen on /metrics: a backend that dropped every stream mid-way was counted under the 200
    # its headers carried, so ttc:upstream_error_ratio:rate5m stayed at 0 and
    # TTCBackendErrors never fired.
    before = upstream_counts("cut-stream")
    settings = settings_for({"url": fault_url, "name": "cut-stream",
                             "models": ["cut-model", "ok-model"]})  # no listing to count
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        broken = await client.post(CHAT, json=ask("cut-model", stream=True))
        assert broken.status_code == 200 and '"error"' in broken.text
        whole = await client.post(CHAT, json=ask("ok-model", stream=True))
        assert whole.status_code == 200 and '"error"' not in whole.text
    after = upstream_counts("cut-stream")
    # One broken attempt, or two when it broke before its first bytes and was retried.
    assert after["stream_error"] in (before["stream_error"] + 1, before["stream_error"] + 2)
    assert after["200"] == before["200"] + 1  # the whole one, counted once


async def test_a_reply_cut_off_after_its_headers_is_counted_as_a_stream_error(fault_url):
    before = upstream_counts("cut-json")
    settings = settings_for({"url": fault_url, "name": "cut-json", "models": ["cut-model"]})
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("cut-model"))
        assert_envelope(reply, 502, "upstream_error")
    after = upstream_counts("cut-json")
    assert after["stream_error"] == before["stream_error"] + 2  # the attempt and its retry
    assert after["200"] == before["200"]


@pytest.mark.parametrize("ending", ["error_event", "reset", "truncated"])
async def test_a_stream_that_fails_mid_way_in_process_is_a_stream_error(ending):
    import httpx

    from tests.fakes import ScriptedStream, scripted_transport, sse_body

    word = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": None}]}
    events = {"error_event": sse_body(word, {"error": {"message": "the model crashed"}}),
              "reset": sse_body(word), "truncated": sse_body(word)}[ending]
    error = httpx.ReadError("connection reset by peer") if ending == "reset" else None

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(events, error))

    before = upstream_counts("fake")
    async with gateway_client(scripted_transport(backend)) as client:
        reply = await client.post(CHAT, json={**ask("fake-model"), "stream": True})
        assert reply.status_code == 200
        assert json.loads(stream_events(reply.text)[-2])["error"]["type"] == "upstream_error"
    after = upstream_counts("fake")
    assert after["stream_error"] == before["stream_error"] + 1
    assert after["200"] == before["200"]


@pytest.mark.parametrize("choices", [
    [{"index": "a", "delta": {"content": "7"}, "finish_reason": None}],
    {"0": {"delta": {"content": "7"}}},
    ["7"],
    [{"index": 0, "delta": "7", "finish_reason": None}],
], ids=["index_not_a_number", "choices_an_object", "choice_a_string", "delta_a_string"])
@pytest.mark.parametrize("strategy", ["direct", "sequential"])
async def test_a_stream_chunk_of_the_wrong_shape_ends_with_an_error_event(strategy, choices):
    # Seen before: a TypeError, ValueError, AttributeError or KeyError inside the streamed body
    # ('Exception in ASGI application'), the client's stream cut without an error event or
    # [DONE], and the request recorded as a 200.
    import httpx

    from tests.fakes import ScriptedStream, scripted_transport, sse_body

    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}
    word = {**base, "choices": [{"index": 0, "delta": {"content": "Once"},
                                 "finish_reason": None}]}

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(word, {**base, "choices": choices},
                                                             "data: [DONE]\n\n")))

    labels = {"strategy": strategy, "policy": "none", "arm": "none", "model": "fake-model"}
    before = {status: metric("ttc_requests_total", **labels, status=status)
              for status in ("200", "502")}
    tokens = metric("ttc_tokens_total", kind="completion", **labels)
    upstream = upstream_counts("fake")
    async with gateway_client(scripted_transport(backend)) as client:
        reply = await client.post(CHAT, json={
            **ask("fake-model"), "stream": True, "router": {"strategy": strategy}})
    assert reply.status_code == 200
    events = stream_events(reply.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_malformed"
    assert metric("ttc_requests_total", **labels, status="502") == before["502"] + 1
    assert metric("ttc_requests_total", **labels, status="200") == before["200"]
    # The call is charged its grant (max_tokens 8): the backend may have generated it all.
    assert metric("ttc_tokens_total", kind="completion", **labels) == tokens + 8
    assert upstream_counts("fake")["stream_error"] == upstream["stream_error"] + 1


BEFORE_FIRST_EVENT = {
    # a backend that reports its refusal as the stream's only event (OpenRouter, proxies)
    "error_event": ("text/event-stream", b'data: {"error": {"message": "the model crashed"}}\n\n'),
    "empty": ("text/event-stream", b""),
    "garbage": ("text/event-stream", b"\x00\x01 not an event stream"),
    # a server that ignores stream: true
    "json_body": ("application/json", json.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                     "finish_reason": "stop"}]}).encode()),
}


@pytest.mark.parametrize("reply", list(BEFORE_FIRST_EVENT))
@pytest.mark.parametrize("strategy", ["direct", "sequential"])
async def test_a_stream_that_fails_before_its_first_event_is_an_http_error(strategy, reply):
    # Seen through the openai SDK: a 200 stream whose only event was the error, while the same
    # failure without streaming was a 502; clients that retry on a 5xx status never saw one.
    # Nothing had reached the client, so the failure is its HTTP status, as a refusal's is.
    import httpx

    from tests.fakes import ScriptedStream, scripted_transport

    content_type, body = BEFORE_FIRST_EVENT[reply]

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type},
                              stream=ScriptedStream([body] if body else []))

    labels = {"strategy": strategy, "policy": "none", "arm": "none", "model": "fake-model"}
    failed = metric("ttc_requests_total", **labels, status="502")
    tokens = metric("ttc_tokens_total", kind="completion", **labels)
    async with gateway_client(scripted_transport(backend)) as client:
        reply_ = await client.post(CHAT, json={
            **ask("fake-model"), "stream": True, "router": {"strategy": strategy}})
        assert_envelope(reply_, 502, "upstream_error")
        assert reply_.headers["content-type"].startswith("application/json")
        healthy = await client.get("/health")
    assert healthy.status_code == 200
    assert metric("ttc_requests_total", **labels, status="502") == failed + 1
    # The call reached the backend, which may have generated its grant (max_tokens 8).
    assert metric("ttc_tokens_total", kind="completion", **labels) == tokens + 8


@pytest.fixture
def malformed_http_url() -> Iterator[str]:
    """A backend on a real socket that answers every request with a status line no HTTP
    client can read (aiohttp raises ``ClientResponseError``, which httpx-aiohttp leaves
    untranslated)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                conn.sendall(b"HTTP/1.1 2000 Nope\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_reply_no_http_client_can_read_is_a_502_and_counted(malformed_http_url,
                                                                    stream):
    # Seen before: "the gateway failed unexpectedly" (500) with aiohttp's ClientResponseError
    # in the log, and the request in neither ttc_requests_total nor ttc_tokens_total nor the
    # request log, though the backend had the request and may have generated its grant.
    settings = settings_for({"url": malformed_http_url, "name": "garbled", "models": ["m"]},
                            max_retries=0)
    labels = {"strategy": "direct", "policy": "none", "arm": "none", "model": "m"}
    before = metric("ttc_requests_total", **labels, status="502")
    tokens = metric("ttc_tokens_total", kind="completion", **labels)
    async with gateway_client(None, settings) as client:  # type: ignore[arg-type]
        reply = await client.post(CHAT, json=ask("m", stream=stream))
        await asyncio.sleep(0.1)
    assert_envelope(reply, 502, "upstream_error")
    assert metric("ttc_requests_total", **labels, status="502") == before + 1
    assert metric("ttc_tokens_total", kind="completion", **labels) == tokens + 8


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_unexpected_failure_is_recorded_and_its_grant_counted(stream):
    # A failure outside the error tree (a bug, or an exception a library lets through) was
    # answered 500 but never recorded: the call's grant, charged to the request, reached
    # neither ttc_tokens_total nor the request log; and the JSON request's client watch kept
    # running, to cancel whatever the task did next (here: the gateway's shutdown).
    import httpx

    from tests.fakes import scripted_transport

    def backend(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug on the way")

    labels = {"strategy": "direct", "policy": "none", "arm": "none", "model": "fake-model"}
    before = metric("ttc_requests_total", **labels, status="500")
    tokens = metric("ttc_tokens_total", kind="completion", **labels)
    async with gateway_client(scripted_transport(backend)) as client:
        reply = await client.post(CHAT, json=ask("fake-model", stream=stream))
        await asyncio.sleep(0.1)  # a watch left running would cancel this task meanwhile
    assert_envelope(reply, 500, "server_error")
    assert metric("ttc_requests_total", **labels, status="500") == before + 1
    assert metric("ttc_tokens_total", kind="completion", **labels) == tokens + 8
