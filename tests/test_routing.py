"""model "auto": the classifier scores the prompt, a named policy plans, feedback teaches."""

from __future__ import annotations

import json

import pytest

from router_models.plan import STRATEGIES, Plan, Scores
from service.routing import Router
from service.settings import SettingsError
from tests.conftest import gateway_client, make_settings, metric
from tests.scripted import ScriptedLLM

GRAPH = ("Edges: a-b, b-c, c-d, x-y. Is node a connected to node d? Think step by step.")


def llm():
    return ScriptedLLM(lambda i, body: "Let me see. The answer is yes.")


async def test_auto_is_planned_by_the_learned_policy_with_scores():
    before = metric("ttc_classifier_duration_seconds_count")
    async with gateway_client(llm().transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}]})
    router = reply.json()["router"]
    assert reply.status_code == 200
    assert router["policy"] == "learned" and router["strategy"] in STRATEGIES
    scores = dict(router["scores"])
    assert scores.pop("form") == "graph"
    assert isinstance(scores.pop("steps"), int)
    assert set(scores) == {"difficulty", "sequential", "search"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert 0.0 < router["probability"] <= 1.0
    assert metric("ttc_classifier_duration_seconds_count") == before + 1


async def test_named_policies_from_the_request_and_the_config():
    settings = make_settings(policies={"cheap": "fixed:direct@256"},
                             model_policies={"fake-model": "cheap"})
    async with gateway_client(llm().transport(), settings) as client:
        by_model = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}]})
        by_request = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "2+2?"}],
            "router": {"policy": "rules"}})
        unknown = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "2+2?"}],
            "router": {"policy": "nope"}})
    assert by_model.json()["router"]["policy"] == "cheap"
    assert by_model.json()["router"]["strategy"] == "direct"
    assert by_model.json()["router"]["budget_tokens"] == 256
    assert by_request.json()["router"]["policy"] == "rules"
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "unknown policy 'nope'"


async def test_a_forced_strategy_is_kept_and_scored():
    async with gateway_client(llm().transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}],
            "router": {"policy": "learned", "strategy": "sequential", "budget_tokens": 300}})
    router = reply.json()["router"]
    assert router["strategy"] == "sequential" and router["budget_tokens"] <= 300
    assert router["scores"] is not None


async def test_a_backend_model_without_controls_is_not_scored():
    async with gateway_client(llm().transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}]})
    router = reply.json()["router"]
    assert router["strategy"] == "direct" and router["scores"] is None
    assert router["policy"] is None


async def test_feedback_teaches_the_learned_policy_and_its_state_is_saved(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}]})
        decision = reply.json()["router"]["decision_id"]
        app_router = client._transport.app.state.gateway.router  # type: ignore[attr-defined]
        seen_before = sum(v["feedback"] for v in app_router.policies["learned"].budgets()
                          .values())
        answer = await client.post("/v1/feedback", json={"id": decision, "correct": True})
        assert answer.status_code == 200
        learned = app_router.policies["learned"]  # the served copy, replaced as it learns
        assert sum(v["feedback"] for v in learned.budgets().values()) == seen_before + 1
    assert (tmp_path / "models" / "learned.json").is_file()
    restored = Router(settings).policies["learned"].budgets()
    assert {k: v["feedback"] for k, v in restored.items()} == \
        {k: v["feedback"] for k, v in learned.budgets().items()}


def test_bad_policy_settings_are_named():
    with pytest.raises(SettingsError, match="policies.cheap"):
        Router(make_settings(policies={"cheap": "fixed:teleport@1"}))
    with pytest.raises(SettingsError, match="default_policy"):
        Router(make_settings(default_policy="missing"))


async def test_the_budget_curriculum_is_in_the_metrics():
    async with gateway_client(llm().transport()) as client:
        text = (await client.get("/metrics")).text
    assert 'ttc_policy_budget_tokens{kind="' in text and 'policy="learned"' in text
    assert "ttc_policy_feedback{" in text


