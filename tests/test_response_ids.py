"""The response ``id`` is the gateway's own: unique per answered request, the same on every
chunk of a stream and in its final usage chunk, stored in the request log, so that feedback by
response id reaches exactly that decision, whatever ids the backend sends.

The backend here (an ``httpx.MockTransport``) answers every call with the same id, as Ollama
often does (it draws ids from 999 values) and as simple proxies and replays may."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import openai
import pytest

from service.app import create_app
from service.keys import open_key_store
from service.store import Record
from tests.conftest import gateway_client, make_settings
from tests.fakes import ScriptedStream

UPSTREAM_CHAT_ID = "chatcmpl-7"
UPSTREAM_TEXT_ID = "cmpl-7"
ANSWER = "The answer is 4."
STRATEGIES = ("direct", "parallel_vote", "sequential", "search", "auto")


def same_id_backend() -> httpx.MockTransport:
    """An OpenAI-compatible backend whose every reply and chunk carries one fixed id; one word
    is one token, ``max_tokens`` cuts the answer, ``n`` is honoured."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        body = json.loads(request.content)
        chat = request.url.path.endswith("/chat/completions")
        words = ANSWER.split(" ")
        finish = "stop"
        cap = body.get("max_tokens")
        if cap is not None and len(words) > cap:
            words, finish = words[:cap], "length"
        text = " ".join(words)
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": 5, "completion_tokens": len(words) * n,
                 "total_tokens": 5 + len(words) * n}
        base = {"id": UPSTREAM_CHAT_ID if chat else UPSTREAM_TEXT_ID, "created": 1,
                "model": body["model"]}
        if body.get("stream"):
            base["object"] = "chat.completion.chunk" if chat else "text_completion"
            events = []
            for i in range(n):
                piece = {"index": i, "delta": {"role": "assistant", "content": text}} if chat \
                    else {"index": i, "text": text}
                events.append({**base, "choices": [{**piece, "finish_reason": None}]})
                end = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
                events.append({**base, "choices": [{**end, "finish_reason": finish}]})
            events.append({**base, "choices": [], "usage": usage})
            chunks = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
            return httpx.Response(200, stream=ScriptedStream([*chunks, b"data: [DONE]\n\n"]))
        base["object"] = "chat.completion" if chat else "text_completion"
        choices = [({"index": i, "message": {"role": "assistant", "content": text}} if chat
                    else {"index": i, "text": text}) | {"finish_reason": finish}
                   for i in range(n)]
        return httpx.Response(200, json={**base, "choices": choices, "usage": usage})

    return httpx.MockTransport(handle)


def ask(strategy: str, endpoint: str = "chat", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": 64, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if strategy == "auto":
        body["model"] = "auto"
    else:
        body["model"] = "fake-model"
        body["router"] = {"strategy": strategy, "budget_tokens": 256}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "What is 2+2?"}]
    else:
        body["prompt"] = "Q: What is 2+2?\nA:"
    return body


async def answer(client: httpx.AsyncClient, body: dict[str, Any],
                 endpoint: str = "chat") -> tuple[str, str]:
    """(response id, decision id) of one answered request; for a stream, after checking that
    every chunk carries the one id."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    if not body.get("stream"):
        reply = await client.post(path, json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["router"]["decision_id"] == reply.headers["x-ttc-decision-id"]
        return reply.json()["id"], reply.headers["x-ttc-decision-id"]
    async with client.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200
        raw = (await reply.aread()).decode()
    payloads = [line.removeprefix("data: ") for line in raw.splitlines()
                if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks and all("error" not in c for c in chunks), raw
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, ids  # one completion, one id on all its chunks, usage chunk included
    assert chunks[-1]["router"]["decision_id"] == reply.headers["x-ttc-decision-id"]
    return ids.pop(), reply.headers["x-ttc-decision-id"]


async def feedback_reaches(client: httpx.AsyncClient, response_id: str) -> str:
    """The decision id that feedback by ``response_id`` was recorded on."""
    reply = await client.post("/v1/feedback", json={"id": response_id, "correct": True})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["decision_id"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_feedback_by_response_id_reaches_its_own_decision_when_the_backend_repeats_ids(
        strategy, stream):
    async with gateway_client(same_id_backend()) as client:
        first = await answer(client, ask(strategy, stream=stream))
        second = await answer(client, ask(strategy, stream=stream))
        for response_id, _ in (first, second):
            assert response_id.startswith("chatcmpl-") and response_id != UPSTREAM_CHAT_ID
        assert first[0] != second[0]
        assert await feedback_reaches(client, first[0]) == first[1]
        assert await feedback_reaches(client, second[0]) == second[1]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("strategy", ["direct", "parallel_vote", "sequential"])
async def test_text_completions_get_their_own_cmpl_ids(strategy, stream):
    async with gateway_client(same_id_backend()) as client:
        first = await answer(client, ask(strategy, "completions", stream), "completions")
        second = await answer(client, ask(strategy, "completions", stream), "completions")
        assert first[0].startswith("cmpl-") and first[0] != UPSTREAM_TEXT_ID
        assert first[0] != second[0]
        assert await feedback_reaches(client, second[0]) == second[1]
        assert await feedback_reaches(client, first[0]) == first[1]


async def test_a_fanned_out_n_stream_has_one_id():
    # n choices from a backend that ignores n: n upstream calls, one completion for the client
    async with gateway_client(same_id_backend(), make_settings(supports_n=False)) as client:
        body = {**ask("direct", stream=True), "n": 3}
        response_id, decision_id = await answer(client, body)
        assert await feedback_reaches(client, response_id) == decision_id


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_minted_id_is_in_the_shared_request_log(database_url, stream):
    settings = make_settings(database_url=database_url)
    async with gateway_client(same_id_backend(), settings) as client:
        first = await answer(client, ask("direct", stream=stream))
        second = await answer(client, ask("parallel_vote", stream=stream))
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        assert (await log.get(first[0])).decision_id == first[1]
        assert (await log.get(second[1])).response_id == second[0]
        assert await feedback_reaches(client, first[0]) == first[1]
        assert await feedback_reaches(client, second[0]) == second[1]


async def test_feedback_by_response_id_on_another_replica_reaches_its_decision(database_url):
    # Two gateways sharing one log, both in front of the same repeating backend: each answer's
    # id, posted to the replica that did not answer, finds that answer's decision.
    settings = make_settings(database_url=database_url)
    async with (gateway_client(same_id_backend(), settings) as one,
                gateway_client(same_id_backend(), settings) as two):
        first = await answer(one, ask("parallel_vote"))
        second = await answer(two, ask("direct", stream=True))
        assert first[0] != second[0]
        assert await feedback_reaches(two, first[0]) == first[1]
        assert await feedback_reaches(one, second[0]) == second[1]


def old_row(decision_id: str, response_id: str, time_s: float) -> Record:
    """A row as the gateway wrote it before it minted ids: the backend's id."""
    return Record(decision_id=decision_id, response_id=response_id, time_s=time_s,
                  endpoint="chat", key_name=None, model="fake-model", strategy="direct",
                  policy=None, arm=None, experiment=None, status="200", budget_tokens=64,
                  prompt_tokens=5, completion_tokens=4, estimated=False, upstream_calls=1,
                  samples=1, search_calls=0, duration_s=0.1, wait_s=0.1, stream=False)


