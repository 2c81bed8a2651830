"""The findings of issue 14 read off a real model's outcome bank, without a gateway or model:
markdown tables on stdout, PNG plots in ``--out``.

Per family (a bank suite; HotpotQA with 0 searches, so that every item counts once; ``all``
pools the families):

a. **Votes against one chain at equal tokens**, at each budget ``B`` (tokens): the arms of
   ``bench.bank_figures`` (``greedy`` / ``chain`` cut at ``B``; ``vote k`` of the first ``k``
   samples cut at ``B // k``), the tokens each actually spends (a chain that stops early spends
   less than ``B``), and the best vote against the best single chain on the same items: the
   paired difference in points with its paired bootstrap 95% interval and McNemar's exact
   p-value (``service.evaluation.analysis.paired_difference``). Both sides are the better of
   their arms at that budget, picked after the fact, as ``ttc-router eval``'s winner table
   does; the winner "flips" where the better side changes from one budget to the next.
b. **The search axis on HotpotQA**: the greedy chain and a vote of 8 with 0, 1 and 3 BM25
   searches' hits in the prompt, the tokens they cost, and each count against 0 searches on
   the items recorded with both.
c. **Early stopping** (``bench.bank_stopping``): Adaptive-Consistency and ESC replayed over the
   recorded samples in recorded order, against the fixed vote of all of them (issue 14's
   target: within 1 point of its accuracy with at least 2x fewer samples overall); and a
   sweep of Beta rules, each half of the items scored with the rule chosen on the other
   (``cross_fitted_sweep``); and the same sweep with stopping for futility added (a vote
   whose first samples scatter stops too). Each sweep's two held-out halves are also pooled
   (``pooled``): every item scored with a rule chosen without it.
c2. **Confidence-aware early stopping** (``bench.bank_stopping``): DeepConf online's consensus
   stop and confidence filter (Fu et al. 2025), Beta rules on confidence-weighted votes, and
   both together, at their published settings (``confidence_rules``) and cross-fitted
   (``confidence_sweep_rules``); with ``--out``, every rule of those sweeps in sample in
   ``bank_stopping_grid.md``.
d. **DeepConf** (Fu et al. 2025): confidence-weighted and confidence-filtered votes against the
   plain vote (``bench.bank_figures.confidence_outcomes``), and how well each sample's
   confidence separates its right from its wrong answers (ROC AUC, scikit-learn).
e. **One chain, greedy or sampled**: the greedy chain against the first sampled chain
   (temperature 0.7) of the same items, both within the samples' recorded room
   (``SAMPLE_TOKENS``), paired: what ``chain_temperature`` (``service.routing.greedy_chain``)
   rests on.
f. **Greedy first** (``bench.greedy_first``): votes of 3, 5 and 8 samples of 256 and 512
   tokens whose first ballot is the greedy chain, against plain votes and the greedy chain,
   and the gateway's early stopping on both. Read over every run with samples, as
   ``bench.greedy_first`` reads them (HotpotQA at each search count, so n counts runs, not
   items), unlike the sections above.

Accuracies are percent with Wilson 95% intervals; n is the number of items. A bank still being
recorded is read up to its last complete line.

With ``--since-bank OLD`` every table reads only the runs that are not in the bank folder
``OLD`` (the same bank as it stood earlier: after ``git archive REV router_models/data/bank |
tar -x -C /tmp/old``, OLD is ``/tmp/old/router_models/data/bank``, the folder holding
``bank.json``): a check, on items recorded after a decision, of what that decision was made
on.

Usage: ``python -m bench.bank_findings [--bank PATH] [--budgets 128,256,512,1024,2048,4096]
[--since-bank OLD] [--out docs/findings]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sklearn.metrics import roc_auc_score

from bench.bank_figures import (
    ARMS,
    CONFIDENCE_VOTES,
    SAMPLE_TOKENS,
    Cell,
    ballot_answer,
    confidence_outcomes,
    cut_answer,
    outcome,
    right,
    spent,
)
from bench.bank_stopping import (
    FULL,
    StoppedVote,
    StopRule,
    default_rules,
    sample_answers,
    stopped_vote,
)
from bench.options import load_bank, token_budgets
from router_models.bank import Bank, BankError, BankRun
from router_models.experiments.stats import ArmTotals, mean_interval
from router_models.voting import Ballot, tally
from service.evaluation.analysis import paired_difference

ALL = "all"
DEFAULT_BUDGETS = (128, 256, 512, 1024, 2048, 4096)
SEARCH_COUNTS = (0, 1, 3)
VOTE_ARMS = tuple(a for a in ARMS if a.startswith("vote "))
CHAIN_ARMS = tuple(a for a in ARMS if not a.startswith("vote "))


@dataclass(frozen=True)
class Paired:
    """A paired comparison a - b on ``n`` items: the difference in accuracy (0..1), its paired
    bootstrap 95% interval and McNemar's exact p-value; all None when n = 0."""

    n: int
    difference: float | None = None
    ci95: tuple[float, float] | None = None
    p_value: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and p < 0.05."""
        return (self.ci95 is not None and self.p_value is not None and self.p_value < 0.05
                and (self.ci95[0] > 0 or self.ci95[1] < 0))

    def render(self) -> str:
        """``+20.0 [-20.0, 60.0], p = 0.62``: points, interval, p; ``-`` when n = 0."""
        if self.difference is None or self.ci95 is None or self.p_value is None:
            return "-"
        low, high = self.ci95
        return (f"{100 * self.difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], "
                f"p = {self.p_value:.2g}")


def paired(a: Sequence[bool], b: Sequence[bool]) -> Paired:
    """``Paired`` for outcomes ``a`` and ``b`` of the same items (same order). Raises
    ValueError when the lengths differ."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    if not a:
        return Paired(0)
    difference, ci, p = paired_difference(list(a), list(b))
    return Paired(len(a), difference, ci, p)


