"""SIMULATION: experiments through the gateway in front of the simulated reasoner
(``service.sim``), with feedback from checking each answer against the task's gold answer:
adaptive allocation moves traffic to the clearly better arm, and off-policy replay of an
exploring policy's log predicts what a fixed policy then gets for real."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx

from router_models.experiments import bucket, pick
from router_models.experiments.replay import LoggedDecision, replay
from router_models.policies import parse_policy
from router_models.simulation import World
from router_models.tasks import TaskItem, load_suite
from router_models.tasks.checkers import check
from router_models.tasks.registry import TaskRegistry
from service.experiments import logged_decisions
from service.sim import MODEL_ID, SimConfig, create_sim_app
from tests.conftest import gateway_client, make_settings

RUNS = 4
LOGGED = 600
RUN_FOR_REAL = 480


def sim(items: list[TaskItem]) -> httpx.ASGITransport:
    config = SimConfig(World.load(), TaskRegistry(items), latency_per_token_s=0, ttft_s=0)
    return httpx.ASGITransport(app=create_sim_app(config))


async def ask(client: httpx.AsyncClient, item: TaskItem, seed: int, router: dict[str, Any],
              **extra: Any) -> dict[str, Any]:
    """One request for ``item``, then its feedback (the answer checked against the gold)."""
    reply = await client.post("/v1/chat/completions", json={
        "model": MODEL_ID, "seed": seed, "router": router,
        "messages": [{"role": "user", "content": item.prompt()}], **extra})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    correct = check(item, body["choices"][0]["message"]["content"] or "")
    sent = await client.post("/v1/feedback", json={"id": body["router"]["decision_id"],
                                                    "correct": correct})
    assert sent.status_code == 200, sent.text
    return {**body["router"], "correct": correct}


async def test_adaptive_allocation_moves_traffic_to_the_clearly_better_arm(tmp_path: Path):
    items = load_suite("graph_connectivity", 60)  # a long chain beats one short answer
    settings = make_settings(models=(MODEL_ID,), data_dir=tmp_path, experiments={"chain": {
        "adaptive": True, "min_feedback": 30, "floor": 0.05,
        "arms": {"short": {"policy": "fixed:direct@256"},
                 "long": {"policy": "fixed:sequential@1024"}}}})
    arms: list[str] = []
    async with gateway_client(sim(items), settings) as client:
        for i in range(400):
            routed = await ask(client, items[i % len(items)], i, {"experiment": "chain"},
                               user=f"user-{i}")
            arms.append(routed["arm"])
        report = (await client.get("/v1/experiments/chain")).json()
    # until each arm has 30 feedback, the configured 50/50 split assigns by the users' hash;
    # from request 200 on, every window of 100 requests sends more than 80% to the better arm
    configured = [pick({"short": 0.5, "long": 0.5}, bucket("chain", f"user-{i}"))
                  for i in range(60)]
    assert arms[:60] == configured
    late = [arms[i:i + 100].count("long") / 100 for i in range(200, 301, 20)]
    assert min(late) > 0.8, late
    assert report["allocation"]["in_force"] is True
    assert report["arms"]["long"]["share"] > 0.9
    assert report["leader"] == "long"
    assert report["arms"]["long"]["accuracy"] > report["arms"]["short"]["accuracy"]


async def explore(items: list[TaskItem], data_dir: Path, run: int) -> list[LoggedDecision]:
    """The request log of ``LOGGED`` requests planned by a uniformly random logging policy
    over three plans, its random draws seeded by ``run``."""
    data_dir.mkdir(parents=True)
    settings = make_settings(models=(MODEL_ID,), data_dir=data_dir, policies={
        "explorer": "random:direct@256,parallel_vote@768,sequential@1024"})
    async with gateway_client(sim(items), settings) as client:
        gw = client._transport.app.state.gateway  # type: ignore[attr-defined]
        gw.router.policies["explorer"].rng = random.Random(run)  # the state file holds no seed
        for i in range(LOGGED):
            await ask(client, items[i % len(items)], run * 100_000 + i, {"policy": "explorer"})
        await gw.request_log.flush()
        return logged_decisions(await gw.request_log.backend.records())


async def test_replay_of_an_exploring_log_predicts_a_fixed_policy_run_for_real(tmp_path: Path):
    items = (load_suite("graph_connectivity", 40) + load_suite("mc_guess", 40)
             + load_suite("arithmetic_chain", 40))
    target = parse_policy("fixed:sequential@1024")
    estimates = []
    for run in range(1, RUNS + 1):
        decisions = await explore(items, tmp_path / f"run{run}", run)
        estimate = replay(decisions, target)
        assert estimate.supported and estimate.rows == estimate.feedback == LOGGED
        assert LOGGED / 5 < estimate.ess < LOGGED / 2  # the explorer ran the chain ~1/3
        assert estimate.mean_tokens["dr"].value > 0
        estimates.append(estimate)
    settings = make_settings(models=(MODEL_ID,), data_dir=tmp_path / "real",
                             policies={"chain": "fixed:sequential@1024"})
    async with gateway_client(sim(items), settings) as client:
        real = [(await ask(client, items[i % len(items)], 10_000_000 + i, {"policy": "chain"}))
                ["correct"] for i in range(RUN_FOR_REAL)]
    accuracy = sum(real) / len(real)
    for name in ("snips", "dr"):
        inside = [e.accuracy[name].ci95[0] <= accuracy <= e.accuracy[name].ci95[1]
                  for e in estimates]
        # each is a 95% interval: all four runs should hold the real figure; allow one miss
        assert sum(inside) >= RUNS - 1, (name, accuracy, [e.accuracy[name] for e in estimates])
        assert all(e.accuracy[name].ci95[1] - e.accuracy[name].ci95[0] < 0.15
                   for e in estimates)
        pooled = sum(e.accuracy[name].value for e in estimates) / RUNS
        assert abs(pooled - accuracy) < 0.04, (name, pooled, accuracy)
    # a plan the explorer never tried cannot be estimated from its log
    unexplored = replay(decisions, parse_policy("fixed:sequential@4096"))
    assert not unexplored.supported and "never explored" in unexplored.reason
    assert not unexplored.accuracy
