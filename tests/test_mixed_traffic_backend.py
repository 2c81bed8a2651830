"""The SIMULATED backend of ``bench/mixed_traffic.py``: independent of the project's own world
model, exact about tokens and cuts, and shaped as its docstring says (votes help guesses, one
long chain helps chains, documents in the messages help fact questions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.mixed_traffic import SimulatedModel, extract, grade, make_traffic

ROOT = Path(__file__).resolve().parents[1]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_the_backend_imports_nothing_of_the_project():
    code = ("import sys, bench.mixed_traffic\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('router_models', 'service')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_traffic_is_unique_per_kind_and_deterministic():
    items, docs, distractors = make_traffic(3, 20)
    assert len(items) == 80 and len({i.question for i in items}) == 80
    assert [i.question for i in make_traffic(3, 20)[0]] == [i.question for i in items]
    assert len(docs) == 20 and len(distractors) == 20


def test_a_cut_reply_has_exactly_max_tokens_words_and_no_answer():
    model = SimulatedModel(5, 10)
    chain = next(i for i in make_traffic(5, 10)[0] if i.kind == "chain")
    text, reason = model.generate(_user(chain.question), 50, 1.0)
    assert reason == "length" and len(text.split()) == 50 and extract(text) is None
    text, reason = model.generate(_user(chain.question), None, 1.0)
    assert reason == "stop" and extract(text) is not None


def test_a_continuation_states_the_value_reached_which_is_wrong():
    model = SimulatedModel(5, 10)
    chain = next(i for i in make_traffic(5, 10)[0] if i.kind == "chain")
    cut, _ = model.generate(_user(chain.question), 60, 1.0)
    forced, _ = model.generate(_user(chain.question) + [
        {"role": "assistant", "content": cut},
        {"role": "user", "content": "State your final answer now."}], 64, 1.0)
    assert extract(forced) is not None and not grade(chain, forced)


def test_the_kinds_reward_their_own_axis():
    items = make_traffic(7, 30)[0]
    model = SimulatedModel(7, 30)

    def accuracy(kind: str, cap: int | None, messages_of=_user) -> float:
        model.reset()
        rows = [i for i in items if i.kind == kind]
        return sum(grade(i, model.generate(messages_of(i.question if kind != "fact" else i),
                                           cap, 1.0)[0]) for i in rows) / len(rows)

    assert accuracy("chain", 64) == 0.0 and accuracy("chain", None) > 0.8
    assert accuracy("easy", 30) > 0.85
    guess = accuracy("guess", None)
    assert 0.4 < guess < 0.8
    closed = accuracy("fact", None, lambda item: _user(item.question))
    opened = accuracy("fact", None, lambda item: [
        {"role": "user", "content": item.question},
        {"role": "user", "content": f"BEGIN DATA\n> [1] {item.doc['title']}\n> "
                                    f"{item.doc['text']}\nEND DATA"}])
    assert closed < 0.35 and opened > 0.8


def test_samples_are_deterministic_after_a_reset():
    model = SimulatedModel(9, 10)
    guess = next(i for i in make_traffic(9, 10)[0] if i.kind == "guess")
    first = [model.generate(_user(guess.question), None, 0.7) for _ in range(5)]
    model.reset()
    assert [model.generate(_user(guess.question), None, 0.7) for _ in range(5)] == first
    assert len({text for text, _ in first}) > 1  # samples differ from one another