def recorded_since(bank: Bank, old: Bank) -> Bank:
    """``bank`` without the runs ``old`` holds (by key): what was recorded since ``old``. The
    result's ``meta["since"]`` names ``old``'s folder (the report says so).

    Raises:
        BankError: no run is new, or the two were recorded from different model files (their
            ``model_sha256`` differ: runs of the same key are then not the same outcomes).
    """
    ours, theirs = bank.meta.get("model_sha256"), old.meta.get("model_sha256")
    if ours and theirs and ours != theirs:
        raise BankError(f"{old.path} was recorded from another model file ({theirs[:12]}, "
                        f"not {ours[:12]})")
    known = {run.key for run in old.runs}
    fresh = [run for run in bank.runs if run.key not in known]
    if not fresh:
        raise BankError(f"every run of {bank.path} is in {old.path}")
    return Bank(fresh, {**bank.meta, "since": str(old.path)}, bank.path)


def families(bank: Bank) -> dict[str, list[BankRun]]:
    """Runs per suite (HotpotQA: its 0-search runs), sorted, then ``all`` pooling them."""
    out: dict[str, list[BankRun]] = {}
    for run in bank.runs:
        if run.searches == 0:
            out.setdefault(run.suite, []).append(run)
    out = dict(sorted(out.items()))
    out[ALL] = [run for runs in out.values() for run in runs]
    return out


# a. votes against one chain at equal tokens ------------------------------------------------

@dataclass(frozen=True)
class VoteChainRow:
    """One (family, budget): per arm its accuracy and mean completion tokens spent; the best
    vote arm and best chain arm; their paired comparison (vote - chain); the winning side
    (``vote``, ``chain``, ``tie``, or ``-`` when no item has both)."""

    family: str
    budget: int
    n: int
    cells: dict[str, Cell]
    tokens: dict[str, float]
    vote_arm: str
    chain_arm: str
    comparison: Paired
    winner: str


def _best(arms: Sequence[str], cells: dict[str, Cell], tokens: dict[str, float]) -> str:
    # Arms with items only (a bank of 4 samples has no vote of 8); higher accuracy first,
    # then fewer tokens spent, then the order of ARMS.
    usable = [a for a in arms if cells[a].n] or list(arms)
    return min(usable, key=lambda a: (-(cells[a].correct / max(1, cells[a].n)), tokens[a],
                                      arms.index(a)))


def vote_vs_chain(family: str, runs: Sequence[BankRun], budget: int) -> VoteChainRow:
    """The ``VoteChainRow`` of ``runs`` at ``budget`` tokens."""
    results = {arm: [outcome(r, arm, budget) for r in runs] for arm in ARMS}
    cells = {arm: Cell(sum(o for o in res if o), sum(o is not None for o in res))
             for arm, res in results.items()}
    tokens = {arm: (sum(spent(r, arm, budget) for r in runs) / len(runs) if runs else 0.0)
              for arm in ARMS}
    vote_arm = _best(VOTE_ARMS, cells, tokens)
    chain_arm = _best(CHAIN_ARMS, cells, tokens)
    pairs = [(v, c) for v, c in zip(results[vote_arm], results[chain_arm], strict=True)
             if v is not None and c is not None]
    comparison = paired([v for v, _ in pairs], [c for _, c in pairs])
    diff = comparison.difference
    sides = {True: "vote", False: "chain"}
    winner = "-" if diff is None else ("tie" if diff == 0 else sides[diff > 0])
    return VoteChainRow(family, budget, len(runs), cells, tokens, vote_arm, chain_arm,
                        comparison, winner)


def cut_by_recording(runs: Sequence[BankRun]) -> tuple[float, float]:
    """Shares (0..1) of greedy chains and of samples that the recording's ``max_tokens`` cut
    (``finish_reason: length``): beyond that length (in the shipped bank 512 tokens for a
    sample, 2,048 for the greedy chain: ``bench/long_chains.py``) a chain cannot think longer
    in replay, so budgets above it compare against the cut chain."""
    greedy = [r.greedy.finish_reason == "length" for r in runs]
    samples = [s.finish_reason == "length" for r in runs for s in r.samples]
    return (sum(greedy) / len(greedy) if greedy else 0.0,
            sum(samples) / len(samples) if samples else 0.0)


def flips(rows: Sequence[VoteChainRow]) -> list[str]:
    """Where the winning side changes along one family's rows (by budget, ties skipped):
    e.g. ``chain -> vote at 4096``."""
    out, last = [], None
    for row in sorted(rows, key=lambda r: r.budget):
        if row.winner in ("tie", "-"):
            continue
        if last is not None and row.winner != last:
            out.append(f"{last} -> {row.winner} at {row.budget}")
        last = row.winner
    return out


# b. the search axis on HotpotQA -------------------------------------------------------------

@dataclass(frozen=True)
class SearchRow:
    """HotpotQA with ``searches`` searches: items; greedy chain and vote of all samples (uncut)
    accuracy; mean prompt tokens (the hits are prompt text), mean completion tokens of the
    greedy chain and of the whole vote; each arm against 0 searches on the shared items."""

    searches: int
    n: int
    greedy: Cell
    vote: Cell
    prompt_tokens: float
    greedy_tokens: float
    vote_tokens: float
    greedy_vs_none: Paired
    vote_vs_none: Paired


def search_axis(bank: Bank, counts: Sequence[int] = SEARCH_COUNTS) -> list[SearchRow]:
    """One ``SearchRow`` per search count with at least one HotpotQA run."""
    by_count: dict[int, dict[str, BankRun]] = {}
    for run in bank.runs:
        if run.suite == "hotpotqa":
            by_count.setdefault(run.searches, {})[run.item.item_id] = run
    base = by_count.get(0, {})

    def voted(run: BankRun) -> bool:
        return bool(run.samples) and confidence_outcomes(run)["vote"]

    rows = []
    for count in counts:
        runs = by_count.get(count)
        if not runs:
            continue
        greedy = {i: right(r, cut_answer(r, r.greedy, FULL)) for i, r in runs.items()}
        votes = {i: voted(r) for i, r in runs.items()}
        shared = sorted(set(runs) & set(base))
        base_greedy = [right(base[i], cut_answer(base[i], base[i].greedy, FULL)) for i in shared]
        n = len(runs)
        rows.append(SearchRow(
            count, n, Cell(sum(greedy.values()), n), Cell(sum(votes.values()), n),
            sum(r.prompt_tokens for r in runs.values()) / n,
            sum(len(r.greedy.tokens) for r in runs.values()) / n,
            sum(sum(len(s.tokens) for s in r.samples) for r in runs.values()) / n,
            paired([greedy[i] for i in shared], base_greedy),
            paired([votes[i] for i in shared], [voted(base[i]) for i in shared])))
    return rows


