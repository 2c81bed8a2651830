"""The local model's outcome bank (``router_models.bank``, recorded by
``bench/outcome_bank.py``) as training examples for the classifier: the same three labels,
read from what the real model did.

Per question, from the closed-book run (no searches): its seeded samples (temperature 0.7)
and its greedy chain, each with its whole completion and whether its answer is right. A sample
"answers within b tokens" when it is right, stopped on its own, and took at most b tokens:
the bank's answers come at the end ("The answer is N."), so a budget of b cuts the rest.

- ``difficulty``: the share of the samples that do not answer within ``SHORT_TOKENS``.
- ``sequential``: 1 when the greedy chain (its whole length) is right and a majority vote of
  the samples cut at ``SHORT_TOKENS`` is not (samples cut before their answer abstain); 0 when
  that vote is right; no label when both fail. One chain succeeds where a vote of short tries
  does not, measured directly rather than through a greedy direct answer.
- ``search`` (questions recorded with searches, HotpotQA): 1 when a greedy chain with 1 or 3
  searches' hits in its prompt is right and the closed-book one is not; 0 when the closed-book
  chain is right; no label when neither is.

Readers take the bank's runs duck-typed (``key``, ``item.question``, ``searches``, ``greedy``,
``samples``; samples with ``tokens``, ``finish_reason``, ``answer``, ``correct``), so this
module does not import the bank's reader.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from router_models.training_data import Example

# What "a short try" means: the learned policy's short answer (policies.learned.SHORT_TOKENS).
SHORT_TOKENS = 256


def answers_within(sample: Any, budget_tokens: int) -> bool:
    """The sample is right, stopped on its own, and took at most ``budget_tokens`` tokens."""
    return (bool(sample.correct) and sample.finish_reason == "stop"
            and len(sample.tokens) <= budget_tokens)


def short_vote_right(samples: Sequence[Any], budget_tokens: int = SHORT_TOKENS) -> bool:
    """Whether the majority vote of ``samples`` cut at ``budget_tokens`` is right: samples that
    did not stop within the budget abstain; the most common answer wins, a tie is lost."""
    finished = [s for s in samples
                if s.finish_reason == "stop" and len(s.tokens) <= budget_tokens
                and s.answer is not None]
    if not finished:
        return False
    counts = Counter(s.answer for s in finished)
    ranked = counts.most_common(2)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return False
    winner = ranked[0][0]
    return any(s.correct for s in finished if s.answer == winner)


def bank_examples(runs: Iterable[Any], short_tokens: int = SHORT_TOKENS) -> Iterator[Example]:
    """One ``Example`` per recorded question (module docstring), dataset ``bank/<suite>``,
    family the suite's name (``gsm8k``, ``hotpotqa``, ...: the same family as the shared
    data's recordings of that benchmark), in the order questions first appear."""
    by_question: dict[str, dict[int, Any]] = {}
    for run in runs:
        by_question.setdefault(run.item.question, {})[int(run.searches)] = run
    for question, by_searches in by_question.items():
        closed = by_searches.get(0)
        searched = [r for n, r in sorted(by_searches.items()) if n > 0]
        suite = next(iter(by_searches.values())).key.split("/", 1)[0]
        difficulty = sequential = search = None
        if closed is not None:
            samples = list(closed.samples) or [closed.greedy]
            difficulty = sum(not answers_within(s, short_tokens) for s in samples) / len(samples)
            vote = short_vote_right(samples, short_tokens)
            chain = bool(closed.greedy.correct)
            sequential = 0.0 if vote else (1.0 if chain else None)
            if searched:
                found = any(bool(r.greedy.correct) for r in searched)
                search = 0.0 if chain else (1.0 if found else None)
        if difficulty is None and sequential is None and search is None:
            continue
        yield Example(question.strip(), f"bank/{suite}", suite, difficulty=difficulty,
                      sequential=sequential, search=search)