async def test_a_forced_vote_too_small_for_complete_samples_runs_one_chain_and_says_so():
    # A real deployment's prior: answers take 256 tokens, so a sample needs 320.
    settings = make_settings(default_answer_tokens=256)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 260}})
        wide = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 1000}})
    router = reply.json()["router"]
    assert router["strategy"] == "sequential" and router["spent_tokens"] <= 260
    assert "260 tokens buy one: ran one chain" in router["reason"]
    assert wide.json()["router"]["strategy"] == "parallel_vote"
    assert wide.json()["router"]["max_samples"] == 3  # 1000 // 320


@pytest.mark.parametrize("budget, bought", [(70, "buy one"), (130, "buy 2")])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_vote_whose_budget_buys_fewer_than_three_samples_runs_one_chain(
        budget, bought, stream):
    # Short answers (48 tokens assumed: samples of 60), but a budget under three samples of
    # vote_min_depth_tokens (64): the budget rule used to keep a vote of 1 or 2 samples,
    # unannounced, where a vote of two has no majority.
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": budget}}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with gateway_client(llm().transport()) as client:
        reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        router = next(chunk["router"] for chunk in chunks if chunk.get("router"))
        usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    else:
        router, usage = reply.json()["router"], reply.json()["usage"]
    assert router["strategy"] == "sequential" and router["samples"] == 1
    assert f"{budget} tokens {bought}" in router["reason"] and "ran one chain" in router["reason"]
    assert router["spent_tokens"] == usage["completion_tokens"] <= budget


@pytest.mark.parametrize("router_controls, budget", [
    ({"strategy": "parallel_vote", "policy": "rules", "budget_tokens": 70}, 70),
    ({"strategy": "parallel_vote", "policy": "rules", "budget_tokens": 130}, 130),
    ({"policy": "tiny_vote"}, 100),
])
async def test_a_policy_vote_cut_below_three_samples_by_its_budget_runs_one_chain(
        router_controls, budget):
    # fit_to_budget keeps as many 64-token samples as the budget buys (1 or 2 here), and the
    # vote used to run so: "every vote, whichever policy planned it" must be a chain instead.
    settings = make_settings(policies={"tiny_vote": "fixed:parallel_vote@100"})
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": router_controls})
    router = reply.json()["router"]
    assert router["strategy"] == "sequential" and router["samples"] == 1, router
    assert f"{budget} tokens buy" in router["reason"] and "ran one chain" in router["reason"]
    assert router["spent_tokens"] == reply.json()["usage"]["completion_tokens"] <= budget


@pytest.mark.parametrize("controls, temperature, strategy", [
    ({"policy": "votes"}, 0, "sequential"),      # the policy's vote would repeat one answer
    ({"policy": "votes"}, 0.0, "sequential"),
    ({"policy": "votes"}, 0.7, "parallel_vote"),
    ({"policy": "votes"}, None, "parallel_vote"),  # no temperature: votes sample at 0.7
    ({"strategy": "parallel_vote", "budget_tokens": 1024}, 0, "parallel_vote"),  # asked for
])
async def test_a_greedy_request_is_not_planned_a_vote_of_identical_samples(
        controls, temperature, strategy):
    # Self-consistency needs sampled paths (Wang et al. 2023): at temperature 0 every sample
    # is the greedy one, so a vote nobody asked for pays 2-3 times for one answer (bank
    # replay, CommonsenseQA at temperature 0: votes of {'D': 2} for 322 tokens).
    llm_ = llm()
    settings = make_settings(policies={"votes": "fixed:parallel_vote@1024"})
    body = {"model": "auto", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": controls}
    if temperature is not None:
        body["temperature"] = temperature
    async with gateway_client(llm_.transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json=body)
    router = reply.json()["router"]
    assert router["strategy"] == strategy, router
    if strategy == "sequential":
        assert "temperature 0" in router["reason"] and len(llm_.requests) == 1
        assert router["budget_tokens"] == 1024


@pytest.mark.parametrize("client_fields, chain_temperature, sent", [
    ({}, 0.0, 0.0),                     # auto's one chain decodes greedily
    ({"temperature": 0.9}, 0.0, 0.9),   # the client's temperature wins
    ({"top_p": 0.5}, 0.0, None),        # so does any choice of sampling
    ({}, None, None),                   # the operator kept the backend's default
    ({}, 0.3, 0.3),
])
async def test_the_one_chain_auto_plans_runs_at_chain_temperature(
        client_fields, chain_temperature, sent):
    # Outcome bank: greedy chains right on 33.3% of 498 items, sampled (0.7) on 28.1%.
    llm_ = llm()
    settings = make_settings(policies={"chain": "fixed:sequential@512"},
                             chain_temperature=chain_temperature)
    async with gateway_client(llm_.transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}],
            "router": {"policy": "chain"}, **client_fields})
    router = reply.json()["router"]
    assert reply.status_code == 200 and router["strategy"] == "sequential"
    assert [r.get("temperature") for r in llm_.requests] == [sent] * len(llm_.requests)
    assert router.get("temperature") == (sent if not client_fields else None)
    assert ("chain_temperature" in router["reason"]) == (not client_fields
                                                         and chain_temperature is not None)


