"""The SIMULATED backend of ``bench/held_out_traffic.py``: exact usage, cuts at ``max_tokens``,
``n``, answers that come before a verification paragraph, and facts seen only in messages."""

from __future__ import annotations

import ast
from pathlib import Path

from fastapi.testclient import TestClient

from bench.held_out_traffic import KINDS, build_world, create_backend, grade

ROOT = Path(__file__).resolve().parents[1]
SEED = 7


def _world(mode: str = "normal"):
    docs, items = build_world(SEED, 20)
    app = create_backend([it.__dict__ for k in KINDS for it in items[k]], mode)
    return docs, items, TestClient(app)


def _ask(client: TestClient, prompt: str, **body) -> dict:
    messages = body.pop("messages", [{"role": "user", "content": prompt}])
    reply = client.post("/v1/chat/completions", json={"model": "held-out-sim",
                                                      "messages": messages, **body})
    assert reply.status_code == 200
    return reply.json()


def test_the_script_imports_nothing_of_the_project():
    tree = ast.parse((ROOT / "bench" / "held_out_traffic.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"router_models", "service"}


def test_usage_is_exact_and_a_cut_reply_says_length():
    _, items, client = _world()
    chain = items["chain"][0]
    full = _ask(client, chain.prompt, temperature=0)
    words = len(full["choices"][0]["message"]["content"].split())
    assert full["usage"]["completion_tokens"] == words
    assert full["choices"][0]["finish_reason"] == "stop"
    cut = _ask(client, chain.prompt, temperature=0, max_tokens=50, n=3)
    assert [c["finish_reason"] for c in cut["choices"]] == ["length"] * 3
    assert cut["usage"]["completion_tokens"] == 150
    assert all(len(c["message"]["content"].split()) == 50 for c in cut["choices"])


def test_the_answer_comes_before_a_verification_paragraph():
    _, items, client = _world()
    text = _ask(client, items["guess"][0].prompt)["choices"][0]["message"]["content"]
    lines = text.splitlines()
    answer_line = next(i for i, line in enumerate(lines) if line.startswith("The answer is"))
    assert 100 <= len(" ".join(lines[answer_line + 1:]).split()) <= 300


def test_a_fact_is_known_only_when_its_document_is_in_the_messages():
    docs, items, client = _world()
    fact = items["fact"][0]
    closed = _ask(client, fact.prompt)["choices"][0]["message"]["content"]
    assert not grade(closed, fact.gold)
    document = next(d for d in docs if fact.state["sentence"] in d["text"])
    messages = [{"role": "user", "content": fact.prompt},
                {"role": "assistant", "content": "SEARCH: " + fact.prompt},
                {"role": "user", "content": "> " + document["text"]}]
    opened = _ask(client, "", messages=messages)["choices"][0]["message"]["content"]
    assert grade(opened, fact.gold)


def test_reversed_guesses_are_right_only_after_a_long_deliberation():
    _, items, client = _world("reversed")
    guess = next(it for it in items["guess"] if it.state["long_right"])
    long = _ask(client, guess.prompt, max_tokens=2000)["choices"][0]["message"]["content"]
    short = _ask(client, guess.prompt, max_tokens=200)["choices"][0]["message"]["content"]
    assert grade(long, guess.gold_reversed)
    assert not grade(short, guess.gold_reversed)


def test_grading_reads_the_committed_answer_not_the_checking_after_it():
    text = "Let me work through this.\nThe answer is (B).\nchecking. Yes, the answer is correct."
    assert grade(text, "B")
    assert not grade("So the answer is indeed (B).", "B")


def test_the_cross_fitted_comparison_picks_each_sends_best_on_the_other_send():
    # Per kind, "a" wins on send 0 and "b" on send 1 by luck: the in-sample best of each kind
    # is scored on the replies that made it best; cross-fitted, send 0 is scored against the
    # arm that won send 1 and the other way round.
    from bench.held_out_traffic import Item, Result, compare_cross_fitted

    items = [Item(f"{kind}{i}", kind, "q", "A", "B") for kind in KINDS for i in range(2)]
    traffic = items * 2
    half = len(items)

    def results(right: list[bool]) -> list[Result]:
        return [Result(item, ok, 10, {}) for item, ok in zip(traffic, right, strict=True)]

    auto = results([True, False] * half)  # one of each kind's two prompts, on both sends
    fixed = {"a": results([True] * half + [False] * half),
             "b": results([False] * half + [True] * half),
             "c": results([False] * 2 * half), "d": results([False] * 2 * half)}
    line = compare_cross_fitted(auto, fixed, 2)
    # Send 0 against "b" (best on send 1), wrong on all of send 0; send 1 against "a".
    assert line is not None and "+0.500 accuracy" in line and f"auto only right {half}" in line
    assert compare_cross_fitted(auto, fixed, 1) is None
