"""A backend whose ``usage`` is present but wrong: completion tokens of 0 beside a written
answer, 0 for a reply cut by its cap with no visible text, or reasoning tokens reported apart
from ``completion_tokens`` (the "unfolded" shape of Gemini's OpenAI-compatible endpoint and of
several proxies: ``total_tokens`` = prompt + completion + reasoning). Each request is checked
in all the places its spend is counted: the response's ``usage``, the request log's row, the
key's daily quota and ``ttc_tokens_total``; and the spend against ``budget_tokens``.

The backend (``MisreportingBackend``) is an ASGI app mounted with ``httpx.ASGITransport``; one
word is one token, and it keeps the true count in ``generated``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.app import create_app
from service.keys import SqliteKeyStore
from service.proxy_usage import read_usage
from service.search import Hit
from tests.conftest import make_settings, metric

CHAT = "/v1/chat/completions"
STRATEGIES = ["direct", "parallel_vote", "sequential", "search"]
DAY = 1_000_000


class StaticSearch:
    """A search backend that finds one document for every query."""

    name = "local"

    async def search(self, query: str, k: int) -> list[Hit]:
        return [Hit("doc", "Quenmoor", "Quenmoor is a town of 7 bridges.", 1.0)]


class MisreportingBackend:
    """Answers every call with ``words`` words (the last one "7"), after ``reasoning`` words of
    ``reasoning_content``, within ``max_tokens`` (``finish_reason: length`` when cut); or,
    with ``hidden``, writes its whole ``max_tokens`` out of sight (reasoning it does not
    return) and shows nothing. ``usage`` picks what it reports:

    - ``"true"``: the true counts, reasoning included in ``completion_tokens``;
    - ``"zero"``: ``completion_tokens: 0`` (and ``total_tokens`` the prompt's 5);
    - ``"unfolded"``: ``completion_tokens`` without the reasoning, which is in
      ``completion_tokens_details.reasoning_tokens`` and in ``total_tokens``;
    - ``"unfolded_no_total"``: the same without ``total_tokens``.

    Streams carry the usage in their last chunk. ``/tokenize`` counts words (llama.cpp's).
    """

    def __init__(self, usage: str, *, words: int = 6, reasoning: int = 0,
                 hidden: bool = False):
        self.usage = usage
        self.words = words
        self.reasoning = reasoning
        self.hidden = hidden
        self.generated = 0
        self.calls = 0

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=Starlette(routes=[
            Route("/v1/models", self._models),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/tokenize", self._tokenize, methods=["POST"])]))

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model"}]})

    async def _tokenize(self, request: Request) -> Response:
        words = str((await request.json()).get("content") or "").split()
        return JSONResponse({"tokens": list(range(len(words)))})

    def _choice(self, cap: int) -> tuple[list[str], list[str], str, int]:
        """(reasoning words, answer words, finish reason, tokens generated)."""
        if self.hidden:
            return [], [], "length", cap
        written = ["r"] * self.reasoning + ["w"] * (self.words - 1) + ["7"]
        if len(written) >= cap:
            written, finish, cost = written[:cap], "length", cap
        else:
            finish, cost = "stop", len(written) + 1  # the end-of-sequence token
        return written[:self.reasoning], written[self.reasoning:], finish, cost

    def _usage(self, spent: int, reasoning: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": 5, "completion_tokens": spent,
                                 "total_tokens": 5 + spent}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        if self.usage == "zero":
            usage |= {"completion_tokens": 0, "total_tokens": 5}
        elif self.usage.startswith("unfolded"):
            usage["completion_tokens"] = spent - reasoning
            if self.usage == "unfolded_no_total":
                del usage["total_tokens"]
        return usage

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.calls += 1
        choices = [self._choice(int(body["max_tokens"])) for _ in range(int(body.get("n") or 1))]
        spent = sum(cost for *_, cost in choices)
        self.generated += spent
        usage = self._usage(spent, sum(len(r) for r, *_ in choices))
        if body.get("stream"):
            return StreamingResponse(_events(choices, usage), media_type="text/event-stream")
        return JSONResponse({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "fake-model",
            "usage": usage,
            "choices": [{"index": i, "finish_reason": finish, "message": {
                "role": "assistant", "content": " ".join(answer),
                **({"reasoning_content": " ".join(thought)} if thought else {})}}
                for i, (thought, answer, finish, _) in enumerate(choices)]})


async def _events(choices: list[tuple[list[str], list[str], str, int]],
                  usage: dict[str, Any]) -> Any:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model"}

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**base, **payload}).encode() + b"\n\n"

    for index, (thought, answer, finish, _) in enumerate(choices):
        pieces = [{"reasoning_content": w + " "} for w in thought] + [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(answer)]
        for delta in pieces:
            yield event({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        yield event({"choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
    yield event({"choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _counted_completion() -> float:
    """``ttc_tokens_total{kind="completion"}`` of this module's requests."""
    return sum(metric("ttc_tokens_total", kind="completion", strategy=s, policy="none",
                      arm="none", model="fake-model") for s in STRATEGIES)


async def spend(backend: MisreportingBackend, strategy: str, budget: int, *,
                stream: bool) -> dict[str, Any]:
    """One request through the gateway with an API key (a daily quota of ``DAY`` tokens);
    what the backend generated for it (``generated``) and what each place that counts it
    says: ``usage``, ``router`` (the response's), ``log``
    (the request log row's completion tokens), ``quota`` (tokens the key's day lost, read
    from the next request's ``x-ratelimit-remaining-tokens``) and ``metric``."""
    secret = SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(
        f"mis-{strategy}-{int(stream)}-{backend.usage}", tokens_per_day=DAY)
    auth = {"authorization": f"Bearer {secret}"}
    body: dict[str, Any] = {
        "model": "fake-model", "messages": [{"role": "user", "content": "How many bridges?"}],
        "router": {"strategy": strategy, "budget_tokens": budget}}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    config = make_settings(vote_width=3, vote_first_wave=3, vote_majority_first=False,
                           answer_reserve_tokens=16, search_max_calls=2)
    before = _counted_completion()
    app = create_app(config, transport=backend.transport(), search_backend=StaticSearch())
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        reply = await client.post(CHAT, json=body, headers=auth)
        assert reply.status_code == 200, reply.text
        if stream:
            events = [json.loads(line[6:]) for line in reply.text.splitlines()
                      if line.startswith("data: {")]
            assert not any("error" in e for e in events), events[-1]
            answer = events[-1]
        else:
            answer = reply.json()
        row = await app.state.gateway.request_log.get(reply.headers["x-ttc-decision-id"])
        generated = backend.generated
        # Not streamed, so without stream_options (OpenAI refuses them without stream).
        unstreamed = {k: v for k, v in body.items() if k != "stream_options"}
        probe = await client.post(CHAT, json={**unstreamed, "stream": False, "max_tokens": 1,
                                              "router": {"strategy": "direct"}}, headers=auth)
    return {"generated": generated, "usage": answer["usage"], "router": answer["router"],
            "log": row.completion_tokens,
            "quota": DAY - 1 - int(probe.headers["x-ratelimit-remaining-tokens"]),
            "metric": _counted_completion() - before - probe.json()["usage"]["completion_tokens"]}


def assert_counted(seen: dict[str, Any], budget: int) -> None:
    """Every count agrees, none is below what the backend generated for the request, and
    the backend generated no more than the budget."""
    generated = seen["generated"]
    counts = {"usage": seen["usage"]["completion_tokens"],
              "router": seen["router"]["spent_tokens"], "log": seen["log"],
              "quota": seen["quota"], "metric": seen["metric"]}
    assert len(set(counts.values())) == 1, counts
    assert counts["usage"] >= generated, (counts, generated)
    assert generated <= budget


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_usage_of_zero_beside_a_written_answer_is_not_believed(strategy, stream):
    # Seen before the fix: every count said 0 for a reply of 7 generated tokens (the
    # streamed direct and sequential calls were caught by their chunks; the votes' and the
    # searches' calls are JSON, streamed or not).
    backend = MisreportingBackend("zero")
    seen = await spend(backend, strategy, 240, stream=stream)
    assert_counted(seen, 240)
    assert seen["router"]["usage_estimated"] is True


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_reply_cut_by_its_cap_with_no_text_and_a_usage_of_zero_costs_its_cap(
        strategy, stream):
    # A reasoning model that thinks out of sight until its cap and says it spent nothing:
    # believed, the ledger kept granting, and search spent 464 tokens of a 240 budget.
    backend = MisreportingBackend("zero", hidden=True)
    seen = await spend(backend, strategy, 240, stream=stream)
    assert_counted(seen, 240)


@pytest.mark.parametrize("usage", ["unfolded", "unfolded_no_total"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_reasoning_tokens_reported_apart_from_completion_tokens_are_counted(
        strategy, stream, usage):
    # 20 words of reasoning_content and 6 of answer: 27 tokens. Reported as
    # completion_tokens 7 and reasoning_tokens 20 (total_tokens 32 with a prompt of 5),
    # every count said 7.
    backend = MisreportingBackend(usage, reasoning=20)
    seen = await spend(backend, strategy, 240, stream=stream)
    assert_counted(seen, 240)
    assert seen["usage"]["completion_tokens_details"]["reasoning_tokens"] >= 20


def test_a_forwarded_replys_unfolded_reasoning_is_counted():
    # CLIProxyAPI issue #5733: Gemini's thoughts as reasoning_tokens, completion_tokens 0.
    tail = json.dumps({"usage": {"prompt_tokens": 21, "completion_tokens": 0,
                                 "total_tokens": 81,
                                 "completion_tokens_details": {"reasoning_tokens": 60}}})
    assert read_usage(tail.encode()) == (21, 60)
    responses = json.dumps({"usage": {"input_tokens": 10, "output_tokens": 4,
                                      "output_tokens_details": {"reasoning_tokens": 30}}})
    assert read_usage(responses.encode()) == (10, 34)
    folded = json.dumps({"usage": {"input_tokens": 10, "output_tokens": 34, "total_tokens": 44,
                                   "output_tokens_details": {"reasoning_tokens": 30}}})
    assert read_usage(folded.encode()) == (10, 34)


@pytest.mark.parametrize("strategy", ["direct", "sequential"])
async def test_a_stream_broken_after_running_usage_totals_is_charged_its_grant(strategy):
    # vLLM's continuous usage stats put a running total on every chunk. A stream that breaks
    # off after three of them was charged those 3 tokens, though the backend may have gone on
    # generating what never reached the gateway (a stream broken without usage is charged its
    # grant for that reason): a running total is what was sent, not what was spent.
    from tests.fakes import ScriptedStream, scripted_transport, sse_body

    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"content": f"w{k} "},
                                    "finish_reason": None}],
               "usage": {"prompt_tokens": 5, "completion_tokens": k, "total_tokens": 5 + k}}
              for k in (1, 2, 3)]

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(*chunks),
                                                    httpx.ReadError("connection reset")))

    labels = {"strategy": strategy, "policy": "none", "arm": "none", "model": "fake-model"}
    before = metric("ttc_tokens_total", kind="completion", **labels)
    app = create_app(make_settings(), transport=scripted_transport(backend))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        reply = await client.post(CHAT, json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Go on."}],
            "max_tokens": 50, "stream": True, "router": {"strategy": strategy}})
        row = await app.state.gateway.request_log.get(reply.headers["x-ttc-decision-id"])
    # The call's grant: max_tokens, less the chain's reserve for a forced answer (12 of 50).
    grant = {"direct": 50, "sequential": 38}[strategy]
    assert '"stream_broken"' in reply.text
    assert metric("ttc_tokens_total", kind="completion", **labels) - before == grant
    assert row.completion_tokens == grant and row.status == "502"