async def test_a_null_temperature_is_no_choice_of_sampling():
    # Clients that serialise unset fields send "temperature": null (OpenAI reads it as unset);
    # the gateway reported a greedy chain (router.temperature 0.0) but sent the null on, so
    # the backend sampled at its own default, and a vote's samples lost their 0.7.
    llm_ = llm()
    settings = make_settings(policies={"chain": "fixed:sequential@512",
                                       "votes": "fixed:parallel_vote@1024"})
    async with gateway_client(llm_.transport(), settings) as client:
        chain = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}],
            "router": {"policy": "chain"}, "temperature": None, "top_p": None})
        sent_chain = list(llm_.requests)
        vote = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"policy": "votes"}, "temperature": None})
    assert chain.json()["router"]["temperature"] == 0.0
    assert [r["temperature"] for r in sent_chain] == [0.0]
    assert vote.json()["router"]["strategy"] == "parallel_vote"
    # Nulls are no choice: the vote's first sample is greedy (vote_greedy_first), the rest
    # sampled at 0.7, and no null reaches the backend.
    assert sorted(r["temperature"] for r in llm_.requests[len(sent_chain):])[:2] == [0.0, 0.7]
    assert {r["temperature"] for r in llm_.requests[len(sent_chain):]} == {0.0, 0.7}


async def test_a_strategy_the_client_named_keeps_the_backends_temperature():
    llm_ = llm()
    async with gateway_client(llm_.transport()) as client:
        for strategy in ("direct", "sequential"):
            reply = await client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": GRAPH}],
                "router": {"strategy": strategy, "budget_tokens": 256}})
            assert reply.json()["router"]["strategy"] == strategy
            assert "temperature" not in reply.json()["router"]
    assert llm_.requests and all("temperature" not in r for r in llm_.requests)


@pytest.mark.parametrize("text", [
    "Write a haiku about autumn.", "Please translate 'good morning' into French.",
    "Can you help me write an email to my boss asking for a day off?",
    "Summarize this article: The firm sold 300 cars. Then it bought a plant. Sales doubled.",
])
async def test_open_ended_generation_is_answered_directly_with_room(text):
    # A vote needs answers to count (self-consistency); two good poems are different texts.
    llm_ = llm()
    async with gateway_client(llm_.transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}]})
        capped = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}],
            "max_tokens": 300})
        named = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 1024}})
        unknown = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}],
            "router": {"policy": "nope"}})
        choices = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}], "n": 2})
    router = reply.json()["router"]
    assert router["strategy"] == "direct" and router["scores"] is None, router
    assert "open-ended generation" in router["reason"]
    # Sampled as the client asked: greedy decoding repeats itself on long free text.
    assert "temperature" not in router and "temperature" not in llm_.requests[0]
    # Room for a long text, within the ceiling of auto's plans (8 x the 512-token mean).
    assert router["budget_tokens"] == llm_.requests[0]["max_tokens"] == 4096
    assert capped.json()["router"]["strategy"] == "direct"
    assert capped.json()["router"]["budget_tokens"] == llm_.requests[1]["max_tokens"] == 300
    assert named.json()["router"]["strategy"] == "parallel_vote"  # what the client named
    assert unknown.status_code == 400  # a misspelt policy is still an error
    # n > 1 keeps its own path: direct with the client's caps, n choices.
    assert choices.json()["router"]["budget_tokens"] is None
    assert len(choices.json()["choices"]) == 2


