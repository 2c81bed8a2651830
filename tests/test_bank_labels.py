"""The outcome bank's runs as classifier labels: short votes, chains and searches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from router_models.bank_labels import bank_examples, short_vote_right


def sample(answer: str | None, correct: bool, tokens: int, finish: str = "stop"):
    return SimpleNamespace(answer=answer, correct=correct, tokens=("x",) * tokens,
                           finish_reason=finish)


def run(question: str, suite: str, searches: int, greedy, samples):
    return SimpleNamespace(key=f"{suite}/{question[:8]}/{searches}",
                           item=SimpleNamespace(question=question), searches=searches,
                           greedy=greedy, samples=tuple(samples))


def test_a_short_vote_counts_only_samples_that_answer_within_the_budget():
    right_but_long = [sample("7", True, 400)] * 3
    assert short_vote_right([sample("5", False, 90)] * 2 + right_but_long) is False
    assert short_vote_right([sample("7", True, 90)] * 2 + [sample("5", False, 90)]) is True
    assert short_vote_right([sample("7", True, 90), sample("5", False, 90)]) is False  # tie
    assert short_vote_right([sample("7", True, 300, "length")]) is False


def test_a_long_chain_that_wins_where_short_samples_are_cut_reads_as_sequential():
    long_right = [sample("16", True, 400)] * 8  # this model needs ~400 tokens
    chain = run("Start with 5 and add 3 ...", "arithmetic_chain", 0, sample("16", True, 420),
                long_right)
    guess = run("Which is the capital?", "mmlu", 0, sample("B", True, 20),
                [sample("B", True, 20)] * 6 + [sample("C", False, 20)] * 2)
    hopeless = run("Hard one", "gsm8k", 0, sample("1", False, 500), [sample("1", False, 80)])
    examples = {e.family: e for e in bank_examples([chain, guess, hopeless])}
    assert examples["arithmetic_chain"].sequential == 1.0
    assert examples["arithmetic_chain"].difficulty == 1.0  # nothing answers within 256
    assert examples["mmlu"].sequential == 0.0
    assert examples["mmlu"].difficulty == 0.25
    assert examples["gsm8k"].sequential is None and examples["gsm8k"].difficulty == 1.0
    assert examples["mmlu"].dataset == "bank/mmlu" and examples["mmlu"].search is None


def test_search_pays_where_retrieved_hits_fix_a_closed_book_failure():
    q = "Who directed the film that won the Palme d'Or in 1994?"
    closed = run(q, "hotpotqa", 0, sample("x", False, 60), [sample("x", False, 60)])
    with_hits = run(q, "hotpotqa", 3, sample("Tarantino", True, 60), [])
    known = "Who wrote Hamlet?"
    known_closed = run(known, "hotpotqa", 0, sample("Shakespeare", True, 20),
                       [sample("Shakespeare", True, 20)])
    known_hits = run(known, "hotpotqa", 1, sample("Shakespeare", True, 20), [])
    examples = {e.text: e for e in bank_examples([closed, with_hits, known_closed, known_hits])}
    assert examples[q].search == 1.0
    assert examples[known].search == 0.0


def test_the_recorded_bank_fixture_reads_as_labelled_examples():
    from router_models.bank import Bank

    fixture = Path(__file__).resolve().parent / "bank_fixture"
    examples = {e.family: e for e in bank_examples(Bank.load(fixture).runs)}
    assert set(examples) == {"arithmetic_chain", "hotpotqa", "mmlu"}
    assert examples["hotpotqa"].search == 1.0  # wrong closed-book, right with its hits
    assert examples["mmlu"].sequential == 0.0  # the short vote is right
    assert all(0.0 <= e.difficulty <= 1.0 for e in examples.values())
