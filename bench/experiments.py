"""A/B experiments at sizes the test suite does not run: the figures behind issue 7's proofs.

SIMULATION throughout; every figure printed comes from the runs below.

1. Split: arm shares over many identities against the configured weights.
2. Statistics where the truth is known: coverage of the difference's 95% interval (Newcombe),
   of each arm's Wilson interval, and, with equal arms and a look after every 20 feedback per
   arm, how often the always-valid stopping rule and a peeked-at fixed-sample z-test declare a
   winner; with a real difference, how often and how soon the rule names the better arm.
3. Adaptive allocation through the gateway in front of the simulated reasoner: the better
   arm's share per window of 100 requests.
4. Off-policy replay through the gateway: an exploring policy's log (epsilon 0.9 over three
   plans) replayed for fixed:sequential@1024, over independent runs: the estimators' mean and
   the coverage of their 95% intervals of the target's true simulated accuracy.

Run: ``.venv/bin/python bench/experiments.py [--runs 2000] [--replays 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router_models.experiments import (  # noqa: E402
    ArmTotals,
    assign,
    compare_accuracy,
    difference_sequence,
    wilson_interval,
)
from router_models.experiments.replay import replay  # noqa: E402
from router_models.policies import fixed_plan, parse_policy  # noqa: E402
from router_models.simulation import World  # noqa: E402
from router_models.tasks import TaskItem, load_suite  # noqa: E402
from router_models.tasks.checkers import check  # noqa: E402
from router_models.tasks.registry import TaskRegistry  # noqa: E402
from service.app import create_app  # noqa: E402
from service.experiments import logged_decisions  # noqa: E402
from service.settings import Settings, UpstreamSettings  # noqa: E402
from service.sim import MODEL_ID, SimConfig, create_sim_app  # noqa: E402


def split(users: int) -> None:
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    policies = dict.fromkeys(weights, "fixed:direct@256")
    counts = Counter(assign("bench", weights, f"user-{i}", how="user", policies=policies).arm
                     for i in range(users))
    print(f"1. split over {users} users, weights {weights}: " + ", ".join(
        f"{arm} {counts[arm] / users:.4f}" for arm in weights))


def statistics(runs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    covered = wilson_covered = 0
    for _ in range(runs):
        p = rng.uniform(0.3, 0.9, size=2)
        n = rng.integers(100, 800, size=2)
        c = rng.binomial(n, p)
        a, b = (ArmTotals(arm, int(k), int(k), int(x)) for arm, k, x in zip("ab", n, c,
                                                                             strict=True))
        low, high = compare_accuracy(a, b).ci95  # type: ignore[union-attr]
        covered += low <= p[1] - p[0] <= high
        w_low, w_high = wilson_interval(int(c[0]), int(n[0]))  # type: ignore[misc]
        wilson_covered += w_low <= p[0] <= w_high
    print(f"2. over {runs} simulated experiments (accuracies U(0.3, 0.9), 100-800 feedback "
          f"per arm): difference's 95% interval covers the truth in {covered / runs:.1%}; "
          f"an arm's Wilson interval in {wilson_covered / runs:.1%}")
    looks = runs // 4
    declared = naive = 0
    for _ in range(looks):
        p = float(rng.uniform(0.3, 0.9))
        x, y = np.cumsum(rng.random(2000) < p), np.cumsum(rng.random(2000) < p)
        steps = range(20, 2001, 20)
        totals = [(ArmTotals("a", k, k, int(x[k - 1])), ArmTotals("b", k, k, int(y[k - 1])))
                  for k in steps]
        declared += any(difference_sequence(a, b).can_stop for a, b in totals)
        naive += any(compare_accuracy(a, b).p_value < 0.05  # type: ignore[union-attr]
                     for a, b in totals)
    print(f"   equal arms, a look every 20 feedback per arm up to 2000 ({looks} runs): the "
          f"always-valid rule declares a winner in {declared / looks:.1%}; the fixed-sample "
          f"z-test peeked at the same looks in {naive / looks:.1%}")
    stops: list[int] = []
    wrong = 0
    for _ in range(looks):
        x, y = np.cumsum(rng.random(4000) < 0.6), np.cumsum(rng.random(4000) < 0.7)
        for k in range(20, 4001, 20):
            seq = difference_sequence(ArmTotals("a", k, k, int(x[k - 1])),
                                      ArmTotals("b", k, k, int(y[k - 1])))
            if seq.can_stop:
                stops.append(k)
                wrong += seq.winner == "a"
                break
    print(f"   accuracies 0.6 vs 0.7: stopped in {len(stops) / looks:.1%} of {looks} runs "
          f"(median at {int(np.median(stops)) if stops else '-'} feedback per arm), naming the "
          f"worse arm {wrong} times")


@asynccontextmanager
async def gateway(items: list[TaskItem], data_dir: Path, **extra: Any
                  ) -> AsyncIterator[httpx.AsyncClient]:
    sim = create_sim_app(SimConfig(World.load(), TaskRegistry(items), latency_per_token_s=0,
                                   ttft_s=0))
    settings = Settings(upstreams=[UpstreamSettings(url="http://sim.test/v1", name="sim",
                                                    models=[MODEL_ID])],
                        data_dir=data_dir, retry_backoff_s=0.0, **extra)
    app = create_app(settings, transport=httpx.ASGITransport(app=sim))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test", timeout=60) as client):
        yield client


async def ask(client: httpx.AsyncClient, item: TaskItem, seed: int, router: dict[str, Any],
              **extra: Any) -> dict[str, Any]:
    reply = (await client.post("/v1/chat/completions", json={
        "model": MODEL_ID, "seed": seed, "router": router,
        "messages": [{"role": "user", "content": item.prompt()}], **extra})).json()
    correct = check(item, reply["choices"][0]["message"]["content"] or "")
    await client.post("/v1/feedback", json={"id": reply["router"]["decision_id"],
                                            "correct": correct})
    return {**reply["router"], "correct": correct}


async def adaptive(requests: int) -> None:
    items = load_suite("graph_connectivity", 60)
    experiments = {"chain": {"adaptive": True, "min_feedback": 30, "floor": 0.05, "arms": {
        "short": {"policy": "fixed:direct@256"}, "long": {"policy": "fixed:sequential@1024"}}}}
    arms = []
    with tempfile.TemporaryDirectory() as tmp:
        async with gateway(items, Path(tmp), experiments=experiments) as client:
            for i in range(requests):
                arms.append((await ask(client, items[i % len(items)], i,
                                       {"experiment": "chain"}, user=f"user-{i}"))["arm"])
            report = (await client.get("/v1/experiments/chain")).json()
    windows = [arms[i:i + 100].count("long") / 100 for i in range(0, requests - 99, 50)]
    first = next((i for i in range(requests - 99) if arms[i:i + 100].count("long") > 80),
                 None)
    print(f"3. adaptive allocation, direct@256 vs sequential@1024 on graph connectivity "
          f"({requests} requests): share of sequential per 100 requests from request 0, 50, "
          f"...: {', '.join(f'{w:.2f}' for w in windows)}; first window above 80% starts at "
          f"request {first}")
    print("   final report: " + ", ".join(
        f"{arm} share {row['share']:.3f} accuracy {row['accuracy']:.3f} "
        f"{[round(x, 3) for x in row['accuracy_ci95']]} ({row['feedback']} feedback)"
        for arm, row in report["arms"].items()) + f"; leader {report['leader']}, "
          f"sequential interval {[round(x, 3) for x in report['sequential']['ci95']]}, "
          f"winner {report['sequential']['winner']}")


async def replays(runs: int, logged: int) -> None:
    items = (load_suite("graph_connectivity", 40) + load_suite("mc_guess", 40)
             + load_suite("arithmetic_chain", 40))
    world = World.load()
    plan = fixed_plan("sequential", 1024)
    truth = float(np.mean([world.plan_accuracy(i.family, i.difficulty, plan) for i in items]))
    values: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    inside: Counter[str] = Counter()
    ess = []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            explorer = "random:direct@256,parallel_vote@768,sequential@1024"
            async with gateway(items, Path(tmp), policies={"explorer": explorer}) as client:
                gw = client._transport.app.state.gateway  # type: ignore[attr-defined]
                gw.router.policies["explorer"].rng = random.Random(run)
                for i in range(logged):
                    await ask(client, items[i % len(items)], run * 100_000 + i,
                              {"policy": "explorer"})
                await gw.request_log.flush()
                decisions = logged_decisions(await gw.request_log.backend.records())
        estimate = replay(decisions, parse_policy("fixed:sequential@1024"))
        ess.append(estimate.ess)
        for name, e in estimate.accuracy.items():
            values[name].append(e.value)
            inside[name] += e.ci95[0] <= truth <= e.ci95[1]
    print(f"4. off-policy replay of fixed:sequential@1024 from {runs} exploring logs of "
          f"{logged} requests (true simulated accuracy {truth:.3f}; mean effective sample "
          f"size {np.mean(ess):.0f}):")
    for name, got in values.items():
        print(f"   {name:5} mean estimate {np.mean(got):.3f} (sd {np.std(got):.3f}); 95% "
              f"interval holds the truth in {inside[name]} of {runs} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--logged", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    split(args.users)
    statistics(args.runs, args.seed)
    asyncio.run(adaptive(args.requests))
    asyncio.run(replays(args.replays, args.logged))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
