"""A client that goes away before its answer ends: a stream it stops reading (a chat UI's "stop
generating"), or a JSON request it gives up on (curl's timeout, a closed tab). The request
is recorded as the client's doing (499), not as the gateway's 503 of a shutdown, and a JSON
request stops its upstream work there, paying for what was already spent and no more."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.keys import SqliteKeyStore
from service.latency import CALL
from tests.conftest import make_settings, metric

CHAT = {"model": "fake-model", "stream": True,
        "messages": [{"role": "user", "content": "Write a long story"}]}
QUESTION = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 6*7?"}]}
NOON = 1_800_000_000.0 - 1_800_000_000.0 % 86_400 + 43_200.0  # 12:00:00 UTC, a minute's start


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


@dataclass
class SlowCalls:
    """A backend whose first ``quick`` calls answer at once ("The answer is 42.", 4 tokens)
    and whose later ones take ``delay_s`` ("The answer is 7."): a vote or a chain is still
    waiting on them when its client leaves. ``in_flight`` is set once ``slow`` slow calls
    are waiting; ``cancelled`` counts the calls the gateway gave up on."""

    quick: int
    slow: int
    delay_s: float = 1.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    waiting: int = 0
    cancelled: int = 0
    in_flight: asyncio.Event = field(default_factory=asyncio.Event)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        body = json.loads(request.content)
        number = len(self.bodies)
        self.bodies.append(body)
        text = "The answer is 42."
        if number >= self.quick:
            text = "The answer is 7."
            self.waiting += 1
            if self.waiting == self.slow:
                self.in_flight.set()
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        words = len(text.split())
        return httpx.Response(200, json={
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 1,
            "model": body["model"],
            "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]})


def upstream_counts() -> dict[str, float]:
    """``ttc_upstream_requests_total`` of the fake backend, by the statuses a call may get."""
    return {status: metric("ttc_upstream_requests_total", backend="fake", status=status)
            for status in ("200", "error", "stream_error", "cancelled")}


def http_scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("gateway.test", 80),
            "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json"),
                        *(headers or [])]}


class LeavingClient:
    """ASGI ``receive`` of a client that sends ``body`` and goes away once ``left`` is set
    (never, for a client that stays: the server says nothing more until it is answered).
    ``listening``: ``receive()`` calls still waiting for the client to go."""

    def __init__(self, body: dict[str, Any], left: asyncio.Event):
        self._request = json.dumps(body).encode()
        self._read = False
        self._left = left
        self.listening = 0

    async def receive(self) -> dict[str, Any]:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self._request, "more_body": False}
        self.listening += 1
        try:
            await self._left.wait()
        finally:
            self.listening -= 1
        return {"type": "http.disconnect"}


def leaving_client(body: dict[str, Any], left: asyncio.Event) -> Any:
    return LeavingClient(body, left).receive


def collecting(sent: list[dict[str, Any]]) -> Any:
    """An ASGI ``send`` that keeps every message in ``sent``."""

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return send


async def test_a_client_leaving_mid_stream_is_recorded_as_499_not_503(tmp_path):
    # Seen through the gateway: `curl` stopped one second into a stream was logged and
    # counted as status 503, "the gateway is shutting down", so ttc_requests_total's 5xx
    # moved with every client that closed its tab.
    app = create_app(make_settings(data_dir=tmp_path), transport=httpx.MockTransport(
        hanging_stream))
    before = metric("ttc_requests_total", strategy="direct", policy="none", arm="none",
                    model="fake-model", status="503")
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and b"Once" in message.get("body", b""):
            left.set()  # the client read the first word and went away

    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(http_scope(), leaving_client(CHAT, left), send), 10)
        headers = dict(sent[0]["headers"])
        record = await app.state.gateway.request_log.get(
            headers[b"x-ttc-decision-id"].decode())
    assert record.status == "499"
    assert metric("ttc_requests_total", strategy="direct", policy="none", arm="none",
                  model="fake-model", status="503") == before


@pytest.mark.parametrize("strategy, quick, slow", [
    ("parallel_vote", 1, 2),  # a first wave of three: one answered, two still drawing
    ("sequential", 0, 1),  # one long chain
])
async def test_a_json_request_whose_client_leaves_stops_its_upstream_calls(strategy, quick,
                                                                           slow):
    # Seen through the gateway: a vote whose client (curl --max-time) gave up went on
    # drawing samples and was logged 200 once it finished, answered to nobody: every one of
    # those upstream tokens was paid for and never read.
    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        "leaver", tpm=10_000)
    backend = SlowCalls(quick=quick, slow=slow)
    app = create_app(make_settings(vote_width=5, supports_n=False), transport=backend.transport())
    labels = {"strategy": strategy, "policy": "none", "arm": "none", "model": "fake-model"}
    before = {status: metric("ttc_requests_total", **labels, status=status)
              for status in ("200", "499", "503")}
    upstream_before = upstream_counts()
    body = {**QUESTION, "router": {"strategy": strategy, "budget_tokens": 5 * 64}}
    scope = http_scope([(b"authorization", f"Bearer {secret}".encode())])
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []
    send = collecting(sent)

    async def leave_when_the_slow_calls_wait() -> None:
        await backend.in_flight.wait()
        await asyncio.sleep(0.05)  # the quick calls' replies are counted meanwhile
        left.set()

    async with app.router.lifespan_context(app):
        app.state.gateway.limiter.clock = lambda: NOON
        leaving = asyncio.create_task(leave_when_the_slow_calls_wait())
        await asyncio.wait_for(app(scope, leaving_client(body, left), send), 5)
        await leaving
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
        calls, cancelled = list(backend.bodies), backend.cancelled
        upstream_after = upstream_counts()
        backend.delay_s = 0
        # What the key really spent is what it has left: a probe reserves its 10 tokens.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway.test") as client:
            probe = await client.post("/v1/chat/completions",
                                      json={**QUESTION, "max_tokens": 10},
                                      headers={"authorization": f"Bearer {secret}"})
    assert len(calls) == quick + slow  # no sample drawn after the client left
    assert cancelled == slow  # the calls in flight were given up, not waited for
    assert not any(m["type"] == "http.response.start" for m in sent)  # nobody to read it
    assert record.status == "499"
    # Every token spent upstream is counted: the quick replies' usage (4 tokens each) and
    # each abandoned call's whole grant (it may have generated all of it).
    grants = sum(b["max_tokens"] for b in calls[quick:])
    assert record.completion_tokens == 4 * quick + grants
    assert record.estimated  # the abandoned calls' counts are their grants
    assert metric("ttc_requests_total", **labels, status="499") == before["499"] + 1
    assert metric("ttc_requests_total", **labels, status="200") == before["200"]
    assert metric("ttc_requests_total", **labels, status="503") == before["503"]
    assert probe.status_code == 200
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == (
        10_000 - record.completion_tokens - 10)
    # Every upstream call is counted once in ttc_upstream_requests_total: the answered ones
    # under 200, the ones given up before the backend sent its headers under "cancelled"
    # (they were counted nowhere, so the metric showed fewer calls than the backend served).
    assert upstream_after["200"] == upstream_before["200"] + quick
    assert upstream_after["cancelled"] == upstream_before["cancelled"] + slow
    assert sum(upstream_after.values()) == sum(upstream_before.values()) + len(calls)


async def test_a_json_request_cut_off_at_shutdown_is_still_a_503():
    # The shutdown deadline cancels the request's task without any disconnect: the client is
    # still there and gets its 503 in the envelope, recorded as the gateway's.
    backend = SlowCalls(quick=0, slow=1, delay_s=30)
    app = create_app(make_settings(), transport=backend.transport())
    body = {**QUESTION, "router": {"strategy": "sequential", "budget_tokens": 64}}
    scope = http_scope()
    sent: list[dict[str, Any]] = []
    send = collecting(sent)

    async with app.router.lifespan_context(app):
        request = asyncio.create_task(app(scope, leaving_client(body, asyncio.Event()), send))
        await asyncio.wait_for(backend.in_flight.wait(), 5)
        request.cancel()  # as uvicorn does at the shutdown deadline
        await asyncio.wait_for(request, 5)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["code"] == "shutting_down"
    assert record.status == "503"
    assert backend.cancelled == 1


async def test_a_client_that_stays_gets_its_answer_and_leaves_no_watcher_behind():
    backend = SlowCalls(quick=0, slow=1, delay_s=0.05)
    app = create_app(make_settings(), transport=backend.transport())
    body = {**QUESTION, "router": {"strategy": "sequential", "budget_tokens": 64}}
    scope = http_scope()
    sent: list[dict[str, Any]] = []
    send = collecting(sent)

    client = LeavingClient(body, asyncio.Event())
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, client.receive, send), 5)
        await asyncio.sleep(0)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["choices"][0]["message"]["content"] == "The answer is 7."
    assert record.status == "200"
    assert client.listening == 0  # nothing still waits on the client once it is answered


async def test_a_streamed_vote_whose_client_leaves_counts_the_calls_it_abandons():
    # A streamed vote sends keep-alive comments while its samples are drawn; a client that
    # left then was recorded with only the samples already answered (4 tokens here): the
    # calls in flight were cancelled but charged after the record was written, so the log,
    # the metrics and the key's limits missed their grants.
    backend = SlowCalls(quick=1, slow=2)
    app = create_app(make_settings(vote_width=5, supports_n=False, keepalive_s=0.05),
                     transport=backend.transport())
    body = {**QUESTION, "stream": True,
            "router": {"strategy": "parallel_vote", "budget_tokens": 5 * 64}}
    scope = http_scope()
    left = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and backend.in_flight.is_set():
            left.set()  # the client read a keep-alive while the samples were drawn, and left

    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, leaving_client(body, left), send), 5)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
    assert record.status == "499"
    assert backend.cancelled == 2 and len(backend.bodies) == 3
    assert record.completion_tokens == 4 + sum(b["max_tokens"] for b in backend.bodies[1:])



@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("strategy", ["parallel_vote", "direct"])
async def test_a_client_gone_before_the_strategy_starts_costs_no_upstream_call(strategy,
                                                                               stream):
    # The watcher starts 50 ms into the strategy: a client that left before (while the
    # prompt was classified, its coverage read, the request queued) was not noticed, so a
    # vote drew its samples for nobody and was logged 200. Here the client sends its body
    # and is gone at once: the server says so to the first receive() after the body.
    backend = SlowCalls(quick=100, slow=0)
    app = create_app(make_settings(vote_width=5, supports_n=False),
                     transport=backend.transport())
    body = {**QUESTION, "stream": stream,
            "router": {"strategy": strategy, "budget_tokens": 5 * 64}}
    scope = http_scope()
    left = asyncio.Event()
    left.set()
    sent: list[dict[str, Any]] = []

    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, leaving_client(body, left), collecting(sent)), 5)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
    assert backend.bodies == []  # no completion call went upstream
    assert not any(m["type"] == "http.response.start" for m in sent)
    assert record.status == "499" and record.completion_tokens == 0


async def test_a_client_gone_before_its_body_is_read_is_no_unexpected_error(caplog):
    # Seen through uvicorn: a client that sent its request and closed at once, while
    # admission read the keys in a thread, made the body read raise Starlette's
    # ClientDisconnect, logged as an unexpected error with its traceback, and a 500 was sent
    # to nobody.
    backend = SlowCalls(quick=100, slow=0)
    app = create_app(make_settings(), transport=backend.transport())
    sent: list[dict[str, Any]] = []

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}  # as uvicorn answers once the connection is lost

    async with app.router.lifespan_context(app):
        with caplog.at_level("ERROR"):
            await asyncio.wait_for(app(http_scope(), gone, collecting(sent)), 5)
    assert backend.bodies == []
    assert not any(m["type"] == "http.response.start" for m in sent)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("ending", ["client_left", "shutdown"])
async def test_calls_still_waiting_for_a_backend_slot_are_charged_nothing(ending):
    # A request whose calls wait for the backend's concurrency slot (backend_max_concurrency)
    # when it is cancelled: the call that reached the backend may be generating its whole
    # grant and is charged it, but each call still waiting for a slot was charged its grant
    # too, and its key with it, though nothing of it ever left the gateway.
    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        "waiter", tpm=10_000)
    backend = SlowCalls(quick=0, slow=1, delay_s=30)
    app = create_app(make_settings(supports_n=False, backend_max_concurrency=1),
                     transport=backend.transport())
    stream = ending == "shutdown"  # a stream's calls open before its response: no watcher
    body = {**QUESTION, "n": 3, "stream": stream, "router": {"strategy": "direct"}}
    scope = http_scope([(b"authorization", f"Bearer {secret}".encode())])
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async with app.router.lifespan_context(app):
        app.state.gateway.limiter.clock = lambda: NOON
        request = asyncio.create_task(app(scope, leaving_client(body, left), collecting(sent)))
        await asyncio.wait_for(backend.in_flight.wait(), 5)
        await asyncio.sleep(0.1)  # the two other calls wait for the one slot
        if ending == "client_left":
            left.set()
        else:
            request.cancel()  # as uvicorn does at the shutdown deadline
        await asyncio.wait_for(request, 5)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
        calls, cancelled = list(backend.bodies), backend.cancelled
        # What the key was charged is what it has left: a probe reserves its 10 tokens.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway.test") as client:
            backend.delay_s = 0
            probe = await client.post("/v1/chat/completions",
                                      json={**QUESTION, "max_tokens": 10},
                                      headers={"authorization": f"Bearer {secret}"})
    assert record.status == ("499" if ending == "client_left" else "503")
    assert len(calls) == 1 and cancelled == 1
    grant = calls[0]["max_tokens"]  # of the one call that reached the backend
    assert record.completion_tokens == grant
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == 10_000 - grant - 10


async def test_a_retry_still_in_its_backoff_when_the_client_leaves_is_charged_nothing():
    # The failed attempt (a 500: the backend may have generated) is charged its grant; the
    # retry, granted again before its backoff, was charged too, though it was never sent.
    failed = asyncio.Event()
    bodies: list[dict[str, Any]] = []

    def fail_once(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        bodies.append(json.loads(request.content))
        failed.set()
        return httpx.Response(500, json={"error": {"message": "scripted failure"}})

    app = create_app(make_settings(retry_backoff_s=30.0), transport=httpx.MockTransport(
        fail_once))
    body = {**QUESTION, "max_tokens": 100}
    scope = http_scope()
    left = asyncio.Event()
    async with app.router.lifespan_context(app):
        request = asyncio.create_task(app(scope, leaving_client(body, left), collecting([])))
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0.1)  # the retry waits out its backoff (15 s at least)
        left.set()
        await asyncio.wait_for(request, 5)
        record = await app.state.gateway.request_log.get(scope[CALL].routed.decision_id)
    assert len(bodies) == 1
    assert record.status == "499"
    assert record.completion_tokens == 100  # the failed attempt's grant, not the retry's
