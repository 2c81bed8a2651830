"""parallel_vote and sequential against scripted backends: votes, early stopping, failures,
the forced final answer, streaming, and the budget."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import gateway_client, make_settings
from tests.scripted import ScriptedLLM

QUESTION = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 6*7?"}]}


def vote(budget: int = 512, **extra):
    return {**QUESTION, "router": {"strategy": "parallel_vote", "budget_tokens": budget}, **extra}


def answers(*texts: str):
    return lambda i, body: texts[i % len(texts)]


async def post(llm: ScriptedLLM, body: dict, **settings):
    async with gateway_client(llm.transport(), make_settings(**settings)) as client:
        return await client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("texts, expected", [
    (("The answer is 1,234.", "\\boxed{1234}", "so 1234.0", "The answer is 99"), "1234"),
    (("Answer: (B)", "The answer is b.", "I pick C", "The answer is C"), "B"),
    (("1/2", "The answer is 0.5", "the answer is 3/4", "0.50"), "0.5"),
    (("Yes.", "The answer is yes", "No", "The answer is true"), "yes"),
])
async def test_vote_picks_the_plurality_under_each_normalisation(texts, expected):
    llm = ScriptedLLM(answers(*texts))
    reply = await post(llm, vote(), vote_width=4)
    router = reply.json()["router"]
    assert router["strategy"] == "parallel_vote" and router["winner"] == expected
    assert router["votes"][expected] >= 2
    assert reply.headers["x-ttc-strategy"] == "parallel_vote"


async def test_a_vote_on_structured_output_votes_on_the_whole_json_value():
    # With response_format json_object the answer is the JSON value: its last line is "}" in
    # every pretty-printed sample, which settled every vote on "}" after two samples.
    llm = ScriptedLLM(answers('{\n  "answer": 5\n}', '{\n  "answer": 4\n}',
                              '{"answer": 4}', '{"answer": 4, "note": "cut'), honours_n=False)
    reply = await post(llm, vote(response_format={"type": "json_object"}), vote_width=4,
                       supports_n=False, vote_first_wave=4)
    router = reply.json()["router"]
    assert router["votes"] == {'{"answer":5}': 1, '{"answer":4}': 2}
    assert router["winner"] == '{"answer":4}'
    content = reply.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"answer": 4}


async def test_a_vote_whose_finished_samples_state_no_answer_stops_after_its_first_wave():
    # A code question: every sample ends with a code fence, so none votes, and the vote drew
    # all 8 samples to return the first. Finished samples with no answer cannot be tallied,
    # and more of them cannot settle anything.
    code = "Here it is:\n```python\ndef rev(xs):\n    return xs[::-1]\n```"
    llm = ScriptedLLM(answers(code), honours_n=False)
    reply = await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False)
    router = reply.json()["router"]
    assert router["samples"] == 3 and len(llm.requests) == 3, router
    assert router["early_stop"] is True and router["samples_saved"] == 5
    assert router["votes"] == {} and router["no_answer"] is True
    assert reply.json()["choices"][0]["message"]["content"] == code


async def test_a_vote_whose_first_wave_is_cut_gives_the_rest_to_one_chain():
    # Every sample of the first wave was cut before it stated an answer: more samples of the
    # same depth are mostly cut too, and cast no vote. It drew all 8 (8 x 64 tokens, no
    # answer); the undrawn samples' tokens now buy one chain of 5 x 64 (sequential's caps:
    # 256 and a 64-token reserve). On the outcome bank such chains were right on 75 of 377
    # all-cut first waves at 64 tokens a sample, drawing on on 22 (README, "Strategies").
    reasoning = " ".join(["step"] * 200) + " The answer is 7."
    llm = ScriptedLLM(lambda i, body: reasoning, honours_n=False)
    reply = await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False)
    router = reply.json()["router"]
    assert [b["max_tokens"] for b in llm.requests] == [64, 64, 64, 256], router
    assert router["chain_after_cut"] is True and router["cut_samples"] == 3
    assert router["samples"] == 3 and router["continued"] is False
    assert reply.json()["choices"][0]["message"]["content"] == reasoning
    assert reply.json()["choices"][0]["finish_reason"] == "stop"
    assert router["winner"] == "7"
    usage = reply.json()["usage"]["completion_tokens"]
    assert usage == llm.reported_tokens == 3 * 64 + 204 and usage <= 8 * 64


async def test_a_chain_after_a_cut_wave_that_is_cut_too_forces_its_answer_within_budget():
    # The chain is sequential's: cut before an answer, its reserve buys the forced answer.
    # Samples, chain and answer together spend the budget at most, every token counted.
    llm = ScriptedLLM(lambda i, body: "The answer is 7." if i == 4
                      else " ".join(["step"] * 400), honours_n=False)
    reply = await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False)
    router = reply.json()["router"]
    assert [b["max_tokens"] for b in llm.requests] == [64, 64, 64, 256, 64], router
    assert router["chain_after_cut"] is True and router["continued"] is True
    assert reply.json()["choices"][0]["message"]["content"].endswith("The answer is 7.")
    usage = reply.json()["usage"]["completion_tokens"]
    assert usage == llm.reported_tokens == 3 * 64 + 256 + 4 <= 8 * 64
    assert router["spent_tokens"] == usage


async def test_the_chain_after_a_cut_wave_is_greedy_unless_the_client_chose_sampling():
    # One chain's answer is the reply: decoded greedily (chain_temperature), as every chain
    # the gateway plans; it went out with no temperature, so at the backend's own default.
    reasoning = " ".join(["step"] * 200) + " The answer is 7."
    llm = ScriptedLLM(lambda i, body: reasoning, honours_n=False)
    await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False)
    assert [b["temperature"] for b in llm.requests] == [0.0, 0.7, 0.7, 0.0]
    llm = ScriptedLLM(lambda i, body: reasoning, honours_n=False)
    await post(llm, vote(budget=8 * 64, temperature=0.9), vote_width=8, supports_n=False)
    assert [b["temperature"] for b in llm.requests] == [0.9] * 4


async def test_continued_says_false_when_the_forced_answer_could_not_be_drawn():
    # The chain (call 0) is cut before an answer; its continuation (call 1) fails.
    llm = ScriptedLLM(lambda i, body: " ".join(["step"] * 600), fail={1})
    reply = await post(llm, {**QUESTION, "router": {"strategy": "sequential",
                                                     "budget_tokens": 512}}, max_retries=0)
    router = reply.json()["router"]
    assert len(llm.requests) == 2 and router["continued"] is False, router


async def test_a_chain_after_a_cut_wave_that_fails_leaves_the_vote_as_it_was():
    llm = ScriptedLLM(lambda i, body: " ".join(["step"] * 400), honours_n=False, fail={3})
    reply = await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False,
                       max_retries=0)
    router = reply.json()["router"]
    assert reply.status_code == 200 and len(llm.requests) == 4
    assert router["failed_samples"] == 1 and router["samples"] == 3
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    # the failed call reached the backend: charged its whole grant
    assert router["spent_tokens"] == 3 * 64 + 256 <= 8 * 64


@pytest.mark.parametrize("extra, settings", [
    ({"max_tokens": 64}, {"vote_width": 8}),  # the client's cap holds the chain to 64 too
    ({}, {"vote_width": 3}),  # a vote of 3: one undrawn sample buys a chain of 48
])
async def test_a_cut_wave_keeps_drawing_when_the_rest_buys_no_longer_chain(extra, settings):
    # A chain no longer than twice the samples' depth would be one more cut sample with a
    # forced answer; on the outcome bank drawing on was right more often then.
    llm = ScriptedLLM(lambda i, body: " ".join(["step"] * 400), honours_n=False)
    width = settings["vote_width"]
    reply = await post(llm, vote(budget=width * 64, **extra), supports_n=False, **settings)
    router = reply.json()["router"]
    assert "chain_after_cut" not in router and router["samples"] == width, router
    assert all(b["max_tokens"] == 64 for b in llm.requests)


async def test_a_vote_with_a_stated_answer_in_its_first_wave_keeps_drawing():
    # One cut sample that stated nothing among answering ones is the vote's usual business.
    llm = ScriptedLLM(lambda i, body: " ".join(["step"] * 100) if i == 0
                      else f"The answer is {i % 2 + 6}.", honours_n=False)
    reply = await post(llm, vote(budget=8 * 64), vote_width=8, supports_n=False)
    router = reply.json()["router"]
    assert router["samples"] > 3 and "chain_after_cut" not in router, router
    assert all(b["max_tokens"] == 64 for b in llm.requests)


async def test_a_settled_vote_stops_early_and_says_what_it_saved():
    llm = ScriptedLLM(answers("The answer is 42."), honours_n=False)
    reply = await post(llm, vote(budget=16 * 64), vote_width=16, supports_n=False)
    router = reply.json()["router"]
    assert router["early_stop"] is True
    assert router["samples"] == 3 and router["samples_saved"] == 13
    assert len(llm.requests) == 3
    assert reply.json()["choices"][0]["message"]["content"] == "The answer is 42."


async def test_a_vote_of_three_draws_a_majority_first():
    # Two agreeing samples decide a vote of three: the third is never drawn.
    llm = ScriptedLLM(answers("The answer is 42."), honours_n=False)
    reply = await post(llm, vote(budget=3 * 64), vote_width=3, supports_n=False)
    router = reply.json()["router"]
    assert router["samples"] == 2 and router["samples_saved"] == 1 and router["early_stop"]
    assert len(llm.requests) == 2
    # Two that disagree leave it open: the third is drawn and decides.
    llm = ScriptedLLM(answers("The answer is 1.", "The answer is 2.", "The answer is 1."),
                      honours_n=False)
    reply = await post(llm, vote(budget=3 * 64), vote_width=3, supports_n=False)
    router = reply.json()["router"]
    assert router["samples"] == 3 and router["votes"] == {"1": 2, "2": 1}
    assert router["winner"] == "1"


async def test_a_sample_cut_before_its_answer_casts_no_vote():
    # Three samples cut by their cap mid-reasoning end on the same number; read leniently, they
    # would settle the vote on it at once. A cut sample votes only with an answer it stated
    # ("The answer is", \boxed{}), so the complete samples decide (issue 13: on the outcome
    # bank, graph-connectivity votes of 3 rose from 10% to 28% right).
    rambling = "Let me think about 6 times 7 step by step. " + "We have 5 " * 40
    llm = ScriptedLLM(answers(rambling, rambling, "The answer is 42.", rambling,
                              "The answer is 42."), honours_n=False)
    reply = await post(llm, vote(budget=5 * 64), vote_width=5, supports_n=False)
    router = reply.json()["router"]
    assert router["cut_samples"] == 3 and router["samples"] == 5
    assert router["votes"] == {"42": 2} and router["winner"] == "42"
    assert reply.json()["choices"][0]["message"]["content"] == "The answer is 42."
    # A cut sample that stated its answer before the cap still votes.
    stated = "The answer is 42. Let me check: " + "six sevens are 42 " * 40
    llm = ScriptedLLM(answers(stated), honours_n=False)
    reply = await post(llm, vote(budget=3 * 64), vote_width=3, supports_n=False)
    assert reply.json()["router"]["votes"] == {"42": 2}


async def test_a_split_vote_does_not_stop_early():
    llm = ScriptedLLM(answers("The answer is 1.", "The answer is 2."))
    reply = await post(llm, vote(budget=8 * 64), vote_width=8)
    router = reply.json()["router"]
    assert router["early_stop"] is False and router["samples"] == 8
    assert router["votes"] == {"1": 4, "2": 4}


@pytest.mark.parametrize("honours_n", [True, False])
async def test_n_and_fan_out_give_the_same_vote(honours_n):
    llm = ScriptedLLM(answers("The answer is 7.", "The answer is 7.", "The answer is 8."),
                      honours_n=honours_n)
    reply = await post(llm, vote(budget=6 * 64), vote_width=6, vote_first_wave=6,
                       vote_majority_first=False)
    router = reply.json()["router"]
    assert router["votes"] == {"7": 4, "8": 2} and router["winner"] == "7"
    assert reply.json()["usage"]["completion_tokens"] == llm.reported_tokens
    assert all(body["max_tokens"] == 64 for body in llm.requests)


async def test_failed_samples_are_dropped_and_reported():
    llm = ScriptedLLM(answers("The answer is 5."), honours_n=False, fail={1, 2})
    reply = await post(llm, vote(budget=4 * 64), vote_width=4, supports_n=False,
                       max_retries=0)
    assert reply.status_code == 200
    assert reply.json()["router"]["failed_samples"] == 2
    assert reply.json()["router"]["votes"] == {"5": 2}


async def test_all_samples_failing_is_a_502():
    llm = ScriptedLLM(answers("x"), honours_n=False, fail=set(range(100)))
    reply = await post(llm, vote(budget=4 * 64), vote_width=4, supports_n=False,
                       max_retries=0)
    assert reply.status_code == 502
    assert reply.json()["error"]["type"] == "upstream_error"


async def test_vote_temperature_defaults_but_client_fields_reach_every_sample():
    llm = ScriptedLLM(answers("The answer is 1."))
    await post(llm, vote(stop=["\n\n"], seed=3, response_format={"type": "text"}),
               vote_width=2, vote_greedy_first=False)
    assert all(b["temperature"] == 0.7 and b["stop"] == ["\n\n"] and
               b["response_format"] == {"type": "text"} for b in llm.requests)
    llm = ScriptedLLM(answers("The answer is 1."))
    await post(llm, vote(temperature=1.1), vote_width=2)
    assert all(b["temperature"] == 1.1 for b in llm.requests)


async def test_a_vote_draws_its_first_sample_greedily_when_the_client_chose_no_sampling():
    llm = ScriptedLLM(answers("The answer is 1."))
    reply = await post(llm, vote(stop=["\n\n"]), vote_width=3, vote_first_wave=3,
                       vote_majority_first=False)
    assert reply.json()["router"]["greedy_first"] is True
    sent = sorted((b["temperature"], b.get("n", 1)) for b in llm.requests)
    assert sent == [(0.0, 1), (0.7, 2)]
    assert all(b["stop"] == ["\n\n"] for b in llm.requests)
    # A client that chose how to sample (temperature or top_p) gets only what it chose.
    for chosen in ({"temperature": 0.9}, {"top_p": 0.5}):
        llm = ScriptedLLM(answers("The answer is 1."))
        reply = await post(llm, vote(**chosen), vote_width=3, vote_first_wave=3,
                           vote_majority_first=False)
        assert reply.json()["router"]["greedy_first"] is False
        assert all(b.get("temperature") != 0.0 for b in llm.requests)


async def test_a_tie_goes_to_the_greedy_sample():
    # The greedy call says 7; the two sampled ones say 8 and 9: a three-way tie.
    def script(i, body):
        if body["temperature"] == 0.0:
            return "The answer is 7."
        return "The answer is 8." if i % 2 else "The answer is 9."

    llm = ScriptedLLM(script, honours_n=False)
    reply = await post(llm, vote(), vote_width=3, vote_first_wave=3,
                       vote_majority_first=False, supports_n=False)
    router = reply.json()["router"]
    assert set(router["votes"]) == {"7", "8", "9"} and router["winner"] == "7"
    # Two sampled answers that agree outvote it.
    llm = ScriptedLLM(lambda i, body: "The answer is 7." if body["temperature"] == 0.0
                      else "The answer is 8.")
    reply = await post(llm, vote(), vote_width=3, vote_first_wave=3, vote_majority_first=False)
    assert reply.json()["router"]["winner"] == "8"


@pytest.mark.parametrize("supports_n", [True, False])
async def test_a_greedy_first_wave_short_of_budget_grants_the_greedy_sample_first(supports_n):
    # budget_total_tokens leaves room for about two samples of 64 after the prompts: the
    # greedy sample, which ties go to, is granted its whole depth first, and the sampled ones
    # share what is left. The sampled call (n=2) used to reserve first and leave the greedy
    # one 12 tokens, cut before its answer.
    llm = ScriptedLLM(lambda i, body: "The answer is 7." if body["temperature"] == 0.0
                      else " ".join(["step"] * 100))
    body = {**QUESTION, "router": {"strategy": "parallel_vote", "budget_tokens": 3 * 64,
                                   "budget_total_tokens": 150}}
    reply = await post(llm, body, vote_width=3, vote_first_wave=3, vote_majority_first=False,
                       supports_n=supports_n)
    assert reply.status_code == 200, reply.text
    greedy = [b for b in llm.requests if b["temperature"] == 0.0]
    assert [b["max_tokens"] for b in greedy] == [64]
    assert any(b["temperature"] == 0.7 for b in llm.requests)
    assert reply.json()["router"]["winner"] == "7"
    assert reply.json()["usage"]["total_tokens"] <= 150


@pytest.mark.parametrize("supports_n", [True, False])
async def test_a_greedy_first_wave_keeps_to_fanout_concurrency(supports_n):
    # fanout_concurrency is the most calls one vote sends at once (llama_server sizes its
    # slots by it): the greedy call counts against it with the sampled ones.
    llm = ScriptedLLM(answers("The answer is 7."), honours_n=supports_n)
    in_flight = peak = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
            return llm._handle(request)
        finally:
            in_flight -= 1

    settings = make_settings(vote_width=3, vote_first_wave=3, vote_majority_first=False,
                             fanout_concurrency=1, supports_n=supports_n)
    async with gateway_client(httpx.MockTransport(handle), settings) as client:
        reply = await client.post("/v1/chat/completions", json=vote())
    assert reply.status_code == 200, reply.text
    assert reply.json()["router"]["samples"] == 3 and reply.json()["router"]["greedy_first"]
    assert peak == 1


async def test_votes_are_weighted_by_confidence_when_logprobs_come_back():
    from service.strategies.sampling import _confidence

    choice = {"logprobs": {"content": [{"token": "a", "logprob": -0.1},
                                       {"token": "b", "logprob": -0.3}]}}
    assert _confidence(choice) == pytest.approx(2.718281828 ** -0.2)
    assert _confidence({"logprobs": None}) is None


async def test_tool_turns_are_answered_directly_and_say_so():
    llm = ScriptedLLM(answers("The answer is 1."))
    body = vote(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    reply = await post(llm, body)
    router = reply.json()["router"]
    assert router["strategy"] == "direct" and "tool calls" in router["reason"]
    assert len(llm.requests) == 1


async def test_n_above_one_needs_direct():
    reply = await post(ScriptedLLM(answers("x")), vote(n=2))
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "n"


# --- sequential -----------------------------------------------------------------------------


def long_chain(i, body):
    if body["messages"][-1]["content"].startswith("You are out of thinking budget"):
        return "The answer is 42."
    return " ".join(["step"] * 500)


async def test_a_chain_cut_by_its_budget_gets_a_forced_final_answer():
    llm = ScriptedLLM(long_chain)
    body = {**QUESTION, "router": {"strategy": "sequential", "budget_tokens": 256}}
    reply = await post(llm, body, answer_reserve_tokens=32)
    data = reply.json()
    assert data["router"]["continued"] is True
    assert data["choices"][0]["message"]["content"].endswith("The answer is 42.")
    assert data["choices"][0]["finish_reason"] == "stop"
    assert [b["max_tokens"] for b in llm.requests] == [224, 32]
    follow_up = llm.requests[1]["messages"]
    assert follow_up[-2]["role"] == "assistant" and follow_up[-1]["role"] == "user"
    assert data["usage"]["completion_tokens"] == llm.reported_tokens <= 256


@pytest.mark.parametrize("budget", [None, 2048])
@pytest.mark.parametrize("max_tokens", [3, 4, 5, 7, 27])
async def test_a_cap_too_small_to_hold_a_forced_answer_is_not_continued(max_tokens, budget):
    # max_tokens 5 left a reserve of one token: the reply became "Let's break down\n\n the"
    # (bank replay), and the follow-up resent the prompt and the chain for that one token.
    # With a larger budget, a reserve of 0 was reported as continued.
    llm = ScriptedLLM(long_chain)
    controls = {"strategy": "sequential", **({"budget_tokens": budget} if budget else {})}
    body = {**QUESTION, "max_tokens": max_tokens, "router": controls}
    reply = await post(llm, body)
    data = reply.json()
    assert data["router"]["continued"] is False and len(llm.requests) == 1
    assert [b["max_tokens"] for b in llm.requests] == [max_tokens]
    assert data["choices"][0]["message"]["content"] == " ".join(["step"] * max_tokens)
    assert data["choices"][0]["finish_reason"] == "length"


async def test_a_cap_that_holds_a_forced_answer_is_continued():
    llm = ScriptedLLM(long_chain)
    body = {**QUESTION, "max_tokens": 28, "router": {"strategy": "sequential"}}
    reply = await post(llm, body)
    assert reply.json()["router"]["continued"] is True
    assert [b["max_tokens"] for b in llm.requests] == [21, 7]


async def test_prefill_backends_continue_the_assistant_message():
    llm = ScriptedLLM(lambda i, body: " 42." if body.get("continue_final_message")
                      else " ".join(["step"] * 500))
    settings = make_settings()
    settings.upstreams[0].prefill = True
    body = {**QUESTION, "router": {"strategy": "sequential", "budget_tokens": 128}}
    async with gateway_client(llm.transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json=body)
    second = llm.requests[1]
    assert second["continue_final_message"] is True
    assert second["messages"][-1]["content"].endswith("So the final answer is")
    assert reply.json()["choices"][0]["message"]["content"].endswith(
        "So the final answer is 42.")


async def test_a_chain_that_answers_in_budget_is_not_continued():
    llm = ScriptedLLM(answers("Six sevens are 42. The answer is 42."))
    body = {**QUESTION, "router": {"strategy": "sequential", "budget_tokens": 256}}
    reply = await post(llm, body)
    assert reply.json()["router"]["continued"] is False
    assert len(llm.requests) == 1


def sse_events(text: str) -> list:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


async def test_sequential_streams_the_chain_then_the_forced_answer():
    llm = ScriptedLLM(long_chain)
    body = {**QUESTION, "stream": True, "stream_options": {"include_usage": True},
            "router": {"strategy": "sequential", "budget_tokens": 64}}
    reply = await post(llm, body, answer_reserve_tokens=16)
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if isinstance(e, dict) and e["choices"])
    assert text.startswith("step step") and text.endswith("The answer is 42.")
    finishes = [c["finish_reason"] for e in events[:-1] if isinstance(e, dict)
                for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["stop"]
    assert events[-2]["usage"]["completion_tokens"] == llm.reported_tokens <= 64


async def test_a_streamed_chain_whose_forced_answer_fails_says_it_did_not_continue():
    # The chain (call 0) is cut before an answer; the forced answer's call (1) fails.
    llm = ScriptedLLM(long_chain, fail={1})
    body = {**QUESTION, "stream": True, "stream_options": {"include_usage": True},
            "router": {"strategy": "sequential", "budget_tokens": 64}}
    reply = await post(llm, body, answer_reserve_tokens=16, max_retries=0)
    events = [e for e in sse_events(reply.text) if isinstance(e, dict)]
    routers = [e["router"] for e in events if "router" in e]
    assert len(llm.requests) == 2 and routers and routers[-1]["continued"] is False, routers
    # As without streaming, the cut chain is the reply: it ends as cut, not with an error
    # event after its text (the SDKs raise on one and the chain is lost).
    assert not any("error" in e for e in events)
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", [])
                if c["finish_reason"]]
    assert finishes == ["length"]


async def test_a_streamed_chain_whose_forced_answer_is_not_granted_ends_as_cut():
    # budget_total_tokens grants the chain (48 tokens after a short prompt), but the forced
    # answer's call resends the prompt and the chain (about 250 bytes, counted as tokens
    # without a tokenizer): the ledger grants it nothing. Its stream ended with a finish
    # chunk whose finish_reason was null, after a separator no answer followed.
    llm = ScriptedLLM(long_chain)
    body = {**QUESTION, "stream": True, "stream_options": {"include_usage": True},
            "router": {"strategy": "sequential", "budget_tokens": 64,
                       "budget_total_tokens": 150}}
    reply = await post(llm, body, answer_reserve_tokens=16, max_retries=0)
    events = [e for e in sse_events(reply.text) if isinstance(e, dict)]
    assert len(llm.requests) == 1 and not any("error" in e for e in events), events
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if e["choices"])
    assert text == " ".join(["step"] * 48)  # the cut chain, as the JSON reply's
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", [])
                if "finish_reason" in c and not c["delta"]]
    assert finishes == ["length"], events
    assert events[-1]["router"]["continued"] is False
    assert events[-1]["usage"]["completion_tokens"] == llm.reported_tokens == 48
    json_reply = await post(ScriptedLLM(long_chain), {**body, "stream": False,
                                                      "stream_options": None},
                            answer_reserve_tokens=16, max_retries=0)
    assert json_reply.json()["choices"][0]["message"]["content"] == text
    assert json_reply.json()["choices"][0]["finish_reason"] == "length"


async def test_a_streamed_chain_stopped_at_its_grant_ends_as_cut():
    # A backend not yet known to ignore max_tokens sends more chunks than the chain's grant
    # (48): the gateway stops reading it. The stream's last choice chunk had finish_reason
    # null, so the client never learnt why the reply ended; it was cut, as at its cap.
    llm = ScriptedLLM(long_chain, ignore_cap=True)
    body = {**QUESTION, "stream": True, "stream_options": {"include_usage": True},
            "router": {"strategy": "sequential", "budget_tokens": 64}}
    reply = await post(llm, body, answer_reserve_tokens=16, max_retries=0)
    events = [e for e in sse_events(reply.text) if isinstance(e, dict)]
    assert len(llm.requests) == 1 and not any("error" in e for e in events), events
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if not c["delta"]]
    assert finishes == ["length"], finishes
    assert events[-1]["router"]["budget_overrun"] is True
    assert events[-1]["router"]["continued"] is False  # the overrun ledger grants nothing
    assert events[-1]["usage"]["completion_tokens"] == 49  # a token per chunk seen, at least


async def test_parallel_vote_streams_the_winner():
    llm = ScriptedLLM(answers("The answer is 3.", "The answer is 3.", "The answer is 4."))
    body = vote(budget=256, stream=True, stream_options={"include_usage": True})
    reply = await post(llm, body, vote_width=3, vote_first_wave=3,
                       vote_majority_first=False)
    events = sse_events(reply.text)
    assert events[0]["choices"][0]["delta"]["content"] == "The answer is 3."
    assert events[1]["choices"][0]["finish_reason"] == "stop"
    assert events[2]["router"]["votes"] == {"3": 2, "4": 1}
    assert events[3] == "[DONE]"


async def test_a_streamed_vote_whose_first_wave_is_cut_streams_the_chain():
    reasoning = " ".join(["step"] * 100) + " The answer is 7."
    llm = ScriptedLLM(lambda i, body: reasoning, honours_n=False)
    body = vote(budget=8 * 64, stream=True, stream_options={"include_usage": True})
    reply = await post(llm, body, vote_width=8, supports_n=False)
    events = sse_events(reply.text)
    assert events[0]["choices"][0]["delta"]["content"] == reasoning
    assert events[2]["router"]["chain_after_cut"] is True and events[2]["router"]["winner"] == "7"
    assert events[2]["usage"]["completion_tokens"] == llm.reported_tokens == 3 * 64 + 104


async def test_a_backend_that_ignores_its_cap_is_counted_and_stopped():
    llm = ScriptedLLM(lambda i, body: " ".join(["word"] * 200), ignore_cap=True,
                      honours_n=False)
    reply = await post(llm, vote(budget=4 * 64), vote_width=4, supports_n=False,
                       vote_first_wave=1, vote_wave=1)
    router = reply.json()["router"]
    assert router["budget_overrun"] is True
    assert router["spent_tokens"] == llm.reported_tokens == 200  # every token is counted
    assert len(llm.requests) == 1  # no call after the overrun


# --- max_tokens with budget_tokens ------------------------------------------------------------


def rambler(i, body):
    """30 words ending with an answer; the forced answers (sequential's, search's) are short."""
    last = body["messages"][-1]["content"]
    if isinstance(last, str) and ("final answer now" in last or "thinking budget" in last):
        return "The answer is 42."
    return " ".join(["step"] * 26 + ["The answer is 42."])


@pytest.mark.parametrize("strategy", ["direct", "sequential", "parallel_vote", "search"])
@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_caps_the_reply_and_the_budget_caps_the_spend(strategy, stream,
                                                                       tmp_path):
    """With ``max_tokens: 20`` and ``budget_tokens: 2048`` every strategy answers in at most 20
    tokens (one scripted word is one token); the budget pays for what the client does not
    receive: a vote's other samples, here."""
    llm = ScriptedLLM(rambler, honours_n=False)
    body = {**QUESTION, "max_tokens": 20,
            "router": {"strategy": strategy, "budget_tokens": 2048}}
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    reply = await post(llm, body, data_dir=tmp_path, vote_width=4, supports_n=False)
    assert reply.status_code == 200, reply.text
    if stream:
        events = [e for e in sse_events(reply.text) if isinstance(e, dict)]
        text = "".join(c["delta"].get("content") or "" for e in events
                       for c in e.get("choices") or [])
        usage = next(e["usage"] for e in events if e.get("usage"))
    else:
        text = reply.json()["choices"][0]["message"]["content"]
        usage = reply.json()["usage"]
    assert 0 < len(text.split()) <= 20, text
    assert all(b["max_tokens"] <= 20 and b["max_completion_tokens"] <= 20
               for b in llm.requests)
    assert usage["completion_tokens"] == llm.reported_tokens <= 2048
    if strategy == "parallel_vote":  # several samples of 20 tokens each, paid by the budget
        assert len(llm.requests) >= 2 and llm.reported_tokens == 20 * len(llm.requests)
