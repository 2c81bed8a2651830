"""Long greedy chains (``bench/long_chains.py``): which runs are extended, how a line is
recorded and resumed, and how ``Bank.load`` puts it in place of the cut greedy chain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import long_chains
from bench.long_chains import LongChains, record_long_chain, runs_to_extend
from router_models.bank import Bank, BankError

FIXTURE = Path(__file__).parent / "bank_fixture"
CUT = 10  # pieces the cut greedy chain keeps


def cut_bank(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The fixture bank with its first run's greedy chain cut at ``CUT`` pieces, as the
    recording's cap would have cut it; returns the folder and the original greedy chain."""
    folder = tmp_path / "bank"
    shutil.copytree(FIXTURE, folder)
    shard = folder / "fixture-001.jsonl"
    lines = shard.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    whole = dict(first["greedy"])
    first["greedy"] = dict(whole, tokens=whole["tokens"][:CUT], lp=whole["lp"][:CUT],
                           finish_reason="length", completion_tokens=CUT, answer=None,
                           correct=False)
    lines[0] = json.dumps(first)
    shard.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, whole


def test_only_runs_cut_below_the_new_room_are_extended(tmp_path: Path) -> None:
    folder, _ = cut_bank(tmp_path)
    bank = Bank.load(folder)
    cut = [r for r in bank.runs if r.greedy.finish_reason == "length"]
    assert len(cut) == 1
    key, suite = cut[0].key, cut[0].suite
    assert [r.key for r in runs_to_extend(bank, None, 2048, set())] == [key]
    assert runs_to_extend(bank, {suite}, 2048, set())[0].key == key
    assert runs_to_extend(bank, {"no_such_suite"}, 2048, set()) == []
    assert runs_to_extend(bank, None, CUT, set()) == []  # no more room than it had
    assert runs_to_extend(bank, None, 2048, {key}) == []  # already extended


def test_a_long_chain_replaces_the_cut_greedy_chain_and_keeps_its_first_tokens(
        tmp_path: Path) -> None:
    folder, whole = cut_bank(tmp_path)
    key = runs_to_extend(Bank.load(folder), None, 2048, set())[0].key
    LongChains(folder).append({"key": key, "max_tokens": 2048, "same_until": CUT,
                               "recorded": "2026-12-07T04:00:00Z", "greedy": whole})
    run = next(r for r in Bank.load(folder).runs if r.key == key)
    assert run.greedy.finish_reason == "stop" and run.greedy.correct
    assert run.greedy.tokens == tuple(whole["tokens"])
    assert run.greedy.tokens[:CUT] == tuple(whole["tokens"][:CUT])
    assert len(Bank.load(folder).runs) == len(Bank.load(FIXTURE).runs)  # not a run itself


def test_same_until_counts_the_shared_leading_pieces() -> None:
    assert long_chains.same_until(["a", "b", "c"], ["a", "b", "x", "y"]) == 2
    assert long_chains.same_until(["a", "b"], ["a", "b", "c"]) == 2
    assert long_chains.same_until(["a"], ["b"]) == 0


def test_recording_compares_the_prefix_and_resumes_past_a_cut_last_line(
        tmp_path: Path) -> None:
    folder, whole = cut_bank(tmp_path)
    run = runs_to_extend(Bank.load(folder), None, 2048, set())[0]
    asked: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        content = [{"token": t, "bytes": list(t.encode()), "logprob": -0.1,
                    "top_logprobs": [{"logprob": -0.1}]} for t in whole["tokens"]]
        return httpx.Response(200, json={"choices": [{
            "message": {"content": "".join(whole["tokens"])}, "finish_reason": "stop",
            "logprobs": {"content": content}}], "usage": {"prompt_tokens": 41}})

    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        record = record_long_chain(client, "http://bank/v1", run, 2048, "http://bank/v1")
    assert asked[0]["temperature"] == 0.0 and asked[0]["max_tokens"] == 2048
    assert "seed" not in asked[0] and asked[0]["logprobs"] is True
    assert record["same_until"] == CUT and record["key"] == run.key
    assert record["server"] == "http://bank/v1"
    assert record["greedy"]["correct"] is True
    store = LongChains(folder)
    store.append(record)
    with store.files()[-1].open("a", encoding="utf-8") as out:
        out.write('{"key": "cut-by-a-kill"')  # a run killed mid-line
    assert Bank.load(folder)  # the cut last line does not stop the bank from loading
    again = LongChains(folder)
    assert again.done == {run.key}
    again.append(dict(record, key="next"))  # on a line of its own, not after the cut one
    assert LongChains(folder).done == {run.key, "next"}
    assert len(Bank.load(folder).runs) == len(Bank.load(FIXTURE).runs)


def test_a_long_chain_line_that_is_not_one_names_its_file(tmp_path: Path) -> None:
    folder, _ = cut_bank(tmp_path)
    (folder / "long-chains-001.jsonl").write_text('{"key": "x"}\n', encoding="utf-8")
    with pytest.raises(BankError, match="long-chains-001.jsonl:1"):
        Bank.load(folder)


def test_a_new_file_starts_past_the_size_limit(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(long_chains, "SHARD_BYTES", 10)
    store = LongChains(tmp_path)
    store.append({"key": "a"})
    store.append({"key": "b"})
    assert [p.name for p in store.files()] == ["long-chains-001.jsonl",
                                               "long-chains-002.jsonl"]
    assert LongChains(tmp_path).done == {"a", "b"}


def test_the_report_sets_the_long_chain_against_the_cut_one_and_the_votes(
        tmp_path: Path) -> None:
    folder, whole = cut_bank(tmp_path)
    key = runs_to_extend(Bank.load(folder), None, 2048, set())[0].key
    LongChains(folder).append({"key": key, "max_tokens": 2048, "same_until": CUT,
                               "greedy": whole})
    rows = long_chains.report_rows(Bank.load(folder, long_chains=False), Bank.load(folder),
                                   LongChains(folder).done)
    assert [(r["suite"], r["n"]) for r in rows] == [(key.split("/")[0], 1)]
    row = rows[0]
    assert row["accuracy"]["cut chain"] == 0.0 and row["accuracy"]["long chain"] == 100.0
    assert row["tokens"]["cut chain"] == CUT
    assert row["tokens"]["long chain"] == len(whole["tokens"])
    assert row["long_minus"]["cut chain"].difference == 1.0
    table = long_chains.render_report(rows)
    assert table.splitlines()[2].startswith(f"| {key.split('/')[0]} | 1 | 0.0 ({CUT} t) | 100.0")
    assert long_chains.report_rows(Bank.load(folder, long_chains=False), Bank.load(folder),
                                   set()) == []