async def test_auto_says_why_a_tool_turn_or_n_choices_run_direct():
    # Seen on the embedded model: a turn with tools under auto said "auto: the configured
    # default", which reads as if no policy were configured (the learned one is).
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    async with gateway_client(llm().transport()) as client:
        with_tools = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": question, "tools": tools})
        two = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": question, "n": 2})
        passed = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": question, "tools": tools})
    router = with_tools.json()["router"]
    assert router["strategy"] == "direct" and "tool calls" in router["reason"], router
    router = two.json()["router"]
    assert router["strategy"] == "direct" and "n > 1" in router["reason"], router
    assert passed.json()["router"]["reason"] == (
        "a backend model without router controls passes through")


async def test_auto_answers_instructions_without_a_user_turn_directly():
    # OpenAI (and vLLM, llama.cpp) answer a conversation of system or developer messages
    # alone; model auto refused it with a 400 ("messages hold no user turn to answer"), so a
    # client pointed at the gateway failed where it had worked.
    only_system = [{"role": "system", "content": "Write a haiku about autumn."}]
    scripted = llm()
    async with gateway_client(scripted.transport()) as client:
        plain = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": only_system, "max_tokens": 40})
        streamed = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "developer", "content": "Say hi."}],
            "stream": True})
        forced = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": only_system,
            "router": {"strategy": "parallel_vote"}})
    assert plain.status_code == 200, plain.text
    router = plain.json()["router"]
    assert router["strategy"] == "direct" and router["scores"] is None
    assert "no user turn" in router["reason"], router
    assert scripted.requests[0]["messages"] == only_system  # passed on as sent
    assert scripted.requests[0]["max_tokens"] == 40
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    # a strategy that reads the question still needs one
    assert forced.status_code == 400
    assert forced.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("text", [
    "Explain your reasoning, then give the answer. What is 3 + 4?",
    "Explain how many apples are left if Tom has 12 apples, gives 5 to Ann and then buys 3.",
    "Describe the capital of France.\nA) Paris\nB) Rome\nC) Oslo", "What is 2 + 2?",
])
async def test_a_question_with_an_answer_to_count_is_still_routed(text):
    async with gateway_client(llm().transport()) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": text}]})
    router = reply.json()["router"]
    assert router["scores"] is not None and "open-ended" not in router.get("reason", "")


async def test_an_operator_who_set_votes_of_two_keeps_them():
    settings = make_settings(vote_width=2)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"strategy": "parallel_vote", "policy": "rules", "budget_tokens": 130}})
    assert reply.json()["router"]["strategy"] == "parallel_vote"


async def test_observed_short_answers_widen_later_votes():
    # Answers of 7 words (tokens, for the scripted backend) are seen, so 320-token samples
    # were far more than needed: a vote of the same budget gets more, shorter samples.
    settings = make_settings(default_answer_tokens=256, vote_width=8)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Guess a number"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 700}}
    async with gateway_client(llm().transport(), settings) as client:
        first = (await client.post("/v1/chat/completions", json=body)).json()["router"]
        for _ in range(7):  # the chains it ran teach the length: 8 answers seen
            await client.post("/v1/chat/completions", json=body)
        later = (await client.post("/v1/chat/completions", json=body)).json()["router"]
    assert first["strategy"] == "sequential"  # 700 tokens buy two 320-token samples: no vote
    assert later["max_samples"] == 8 and later["strategy"] == "parallel_vote"


