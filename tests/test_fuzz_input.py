"""Bad input, by hand and fuzzed: every malformed, mistyped, absurd or oversized request gets a
4xx in OpenAI's envelope, never a 5xx, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from tests.conftest import gateway_client, make_settings

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def answering_backend() -> httpx.MockTransport:
    """A backend that answers every call well (JSON or SSE), whatever the body says: any 5xx
    the gateway gives is then its own."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "fake-model"}]})
        try:
            body = json.loads(request.content)
        except ValueError:
            body = {}
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if isinstance(body, dict) and body.get("stream") is True:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "ok 4"},
                                  "finish_reason": "stop"}]}
            events = [b"data: " + json.dumps(chunk).encode() + b"\n\n",
                      b"data: " + json.dumps({**chunk, "choices": [], "usage": usage}).encode()
                      + b"\n\n", b"data: [DONE]\n\n"]
            return httpx.Response(200, content=b"".join(events),
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop", "text": "ok 4",
                         "message": {"role": "assistant", "content": "ok 4"}}]})

    return httpx.MockTransport(handle)


def envelope_ok(reply: httpx.Response) -> bool:
    error = reply.json().get("error")
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


TABLE = [
    ("malformed JSON", b'{"model": "fake-model", "messages": [', 400),
    ("invalid UTF-8 in a string", b'{"model": "fake-model", "messages": [{"role": "user", '
                                  b'"content": "\xc3\x28"}]}', 400),
    ("a lone surrogate", b'{"model": "fake-model", "messages": [{"role": "user", '
                         b'"content": "\\ud800"}]}', 400),
    ("NaN", b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
            b'"temperature": NaN}', 400),
    ("a bare string", b'"hello"', 400),
    ("null", b"null", 400),
    ("messages an object", b'{"model": "fake-model", "messages": {"role": "user"}}', 400),
    ("role a number", b'{"model": "fake-model", "messages": [{"role": 1, "content": "x"}]}',
     400),
    ("n a float", b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
                  b'"n": 1.5}', 400),
    ("n a boolean", b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
                    b'"n": true}', 400),
    ("absurd n", b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
                 b'"n": 1000000000000}', 400),
    ("astronomical n", b'{"model": "fake-model", "messages": [{"role": "user", "content": '
                       b'"x"}], "n": 100000000000000000000000000000000}', 400),  # a float
    ("negative budget", b'{"model": "fake-model", "messages": [{"role": "user", "content": '
                        b'"x"}], "router": {"budget_tokens": -1}}', 400),
    ("absurd budget", b'{"model": "fake-model", "messages": [{"role": "user", "content": '
                      b'"x"}], "router": {"budget_tokens": 1000000000000000000000}}', 400),
    ("budget a list", b'{"model": "fake-model", "messages": [{"role": "user", "content": '
                      b'"x"}], "router": {"budget_tokens": [1]}}', 400),
    ("router a string", b'{"model": "fake-model", "messages": [{"role": "user", "content": '
                        b'"x"}], "router": "fast"}', 400),
    ("prompt an object", b'{"model": "fake-model", "prompt": {"a": 1}}', 400),
    ("stream_options a list", b'{"model": "fake-model", "messages": [{"role": "user", '
                              b'"content": "x"}], "stream": true, "stream_options": []}', 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), TABLE, ids=[row[0] for row in TABLE])
async def test_bad_input_is_a_4xx_envelope(name, raw, status):
    path = "/v1/completions" if b'"prompt"' in raw else CHAT
    async with gateway_client(answering_backend()) as client:
        reply = await client.post(path, content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == status, reply.text
        assert envelope_ok(reply)
        assert (await client.post(CHAT, json=GOOD)).status_code == 200


@pytest.mark.parametrize("header", [("x-ttc-budget-tokens", "-5"),
                                    ("x-ttc-budget-tokens", "1e9"),
                                    ("x-ttc-budget-tokens", "99999999999999999999999"),
                                    ("x-ttc-strategy", "rm -rf /")])
async def test_bad_control_headers_are_400s(header):
    async with gateway_client(answering_backend()) as client:
        reply = await client.post(CHAT, json=GOOD, headers=dict([header]))
        assert reply.status_code == 400
        assert envelope_ok(reply)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_40_mb_body_is_a_413(chunked):
    payload = json.dumps({"model": "fake-model", "messages": [
        {"role": "user", "content": "x" * (40 * 1024 * 1024)}]}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 1 << 20):
            yield payload[start:start + (1 << 20)]

    async with gateway_client(answering_backend()) as client:
        reply = await client.post(CHAT, content=pieces() if chunked else payload,
                                  headers={"content-type": "application/json"})
        assert reply.status_code == 413
        assert envelope_ok(reply)
        assert (await client.post(CHAT, json=GOOD)).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
MESSAGE = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "system", "assistant", "tool"]) | JSON,
    "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]) | JSON}, optional={"text": JSON}),
        max_size=2) | JSON,
    "tool_calls": JSON, "name": JSON})
