"""The findings read off an outcome bank (bench/bank_findings.py, bench/bank_stopping.py), on
the hand-written fixture bank in tests/bank_fixture: early-stopping rules, votes against one
chain, the HotpotQA search axis, DeepConf votes, and the generator's files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.bank_figures import Cell, confidence_outcomes
from bench.bank_findings import (
    ALL,
    CONFIDENCE_SWEEPS,
    SWEEP_FUTILITY,
    Paired,
    agreement,
    confidence_auc,
    confidence_sweep_rules,
    cross_fitted_sweep,
    cut_by_recording,
    families,
    first_agreement,
    flips,
    greedy_vs_sampled,
    main,
    paired,
    recorded_since,
    search_axis,
    stopping_rows,
    sweep_rules,
    vote_vs_chain,
)
from bench.bank_stopping import StopRule, stopped_vote
from router_models.bank import Bank, BankError, BankRun

FIXTURE = Path(__file__).parent / "bank_fixture"
ONE_AT_A_TIME = StopRule("AC", "beta", first_wave=1, wave=1, threshold=0.95)


@pytest.fixture(scope="module")
def bank() -> Bank:
    return Bank.load(FIXTURE)


def _run(bank: Bank, key: str) -> BankRun:
    return next(r for r in bank.runs if r.key == key)


def test_beta_rule_stops_once_the_leader_is_settled() -> None:
    # Beta(4, 1) gives P(share > 0.5) = 0.9375 < 0.95 after three agreeing samples; Beta(5, 1)
    # gives 0.969 after four.
    assert ONE_AT_A_TIME.used(["a"] * 8) == 4
    assert dataclasses.replace(ONE_AT_A_TIME, first_wave=3, threshold=0.9).used(["a"] * 8) == 3
    # Alternating answers never settle: all eight are read.
    assert ONE_AT_A_TIME.used(["a", "b"] * 4) == 8
    # Answerless samples give no vote, so they never settle the vote either.
    assert ONE_AT_A_TIME.used([None] * 8) == 8


def test_futility_stops_a_vote_whose_samples_scatter() -> None:
    futile = dataclasses.replace(ONE_AT_A_TIME, futility_after=4, futility_lead=1)
    # Four different answers (or no answers) after four samples: stop there.
    assert futile.used(["a", "b", "c", "d", "a", "a", "a", "a"]) == 4
    assert futile.used([None] * 8) == 4
    # A leader with two votes at the fourth sample is not futile: read on to the end.
    assert futile.used(["a", "b", "a", "c", "d", "e", "f", "g"]) == 8
    # Without the futility stop the scattered vote reads every sample.
    assert ONE_AT_A_TIME.used(["a", "b", "c", "d", "a", "a", "a", "a"]) == 7


def test_the_futility_sweep_adds_each_stop_to_every_beta_rule() -> None:
    plain, futile = sweep_rules(), sweep_rules(futility=True)
    assert len(futile) == len(plain) * (1 + len(SWEEP_FUTILITY))
    assert {r.name for r in plain} < {r.name for r in futile}
    assert all(r.futility_after == 0 for r in plain)


def test_esc_stops_after_the_first_window_that_agrees() -> None:
    esc2 = StopRule("ESC", "esc", window=2)
    assert esc2.used(["a", "b", "c", "c", "d", "d", "e", "e"]) == 4
    assert esc2.used([None, None, "a", "a"]) == 4  # two missing answers do not agree
    assert StopRule("ESC", "esc", window=4).used(["a", "a", "a", "b", "a", "a", "a", "a"]) == 8


def test_a_stopping_rule_rejects_an_empty_vote_and_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        ONE_AT_A_TIME.used([])
    with pytest.raises(ValueError, match="unknown stopping rule"):
        StopRule("x", "nope").used(["a"])
    with pytest.raises(ValueError, match="window"):
        StopRule("ESC", "esc", window=0).used(["a"])


def test_stopped_vote_reads_recorded_samples_in_order(bank: Bank) -> None:
    run = _run(bank, "hotpotqa/hotpot-fixture/3")  # lyon, lyon, lyon, paris; gold Lyon
    # After three "lyon" the one sample left cannot change the leader.
    vote = stopped_vote(run, ONE_AT_A_TIME)
    assert (vote.correct, vote.samples, vote.tokens) == (True, 3, 21)
    assert (vote.fixed_correct, vote.fixed_samples, vote.fixed_tokens) == (True, 4, 25)
    esc = stopped_vote(run, StopRule("ESC", "esc", window=2))
    assert (esc.correct, esc.samples, esc.tokens) == (True, 2, 14)


def test_stopping_rows_pool_and_check_the_target(bank: Bank) -> None:
    runs = families(bank)[ALL]  # chain 16/18/16/16, mmlu B/C/B/A, hotpot paris x3/lyon
    row = stopping_rows(ALL, runs, [StopRule("ESC", "esc", window=2)])[0]
    # ESC(2): the chain and MMLU read all 4, the HotpotQA item stops after "paris, paris".
    assert (row.n, row.samples, row.fixed_samples) == (3, pytest.approx(10 / 3), 4)
    assert row.accuracy == row.fixed == Cell(2, 3)
    assert not row.meets_target  # 1.2x fewer samples, not 2x
    assert row.comparison.difference == 0


def test_vote_against_chain_pairs_the_best_of_each_side(bank: Bank) -> None:
    runs = [r for r in families(bank)[ALL] if r.suite != "hotpotqa"]
    row = vote_vs_chain("two", runs, 64)
    # Both chains are right on both items; every vote of 16/32 tokens per sample too.
    assert row.cells["greedy"] == Cell(2, 2) and row.cells["vote 4"] == Cell(2, 2)
    assert row.chain_arm in ("chain", "greedy") and row.vote_arm.startswith("vote ")
    assert row.winner == "tie" and row.comparison.n == 2
    # At 8 tokens a vote of 4 cuts each sample at 2 tokens and answers nothing.
    small = vote_vs_chain("two", runs, 8)
    assert small.cells["vote 4"] == Cell(0, 2)
    # The fixture holds 4 samples per item: a vote of 8 has no items and is never "best".
    assert small.cells["vote 8"] == Cell(0, 0) and small.vote_arm != "vote 8"
    assert small.winner == "chain" and small.comparison.difference == pytest.approx(-0.5)
    assert small.tokens["vote 4"] == 8.0  # 4 samples x 2 tokens spent on each item


def test_greedy_against_sampled_pairs_one_chain_of_each(bank: Bank) -> None:
    runs = [r for r in families(bank)[ALL] if r.suite != "hotpotqa"]
    row = greedy_vs_sampled("two", runs)
    # Both chains finish and are right on both items: greedy 24 and 11 tokens, sampled 14, 7.
    assert row.greedy == Cell(2, 2) and row.sampled == Cell(2, 2)
    assert (row.greedy_tokens, row.sampled_tokens) == (17.5, 10.5)
    assert row.comparison.n == 2 and row.comparison.difference == 0
    # Within 8 tokens only the 7-token sampled chain (MMLU) gets to its answer.
    cut = greedy_vs_sampled("two", runs, room=8)
    assert cut.greedy == Cell(0, 2) and cut.sampled == Cell(1, 2)
    assert cut.comparison.difference == pytest.approx(-0.5)


def test_a_sweep_scores_each_half_with_the_rule_chosen_on_the_other(bank: Bank) -> None:
    runs = [r for r in families(bank)[ALL] if r.samples]
    hasty = StopRule("hasty", "beta", first_wave=1, threshold=0.5)  # reads one sample
    patient = StopRule("patient", "beta", first_wave=4, threshold=1.0)  # reads all four
    rows = cross_fitted_sweep(runs, [patient, hasty])
    assert [row.half for row in rows] == [0, 1]
    assert [(row.chosen_on, row.row.n) for row in rows] == [(1, 2), (2, 1)]
    # On this fixture both rules are as accurate as the fixed vote on either half, so the one
    # that reads fewer samples is chosen on each, and scored on the half it was not chosen on.
    assert [row.chosen for row in rows] == ["hasty", "hasty"]
    assert all(row.row.saving == 4.0 and row.row.meets_target for row in rows)
    # With only the patient rule to choose, it is chosen, and saves nothing.
    only = cross_fitted_sweep(runs, [patient])
    assert [(row.chosen, row.row.saving) for row in only] == [("patient", 1.0)] * 2
    # The MMLU item (half 1) with a wrong sample read first: the hasty rule now loses it there,
    # so half 0 is scored with the patient rule, which was within a point on half 1.
    mmlu = next(r for r in runs if r.suite == "mmlu")
    samples = sorted(mmlu.samples, key=lambda s: s.correct)
    reordered = [dataclasses.replace(r, samples=tuple(samples)) if r is mmlu else r
                 for r in runs]
    assert not samples[0].correct
    assert [row.chosen for row in cross_fitted_sweep(reordered, [patient, hasty])] == [
        "patient", "hasty"]


def test_flips_skip_ties_and_name_the_budget() -> None:
    def row(budget: int, winner: str):  # noqa: ANN202
        return dataclasses.make_dataclass("R", ["budget", "winner"])(budget, winner)

    rows = [row(128, "chain"), row(256, "tie"), row(512, "vote"), row(1024, "vote"),
            row(4096, "chain")]
    assert flips(rows) == ["chain -> vote at 512", "vote -> chain at 4096"]
    assert flips([row(128, "tie")]) == []


def test_cut_by_recording_counts_length_stops(bank: Bank) -> None:
    runs = [r for r in bank.runs if r.searches == 0]
    # The fixture's chain item has one sample cut at the recording's max_tokens.
    assert cut_by_recording(runs) == (0.0, pytest.approx(1 / 12))
    mmlu = _run(bank, "mmlu/astronomy-fixture/0")
    cut = dataclasses.replace(mmlu, greedy=dataclasses.replace(
        mmlu.greedy, finish_reason="length"), samples=(dataclasses.replace(
            mmlu.samples[0], finish_reason="length"), *mmlu.samples[1:]))
    others = [r for r in runs if r is not mmlu]
    assert cut_by_recording([cut, *others]) == (pytest.approx(1 / 3), pytest.approx(2 / 12))


def test_search_axis_pairs_each_count_with_no_search(bank: Bank) -> None:
    rows = {r.searches: r for r in search_axis(bank)}
    assert sorted(rows) == [0, 1, 3]
    # Greedy: paris, paris, lyon; votes: paris (3 of 4), lyon (2 of 4), lyon (3 of 4).
    assert [rows[s].greedy for s in (0, 1, 3)] == [Cell(0, 1), Cell(0, 1), Cell(1, 1)]
    assert [rows[s].vote for s in (0, 1, 3)] == [Cell(0, 1), Cell(1, 1), Cell(1, 1)]
    assert [rows[s].prompt_tokens for s in (0, 1, 3)] == [38, 90, 170]
    assert rows[3].greedy_vs_none.difference == 1.0 and rows[3].greedy_vs_none.n == 1
    assert rows[1].vote_vs_none.difference == 1.0


def test_deepconf_votes_follow_the_confidences(bank: Bank) -> None:
    run = _run(bank, "mmlu/astronomy-fixture/0")  # B, C, B, A; gold B
    confident_c = dataclasses.replace(run, samples=tuple(
        dataclasses.replace(s, conf_min=c) for s, c in zip(run.samples, (1.0, 5.0, 1.0, 1.0),
                                                           strict=True)))
    got = confidence_outcomes(confident_c)
    assert got["vote"] is True
    assert got["confidence-weighted"] is False          # C 5.0 against B 2.0
    assert got["DeepConf-low (top 10%, weighted)"] is False  # the single most confident: C
    assert got["DeepConf-high (top 90%, weighted)"] is False  # C, B, B: 5.0 against 2.0


def test_confidence_auc_is_chance_without_signal_and_one_with_it(bank: Bank) -> None:
    runs = [r for r in bank.runs if r.searches == 0]
    n, n_right, aucs = confidence_auc(runs)
    assert (n, n_right) == (12, 6)
    assert aucs["conf_min"] == pytest.approx(0.5)  # the fixture's confidences are all 1.5
    graded = [dataclasses.replace(r, samples=tuple(
        dataclasses.replace(s, conf_min=2.0 if a else 1.0)
        for s, a in zip(r.samples, _rights(r), strict=True))) for r in runs]
    assert confidence_auc(graded)[2]["conf_min"] == pytest.approx(1.0)


def _rights(run: BankRun) -> list[bool]:
    from bench.bank_figures import cut_answer, right

    return [right(run, cut_answer(run, s, 10 ** 6)) for s in run.samples]


def test_agreement_counts_settled_votes(bank: Bank) -> None:
    # 2 of 4 (the fourth chain sample was cut before it stated an answer: no vote, as in the
    # gateway's votes), 2 of 4, 3 of 4.
    runs = [r for r in bank.runs if r.searches == 0]
    n, share, unanimous = agreement(runs)
    assert (n, unanimous) == (3, 0.0)
    assert share == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    # One of 12 samples without an answer; first two: 16/18, B/C, paris/paris.
    assert first_agreement(runs) == (pytest.approx(1 / 12), pytest.approx(1 / 3))
    assert first_agreement([]) == (0.0, 0.0)


def test_paired_needs_equal_lengths_and_renders_nothing_for_no_items() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired([True], [])
    assert paired([], []).render() == "-"
    assert not Paired(0).significant
    both = paired([True] * 12, [False] * 12)
    assert both.difference == 1.0 and both.p_value < 0.05 and both.significant


def test_since_an_older_bank_only_the_runs_recorded_after_it_are_read(
        tmp_path: Path, bank: Bank, capsys: pytest.CaptureFixture[str]) -> None:
    # The older bank: the fixture without its MMLU run.
    old = tmp_path / "old"
    old.mkdir()
    (old / "bank.json").write_text((FIXTURE / "bank.json").read_text())
    lines = (FIXTURE / "fixture-001.jsonl").read_text().splitlines(keepends=True)
    (old / "fixture-001.jsonl").write_text("".join(x for x in lines if '"mmlu/' not in x))
    fresh = recorded_since(bank, Bank.load(old))
    assert [r.key for r in fresh.runs] == ["mmlu/astronomy-fixture/0"]
    with pytest.raises(BankError, match="every run"):
        recorded_since(bank, bank)
    main(["--bank", str(FIXTURE), "--budgets", "64", "--since-bank", str(old)])
    printed = capsys.readouterr().out
    assert "1 runs, items per suite: mmlu 1" in printed
    assert f"(only the runs not in `{old}`)" in printed
    other = Bank(Bank.load(old).runs, {"model_sha256": "0" * 64}, old)
    with pytest.raises(BankError, match="another model file"):
        recorded_since(Bank(bank.runs, {"model_sha256": "1" * 64}, FIXTURE), other)
    with pytest.raises(SystemExit):
        main(["--bank", str(FIXTURE), "--since-bank", str(FIXTURE)])


def test_generator_writes_the_report_and_plots(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    main(["--bank", str(FIXTURE), "--budgets", "8,64", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for heading in ("### a.", "### b.", "### c.", "### c2.", "### d.", "### f."):
        assert heading in printed
    # Section f: greedy-first votes of 3 on the fixture's 5 runs (a vote of 5 or 8 has none).
    assert "| 512 | 3 | 5 |" in printed and "| 512 | 8 | 0 |" in printed
    assert "| all | 3 | 64 |" in printed
    # The winner grid: at 8 tokens the sampled chain still answers the MMLU item ("B" in 7
    # tokens), a vote of 2 samples of 4 tokens answers nothing.
    assert "| all | 3 | chain -33 | tie |" in printed
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"bank_vote_vs_chain.png", "bank_search_axis.png",
                     "bank_early_stopping.png", "bank_deepconf.png", "bank_findings.md",
                     "bank_stopping_grid.md"}
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    # Every confidence-aware rule of the sweeps has its line in the grid.
    grid = (tmp_path / "bank_stopping_grid.md").read_text()
    assert grid.count("| all | 3 |") == len(confidence_sweep_rules(CONFIDENCE_SWEEPS[-1]))
    assert "--budgets 8,64" in (tmp_path / "bank_findings.md").read_text()


def test_the_gateway_rule_draws_its_first_wave_as_parallel_vote_does() -> None:
    from bench.bank_stopping import default_rules

    # A vote of 8: the default first wave of 3; a vote of 3: a majority of 2 first.
    assert default_rules(8)[1].first_wave == 3
    assert default_rules(3)[1].first_wave == 2
    assert default_rules(3)[1].used(["a", "a", "b"]) == 2


def test_plot_error_bars_are_never_negative() -> None:
    from bench.bank_plots import _point

    # Wilson bounds at 0% and 100% can fall a rounding error past the point itself.
    for n in range(1, 40):
        for correct in range(n + 1):
            _, below, above = _point(Cell(correct, n))
            assert below >= 0 and above >= 0


def test_cut_votes_compares_the_two_readings_of_a_cut_sample(bank: Bank,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from bench.cut_votes import main as cut_votes_main
    from bench.cut_votes import voted_right

    chain = next(r for r in bank.runs if r.item.family == "arithmetic_chain")
    wrong, cut = chain.samples[1], chain.samples[3]  # "18" stated; cut after "16 ..." unstated
    assert cut.finish_reason == "length"
    # Two cut samples ending on the right number outvote one stated wrong answer only when
    # cut samples are read leniently.
    run = dataclasses.replace(chain, samples=(wrong, cut, cut))
    assert voted_right(run, 3, "lenient") and not voted_right(run, 3, "stated")
    with pytest.raises(ValueError, match="unknown reading"):
        voted_right(run, 3, "generous")
    assert cut_votes_main(["--bank", str(FIXTURE)]) == 0
    printed = capsys.readouterr().out
    assert "| all | 3 |" in printed and "vote 3 stated" in printed
