"""A client that goes away in the middle of a stream (a chat UI's "stop generating"): the
request is recorded as the client's doing (499), not as the gateway's 503 of a shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from service.app import create_app
from tests.conftest import make_settings, metric

CHAT = {"model": "fake-model", "stream": True,
        "messages": [{"role": "user", "content": "Write a long story"}]}


class FirstWordThenNothing(httpx.AsyncByteStream):
    """A backend stream that sends one word and then hangs, so the client leaves mid-way."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                 "model": "fake-model",
                 "choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        await asyncio.Event().wait()


def hanging_stream(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
    return httpx.Response(200, headers={"content-type": "text/event-stream"},
                          stream=FirstWordThenNothing())


async def test_a_client_leaving_mid_stream_is_recorded_as_499_not_503(tmp_path):
    # Seen through the gateway: `curl` stopped one second into a stream was logged and
    # counted as status 503, "the gateway is shutting down", so ttc_requests_total's 5xx
    # moved with every client that closed its tab.
    app = create_app(make_settings(data_dir=tmp_path), transport=httpx.MockTransport(
        hanging_stream))
    before = metric("ttc_requests_total", strategy="direct", policy="none", arm="none",
                    model="fake-model", status="503")
    request = json.dumps(CHAT).encode()
    read, left = asyncio.Event(), asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not read.is_set():
            read.set()
            return {"type": "http.request", "body": request, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and b"Once" in message.get("body", b""):
            left.set()  # the client read the first word and went away

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("gateway.test", 80),
             "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json")]}
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 10)
        headers = dict(sent[0]["headers"])
        record = await app.state.gateway.request_log.get(
            headers[b"x-ttc-decision-id"].decode())
    assert record.status == "499"
    assert metric("ttc_requests_total", strategy="direct", policy="none", arm="none",
                  model="fake-model", status="503") == before
