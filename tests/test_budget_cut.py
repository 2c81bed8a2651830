"""A backend that ignores ``max_tokens`` overruns a budget once: the gateway notes it, and its
later calls are streamed and closed as soon as each choice reaches its cap
(``service.strategies.capped``), ``n`` > 1 choice by choice, JSON and SSE. The backend here
interleaves its choices as vLLM does; ``tests/e2e/test_budget_cut.py`` drives a real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.backends import BackendRegistry
from service.settings import UpstreamSettings
from service.strategies.capped import CutRule
from service.upstream import Backend
from tests.conftest import BACKEND_URL, gateway_client, make_settings, metric
from tests.fakes import ScriptedStream, sse_body

CHAT = "/v1/chat/completions"
WORDS = 30  # every choice's answer, whatever its max_tokens


class Rambler:
    """A backend that honours ``n`` and ignores ``max_tokens``: every choice is ``WORDS``
    words, a token a word; streams send the choices' words in turn (``per_chunk`` words a
    chunk), then the usage. ``tokenizer``: it counts words at llama.cpp's ``/tokenize``."""

    def __init__(self, per_chunk: int = 1, tokenizer: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.per_chunk = per_chunk
        self.tokenizer = tokenizer

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        if request.url.path == "/tokenize" and self.tokenizer:
            words = str(json.loads(request.content).get("content") or "").split()
            return httpx.Response(200, json={"tokens": list(range(len(words)))})
        if not request.url.path.endswith("/chat/completions"):
            return httpx.Response(404)
        body = json.loads(request.content)
        self.requests.append(body)
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": 5, "completion_tokens": WORDS * n,
                 "total_tokens": 5 + WORDS * n}
        if not body.get("stream"):
            text = " ".join(["la"] * WORDS)
            return httpx.Response(200, json={
                "id": "x", "object": "chat.completion", "created": 1, "model": "fake-model",
                "usage": usage, "choices": [
                    {"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"} for i in range(n)]})
        base = {"id": "x", "object": "chat.completion.chunk", "created": 1,
                "model": "fake-model"}
        chunks: list[dict[str, Any] | str] = []
        for _ in range(WORDS // self.per_chunk):
            chunks += [{**base, "choices": [{"index": i, "delta": {
                "content": "la " * self.per_chunk}, "finish_reason": None}]} for i in range(n)]
        chunks += [{**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}
                   for i in range(n)]
        chunks += [{**base, "choices": [], "usage": usage}, "data: [DONE]\n\n"]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(*chunks)))


def ask(budget: int, n: int = 1, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "n": n,
                            "messages": [{"role": "user", "content": "Sing"}],
                            "router": {"strategy": "direct", "budget_tokens": budget}}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def completion_metric() -> float:
    return metric("ttc_tokens_total", kind="completion", strategy="direct", policy="none",
                  arm="none", model="fake-model")


def events_of(reply: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in reply.text.splitlines()
            if line.startswith("data: {")]


async def test_after_one_overrun_every_choice_is_cut_at_its_cap():
    backend = Rambler()
    before = completion_metric()
    async with gateway_client(backend.transport()) as client:
        first = (await client.post(CHAT, json=ask(10, n=2))).json()
        second = (await client.post(CHAT, json=ask(10, n=2))).json()
    # The first call is sent as to any backend, and generates its answers in full.
    assert "stream" not in backend.requests[0]
    assert first["usage"]["completion_tokens"] == 60 and first["router"]["budget_overrun"]
    # The second is streamed, and closed once both choices reached their 5 tokens.
    assert backend.requests[1]["stream"] is True
    assert backend.requests[1]["stream_options"] == {"include_usage": True}
    assert [c["message"]["content"] for c in second["choices"]] == ["la " * 5] * 2
    assert [c["finish_reason"] for c in second["choices"]] == ["length", "length"]
    router = second["router"]
    assert second["usage"]["completion_tokens"] == router["spent_tokens"] == 10
    assert router["budget_overrun"] is False and router["usage_source"] == "grant"
    assert completion_metric() - before == 70  # the metrics count what usage says


async def test_after_one_overrun_a_client_stream_ends_each_choice_at_its_cap():
    backend = Rambler()
    async with gateway_client(backend.transport()) as client:
        await client.post(CHAT, json=ask(10, n=2))
        reply = await client.post(CHAT, json=ask(10, n=2, stream=True))
    events = events_of(reply)
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert texts == {0: "la " * 5, 1: "la " * 5}
    assert finishes == {0: ["length"], 1: ["length"]}  # not an upstream_over_cap error
    assert events[-1]["usage"]["completion_tokens"] == events[-1]["router"]["spent_tokens"] == 10
    assert events[-1]["router"]["budget_overrun"] is False