async def test_auto_never_plans_search_when_there_is_nothing_to_search(tmp_path):
    from service.search import LocalIndex
    from service.search.documents import Document
    from service.search.local import index_path

    fact = {"model": "auto", "messages": [{"role": "user", "content": (
        "Who founded the Quenmoor observatory, and in which year was it built?")}]}
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        gw = client._transport.app.state.gateway  # type: ignore[attr-defined]
        router = gw.router
        scores = router.classifier.score(fact["messages"])
        assert scores.search >= 0.5  # the classifier reads it as a fact question
        for _ in range(20):
            reply = (await client.post("/v1/chat/completions", json=fact)).json()["router"]
            assert reply["strategy"] != "search" and reply["scores"]["search"] == 0.0
        LocalIndex(index_path(tmp_path)).add([
            Document("q", "Quenmoor observatory", "The Quenmoor observatory was founded by Ada "
                     "Lind and built in 1872 on the hill above the town."),
            Document("r", "Harbour", "The harbour was dredged twice in the last century.")])
        router._search_checked_at = -1e9  # skip the 2-second recheck interval
        reply = (await client.post("/v1/chat/completions", json=fact)).json()["router"]
        assert reply["strategy"] == "search" and reply["scores"]["search"] >= 0.5
        # A question the collection does not cover is not sent to search by the prior.
        other = {"model": "auto", "messages": [{"role": "user", "content": (
            "Who founded the Vantor shipyard, and in which year was it opened?")}]}
        reply = (await client.post("/v1/chat/completions", json=other)).json()["router"]
        assert reply["scores"]["search"] <= 0.3


def test_coverage_is_the_share_of_the_questions_content_words_in_the_hits():
    from service.coverage import coverage
    from service.search.base import Hit

    hits = [Hit("1", "Velmar Industries", "Velmar Industries opened its Ostrava plant in 1998.",
                1.0)]
    # Its names (Velmar, Industries, Ostrava) are all in the hits.
    assert coverage("In what year did Velmar Industries open its Ostrava plant?",
                    hits) == 1.0
    # No names (lower case): five of six content words (not "year"); "open" matches "opened".
    assert coverage("in what year did velmar industries open its ostrava plant?",
                    hits) == pytest.approx(5 / 6)
    assert coverage("Start with 7, add 5, then multiply by 3. What is the result?", hits) == 0.0
    assert coverage("Which planet is largest? (A) Mars (B) Jupiter", hits) == 0.0
    assert coverage("Where is the plant based?", hits) == 0.0  # one common word is chance
    # one name the hits hold is what they are about, however the question is phrased
    assert coverage("Where is Velmar based?", hits) == 1.0
    assert coverage("Velmar plant workers: how many?", []) == 0.0


def test_vote_samples_cut_after_their_answer_count_as_finished():
    # A model that rambles on to its cap after stating the answer: the answer fits, so the
    # length estimate must not grow (it would, without end, if cut samples counted as "at
    # least this long").
    scores = Scores(0.5, 0.1, 0.0)
    vote = Plan("parallel_vote", 3 * 100, width=3, depth_tokens=100)
    rambling = Router(make_settings(default_answer_tokens=80))
    unanswered = Router(make_settings(default_answer_tokens=80))
    answered = "Four plus three is seven. The answer is 7. " + "Let me check that again. " * 9
    for _ in range(30):
        rambling.observe_usage(scores, vote, "m", 300, [(answered, "length", 100)] * 3)
        unanswered.observe_usage(scores, vote, "m", 300,
                                 [("Four plus three is " + "x " * 80, "length", 100)] * 3)
    assert rambling.answer_tokens(scores, "m") <= 30  # the answer came within a fifth
    assert unanswered.answer_tokens(scores, "m") > 100


