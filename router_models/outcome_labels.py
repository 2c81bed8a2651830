"""From paired outcomes (a direct try and a chain, per question) to chance-corrected labels.

A question answered once directly and once with a chain of thought gives two observations:
D (the direct answer was right) and C (the chain's answer was right). Behind them are two
latent facts: K_d, the model reaches the answer directly, and K_c, a chain reaches it. On a
question with k answer options a model that does not know still guesses right with
probability g = 1/k (g = 0 for open answers such as numbers or words), so

    D = K_d or guess(g),    C = K_c or guess(g),    guesses independent.

The four latent cells p[K_d, K_c] of one dataset follow from its four observed cells by the
method of moments (the map above is linear and triangular in g; see ``latent_cells``). The
``sequential`` label of a question is then the posterior of "the chain reaches what the
direct try does not" (K_c and not K_d) among questions that one of them reaches (K_c or K_d);
its weight is the posterior probability of that condition. Questions neither reaches weigh 0:
they say nothing about which of the two helps. With g = 0 this is exactly "chain right where
the direct answer is wrong" (1), "direct answer right" (0), both wrong (no label). With g > 0
a right answer may be a lucky guess: on coin flips (g = 1/2), a direct answer right by chance
no longer reads as "a chain is not needed".

Why the direct try stands for the vote: the direct answer is greedy, the mode of the model's
short answers, which is what a majority vote of short samples converges to. "The chain is right
where the direct answer is wrong" is therefore "one chain succeeds where a vote of short tries
does not", the distinction the policy needs between ``sequential`` and ``parallel_vote``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The latent cells' order: (K_d, K_c) = (1, 1), (1, 0), (0, 1), (0, 0).
CELLS = ((1, 1), (1, 0), (0, 1), (0, 0))


@dataclass(frozen=True)
class LatentCells:
    """The estimated shares of one dataset's questions in each latent cell (sum 1), and the
    chance ``guess`` of a right answer without knowing it."""

    p11: float
    p10: float
    p01: float
    p00: float
    guess: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(p11, p10, p01, p00), in ``CELLS`` order."""
        return (self.p11, self.p10, self.p01, self.p00)


def latent_cells(pairs: Iterable[tuple[bool | None, bool]], guess: float) -> LatentCells:
    """Method-of-moments estimate of the latent cells from observed (D, C) pairs.

    Args:
        pairs: (direct right, chain right) per question; pairs whose D is None (no direct
            answer in the expected form) are left out of the estimate.
        guess: the chance g in [0, 1) of guessing right (1/k for k options, 0 for open answers).

    Returns:
        ``LatentCells``; negative moment estimates (sampling noise) are clipped to 0 and the
        cells renormalised.

    Raises:
        ValueError: no pair with a direct answer, or ``guess`` outside [0, 1).
    """
    if not 0.0 <= guess < 1.0:
        raise ValueError(f"guess must be in [0, 1), got {guess}")
    counts = {cell: 0 for cell in CELLS}
    for d, c in pairs:
        if d is not None:
            counts[(int(d), int(c))] += 1
    n = sum(counts.values())
    if n == 0:
        raise ValueError("no question with a direct answer to estimate the cells from")
    obs = {cell: counts[cell] / n for cell in CELLS}
    g, h = guess, 1.0 - guess
    p00 = obs[(0, 0)] / h ** 2
    p10 = obs[(1, 0)] / h - g * p00
    p01 = obs[(0, 1)] / h - g * p00
    p11 = 1.0 - p00 - p10 - p01
    raw = [max(0.0, p) for p in (p11, p10, p01, p00)]
    total = sum(raw)
    k11, k10, k01, k00 = (p / total for p in raw)
    return LatentCells(k11, k10, k01, k00, guess=guess)


def _likelihood(observed: bool | None, knows: int, guess: float) -> float:
    if observed is None:
        return 1.0
    if knows:
        return 1.0 if observed else 0.0
    return guess if observed else 1.0 - guess


def sequential_label(direct: bool | None, chain: bool, cells: LatentCells
                     ) -> tuple[float, float]:
    """The ``sequential`` label of one question and its weight (module docstring).

    Args:
        direct: the direct answer was right; None when it gave no answer in the expected form
            (then it is marginalised out).
        chain: the chain's answer was right.
        cells: the question's dataset's ``latent_cells``.

    Returns:
        (label, weight): label = P(K_c and not K_d | D, C, K_c or K_d) in [0, 1], weight =
        P(K_c or K_d | D, C) in [0, 1]. A weight of 0 means no information (label 0).
    """
    post = [p * _likelihood(direct, kd, cells.guess) * _likelihood(chain, kc, cells.guess)
            for p, (kd, kc) in zip(cells.as_tuple(), CELLS, strict=True)]
    total = sum(post)
    if total <= 0.0:
        return 0.0, 0.0
    reached = post[0] + post[1] + post[2]
    if reached <= 0.0:
        return 0.0, 0.0
    return post[2] / reached, reached / total