# c. early stopping ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StoppingRow:
    """One (family, rule): the rule's and the fixed vote's accuracy, their paired comparison
    (rule - fixed), mean samples read by each, and the share of the fixed vote's completion
    tokens the rule reads."""

    family: str
    rule: str
    n: int
    accuracy: Cell
    fixed: Cell
    comparison: Paired
    samples: float
    fixed_samples: float
    token_share: float
    samples_ci95: tuple[float, float] | None = None

    @property
    def saving(self) -> float:
        """How many times fewer samples than the fixed vote (inf when none read)."""
        return self.fixed_samples / self.samples if self.samples else math.inf

    @property
    def saving_ci95(self) -> tuple[float, float] | None:
        """``saving``'s 95% interval: the fixed vote's samples over the ends of the t interval
        of the mean samples read per item (``samples_ci95``); None below 2 items."""
        if self.samples_ci95 is None:
            return None
        low, high = self.samples_ci95
        return (self.fixed_samples / high if high > 0 else math.inf,
                self.fixed_samples / low if low > 0 else math.inf)

    @property
    def meets_target(self) -> bool:
        """Issue 14's target: accuracy within 1 point of the fixed vote, >= 2x fewer samples."""
        n = max(1, self.n)
        return ((self.fixed.correct - self.accuracy.correct) / n <= TARGET_LOSS
                and self.saving >= TARGET_SAVING)


def stopping_row(family: str, rule: str, votes: Sequence[StoppedVote]) -> StoppingRow:
    """The ``StoppingRow`` of one rule's ``votes`` (one per item), with the Student's t 95%
    interval of the mean samples read per item (``router_models.experiments.stats``)."""
    n = len(votes)
    fixed_tokens = sum(v.fixed_tokens for v in votes)
    read = [v.samples for v in votes]
    return StoppingRow(
        family, rule, n, Cell(sum(v.correct for v in votes), n),
        Cell(sum(v.fixed_correct for v in votes), n),
        paired([v.correct for v in votes], [v.fixed_correct for v in votes]),
        sum(read) / max(1, n), sum(v.fixed_samples for v in votes) / max(1, n),
        sum(v.tokens for v in votes) / fixed_tokens if fixed_tokens else 0.0,
        mean_interval(ArmTotals(rule, requests=n, tokens_sum=float(sum(read)),
                                tokens_sumsq=float(sum(x * x for x in read)))))


def stopping_rows(family: str, runs: Sequence[BankRun],
                  rules: Sequence[StopRule] | None = None) -> list[StoppingRow]:
    """One ``StoppingRow`` per rule (default ``default_rules`` for votes as wide as the
    runs' samples) over the runs with samples."""
    runs = [r for r in runs if r.samples]
    width = max((len(r.samples) for r in runs), default=8)
    answers = [sample_answers(r) for r in runs]  # read once, replayed by every rule
    return [stopping_row(family, rule.name, [stopped_vote(r, rule, a) for r, a in
                                             zip(runs, answers, strict=True)])
            for rule in rules or default_rules(width)]


# The Beta rules a sweep chooses from: first wave x threshold (Adaptive-Consistency's family).
SWEEP_FIRST_WAVES = (1, 2, 3)
SWEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
TARGET_LOSS = 0.01  # issue 14: within 1 point of the fixed vote's accuracy
TARGET_SAVING = 2.0  # ... with at least 2x fewer samples


# Stopping for futility: (samples read, most votes the leader may hold) pairs of the sweep.
SWEEP_FUTILITY = ((3, 1), (4, 1), (5, 1), (6, 1), (4, 2), (6, 2))


def sweep_rules(futility: bool = False) -> list[StopRule]:
    """Every Beta rule of the sweep (``SWEEP_FIRST_WAVES`` x ``SWEEP_THRESHOLDS``); with
    ``futility``, each also with every stop for futility of ``SWEEP_FUTILITY``."""
    stops = [(0, 0), *SWEEP_FUTILITY] if futility else [(0, 0)]
    return [StopRule(f"first wave {w}, Beta {t:g}" + (
                f", futility at {after} with leader <= {lead}" if after else ""),
                     "beta", first_wave=w, threshold=t, futility_after=after,
                     futility_lead=lead)
            for w in SWEEP_FIRST_WAVES for t in SWEEP_THRESHOLDS for after, lead in stops]


@dataclass(frozen=True)
class SweepRow:
    """One half of a cross-fitted sweep: the rule chosen on the other half (the one with the
    most saving among those within ``TARGET_LOSS`` of the fixed vote there, else the most
    accurate) and how it does on this half."""

    half: int
    chosen: str
    chosen_on: int
    row: StoppingRow
    votes: tuple[StoppedVote, ...] = ()


def half_of(run: BankRun) -> int:
    """0 or 1: a run's half, by a hash of its key (stable whatever the recording order)."""
    return zlib.crc32(run.key.encode()) % 2


