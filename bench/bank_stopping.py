"""Early stopping of a vote, replayed on an outcome bank's recorded samples.

A run's samples were drawn in a fixed order (seeds ``crc32(key) + i``), so a stopping rule can
be replayed exactly: it reads the answers one wave at a time, in recorded order, and stops
when its criterion holds; the answer is the majority vote (``router_models.voting``) of the
samples read (weighted as the rule weighs votes, below). A fixed vote of all recorded samples
(8 in the shipped bank) is the reference. Samples are read uncut (the recorded length, at most
512 tokens each).

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

Confidence-aware rules (``weights``, ``consensus``, ``keep_percent``, ``conf_floor``) read
each sample's recorded confidence as well:

- DeepConf online (Fu et al. 2025, "Deep Think with Confidence", arXiv 2508.15260, its online
  algorithm; the filter as facebookresearch/deepconf ``deepconf-online.py`` runs it): a
  trace's confidence is its lowest group confidence (``BankSample.conf_min``: token confidence
  ``-mean(top-20 logprobs)`` averaged over sliding windows, here of 32 tokens; the lowest
  window), and each vote weighs its trace's confidence, ``V(a) = sum of C_t over the traces
  answering a``. *Consensus stop*: after a warm-up of ``N_init`` traces, sampling stops once
  the leading answer's share ``beta = V(a*) / sum_a V(a)`` reaches ``tau`` (the paper: 0.95).
  *Confidence filter*: the threshold ``s`` is the ``(100 - eta)``-th percentile of the warm-up
  traces' confidences (DeepConf-low keeps the top ``eta`` = 10%, DeepConf-high 90%); a later
  trace whose group confidence falls below ``s`` is terminated while it is generated and casts
  no vote, and a warm-up trace below ``s`` casts none either (the repository's vote). Here
  the warm-up is the first wave (the paper warms up on 16 of 512 traces; a vote of 8 allows 2
  to 4), and ``conf_floor`` is the same filter with a threshold fixed in advance, set on other
  items (the cross-fitted sweep chooses it on the other half). A terminated trace still counts
  as one sample read; the bank holds only its whole ``conf_min``, not where its window first
  fell below ``s``, so its tokens count whole (the replay's tokens are an upper bound).
- Adaptive-Consistency with confidence-weighted counts (as ReASC, Kim et al. 2026,
  "Reliability-Aware Adaptive Self-Consistency", weights its Beta accumulation): the Beta
  criterion on votes that weigh at most 1, either the gateway's own weight (``gateway``: the
  geometric mean token probability ``exp(lp_mean)``, which ``service.strategies.sampling``
  computes from logprobs) or DeepConf's confidence relative to the most confident sample read
  so far (``conf``: ``conf_min / max conf_min``). With ``consensus`` set as well, a ``beta``
  rule stops at whichever criterion holds first.

A rule's answer is the vote of the samples it read, weighted and filtered as its stopping
criterion is (a plain majority for the unweighted rules); the reference stays the plain fixed
vote of all samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.bank_figures import ballot_answer, right
from router_models.bank import BankRun
from router_models.voting import Ballot, is_settled, tally, winner
from service.settings import Settings
from service.strategies.parallel_vote import first_wave

FULL = 10 ** 6  # a cut longer than any recorded sample: the whole sample
WEIGHTS = ("none", "conf", "gateway")  # how a sample's vote weighs: StopRule.weights
KINDS = ("beta", "esc", "consensus")


@dataclass(frozen=True)
class StopRule:
    """One stopping rule.

    Args:
        name: the label printed in tables.
        kind: ``beta`` (Adaptive-Consistency), ``esc`` (ESC windows) or ``consensus``
            (DeepConf's consensus stop alone).
        first_wave, wave: samples read before the first check (DeepConf's warm-up), then
            between checks (``beta``, ``consensus``).
        threshold: the Beta criterion's threshold in (0, 1] (``beta``).
        window: ESC's window size in samples (``esc``).
        futility_after, futility_lead: stop for futility once at least ``futility_after``
            samples are read and the leading answer holds at most ``futility_lead`` votes
            (``beta``; 0: never).
        weights: what a vote weighs (``WEIGHTS``; ``beta`` and ``consensus``, as the two
            filters below): ``none`` 1; ``conf`` DeepConf's lowest group confidence, relative
            to the most confident sample read (so in (0, 1]); ``gateway`` ``exp(lp_mean)``.
        consensus: DeepConf's consensus threshold tau in (0, 1]: stop once the leading
            answer's weighted share of the votes reaches it (``consensus``; with ``beta`` an
            extra stop; 0: none).
        keep_percent: DeepConf's online filter, eta in (0, 100]: a sample whose lowest group
            confidence is below the (100 - eta)-th percentile of the first wave's casts no
            vote (0: no filter).
        conf_floor: a sample whose lowest group confidence is below this casts no vote
            (0: none).
    """

    name: str
    kind: str
    first_wave: int = 1
    wave: int = 1
    threshold: float = 0.95
    window: int = 0
    futility_after: int = 0
    futility_lead: int = 0
    weights: str = "none"
    consensus: float = 0.0
    keep_percent: int = 0
    conf_floor: float = 0.0

    def replay(self, answers: Sequence[str | None], conf: Sequence[float] | None = None,
               lp_mean: Sequence[float] | None = None) -> tuple[int, dict[str, float]]:
        """Read ``answers`` (in recorded order) until the rule stops: (samples read, between
        1 and ``len(answers)``; the votes of those read, weighted and filtered as the rule
        weighs them, as ``router_models.voting.tally`` counts them: the rule's answer is
        their ``winner``).

        Args:
            answers: each sample's answer, None for a sample without one.
            conf: each sample's lowest group confidence (``BankSample.conf_min``, > 0).
            lp_mean: each sample's mean token log-probability (nats, <= 0).

        Raises:
            ValueError: ``answers`` is empty; an unknown kind or weight; the rule reads a
                confidence that is not given; ``conf`` or ``lp_mean`` is not as long as
                ``answers``.
        """
        if not answers:
            raise ValueError("a vote needs at least one sample")
        if self.kind not in KINDS:
            raise ValueError(f"unknown stopping rule kind {self.kind!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown vote weights {self.weights!r}; known: {WEIGHTS}")
        needs_conf = self.weights == "conf" or self.keep_percent > 0 or self.conf_floor > 0
        if (needs_conf and conf is None) or (self.weights == "gateway" and lp_mean is None):
            raise ValueError(f"rule {self.name!r} reads each sample's confidence")
        for values in (conf, lp_mean):
            if values is not None and len(values) != len(answers):
                raise ValueError("one confidence per sample expected")
        if self.kind == "esc":
            read = _esc_used(answers, self.window)
            return read, tally(Ballot(a) for a in answers[:read])
        return _waves(self, answers, conf, lp_mean)

    def used(self, answers: Sequence[str | None], conf: Sequence[float] | None = None,
             lp_mean: Sequence[float] | None = None) -> int:
        """How many of ``answers`` the rule reads before it stops (``replay``'s first value);
        raises as ``replay``."""
        return self.replay(answers, conf, lp_mean)[0]


def _ballots(rule: StopRule, answers: Sequence[str | None], conf: Sequence[float] | None,
             lp_mean: Sequence[float] | None, read: int) -> list[Ballot]:
    """The votes of the first ``read`` samples under ``rule``'s filter and weights; a filtered
    sample's ballot has no answer (it casts no vote but was read). DeepConf's weights are
    taken relative to the most confident sample read: the Beta criterion needs votes worth at
    most 1, and a share or a winner does not change when every weight is scaled alike."""
    floor = rule.conf_floor
    if rule.keep_percent and conf is not None:
        warm = list(conf[:min(rule.first_wave, len(conf))])
        # numpy's linear percentile, as facebookresearch/deepconf sets its conf_bar.
        floor = max(floor, float(np.percentile(warm, 100 - rule.keep_percent)))
    ballots = []
    top = max(conf[:read]) if conf is not None and read else 1.0
    for i, answer in enumerate(answers[:read]):
        c = conf[i] if conf is not None else 1.0
        if floor and c < floor:
            ballots.append(Ballot(None))
            continue
        weight = 1.0
        if rule.weights == "conf":
            weight = c / top
        elif rule.weights == "gateway" and lp_mean is not None:
            weight = math.exp(lp_mean[i])
        ballots.append(Ballot(answer, weight))
    return ballots


def _waves(rule: StopRule, answers: Sequence[str | None], conf: Sequence[float] | None,
           lp_mean: Sequence[float] | None) -> tuple[int, dict[str, float]]:
    """The ``beta`` and ``consensus`` kinds: read a first wave, then waves, checking the
    rule's criteria after each."""
    read = min(rule.first_wave, len(answers))
    while True:
        counts = tally(_ballots(rule, answers, conf, lp_mean, read))
        if read >= len(answers) or _stops(rule, counts, read, len(answers)):
            return read, counts
        read = min(read + rule.wave, len(answers))


def _stops(rule: StopRule, counts: dict[str, float], read: int, width: int) -> bool:
    if rule.consensus and counts:
        total = sum(counts.values())
        if total > 0 and max(counts.values()) / total >= rule.consensus:
            return True
    if rule.kind != "beta":
        return False
    if is_settled(counts, remaining=width - read, threshold=rule.threshold):
        return True
    return bool(rule.futility_after and read >= rule.futility_after
                and max(counts.values(), default=0) <= rule.futility_lead)


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


def sample_answers(run: BankRun) -> list[str | None]:
    """Each of ``run``'s samples' vote, uncut, as the gateway's votes read it
    (``bench.bank_figures.ballot_answer``)."""
    return [ballot_answer(run, s, FULL) for s in run.samples]


def stopped_vote(run: BankRun, rule: StopRule,
                 answers: Sequence[str | None] | None = None) -> StoppedVote:
    """Replay ``rule`` on ``run``'s samples (uncut, recorded order, with their recorded
    confidences); the rule's answer is the winner of its votes. ``answers``: the run's
    ``sample_answers``, when already read (a sweep replays many rules on one run). Raises
    ValueError when the run holds no samples."""
    if answers is None:
        answers = sample_answers(run)
    used, counts = rule.replay(answers, [s.conf_min for s in run.samples],
                               [s.lp_mean for s in run.samples])
    return StoppedVote(
        correct=right(run, winner(counts)), samples=used,
        tokens=sum(len(s.tokens) for s in run.samples[:used]),
        fixed_correct=right(run, winner(tally(Ballot(a) for a in answers))),
        fixed_samples=len(answers), fixed_tokens=sum(len(s.tokens) for s in run.samples))


if __name__ == "__main__":
    raise SystemExit("bench.bank_stopping is the early-stopping replay that bench.bank_findings "
                     "reads; run: python -m bench.bank_findings --bank router_models/data/bank "
                     "--out docs/findings")
