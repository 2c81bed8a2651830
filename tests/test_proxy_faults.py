"""Forwarded calls (``/v1/embeddings``, ``/v1/responses``, ...) whose backend fails after its
2xx headers, with the gateway in process: what the client gets, what
``ttc_proxied_requests_total`` and ``ttc_upstream_requests_total`` count, and what the call's
tokens cost the metrics and its key."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.keys import SqliteKeyStore
from tests.conftest import gateway_client, make_settings, metric
from tests.fakes import ScriptedStream, scripted_transport

EMBED = {"model": "fake-model", "input": "hello"}
STREAMED = {"model": "fake-model", "input": "hello", "stream": True, "max_output_tokens": 30}
CREATED = b'event: response.created\ndata: {"type": "response.created"}\n\n'


def counts(endpoint: str) -> dict[str, float]:
    """The forwarded endpoint's and the fake backend's counts, by the statuses they may get."""
    out = {f"proxied {status}": metric("ttc_proxied_requests_total", endpoint=endpoint,
                                       status=status) for status in ("200", "499", "502")}
    out |= {f"upstream {status}": metric("ttc_upstream_requests_total", backend="fake",
                                         status=status) for status in ("200", "stream_error")}
    return out


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def json_reply(body: bytes, error: Exception | None = None):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, headers={"content-type": "application/json"},
                              stream=ScriptedStream([body], error))

    return scripted_transport(handle), calls


@pytest.mark.parametrize("body, error", [
    (b'{"object": "list", "data": [{"embedding": [0.1, 0.', None),  # not JSON: cut short
    (b"<html>502 Bad Gateway</html>", None),  # a proxy's page under a JSON content type
    (b'{"object": "list", "data": [', httpx.ReadError("connection reset by peer")),
])
async def test_a_forwarded_json_reply_that_is_broken_is_a_502_counted_as_one(body, error):
    # Seen through the gateway: /v1/embeddings whose backend sent 200 and a body that was
    # not JSON reached the client as that 200 and was counted in
    # ttc_proxied_requests_total{status="200"} and ttc_upstream_requests_total{status="200"};
    # one cut off mid-body raised inside the response, logged as "unexpected error".
    transport, calls = json_reply(body, error)
    before = counts("embeddings")
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/embeddings", json=EMBED)
    assert reply.status_code == 502
    assert reply.json()["error"]["type"] == "upstream_error"
    assert moved(before, counts("embeddings")) == {"proxied 502": 1, "upstream stream_error": 1}
    assert calls == ["/v1/embeddings"]  # not retried: the backend may have done the work


async def test_a_forwarded_json_reply_that_is_whole_passes_through_as_it_is():
    transport, _ = json_reply(b'{"object": "list", "data": [], "usage": {"prompt_tokens": 3,'
                              b' "total_tokens": 3}}')
    before = counts("embeddings")
    async with gateway_client(transport) as client:
        reply = await client.post("/v1/embeddings", json=EMBED)
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == 3
    assert moved(before, counts("embeddings")) == {"proxied 200": 1, "upstream 200": 1}


async def test_a_forwarded_stream_that_breaks_counts_as_the_error_and_its_grant():
    # A /v1/responses stream that broke after its first event: counted as a 200 whose usage
    # never came, so ttc_tokens_total and ttc_key_tokens_total missed what the key was
    # charged (its whole reservation, the call's grant).
    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        "cutoff", tpm=1000)

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream([CREATED], httpx.ReadError("reset")))

    before = counts("responses")
    tokens = metric("ttc_tokens_total", kind="completion", strategy="none", policy="none",
                    arm="none", model="fake-model")
    key_tokens = metric("ttc_key_tokens_total", key_name="cutoff", kind="completion")
    async with keyed_gateway(scripted_transport(handle), secret) as (app, client):
        with pytest.raises(Exception):  # noqa: B017 (in process, the cut reaches the client)
            await client.post("/v1/responses", json=STREAMED)
        left = await tokens_left(app, secret)
    assert moved(before, counts("responses")) == {"proxied 502": 1, "upstream stream_error": 1}
    assert metric("ttc_tokens_total", kind="completion", strategy="none", policy="none",
                  arm="none", model="fake-model") == tokens + 30
    assert metric("ttc_key_tokens_total", key_name="cutoff", kind="completion") == (
        key_tokens + 30)
    assert left == 1000 - 30  # the key's charge: the same count


@asynccontextmanager
async def keyed_gateway(transport: httpx.AsyncBaseTransport, secret: str,
                        **settings: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The gateway in process, its client sending ``secret`` on every request."""
    app = create_app(make_settings(**settings), transport=transport)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test",
                                  headers={"authorization": f"Bearer {secret}"}) as client):
        yield app, client


async def tokens_left(app: Any, secret: str) -> int:
    """The completion tokens the key has left this minute, read without charging any."""
    gw = app.state.gateway
    headers = await gw.limiter.token_headers(await gw.keys.lookup(secret))
    return int(headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize("status, answered, charged", [(400, 400, 0), (429, 429, 0),
                                                       (500, 502, 30)])
async def test_a_forwarded_call_that_fails_is_charged_what_it_may_have_generated(
        status, answered, charged):
    # A forwarded call refused by the backend (its 4xx or 429: nothing generated) kept the
    # key's whole reservation charged, and one that failed after reaching it (a 5xx) was
    # charged to the key but counted in no metric.
    name = f"failing{status}"
    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        name, tpm=1000)

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "no"}})

    key_tokens = metric("ttc_key_tokens_total", key_name=name, kind="completion")
    async with keyed_gateway(scripted_transport(handle), secret, max_retries=0) as (app, client):
        reply = await client.post("/v1/responses", json={**STREAMED, "stream": False})
        assert reply.status_code == answered
        left = await tokens_left(app, secret)
    assert left == 1000 - charged
    assert metric("ttc_key_tokens_total", key_name=name, kind="completion") == (
        key_tokens + charged)


