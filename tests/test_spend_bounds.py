"""Spend stays bounded when answer lengths feed on themselves: a gateway in front of the plain
simulator (SIMULATION), which writes until the cap and answers there on prompts it does not
know, the way a backend with budget forcing would."""

from __future__ import annotations

import httpx

from router_models.policies.learned import PLAN_CEILING
from router_models.simulation import World
from router_models.tasks.registry import TaskRegistry
from service.sim import SimConfig, create_sim_app
from tests.conftest import gateway_client, make_settings


async def test_the_same_prompt_again_and_again_never_ratchets_its_budget():
    sim = create_sim_app(SimConfig(World.load(), TaskRegistry([]), latency_per_token_s=0,
                                   ttft_s=0))
    target = 512
    settings = make_settings(models=None, default_answer_tokens=256,
                             learned_target_tokens=target)
    body = {"model": "auto", "messages": [{"role": "user",
                                           "content": "A haiku about the sea, please."}]}
    spent = []
    async with gateway_client(httpx.ASGITransport(app=sim), settings) as client:
        for _ in range(25):
            reply = (await client.post("/v1/chat/completions", json=body)).json()
            assert reply["router"]["budget_tokens"] <= PLAN_CEILING * target
            spent.append(reply["usage"]["completion_tokens"])
    # Before the fix: 640, 960, ... 12,288 tokens a request, growing 1.25x each time. Now a
    # short climb (the probe), then the prior's size.
    assert max(spent) <= PLAN_CEILING * target
    assert max(spent[-10:]) <= 3 * 320, spent


async def test_backends_that_loop_or_fill_their_cap_stay_within_the_ceiling():
    from bench.spend_bounds import run_behaviour, summary

    for behaviour in ("never_answers", "fills_cap", "answers_late", "long"):
        replies = await run_behaviour(behaviour, requests=60, target=512, seed=1)
        found = summary(replies, 512)
        # Before: 30,216 tokens at most and about 18,000 a request on average (never_answers,
        # bench/spend_bounds.py --baseline). A probe's climb, then the prior's size.
        assert found["max"] <= PLAN_CEILING * 512, (behaviour, found)
        assert found["last_quarter_mean"] <= 4 * 512, (behaviour, found)


async def test_a_reasoning_model_cut_in_its_hidden_reasoning_gets_room_to_answer():
    from bench.spend_bounds import run_behaviour

    # 600-900 tokens of reasoning_content before the answer: samples cut inside it have empty
    # content, and were dropped from the answer lengths, so samples stayed at 320 tokens and
    # 22% of replies stated an answer (bench/spend_bounds.py against its parent).
    replies = await run_behaviour("reasoning", requests=60, target=512, seed=1)
    late = replies[20:]
    assert sum(stated for _, stated in late) >= 0.9 * len(late)
    assert max(tokens for tokens, _ in replies) <= PLAN_CEILING * 512

