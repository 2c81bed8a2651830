"""Each API key holds at most ``key_max_concurrent_streams`` open streams (on one replica):
one more is a 429 in OpenAI's envelope with ``Retry-After``, and a stream's place is given
back however it ends (its end, its client leaving, its backend failing)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, metric
from tests.fakes import FakeBackend, ScriptedStream, scripted_transport, sse_body
from tests.test_disconnect import LeavingClient, collecting, hanging_stream, http_scope
from tests.test_keys_and_limits import NOON, bearer, running, store

CHAT = "/v1/chat/completions"
STREAM = {"model": "fake-model", "stream": True,
          "messages": [{"role": "user", "content": "Write a long story"}]}


@dataclass
class HeldStream:
    """A stream the gateway is serving to a client that stays until ``leave()``."""

    task: asyncio.Task[None]
    left: asyncio.Event
    sent: list[dict[str, Any]]

    async def leave(self) -> None:
        self.left.set()
        await asyncio.wait_for(self.task, 5)


async def hold(app: Any, secret: str, path: str = CHAT,
               body: dict[str, Any] | None = None) -> HeldStream:
    """Start a stream for ``secret`` on ``app`` and wait until its first event arrived."""
    scope = http_scope([(b"authorization", f"Bearer {secret}".encode())])
    scope["path"], scope["raw_path"] = path, path.encode()
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        await collecting(sent)(message)
        if message["type"] == "http.response.body" and message.get("body"):
            started.set()

    task = asyncio.create_task(app(scope, LeavingClient(body or STREAM, left).receive, send))
    await asyncio.wait_for(started.wait(), 5)
    assert sent[0]["status"] == 200
    return HeldStream(task, left, sent)


async def test_a_key_over_its_open_streams_gets_429_with_retry_after_until_one_ends():
    secret, other = store().create("streamer", rpm=100), store().create("neighbour")
    before = {reason: metric("ttc_rejected_total", reason=reason)
              for reason in ("rate_limit", "rate_limit_streams")}
    config = make_settings(key_max_concurrent_streams=2)
    async with running(httpx.MockTransport(hanging_stream), config) as (app, client):
        held = [await hold(app, secret), await hold(app, secret)]
        assert metric("ttc_key_open_streams", key_name="streamer") == 2
        refused = await client.post(CHAT, json=STREAM, headers=bearer(secret))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_streams"
        assert "2" in error["message"]
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-ratelimit-limit-requests"] == "100"
        # Its other requests are no streams: served.
        assert (await client.get("/v1/models", headers=bearer(secret))).status_code == 200
        neighbour = await hold(app, other)  # the cap is each key's, not the gateway's
        assert metric("ttc_key_open_streams", key_name="neighbour") == 1
        await held[0].leave()  # its client went away: its place is free
        assert metric("ttc_key_open_streams", key_name="streamer") == 1
        again = await hold(app, secret)
        for stream in (held[1], neighbour, again):
            await stream.leave()
    # Counted apart from the request-rate refusals: a different limit, a different remedy.
    assert metric("ttc_rejected_total", reason="rate_limit_streams") == \
        before["rate_limit_streams"] + 1
    assert metric("ttc_rejected_total", reason="rate_limit") == before["rate_limit"]
    assert metric("ttc_key_open_streams", key_name="streamer") == 0
    assert metric("ttc_key_open_streams", key_name="neighbour") == 0


async def test_a_forwarded_stream_counts_as_one_of_the_keys_streams():
    secret = store().create("forwarder")
    config = make_settings(key_max_concurrent_streams=1)
    responses = {"model": "fake-model", "input": "hi", "stream": True}
    async with running(httpx.MockTransport(hanging_stream), config) as (app, client):
        held = await hold(app, secret, "/v1/responses", responses)
        for path, body in ((CHAT, STREAM), ("/v1/responses", responses)):
            refused = await client.post(path, json=body, headers=bearer(secret))
            assert refused.status_code == 429, path
            assert refused.json()["error"]["code"] == "rate_limit_streams"
        await held.leave()
        chat = await hold(app, secret)
        await chat.leave()


def breaking_stream(request: httpx.Request) -> httpx.Response:
    """A stream that sends one word, then its connection breaks."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
             "choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": None}]}
    return httpx.Response(200, headers={"content-type": "text/event-stream"},
                          stream=ScriptedStream(sse_body(chunk),
                                                httpx.ReadError("connection reset")))


def failing(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": {"message": "scripted failure"}})


@pytest.mark.parametrize("backend, status, ending", [
    (FakeBackend().transport(), 200, b"data: [DONE]"),  # streams that end normally
    (scripted_transport(breaking_stream), 200, b'"error"'),  # broken after they started
    (scripted_transport(failing), 502, b'"error"'),  # refused before they started
])
async def test_every_end_of_a_stream_gives_its_place_back(backend, status, ending):
    secret = store().create("oneatatime")
    config = make_settings(key_max_concurrent_streams=1, max_retries=0)
    async with running(backend, config, clock=NOON) as (app, client):
        for _ in range(3):
            reply = await client.post(CHAT, json=STREAM, headers=bearer(secret))
            assert reply.status_code == status, reply.text
            assert ending in reply.content
        assert app.state.gateway.streams.open_streams("oneatatime") == 0
        assert metric("ttc_key_open_streams", key_name="oneatatime") == 0


async def test_without_a_cap_or_without_keys_no_stream_is_refused():
    # ``hold`` asserts each stream's 200. An open gateway has no key to count against; a key
    # without a cap still has its streams counted (``ttc_key_open_streams``), never refused.
    async with running(httpx.MockTransport(hanging_stream),
                       make_settings(key_max_concurrent_streams=1)) as (app, _):
        held = [await hold(app, "unused"), await hold(app, "unused")]  # an open gateway
        for stream in held:
            await stream.leave()
    secret = store().create("unlimited")
    async with running(httpx.MockTransport(hanging_stream),
                       make_settings(key_max_concurrent_streams=None)) as (app, _):
        held = [await hold(app, secret) for _ in range(3)]
        assert app.state.gateway.streams.open_streams("unlimited") == 3
        for stream in held:
            await stream.leave()


def test_the_cap_is_a_setting_with_a_default():
    assert make_settings().key_max_concurrent_streams == 64
    with pytest.raises(ValueError):
        make_settings(key_max_concurrent_streams=0)
    assert make_settings(key_max_concurrent_streams=None).key_max_concurrent_streams is None


async def test_a_stream_cut_off_at_shutdown_gives_its_place_back():
    secret = store().create("lastone")
    config = make_settings(key_max_concurrent_streams=1)
    async with running(httpx.MockTransport(hanging_stream), config) as (app, _):
        held = await hold(app, secret)
        assert app.state.gateway.streams.open_streams("lastone") == 1
        held.task.cancel()  # as uvicorn does at the shutdown deadline
        await asyncio.wait_for(held.task, 5)
        assert b"shutting_down" in held.sent[-1]["body"]
        assert app.state.gateway.streams.open_streams("lastone") == 0
