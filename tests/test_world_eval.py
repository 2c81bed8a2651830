"""The randomized-world evaluation (SIMULATION): equal-token matching, the oracle, the
training loop through the public policy interface, and a randomized world served over HTTP."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from router_models.classifier import Classifier
from router_models.plan import Plan
from router_models.policies import parse_policy
from router_models.simulation import CORRECT, NO_ANSWER
from router_models.tasks.registry import TaskRegistry
from router_models.world_backend import WorldReasoner
from router_models.world_eval import (
    PlanTable,
    WorldResult,
    best_fixed,
    collection_coverage,
    evaluate_policy,
    expected_figures,
    fixed_at_tokens,
    fixed_plan_of,
    grouped_oracle,
    indexed_kinds,
    kind_oracle,
    observable_groups,
    oracle_plans,
    pick_seeds,
    policy_factory,
    read_prompts,
    set_up_world,
)
from router_models.worlds import KINDS, draw_world
from service.sim import SimConfig, create_sim_app


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


@pytest.mark.parametrize("seed", [4, 1003])
@pytest.mark.parametrize("spec", ["fixed:direct@512", "fixed:parallel_vote@1024",
                                  "fixed:sequential@3000", "fixed:search@768"])
def test_a_fixed_policy_matched_with_itself_differs_by_nothing(
        classifier: Classifier, seed: int, spec: str) -> None:
    world = draw_world(seed)
    prompts = world.prompts(120)
    routed = read_prompts(prompts, classifier)
    table = PlanTable(world, prompts)
    figures = expected_figures(parse_policy(spec), routed, table, random.Random(0))
    strategy = spec.split(":")[1].split("@")[0]
    match = fixed_at_tokens(table, strategy, figures.tokens, routed[0].scores)
    assert abs(match.tokens - figures.tokens) < 1e-6 * max(1.0, figures.tokens)
    assert abs(match.accuracy - figures.accuracy) < 1e-6
    assert not match.saturated
    # The best fixed strategy is at least as good, and the per-kind oracle at least that.
    best = best_fixed(table, figures.tokens, routed[0].scores)
    assert best.accuracy >= figures.accuracy - 1e-9
    plans = oracle_plans(routed[0].scores, [fixed_plan_of(best.strategy, b, routed[0].scores)
                                            for b in best.budgets])
    assert kind_oracle(table, plans, figures.tokens) >= best.accuracy - 1e-9


def test_a_strategy_that_cannot_spend_the_target_is_marked_saturated(
        classifier: Classifier) -> None:
    world = draw_world(8)
    prompts = world.prompts(60)
    table = PlanTable(world, prompts)
    scores = read_prompts(prompts, classifier)[0].scores
    # Far more than a direct answer spends at any budget: samples stop on their own.
    match = fixed_at_tokens(table, "direct", 10 ** 6, scores)
    assert match.saturated and match.tokens < 10 ** 6


def test_the_oracle_spends_what_it_is_given_and_grows_with_it(classifier: Classifier) -> None:
    world = draw_world(2)
    prompts = world.prompts(120)
    table = PlanTable(world, prompts)
    plans = oracle_plans(read_prompts(prompts, classifier)[0].scores)
    low, high = kind_oracle(table, plans, 200.0), kind_oracle(table, plans, 2000.0)
    assert 0 <= low <= high <= 1


def test_a_world_evaluation_runs_through_decide_and_update(classifier: Classifier) -> None:
    setup = set_up_world(1005, classifier, feedback_per_kind=20, held_out=80)
    for spec in ("rules", "learned"):
        result = evaluate_policy(setup, policy_factory(spec), spec, 20)
        assert isinstance(result, WorldResult)
        assert result.feedbacks == 80
        assert 0 <= result.accuracy <= 1 and result.tokens > 0
        assert result.fixed.accuracy <= result.oracle + 1e-9
        assert result.trained_fixed.accuracy <= result.trained_oracle + 1e-9
        if spec == "rules":  # rules do not learn: feedback changes nothing
            assert result.trained_accuracy == pytest.approx(result.accuracy)


def test_feedback_moves_the_learned_policy_in_a_world(classifier: Classifier) -> None:
    setup = set_up_world(1007, classifier, feedback_per_kind=30, held_out=60)
    make = policy_factory("learned")
    before = [make().decide(r.scores, r.features, rng=random.Random(0)).plan
              for r in setup.held_out_routed]
    result = evaluate_policy(setup, make, "learned", 30)
    assert result.feedbacks == 120
    assert np.isfinite(result.trained_tokens) and before


async def test_a_randomized_world_is_served_over_http() -> None:
    world = WorldReasoner(1011, per_split=30)
    item = next(i for i in world.items if i.item_id.startswith("eval-"))
    config = SimConfig(world, TaskRegistry(world.items), latency_per_token_s=0, ttft_s=0,
                       world_name="randomized world 1011")
    transport = httpx.ASGITransport(app=create_sim_app(config))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "sim-reasoner", "n": 4, "max_tokens": 4096, "seed": 1,
            "messages": [{"role": "user", "content": item.question + "\n\nAnswer now."}]})
        cut = await client.post("/v1/chat/completions", json={
            "model": "sim-reasoner", "n": 4, "max_tokens": 1, "seed": 1,
            "messages": [{"role": "user", "content": item.question}]})
    body = reply.json()
    assert reply.status_code == 200
    assert body["simulation"]["family"] == item.family
    assert body["simulation"]["match"] == "registry"
    assert body["usage"]["completion_tokens"] <= 4 * 4096
    assert {c["finish_reason"] for c in cut.json()["choices"]} == {"length"}


def test_report_seeds_are_fresh_and_at_least_1000_tune_seeds_below() -> None:
    report = pick_seeds("report", 100)
    assert len(set(report)) == 100 and min(report) >= 1000
    assert pick_seeds("report", 100) != report  # drawn when the report runs
    tune = pick_seeds("tune", 50)
    assert max(tune) < 1000 and tune == pick_seeds("tune", 50)
    assert pick_seeds("3,7-9", 0) == [3, 7, 8, 9]


def test_sim_command_refuses_a_world_file_and_a_world_seed_together(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(["sim", "--world-seed", "3", "--world", str(tmp_path / "w.yaml")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["sim", "--world-tasks", str(tmp_path / "t.jsonl")]) == 2
    assert "needs --world-seed" in capsys.readouterr().err


def test_world_tasks_round_trip_into_the_eval_harness(tmp_path: Path) -> None:
    from router_models.tasks import load_tasks_file
    from service.commands.sim import _randomized

    path = tmp_path / "tasks.jsonl"
    world, registry, label = _randomized(1013, path)
    tasks = load_tasks_file(path)
    assert tasks and all(t.family in ("guess", "chain", "easy", "fact") for t in tasks)
    assert "randomized world 1013" in label
    # What the harness sends (question, blank line, instruction) is recognised as that item.
    found = registry.identify([("user", tasks[0].prompt())])
    assert found.how == "registry" and found.item.question == tasks[0].question


def test_the_served_world_draws_what_the_library_world_predicts() -> None:
    # Two-choice prompts have no scattered wrong answers, so a majority vote over the served
    # samples must match the library's exact vote accuracy; tokens must match on average.
    world = WorldReasoner(1017, per_split=60)
    items = [i for i in world.items if i.kind == "yes_no"][:4]
    assert items
    rng = random.Random(0)
    for item in items:
        index = world._index[(item.family, item.difficulty)]
        prompts = world._prompts[index[0]]
        depth = int(float(prompts.answer_tokens[index[1]]) * 1.2)
        plan = Plan("parallel_vote", 3 * depth, width=3, depth_tokens=depth)
        accuracy, tokens = world.world.outcome(prompts, plan)
        wins, spent, trials = 0.0, 0, 3000
        for _ in range(trials):
            draws = [world.draw(rng, item.family, item.difficulty, depth) for _ in range(3)]
            spent += sum(t for _, t in draws)
            votes = [label for label, _ in draws if label != NO_ANSWER]
            right, wrong = votes.count(CORRECT), len(votes) - votes.count(CORRECT)
            wins += 0.5 if not votes else (1.0 if right > wrong else 0.5 if right == wrong
                                           else 0.0)
        assert abs(wins / trials - accuracy[index[1]]) < 0.035
        assert abs(spent / trials - tokens[index[1]]) < 0.05 * tokens[index[1]] + 2


def test_finer_groups_never_lower_the_oracle(classifier: Classifier) -> None:
    world = draw_world(12)
    prompts = world.prompts(100)
    table = PlanTable(world, prompts)
    routed = read_prompts(prompts, classifier)
    plans = oracle_plans(routed[0].scores)
    tokens = 600.0
    one, _ = grouped_oracle(table, plans, tokens, np.zeros(len(prompts), int))
    by_kind = kind_oracle(table, plans, tokens)
    per_prompt, _ = grouped_oracle(table, plans, tokens, np.arange(len(prompts)))
    assert one <= by_kind + 1e-9 <= per_prompt + 2e-9
    observable, chosen = grouped_oracle(table, plans, tokens, observable_groups(routed))
    assert one - 1e-9 <= observable <= per_prompt + 1e-9 and chosen


def test_the_simulated_collection_covers_the_fact_questions_and_every_kind_search_helps():
    # A reversed world whose one-liners need the collection: their documents are indexed,
    # so the gateway's reading of the index finds them; the fact questions' documents are
    # there too (stale where retrieval does not help them).
    reversed_world = next(draw_world(s) for s in range(200)
                          if draw_world(s).axes.get("easy") == "search")
    assert set(indexed_kinds(reversed_world)) == {"fact", "easy"}
    literature = next(draw_world(s) for s in range(200)
                      if draw_world(s).world_type == "literature")
    assert indexed_kinds(literature) == ("fact",)
    prompts = reversed_world.prompts(400, split="eval")
    shares = collection_coverage(prompts, np.random.default_rng(0), ("fact", "easy"))
    held = np.isin(prompts.kind, [KINDS.index("fact"), KINDS.index("easy")])
    assert (shares[held] >= 0.5).all()
    assert (shares[~held] >= 0.5).mean() < 0.15  # by chance only


def test_policy_sim_passes_learned_settings_through():
    # bench/policy_sim.py --learned NAME=VALUE: the settings a README figure was measured with
    # (exploration 0.2) reach the learned policy the worlds evaluate; a name LearnedPolicy
    # does not take is refused rather than ignored.
    from bench import policy_sim

    options = policy_sim.learned_options(["exploration=0.2", "vote_width=16"])
    assert options == {"exploration": 0.2, "vote_width": 16}
    assert isinstance(options["vote_width"], int)
    built = policy_sim.policy_factory("learned", **options)()
    assert built.exploration == 0.2 and built.vote_width == 16
    with pytest.raises(ValueError, match="nope"):
        policy_sim.learned_options(["nope=1"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        policy_sim.learned_options(["exploration"])
