"""Bad input gets OpenAI's error envelope with a fitting status, and the gateway keeps serving."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import gateway_client, make_settings, metric
from tests.fakes import FakeBackend

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

BAD_INPUTS = [
    ("malformed JSON", b'{"model": "fake-model", "messages": [', 400, None),
    ("invalid UTF-8", b'{"model": "fake-\xff\xfe", "messages": []}', 400, None),
    ("not an object", b'[1, 2, 3]', 400, None),
    ("empty body", b"", 400, None),
    ("missing model", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    ("model not a string", b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
     400, "model"),
    ("empty messages", b'{"model": "fake-model", "messages": []}', 400, "messages"),
    ("messages not a list", b'{"model": "fake-model", "messages": "hi"}', 400, "messages"),
    ("message without role", b'{"model": "fake-model", "messages": [{"content": "hi"}]}',
     400, "messages[0].role"),
    ("content a number", b'{"model": "fake-model", "messages": [{"role": "user", "content": 5}]}',
     400, "messages[0].content"),
    ("max_tokens a string",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
     400, "max_tokens"),
    ("negative max_tokens",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
     400, "max_tokens"),
    ("n zero", b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 0}',
     400, "n"),
    ("stream not a bool",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     400, "stream"),
    ("stop a number",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stop": 5}',
     400, "stop"),
    ("stop an object",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "stop": {"a": 1}}', 400, "stop"),
    ("stop a list holding a number",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "stop": ["ok", 1]}', 400, "stop[1]"),
    # routing reads these: a string "0" would not read as greedy, 5 would reach the backend
    ("temperature over 2",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 5}',
     400, "temperature"),
    ("temperature a string",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": "0"}',
     400, "temperature"),
    ("top_p negative",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "top_p": -0.1}',
     400, "top_p"),
    ("unknown strategy",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"strategy": "magic"}}', 400, "router.strategy"),
    ("negative budget",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": -5}}', 400, "router.budget_tokens"),
    # a budget of true read as 1, of 1.5 as 1 and of "100" as 100 until these were refused
    ("budget a boolean",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": true}}', 400, "router.budget_tokens"),
    ("budget a fraction",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": 1.5}}', 400, "router.budget_tokens"),
    ("budget a string in the body",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": "100"}}', 400, "router.budget_tokens"),
    ("total budget a boolean",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_total_tokens": true}}', 400, "router.budget_total_tokens"),
    ("unknown policy",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"policy": "nope"}}', 400, "router.policy"),
    # (under auto, instructions alone are answered directly, as OpenAI answers them)
    ("a vote with only a system turn",
     b'{"model": "auto", "messages": [{"role": "system", "content": "be nice"}],'
     b' "router": {"strategy": "parallel_vote"}}', 400, "messages"),
    ("unknown model", b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
     404, "model"),
    ("misspelt router control",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"stratgy": "direct"}}', 400, "router.stratgy"),
    ("budget over the cap, no strategy",
     b'{"model": "auto", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": 1000000}}', 400, "router.budget_tokens"),
    ("budget over the cap, a backend model",
     b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}],'
     b' "router": {"budget_tokens": 1000000}}', 400, "router.budget_tokens"),
]


@pytest.mark.parametrize(("name", "raw", "status", "param"), BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
async def test_bad_input_gets_an_envelope_and_the_gateway_keeps_serving(name, raw, status, param):
    backend = FakeBackend()
    before = metric("ttc_rejected_total", reason="invalid")
    async with gateway_client(backend.transport()) as client:
        reply = await client.post(CHAT, content=raw,
                                  headers={"content-type": "application/json"})
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]
        assert error["param"] == param
        follow_up = await client.post(CHAT, json=GOOD)
        assert follow_up.status_code == 200
    assert backend.requests == [GOOD]  # nothing bad reached the backend
    assert metric("ttc_rejected_total", reason="invalid") == before + 1


async def test_body_over_the_size_limit_is_413():
    backend = FakeBackend()
    settings = make_settings(max_body_bytes=4096)
    big = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 10_000}]}
    async with gateway_client(backend.transport(), settings) as client:
        reply = await client.post(CHAT, json=big)
        assert reply.status_code == 413
        assert reply.json()["error"]["type"] == "invalid_request_error"

        async def chunked():  # no content-length: the limit holds while reading
            yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        reply = await client.post(CHAT, content=chunked(),
                                  headers={"content-type": "application/json"})
        assert reply.status_code == 413
        assert (await client.post(CHAT, json=GOOD)).status_code == 200
    assert backend.requests == [GOOD]


async def test_a_feedback_body_over_the_size_limit_is_413_too():
    # POST /v1/feedback read any body whole before its checks: 17 MB through the gateway
    # (max_body_bytes 16 MiB) came back 422 "id: Field required", so one request could make
    # a replica hold as much as its client sent (its pod's memory limit is 512 MiB).
    settings = make_settings(max_body_bytes=4096)
    big = {"id": "dec_x", "correct": True, "note": "x" * 10_000}
    async with gateway_client(FakeBackend().transport(), settings) as client:
        reply = await client.post("/v1/feedback", json=big)
        assert reply.status_code == 413
        assert reply.json()["error"]["type"] == "invalid_request_error"

        async def chunked():  # no content-length: the limit holds while reading
            yield b'{"id": "dec_x", "correct": true, "note": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        reply = await client.post("/v1/feedback", content=chunked(),
                                  headers={"content-type": "application/json"})
        assert reply.status_code == 413
        unknown = await client.post("/v1/feedback", json={"id": "dec_x", "correct": True})
        assert unknown.status_code == 404  # a body within the limit is read as before


async def test_unknown_route_is_404_in_the_envelope():
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.get("/nothing/here")
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.json()["error"]["code"] == "unknown_url"


async def test_budget_smaller_than_n_is_400():
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post(CHAT, json={**GOOD, "n": 4, "router": {"budget_tokens": 3}})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "router.budget_tokens"


async def test_a_forwarded_endpoints_errors_are_in_the_envelope():
    """A backend's plain-text error and a malformed JSON body on ``/v1/embeddings`` (which
    the gateway forwards) get OpenAI's envelope, the backend's message kept."""
    import httpx

    def backend(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        if request.url.path.endswith("/rerank"):
            return httpx.Response(404, text="Not Found: no such route")
        return httpx.Response(500, text="Internal Server Error: out of memory")

    async with gateway_client(httpx.MockTransport(backend)) as client:
        failed = await client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"})
        missing = await client.post("/v1/rerank", json={"model": "fake-model", "query": "x"})
        malformed = await client.post("/v1/embeddings", content=b'{"model": ',
                                      headers={"content-type": "application/json"})
    assert failed.status_code == 502
    assert "out of memory" in failed.json()["error"]["message"]
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Not Found: no such route"
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]["message"]


async def test_a_null_router_control_means_not_given_for_strategy_too():
    # Every other control (and `router: null` itself) read null as "not given"; a null
    # strategy was a 400 "unknown strategy None", Python's spelling of null.
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.post(CHAT, json={**GOOD, "model": "auto",
                                              "router": {"strategy": None}})
        named = await client.post(CHAT, json={**GOOD, "router": {"strategy": 5}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["router"]["policy"] is not None  # planned as `auto`
    assert named.status_code == 400
    assert "None" not in named.json()["error"]["message"]
    assert named.json()["error"]["param"] == "router.strategy"


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/responses"])
async def test_a_body_nested_deeper_than_the_gateway_can_forward_is_400(path: str):
    # orjson reads 1,024 levels of nesting but writes only 254: a body nested 300 deep in a
    # field the gateway passes through parsed, then failed as it was sent upstream, a 500
    # ("the gateway failed unexpectedly"); on a forwarded endpoint too once `auto` was
    # rewritten to the backend's model.
    backend = FakeBackend()
    head = {CHAT: b'"messages": [{"role": "user", "content": "hi"}]',
            "/v1/completions": b'"prompt": "hi"', "/v1/responses": b'"input": "hi"'}[path]
    raw = b'{"model": "auto", ' + head + b', "max_tokens": 8, "extra": '

    async with gateway_client(backend.transport()) as client:
        deep = await client.post(path, content=raw + _nested(300) + b"}",
                                 headers={"content-type": "application/json"})
        shallow = await client.post(path, content=raw + _nested(200) + b"}",
                                    headers={"content-type": "application/json"})
    assert deep.status_code == 400, deep.text
    error = deep.json()["error"]
    assert error["type"] == "invalid_request_error" and "nested" in error["message"]
    assert shallow.status_code == 200, shallow.text  # what the gateway can forward, it does
    assert len(backend.requests) == 1 and backend.requests[0]["extra"] == \
        orjson.loads(_nested(200))