async def test_a_cut_stream_of_several_tokens_a_chunk_is_charged_what_its_text_shows():
    # Cut at 4 chunks (its cap, a token a chunk at least), which held 8 tokens: the backend's
    # tokenizer counts them, and the overrun is reported, not hidden under the grant.
    backend = Rambler(per_chunk=2, tokenizer=True)
    async with gateway_client(backend.transport()) as client:
        await client.post(CHAT, json=ask(4))
        reply = (await client.post(CHAT, json=ask(4))).json()
    assert reply["choices"][0]["message"]["content"] == "la " * 8
    assert reply["usage"]["completion_tokens"] == reply["router"]["spent_tokens"] == 8
    assert reply["router"]["budget_overrun"] is True


async def test_an_upstream_configured_as_ignoring_max_tokens_is_cut_from_the_first_call():
    backend = Rambler()
    settings = make_settings(upstreams=[UpstreamSettings(
        url=BACKEND_URL, name="fake", models=["fake-model"], ignores_max_tokens=True)])
    async with gateway_client(backend.transport(), settings) as client:
        reply = (await client.post(CHAT, json=ask(4))).json()
    assert backend.requests[0]["stream"] is True
    assert reply["usage"]["completion_tokens"] == 4 and not reply["router"]["budget_overrun"]


async def test_a_call_with_no_cap_is_never_cut():
    backend = Rambler()
    async with gateway_client(backend.transport()) as client:
        await client.post(CHAT, json=ask(10))
        free = await client.post(CHAT, json={"model": "fake-model",
                                             "messages": [{"role": "user", "content": "Sing"}]})
    assert "stream" not in backend.requests[1]  # nothing to cut it at
    assert free.json()["usage"]["completion_tokens"] == WORDS


def test_the_learnt_fact_expires_and_is_checked_again(monkeypatch: pytest.MonkeyPatch):
    now = [1000.0]
    monkeypatch.setattr("service.backends.time.monotonic", lambda: now[0])
    registry = BackendRegistry([], ignores_max_tokens_ttl_s=60)
    backend = Backend("b", "http://b/v1", None, ("m",))
    assert not registry.ignores_max_tokens(backend, "m")
    registry.note_ignores_max_tokens(backend, "m")
    assert registry.ignores_max_tokens(backend, "m")
    assert not registry.ignores_max_tokens(backend, "other")  # per model
    now[0] += 59
    assert registry.ignores_max_tokens(backend, "m")
    now[0] += 2
    assert not registry.ignores_max_tokens(backend, "m")  # the next call checks it again


def test_once_the_fact_expires_one_call_checks_while_the_others_stay_cut(
        monkeypatch: pytest.MonkeyPatch):
    # Forgotten at once, every call sent before the first of them came back overran: under
    # load (a vote's wave, n fanned out, concurrent requests) not "one call" but all of them.
    now = [1000.0]
    monkeypatch.setattr("service.backends.time.monotonic", lambda: now[0])
    registry = BackendRegistry([], ignores_max_tokens_ttl_s=60)
    backend = Backend("b", "http://b/v1", None, ("m",))
    registry.note_ignores_max_tokens(backend, "m")
    now[0] += 61
    assert not registry.ignores_max_tokens(backend, "m")  # the check, sent as usual
    assert registry.ignores_max_tokens(backend, "m")  # sent before it came back: still cut
    registry.note_honours_max_tokens(backend, "m")  # it kept to its cap: forgotten
    assert not registry.ignores_max_tokens(backend, "m")
    assert not registry.ignores_max_tokens(backend, "m")
    # A check that overruns is noted again; one that never reports (it failed) is repeated
    # once another ttl has passed.
    registry.note_ignores_max_tokens(backend, "m")
    now[0] += 61
    assert not registry.ignores_max_tokens(backend, "m")
    now[0] += 30
    assert registry.ignores_max_tokens(backend, "m")
    registry.note_ignores_max_tokens(backend, "m")
    now[0] += 59
    assert registry.ignores_max_tokens(backend, "m")
    now[0] += 2
    assert not registry.ignores_max_tokens(backend, "m")
    now[0] += 61
    assert not registry.ignores_max_tokens(backend, "m")  # that check never reported