def test_answers_checked_after_they_are_stated_do_not_grow_the_samples():
    # A model that answers in about 100 tokens, then checks its work for 200 more before it
    # stops: the kind's answers take 100 tokens, not 300 (issue 13: lengths that include the
    # check grew every later vote, and its spend, where accuracy did not).
    scores = Scores(0.5, 0.1, 0.0)
    direct = Plan("direct", 400, depth_tokens=400)
    router = Router(make_settings(default_answer_tokens=80))
    text = "a" * 97 + " The answer is 7. " + "b" * 185
    for _ in range(30):
        router.observe_usage(scores, direct, "m", 300, [(text, "stop", 400)])
    assert 100 <= router.answer_tokens(scores, "m") <= 120
    # A chain counts up to its answer too; a search's answer, read with passages, does not.
    chain = Router(make_settings(default_answer_tokens=80))
    searched = Router(make_settings(default_answer_tokens=80))
    for _ in range(30):
        chain.observe_usage(scores, Plan("sequential", 400, depth_tokens=400), "m", 300,
                            [(text, "stop", 400)])
        searched.observe_usage(scores, Plan("search", 400, depth_tokens=400, search_calls=1),
                               "m", 300, [(text, "stop", 400)])
    assert 100 <= chain.answer_tokens(scores, "m") <= 120
    assert searched.answer_tokens(scores, "m") == 80


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("strategy", ["direct", "sequential", "parallel_vote"])
async def test_every_answer_teaches_how_long_answers_run_up_to_the_answer(strategy, stream):
    # The model answers in 6 tokens, then checks its work for 200 more: through the gateway,
    # JSON or streamed, each strategy's replies teach that an answer takes 6 tokens, so a
    # later vote of 700 tokens gets its full width of short samples (with the 256-token prior
    # it would get 2 samples of 320).
    text = "Let me see. The answer is 7. " + " ".join(["Checking again."] * 100)
    settings = make_settings(default_answer_tokens=256, vote_width=8)
    guess = [{"role": "user", "content": "Guess a number"}]
    async with gateway_client(ScriptedLLM(lambda i, body: text).transport(), settings) as client:
        for _ in range(8):
            reply = await client.post("/v1/chat/completions", json={
                "model": "auto", "messages": guess, "stream": stream,
                "router": {"strategy": strategy, "budget_tokens": 2000, "policy": "learned"}})
            assert reply.status_code == 200
        later = (await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": guess,
            "router": {"strategy": "parallel_vote", "budget_tokens": 700}})).json()["router"]
    assert later["strategy"] == "parallel_vote" and later["max_samples"] == 8


async def test_a_plan_sized_from_long_answers_is_fitted_under_the_operators_cap():
    # The operator allows 1,000 tokens per request; the prior sizes a chain's cap at 4 x 320 x
    # (1 + difficulty) tokens. auto fits its own plan under the cap instead of refusing the
    # request (the client asked for no budget at all).
    settings = make_settings(default_answer_tokens=256, max_budget_tokens=1000)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": GRAPH}]})
    assert reply.status_code == 200
    router = reply.json()["router"]
    assert router["strategy"] == "sequential" and 0 < router["budget_tokens"] <= 1000


@pytest.mark.parametrize("strategy", ["sequential", "parallel_vote", "search"])
async def test_a_named_strategys_default_budget_is_fitted_under_the_operators_cap(strategy):
    # max_budget_tokens 100 under default_budget_tokens 1,024: a client naming a strategy and
    # no cap at all was refused, 400 "max_completion_tokens is at most 100", a field it never
    # sent (and that /v1/completions does not have). The budget is the gateway's own, so it
    # fits under the cap, as a policy's plan does; a cap the client sends is still checked.
    settings = make_settings(max_budget_tokens=100, vote_min_depth_tokens=16)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "What is 17 * 23?"}],
            "router": {"strategy": strategy}})
        completions = await client.post("/v1/completions", json={
            "model": "auto", "prompt": "What is 17 * 23?", "router": {"strategy": strategy}})
        over = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "What is 17 * 23?"}],
            "max_tokens": 101, "router": {"strategy": strategy}})
    for answer in (reply, completions):
        assert answer.status_code == 200, answer.text
        assert 0 < answer.json()["router"]["budget_tokens"] <= 100
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"


