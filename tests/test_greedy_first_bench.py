"""``bench/greedy_first.py`` on the bank fixture: the arms it compares and the tables it prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import greedy_first
from router_models.bank import Bank

FIXTURE = Path(__file__).parent / "bank_fixture"
CHAIN = Bank.load(FIXTURE).runs[0]  # greedy 16 (right); samples 16, 18, 16 and one cut


def test_the_greedy_answer_breaks_a_tie_and_two_samples_outvote_it():
    # Greedy first with 2 samples: greedy 16, samples 16 and 18: 16 wins, right.
    assert greedy_first.arms(CHAIN, 512, 3) == (True, True, True)
    # The samples reordered so the two sampled ballots are 18 and a cut one: 16 against 18
    # is a tie, which the greedy answer, seen first, wins; the plain vote's first is 18.
    reordered = dataclasses.replace(CHAIN, samples=(CHAIN.samples[1], CHAIN.samples[3],
                                                    CHAIN.samples[0], CHAIN.samples[2]))
    greedy, plain, first = greedy_first.arms(reordered, 512, 3)
    assert (greedy, plain, first) == (True, False, True)
    # Two samples saying 18 against the greedy 16 elect 18.
    wrong = dataclasses.replace(CHAIN, samples=(CHAIN.samples[1],) * 3)
    assert greedy_first.arms(wrong, 512, 3) == (True, False, False)


def test_a_vote_wider_than_the_run_is_refused():
    with pytest.raises(ValueError, match="samples"):
        greedy_first.arms(CHAIN, 512, 5)


def test_the_script_prints_its_tables(capsys):
    greedy_first.main(["--bank", str(FIXTURE), "--depths", "64,512", "--widths", "3"])
    out = capsys.readouterr().out
    assert "| 512 | 3 |" in out and "| 64 | 3 |" in out
    assert "| greedy first |" in out and "saving" in out
    # The fixture's runs hold 4 samples, none a vote of 8: no saving (it printed 8e9x).
    assert "| greedy first | - | - | - | - |" in out


def test_a_width_no_run_holds_prints_an_empty_row():
    # --widths wider than every run (the shipped bank holds 8 samples a run) crashed the
    # table on unpacking no outcomes; the row now says n = 0, as per_suite skips such suites.
    table = greedy_first.table(Bank.load(FIXTURE).runs, [64], [3, 99])
    assert "| 64 | 3 |" in table
    assert "| 64 | 99 | 0 | - | - | - | - | - |" in table


def test_since_bank_reads_only_the_runs_an_older_bank_lacks(tmp_path, capsys):
    # The older bank: the fixture without its MMLU run, so only that run is read.
    old = tmp_path / "old"
    old.mkdir()
    (old / "bank.json").write_text((FIXTURE / "bank.json").read_text())
    lines = (FIXTURE / "fixture-001.jsonl").read_text().splitlines(keepends=True)
    (old / "fixture-001.jsonl").write_text("".join(x for x in lines if '"mmlu/' not in x))
    greedy_first.main(["--bank", str(FIXTURE), "--since-bank", str(old), "--depths", "512",
                       "--widths", "3"])
    out = capsys.readouterr().out
    assert "1 runs (mmlu 1)" in out and "| 512 | 3 | 1 |" in out
    with pytest.raises(SystemExit):  # nothing new to read
        greedy_first.main(["--bank", str(FIXTURE), "--since-bank", str(FIXTURE)])


def test_the_embedded_models_rule_is_replayed_beside_the_default():
    runs = Bank.load(FIXTURE).runs
    rule = greedy_first.embedded_rule()
    assert (rule.first_wave, rule.threshold) == (2, 0.6)
    # The fixture's 5 runs hold 4 samples: votes of 4. Every row pairs the stopped vote with
    # the fixed one on the same runs.
    default, embedded = (greedy_first.stopping(runs, 4), greedy_first.stopping(runs, 4, rule))
    assert "first wave 2, then 1, Beta 0.6" in embedded and "Beta 0.9" in default
    for table in (default, embedded):
        rows = [x for x in table.splitlines() if x.startswith(("| plain", "| greedy first"))]
        assert len(rows) == 2 and all("McNemar" not in x and "p = " in x for x in rows)
    read = [float(x.split("|")[5]) for x in embedded.splitlines()
            if x.startswith(("| plain", "| greedy first"))]
    read_default = [float(x.split("|")[5]) for x in default.splitlines()
                    if x.startswith(("| plain", "| greedy first"))]
    # Two agreeing samples settle a vote at 0.6, not at 0.9: plain 2.6 against 3.6 samples
    # read a vote, greedy first 2.2 against 3.6.
    assert read == [2.6, 2.2] and read_default == [3.6, 3.6]