async def test_once_the_fact_expires_a_fanned_out_request_sends_one_call_uncut():
    backend = Rambler()

    async def slowly(request: httpx.Request) -> httpx.Response:  # calls in flight together
        await asyncio.sleep(0.01)
        return backend._handle(request)

    settings = make_settings(supports_n=False, ignores_max_tokens_ttl_s=0.05)
    async with gateway_client(httpx.MockTransport(slowly), settings) as client:
        await client.post(CHAT, json=ask(10))  # overruns: noted
        await asyncio.sleep(0.1)  # forgotten
        reply = (await client.post(CHAT, json=ask(30, n=3))).json()
    # Three single-choice calls sent together: one checks the backend again, two are cut.
    sent = backend.requests[1:]
    assert len(sent) == 3
    assert sorted(bool(body.get("stream")) for body in sent) == [False, True, True]
    assert reply["usage"]["completion_tokens"] == WORDS + 10 + 10


async def scraped(client: httpx.AsyncClient, name: str) -> dict[tuple[str, ...], float]:
    """``GET /metrics`` as a Prometheus server reads it: ``name``'s samples, label values
    (sorted by label name) -> value."""
    text = (await client.get("/metrics")).text
    return {tuple(v for _, v in sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}


def cut_metric(name: str) -> float:
    return metric(name, backend="fake", model="fake-model")


async def test_a_backend_seen_ignoring_max_tokens_is_shown_and_its_cut_calls_counted():
    # An operator sees which backend and model are cut, for as long as they are, how often a
    # call overran its max_tokens, and how many calls were closed at their grants.
    backend = Rambler()
    overruns, cut = (cut_metric("ttc_upstream_max_tokens_overruns_total"),
                     cut_metric("ttc_budget_cut_calls_total"))
    settings = make_settings(ignores_max_tokens_ttl_s=0.2)
    async with gateway_client(backend.transport(), settings) as client:
        assert await scraped(client, "ttc_upstream_ignores_max_tokens") == {}
        await client.post(CHAT, json=ask(10, n=2))  # overruns: noted
        assert cut_metric("ttc_upstream_max_tokens_overruns_total") == overruns + 1
        assert await scraped(client, "ttc_upstream_ignores_max_tokens") == {
            ("fake", "fake-model", "observed"): 1.0}
        await client.post(CHAT, json=ask(10, n=2))  # streamed and closed at its grant
        await client.post(CHAT, json=ask(10, n=2, stream=True))  # a client's stream, too
        assert cut_metric("ttc_budget_cut_calls_total") == cut + 2
        assert cut_metric("ttc_upstream_max_tokens_overruns_total") == overruns + 1
        await asyncio.sleep(0.3)  # the fact expired: the next call checks the backend again
        assert await scraped(client, "ttc_upstream_ignores_max_tokens") == {
            ("fake", "fake-model", "observed"): 0.0}
    assert len(backend.requests) == 3 and backend.requests[2]["stream"] is True


async def test_an_upstream_configured_as_ignoring_max_tokens_is_shown_as_configured():
    backend = Rambler()
    settings = make_settings(upstreams=[UpstreamSettings(
        url=BACKEND_URL, name="fake", models=["fake-model"], ignores_max_tokens=True)])
    cut = cut_metric("ttc_budget_cut_calls_total")
    async with gateway_client(backend.transport(), settings) as client:
        assert await scraped(client, "ttc_upstream_ignores_max_tokens") == {
            ("fake", "fake-model", "configured"): 1.0}
        await client.post(CHAT, json=ask(4))
    assert cut_metric("ttc_budget_cut_calls_total") == cut + 1


def chunk(index: int, text: str = "w ", finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": text} if text else {},
                         "finish_reason": finish}]}


def test_a_cut_rule_cuts_each_choice_at_its_cap_and_all_at_the_grant():
    rule = CutRule(per_choice=2, choices=2, granted=4)
    assert rule.see(chunk(0)) == [] and rule.see(chunk(0)) == [0]
    assert not rule.over  # choice 1 has not reached its cap
    assert rule.see(chunk(0)) == []  # dropped, but paid for: 3 chunks of 4
    assert rule.see(chunk(1)) == [1] and rule.over  # the grant is spent
    assert rule.total == 4


def test_a_choice_finishing_on_its_last_granted_token_is_finished_not_cut():
    rule = CutRule(per_choice=2, choices=1, granted=2)
    rule.see(chunk(0))
    assert rule.see(chunk(0, finish="length")) == []
    assert rule.finished == {0} and not rule.over  # read on, to its usage
