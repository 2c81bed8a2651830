"""Property: whatever a backend reports (usage or none, a usage of 0 completion tokens, many
tokens per chunk, failures after generating), the tokens it really generated never exceed
``budget_tokens``, and the usage, the metrics and the ledger never count fewer. Every
strategy, streamed and not, ``search`` included; the backend is
``tests.fault_backend.LyingBackend`` (a simulation that keeps the true count)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from service.search import Hit
from tests.conftest import gateway_client, make_settings
from tests.fault_backend import LyingBackend


class StaticSearch:
    """A search backend that finds one document for every query."""

    name: ClassVar[str] = "local"

    async def search(self, query: str, k: int) -> list[Hit]:
        return [Hit("doc", "Quenmoor", "Quenmoor is a town of 7 bridges.", 1.0)]


def completion_tokens_counted() -> float:
    """``ttc_tokens_total{kind="completion"}`` summed over every label set."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name == "ttc_tokens":
            total += sum(s.value for s in family.samples
                         if s.name == "ttc_tokens_total" and s.labels["kind"] == "completion")
    return total


def reply_usage(reply: Any) -> dict[str, Any] | None:
    """The usage (and router object) of a reply that finished without an error, else None."""
    if reply.status_code != 200:
        return None
    if reply.headers["content-type"].startswith("application/json"):
        body = reply.json()
        return {**body["usage"], "router": body["router"]}
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: {")]
    if any(json.loads(e).get("error") for e in events):
        return None
    last = json.loads(events[-1])
    return {**last["usage"], "router": last["router"]} if "usage" in last else None


@pytest.mark.parametrize("strategy", ["direct", "parallel_vote", "sequential", "search"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(1, 1500), width=st.integers(1, 8),
       lengths=st.lists(st.integers(1, 400), min_size=1, max_size=6),
       fail=st.sets(st.integers(0, 12), max_size=3), usage=st.booleans(),
       tokenizer=st.booleans(), tokens_per_chunk=st.sampled_from([1, 8, 50]),
       honours_n=st.booleans(), stream=st.booleans(), retries=st.integers(0, 2),
       n=st.sampled_from([1, 1, 2]), asks=st.booleans(),
       total=st.none() | st.integers(30, 3000), zero_usage=st.booleans())
def test_generated_tokens_stay_within_the_budget_and_are_never_under_counted(
        strategy, budget, width, lengths, fail, usage, tokenizer, tokens_per_chunk, honours_n,
        stream, retries, n, asks, total, zero_usage):
    backend = LyingBackend(lengths, usage=usage, tokenizer=tokenizer, fail=fail,
                           tokens_per_chunk=tokens_per_chunk, honours_n=honours_n,
                           zero_usage=zero_usage,
                           tail=lambda i: "SEARCH: bridges" if asks and i % 2 == 0 else "7")
    request: dict[str, Any] = {
        "model": "fake-model", "messages": [{"role": "user", "content": "How many bridges?"}],
        "router": {"strategy": strategy, "budget_tokens": budget}}
    if total is not None:  # prompt and completion tokens together
        request["router"]["budget_total_tokens"] = total
    if strategy == "direct" and n > 1:
        request["n"] = n
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}
    before = completion_tokens_counted()

    async def run() -> Any:
        config = make_settings(vote_width=width, vote_min_depth_tokens=1, max_retries=retries,
                               answer_reserve_tokens=16, search_max_calls=2)
        async with gateway_client(backend.transport(), config, StaticSearch()) as client:
            return await client.post("/v1/chat/completions", json=request)

    reply = asyncio.run(run())
    assert reply.status_code in (200, 400, 502), reply.text
    assert backend.generated <= budget
    counted = completion_tokens_counted() - before
    assert counted >= backend.generated  # metrics (and so the key limits and the log)
    seen = reply_usage(reply)
    event("usage seen" if seen else "no usage (an error)")
    if seen is not None:
        assert seen["completion_tokens"] == counted
        assert seen["router"]["spent_tokens"] == counted
        assert seen["completion_tokens"] >= backend.generated
        if total is not None:
            assert seen["prompt_tokens"] + seen["completion_tokens"] <= total
        if usage and not fail and not zero_usage:
            assert seen["completion_tokens"] == backend.generated
            assert seen["router"]["usage_source"] == "backend"
        elif not usage and seen["completion_tokens"] > backend.generated:
            assert seen["router"]["usage_estimated"] is True