BODY = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["fake-model", "auto", "nope"]) | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": st.text(max_size=10) | st.lists(st.integers(), max_size=3) | JSON,
    "n": st.integers(-3, 40) | JSON,
    "max_tokens": st.integers(-3, 10**6) | JSON,
    "max_completion_tokens": st.integers(-3, 10**6) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}) | JSON,
    "seed": st.integers() | JSON,
    "tools": JSON, "tool_choice": JSON, "temperature": JSON,
    "router": st.fixed_dictionaries({}, optional={
        "strategy": st.sampled_from(["auto", "direct", "parallel_vote", "sequential",
                                     "search"]) | JSON,
        "budget_tokens": st.integers(-5, 10**7) | JSON,
        "policy": JSON, "experiment": JSON}) | JSON,
})
HEADERS = st.fixed_dictionaries({}, optional={
    "x-ttc-strategy": st.sampled_from(["direct", "parallel_vote", "x"]),
    "x-ttc-budget-tokens": st.sampled_from(["0", "12", "-1", "abc", "1e3"]),
    "x-ttc-policy": st.text(alphabet="abc", max_size=4)})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(endpoint=st.sampled_from([CHAT, "/v1/completions"]), body=BODY, headers=HEADERS,
       raw=st.none() | st.binary(max_size=40))
def test_fuzzed_requests_never_get_a_5xx(endpoint, body, headers, raw):
    content = raw if raw is not None else json.dumps(body).encode()

    async def run() -> tuple[httpx.Response, httpx.Response]:
        config = make_settings(max_retries=0, vote_width=4)
        async with gateway_client(answering_backend(), config) as client:
            reply = await client.post(endpoint, content=content,
                                      headers={"content-type": "application/json", **headers})
            return reply, await client.post(CHAT, json=GOOD)

    reply, follow_up = asyncio.run(run())
    assert reply.status_code < 500, (reply.status_code, reply.text)
    if reply.status_code >= 400:
        assert envelope_ok(reply), reply.text
    assert follow_up.status_code == 200


@pytest.mark.parametrize("path", ["/v1/a%12b", "/v1/files%00", "/v1/embeddings%7F"])
async def test_a_control_character_in_a_forwarded_path_is_a_400(path):
    # Found by schemathesis: a forwarded path holding a control character is no URL the
    # backend can be asked for (httpx.InvalidURL), and was a 500 with a traceback in the log.
    async with gateway_client(answering_backend()) as client:
        for method in ("GET", "POST", "DELETE"):
            reply = await client.request(method, path, json={"model": "fake-model"})
            assert reply.status_code == 400, reply.text
            assert envelope_ok(reply)
            assert reply.json()["error"]["param"] == "path"
        assert (await client.post(CHAT, json=GOOD)).status_code == 200


async def test_forwarded_paths_do_not_grow_the_gateway_without_bound():
    # Every distinct forwarded path was parsed into a URL and kept for the life of the
    # process: a client walking /v1/<random> grew the gateway's memory without limit.
    app = create_app(make_settings(), transport=answering_backend())
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        for i in range(3000):
            assert (await client.get(f"/v1/files/file-{i}")).status_code == 200
        cached = len(app.state.gateway.client._urls)
        assert cached <= 256, cached


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/health", "GET"), ("POST", "/metrics", "GET"),
    ("TRACE", "/v1/chat/completions", "POST"), ("TRACE", "/v1/feedback", "POST")])
async def test_a_method_not_allowed_is_a_405_that_says_which_are(method, path, allowed):
    # Found by schemathesis: the 405 came in the envelope but without the Allow header that
    # RFC 9110 requires of it (the HTTP error handler dropped Starlette's headers).
    async with gateway_client(answering_backend()) as client:
        reply = await client.request(method, path)
        assert reply.status_code == 405, reply.text
        assert envelope_ok(reply)
        assert allowed in [m.strip() for m in reply.headers["allow"].split(",")]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/feedback", "POST"), ("DELETE", "/v1/feedback", "POST"),
    ("POST", "/v1/learner", "GET"), ("PUT", "/v1/experiments/ab", "GET")])
