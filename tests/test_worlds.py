"""The randomized world family (SIMULATION) keeps its invariants: ranges, world-type rates,
determinism, truncation, realistic spend, ties in flat worlds."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from router_models.plan import Plan
from router_models.worlds import (
    FLAT_RANGES,
    KINDS,
    LITERATURE,
    LOG_UNIFORM,
    QUERY_TOKENS,
    RANGES,
    WORLD_TYPES,
    draw_world,
    vote_accuracy,
)

SEEDS = range(300)


def _plans() -> list[Plan]:
    return [Plan("direct", 64, depth_tokens=64), Plan("direct", 512, depth_tokens=512),
            Plan("sequential", 4096, depth_tokens=4096),
            Plan("parallel_vote", 768, width=3, depth_tokens=256),
            Plan("parallel_vote", 4096, width=8, depth_tokens=512),
            Plan("search", 1152, depth_tokens=1024, search_calls=3)]


def test_parameters_stay_in_their_axis_ranges() -> None:
    for seed in SEEDS:
        world = draw_world(seed)
        for kind, curve in world.curves.items():
            ranges = FLAT_RANGES if world.world_type == "flat" else RANGES[curve.axis]
            for name, value in curve.params.items():
                lo, hi = ranges[name]
                if name == "accuracy1" and world.world_type == "flat":
                    hi = min(hi, curve.params["accuracy0"])
                assert lo - 1e-12 <= value <= hi + 1e-12, (seed, kind, name, value)
        assert math.isclose(sum(c.share for c in world.curves.values()), 1.0)


def test_world_types_come_at_their_rates_with_their_axes() -> None:
    worlds = [draw_world(seed) for seed in range(1000)]
    counts = Counter(w.world_type for w in worlds)
    for world_type, rate in WORLD_TYPES.items():
        # Three binomial standard deviations at n = 1000 are at most 4.7 points.
        assert abs(counts[world_type] / 1000 - rate) < 0.047, counts
    for w in worlds:
        if w.world_type == "literature":
            assert w.axes == LITERATURE
        elif w.world_type == "reversed":
            assert all(w.axes[k] != LITERATURE[k] for k in KINDS)
            assert sorted(w.axes.values()) == sorted(LITERATURE.values())
        else:
            assert set(w.axes.values()) == {"nothing"}
    reversed_axes = Counter(w.axes["chain"] for w in worlds if w.world_type == "reversed")
    assert set(reversed_axes) == {"votes", "search", "nothing"}  # chains may reward votes


def test_a_world_and_its_prompts_are_a_function_of_the_seed() -> None:
    a, b = draw_world(1234), draw_world(1234)
    assert a == b
    pa, pb = a.prompts(40), b.prompts(40)
    assert pa.messages == pb.messages
    for name in ("difficulty", "accuracy", "answer_tokens", "top_wrong", "chance"):
        assert np.array_equal(getattr(pa, name), getattr(pb, name))
    assert draw_world(1235) != a
    train = a.prompts(40, split="train")
    assert not {str(m) for m in train.messages} & {str(m) for m in pa.messages}


def test_prompt_counts_follow_shares_or_are_per_kind() -> None:
    world = draw_world(7)
    per_kind = world.prompts(25, per_kind=True)
    assert Counter(per_kind.kind.tolist()) == {k: 25 for k in range(len(KINDS))}
    shared = world.prompts(400)
    for k, kind in enumerate(KINDS):
        assert abs((shared.kind == k).sum() - 400 * world.curves[kind].share) <= 1


def test_phrasing_varies_across_worlds() -> None:
    texts = {draw_world(seed).prompts(1, per_kind=True).messages[0][-1]["content"][:12]
             for seed in range(40)}
    assert len(texts) > 10
    templates = Counter(t for seed in range(60) for t in draw_world(seed).prompts(
        8, per_kind=True).templates)
    assert len(templates) >= 15


@pytest.mark.parametrize("seed", [0, 3, 11, 1001])
def test_a_sample_cut_before_its_answer_is_a_guess(seed: int) -> None:
    world = draw_world(seed)
    prompts = world.prompts(200)
    for plan in (Plan("direct", 1, depth_tokens=1), Plan("parallel_vote", 5, width=5,
                                                         depth_tokens=1)):
        accuracy, _ = world.outcome(prompts, plan)
        assert np.allclose(accuracy, prompts.chance, atol=1e-6)
    # Well below each prompt's own answer length: still chance, prompt by prompt.
    short = prompts.answer_tokens > 200
    if short.any():
        accuracy, _ = world.outcome(prompts, Plan("direct", 8, depth_tokens=8))
        assert np.allclose(accuracy[short], prompts.chance[short], atol=1e-3)


@pytest.mark.parametrize("seed", [1, 2, 5, 1002])
def test_spend_is_what_samples_use_never_more_than_allowed(seed: int) -> None:
    world = draw_world(seed)
    prompts = world.prompts(200)
    for plan in _plans():
        accuracy, tokens = world.outcome(prompts, plan)
        assert ((accuracy >= 0) & (accuracy <= 1)).all()
        cap = plan.width * plan.depth_tokens + QUERY_TOKENS * max(0, plan.search_calls - 1)
        assert (tokens <= cap + 1e-6).all()
        assert (tokens > 0).all()
    # A chain allowed far more than it needs stops early. A vote spends between its first wave
    # (three samples that agree: it stops, as the gateway's early stopping does) and its width.
    _, long_chain = world.outcome(prompts, Plan("sequential", 32768, depth_tokens=32768))
    assert np.median(long_chain) < 32768 / 4
    _, one = world.outcome(prompts, Plan("direct", 300, depth_tokens=300))
    _, five = world.outcome(prompts, Plan("parallel_vote", 1500, width=5, depth_tokens=300))
    assert (five >= 3 * one - 1e-6).all() and (five <= 5 * one + 1e-6).all()
    _, three = world.outcome(prompts, Plan("parallel_vote", 900, width=3, depth_tokens=300))
    assert np.allclose(three, 3 * one)


def test_realized_spend_averages_to_the_expected_spend() -> None:
    world = draw_world(21)
    prompts = world.prompts(50)
    plan = Plan("parallel_vote", 1024, width=4, depth_tokens=256)
    _, tokens = world.outcome(prompts, plan)
    rng = np.random.default_rng(0)
    draws = [world.realize(prompts, 3, plan, rng) for _ in range(4000)]
    assert all(0 <= spent <= 1024 for _, spent in draws)
    assert abs(np.mean([s for _, s in draws]) - tokens[3]) < 0.03 * tokens[3] + 2
    accuracy = world.outcome(prompts, plan)[0][3]
    assert abs(np.mean([c for c, _ in draws]) - accuracy) < 0.03


def test_a_realized_vote_stops_early_as_often_as_the_expected_spend_says() -> None:
    # Training feeds the policy realized spends and samples; they must agree with the spend
    # the evaluation expects, early stopping included (a vote of 8 whose first three samples
    # agree draws and reports only those three).
    world = draw_world(21)
    prompts = world.prompts(50)
    plan = Plan("parallel_vote", 8 * 256, width=8, depth_tokens=256)
    _, tokens = world.outcome(prompts, plan)
    one = world.outcome(prompts, Plan("direct", 256, depth_tokens=256))[1]
    index = int(np.argmin(tokens / one))  # the prompt whose vote stops early most often
    assert tokens[index] < 6 * one[index]
    rng = np.random.default_rng(0)
    draws = [world.realize_usage(prompts, index, plan, rng) for _ in range(3000)]
    assert {len(samples) for _, _, samples in draws} == {3, 8}
    mean_spent = np.mean([spent for _, spent, _ in draws])
    assert abs(mean_spent - tokens[index]) < 0.03 * tokens[index] + 2


def test_flat_worlds_tie_every_plan_that_finishes() -> None:
    flat = [draw_world(s) for s in range(60) if draw_world(s).world_type == "flat"]
    assert flat
    for world in flat:
        prompts = world.prompts(100)
        finishing = [Plan("direct", 20000, depth_tokens=20000),
                     Plan("sequential", 30000, depth_tokens=30000),
                     Plan("parallel_vote", 5 * 20000, width=5, depth_tokens=20000),
                     Plan("search", 20064, depth_tokens=20000, search_calls=2)]
        accuracies = [world.outcome(prompts, p)[0] for p in finishing]
        for a in accuracies[1:]:
            assert np.allclose(a, accuracies[0], atol=1e-6)


def _mean_by_kind(world, prompts, plan, kind: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    accuracy, tokens = world.outcome(prompts, plan)
    rows = prompts.kind == KINDS.index(kind)
    return float(accuracy[rows].mean()), float(tokens[rows].mean())


def test_literature_worlds_reward_what_the_literature_found_on_average() -> None:
    worlds = [w for w in (draw_world(s) for s in range(80)) if w.world_type == "literature"]
    gains: dict[str, list[float]] = {k: [] for k in KINDS}
    for world in worlds:
        prompts = world.prompts(60, per_kind=True)
        # guesses: a vote of samples long enough to finish beats one of them
        one = _mean_by_kind(world, prompts, Plan("direct", 1024, depth_tokens=1024), "guess")
        vote = _mean_by_kind(world, prompts, Plan("parallel_vote", 8192, width=8,
                                                  depth_tokens=1024), "guess")
        gains["guess"].append(vote[0] - one[0])
        # chains: one long chain beats a short answer
        short = _mean_by_kind(world, prompts, Plan("direct", 256, depth_tokens=256), "chain")
        long = _mean_by_kind(world, prompts, Plan("sequential", 8192, depth_tokens=8192),
                             "chain")
        gains["chain"].append(long[0] - short[0])
        # facts: retrieval beats the closed book at the same depth
        closed = _mean_by_kind(world, prompts, Plan("direct", 1024, depth_tokens=1024), "fact")
        found = _mean_by_kind(world, prompts, Plan("search", 1152, depth_tokens=1024,
                                                   search_calls=3), "fact")
        gains["fact"].append(found[0] - closed[0])
        # easy: nothing pays much past a short answer
        cheap = _mean_by_kind(world, prompts, Plan("direct", 256, depth_tokens=256), "easy")
        big = _mean_by_kind(world, prompts, Plan("parallel_vote", 8192, width=8,
                                                 depth_tokens=1024), "easy")
        gains["easy"].append(big[0] - cheap[0])
    assert np.median(gains["guess"]) > 0.05
    assert np.median(gains["chain"]) > 0.15
    assert np.median(gains["fact"]) > 0.2
    assert np.median(gains["easy"]) < 0.05


def test_vote_accuracy_is_the_exact_multinomial_sum() -> None:
    rng = np.random.default_rng(1)
    answered, right, top = 0.8, 0.45, 0.3
    other = 1 - right - top
    exact = vote_accuracy(np.array([answered]), np.array([right]), np.array([top]),
                          np.array([other]), np.array([0.25]), 5)[0]
    probs = [answered * right, answered * top, answered * other, 1 - answered]
    counts = rng.multinomial(5, probs, size=400_000)
    win = np.where(counts[:, 0] > counts[:, 1], 1.0,
                   np.where((counts[:, 0] == counts[:, 1]) & (counts[:, 0] > 0), 0.5, 0.0))
    win = np.where(counts[:, 3] == 5, 0.25, win)
    assert abs(exact - win.mean()) < 0.004
    single = vote_accuracy(np.array([0.5]), np.array([0.9]), np.array([0.1]),
                           np.array([0.0]), np.array([0.5]), 1)[0]
    assert math.isclose(single, 0.5 * 0.9 + 0.5 * 0.5)


def test_token_ranges_are_drawn_log_uniformly() -> None:
    assert set(RANGES["votes"]) >= LOG_UNIFORM
    lengths = [draw_world(s).curves["guess"].params["answer_tokens"] for s in range(400)
               if draw_world(s).world_type == "literature"]
    lo, hi = RANGES["votes"]["answer_tokens"]
    # Log-uniform: the geometric middle splits the draws in half.
    below = np.mean(np.array(lengths) < math.sqrt(lo * hi))
    assert 0.4 < below < 0.6
