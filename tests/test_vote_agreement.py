"""Votes that buy nothing give way to one answer: a vote's first sample bounds its gain."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from router_models.plan import Plan, Scores
from router_models.policies import PolicyError
from router_models.policies.learned import LearnedPolicy
from router_models.policies.prior import DIRECT_ROOM, sample_tokens
from router_models.vote_agreement import VoteAgreement
from router_models.worlds import FIRST_WAVE, draw_world
from service.app import create_app
from tests.conftest import gateway_client, make_settings
from tests.scripted import ScriptedLLM

GUESS = Scores(0.5, 0.1, 0.0, "open")  # hard, independent: the prior votes


def test_the_gain_bound_is_a_wilson_upper_bound_of_disagreement():
    agreement = VoteAgreement()
    assert agreement.gain_bound("k") == 1.0  # no vote seen: nothing is bounded
    for _ in range(20):
        agreement.observe("k", True)
    # No disagreement in 20 votes still leaves 12 points possible (one-sided 95% Wilson).
    assert agreement.gain_bound("k") == pytest.approx(0.119, abs=0.002)
    for _ in range(80):
        agreement.observe("k", True)
    assert agreement.gain_bound("k") == pytest.approx(0.026, abs=0.002)
    for _ in range(10):
        agreement.observe("k", False)
    assert agreement.count("k") == (100, 110)
    assert 0.09 < agreement.gain_bound("k") < 0.2  # 9% disagreed: the bound sits above it


def test_the_window_forgets_old_votes():
    agreement = VoteAgreement(window=10)
    for _ in range(10):
        agreement.observe("k", False)
    for _ in range(10):
        agreement.observe("k", True)
    assert agreement.count("k") == (10, 10)


def test_votes_whose_first_sample_always_agrees_become_one_answer_with_room():
    policy = LearnedPolicy(vote_gain_floor=0.05)
    assert policy.decide(GUESS).plan.strategy == "parallel_vote"
    for _ in range(40):  # bound 0.063: not yet below 5 points
        policy.observe_vote(GUESS, True)
    assert policy.decide(GUESS).plan.strategy == "parallel_vote"
    for _ in range(20):  # 60 of 60: bound 0.043
        policy.observe_vote(GUESS, True)
    plan = policy.decide(GUESS).plan
    answer = policy.answer_tokens(0 if GUESS.difficulty < 0.1 else 3)
    assert plan.strategy == "direct"
    assert plan.budget_tokens == DIRECT_ROOM * sample_tokens(answer)
    # The same room as any direct answer to such a prompt: their outcomes count together.
    assert policy.sized("direct", GUESS).budget_tokens == plan.budget_tokens
    assert "60 of the last 60 votes" in plan.reason and "one answer" in plan.reason
    # Another form of the same kind has its own evidence: it still votes.
    assert policy.decide(Scores(0.5, 0.1, 0.0, "choice")).plan.strategy == "parallel_vote"
    # An explored or forced vote still votes.
    assert policy.sized("parallel_vote", GUESS, exploring=True).strategy == "parallel_vote"
    assert policy.decide(GUESS, strategy="parallel_vote").plan.strategy == "parallel_vote"


def test_feedback_that_shows_one_answer_worse_brings_the_votes_back():
    policy = LearnedPolicy()
    for _ in range(100):
        policy.observe_vote(GUESS, True)
    assert policy.decide(GUESS).plan.strategy == "direct"
    kind = 3  # hard/independent
    vote = Plan("parallel_vote", 900, width=3, depth_tokens=300)
    for _ in range(5):  # the first look: votes right 5 of 5, one answer 0 of 5
        policy.update(GUESS, vote, True)
        policy.update(GUESS, Plan("direct", 600, depth_tokens=600), False)
    assert policy.eliminated(kind, "direct")
    assert policy.decide(GUESS).plan.strategy == "parallel_vote"


def test_a_kind_whose_votes_gave_way_still_explores_the_vote():
    policy = LearnedPolicy(exploration=0.3)
    for _ in range(100):
        policy.observe_vote(GUESS, True)
    policy.update(GUESS, Plan("direct", 600, depth_tokens=600), True)  # feedback flows
    plans = [policy.decide(GUESS).plan for _ in range(3000)]
    votes = [p for p in plans if p.strategy == "parallel_vote"]
    ones = [p for p in plans if p.strategy == "direct"]
    assert votes and all("exploring parallel_vote" in p.reason and p.probability < 1
                         for p in votes)
    assert len(ones) > len(plans) / 2  # the one answer is what the kind runs
    assert all("instead of direct" in p.reason for p in plans if "exploring" in p.reason)
    assert policy.explored <= 0.3 * policy.exploring_decisions


def test_votes_that_disagree_keep_voting_and_the_floor_zero_never_idles():
    disagreeing = LearnedPolicy(vote_gain_floor=0.05)
    never = LearnedPolicy(vote_gain_floor=0.0)
    for i in range(200):
        disagreeing.observe_vote(GUESS, i % 5 != 0)  # one vote in five: the vote decided
        never.observe_vote(GUESS, True)
    assert disagreeing.decide(GUESS).plan.strategy == "parallel_vote"
    assert never.decide(GUESS).plan.strategy == "parallel_vote"
    with pytest.raises(PolicyError, match="vote_gain_floor"):
        LearnedPolicy(vote_gain_floor=1.5)


def test_idle_votes_free_tokens_for_the_mean():
    policy = LearnedPolicy(target_tokens=512)
    chain = Scores(0.7, 0.9, 0.0, "numeric", 3)
    for _ in range(100):
        policy.add_reference(GUESS)
        policy.add_reference(chain)
    policy.resolve()
    before = policy.sized("sequential", chain).budget_tokens
    scale = policy.scale
    for _ in range(100):
        policy.observe_vote(GUESS, True)
    # The guesses' votes became one answer, so the solved scale gives more.
    assert policy.scale > scale  # 4 -> 32 here: nothing else votes, so the mean binds no more
    assert policy.sized("sequential", chain).budget_tokens == before  # a chain's room is fixed


def test_the_agreement_round_trips_through_the_state(tmp_path):
    policy = LearnedPolicy()
    for _ in range(100):
        policy.observe_vote(GUESS, True)
    policy.save(tmp_path / "learned.json")
    restored = LearnedPolicy.load(tmp_path / "learned.json")
    assert restored.agreement.count(LearnedPolicy.vote_key(GUESS)) == (100, 100)
    assert restored.decide(GUESS).plan.strategy == "direct"
    # An operator's floor of 0 overrides the saved one: votes again.
    assert LearnedPolicy.load(tmp_path / "learned.json", vote_gain_floor=0.0).decide(
        GUESS).plan.strategy == "parallel_vote"


def test_a_state_from_a_later_version_loads_without_its_unknown_settings(caplog):
    state = LearnedPolicy(target_tokens=700).state()
    state["config"]["a_later_setting"] = 3
    policy = LearnedPolicy.from_state(state)
    assert policy.target_tokens == 700
    assert "a_later_setting" in caplog.text


def test_a_simulated_vote_agrees_with_its_first_sample_as_often_as_its_chances_say():
    world = draw_world(31)
    prompts = world.prompts(40, split="train", per_kind=True)
    rng = np.random.default_rng(0)
    vote = Plan("parallel_vote", 3 * 400, width=3, depth_tokens=400)
    seen = [world.vote_agreement(prompts, i, vote, 3, rng) for i in range(len(prompts))]
    assert any(seen) and not all(seen)  # some votes overturn their first sample
    one = Plan("parallel_vote", 400, width=1, depth_tokens=400)
    alone = [world.vote_agreement(prompts, i, one, 1, rng) for i in range(len(prompts))]
    assert all(a is None or a for a in alone)  # a vote of one elects its only answer


def test_a_simulated_vote_agrees_as_its_stopping_says():
    # The simulator stops a vote after its first wave exactly when that wave's samples agree
    # (``expected_samples``), as the gateway stops a settled vote: a stopped vote's first
    # sample states the elected answer, and a vote that drew all its samples had a first
    # wave that did not agree. Its ballots were drawn apart from that, so 21 of 252 stopped
    # votes of world 31 reported overturning their first sample, which no stopped vote does.
    world = draw_world(31)
    prompts = world.prompts(60, split="train", per_kind=True)
    rng = np.random.default_rng(0)
    vote = Plan("parallel_vote", 8 * 300, width=8, depth_tokens=300)
    stopped, full = 0, 0
    for i in range(len(prompts)):
        drawn = world._samples_drawn(prompts, i, vote, 300, rng)
        ballots = world.vote_ballots(prompts, i, vote, drawn, rng)
        assert len(ballots) == drawn
        first_wave = ballots[:FIRST_WAVE]
        alike = first_wave[0] in ("right", "top") and len(set(first_wave)) == 1
        if drawn < vote.width:
            stopped += 1
            assert alike and world.vote_agreement(prompts, i, vote, drawn, rng) is not False
        else:
            full += 1
            assert not alike, ballots
    assert stopped and full

async def test_the_gateway_reports_each_votes_agreement_to_the_learned_policy():
    # Every sample answers 7: after five votes, one answer is planned (a floor of 0.5 so that
    # five votes are enough evidence). Votes whose majority overturns the first sample keep
    # voting (a vote of three different answers elects its first: it gains nothing either).
    settings = make_settings(learned_vote_gain_floor=0.5, vote_width=3)
    guess = {"model": "auto", "messages": [{"role": "user", "content": "Guess a number"}]}
    forced = dict(guess, router={"strategy": "parallel_vote", "policy": "learned"})
    agreeing = ScriptedLLM(lambda i, body: "Let me see. The answer is 7.")
    async with gateway_client(agreeing.transport(), settings) as client:
        first = (await client.post("/v1/chat/completions", json=guess)).json()["router"]
        for _ in range(5):
            assert (await client.post("/v1/chat/completions", json=forced)).status_code == 200
        later = (await client.post("/v1/chat/completions", json=guess)).json()["router"]
    assert first["strategy"] == "parallel_vote"
    assert later["strategy"] == "direct" and "elected their first sample's answer" in (
        later["reason"])
    overturned = ScriptedLLM(lambda i, body: f"Let me see. The answer is {3 if i % 3 else 7}.")
    async with gateway_client(overturned.transport(), settings) as client:
        for _ in range(6):
            await client.post("/v1/chat/completions", json=forced)
        kept = (await client.post("/v1/chat/completions", json=guess)).json()["router"]
    assert kept["strategy"] == "parallel_vote"



GUESS_MESSAGES = [{"role": "user", "content": "Guess a number"}]


def _forced_vote(**extra):
    # A vote the client names, no policy deciding it (the model is named, not auto): its
    # agreement still reaches learned, which plans the same prompt's auto requests.
    return {"model": "fake-model", "messages": GUESS_MESSAGES,
            "router": {"strategy": "parallel_vote", "budget_tokens": 8 * 64}, **extra}


async def _agreement_after(llm: ScriptedLLM, bodies: list[dict], **settings
                           ) -> tuple[int, int]:
    """(agreed, votes) learned recorded for the guess's kind after the gateway answered
    ``bodies`` in turn."""
    app = create_app(make_settings(**settings), transport=llm.transport())
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        for body in bodies:
            reply = await client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
        scores = Scores.from_dict(reply.json()["router"]["scores"]) if not body.get(
            "stream") else None
        learned = app.state.gateway.router.policies["learned"]
        assert isinstance(learned, LearnedPolicy)
        keys = learned.agreement.keys_seen()
        assert scores is None or not keys or keys == [LearnedPolicy.vote_key(scores)]
        return learned.agreement.count(keys[0]) if keys else (0, 0)


async def test_a_vote_that_gave_way_to_a_chain_counts_as_overturning_its_first_sample():
    # The first wave of three was cut before any answer, and the undrawn samples' tokens
    # bought one chain that answered 7: the vote's reply is the chain's answer, which the cut
    # first sample never stated, so one answer (that first sample) and the vote differ. The
    # vote was not recorded at all (the cut samples elected nothing), so the votes that beat
    # their first sample most plainly were dropped and the bound was biased down.
    reasoning = " ".join(["step"] * 200) + " The answer is 7."
    llm = ScriptedLLM(lambda i, body: reasoning, honours_n=False)
    assert await _agreement_after(llm, [_forced_vote()], supports_n=False) == (0, 1)
    # A vote whose first wave agrees is one agreeing vote, as before.
    agreeing = ScriptedLLM(lambda i, body: "The answer is 7.")
    assert await _agreement_after(agreeing, [_forced_vote()]) == (1, 1)


async def test_greedy_votes_say_nothing_about_what_sampled_votes_buy():
    # A client that names parallel_vote at temperature 0 gets it, and its samples are one
    # greedy answer repeated: every such vote agrees with its first sample by construction.
    # Counted, five of them idled the kind's auto votes (floor 0.5), which sample at 0.7.
    llm = ScriptedLLM(lambda i, body: "The answer is 7.")
    greedy = [_forced_vote(temperature=0)] * 5
    assert await _agreement_after(llm, greedy, learned_vote_gain_floor=0.5) == (0, 0)
    assert await _agreement_after(llm, [_forced_vote(temperature=0.7)]) == (1, 1)


async def test_streamed_votes_report_their_agreement_too():
    llm = ScriptedLLM(lambda i, body: "The answer is 7.")
    assert await _agreement_after(llm, [_forced_vote(stream=True)] * 3) == (3, 3)