def cross_fitted_sweep(runs: Sequence[BankRun],
                       rules: Sequence[StopRule] | None = None) -> list[SweepRow]:
    """Choose a stopping rule on one half of ``runs`` and score it on the other, both ways.
    Picking the best of many rules on the items it is then scored on flatters it (the
    winner's curse); scoring it on items it was not chosen on does not."""
    rules = list(rules or sweep_rules())
    runs = [r for r in runs if r.samples]
    out = []
    for half in (0, 1):
        train = [r for r in runs if half_of(r) != half]
        test = [r for r in runs if half_of(r) == half]
        if not train or not test:
            continue
        scored = stopping_rows("train", train, rules)

        def key(row: StoppingRow) -> tuple[bool, float, float]:
            loss = (row.fixed.correct - row.accuracy.correct) / max(1, row.n)
            return loss <= TARGET_LOSS, row.saving if loss <= TARGET_LOSS else -loss, \
                -row.samples

        best = max(scored, key=key)
        rule = next(r for r in rules if r.name == best.rule)
        votes = tuple(stopped_vote(r, rule) for r in test)
        out.append(SweepRow(half, rule.name, len(train),
                            stopping_row(f"half {half}", rule.name, votes), votes))
    return out


def pooled(sweep: Sequence[SweepRow]) -> StoppingRow | None:
    """Both held-out halves of a cross-fitted sweep as one ``StoppingRow``: every item scored
    with the rule chosen on the half it is not in, so the whole bank is out of sample (issue
    14's target is on all items). None when a half is missing."""
    if len(sweep) < 2:
        return None
    return stopping_row("both halves", " / ".join(r.chosen for r in sweep),
                        [v for r in sweep for v in r.votes])


# c2. confidence-aware stopping ------------------------------------------------------------

# DeepConf's consensus stop: warm-ups (first waves) x consensus thresholds tau x online filters
# (eta: 0 none, 90 DeepConf-high, 10 DeepConf-low), its votes weighted by confidence.
CONSENSUS_WARMUPS = (2, 3, 4)
CONSENSUS_TAUS = (0.6, 0.7, 0.8, 0.95)
DEEPCONF_KEEP = (0, 90, 10)
# Fixed confidence floors (lowest group confidence; the shipped bank's samples span 4.2-12.0,
# median 7.4): a floor is a threshold set on other items, so the sweep chooses it per half.
CONF_FLOORS = (5.0, 6.0, 7.0)
CONFIDENCE_SWEEPS = ("DeepConf consensus", "confidence-weighted Beta",
                     "Beta or DeepConf consensus", "every confidence-aware rule")


def _filter_label(keep: int) -> str:
    return {0: "", 90: ", DeepConf-high filter (top 90%)",
            10: ", DeepConf-low filter (top 10%)"}[keep]


def confidence_rules(width: int = 8) -> list[StopRule]:
    """The confidence-aware rules at their published settings, not tuned on the bank:
    DeepConf's consensus stop at tau 0.95 after warm-ups of 2 and 4 (the paper warms up on 16
    of 512 traces), DeepConf-low and -high online (warm-up 4, filter, tau 0.95), the gateway's
    default Beta rule with its votes weighted as ``parallel_vote`` weighs them
    (``exp(lp_mean)``), Adaptive-Consistency (1 at a time, 0.95) on DeepConf-weighted votes,
    and that rule with DeepConf's consensus stop added (warm-up 2)."""
    gateway = default_rules(width)[1]
    return [
        StopRule("DeepConf consensus (warm-up 2, tau 0.95)", "consensus", first_wave=2,
                 consensus=0.95, weights="conf"),
        StopRule("DeepConf consensus (warm-up 4, tau 0.95)", "consensus", first_wave=4,
                 consensus=0.95, weights="conf"),
        StopRule("DeepConf-low online (warm-up 4, top 10%, tau 0.95)", "consensus",
                 first_wave=4, consensus=0.95, weights="conf", keep_percent=10),
        StopRule("DeepConf-high online (warm-up 4, top 90%, tau 0.95)", "consensus",
                 first_wave=4, consensus=0.95, weights="conf", keep_percent=90),
        StopRule(gateway.name.replace("gateway default", "gateway default, votes weighted "
                                      "exp(lp_mean)"), "beta", first_wave=gateway.first_wave,
                 wave=gateway.wave, threshold=gateway.threshold, weights="gateway"),
        StopRule("Adaptive-Consistency on DeepConf-weighted votes (1 at a time, Beta 0.95)",
                 "beta", weights="conf"),
        StopRule("the same or DeepConf consensus 0.95 (first wave 2)", "beta", first_wave=2,
                 weights="conf", consensus=0.95),
    ]


def confidence_sweep_rules(group: str) -> list[StopRule]:
    """The confidence-aware rules a cross-fitted sweep chooses from, per ``CONFIDENCE_SWEEPS``
    group: DeepConf's consensus stop (``CONSENSUS_WARMUPS`` x ``CONSENSUS_TAUS`` x
    ``DEEPCONF_KEEP``, and unweighted without a filter, the control); the Beta rules of
    ``sweep_rules`` on confidence-weighted votes (DeepConf's or the gateway's weights), and on
    DeepConf-weighted votes of the samples above a ``CONF_FLOORS`` floor; a Beta rule on
    DeepConf-weighted votes (first wave 2 or 3, threshold 0.7-0.9) or DeepConf's consensus
    stop (0.8, 0.95), whichever holds first; or all of them. Raises ValueError for an
    unknown group."""
    if group == CONFIDENCE_SWEEPS[0]:
        return [StopRule(f"DeepConf consensus, warm-up {w}, tau {t:g}"
                         + ("" if weights == "conf" else ", unweighted") + _filter_label(keep),
                         "consensus", first_wave=w, consensus=t, weights=weights,
                         keep_percent=keep)
                for w in CONSENSUS_WARMUPS for t in CONSENSUS_TAUS
                for weights, keep in [("conf", k) for k in DEEPCONF_KEEP] + [("none", 0)]]
    if group == CONFIDENCE_SWEEPS[1]:
        return [StopRule(f"first wave {w}, Beta {t:g}, {weights}-weighted", "beta",
                         first_wave=w, threshold=t, weights=weights)
                for weights in ("conf", "gateway") for w in SWEEP_FIRST_WAVES
                for t in SWEEP_THRESHOLDS] + [
                StopRule(f"first wave {w}, Beta {t:g}, conf-weighted, floor {f:g}", "beta",
                         first_wave=w, threshold=t, weights="conf", conf_floor=f)
                for f in CONF_FLOORS for w in SWEEP_FIRST_WAVES for t in SWEEP_THRESHOLDS[1:]]
    if group == CONFIDENCE_SWEEPS[2]:
        return [StopRule(f"first wave {w}, Beta {t:g} or consensus {c:g}, conf-weighted",
                         "beta", first_wave=w, threshold=t, weights="conf", consensus=c)
                for w in (2, 3) for t in (0.7, 0.8, 0.9) for c in (0.8, 0.95)]
    if group == CONFIDENCE_SWEEPS[3]:
        return [r for g in CONFIDENCE_SWEEPS[:3] for r in confidence_sweep_rules(g)]
    raise ValueError(f"unknown sweep {group!r}; known: {', '.join(CONFIDENCE_SWEEPS)}")


