"""Confidence-aware early stopping replayed on recorded samples (bench/bank_stopping.py):
DeepConf's consensus stop and confidence filter, Beta rules on confidence-weighted votes, their
combination, and the cross-fitted sweeps of bench/bank_findings.py that choose among them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from bench.bank_findings import (
    ALL,
    CONFIDENCE_SWEEPS,
    confidence_rules,
    confidence_sweep_rules,
    cross_fitted_sweep,
    families,
    pooled,
    stopping_row,
)
from bench.bank_stopping import StoppedVote, StopRule, stopped_vote
from router_models.bank import Bank, BankRun

FIXTURE = Path(__file__).parent / "bank_fixture"
CONSENSUS = StopRule("DeepConf", "consensus", first_wave=2, consensus=0.8, weights="conf")
ONE_AT_A_TIME = StopRule("AC", "beta", first_wave=1, wave=1, threshold=0.95)


@pytest.fixture(scope="module")
def bank() -> Bank:
    return Bank.load(FIXTURE)


def test_consensus_stops_once_the_confidence_weighted_share_reaches_tau() -> None:
    answers = ["a", "b", "a", "a", "a", "a", "a", "a"]
    # "a" at confidence 9 against "b" at 1: a share of 9/10 after the warm-up of two.
    read, counts = CONSENSUS.replay(answers, [9, 1, 9, 9, 9, 9, 9, 9])
    assert read == 2 and max(counts, key=lambda a: counts[a]) == "a"
    assert counts["a"] / sum(counts.values()) == pytest.approx(0.9)
    # Unweighted, or weighted alike, the share is 1/2, 2/3, 3/4, then 4/5 after five samples.
    assert dataclasses.replace(CONSENSUS, weights="none").used(answers) == 5
    assert CONSENSUS.used(answers, [5.0] * 8) == 5


def test_consensus_at_tau_095_reads_on_until_the_votes_read_all_agree() -> None:
    rule = dataclasses.replace(CONSENSUS, consensus=0.95)
    assert rule.used(["a"] * 8, [3.0] * 8) == 2  # the warm-up agrees
    assert rule.used(["a", "b"] * 4, [3.0] * 8) == 8
    # Samples without an answer cast no vote, so they never reach a consensus.
    assert rule.used([None] * 8, [3.0] * 8) == 8
    # One answer and one answerless sample: the one vote is all the votes there are.
    assert rule.used(["a", None, "b", "b"], [3.0] * 4) == 2


def test_deepconf_filter_drops_the_samples_below_the_warmup_percentile() -> None:
    # keep_percent 50: the threshold is the median of the four warm-up confidences (6.5), so
    # the two "b" samples (4 and 5) cast no vote though they were read.
    rule = StopRule("filter", "consensus", first_wave=4, consensus=0.95, weights="conf",
                    keep_percent=50)
    answers = ["b", "a", "b", "a", "b", "b", "b", "b"]
    read, counts = rule.replay(answers, [4, 9, 5, 8, 9, 9, 9, 9])
    assert read == 4 and set(counts) == {"a"}
    # Without the filter, the weighted votes split 9:17 and the vote reads on to the end.
    unfiltered = dataclasses.replace(rule, keep_percent=0)
    assert unfiltered.used(answers, [4, 9, 5, 8, 9, 9, 9, 9]) == 8
    # DeepConf-low (keep the top 10%): the 90th percentile of 1, 2, 3, 4 is 3.7, so of the
    # warm-up only the sample at 4 could vote (it has no answer), and a later sample must
    # reach 3.7 too: "e" at 3.6 casts no vote, "f" at 3.8 does, and alone is a consensus.
    low = dataclasses.replace(rule, keep_percent=10)
    read, counts = low.replay(["a", "b", "c", None, "e", "f", "g", "h"],
                              [1, 2, 3, 4, 3.6, 3.8, 9, 9])
    assert read == 6 and list(counts) == ["f"]
    # With a warm-up whose most confident sample answers, that answer is the consensus.
    assert low.replay(["a", "b", "c", "d", "e"], [1, 2, 3, 4, 9]) == (4, {"d": 1.0})


def test_the_gateways_weights_slow_the_beta_rule() -> None:
    # Each vote weighs exp(lp_mean) = 0.5: after 4 agreeing samples Beta(3, 1) gives 0.875,
    # after 5 Beta(3.5, 1) 0.91; after 6 the leader's 3 votes outnumber the 2 samples left.
    half = [math.log(0.5)] * 8
    weighted = dataclasses.replace(ONE_AT_A_TIME, weights="gateway")
    assert ONE_AT_A_TIME.used(["a"] * 8) == 4
    assert weighted.used(["a"] * 8, lp_mean=half) == 6
    assert weighted.used(["a"] * 8, lp_mean=[0.0] * 8) == 4  # probability 1: one vote each


def test_deepconf_weights_count_at_most_one_vote_and_can_elect_another_answer() -> None:
    rule = StopRule("AC", "beta", first_wave=3, threshold=0.6, weights="conf")
    answers = ["a", "b", "b", "c", "c", "c", "c", "c"]
    # Relative to the most confident sample: a 1.0, each b 0.2. P(share > 0.5) for
    # Beta(2, 1.4) is 0.64 >= 0.6: stop after 3, electing "a".
    read, counts = rule.replay(answers, [10, 2, 2, 1, 1, 1, 1, 1])
    assert read == 3 and counts == pytest.approx({"a": 1.0, "b": 0.4})
    # Unweighted, "b" leads 2:1 and Beta(3, 2) gives 0.6875: stop after 3, electing "b".
    assert dataclasses.replace(rule, weights="none").replay(answers) == (3, {"a": 1.0,
                                                                           "b": 2.0})
    # Equal confidences weigh one vote each: the rule reads what the plain rule reads.
    plain = dataclasses.replace(ONE_AT_A_TIME, weights="conf")
    assert plain.used(["a"] * 8, [7.0] * 8) == ONE_AT_A_TIME.used(["a"] * 8) == 4


def test_beta_or_consensus_stops_at_whichever_holds_first() -> None:
    both = StopRule("both", "beta", first_wave=2, threshold=0.95, weights="conf",
                    consensus=0.95)
    assert both.used(["a"] * 8, [3.0] * 8) == 2  # the consensus, where Beta needs 4
    assert dataclasses.replace(both, consensus=0.0).used(["a"] * 8, [3.0] * 8) == 4
    # Split votes: neither holds until the remaining samples cannot change the leader.
    assert both.used(["a", "b", "a", "b", "a", "a", "a", "a"], [3.0] * 8) == 7


def test_a_confidence_floor_drops_votes_but_counts_the_samples_read() -> None:
    rule = StopRule("floor", "beta", first_wave=3, threshold=0.6, conf_floor=5.0)
    read, counts = rule.replay(["a", "b", "b", "b"], [6, 4, 4, 9])
    assert (read, counts) == (3, {"a": 1.0})  # Beta(2, 1): 0.75; the two b's cast no vote


def test_a_confidence_rule_refuses_missing_or_misaligned_confidences() -> None:
    with pytest.raises(ValueError, match="confidence"):
        CONSENSUS.used(["a", "b"])
    with pytest.raises(ValueError, match="confidence"):
        dataclasses.replace(ONE_AT_A_TIME, weights="gateway").used(["a"], conf=[1.0])
    with pytest.raises(ValueError, match="one confidence per sample"):
        CONSENSUS.used(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="unknown vote weights"):
        dataclasses.replace(ONE_AT_A_TIME, weights="entropy").used(["a"], [1.0])
    # Rules that read no confidence still replay from answers alone.
    assert dataclasses.replace(CONSENSUS, weights="none").used(["a", "a"]) == 2


def _with_confidences(run: BankRun, conf: list[float]) -> BankRun:
    samples = tuple(dataclasses.replace(s, conf_min=c)
                    for s, c in zip(run.samples, conf, strict=True))
    return dataclasses.replace(run, samples=samples)


def test_stopped_vote_answers_with_the_rules_filtered_vote(bank: Bank) -> None:
    run = next(r for r in bank.runs if r.key == "hotpotqa/hotpot-fixture/0")
    # paris, paris, paris, lyon (gold Lyon): the fixed vote is wrong. With the three paris
    # samples below the floor, only lyon votes.
    confident = _with_confidences(run, [2.0, 2.0, 2.0, 9.0])
    rule = StopRule("floor", "consensus", first_wave=4, consensus=0.95, weights="conf",
                    conf_floor=5.0)
    vote = stopped_vote(confident, rule)
    assert (vote.correct, vote.samples, vote.tokens) == (True, 4, 34)
    assert (vote.fixed_correct, vote.fixed_samples) == (False, 4)
    # The same rule on the recorded confidences (all 1.5, below the floor): no votes at all.
    assert not stopped_vote(run, rule).correct


def test_the_pooled_sweep_scores_every_item_out_of_sample(bank: Bank) -> None:
    runs = [r for r in families(bank)[ALL] if r.samples]
    hasty = StopRule("hasty", "beta", first_wave=1, threshold=0.5)  # reads one sample
    patient = StopRule("patient", "beta", first_wave=4, threshold=1.0)  # reads all four
    sweep = cross_fitted_sweep(runs, [patient, hasty])
    both = pooled(sweep)
    assert both is not None
    assert both.n == sum(r.row.n for r in sweep) == len(runs)
    assert both.accuracy.correct == sum(r.row.accuracy.correct for r in sweep)
    assert both.saving == 4.0 and both.saving_ci95 == (4.0, 4.0)  # every item reads one
    assert pooled(sweep[:1]) is None


def test_the_saving_interval_comes_from_the_t_interval_of_samples_read() -> None:
    # 4, 4, 5, 5 of 8 samples read: mean 4.5, standard error 0.2887, t(0.975, 3) = 3.1824,
    # so 4.5 +- 0.9187 samples, and 8 / 5.419 to 8 / 3.581 times fewer.
    votes = [StoppedVote(True, k, 10 * k, True, 8, 80) for k in (4, 4, 5, 5)]
    row = stopping_row("all", "r", votes)
    assert row.saving == pytest.approx(8 / 4.5)
    assert row.samples_ci95 == pytest.approx((3.5813, 5.4187), abs=1e-4)
    assert row.saving_ci95 == pytest.approx((8 / 5.4187, 8 / 3.5813), abs=1e-4)
    assert row.token_share == pytest.approx(18 / 32)
    assert stopping_row("all", "r", votes[:1]).saving_ci95 is None  # one item: no interval


def test_the_confidence_sweeps_cover_deepconf_weighted_beta_and_both() -> None:
    groups = {g: confidence_sweep_rules(g) for g in CONFIDENCE_SWEEPS}
    everything = groups[CONFIDENCE_SWEEPS[-1]]
    assert len(everything) == sum(len(groups[g]) for g in CONFIDENCE_SWEEPS[:-1])
    assert len({r.name for r in everything}) == len(everything)
    assert {r.kind for r in groups["DeepConf consensus"]} == {"consensus"}
    assert {r.keep_percent for r in groups["DeepConf consensus"]} == {0, 10, 90}
    assert {r.weights for r in groups["confidence-weighted Beta"]} == {"conf", "gateway"}
    assert all(r.consensus > 0 and r.kind == "beta"
               for r in groups["Beta or DeepConf consensus"])
    with pytest.raises(ValueError, match="unknown sweep"):
        confidence_sweep_rules("nope")
    named = {r.name: r for r in confidence_rules()}
    gateway = next(r for n, r in named.items() if n.startswith("gateway default"))
    assert (gateway.first_wave, gateway.weights, gateway.threshold) == (3, "gateway", 0.9)
    assert all(r.consensus == 0.95 for r in named.values() if r.kind == "consensus")
