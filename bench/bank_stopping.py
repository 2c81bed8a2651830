"""Early stopping of a vote, replayed on an outcome bank's recorded samples.

A run's samples were drawn in a fixed order (seeds ``crc32(key) + i``), so a stopping rule can
be replayed exactly: it reads the answers one wave at a time, in recorded order, and stops
when its criterion holds; the answer is the plain majority vote (``router_models.voting``) of
the samples read. A fixed vote of all recorded samples (8 in the shipped bank) is the
reference. Samples are read uncut (the recorded length, at most 512 tokens each).

Rules:

- Adaptive-Consistency (Aggarwal et al. 2023): the Beta stopping criterion of
  ``router_models.voting.is_settled`` (P(leader's share > 0.5) >= threshold, or the remaining
  samples cannot change the leader), checked after every wave; the paper draws one sample
  at a time with threshold 0.95. The gateway's own ``parallel_vote`` uses a first wave of
  ``vote_first_wave`` samples, then waves of ``vote_wave``, at ``vote_stop_threshold``.
- Stopping for futility, as group sequential trials stop a trial that cannot succeed (Jennison
  and Turnbull 2000, "Group Sequential Methods with Applications to Clinical Trials"): a Beta
  rule that also stops once ``futility_after`` samples are read and the leading answer holds
  at most ``futility_lead`` of them (the samples scatter: the model does not know, and more
  samples are unlikely to elect the right answer).
- ESC, Early-stopping Self-Consistency (Li et al. 2024): samples are drawn in windows of ``w``;
  sampling stops after the first window whose answers are all the same (an answerless sample
  never agrees). The paper reports about 80% fewer samples on GSM8K at equal accuracy.

The gateway weights each vote by the sample's confidence; these replays use unweighted
votes, so the rules are compared with the plain fixed vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.bank_figures import ballot_answer, right
from router_models.bank import BankRun
from router_models.voting import Ballot, is_settled, tally, winner
from service.settings import Settings
from service.strategies.parallel_vote import first_wave

FULL = 10 ** 6  # a cut longer than any recorded sample: the whole sample


@dataclass(frozen=True)
class StopRule:
    """One stopping rule.

    Args:
        name: the label printed in tables.
        kind: ``beta`` (Adaptive-Consistency) or ``esc`` (ESC windows).
        first_wave, wave: samples read before the first check, then between checks (``beta``).
        threshold: the Beta criterion's threshold in (0, 1] (``beta``).
        window: ESC's window size in samples (``esc``).
        futility_after, futility_lead: stop for futility once at least ``futility_after``
            samples are read and the leading answer holds at most ``futility_lead`` of them
            (``beta``; 0: never).
    """

    name: str
    kind: str
    first_wave: int = 1
    wave: int = 1
    threshold: float = 0.95
    window: int = 0
    futility_after: int = 0
    futility_lead: int = 0

    def used(self, answers: Sequence[str | None]) -> int:
        """How many of ``answers`` (in recorded order) the rule reads before it stops:
        between 1 and ``len(answers)``. Raises ValueError for an unknown kind or when
        ``answers`` is empty."""
        if not answers:
            raise ValueError("a vote needs at least one sample")
        if self.kind == "beta":
            return _beta_used(answers, self.first_wave, self.wave, self.threshold,
                              self.futility_after, self.futility_lead)
        if self.kind == "esc":
            return _esc_used(answers, self.window)
        raise ValueError(f"unknown stopping rule kind {self.kind!r}")


def _beta_used(answers: Sequence[str | None], first_wave: int, wave: int,
               threshold: float, futility_after: int = 0, futility_lead: int = 0) -> int:
    read = min(first_wave, len(answers))
    while read < len(answers):
        counts = tally(Ballot(a) for a in answers[:read])
        if is_settled(counts, remaining=len(answers) - read, threshold=threshold):
            break
        if futility_after and read >= futility_after and \
                max(counts.values(), default=0) <= futility_lead:
            break
        read = min(read + wave, len(answers))
    return read


def _esc_used(answers: Sequence[str | None], window: int) -> int:
    if window < 1:
        raise ValueError("ESC needs a window of at least one sample")
    read = 0
    while read < len(answers):
        chunk = answers[read:read + window]
        read += len(chunk)
        if chunk[0] is not None and all(a == chunk[0] for a in chunk):
            break
    return read


def default_rules(width: int = 8) -> list[StopRule]:
    """The rules the findings compare for votes of ``width`` samples: Adaptive-Consistency as
    published (one at a time, 0.95), as the gateway's ``parallel_vote`` runs it with the
    default ``service.settings.Settings`` (its first wave from ``first_wave``), and ESC with
    windows of 2 and 4 samples (the paper's window is 5 of 40; these votes hold 8)."""
    gateway = Settings()
    wave = first_wave(width, gateway)
    return [
        StopRule("Adaptive-Consistency (1 at a time, Beta 0.95)", "beta"),
        StopRule(f"gateway default (first wave {wave}, then {gateway.vote_wave}, "
                 f"Beta {gateway.vote_stop_threshold:g})", "beta",
                 first_wave=wave, wave=gateway.vote_wave,
                 threshold=gateway.vote_stop_threshold),
        StopRule("ESC (window 2)", "esc", window=2),
        StopRule("ESC (window 4)", "esc", window=4),
    ]


@dataclass(frozen=True)
class StoppedVote:
    """One run's early-stopped vote: whether it is right, samples read, their completion
    tokens; and the same for the fixed vote of all samples."""

    correct: bool
    samples: int
    tokens: int
    fixed_correct: bool
    fixed_samples: int
    fixed_tokens: int


def stopped_vote(run: BankRun, rule: StopRule) -> StoppedVote:
    """Replay ``rule`` on ``run``'s samples (uncut, recorded order). Raises ValueError when the
    run holds no samples."""
    answers = [ballot_answer(run, s, FULL) for s in run.samples]  # as the gateway's votes
    used = rule.used(answers)

    def majority(chosen: Sequence[str | None]) -> bool:
        return right(run, winner(tally(Ballot(a) for a in chosen)))

    return StoppedVote(
        correct=majority(answers[:used]), samples=used,
        tokens=sum(len(s.tokens) for s in run.samples[:used]),
        fixed_correct=majority(answers), fixed_samples=len(answers),
        fixed_tokens=sum(len(s.tokens) for s in run.samples))


if __name__ == "__main__":
    raise SystemExit("bench.bank_stopping is the early-stopping replay that bench.bank_findings "
                     "reads; run: python -m bench.bank_findings --bank router_models/data/bank "
                     "--out docs/findings")
