"""bench/held_out_worlds.py: its generator, its scripted model's rules, and one tiny run through
real processes (the scripted backend and two ``ttc-router serve`` gateways per world)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.held_out_worlds import (
    KINDS,
    STRATEGIES,
    Result,
    Script,
    extract,
    generate,
    interpolate,
    main,
    read_items,
    run_world,
    write_items,
)


def test_sets_are_fresh_and_every_kind_is_there(tmp_path: Path) -> None:
    items = generate("flat", ["heldout", "round1"], 5, seed=3)
    assert len(items) == 2 * len(KINDS) * 5
    assert len({i.question for i in items}) == len(items)
    for item in items:
        assert item.answer not in item.wrong
        if item.kind == "lookup":
            assert item.doc is not None and item.answer in item.doc["text"].lower()
    write_items(items, tmp_path / "items.jsonl")
    assert read_items(tmp_path / "items.jsonl") == items


def test_flat_world_answers_the_same_at_any_cap_and_temperature() -> None:
    items = generate("flat", ["heldout"], 5, seed=4)
    script = Script("flat", items)
    for item in items:
        prompt = f"Some preamble.\n{item.question}"
        answers = {extract(script.reply(prompt, t, cap)[0])
                   for t in (None, 0.0, 0.7, 1.0) for cap in (8, 64, None)}
        assert answers == {item.answer if item.known else item.wrong[0]}
        # a longer grant only costs tokens
        assert script.reply(prompt, 0.7, 16)[1:] == (16, "length")
        assert script.reply(prompt, 0.7, None)[1] == item.length


def test_vote_world_samples_are_right_at_their_rate_and_greedy_is_one_draw() -> None:
    item = next(i for i in generate("vote", ["heldout"], 3, seed=5) if i.kind == "choice")
    script = Script("vote", [item], seed=1)
    draws = [extract(script.reply(item.question, 0.7, None)[0]) for _ in range(4000)]
    share = draws.count(item.answer) / len(draws)
    assert abs(share - item.p) < 0.03
    assert set(draws) <= {item.answer, *item.wrong}
    greedy = {extract(script.reply(item.question, 0.0, None)[0]) for _ in range(20)}
    assert len(greedy) == 1
    # the answer comes after the reasoning: a chain cut before its end states none
    content, tokens, finish = script.reply(item.question, 0.7, item.length)
    assert extract(content) is None and finish == "length" and tokens == item.length


def _rows(config: str, right: int, tokens: int, n: int = 4) -> list[Result]:
    strategy, budget = config.split("@")
    return [Result(f"i{k}", "word", config, 0, k < right, tokens, strategy, int(budget))
            for k in range(n)]


def test_interpolation_pools_equal_spends_and_is_linear_between_budgets() -> None:
    fixed = {"direct@64": _rows("direct@64", 1, 40), "direct@128": _rows("direct@128", 3, 40),
             "direct@512": _rows("direct@512", 4, 240)}
    # 64 and 128 spend alike: pooled at 0.5, then a line to 1.0 at 240 tokens
    assert interpolate(fixed, "direct", 140) == (0.75, "40-240")
    assert interpolate(fixed, "direct", 20) == (0.5, "clipped at 40")
    assert interpolate(fixed, "direct", 900) == (1.0, "clipped at 240")


def test_tiny_run_through_real_gateways(tmp_path: Path) -> None:
    args = argparse.Namespace(per_kind=2, repeats=1, rounds=1, budgets=[64, 256], concurrency=4,
                              seed=11)
    run = run_world("flat", args, tmp_path)
    items = {i.id: i for i in read_items(tmp_path / "items-flat.jsonl")}
    assert run.backend_stats["unmatched"] == 0
    assert run.backend_stats["lookup_with_document"] > 0  # search found the indexed documents
    assert set(run.fixed) == {f"{s}@{b}" for s in STRATEGIES for b in (64, 256)}
    every = [r for rows in (run.auto, run.after, *run.fixed.values(), *run.rounds) for r in rows]
    assert len(run.auto) == len(run.after) == 2 * len(KINDS)
    assert all(r.error is None for r in every)
    # the flat world's rule holds through the gateway: every strategy and budget, auto's
    # included, is right exactly on the items the script knows
    assert all(r.correct == items[r.item].known for r in every)
    assert all(r.tokens <= 256 for r in run.fixed["direct@256"])
    # the learner counted the feedback rounds' outcomes (one round of 8 replies)
    state = run.learner["policies"]["learned"]["state"]
    assert sum(map(sum, state["trials"])) == len(KINDS) * 2


@pytest.mark.parametrize("world", ["vote"])
def test_main_writes_the_report(world: str, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    assert main(["--world", world, "--per-kind", "1", "--repeats", "1", "--rounds", "1",
                 "--budgets", "64,512", "--out", str(out)]) == 0
    text = out.read_text()
    assert "SIMULATION" in text and "votes of short samples" in text
    assert "McNemar" in text and "--per-kind 1" in text