async def test_a_client_that_leaves_a_forwarded_stream_is_counted_as_499():
    # The stream's status was counted when its headers came (200), however it ended.
    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield CREATED
            await asyncio.Event().wait()

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Endless())

    app = create_app(make_settings(), transport=scripted_transport(handle))
    body = json.dumps(STREAMED).encode()
    got_first = asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not messages:
            messages.append({"type": "http.request"})
            return {"type": "http.request", "body": body, "more_body": False}
        await got_first.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            got_first.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/responses", "raw_path": b"/v1/responses", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("gateway.test", 80),
             "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json")]}
    before = counts("responses")
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 5)
    assert moved(before, counts("responses")) == {"proxied 499": 1, "upstream 200": 1}


async def test_a_forwarded_call_cut_off_while_waiting_for_a_backend_slot_costs_nothing():
    # At the shutdown deadline, a forwarded call still waiting for the backend's one slot
    # kept its whole reservation charged to its key, though it never reached the backend;
    # the call that did reach it is charged its grant (it may be generating all of it).
    from tests.test_disconnect import LeavingClient
    from tests.test_keys_and_limits import NOON

    reached = asyncio.Event()
    bodies: list[dict[str, Any]] = []  # of the calls that reached the backend

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        bodies.append(json.loads(request.content))
        if request.url.path.endswith("/responses"):
            reached.set()
            await asyncio.sleep(30)
        return chat_answer()

    app, secret, scope = keyed_responses_call("queued", handle, backend_max_concurrency=1)
    tasks = []
    async with app.router.lifespan_context(app):
        app.state.gateway.limiter.clock = lambda: NOON
        for cap in (50, 70):  # the first takes the slot, the second waits for it
            body = {**EMBED, "input": "hi", "max_output_tokens": cap}
            receive = LeavingClient(body, asyncio.Event()).receive
            tasks.append(asyncio.create_task(app(dict(scope), receive, collecting_nothing)))
            await asyncio.wait_for(reached.wait(), 5)
        await asyncio.sleep(0.1)
        for task in reversed(tasks):  # as uvicorn does at the shutdown deadline
            task.cancel()
            await asyncio.wait_for(task, 5)
        remaining = await remaining_tokens(app, secret)
    assert [b.get("max_output_tokens") for b in bodies] == [50, None]  # and the probe
    assert remaining == 1000 - 50 - 10


async def collecting_nothing(message: dict[str, Any]) -> None:
    """An ASGI ``send`` whose client takes every message and keeps none."""


def chat_answer() -> httpx.Response:
    """A backend's chat completion of 1 token."""
    return httpx.Response(200, json={"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "4"},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                              "total_tokens": 6}})


async def remaining_tokens(app: Any, secret: str) -> int:
    """The tokens ``secret``'s key has left this minute, after a probe that reserves 10."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway.test") as client:
        probe = await client.post("/v1/chat/completions", headers={
            "authorization": f"Bearer {secret}"}, json={
            "model": "fake-model", "max_tokens": 10,
            "messages": [{"role": "user", "content": "2+2?"}]})
    return int(probe.headers["x-ratelimit-remaining-tokens"])


def keyed_responses_call(name: str, handle: Callable[[httpx.Request], Any],
                         **settings: Any) -> tuple[Any, str, dict[str, Any]]:
    """A key ``name`` of 1000 tokens a minute, an app made with ``settings`` (``make_settings``
    overrides) in front of a backend answered by ``handle`` (sync or async), and the ASGI scope
    of that key's ``POST /v1/responses``: (app, the key's secret, scope)."""
    from tests.test_disconnect import http_scope

    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        name, tpm=1000)
    app = create_app(make_settings(**settings), transport=httpx.MockTransport(handle))
    scope = http_scope([(b"authorization", f"Bearer {secret}".encode())])
    scope["path"], scope["raw_path"] = "/v1/responses", b"/v1/responses"
    return app, secret, scope


@pytest.mark.parametrize("first, charged", [(429, 0), (500, 50)])
async def test_a_forwarded_call_cut_off_in_a_retrys_backoff_costs_what_was_generated(
        first, charged):
    # A forwarded call whose attempt the backend refused (a 429: nothing generated) and that
    # was cut off at the shutdown deadline while waiting out its retry's backoff kept its whole
    # grant charged: an attempt had left the gateway once, so it counted as sent. One whose
    # attempt failed with a 500 (the backend may have generated) is still charged its grant.
    from tests.test_disconnect import LeavingClient
    from tests.test_keys_and_limits import NOON

    failed = asyncio.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        if request.url.path.endswith("/responses"):
            failed.set()
            return httpx.Response(first, json={"error": {"message": "scripted"}})
        return chat_answer()

    app, secret, scope = keyed_responses_call("backoff", handle, retry_backoff_s=30.0)
    async with app.router.lifespan_context(app):
        app.state.gateway.limiter.clock = lambda: NOON
        body = {**EMBED, "input": "hi", "max_output_tokens": 50}
        task = asyncio.create_task(app(scope, LeavingClient(body, asyncio.Event()).receive,
                                       collecting_nothing))
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0.1)  # the retry waits out its backoff (15 s at least)
        task.cancel()  # as uvicorn does at the shutdown deadline
        await asyncio.wait_for(task, 5)
        remaining = await remaining_tokens(app, secret)
    assert remaining == 1000 - charged - 10
