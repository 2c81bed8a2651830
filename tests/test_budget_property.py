"""Property: whatever the budget, plan and backend behaviour, upstream completion tokens never
exceed ``budget_tokens`` and ``usage`` equals what the backend reported in total, plus the
grants of failed calls (charged what they may have generated)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import gateway_client, make_settings
from tests.scripted import ScriptedLLM


def usage_of(reply) -> int | None:
    if reply.headers["content-type"].startswith("application/json"):
        body = reply.json()
        return body["usage"]["completion_tokens"] if "usage" in body else None
    for line in reversed(reply.text.splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            return json.loads(line[6:])["usage"]["completion_tokens"]
    return None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(["direct", "parallel_vote", "sequential"]),
       budget=st.integers(1, 3000), width=st.integers(1, 16),
       lengths=st.lists(st.integers(1, 600), min_size=1, max_size=12),
       fail=st.sets(st.integers(0, 15), max_size=4), honours_n=st.booleans(),
       stream=st.booleans(), first_wave=st.integers(1, 6))
def test_upstream_tokens_never_exceed_the_budget(strategy, budget, width, lengths, fail,
                                                 honours_n, stream, first_wave):
    llm = ScriptedLLM(lambda i, body: " ".join(["w"] * lengths[i % len(lengths)]) + " 7",
                      honours_n=honours_n, fail=fail)
    request = {"model": "fake-model", "messages": [{"role": "user", "content": "q"}],
               "router": {"strategy": strategy, "budget_tokens": budget}}
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}

    async def run():
        config = make_settings(vote_width=width, vote_min_depth_tokens=1,
                               vote_first_wave=first_wave, max_retries=0,
                               answer_reserve_tokens=16)
        async with gateway_client(llm.transport(), config) as client:
            return await client.post("/v1/chat/completions", json=request)

    reply = asyncio.run(run())
    assert llm.reported_tokens <= budget
    assert reply.status_code in (200, 502)
    ended_in_error = any(line.startswith('data: {"error"') for line in reply.text.splitlines())
    if reply.status_code == 200 and not ended_in_error:
        if not fail:
            assert usage_of(reply) == llm.reported_tokens
        assert usage_of(reply) >= llm.reported_tokens
