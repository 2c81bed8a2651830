"""Real processes: ``ttc-router serve`` in front of the fake backend's ``overrun-model``, a
server that ignores ``max_tokens``. Once the gateway has seen it overrun (the first request:
a non-streamed call shows its overrun only when it has all been generated), no request of any
strategy spends past its budget, JSON or SSE: the gateway streams its calls to that backend
and closes each one when its choices reach their grants. Every request is charged at least
what the backend generated for it (``GET /stats``), and ``ttc_tokens_total`` equals the summed
``usage``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.obs import Process, start_fake_backend, start_gateway

pytestmark = pytest.mark.e2e

# A token every 50 ms, as a small model on a CPU: the backend notices that the gateway closed
# its stream before it generates the next token.
TOKEN_DELAY_MS = 50
# (strategy, budget_tokens): each budget is smaller than the 24 tokens the backend answers,
# so that every call is cut (sequential's and search's forced answers, and a vote's chain
# after its cut first wave, included).
CASES = [("direct", 2), ("parallel_vote", 24), ("sequential", 28), ("search", 8)]
# Votes of samples this short (answers of 3 tokens assumed, 4 with headroom): a budget of 24
# buys 6 samples of 4 tokens.
SHORT_VOTES = {"TTC_VOTE_MIN_DEPTH_TOKENS": "4", "TTC_DEFAULT_ANSWER_TOKENS": "3"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    backend = start_fake_backend(tmp_path, token_delay_ms=TOKEN_DELAY_MS)
    gateway = None
    try:
        gateway = start_gateway(backend.url, tmp_path / "data", tmp_path, env=SHORT_VOTES)
        yield backend, gateway
    finally:
        for process in (gateway, backend):
            if process is not None:
                process.stop()


def generated(backend: Process) -> int:
    """Completion tokens ``overrun-model`` has generated so far."""
    stats = httpx.get(backend.url.removesuffix("/v1") + "/stats", timeout=5).json()
    return int(stats["generated"].get("overrun-model", 0))


def completion_metric(gateway: Process) -> float:
    """``ttc_tokens_total{kind="completion", model="overrun-model"}``, summed."""
    total = 0.0
    for line in httpx.get(gateway.url + "/metrics", timeout=5).text.splitlines():
        if (line.startswith("ttc_tokens_total{") and 'kind="completion"' in line
                and 'model="overrun-model"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ask(client: httpx.Client, strategy: str, budget: int,
        stream: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(usage, router) of one request."""
    body: dict[str, Any] = {
        "model": "overrun-model", "messages": [{"role": "user", "content": "What is 2+2?"}],
        "router": {"strategy": strategy, "budget_tokens": budget}}
    if not stream:
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"], reply.json()["router"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        events = [json.loads(line.removeprefix("data: ")) for line in reply.iter_lines()
                  if line.startswith("data: {")]
    assert "error" not in events[-1], events[-1]
    return events[-1]["usage"], events[-1]["router"]


def test_a_backend_that_ignores_max_tokens_overruns_a_budget_once_only(stack):
    backend, gateway = stack
    seen = []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for stream in (False, True):
            for strategy, budget in CASES:
                for _ in range(2):
                    before = generated(backend)
                    usage, router = ask(client, strategy, budget, stream)
                    seen.append((strategy, stream, budget, usage, router,
                                 generated(backend) - before))

    (_, _, budget, usage, router, made), *rest = seen
    # The first call of all ran non-streamed, as every call to a backend not known to ignore
    # its cap does: it generated its whole answer, counted exactly and flagged.
    assert usage["completion_tokens"] == router["spent_tokens"] == made == 24 > budget
    assert router["budget_overrun"] is True
    ran = set()
    for strategy, stream, budget, usage, router, made in rest:
        where = (strategy, stream)
        ran.add(router["strategy"])
        if router["strategy"] == "parallel_vote":
            assert router["samples"] >= 3, where  # its samples, each cut at its cap
        assert usage["completion_tokens"] == router["spent_tokens"] <= budget, where
        assert router["budget_overrun"] is False, where
        # never under-counted: each request is charged what the backend generated for it
        assert made <= usage["completion_tokens"], where
    # A vote may run as one chain once the gateway has learnt how long this model's answers
    # are (router.reason says so); every strategy ran under the cut all the same.
    assert ran == {"direct", "parallel_vote", "sequential", "search"}
    total = sum(usage["completion_tokens"] for *_, usage, _, _ in seen)
    assert completion_metric(gateway) == total
