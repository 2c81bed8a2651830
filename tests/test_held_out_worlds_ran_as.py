"""bench/held_out_worlds.py's tables say what a fixed config really ran. A forced vote whose
budget cannot buy 3 samples long enough to finish runs as one chain (``sequential``): at
``--budgets 64`` the row ``parallel_vote@64 (closest spend)`` spent exactly what
``sequential@64`` did, and nothing said it had not voted."""

from __future__ import annotations

from bench.held_out_worlds import KINDS, Result, all_configs, compare


def rows(config: str, ran: str, tokens: int) -> list[Result]:
    budget = int(config.split("@")[1]) if "@" in config else None
    return [Result(f"{kind}{k}", kind, config, 0, k < 2, tokens, ran, budget)
            for kind in KINDS for k in range(4)]


def test_a_vote_that_ran_as_one_chain_is_labelled_with_what_ran():
    fixed = {"direct@64": rows("direct@64", "direct", 60),
             "parallel_vote@64": rows("parallel_vote@64", "sequential", 48),
             "parallel_vote@1024": rows("parallel_vote@1024", "parallel_vote", 300)}
    table = all_configs(fixed)
    assert any(line.startswith("| parallel_vote@64 (ran as sequential 16) |") for line in table)
    assert any(line.startswith("| parallel_vote@1024 |") for line in table)
    assert any(line.startswith("| direct@64 |") for line in table)
    auto = rows("auto", "parallel_vote", 50)
    out = compare(auto, fixed, "phase 1")
    assert "| parallel_vote@64 (ran as sequential 16) (closest spend) | 16 |" in "\n".join(out)
