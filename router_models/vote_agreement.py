"""What a vote can buy over one answer, bounded from usage alone: how often its first sample
already stated the answer the vote elected.

A vote's first sample is itself one answer of the same model at the same size. Where the first
sample states the answer the vote elects, the vote and that one answer are right or wrong
together; they can differ only on the votes where it did not. So, per kind of prompt,

    accuracy(vote) - accuracy(one sample) <= P(the first sample did not state the vote's answer)

whatever the answers' correctness, with no feedback at all (a first sample cut before stating
an answer counts as not stating it: one answer cut there would have had none either). A kind
whose votes nearly always agree with their first sample (a model that knows the answer or holds
one guess, the all-or-nothing prompts on which self-consistency gains nothing, Wang et al.
2023) pays two or more samples for at most a few points; ``VoteAgreement.gain_bound`` gives
the bound with confidence, so a policy can give such a kind one answer and spend the tokens
where votes pay (compute-optimal allocation, Snell et al. 2024).

The bound is the one-sided ``CONFIDENCE`` Wilson upper bound of the disagreement rate over the
last ``WINDOW`` votes of a key (statsmodels ``proportion_confint``): it is loose on few votes
(no disagreement in 20 votes still bounds the gain at 12 points), so a kind is judged only on
enough evidence, and it follows a backend whose behaviour changes as long as votes of the key
are still run (``LearnedPolicy`` keeps exploring the vote of a key it gives one answer).
"""

from __future__ import annotations

import functools
from collections import deque

from router_models.experiments.stats import wilson_interval

WINDOW = 256  # recent votes per key, as ``answer_lengths.WINDOW``
CONFIDENCE = 0.95  # one-sided


class VoteAgreement:
    """Per key (a kind of prompt), the last ``window`` votes' agreement with their first
    sample, and the bound it puts on what a vote gains over one answer (module docstring).

    Args:
        window: votes kept per key.
    """

    def __init__(self, window: int = WINDOW):
        self.window = int(window)
        self._seen: dict[str, deque[bool]] = {}

    def observe(self, key: str, first_agrees: bool) -> None:
        """Record one vote: ``first_agrees`` when its first sample stated the answer the vote
        elected."""
        self._seen.setdefault(key, deque(maxlen=self.window)).append(bool(first_agrees))

    def keys_seen(self) -> list[str]:
        """The keys with votes."""
        return list(self._seen)

    def count(self, key: str) -> tuple[int, int]:
        """(votes whose first sample agreed, votes) kept for ``key``."""
        seen = self._seen.get(key, ())
        return sum(seen), len(seen)

    def gain_bound(self, key: str, confidence: float = CONFIDENCE) -> float:
        """The most a vote of ``key`` gains over one answer, in accuracy (a share in [0, 1]),
        at one-sided ``confidence``: the Wilson upper bound of the share of votes whose first
        sample did not state the elected answer. 1.0 before any vote."""
        agreed, votes = self.count(key)
        return _upper_bound(votes - agreed, votes, confidence)

    def state(self) -> dict[str, list[int]]:
        """JSON-ready votes (1 agreed, 0 not), keyed by ``str(key)``."""
        return {str(k): [int(a) for a in v] for k, v in self._seen.items()}

    def restore(self, state: dict[str, list[int]]) -> None:
        """Load votes written by ``state`` (string keys).

        Raises:
            ValueError, TypeError: a malformed state.
        """
        for key, rows in state.items():
            if not isinstance(rows, list):
                raise TypeError(f"vote agreement of {key!r} is not a list")
            for agreed in rows:
                self.observe(key, bool(int(agreed)))


@functools.lru_cache(maxsize=4096)  # pure; a decision on a kind whose votes gave way asks it
def _upper_bound(disagreed: int, votes: int, confidence: float) -> float:
    """The one-sided ``confidence`` upper end of ``wilson_interval`` (the two-sided interval at
    ``2 x confidence - 1``) of ``disagreed / votes``; 1.0 with no votes."""
    interval = wilson_interval(disagreed, votes, alpha=2 * (1 - confidence))
    return 1.0 if interval is None else interval[1]
