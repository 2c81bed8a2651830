"""The official ``openai`` client against the gateway in process, in front of the simulated
reasoner (SIMULATION, ``service.sim``) in process: what a client developer reads off JSON
replies and streams, for every strategy, is the same in both."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from router_models.simulation import World
from router_models.tasks.registry import TaskRegistry
from service.app import create_app
from service.sim import FINGERPRINT, SimConfig, create_sim_app
from tests.conftest import make_settings
from tests.fakes import FakeBackend, ScriptedStream, scripted_transport, sse_body

STRATEGIES = ("direct", "parallel_vote", "sequential", "search")
QUESTION = [{"role": "user", "content": "[[sim family=independent_mc difficulty=0.1 answer=B]] "
                                        "Which option is right? A, B, C or D."}]


@pytest.fixture
async def client() -> Any:
    sim = create_sim_app(SimConfig(World.load(), TaskRegistry([]), latency_per_token_s=0,
                                   ttft_s=0))
    app = create_app(make_settings(models=None), transport=httpx.ASGITransport(app=sim))
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=http, max_retries=0)
        yield sdk
        await sdk.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_chunk_of_a_stream_carries_the_backends_system_fingerprint(client, strategy):
    router = {"router": {"strategy": strategy, "budget_tokens": 2048}}
    reply = await client.chat.completions.create(model="auto", messages=QUESTION,
                                                 max_tokens=400, extra_body=router)
    assert reply.system_fingerprint == FINGERPRINT
    stream = await client.chat.completions.create(
        model="auto", messages=QUESTION, max_tokens=400, extra_body=router, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks and {chunk.system_fingerprint for chunk in chunks} == {FINGERPRINT}


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_stream_keeps_the_logprobs_its_json_reply_has(client, strategy):
    router = {"router": {"strategy": strategy, "budget_tokens": 2048}}
    reply = await client.chat.completions.create(model="auto", messages=QUESTION,
                                                 max_tokens=400, logprobs=True,
                                                 extra_body=router)
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content
    stream = await client.chat.completions.create(
        model="auto", messages=QUESTION, max_tokens=400, logprobs=True, extra_body=router,
        stream=True)
    streamed = [choice.logprobs.content for chunk in [c async for c in stream]
                for choice in chunk.choices if choice.logprobs is not None
                and choice.logprobs.content]
    assert streamed, "the streamed answer dropped the chosen sample's logprobs"


BATCHES = [["Q: 1+1?", "Q: 2+2?"], [[16, 10, 16], [17, 10, 17]], [1, 2, 3]]


@pytest.mark.parametrize("strategy", ["parallel_vote", "sequential", "search"])
@pytest.mark.parametrize("prompt", BATCHES)
async def test_a_prompt_list_with_a_strategy_that_reads_one_answer_is_a_clear_400(
        sdk, strategy, prompt):
    client, backend = sdk
    with pytest.raises(openai.BadRequestError) as error:
        await client.completions.create(model="auto", prompt=prompt, max_tokens=256,
                                        extra_body={"router": {"strategy": strategy}})
    assert error.value.body["param"] == "prompt"
    assert "direct" in error.value.body["message"]
    assert backend.requests == []


@pytest.mark.parametrize("prompt", BATCHES)
async def test_auto_sends_a_prompt_list_through_unchanged(sdk, prompt):
    client, backend = sdk
    reply = await client.completions.create(model="auto", prompt=prompt, max_tokens=256)
    assert reply.model_extra["router"]["strategy"] == "direct"
    assert [body["prompt"] for body in backend.requests] == [prompt]


def _detailed_reply(request: httpx.Request) -> httpx.Response:
    """One choice whose usage breaks its tokens down, as OpenAI's reasoning models report:
    12 completion tokens of which 5 reasoning, a prompt of 7 of which 2 cached."""
    body = json.loads(request.content)
    usage = {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19,
             "completion_tokens_details": {"reasoning_tokens": 5},
             "prompt_tokens_details": {"cached_tokens": 2}}
    base = {"id": "chatcmpl-d", "created": 1, "model": body["model"]}
    if body.get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(
                                  {**base, "object": "chat.completion.chunk", "choices": [
                                      {"index": 0, "delta": {"role": "assistant",
                                                             "content": "The answer is B."},
                                       "finish_reason": "stop"}]},
                                  {**base, "object": "chat.completion.chunk", "choices": [],
                                   "usage": usage}, "data: [DONE]\n\n")))
    return httpx.Response(200, json={**base, "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "The answer is B."},
         "finish_reason": "stop"}], "usage": usage})


@pytest.mark.parametrize(("router", "n", "calls"), [
    ({"strategy": "direct"}, 3, 3),                       # n fanned out as 3 calls
    ({"strategy": "parallel_vote", "budget_tokens": 600}, 1, 3)])  # a settled vote of 3
@pytest.mark.parametrize("stream", [False, True])
async def test_usage_details_are_summed_over_every_call(router, n, calls, stream):
    app = create_app(make_settings(supports_n=False, vote_width=3),
                     transport=scripted_transport(_detailed_reply))
    async with app.router.lifespan_context(app):
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=httpx.AsyncClient(
                                     transport=httpx.ASGITransport(app=app)), max_retries=0)
        kwargs: dict[str, Any] = {"model": "auto", "messages": QUESTION, "n": n,
                                  "max_tokens": 200, "extra_body": {"router": router}}
        if stream:
            chunks = [c async for c in await sdk.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True})]
            usage, info = chunks[-1].usage, chunks[-1].model_extra["router"]
        else:
            reply = await sdk.chat.completions.create(**kwargs)
            usage, info = reply.usage, reply.model_extra["router"]
        await sdk.close()
    calls = info["upstream_calls"] if router["strategy"] == "parallel_vote" else calls
    assert usage.completion_tokens == 12 * calls and usage.prompt_tokens == 7 * calls
    assert usage.completion_tokens_details.reasoning_tokens == 5 * calls
    assert usage.prompt_tokens_details.cached_tokens == 2 * calls


async def test_usage_details_are_left_out_when_a_call_had_none():
    replies = iter([httpx.Response(500, json={"error": {"message": "busy"}})])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(replies, None) or _detailed_reply(request)

    app = create_app(make_settings(), transport=scripted_transport(flaky))
    async with app.router.lifespan_context(app):
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=httpx.AsyncClient(
                                     transport=httpx.ASGITransport(app=app)), max_retries=0)
        reply = await sdk.chat.completions.create(
            model="auto", messages=QUESTION, max_tokens=50,
            extra_body={"router": {"strategy": "direct"}})
        await sdk.close()
    # the failed attempt is charged its grant of 50, which has no breakdown
    assert reply.model_extra["router"]["retries"] == 1
    assert reply.usage.completion_tokens == 12 + 50
    assert reply.usage.completion_tokens_details is None
    assert reply.usage.prompt_tokens_details is None


def _cut_json(request: httpx.Request) -> httpx.Response:
    """A JSON answer cut by its cap (finish_reason length), with no answer stated yet."""
    body = json.loads(request.content)
    usage = {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    base = {"id": "chatcmpl-j", "created": 1, "model": body["model"]}
    text = '{"reasoning": "first'
    if body.get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(
                                  {**base, "object": "chat.completion.chunk", "choices": [
                                      {"index": 0, "delta": {"role": "assistant",
                                                             "content": text},
                                       "finish_reason": "length"}]},
                                  {**base, "object": "chat.completion.chunk", "choices": [],
                                   "usage": usage}, "data: [DONE]\n\n")))
    return httpx.Response(200, json={**base, "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text},
         "finish_reason": "length"}], "usage": usage})


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_cut_structured_chain_is_not_continued_in_prose(response_format, stream):
    calls: list[dict[str, Any]] = []

    def backend(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return _cut_json(request)

    app = create_app(make_settings(), transport=scripted_transport(backend))
    async with app.router.lifespan_context(app):
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=httpx.AsyncClient(
                                     transport=httpx.ASGITransport(app=app)), max_retries=0)
        kwargs: dict[str, Any] = {"model": "auto", "messages": QUESTION,
                                  "response_format": response_format,
                                  "extra_body": {"router": {"strategy": "sequential",
                                                            "budget_tokens": 400}}}
        if stream:
            chunks = [c async for c in await sdk.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True})]
            text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
            finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
            info = chunks[-1].model_extra["router"]
        else:
            reply = await sdk.chat.completions.create(**kwargs)
            text, finish = reply.choices[0].message.content, [reply.choices[0].finish_reason]
            info = reply.model_extra["router"]
        await sdk.close()
    # a prose answer appended to JSON would be neither, and would end in "stop"
    assert len(calls) == 1 and info["continued"] is False
    assert calls[0]["max_tokens"] == 400  # no reserve held back for a continuation
    assert text == '{"reasoning": "first' and finish == ["length"]


async def test_a_fanned_out_stream_reads_as_one_completion():
    """n = 3 from a backend that ignores n: three upstream streams with their own ids and
    times, merged into one stream whose chunks all carry one id and one created, as
    OpenAI's do (clients group a stream's chunks by id)."""
    made: list[str] = []

    def backend(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        made.append(f"chatcmpl-{len(made)}")
        base = {"id": made[-1], "created": len(made), "model": body["model"],
                "object": "chat.completion.chunk"}
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=ScriptedStream(sse_body(
                                  {**base, "choices": [{"index": 0, "delta": {
                                      "role": "assistant", "content": "B"},
                                      "finish_reason": "stop"}]},
                                  {**base, "choices": [], "usage": {
                                      "prompt_tokens": 7, "completion_tokens": 1,
                                      "total_tokens": 8}}, "data: [DONE]\n\n")))

    app = create_app(make_settings(supports_n=False), transport=scripted_transport(backend))
    async with app.router.lifespan_context(app):
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=httpx.AsyncClient(
                                     transport=httpx.ASGITransport(app=app)), max_retries=0)
        chunks = [c async for c in await sdk.chat.completions.create(
            model="auto", messages=QUESTION, n=3, max_tokens=5, stream=True,
            stream_options={"include_usage": True},
            extra_body={"router": {"strategy": "direct"}})]
        await sdk.close()
    assert len(made) == 3
    assert sorted({ch.index for c in chunks for ch in c.choices}) == [0, 1, 2]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("default_strategy", ["parallel_vote", "sequential"])
async def test_auto_answers_n_choices_and_prompt_lists_whatever_the_default_strategy(
        default_strategy):
    """``model: "auto"`` with no strategy named is never refused for what OpenAI accepts:
    n > 1 and a completions prompt list run ``direct`` when the configured default
    strategy cannot return them."""
    backend = FakeBackend(models=("fake-model",))
    app = create_app(make_settings(default_strategy=default_strategy),
                     transport=backend.transport())
    async with app.router.lifespan_context(app):
        sdk = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                 http_client=httpx.AsyncClient(
                                     transport=httpx.ASGITransport(app=app)), max_retries=0)
        chat = await sdk.chat.completions.create(model="auto", messages=QUESTION, n=3,
                                                 max_tokens=64)
        batch = await sdk.completions.create(model="auto", prompt=["Q: 1+1?", "Q: 2+2?"],
                                             max_tokens=64)
        with pytest.raises(openai.BadRequestError):  # a strategy named is still checked
            await sdk.chat.completions.create(
                model="auto", messages=QUESTION, n=3, max_tokens=64,
                extra_body={"router": {"strategy": default_strategy}})
        await sdk.close()
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert chat.model_extra["router"]["strategy"] == "direct"
    assert chat.usage.completion_tokens == 3 * 4  # "The answer is 4." is 4 tokens a choice
    assert batch.model_extra["router"]["strategy"] == "direct"
