"""The world model (SIMULATION) shows the published shapes it is built to show."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from router_models.plan import Plan
from router_models.simulation import CORRECT, NO_ANSWER, World, WorldError, vote_accuracy

INDEPENDENT = ("independent_mc", "knowledge_mc", "commonsense_mc", "yes_no")
COMPOSITIONAL = ("graph_connectivity", "arithmetic_chain", "word_math")


@pytest.fixture(scope="module")
def world() -> World:
    return World.load()


def test_shipped_world_lists_every_family(world: World) -> None:
    assert set(world.families()) == {*INDEPENDENT, *COMPOSITIONAL, "multihop_qa"}
    assert world.default_family in world.families()


@pytest.mark.parametrize("family", INDEPENDENT)
@pytest.mark.parametrize("difficulty", [0.1, 0.5])
def test_vote_beats_one_chain_on_independent_families_at_equal_tokens(
        world: World, family: str, difficulty: float) -> None:
    budget = 1024
    chain = world.plan_accuracy(family, difficulty, Plan("sequential", budget_tokens=budget))
    vote = world.plan_accuracy(family, difficulty,
                               Plan("parallel_vote", budget_tokens=budget, width=4))
    assert vote > chain + 0.05


@pytest.mark.parametrize("family", INDEPENDENT)
def test_one_chain_overthinks_past_its_peak(world: World, family: str) -> None:
    peak = world.needed_tokens(family, 0.3)
    at_peak = world.sample_correct_prob(family, 0.3, peak)
    assert at_peak > world.sample_correct_prob(family, 0.3, peak // 4)  # it rises ...
    assert at_peak > world.sample_correct_prob(family, 0.3, peak * 8) + 0.1  # ... then falls


@pytest.mark.parametrize("family", COMPOSITIONAL)
def test_one_long_chain_beats_a_vote_of_short_ones_on_compositional_families(
        world: World, family: str) -> None:
    need = world.needed_tokens(family, 0.5)
    budget = need + need // 2  # enough for one chain, not for half of it
    chain = world.plan_accuracy(family, 0.5, Plan("sequential", budget_tokens=budget))
    for width in (2, 4, 8):
        vote = world.plan_accuracy(family, 0.5,
                                   Plan("parallel_vote", budget_tokens=budget, width=width))
        assert chain > vote + 0.3


@pytest.mark.parametrize("family", COMPOSITIONAL)
@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_a_chain_shorter_than_the_needed_depth_is_at_chance(
        world: World, family: str, difficulty: float) -> None:
    need = world.needed_tokens(family, difficulty)
    chance = world.family(family).chance
    for depth in (world.answer_tokens, need - 1):
        assert world.sample_correct_prob(family, difficulty, depth) == pytest.approx(chance)
    assert world.sample_correct_prob(family, difficulty, need) > chance + 0.3


def test_a_vote_of_guesses_stays_at_chance(world: World) -> None:
    # Two options, every sample too short: the vote can only guess too.
    short = Plan("parallel_vote", budget_tokens=8 * 40, width=8)
    assert world.plan_accuracy("graph_connectivity", 1.0, short) == pytest.approx(0.5, abs=0.01)


def test_search_family_is_right_mostly_with_retrieved_facts(world: World) -> None:
    closed = world.plan_accuracy("multihop_qa", 0.5, Plan("direct", budget_tokens=512))
    opened = world.plan_accuracy("multihop_qa", 0.5,
                                 Plan("search", budget_tokens=512, search_calls=2))
    assert opened > closed + 0.4


def test_a_chain_cut_before_its_answer_states_none(world: World) -> None:
    dist = world.answer_distribution("knowledge_mc", 0.5, world.answer_tokens - 1)
    assert dist == {NO_ANSWER: 1.0}


def test_wrong_answers_have_a_plurality(world: World) -> None:
    dist = world.answer_distribution("commonsense_mc", 0.5, 160)
    wrong = sorted((p for label, p in dist.items() if label != CORRECT), reverse=True)
    assert wrong[0] > wrong[1] > wrong[-1] > 0
    assert sum(dist.values()) == pytest.approx(1.0)


def test_draws_follow_the_distribution_and_stay_within_depth(world: World) -> None:
    rng = random.Random(7)
    draws = [world.draw(rng, "yes_no", 0.3, 300) for _ in range(4000)]
    assert all(tokens <= 300 for _, tokens in draws)
    share = Counter(label for label, _ in draws)[CORRECT] / len(draws)
    assert share == pytest.approx(world.sample_correct_prob("yes_no", 0.3, 300), abs=0.03)


def test_compositional_chains_stop_when_done(world: World) -> None:
    need = world.needed_tokens("arithmetic_chain", 0.5)
    _, tokens = world.draw(random.Random(1), "arithmetic_chain", 0.5, 4 * need)
    assert tokens == need


def test_greedy_temperature_picks_the_mode(world: World) -> None:
    dist = world.answer_distribution("knowledge_mc", 0.1, 200, temperature=0)
    assert dist[CORRECT] == 1.0


@pytest.mark.parametrize("family", COMPOSITIONAL)
def test_a_greedy_guess_among_tied_options_is_right_by_chance(world: World, family: str
                                                              ) -> None:
    # Too short for the steps: every option is as likely, so greedy decoding picks one of
    # them, not the right one (the first key) every time.
    short = world.needed_tokens(family, 0.5) - 1
    dist = world.answer_distribution(family, 0.5, short, temperature=0)
    assert dist[CORRECT] == pytest.approx(world.family(family).chance)
    assert sum(dist.values()) == pytest.approx(1.0)


def test_plan_accuracy_is_deterministic(world: World) -> None:
    plan = Plan("parallel_vote", budget_tokens=1024, width=4)
    assert world.plan_accuracy("yes_no", 0.5, plan) == world.plan_accuracy("yes_no", 0.5, plan)


def test_vote_accuracy_matches_the_exact_binomial_majority() -> None:
    # Three samples, two answers, p = 0.7: P(at least 2 right) = 0.784.
    assert vote_accuracy({CORRECT: 0.7, "wrong:1": 0.3}, 3) == pytest.approx(0.784, abs=0.01)


def test_unknown_family_and_bad_files_are_world_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(WorldError, match="unknown family"):
        world.sample_correct_prob("nope", 0.5, 100)
    bad = tmp_path / "bad.yaml"
    bad.write_text("families:\n  x:\n    kind: magic\n")
    with pytest.raises(WorldError, match="kind"):
        World.load(bad)
    with pytest.raises(WorldError, match="cannot read"):
        World.load(tmp_path / "missing.yaml")
    bad.write_text("families:\n  x:\n    kind: independent\n    choices: 2\n"
                   "    peak_accuracy: [0.3, 0.2]\n")
    with pytest.raises(WorldError, match="peak_accuracy"):
        World.load(bad)
