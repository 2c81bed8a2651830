"""Majority vote over sampled answers (self-consistency) and when to stop sampling.

Self-consistency (Wang et al. 2023) samples several reasoning paths and returns the most
frequent final answer. Adaptive-Consistency (Aggarwal et al. 2023, "Let's Sample Step by
Step") samples in steps and stops once the vote is settled, with the Beta stopping criterion:
with v1 and v2 the (weighted) votes of the two leading answers, the leader's share
p1 ~ Beta(v1 + 1, v2 + 1), and sampling stops when P(p1 > 0.5) >= threshold; the paper uses
0.95, which saves up to 7.9x samples with under 0.1% accuracy drop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy.stats import beta

DEFAULT_STOP_THRESHOLD = 0.95  # Aggarwal et al. 2023, C_thresh


@dataclass(frozen=True)
class Ballot:
    """One sample's vote: its normalised answer (None: no extractable answer, no vote) and its
    weight (1.0, or the sample's confidence from logprobs, in (0, 1])."""

    answer: str | None
    weight: float = 1.0


def tally(ballots: Iterable[Ballot]) -> dict[str, float]:
    """Weighted votes per answer, in order of first appearance; answerless ballots skipped."""
    counts: dict[str, float] = {}
    for ballot in ballots:
        if ballot.answer is not None and ballot.answer != "":
            counts[ballot.answer] = counts.get(ballot.answer, 0.0) + ballot.weight
    return counts


def winner(counts: Mapping[str, float]) -> str | None:
    """The answer with the most votes; ties go to the answer seen first. None when empty."""
    best: str | None = None
    for answer, votes in counts.items():
        if best is None or votes > counts[best]:
            best = answer
    return best


def stop_probability(counts: Mapping[str, float]) -> float:
    """P(the leading answer's share > 0.5 | votes) under the Beta criterion; 0 when no votes."""
    ordered = sorted(counts.values(), reverse=True)
    if not ordered:
        return 0.0
    v1 = ordered[0]
    v2 = ordered[1] if len(ordered) > 1 else 0.0
    return float(beta.sf(0.5, v1 + 1.0, v2 + 1.0))


def is_settled(counts: Mapping[str, float], remaining: int,
               threshold: float = DEFAULT_STOP_THRESHOLD) -> bool:
    """True when sampling may stop: the Beta criterion reaches ``threshold``, or the
    ``remaining`` samples (each worth at most one vote) can no longer change the leader."""
    ordered = sorted(counts.values(), reverse=True)
    if not ordered:
        return False
    second = ordered[1] if len(ordered) > 1 else 0.0
    if ordered[0] - second > remaining:
        return True
    return stop_probability(counts) >= threshold
