"""bench/mixed_traffic.py's report says what each fixed strategy really ran. Its
``parallel_vote`` row had been mostly one chain: matched to ``auto``'s mean tokens (about 270
tokens), a forced vote cannot buy 3 samples long enough to finish, so the gateway ran
``sequential`` on 3 of the 4 kinds, and the tables still called the row a vote."""

from __future__ import annotations

from bench.mixed_traffic import KINDS, Reply, print_tables, summary


def reply(kind: str, ran: str, samples: int) -> Reply:
    return Reply(f"{kind}-0", kind, True, 50, {"strategy": ran, "samples": samples})


def test_the_report_names_the_strategy_a_forced_vote_really_ran(capsys):
    vote = [reply("guess", "sequential", 1), reply("chain", "sequential", 1),
            reply("easy", "sequential", 1), reply("fact", "parallel_vote", 4)]
    direct = [reply(kind, "direct", 1) for kind in KINDS]
    s = summary(vote)
    assert s["guess"]["ran"] == {"sequential": 1}
    assert s["fact"]["ran"] == {"parallel_vote": 1}
    assert s["fact"]["samples"] == 4
    results = {"seed": 0, "per_kind": 1, "passes": 1, "cpu_s": 0.0, "wall_s": 0.0,
               "auto_choices": [],
               "policies": {"auto": {"summary": summary(direct), "budget": None},
                            "direct": {"summary": summary(direct), "budget": 64},
                            "parallel_vote": {"summary": s, "budget": 266}}}
    print_tables(results)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines()
               if line.startswith("| parallel_vote |") and "samples" in line)
    assert row == ("| parallel_vote | sequential 1; 1.0 samples | sequential 1; 1.0 samples "
                   "| sequential 1; 1.0 samples | parallel_vote 1; 4.0 samples |")