def agreement(runs: Sequence[BankRun]) -> tuple[int, float, float]:
    """How settled the recorded votes are: (items with samples, mean share of an item's samples
    that give its most frequent answer, share of items whose samples all give one answer).
    Early stopping saves samples only on settled items."""
    shares, unanimous = [], 0
    for run in runs:
        if not run.samples:
            continue
        answers = [ballot_answer(run, s, FULL) for s in run.samples]
        counts = tally(Ballot(a) for a in answers)
        top = max(counts.values(), default=0.0)
        shares.append(top / len(answers))
        unanimous += top == len(answers)
    n = len(shares)
    return n, (sum(shares) / n if n else 0.0), (unanimous / n if n else 0.0)


def first_agreement(runs: Sequence[BankRun]) -> tuple[float, float]:
    """What an early stop has to go on, over the runs with at least two samples: (share of
    samples without an answer, which cast no vote; share of items whose first two samples
    give the same answer, the least a stop after two needs). 0.0 for both with no runs."""
    answered, items, agree = 0, 0, 0
    total = 0
    for run in runs:
        if len(run.samples) < 2:
            continue
        answers = sample_answers(run)
        items += 1
        total += len(answers)
        answered += sum(a is not None for a in answers)
        agree += answers[0] is not None and answers[0] == answers[1]
    return ((total - answered) / total if total else 0.0, agree / items if items else 0.0)


# d. DeepConf ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfidenceRow:
    """One family: per ``CONFIDENCE_VOTES`` name its accuracy and its paired comparison with
    the plain vote (that vote - plain)."""

    family: str
    n: int
    cells: dict[str, Cell]
    against_plain: dict[str, Paired]


def confidence_rows(family: str, runs: Sequence[BankRun]) -> ConfidenceRow:
    """The ``ConfidenceRow`` of the runs with samples."""
    outcomes = [confidence_outcomes(r) for r in runs if r.samples]
    plain = [o["vote"] for o in outcomes]
    return ConfidenceRow(
        family, len(outcomes),
        {name: Cell(sum(o[name] for o in outcomes), len(outcomes)) for name in CONFIDENCE_VOTES},
        {name: paired([o[name] for o in outcomes], plain) for name in CONFIDENCE_VOTES[1:]})


CONFIDENCE_MEASURES = ("conf_min", "conf_bottom10", "conf_mean", "lp_mean")


def confidence_auc(runs: Sequence[BankRun]) -> tuple[int, int, dict[str, float | None]]:
    """How well each per-sample confidence measure ranks right answers above wrong ones, over
    every sample of ``runs`` (uncut): (samples, right samples, ROC AUC per measure; None when
    all samples are right or all wrong). 0.5 is chance. Samples of one item share its
    difficulty, so this mixes within- and between-item separation."""
    labels: list[int] = []
    scores: dict[str, list[float]] = {m: [] for m in CONFIDENCE_MEASURES}
    for run in runs:
        for sample in run.samples:
            labels.append(int(right(run, cut_answer(run, sample, FULL))))
            for measure in CONFIDENCE_MEASURES:
                scores[measure].append(getattr(sample, measure))
    both = 0 < sum(labels) < len(labels)
    return len(labels), sum(labels), {
        m: (float(roc_auc_score(labels, s)) if both else None) for m, s in scores.items()}


# e. one chain, greedy or sampled ------------------------------------------------------------

@dataclass(frozen=True)
class GreedyRow:
    """One family: the greedy chain and one sampled chain at ``SAMPLE_TOKENS`` tokens (their
    accuracy and mean completion tokens spent) and their paired comparison (greedy -
    sampled)."""

    family: str
    greedy: Cell
    sampled: Cell
    greedy_tokens: float
    sampled_tokens: float
    comparison: Paired


def greedy_vs_sampled(family: str, runs: Sequence[BankRun], room: int = SAMPLE_TOKENS
                      ) -> GreedyRow:
    """The ``GreedyRow`` of the runs with a sampled chain, each chain cut at ``room`` tokens
    (the long greedy chains too, so both sides had the same room)."""
    both = [r for r in runs if r.samples]
    greedy = [bool(outcome(r, "greedy", room)) for r in both]
    sampled = [bool(outcome(r, "chain", room)) for r in both]
    n = max(1, len(both))
    return GreedyRow(family, Cell(sum(greedy), len(both)), Cell(sum(sampled), len(both)),
                     sum(spent(r, "greedy", room) for r in both) / n,
                     sum(spent(r, "chain", room) for r in both) / n, paired(greedy, sampled))


# rendering ------------------------------------------------------------------------------------

def render_vote_chain(rows: Sequence[VoteChainRow]) -> str:
    """Markdown: one line per (family, budget)."""
    head = ("| family | n | budget | " + " | ".join(ARMS)
            + " | best vote - best chain (points, paired 95%), McNemar p | winner |\n"
            "| --- | ---: | ---: |" + " --- |" * (len(ARMS) + 2))
    lines = [head]
    for r in rows:
        arms = " | ".join(f"{r.cells[a].render()} ({r.tokens[a]:.0f} t)" for a in ARMS)
        mark = " (significant)" if r.comparison.significant else ""
        lines.append(f"| {r.family} | {r.n} | {r.budget} | {arms} | {r.vote_arm} - "
                     f"{r.chain_arm}: {r.comparison.render()} | {r.winner}{mark} |")
    return "\n".join(lines)


