"""Both simulated backends (``ttc-router sim`` and ``sim --bank``) answer a route or method
they do not serve in OpenAI's error envelope, as every other error, not Starlette's plain
text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from router_models.bank import Bank
from router_models.simulation import World
from router_models.tasks.registry import TaskRegistry
from service.bank_replay import ReplayConfig, create_replay_app
from service.sim import SimConfig, create_sim_app
from tests.fakes import completion_choices

FIXTURE = Path(__file__).parent / "bank_fixture"


def apps() -> list[Starlette]:
    sim = create_sim_app(SimConfig(World.load(), TaskRegistry([]), latency_per_token_s=0,
                                   ttft_s=0))
    return [sim, create_replay_app(ReplayConfig(bank=Bank.load(FIXTURE)))]


@pytest.mark.parametrize("app", apps(), ids=["sim", "sim --bank"])
@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/embeddings", 404), ("GET", "/v1/chat/completions", 405)])
async def test_unknown_routes_and_methods_answer_in_openai_envelope(
        app: Starlette, method: str, path: str, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim.test") as client:
        reply = await client.request(method, path, json={})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert path in error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("app", apps(), ids=["sim", "sim --bank"])
@pytest.mark.parametrize("stream", ["yes", 1, "false"])
async def test_stream_must_be_a_boolean(app: Starlette, stream: object) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim.test") as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "stream" and "boolean" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_plain_sim_ends_a_choice_at_its_stop_string(stream: bool) -> None:
    # OpenAI's `stop`: the text ends before the stop string, finish_reason "stop", and usage
    # counts the words generated through the stop (as llama.cpp and vLLM count tokens).
    sim = apps()[0]
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "seed": 3, "max_tokens": 400, "n": 2}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim),
                                 base_url="http://sim.test") as client:
        free = (await client.post("/v1/chat/completions", json=body)).json()
        texts = [c["message"]["content"] for c in free["choices"]]
        assert all("The answer is" in t for t in texts)
        reply = await client.post("/v1/chat/completions", json={
            **body, "stop": ["The answer"], "stream": stream,
            "stream_options": {"include_usage": True}} if stream else {
            **body, "stop": "The answer"})
    if stream:
        chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        got = ["".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"] and c["choices"][0]["index"] == i) for i in range(2)]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks
                    if c["choices"] and c["choices"][0]["finish_reason"]]
        usage = chunks[-1]["usage"]
    else:
        got = [c["message"]["content"] for c in reply.json()["choices"]]
        finishes = [c["finish_reason"] for c in reply.json()["choices"]]
        usage = reply.json()["usage"]
    assert got == [t[:t.index("The answer")] for t in texts]
    assert finishes == ["stop", "stop"]
    # Each choice generated its words before the stop plus the stop's two.
    expected = sum(len(t[:t.index("The answer")].split()) + 2 for t in texts)
    assert usage["completion_tokens"] == expected


@pytest.mark.parametrize("temperature", [1e-40, 5e-324])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_the_plain_sim_answers_a_temperature_just_above_zero(path: str,
                                                                  temperature: float) -> None:
    # Found fuzzing the gateway in front of the sim: every answer's probability raised to the
    # power 1/temperature underflowed to 0.0, and the sim divided by their sum (a 500, which
    # the gateway passed on as a 502). A temperature this small is as good as greedy.
    sim = apps()[0]
    question = "What is 2 + 2?"
    body = ({"messages": [{"role": "user", "content": question}]} if "chat" in path
            else {"prompt": question})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim),
                                 base_url="http://sim.test") as client:
        tiny = await client.post(path, json={"model": "m", "seed": 1, "max_tokens": 400,
                                             "temperature": temperature, **body})
        greedy = await client.post(path, json={"model": "m", "seed": 1, "max_tokens": 400,
                                               "temperature": 0, **body})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"] == greedy.json()["choices"]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_plain_sim_answers_each_prompt_of_a_batch(stream: bool) -> None:
    # OpenAI's completions take a list of prompts and answer each, prompt i's n choices at
    # i * n .. i * n + n - 1. The sim joined the list into one prompt and answered once: two
    # prompts through the gateway came back as one choice.
    sim = apps()[0]
    prompts = [f"Q{answer} [[sim family=independent_mc difficulty=0 answer={answer}]]"
               for answer in (11, 22)]
    body = {"model": "m", "max_tokens": 400, "temperature": 0, "n": 2, "seed": 7}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim),
                                 base_url="http://sim.test") as client:
        alone = [(await client.post("/v1/completions", json={**body, "prompt": p})).json()
                 for p in prompts]
        reply = await client.post("/v1/completions", json={
            **body, "prompt": prompts, "stream": stream,
            "stream_options": {"include_usage": True}})
    assert reply.status_code == 200, reply.text
    texts, usage = completion_choices(reply, stream, 4)
    assert texts == [c["text"] for one in alone for c in one["choices"]]
    assert [t.endswith(f"The answer is {a}.") for t, a in zip(texts, (11, 11, 22, 22),
                                                              strict=True)] == [True] * 4
    for kind in ("prompt_tokens", "completion_tokens"):
        assert usage[kind] == sum(one["usage"][kind] for one in alone)


def _legacy_logprobs(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-null ``logprobs`` of completions choices, each checked to be in the legacy
    completions shape OpenAI's ``/v1/completions`` sends (``tokens``, ``token_logprobs``,
    ``top_logprobs``, ``text_offset``; the chat shape's ``content`` is not it)."""
    found = [c["logprobs"] for c in choices if c.get("logprobs") is not None]
    for logprobs in found:
        assert "content" not in logprobs, logprobs
        assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        tokens = logprobs["tokens"]
        assert tokens and all(isinstance(t, str) for t in tokens)
        assert [isinstance(v, float) for v in logprobs["token_logprobs"]] == [True] * len(tokens)
        assert len(logprobs["top_logprobs"]) == len(logprobs["text_offset"]) == len(tokens)
        assert all(isinstance(top, dict) for top in logprobs["top_logprobs"])
    return found


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("bank", [False, True], ids=["sim", "sim --bank"])
async def test_completions_logprobs_come_in_the_completions_shape(bank: bool,
                                                                  stream: bool) -> None:
    # Both sims sent /v1/completions logprobs in the chat shape ({"content": [...]}), the
    # bank's stream too: a client reading choices[0].logprobs.token_logprobs found nothing.
    app = apps()[bank]
    prompt = (Bank.load(FIXTURE).runs[1].prompt if bank
              else "[[sim family=independent_mc difficulty=0 answer=B]] A, B, C or D?")
    body = {"model": "m", "prompt": prompt, "max_tokens": 400, "temperature": 0,
            "logprobs": 2, "stream": stream}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim.test") as client:
        reply = await client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    if stream:
        events = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        choices = [c for event in events for c in event["choices"]]
    else:
        choices = reply.json()["choices"]
    found = _legacy_logprobs(choices)
    assert found, "logprobs were asked for"
    text = "".join(c["text"] for c in choices)
    for logprobs in found:
        assert "".join(logprobs["tokens"]) in text