def test_coverage_reads_a_hit_as_far_as_the_model_would(tmp_path):
    """A hit is put in the model's context cut to ``search_result_chars``: words past the cut
    cannot answer, so they do not cover the question. (Before, a 16 MB document was read
    whole on the event loop, about 5 s of every request whose top hit it was.)"""
    from service.protocol import parse_request
    from service.search import LocalIndex
    from service.search.documents import Document
    from service.search.local import index_path

    filler = "The annual report lists the departments and their staff. " * 400
    LocalIndex(index_path(tmp_path)).add([
        Document("early", "Report one", "The Quenmoor observatory was founded by Ada Lind. "
                 + filler),
        Document("late", "Report two", filler + "The Vantor shipyard was founded by Ola Brek.")])
    router = Router(make_settings(data_dir=tmp_path, search_result_chars=1200))

    def search_score(question: str) -> float:
        routed = parse_request("chat", {"model": "auto", "messages": [
            {"role": "user", "content": question}]})
        return router.search_evidence(routed, Scores(0.5, 0.1, 0.9)).search

    assert search_score("who founded the quenmoor observatory?") >= 0.5
    assert search_score("who founded the vantor shipyard?") <= 0.3


def test_an_index_that_cannot_be_read_is_nothing_to_search(tmp_path):
    """A damaged index (or one another version wrote) answers no search: ``auto`` must not
    plan one on the classifier's word, as with an empty index."""
    from service.protocol import parse_request
    from service.search import LocalIndex
    from service.search.documents import Document
    from service.search.local import index_path

    LocalIndex(index_path(tmp_path)).add([Document("q", "Quenmoor", "Quenmoor is a town.")])
    (index_path(tmp_path) / "meta.json").write_text("garbage")
    router = Router(make_settings(data_dir=tmp_path))
    routed = parse_request("chat", {"model": "auto", "messages": [
        {"role": "user", "content": "Who founded the Quenmoor observatory?"}]})
    assert router.search_evidence(routed, Scores(0.5, 0.1, 0.9)).search == 0.0


OBSERVATORY = ("Take the number of telescopes the Quenmoor observatory had when it opened. Add 3 "
               "for each decade since. Then subtract the 4 it sold. Then double it. How many "
               "telescopes does the Quenmoor observatory have?")
OMELET = ("Claire makes a 3 egg omelet every morning for her family. She buys 2 dozen eggs "
          "each week and gives 4 to her neighbour. How many eggs are left after 4 weeks?")


@pytest.mark.parametrize(("question", "strategy"), [(OBSERVATORY, "search"),
                                                    (OMELET, "sequential")])
async def test_a_calculation_over_the_collections_figures_is_searched(tmp_path, question,
                                                                      strategy):
    """A calculation that states its steps but not its figures ("the telescopes the Quenmoor
    observatory had when it opened") holds the whole subject of a document of the operator's
    collection: ``auto`` searches for them. A self-contained word problem stays one chain,
    though a document about eggs and a Claire is there too."""
    from router_models.steps import state_steps
    from service.search import LocalIndex
    from service.search.documents import Document
    from service.search.local import index_path

    assert state_steps(question) >= 2
    LocalIndex(index_path(tmp_path)).add([
        Document("q", "Quenmoor observatory", "The Quenmoor observatory opened in 1961 with 5 "
                 "telescopes. It adds telescopes every decade and sold 4 of them in 2019."),
        Document("c", "Claire Fryer", "Claire Fryer is a cook who wrote books on eggs, omelets "
                 "and family breakfasts for every morning of the week.")])
    async with gateway_client(llm().transport(), make_settings(data_dir=tmp_path)) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": question}]})
    assert reply.status_code == 200
    router = reply.json()["router"]
    assert router["strategy"] == strategy
    assert router["scores"]["covered"] is (strategy == "search")
