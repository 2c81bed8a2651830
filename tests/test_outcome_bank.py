"""The outcome bank recorder's pure parts: token pieces, DeepConf confidences, a sample's
record, and resuming a bank whose last line was cut."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.outcome_bank import Bank, deepconf, pieces_from_logprobs, sample_record
from router_models.tasks import TaskItem

ITEM = TaskItem(suite="gsm8k", item_id="gsm8k-00001", family="word_math", difficulty=0.2,
                question="What is 2 + 3?", answer="5", kind="number")


def _entry(raw: bytes, logprob: float, top: list[float] | None = None) -> dict:
    return {"token": raw.decode(errors="replace"), "bytes": list(raw), "logprob": logprob,
            "top_logprobs": [{"logprob": v} for v in (top or [logprob])]}


def test_pieces_give_a_split_character_to_the_token_that_completes_it() -> None:
    euro = "€".encode()  # three bytes, split over two tokens
    content = [_entry(b"Cost ", -0.1), _entry(euro[:2], -0.2), _entry(euro[2:] + b"5", -0.3)]
    pieces = pieces_from_logprobs(content)
    assert pieces == ["Cost ", "", "€5"]
    assert "".join(pieces) == "Cost €5"


def test_deepconf_lowest_group_is_the_least_confident_window() -> None:
    confident = [[-0.01, -9.0, -9.0]] * 40   # token confidence 6.0
    unsure = [[-0.7, -0.8, -0.9]] * 8        # token confidence 0.8
    scores = deepconf(confident + unsure + confident, window=8)
    assert scores["conf_min"] == pytest.approx(0.8)
    assert scores["conf_mean"] == pytest.approx((80 * 6.003 + 8 * 0.8) / 88, abs=1e-3)
    assert scores["conf_min"] < scores["conf_bottom10"] < scores["conf_mean"]


def test_deepconf_of_a_trace_shorter_than_the_window_is_its_mean() -> None:
    scores = deepconf([[-1.0, -3.0], [-2.0, -4.0]], window=32)
    assert scores["conf_min"] == scores["conf_mean"] == pytest.approx(2.5)
    assert deepconf([]) == {"conf_min": 0.0, "conf_bottom10": 0.0, "conf_mean": 0.0}


def test_sample_record_keeps_pieces_logprobs_and_correctness() -> None:
    text = "2 + 3 = 5. The answer is 5."
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip()
    choice = {"message": {"content": text}, "finish_reason": "stop",
              "logprobs": {"content": [_entry(w.encode(), -0.25) for w in words]}}
    record = sample_record(ITEM, choice, seed=7, temperature=0.7)
    assert record["tokens"] == words and "text" not in record
    assert record["lp"] == [-25] * len(words)
    assert record["lp_mean"] == pytest.approx(-0.25)
    assert record["answer"] == "5" and record["correct"] is True
    assert record["completion_tokens"] == len(words) and record["seed"] == 7
    wrong = dict(choice, message={"content": "The answer is 6."},
                 logprobs={"content": [_entry(b"The answer is 6.", math.log(0.5))]})
    assert sample_record(ITEM, wrong, seed=8, temperature=0.7)["correct"] is False


def test_sample_record_refuses_a_reply_without_logprobs() -> None:
    with pytest.raises(ValueError, match="logprobs"):
        sample_record(ITEM, {"message": {"content": "5"}, "finish_reason": "stop"}, 1, 0.7)


def test_a_bank_resumes_after_a_cut_line(tmp_path: Path) -> None:
    shard = tmp_path / "gsm8k-001.jsonl"
    shard.write_text(json.dumps({"key": "gsm8k/a/0"}) + "\n" + '{"key": "gsm8k/b/0", "sam')
    bank = Bank(tmp_path)
    bank.load()
    assert bank.done == {"gsm8k/a/0"}
    assert shard.read_text().endswith("\n") and shard.read_text().count("\n") == 1
    bank.append({"key": "gsm8k/b/0", "suite": "gsm8k"})
    assert Bank(tmp_path).path == tmp_path and "gsm8k/b/0" in bank.done
    again = Bank(tmp_path)
    again.load()
    assert again.done == {"gsm8k/a/0", "gsm8k/b/0"}


def test_bank_figures_cut_every_sample_to_its_share_of_the_budget() -> None:
    from bench.bank_figures import Cell, budget_row, confidence_row
    from router_models.bank import Bank

    runs = [r for r in Bank.load(Path(__file__).parent / "bank_fixture").runs
            if r.suite == "arithmetic_chain"]
    # Four votes of 16 tokens: 16, 18, 16 and the cut "... = 16, so the result" (read as 16).
    assert budget_row(runs, 64)["vote 4"] == Cell(1, 1)
    # Four votes of 2 tokens: "5 +", "5 +", "First 5", "We add": no right answer.
    assert budget_row(runs, 8)["vote 4"] == Cell(0, 1)
    # The greedy chain cut after "Start with 5. Adding 3 gives 5 + 3 =" reads as 3.
    assert budget_row(runs, 10)["greedy"] == Cell(0, 1)
    assert budget_row(runs, 64)["greedy"] == Cell(1, 1)
    assert confidence_row(runs)["vote"] == Cell(1, 1)


def test_the_greedy_chain_gets_its_own_room_and_the_samples_theirs() -> None:
    import concurrent.futures as futures

    import httpx

    from bench.outcome_bank import Run, record_run

    asked: list[dict] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        return httpx.Response(200, json={"choices": [{
            "message": {"content": "The answer is 5."}, "finish_reason": "stop",
            "logprobs": {"content": [_entry(b"The answer is 5.", -0.1)]}}],
            "usage": {"prompt_tokens": 9}})

    with httpx.Client(transport=httpx.MockTransport(server)) as client, \
            futures.ThreadPoolExecutor(2) as pool:
        record = record_run(client, "http://x/v1", Run(ITEM, 0, "What is 2 + 3?"), pool,
                            samples=3, temperature=0.7, max_tokens=512,
                            greedy_max_tokens=2048)
    rooms = sorted((b["temperature"], b["max_tokens"]) for b in asked)
    assert rooms == [(0.0, 2048), (0.7, 512), (0.7, 512), (0.7, 512)]
    assert record["greedy"]["correct"] and len(record["samples"]) == 3