def render_vote_chain_summary(rows: Sequence[VoteChainRow]) -> str:
    """Markdown: per (family, budget) only the best chain and the best vote, and their paired
    comparison."""
    lines = ["| family | n | budget | best chain | best vote | vote - chain (points, paired "
             "95%), McNemar p | winner |", "| --- | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        mark = " (significant)" if r.comparison.significant else ""
        chain = f"{r.chain_arm} {r.cells[r.chain_arm].render()} ({r.tokens[r.chain_arm]:.0f} t)"
        voted = f"{r.vote_arm} {r.cells[r.vote_arm].render()} ({r.tokens[r.vote_arm]:.0f} t)"
        lines.append(f"| {r.family} | {r.n} | {r.budget} | {chain} | {voted} | "
                     f"{r.comparison.render()} | {r.winner}{mark} |")
    return "\n".join(lines)


def render_winner_grid(rows: Sequence[VoteChainRow]) -> str:
    """Markdown: one line per family, one column per budget: the winning side and the best
    vote's margin over the best chain in points (``*`` when significant)."""
    budgets = sorted({r.budget for r in rows})
    by_family: dict[str, dict[int, VoteChainRow]] = {}
    for r in rows:
        by_family.setdefault(r.family, {})[r.budget] = r
    lines = ["| family | n | " + " | ".join(str(b) for b in budgets) + " |",
             "| --- | ---: |" + " --- |" * len(budgets)]
    for family, cells in by_family.items():
        parts = []
        for budget in budgets:
            row = cells.get(budget)
            if row is None or row.comparison.difference is None:
                parts.append("-")
                continue
            star = "*" if row.comparison.significant else ""
            parts.append("tie" if row.winner == "tie" else
                         f"{row.winner} {100 * row.comparison.difference:+.0f}{star}")
        n = next(iter(cells.values())).n
        lines.append(f"| {family} | {n} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def render_search(rows: Sequence[SearchRow]) -> str:
    """Markdown: one line per search count."""
    lines = ["| searches | n | greedy chain | vote of 8 | prompt tokens | greedy completion "
             "tokens | vote completion tokens | greedy vs 0 searches | vote vs 0 searches |",
             "| ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.searches} | {r.n} | {r.greedy.render()} | {r.vote.render()} | "
                     f"{r.prompt_tokens:.0f} | {r.greedy_tokens:.0f} | {r.vote_tokens:.0f} | "
                     f"{r.greedy_vs_none.render()} (n = {r.greedy_vs_none.n}) | "
                     f"{r.vote_vs_none.render()} (n = {r.vote_vs_none.n}) |")
    return "\n".join(lines)


def _saving(row: StoppingRow, interval: bool) -> str:
    ci = row.saving_ci95
    return f"{row.saving:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if interval and ci else "")


def render_stopping(rows: Sequence[StoppingRow], intervals: bool = False) -> str:
    """Markdown: one line per (family, rule); with ``intervals``, the saving's 95% interval
    too."""
    saving = "fewer samples [95%]" if intervals else "fewer samples"
    lines = ["| family | n | rule | accuracy | fixed vote | rule - fixed (points, paired 95%), "
             f"McNemar p | samples (fixed) | {saving} | tokens read | target |",
             "| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.family} | {r.n} | {r.rule} | {r.accuracy.render()} | "
                     f"{r.fixed.render()} | {r.comparison.render()} | "
                     f"{r.samples:.2f} ({r.fixed_samples:.0f}) | "
                     f"{_saving(r, intervals)} | {100 * r.token_share:.0f}% | "
                     f"{'met' if r.meets_target else 'not met'} |")
    return "\n".join(lines)


def render_sweep(rows: Sequence[SweepRow]) -> str:
    """Markdown: per held-out half, the rule chosen on the other and how it does here; then
    both halves pooled (``pooled``), every item out of sample."""
    lines = ["| held-out half | n | rule chosen on the other half (n) | accuracy | fixed vote | "
             "rule - fixed (points, paired 95%), McNemar p | fewer samples [95%] | target |",
             "| --- | ---: | --- | --- | --- | --- | ---: | --- |"]

    def line(half: str, chosen: str, row: StoppingRow) -> str:
        return (f"| {half} | {row.n} | {chosen} | {row.accuracy.render()} | "
                f"{row.fixed.render()} | {row.comparison.render()} | {_saving(row, True)} | "
                f"{'met' if row.meets_target else 'not met'} |")

    for r in rows:
        lines.append(line(str(r.half), f"{r.chosen} ({r.chosen_on})", r.row))
    both = pooled(rows)
    if both is not None:
        lines.append(line("both", "each half's own", both))
    return "\n".join(lines)


def render_agreement(per_family: dict[str, tuple[int, float, float]],
                     first: dict[str, tuple[float, float]] | None = None) -> str:
    """Markdown: per family, how settled its votes of 8 are; with ``first``
    (``first_agreement`` per family), samples without an answer and first two agreeing."""
    extra = " samples without an answer | first two samples agree |" if first else ""
    lines = ["| family | n | mean share of the leading answer | items with one answer |" + extra,
             "| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if first else "")]
    for family, (n, share, unanimous) in per_family.items():
        more = ""
        if first and family in first:
            none, two = first[family]
            more = f" {100 * none:.0f}% | {100 * two:.0f}% |"
        lines.append(f"| {family} | {n} | {100 * share:.0f}% | {100 * unanimous:.0f}% |"
                     + more)
    return "\n".join(lines)


def render_greedy(rows: Sequence[GreedyRow]) -> str:
    """Markdown: per family, the greedy chain against one sampled chain."""
    lines = ["| family | n | greedy chain | sampled chain (0.7) | greedy - sampled (points, "
             "paired 95%), McNemar p |", "| --- | ---: | --- | --- | --- |"]
    for r in rows:
        mark = " (significant)" if r.comparison.significant else ""
        lines.append(f"| {r.family} | {r.greedy.n} | {r.greedy.render()} ({r.greedy_tokens:.0f}"
                     f" t) | {r.sampled.render()} ({r.sampled_tokens:.0f} t) | "
                     f"{r.comparison.render()}{mark} |")
    return "\n".join(lines)


def render_confidence(rows: Sequence[ConfidenceRow]) -> str:
    """Markdown: one line per family; each non-plain vote with its difference to plain."""
    lines = ["| family | n | " + " | ".join(CONFIDENCE_VOTES) + " |",
             "| --- | ---: |" + " --- |" * len(CONFIDENCE_VOTES)]
    for r in rows:
        cells = [r.cells["vote"].render()] + [
            f"{r.cells[name].render()}; {r.against_plain[name].render()}"
            for name in CONFIDENCE_VOTES[1:]]
        lines.append(f"| {r.family} | {r.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_auc(per_family: dict[str, tuple[int, int, dict[str, float | None]]]) -> str:
    """Markdown: ROC AUC of each confidence measure per family."""
    lines = ["| family | samples | right | " + " | ".join(CONFIDENCE_MEASURES) + " |",
             "| --- | ---: | ---: |" + " ---: |" * len(CONFIDENCE_MEASURES)]
    for family, (n, n_right, aucs) in per_family.items():
        values = " | ".join("-" if aucs[m] is None else f"{aucs[m]:.2f}"
                            for m in CONFIDENCE_MEASURES)
        lines.append(f"| {family} | {n} | {n_right} | {values} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Findings:
    """Every table's rows for one bank."""

    bank: Bank
    budgets: tuple[int, ...]
    vote_chain: list[VoteChainRow]
    cut: dict[str, tuple[float, float]]
    search: list[SearchRow]
    stopping: list[StoppingRow]
    agreement: dict[str, tuple[int, float, float]]
    confidence: list[ConfidenceRow]
    auc: dict[str, tuple[int, int, dict[str, float | None]]]
    greedy: list[GreedyRow]
    sweep: list[SweepRow]
    futility_sweep: list[SweepRow]
    confidence_stopping: list[StoppingRow] = field(default_factory=list)
    confidence_sweeps: dict[str, list[SweepRow]] = field(default_factory=dict)
    confidence_grid: list[StoppingRow] = field(default_factory=list)
    first_agreement: dict[str, tuple[float, float]] = field(default_factory=dict)
    greedy_first: str = ""  # section f, markdown (``bench.greedy_first``)


def greedy_first_section(bank: Bank) -> str:
    """Section f: plain votes against greedy-first votes and the greedy chain, at 256 and 512
    tokens a sample, with the gateway's default early stopping and the embedded model's own
    rule on both (``bench.greedy_first``)."""
    # it imports this module's ``paired``
    from bench.greedy_first import embedded_rule, stopping, table

    runs = [r for r in bank.runs if r.samples]
    return "\n\n".join([table(runs, (256, 512), (3, 5, 8)), stopping(runs),
                        stopping(runs, rule=embedded_rule())])


def compute(bank: Bank, budgets: Sequence[int] = DEFAULT_BUDGETS) -> Findings:
    """All findings for ``bank`` at ``budgets`` (tokens)."""
    groups = families(bank)
    return Findings(
        bank, tuple(budgets),
        [vote_vs_chain(f, runs, b) for f, runs in groups.items() for b in budgets],
        {f: cut_by_recording(runs) for f, runs in groups.items()},
        search_axis(bank),
        [row for f, runs in groups.items() for row in stopping_rows(f, runs)],
        {f: agreement(runs) for f, runs in groups.items()},
        [confidence_rows(f, runs) for f, runs in groups.items()],
        {f: confidence_auc(runs) for f, runs in groups.items()},
        [greedy_vs_sampled(f, runs) for f, runs in groups.items()],
        cross_fitted_sweep(groups[ALL]),
        cross_fitted_sweep(groups[ALL], sweep_rules(futility=True)),
        [row for f, runs in groups.items()
         for row in stopping_rows(f, runs, confidence_rules())],
        {group: cross_fitted_sweep(groups[ALL], confidence_sweep_rules(group))
         for group in CONFIDENCE_SWEEPS},
        stopping_rows(ALL, groups[ALL], confidence_sweep_rules(CONFIDENCE_SWEEPS[-1])),
        {f: first_agreement(runs) for f, runs in groups.items()},
        greedy_first_section(bank))


def render_confidence_stopping(findings: Findings) -> list[str]:
    """Markdown blocks of the confidence-aware stopping rules (``bench.bank_stopping``): the
    published settings per family, then each ``CONFIDENCE_SWEEPS`` group cross-fitted."""
    if not findings.confidence_stopping:
        return []
    blocks = [
        "### c2. Confidence-aware early stopping: DeepConf online, confidence-weighted Beta",
        "The rules at their published settings (not tuned here); votes weighted by DeepConf's "
        "lowest group confidence unless named otherwise, the fixed vote plain; the saving's "
        "interval from the t interval of the samples read per item:",
        render_stopping(findings.confidence_stopping, intervals=True)]
    for group, rows in findings.confidence_sweeps.items():
        count = len(confidence_sweep_rules(group))
        blocks += [f"{group[0].upper()}{group[1:]} ({count} rules), one chosen on each half "
                   "(the most saving within 1 point of the fixed vote there) and scored on the "
                   "other; `both` pools the two held-out halves:", render_sweep(rows)]
    blocks += ["Out of sample on every item (`both` above), each sweep against the Beta sweeps "
               "of section c:", render_pooled_sweeps(findings)]
    if findings.confidence_grid:
        blocks.append(f"Every one of the {len(findings.confidence_grid)} confidence-aware "
                      "rules on all items, in sample: `bank_stopping_grid.md` beside this "
                      "report (with --out).")
    return blocks


def render_pooled_sweeps(findings: Findings) -> str:
    """Markdown: one line per cross-fitted sweep (section c's Beta and futility sweeps, then
    ``CONFIDENCE_SWEEPS``), its two held-out halves pooled (``pooled``)."""
    sweeps = {"Beta (section c)": (findings.sweep, len(sweep_rules())),
              "Beta with futility (section c)": (findings.futility_sweep,
                                                 len(sweep_rules(futility=True))),
              **{g: (rows, len(confidence_sweep_rules(g)))
                 for g, rows in findings.confidence_sweeps.items()}}
    lines = ["| sweep | rules | n | accuracy | fixed vote | rule - fixed (points, paired 95%), "
             "McNemar p | fewer samples [95%] | target |",
             "| --- | ---: | ---: | --- | --- | --- | ---: | --- |"]
    for name, (rows, count) in sweeps.items():
        row = pooled(rows)
        if row is None:
            continue
        lines.append(f"| {name} | {count} | {row.n} | {row.accuracy.render()} | "
                     f"{row.fixed.render()} | {row.comparison.render()} | "
                     f"{_saving(row, True)} | {'met' if row.meets_target else 'not met'} |")
    return "\n".join(lines)


def render_grid(findings: Findings) -> str:
    """Markdown: every confidence-aware rule of the sweeps on all items (in sample)."""
    return ("# Confidence-aware stopping rules, every one on all items (generated)\n\n"
            "In sample: each rule's accuracy and saving on the items it is scored on, with no "
            "choice among them (the cross-fitted sweeps in bank_findings.md choose one).\n\n"
            + render_stopping(findings.confidence_grid, intervals=True) + "\n")


def render(findings: Findings) -> str:
    """The whole report as markdown."""
    bank = findings.bank
    per_suite = ", ".join(f"{s} {n}" for s, n in bank.suites().items())
    by_family: dict[str, list[VoteChainRow]] = {}
    for row in findings.vote_chain:
        by_family.setdefault(row.family, []).append(row)
    flip_lines = "\n".join(f"- {f}: {'; '.join(flips(rows)) or 'no flip'}"
                           for f, rows in by_family.items())
    cut_lines = "\n".join(
        ["| family | greedy chains cut | samples cut |", "| --- | ---: | ---: |"]
        + [f"| {f} | {100 * g:.0f}% | {100 * c:.0f}% |" for f, (g, c) in findings.cut.items()])
    return "\n\n".join([
        f"Outcome bank `{bank.path}`"
        + (f" (only the runs not in `{bank.meta['since']}`)" if "since" in bank.meta else "")
        + f": {len(bank)} runs, items per suite: {per_suite}; model "
        f"`{bank.meta.get('model_file')}`; read {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Accuracy in % with Wilson 95% intervals; (N t) = mean completion tokens spent.",
        "### a. Votes against one chain at equal tokens",
        "The winning side per budget (tokens) and the best vote's margin over the best chain "
        "in points (* significant: paired bootstrap interval excludes 0 and McNemar p < 0.05):",
        render_winner_grid(findings.vote_chain),
        render_vote_chain_summary(findings.vote_chain),
        "Where the winner flips (ties skipped):\n\n" + flip_lines,
        "Every arm at every budget:", render_vote_chain(findings.vote_chain),
        "Chains the recording's max_tokens cut (a chain cannot run past it in replay):",
        cut_lines,
        "### b. The search axis on HotpotQA", render_search(findings.search),
        "### c. Early stopping against a fixed vote", render_stopping(findings.stopping),
        "Beta rules (first wave 1-3, threshold 0.5-0.9), one chosen on each half of the items "
        "(the most saving within 1 point of the fixed vote there) and scored on the other:",
        render_sweep(findings.sweep),
        "The same, with stopping for futility added to every Beta rule (it also stops once 3 "
        "to 6 samples are read and the leading answer holds at most 1 or 2 of them):",
        render_sweep(findings.futility_sweep),
        "How settled the recorded votes are:",
        render_agreement(findings.agreement, findings.first_agreement),
        *render_confidence_stopping(findings),
        "### d. DeepConf: confidence-weighted and confidence-filtered votes",
        render_confidence(findings.confidence),
        "Per-sample confidence as a predictor of a right answer (ROC AUC, 0.5 = chance):",
        render_auc(findings.auc),
        f"### e. One chain, greedy or sampled, within {SAMPLE_TOKENS} tokens",
        render_greedy(findings.greedy),
        "### f. Greedy first: a vote whose first sample is the greedy chain",
        "Each vote's first ballot is the greedy chain and ties go to it, as in the gateway's "
        "votes (`vote_greedy_first`); equal width, not equal tokens:",
        findings.greedy_first])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(
        "The findings of issue 14 read off a real model's outcome bank, without a gateway or "
        "model: votes against one chain at equal tokens, the HotpotQA search axis, early "
        "stopping and DeepConf's votes, as markdown tables on stdout and, with --out, PNG "
        "plots and bank_findings.md."))
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    parser.add_argument("--budgets", type=token_budgets, default=list(DEFAULT_BUDGETS),
                        help="comma-separated token budgets for votes against one chain "
                             f"(default {','.join(map(str, DEFAULT_BUDGETS))})")
    parser.add_argument("--since-bank", type=Path, default=None, metavar="OLD",
                        help="read only the runs not in the bank folder OLD (the bank as it "
                             "stood earlier): findings on items recorded since")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the PNG plots, bank_findings.md and "
                             "bank_stopping_grid.md (none without it)")
    args = parser.parse_args(argv)
    bank = load_bank(parser, args.bank)
    if args.since_bank is not None:
        try:
            bank = recorded_since(bank, load_bank(parser, args.since_bank))
        except BankError as exc:
            parser.error(str(exc))
    findings = compute(bank, args.budgets)
    report = render(findings)
    print(report)
    if args.out is not None:
        from bench.bank_plots import write_plots  # matplotlib only when plotting

        paths = write_plots(findings, args.out)
        markdown = args.out / "bank_findings.md"
        command = " ".join(["python -m bench.bank_findings",
                            *(sys.argv[1:] if argv is None else argv)])
        markdown.write_text(f"# Outcome bank findings (generated)\n\n`{command}`\n\n{report}\n")
        grid = args.out / "bank_stopping_grid.md"
        grid.write_text(render_grid(findings))
        for path in [*paths, markdown, grid]:
            print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
