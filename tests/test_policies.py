"""Policies: spec parsing, fixed and rules plans, and the learned policy's allocation,
exploration, learning and curriculum."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from router_models import budget
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies import (
    FixedPolicy,
    LearnedPolicy,
    PolicyError,
    RulesPolicy,
    kind_of,
    parse_policy,
)
from router_models.policies.learned import FORM_OFFSET, N_CONTEXT, UNKNOWN_FORM

EASY = Scores(difficulty=0.1, sequential=0.1, search=0.0)
HARD_CHAIN = Scores(difficulty=0.8, sequential=0.9, search=0.0)
FACTS = Scores(difficulty=0.6, sequential=0.2, search=0.9)


def _random_scores(n: int, seed: int = 0) -> list[Scores]:
    rng = np.random.default_rng(seed)
    return [Scores(*map(float, row)) for row in rng.random((n, 3))]


@pytest.mark.parametrize("spec", ["fixed:direct@256", "fixed:parallel_vote@1024",
                                  "fixed:sequential@2048", "fixed:search@768"])
def test_fixed_specs_give_that_plan_whatever_the_scores(spec):
    policy = parse_policy(spec)
    plans = {policy.plan(s) for s in (EASY, HARD_CHAIN, FACTS)}
    assert len(plans) == 1
    plan = plans.pop()
    assert f"fixed:{plan.strategy}@{plan.budget_tokens}" == spec == plan.policy
    assert plan.width * (plan.depth_tokens or 0) <= (plan.budget_tokens or 0)


@pytest.mark.parametrize("spec", ["fixed:direct", "fixed:vote@100", "fixed:direct@-5",
                                  "greedy", "fixed:direct@0", ""])
def test_bad_specs_are_refused(spec):
    with pytest.raises(PolicyError):
        parse_policy(spec)


@pytest.mark.parametrize("spec", ["fixed:parallel_vote@4096", "rules", "learned"])
@pytest.mark.parametrize("cap", [1, 50, 300, 1000])
def test_no_policy_exceeds_the_requests_budget(spec, cap):
    policy = parse_policy(spec)
    for scores in _random_scores(30):
        plan = policy.plan(scores, budget_tokens=cap)
        assert plan.budget_tokens is not None and plan.budget_tokens <= cap
        assert plan.width * (plan.depth_tokens or 1) <= cap


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("spec", ["fixed:direct@512", "rules", "learned"])
def test_a_forced_strategy_is_obeyed(spec, strategy):
    assert parse_policy(spec).plan(HARD_CHAIN, strategy=strategy).strategy == strategy


def test_shipped_rules_follow_their_thresholds():
    rules = RulesPolicy.from_yaml()
    assert rules.plan(FACTS).strategy == "search"
    assert rules.plan(HARD_CHAIN).strategy == "sequential"
    assert rules.plan(HARD_CHAIN).budget_tokens == 2048
    assert rules.plan(EASY).strategy == "direct"
    assert rules.plan(Scores(0.7, 0.1, 0.1)).strategy == "parallel_vote"
    assert rules.decide(EASY).plan.reason == "rule: easy"


def test_rules_come_from_a_yaml_file_and_bad_files_name_the_entry(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("rules:\n  - name: long\n    when: {difficulty: {min: 0.3, max: 0.9}}\n"
                    "    plan: {strategy: sequential, budget_tokens: 3000}\n"
                    "default: {plan: {strategy: direct, budget_tokens: 128}}\n")
    policy = parse_policy(f"rules:{good}")
    assert policy.plan(Scores(0.5, 0, 0)).budget_tokens == 3000
    assert policy.plan(Scores(0.95, 0, 0)).budget_tokens == 128
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - when: {sequentiality: {min: 1}}\n"
                   "    plan: {strategy: direct, budget_tokens: 1}\n"
                   "default: {plan: {strategy: direct, budget_tokens: 1}}\n")
    with pytest.raises(PolicyError, match="rules.0.when.sequentiality"):
        RulesPolicy.from_yaml(bad)


def test_lambda_bisection_meets_the_target_mean_budget_exactly():
    rng = np.random.default_rng(1)
    costs = np.array([256, 768, 1024, 2048, 4096], float)
    values = np.sort(rng.random((300, 5)), axis=1)  # more tokens never hurt here
    for target in (500.0, 900.0, 1500.0, 3000.0):
        for epsilon in (0.0, 0.1):
            a = budget.solve_lambda(values, costs, target, exploration=epsilon)
            low = budget.mean_spend(values, costs, a.lam_low, epsilon)
            high = budget.mean_spend(values, costs, a.lam_high, epsilon)
            assert a.mix * low + (1 - a.mix) * high == pytest.approx(target, abs=1e-6)
            assert a.feasible and a.spend == pytest.approx(target, abs=1e-6)
    # Below the cheapest spend (exploration alone costs 0.1 x mean cost): flagged infeasible.
    cheapest = 0.9 * 256 + 0.1 * costs.mean()
    a = budget.solve_lambda(values, costs, 300.0, exploration=0.1)
    assert not a.feasible and a.spend == pytest.approx(cheapest)


def test_lambda_bisection_is_not_thrown_off_by_costs_that_differ_by_float_noise():
    # Expected costs (budget x mean spent share) can differ by 1e-13 tokens; that gap once
    # set the bisection's upper end so high that 50 halvings stopped far above the answer.
    rng = np.random.default_rng(3)
    base = np.array([256, 768, 1024, 2048, 4096], float)
    costs = base + rng.integers(0, 2, (300, 5)) * 1e-13
    values = np.sort(rng.random((300, 5)), axis=1)
    a = budget.solve_lambda(values, costs, 1500.0)
    assert a.lam_high - a.lam_low < 1e-9 * max(a.lam_high, 1e-12)
    assert a.spend == pytest.approx(1500.0, abs=1e-6)
    assert a.lam_low > 0


def test_scores_round_trip_through_their_logged_form():
    for scores in (Scores(0.2, 0.7, 0.1), Scores(0.2, 0.7, 0.1, form="graph")):
        assert Scores.from_dict(scores.as_dict()) == scores
    assert "form" not in Scores(0.2, 0.7, 0.1).as_dict()
    with pytest.raises(KeyError):
        Scores.from_dict({"difficulty": 0.1, "sequential": 0.2})


def test_the_form_separates_prompts_that_score_alike():
    # Same three scores, opposite winners: only the form can tell them apart.
    choice = Scores(0.8, 0.9, 0.0, form="choice")
    numeric = Scores(0.8, 0.9, 0.0, form="numeric")
    policy = LearnedPolicy(target_tokens=2048, exploration=0.0, resolve_every=8)
    vote = next(p for p in policy.candidates if p.strategy == "parallel_vote")
    chain = next(p for p in policy.candidates if p.strategy == "sequential"
                 and p.budget_tokens == 2048)
    for _ in range(80):
        policy.update(choice, vote, True)
        policy.update(choice, chain, False)
        policy.update(numeric, vote, False)
        policy.update(numeric, chain, True)
    assert policy.plan(choice).strategy == "parallel_vote"
    assert policy.plan(numeric).strategy == "sequential"


def test_a_version_2_state_is_migrated_with_its_learning_kept(tmp_path):
    policy = LearnedPolicy(target_tokens=700)
    for scores in _random_scores(40, seed=7):  # no form: what version 2 could learn
        policy.update(scores, policy.plan(scores), scores.difficulty < 0.5)
    state = policy.state()
    n_blocks = policy.n_blocks
    theta = np.array(state["theta"]).reshape(n_blocks, N_CONTEXT)
    assert not theta[:, FORM_OFFSET:].any()  # form columns untouched without forms
    cov = np.array(state["cov"]).reshape(n_blocks, N_CONTEXT, n_blocks, N_CONTEXT)
    old = dict(state, state_version=2,
               theta=theta[:, :FORM_OFFSET].reshape(-1).tolist(),
               cov=cov[:, :FORM_OFFSET, :, :FORM_OFFSET].reshape(
                   n_blocks * FORM_OFFSET, -1).tolist(),
               reference=[row[:3] for row in state["reference"]])
    (tmp_path / "v2.json").write_text(json.dumps(old))
    again = LearnedPolicy.load(tmp_path / "v2.json")
    rows = np.array([[0.3, 0.6, 0.1, UNKNOWN_FORM], [0.9, 0.2, 0.7, UNKNOWN_FORM]])
    np.testing.assert_allclose(again.expected_accuracy(rows), policy.expected_accuracy(rows),
                               atol=1e-6)
    np.testing.assert_allclose(again.cov, policy.cov, atol=1e-6)
    assert len(again.reference) == len(policy.reference)
    with pytest.raises(PolicyError, match="version 1"):
        LearnedPolicy.from_state(dict(state, state_version=1))


def test_spend_is_monotone_in_lambda():
    rng = np.random.default_rng(2)
    values, costs = rng.random((200, 6)), np.array([1, 2, 4, 8, 16, 32], float) * 128
    spends = [budget.mean_spend(values, costs, lam) for lam in np.geomspace(1e-7, 1e-1, 40)]
    assert all(a >= b for a, b in zip(spends, spends[1:], strict=False))


def test_learned_policy_meets_its_target_over_its_reference_prompts():
    policy = LearnedPolicy(target_tokens=900, exploration=0.05)
    for scores in _random_scores(256, seed=4):
        policy.decide(scores)
    allocation = policy.resolve()
    assert allocation.spend == pytest.approx(900, abs=1e-6)
    rows = np.array([(s[0], s[1], s[2]) for s in policy.reference])
    expected = []
    for row in rows:
        probs, _, _ = policy.distribution(Scores(*row))
        expected.append(probs @ policy.costs)
    assert np.mean(expected) == pytest.approx(900, abs=1e-6)


def test_exploration_probabilities_sum_to_one_and_the_chosen_ones_are_logged():
    policy = LearnedPolicy(exploration=0.2)
    n = len(policy.candidates)
    for scores in _random_scores(20, seed=5):
        decision = policy.decide(scores, rng=random.Random(0))
        probs = [c.probability for c in decision.candidates]
        assert sum(probs) == pytest.approx(1.0)
        assert min(probs) >= 0.2 / n - 1e-12
        chosen = [c for c in decision.candidates if c.plan == dataclass_plan(decision.plan)]
        assert chosen and chosen[0].probability == pytest.approx(decision.plan.probability)


def dataclass_plan(plan: Plan) -> Plan:
    return Plan(plan.strategy, plan.budget_tokens, plan.width, plan.depth_tokens,
                plan.search_calls)


def test_without_exploration_the_choice_is_deterministic_and_the_restricted_set_sums_to_one():
    policy = LearnedPolicy(exploration=0.0)
    decision = policy.decide(HARD_CHAIN, budget_tokens=1100, strategy="parallel_vote")
    assert {c.plan.strategy for c in decision.candidates} == {"parallel_vote"}
    assert all(c.plan.budget_tokens <= 1100 for c in decision.candidates)
    assert sum(c.probability for c in decision.candidates) == pytest.approx(1.0)


def test_feedback_moves_the_choice_to_the_plan_that_works():
    policy = LearnedPolicy(target_tokens=2048, exploration=0.0, resolve_every=8)
    before = policy.plan(HARD_CHAIN)
    assert before.strategy == "sequential"
    vote = next(p for p in policy.candidates if p.strategy == "parallel_vote")
    for _ in range(60):
        policy.update(HARD_CHAIN, policy.plan(HARD_CHAIN), False)
        policy.update(HARD_CHAIN, vote, True)
    assert policy.plan(HARD_CHAIN).strategy == "parallel_vote"


def test_curriculum_is_generous_without_feedback_and_tightens_with_it():
    policy = LearnedPolicy(curriculum_floor=0.25, curriculum_half=10)
    kind = "hard/chain/closed"
    assert policy.budgets()[kind]["lambda_scale"] == pytest.approx(0.25)
    for _ in range(90):
        policy.update(HARD_CHAIN, policy.plan(HARD_CHAIN), True)
    row = policy.budgets()[kind]
    assert row["feedback"] == 90 and row["lambda_scale"] == pytest.approx(0.25 + 0.75 * 0.9)


def test_update_rejects_scores_outside_zero_one():
    with pytest.raises(ValueError):
        LearnedPolicy().update(EASY, Plan("direct", 256), 1.5)


def test_learned_state_round_trips_through_json(tmp_path):
    policy = LearnedPolicy(target_tokens=700, exploration=0.1)
    for scores in _random_scores(40, seed=6):
        policy.update(scores, policy.plan(scores), scores.difficulty < 0.5)
    policy.save(tmp_path / "learned.json")
    again = parse_policy(f"learned:{tmp_path / 'learned.json'}")
    assert isinstance(again, LearnedPolicy)
    assert json.loads((tmp_path / "learned.json").read_text())["config"]["target_tokens"] == 700
    np.testing.assert_allclose(again.expected_accuracy(np.array([[0.3, 0.6, 0.1]])),
                               policy.expected_accuracy(np.array([[0.3, 0.6, 0.1]])), atol=1e-6)
    again.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "learned.json").read_text()


def test_fixed_policy_from_spec_names_itself():
    assert FixedPolicy.from_spec("fixed:sequential@512").name == "fixed:sequential@512"


def test_reported_spend_lowers_a_plans_expected_cost_for_that_kind_only():
    policy = LearnedPolicy()
    chain = next(i for i, p in enumerate(policy.candidates) if p.budget_tokens == 4096)
    kind = np.array([kind_of(HARD_CHAIN)])
    other = np.array([kind_of(EASY)])
    assert policy.expected_cost(kind)[0, chain] == 4096
    for _ in range(18):
        policy.update(HARD_CHAIN, policy.candidates[chain], True, spent_tokens=1024)
    assert policy.expected_cost(kind)[0, chain] == pytest.approx(4096 * (18 * 0.25 + 2) / 20)
    assert policy.expected_cost(other)[0, chain] == 4096


def test_the_priors_majority_vote_is_the_condorcet_jury_probability():
    from router_models.policies.learned import _majority, _plan_arrays
    plans = (Plan("parallel_vote", 768, width=3, depth_tokens=256),
             Plan("parallel_vote", 512, width=2, depth_tokens=256),
             Plan("direct", 256, depth_tokens=256))
    p = np.array([[0.7, 0.6, 0.9]])
    # 3 voters: P(2 or 3 right); 2 voters: both right, plus half of one-one ties; 1 voter: p.
    expected = [3 * 0.7 ** 2 * 0.3 + 0.7 ** 3, 0.6 ** 2 + 0.5 * 2 * 0.6 * 0.4, 0.9]
    np.testing.assert_allclose(_majority(p, _plan_arrays(plans))[0], expected, rtol=1e-12)