async def test_a_row_logged_before_the_change_keeps_its_upstream_id(database_url):
    settings = make_settings(database_url=database_url)
    async with gateway_client(same_id_backend(), settings) as client:
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        await log.backend.write([old_row("dec_" + "0" * 32, UPSTREAM_CHAT_ID, 1_700_000_000.0)])
        # New answers from the same backend carry their own ids, not the old row's.
        await answer(client, ask("direct"))
        await answer(client, ask("direct", stream=True))
        await log.flush()  # the new rows are committed: the latest row is not the old one
        assert await feedback_reaches(client, UPSTREAM_CHAT_ID) == "dec_" + "0" * 32


async def test_an_upstream_id_old_rows_share_is_a_409_and_their_decision_ids_still_work(
        database_url):
    settings = make_settings(database_url=database_url)
    older, newer = "dec_" + "1" * 32, "dec_" + "2" * 32
    async with gateway_client(same_id_backend(), settings) as client:
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        await log.backend.write([old_row(older, UPSTREAM_CHAT_ID, 1_700_000_000.0),
                                 old_row(newer, UPSTREAM_CHAT_ID, 1_700_000_001.0)])
        refused = await client.post("/v1/feedback", json={"id": UPSTREAM_CHAT_ID,
                                                          "correct": True})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["param"], error["code"]) == \
            ("invalid_request_error", "id", "ambiguous_id")
        assert "decision id" in error["message"]
        assert await feedback_reaches(client, older) == older
        assert [(await log.get(d)).feedback_count for d in (older, newer)] == [1, 0]


async def test_the_openai_client_reads_the_minted_id():
    app = create_app(make_settings(), transport=same_id_backend())
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=http, max_retries=0)
        messages: Any = [{"role": "user", "content": "What is 2+2?"}]
        reply = await sdk.chat.completions.with_raw_response.create(
            model="fake-model", messages=messages, max_tokens=16)
        completion = reply.parse()
        stream = await sdk.chat.completions.create(
            model="fake-model", messages=messages, max_tokens=16, stream=True,
            stream_options={"include_usage": True})
        chunk_ids = {chunk.id async for chunk in stream}
        assert completion.id.startswith("chatcmpl-") and completion.id != UPSTREAM_CHAT_ID
        assert len(chunk_ids) == 1
        streamed_id = chunk_ids.pop()
        assert streamed_id not in (completion.id, UPSTREAM_CHAT_ID)
        fed = await http.post("http://gateway.test/v1/feedback",
                              json={"id": completion.id, "correct": True})
        assert fed.json()["decision_id"] == reply.headers["x-ttc-decision-id"]
        await sdk.close()


async def test_an_upstream_id_shared_with_another_keys_row_names_the_keys_own_row(
        database_url):
    # The other key's row is invisible to this key: no 409 that would tell it the id exists.
    settings = make_settings(database_url=database_url)
    alice = open_key_store(settings.data_dir, database_url).create("alice")
    mine, theirs = "dec_" + "3" * 32, "dec_" + "4" * 32
    async with gateway_client(same_id_backend(), settings) as client:
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        await log.backend.write([
            dataclasses.replace(old_row(mine, UPSTREAM_CHAT_ID, 1_700_000_000.0),
                                key_name="alice"),
            dataclasses.replace(old_row(theirs, UPSTREAM_CHAT_ID, 1_700_000_001.0),
                                key_name="bob")])
        answer = await client.post("/v1/feedback", json={"id": UPSTREAM_CHAT_ID, "correct": True},
                                   headers={"authorization": f"Bearer {alice}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["decision_id"] == mine
        assert [(await log.get(d)).feedback_count for d in (mine, theirs)] == [1, 0]
