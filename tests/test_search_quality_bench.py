"""bench/search_quality.py runs through the real gateway (SIMULATION backend) and says which
strategy each row really ran. Its ``parallel_vote`` row had been one chain at every budget it
printed (128, 256, 512) since a forced vote must buy samples long enough to finish (3 samples of
``sample_tokens`` each), yet the table still called it a vote."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from bench.search_engines import DEFAULT_DATA, load_hotpotqa
from bench.search_quality import evaluate

pytestmark = pytest.mark.skipif(not (DEFAULT_DATA / "hotpotqa_train_corpus.json").exists(),
                                reason="HotpotQA data not found")


def run(strategy: str, budget: int) -> dict:
    docs, items = load_hotpotqa(DEFAULT_DATA)
    texts = {title: text for _, title, text in docs}
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(evaluate(items[:2], texts, Path(tmp), strategy, budget, 1))


def test_a_vote_too_small_to_finish_is_reported_as_the_one_chain_it_ran():
    r = run("parallel_vote", 128)
    assert r["ran"] == {"sequential": 2}
    assert r["samples"] == 1


def test_the_default_budgets_include_one_where_the_vote_really_votes():
    from bench.search_quality import DEFAULT_BUDGETS

    r = run("parallel_vote", max(DEFAULT_BUDGETS))
    assert r["ran"] == {"parallel_vote": 2}
    # A vote of 3 whose first 2 samples agree stops there (the simulated reader, closed book,
    # guesses the same wrong answer every time): more than one sample, not one chain.
    assert r["samples"] >= 2