async def test_the_gateways_own_paths_answer_other_methods_with_405(method, path, allowed):
    # A path the gateway serves itself (no OpenAI path) was forwarded for any other method:
    # GET /v1/feedback came back as the backend's 404, and a 405's Allow listed the forwarding
    # routes' methods as well.
    backend = answering_backend()
    async with gateway_client(backend) as client:
        reply = await client.request(method, path, json={"model": "fake-model"})
        assert reply.status_code == 405, reply.text
        assert envelope_ok(reply)
        assert [m.strip() for m in reply.headers["allow"].split(",")] == [allowed]
        assert method in reply.json()["error"]["message"]


@pytest.mark.parametrize("header", ["+5", " 5", "1_000", "0x10", "5.0"])
async def test_a_budget_header_is_digits_only(header):
    # Found by fuzzing: int() read "+5", " 5" and "1_000" (as 1000), and "５" (a full-width
    # digit, as a server may decode it) as 5; INTERFACE.md says the header carries digits.
    async with gateway_client(answering_backend()) as client:
        reply = await client.post(CHAT, json=GOOD, headers={"x-ttc-budget-tokens": header})
        assert reply.status_code == 400, reply.text
        assert envelope_ok(reply) and reply.json()["error"]["param"] == "router.budget_tokens"
        ok = await client.post(CHAT, json=GOOD, headers={"x-ttc-budget-tokens": "64"})
        assert ok.status_code == 200


async def test_the_health_probes_answer_head_as_load_balancers_send_it():
    async with gateway_client(answering_backend()) as client:
        for path in ("/health", "/ready"):
            reply = await client.head(path)
            assert reply.status_code == (await client.get(path)).status_code == 200
            assert reply.content == b""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20),
       method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
def test_fuzzed_forwarded_paths_never_get_a_5xx(paths, method):
    async def run() -> list[httpx.Response]:
        async with gateway_client(answering_backend()) as client:
            return [await client.request(method, "/v1/" + quote(path, safe="/?=&"),
                                         json={"model": "fake-model"})
                    for path in paths] + [await client.post(CHAT, json=GOOD)]

    *replies, follow_up = asyncio.run(run())
    for reply in replies:
        assert reply.status_code < 500, (reply.request.url, reply.text)
        if reply.status_code >= 400:
            assert envelope_ok(reply), reply.text
    assert follow_up.status_code == 200


async def test_a_backends_405_keeps_its_allow_header():
    # Found by schemathesis through the sim (PUT /v1/chat/completions, forwarded): the
    # backend's 405 came back in the envelope, its Allow header dropped on the way.
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "fake-model"}]})
        return httpx.Response(405, headers={"Allow": "POST"},
                              json={"error": {"message": "Method Not Allowed"}})

    async with gateway_client(httpx.MockTransport(handle)) as client:
        reply = await client.put("/v1/embeddings", json={"model": "fake-model"})
    assert reply.status_code == 405
    assert envelope_ok(reply)
    assert reply.headers["allow"] == "POST"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("model", "controls"), [
    ("auto", {"max_tokens": 1}),
    ("fake-model", {"max_tokens": 1, "router": {"strategy": "sequential"}}),
    ("fake-model", {"max_tokens": 1, "router": {"strategy": "parallel_vote"}}),
    ("fake-model", {"router": {"budget_tokens": 1}}),
    ("auto", {"router": {"strategy": "direct", "budget_tokens": 1}})])
async def test_a_budget_smaller_than_best_of_is_a_400(model, controls, stream):
    # Found by schemathesis: {"model": "auto", "prompt": ..., "best_of": 2, "max_tokens": 1}
    # was a 502 upstream_error "the chain could not be started" (budget_spent): the budget
    # cannot give each of best_of's candidates a token, which is the request's fault.
    body = {"model": model, "prompt": "What is 2 + 2?", "best_of": 2, "stream": stream,
            **controls}
    async with gateway_client(answering_backend()) as client:
        reply = await client.post("/v1/completions", json=body)
        assert reply.status_code == 400, reply.text
        assert envelope_ok(reply)
        assert reply.json()["error"]["param"] == "best_of"
        fits = await client.post("/v1/completions", json={**body, "best_of": 1})
        assert fits.status_code == 200, fits.text
