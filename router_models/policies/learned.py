"""``learned``: the literature's prior per kind of prompt, changed only on confident evidence.

Out of the box every kind of prompt (``prior.KIND_NAMES``) gets the prior's strategy
(``prior.PRIOR_STRATEGY``: votes for independent guesses, one chain for compositional work,
search for missing facts, a small direct answer for easy prompts), sized by the answer lengths
observed for that kind and by a difficulty scale solved so the mean budget meets
``target_tokens`` (``prior.size_plan``, ``prior.solve_scale``). ``rules`` encodes the same
table, so the two agree before any feedback.

Learning is safe by construction:

- **Bounded exploration.** With probability ``exploration`` (default 0.05) on average, a
  decision tries another *plausible* strategy for its prompt (``prior.plausible_strategies``:
  search only when the prompt may need facts), never one already shown worse with
  confidence: two thirds of the time the one with the highest Wilson upper bound (the one
  that could most be better), else any of them evenly. The share is spent where it can gain
  most: a decision's chance is the share times its kind's ``potential`` (the best
  alternative's upper bound minus the current strategy's accuracy) over the mean of the
  kinds' current potentials weighted by their traffic, at most four times the share, so a
  kind whose current strategy fails often explores more than one that is right nine times
  in ten.
  A running cap makes the share a hard bound: a decision may explore only while explored
  decisions stay at most ``exploration`` x decisions, so over any prefix of traffic the share
  never exceeds the setting. Exploration buys information only when outcomes come back, so
  it starts with the first feedback: a deployment that never posts feedback gets the prior,
  with no decision spent on a plan the prior thinks worse, and only decisions made since the
  first feedback count toward the share (so no backlog of exploring is spent in a burst).
  The chosen plan's probability is logged for inverse propensity weighting (1 when the cap
  forbade exploring: no random draw was made).
- **Conservative improvement.** A kind leaves its current strategy only when, with at least
  ``min_switch_feedback`` outcomes of each, the one-sided 95% lower confidence bound of the
  difference in accuracy (alternative minus current) is above zero. This is a high-confidence
  policy improvement test (Thomas et al. 2015, "High Confidence Policy Improvement") with
  SPIBB's rule of never leaving the baseline where the alternative has fewer than N
  observations (Laroche et al. 2019, "Safe Policy Improvement with Baseline Bootstrapping").
  A noisy point estimate never moves a kind; a wrong prior is left once the evidence is
  clear. The bound is Newcombe's hybrid score interval for a difference of two independent
  proportions (Newcombe 1998, method 10, built from Wilson intervals), from statsmodels'
  ``confint_proportions_2indep``: it keeps its coverage at small counts, where the Wald
  interval does not, and it needs less evidence than asking the two Wilson intervals not to
  overlap (which is a test at about the 0.6% level, not 5%), so a wrong prior is left sooner
  at the same error rate.
- **Looks, not every outcome.** A test at level alpha repeated as outcomes arrive rejects a
  true null far more often than alpha (the peeking problem: with every strategy tied, 37.5% of
  kinds switched within 1,000 decisions when each outcome was a new test at 5%;
  ``bench/switch_errors.py``). An alternative is tested only when its outcomes on the kind
  reach ``min_switch_feedback`` x 2^j (looks j = 0, 1, 2, ...), at level alpha / 2^(j + 1)
  (``look_confidence``), so by the union bound (Bonferroni over the looks) the chance of ever
  leaving the current strategy for one that is not better is at most alpha = 1 -
  ``confidence`` per alternative, however long the traffic runs (nominally: the score
  interval is a little anti-conservative at 5 outcomes, and ``bench/switch_errors.py``
  measures 5.0% and 8.0% of kinds moving within 200 and 1,000 decisions with every strategy
  tied at 0.3). The always-valid confidence
  sequence of the A/B experiments (``router_models.experiments.stats``) would allow a test at
  every outcome, but at these counts it is far wider (17 of 20 against 50 of 100: a lower
  bound of -0.58 there, +0.05 at the look of 20). A strategy whose difference is below zero
  at one of its looks, or the one a kind switched away from, is no longer explored.
- Outcomes update per (kind, strategy) counts, whoever chose the plan: the outcome of a
  strategy on a kind of prompt does not depend on which policy picked it, so forced strategies
  and other policies' traffic teach it too. Counting each decision once is the caller's job
  (the gateway applies a decision's first feedback only).
- **A prompt is one unit of evidence.** The improvement test treats outcomes as independent
  draws, and the same prompt asked again is not one: a backend at temperature 0 answers it
  the same way, and users ask again more often when the answer was wrong. So a strategy's
  outcome on a prompt it already has an outcome for on that kind (``update``'s
  ``prompt_key``, among the last ``PROMPT_WINDOW`` prompts asked of that kind and strategy) is not
  counted: each prompt teaches each strategy once, by its first outcome, which is an unbiased
  draw of that prompt's accuracy (the prompts, not the requests, are the sample; counting
  the repeats made a false switch on the outcome bank, ``bench/bank_feedback.py --rounds
  12``). ``repeated`` counts the outcomes left out per kind and strategy; feedback received
  is ``trials`` + ``repeated``, the evidence the test reads is ``trials``.

Votes that buy nothing give way to one answer, from usage alone: a vote's first sample is one
answer of the same size, so a vote can beat one answer only on the votes whose first sample did
not state the elected answer (``router_models.vote_agreement``). A kind whose votes bound that
gain below ``vote_gain_floor`` (the one-sided 95% Wilson upper bound of the disagreement rate)
gets one direct answer where its plan was a vote, as a budget too small for votes gives one
(``vote_above``); an explored or forced vote still votes.

Answer lengths (``router_models.answer_lengths``) are learnt per kind from usage: the gateway
reports every direct answer's, vote's and chain's samples, each counted up to its first
explicit answer (``observe_usage``); without it, ``update``'s ``spent_tokens`` of a direct
answer stands in. Whatever those lengths say, no plan the policy makes on its own exceeds
``PLAN_CEILING`` times ``target_tokens`` (``plan_ceiling``): a backend whose answers run to any
cap cannot grow a request's budget without bound.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_models.answer_lengths import DEFAULT_ANSWER_TOKENS, AnswerLengths
from router_models.features import FORMS, Features
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies.base import (
    Candidate,
    Decision,
    Policy,
    PolicyError,
    check_strategy,
)
from router_models.policies.prior import (
    KIND_NAMES,
    PRIOR_STRATEGY,
    direct_room,
    fit_cap,
    fit_vote,
    kind_of,
    mean_spend,
    plausible_strategies,
    sample_tokens,
    size_plan,
    solve_scale,
    solve_vote_above,
)
from router_models.vote_agreement import VoteAgreement

logger = logging.getLogger(__name__)

STATE_VERSION = 4  # 4: the prior with conservative per-kind learning (3 was a logistic model)
MIN_SWITCH_FEEDBACK = 5
# Per kind and strategy, the prompts whose outcome was counted, the most recently asked last:
# a prompt asked again within this many others is not counted again (``update``).
PROMPT_WINDOW = 512
FOCUS = 2 / 3  # the exploring share given to the most promising alternative
# A kind with much to gain explores up to this many times the share (``_exploration_rate``).
MAX_EXPLORATION_BOOST = 4.0
# Per archetype, the order in which alternatives the evidence cannot yet tell apart are tried:
# the other axis of test-time compute first (a chain's runner-up is a vote of short samples,
# Ghosal et al. 2025; a guess's is one long chain, Mirtaheri et al. 2025; a fact question's
# is reasoning without the collection), then one direct answer, the least compute.
RUNNER_UP = {
    "chain": ("parallel_vote", "direct", "sequential", "search"),
    "independent": ("sequential", "parallel_vote", "direct", "search"),
    "search": ("sequential", "parallel_vote", "direct", "search"),
}
# Each kind's share of recent decisions (``_exploration_rate``'s weights) forgets over about
# 1 / TRAFFIC_SMOOTHING decisions.
TRAFFIC_SMOOTHING = 1 / 256
SWITCH_CONFIDENCE = 0.95  # one-sided, for both bounds of the improvement test
FORCED_VOTE_WIDTH = 3  # a forced vote with no budget: the smallest vote with a majority
# A kind's votes give way to one answer when their first samples bound what they buy over one
# answer below this share (``VoteAgreement.gain_bound``): two or more samples for at most this
# many points (tune seeds 30-69 of bench/policy_sim.py, SIMULATION; README "Votes that buy
# nothing").
VOTE_GAIN_FLOOR = 0.05
# No plan this policy makes on its own exceeds this multiple of ``target_tokens``: the
# operator's mean is a promise about spend, and a plan sized from answer lengths alone (a
# model that writes long, a kind whose answers run to any cap) is otherwise bounded only by
# ``max_budget_tokens``. A chain's cap is room rather than spend, so the ceiling is wide.
PLAN_CEILING = 8.0
# The reference prompts before any traffic: one per kind at a typical difficulty.
_DEFAULT_REFERENCE = tuple(
    Scores(difficulty, sequential, search)
    for difficulty in (0.25, 0.75) for sequential, search in ((0.2, 0.1), (0.8, 0.1), (0.3, 0.8)))


def plan_ceiling(target_tokens: float) -> int:
    """The most completion tokens a plan made on ``auto``'s own account may have, for a mean
    budget of ``target_tokens``: ``PLAN_CEILING`` x ``target_tokens`` (at least 1)."""
    return max(1, int(PLAN_CEILING * target_tokens))


def _counted_prompts(value: Any) -> dict[tuple[int, int], dict[str, None]]:
    """``state()``'s ``counted_prompts`` (kind name -> strategy -> prompt keys, the one asked
    longest ago first) as ``LearnedPolicy._counted``; kinds and strategies this version does
    not know are dropped, as ``worse``'s are.

    Raises:
        ValueError: not that shape (a key that is not a string included).
    """
    if not isinstance(value, dict) or not all(isinstance(c, dict) for c in value.values()):
        raise ValueError("counted_prompts must map kinds to {strategy: [prompt keys]}")
    counted: dict[tuple[int, int], dict[str, None]] = {}
    for name, cells in value.items():
        for strategy, keys in cells.items():
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"counted_prompts.{name}.{strategy} must be a list of "
                                 "prompt keys")
            if name in KIND_NAMES and strategy in STRATEGIES and keys:
                counted[(KIND_NAMES.index(name), STRATEGIES.index(strategy))] = (
                    dict.fromkeys(keys[-PROMPT_WINDOW:]))
    return counted


def _known_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the settings this version does not know, each named in a warning:
    a state written by a later version (a replica upgraded first, during a rolling deploy)
    still loads, its known settings and evidence intact."""
    known = inspect.signature(LearnedPolicy.__init__).parameters
    unknown = sorted(k for k in config if k not in known or k == "self")
    if unknown:
        logger.warning("learned policy state has settings this version ignores: %s",
                       ", ".join(unknown))
    return {k: v for k, v in config.items() if k not in unknown}


def difference_bounds(successes: float, trials: float, base_successes: float,
                      base_trials: float, confidence: float = SWITCH_CONFIDENCE
                      ) -> tuple[float, float]:
    """One-sided ``confidence`` lower and upper bounds of the difference of two proportions,
    ``successes / trials`` minus ``base_successes / base_trials``: Newcombe's hybrid score
    interval (Newcombe 1998, method 10; statsmodels ``confint_proportions_2indep``), each bound
    the matching end of the two-sided interval at ``2 x confidence - 1``. (-1, 1) when either
    side has no trials. Successes may be fractional (scores in [0, 1])."""
    if trials <= 0 or base_trials <= 0:
        return -1.0, 1.0
    from statsmodels.stats.proportion import confint_proportions_2indep
    low, high = confint_proportions_2indep(successes, trials, base_successes, base_trials,
                                           method="newcomb", compare="diff",
                                           alpha=2 * (1 - confidence))
    return float(low), float(high)


def look_confidence(outcomes: float, first_look: int, confidence: float = SWITCH_CONFIDENCE
                    ) -> float | None:
    """The one-sided confidence of the improvement test when an alternative has ``outcomes``
    outcomes, or None when that count is not a look.

    Looks are at ``first_look`` x 2^j outcomes (j = 0, 1, 2, ...), look j at level
    alpha / 2^(j + 1) with alpha = 1 - ``confidence``: the levels sum to alpha, so over any
    number of looks the chance of a false switch stays at most alpha (Bonferroni's union
    bound over doubling looks; testing at every outcome instead inflates it, the peeking
    problem of sequential testing). Spacing the looks geometrically keeps the level of look
    j from shrinking faster than the evidence grows (z about 1.96, 2.24, 2.50, 2.73 at 5, 10,
    20, 40 outcomes when alpha is 0.05).
    """
    count = round(outcomes)
    if count < first_look or count % first_look:
        return None
    ratio = count // first_look
    if ratio & (ratio - 1):  # not a power of two
        return None
    look = ratio.bit_length() - 1
    return 1.0 - (1.0 - confidence) / 2 ** (look + 1)


@functools.lru_cache(maxsize=4096)  # pure; deciding asks for the same counts again and again
def wilson_bounds(successes: float, trials: float, confidence: float = SWITCH_CONFIDENCE
                  ) -> tuple[float, float]:
    """One-sided ``confidence`` Wilson lower and upper bounds of a proportion (each bound
    is the matching end of the two-sided interval at ``2 x confidence - 1``); (0, 1) with no
    trials. ``successes`` may be fractional (scores in [0, 1])."""
    if trials <= 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint
    low, high = proportion_confint(successes, trials, alpha=2 * (1 - confidence),
                                   method="wilson")
    return float(low), float(high)


class LearnedPolicy(Policy):
    """The prior, sized to a mean budget, with bounded exploration and conservative switching
    (module docstring).

    Args:
        target_tokens: the mean budget per request to meet (completion tokens).
        exploration: the most share of decisions that may explore, in [0, 1).
        vote_width: the most samples of a vote.
        min_switch_feedback: outcomes a strategy needs on a kind before it may replace the
            kind's current strategy.
        confidence: one-sided confidence of the improvement test's Wilson bounds.
        default_answer_tokens: tokens a complete answer is assumed to take before usage says.
        reference_size: recent prompts kept to solve the difficulty scale over.
        resolve_every: re-solve the scale after this many decisions or outcomes.
        seed: seeds the policy's own random source.
        vote_gain_floor: a kind whose votes can gain less than this share of accuracy over
            one answer (``VoteAgreement.gain_bound``) gets one answer instead; 0 never.

    Raises:
        PolicyError: exploration outside [0, 1), a non-positive target, a bad count, or a
            vote gain floor outside [0, 1].
    """

    name = "learned"

    def __init__(self, target_tokens: float = 512.0, exploration: float = 0.05,
                 vote_width: int = 8, min_switch_feedback: int = MIN_SWITCH_FEEDBACK,
                 confidence: float = SWITCH_CONFIDENCE,
                 default_answer_tokens: int = DEFAULT_ANSWER_TOKENS,
                 reference_size: int = 512, resolve_every: int = 64, seed: int = 0,
                 vote_gain_floor: float = VOTE_GAIN_FLOOR):
        if not 0.0 <= exploration < 1.0:
            raise PolicyError("exploration must be in [0, 1)")
        if target_tokens <= 0:
            raise PolicyError("target_tokens must be positive")
        if vote_width < 1 or min_switch_feedback < 1 or not 0.5 < confidence < 1:
            raise PolicyError("vote_width and min_switch_feedback must be at least 1, "
                              "confidence in (0.5, 1)")
        if not 0.0 <= vote_gain_floor <= 1.0:
            raise PolicyError("vote_gain_floor must be in [0, 1]")
        self.target_tokens = float(target_tokens)
        self.vote_gain_floor = float(vote_gain_floor)
        self.exploration = float(exploration)
        self.vote_width = int(vote_width)
        self.min_switch_feedback = int(min_switch_feedback)
        self.confidence = float(confidence)
        self.default_answer_tokens = int(default_answer_tokens)
        self.current = [PRIOR_STRATEGY[kind] for kind in KIND_NAMES]
        shape = (len(KIND_NAMES), len(STRATEGIES))
        self.trials = np.zeros(shape)
        self.successes = np.zeros(shape)
        self.decisions = 0
        self.explored = 0
        self.exploring_decisions = 0  # decisions since the first feedback (module docstring)
        self.switches: list[dict[str, Any]] = []
        # (kind, strategy index) -> prompt keys counted, asked longest ago first (``update``).
        self._counted: dict[tuple[int, int], dict[str, None]] = {}
        # Per kind and strategy, outcomes of a prompt already counted there (``update``).
        self.repeated = np.zeros(shape)
        self.lengths = AnswerLengths(self.default_answer_tokens)
        self.agreement = VoteAgreement()
        self._idle_votes: frozenset[str] = frozenset()  # vote keys that buy too little
        # Set False by a caller that reports usage through observe_usage, so that a request's
        # length is not counted twice.
        self.lengths_from_feedback = True
        self.reference: deque[Scores] = deque(maxlen=reference_size)
        self.resolve_every = resolve_every
        self._since_solve = 0
        self.rng = random.Random(seed)
        self.scale = 0.0
        self.vote_above = 0.0  # difficulty below which votes become direct (solve_vote_above)
        self._solved_lengths: dict[int, int] = {}
        self._worse: dict[int, set[str]] = {}  # per kind: strategies shown worse (eliminated)
        # Per kind: its share of recent explorable decisions, and its potential at its last
        # one (``_exploration_rate``).
        self._traffic = np.zeros(len(KIND_NAMES))
        self._potentials = np.zeros(len(KIND_NAMES))
        self.resolve()

    # -- sizing ----------------------------------------------------------------------------

    def answer_tokens(self, kind: int) -> int:
        """Tokens a complete answer of this kind takes (p90 of observed usage)."""
        return self.lengths.estimate(KIND_NAMES[kind])

    def add_reference(self, scores: Scores) -> None:
        """Remember a prompt for solving the scale (the oldest drops out past
        ``reference_size``); takes effect at the next ``resolve``."""
        self.reference.append(scores)

    def resolve(self) -> float:
        """Re-solve the difficulty scale so the mean budget over the reference prompts (their
        kinds' current strategies) meets ``target_tokens``; returns it."""
        prompts: Iterable[Scores] = self.reference or _DEFAULT_REFERENCE
        answers = [self.answer_tokens(k) for k in range(len(KIND_NAMES))]
        self._idle_votes = frozenset(k for k in self.agreement.keys_seen() if self._idle(k))
        rows = [(s, self._sized_strategy(s), answers[kind_of(s)]) for s in prompts]
        self.scale = solve_scale(lambda x: mean_spend(rows, x, self.vote_width),
                                 self.target_tokens)
        self.vote_above = solve_vote_above(
            lambda x, above: mean_spend(rows, x, self.vote_width, vote_above=above),
            self.target_tokens)
        self._solved_lengths = {k: self.answer_tokens(k) for k in range(len(KIND_NAMES))}
        self._since_solve = 0
        return self.scale

    def _tick(self) -> None:
        self._since_solve += 1
        if self._since_solve >= self.resolve_every:
            self.resolve()

    def strategy_for(self, scores: Scores) -> str:
        """The kind's current strategy, or its prior one when the current is not plausible
        for this prompt (search learnt on a kind, for a prompt that needs no facts)."""
        kind = kind_of(scores)
        current = self.current[kind]
        if current not in plausible_strategies(scores):
            return PRIOR_STRATEGY[KIND_NAMES[kind]]
        return current

    @staticmethod
    def vote_key(scores: Scores) -> str:
        """What votes are judged by: the kind of prompt and the form of its answer (a kind
        pools guesses with one-liners the classifier cannot tell apart; their forms often
        differ)."""
        return f"{KIND_NAMES[kind_of(scores)]}/{scores.form or 'any'}"

    def votes_idle(self, scores: Scores) -> bool:
        """True when votes of prompts like this one (``vote_key``) can gain less than
        ``vote_gain_floor`` over one answer, with confidence (``VoteAgreement.gain_bound``
        over the votes usage reported)."""
        return self._idle(self.vote_key(scores))

    def _idle(self, key: str) -> bool:
        return self.vote_gain_floor > 0 and self.agreement.gain_bound(key) < self.vote_gain_floor

    def _answers_once(self, scores: Scores) -> bool:
        """Whether this prompt's planned vote runs one direct answer instead: its votes buy
        too little (``votes_idle``, as of the last ``resolve``), unless feedback showed a
        direct answer worse than the kind's current strategy (the bound holds with 95%
        confidence, not always)."""
        return (self.vote_key(scores) in self._idle_votes
                and not self.eliminated(kind_of(scores), "direct"))

    def _sized_strategy(self, scores: Scores) -> str:
        """The strategy the prompt's plan runs: its kind's (``strategy_for``), except a vote
        that answers once (``_answers_once``)."""
        strategy = self.strategy_for(scores)
        if strategy == "parallel_vote" and self._answers_once(scores):
            return "direct"
        return strategy

    def plan_ceiling(self) -> int:
        """The most completion tokens a plan of this policy's own choosing may have
        (``plan_ceiling``)."""
        return plan_ceiling(self.target_tokens)

    def sized(self, strategy: str, scores: Scores, budget_tokens: int | None = None, *,
              exploring: bool = False, ceiling: bool = True) -> Plan:
        """The plan of ``strategy`` for this prompt at the current scale, within the request's
        cap ``budget_tokens`` (tokens) and, when ``ceiling``, ``plan_ceiling``. An explored
        vote stays a vote whatever ``vote_above`` says: a vote turned into one answer would
        teach nothing about votes."""
        kind = kind_of(scores)
        answer = self.answer_tokens(kind)
        if strategy == "parallel_vote" and not exploring and self._answers_once(scores):
            key = self.vote_key(scores)
            agreed, votes = self.agreement.count(key)
            # The room of any direct answer to such a prompt (``prior.direct_room``).
            room = direct_room(answer, scores)
            plan = Plan("direct", room, depth_tokens=room, reason=(
                f"{agreed} of the last {votes} votes of {key} elected their first sample's "
                f"answer, so a vote gains at most {self.agreement.gain_bound(key):.0%} over "
                "one answer: one answer"))
        else:
            plan = size_plan(strategy, scores, answer, self.scale, self.vote_width,
                             vote_above=0.0 if exploring else self.vote_above,
                             chain_floor=sample_tokens(self.default_answer_tokens))
        caps = [c for c in (budget_tokens, self.plan_ceiling() if ceiling else None)
                if c is not None]
        return fit_cap(plan, min(caps) if caps else None, answer)

    def forced(self, strategy: str, scores: Scores, budget_tokens: int | None) -> Plan:
        """The plan of a strategy the request forces: a vote spends the request's budget on
        as many complete samples as it buys (up to ``vote_width``; at least
        ``FORCED_VOTE_WIDTH`` without a budget), any other strategy is sized as usual. A
        request's own budget holds instead of ``plan_ceiling``; without one, the ceiling
        holds."""
        if strategy != "parallel_vote":
            return self.sized(strategy, scores, budget_tokens, ceiling=budget_tokens is None)
        answer = self.answer_tokens(kind_of(scores))
        depth = sample_tokens(answer)
        width = self.vote_width if budget_tokens else min(self.vote_width, FORCED_VOTE_WIDTH)
        vote = Plan("parallel_vote", width * depth, width=width, depth_tokens=depth)
        return fit_vote(vote, answer, min(budget_tokens or self.plan_ceiling(),
                                          vote.budget_tokens or 0))

    # -- deciding --------------------------------------------------------------------------

    def accuracy(self, kind: int, strategy: str) -> tuple[float | None, float, float]:
        """(observed mean accuracy or None, Wilson lower, Wilson upper) of a strategy on a
        kind of prompt."""
        i = STRATEGIES.index(strategy)
        n, s = self.trials[kind, i], self.successes[kind, i]
        low, high = wilson_bounds(s, n, self.confidence)
        return (float(s / n) if n else None), low, high

    def improvement(self, kind: int, strategy: str, confidence: float | None = None
                    ) -> tuple[float, float] | None:
        """One-sided bounds (``confidence``, by default the policy's) of ``strategy``'s
        accuracy minus the kind's current strategy's (``difference_bounds``), or None while
        either has fewer than ``min_switch_feedback`` outcomes."""
        i, c = STRATEGIES.index(strategy), STRATEGIES.index(self.current[kind])
        if min(self.trials[kind, i], self.trials[kind, c]) < self.min_switch_feedback:
            return None
        return difference_bounds(self.successes[kind, i], self.trials[kind, i],
                                 self.successes[kind, c], self.trials[kind, c],
                                 confidence or self.confidence)

    def eliminated(self, kind: int, strategy: str) -> bool:
        """True when ``strategy`` was worse than the kind's current strategy with confidence
        at its last look, or is the strategy the kind switched away from (no longer worth
        exploring). Read from ``_worse``, which only outcomes change."""
        return strategy in self._worse.get(kind, ())

    def _look(self, kind: int, strategy: str) -> tuple[float, float, float] | None:
        """At a look of ``strategy`` on ``kind`` (``look_confidence``): the look's confidence
        and the bounds of its difference from the current strategy; else None."""
        if strategy == self.current[kind]:
            return None
        confidence = look_confidence(self.trials[kind, STRATEGIES.index(strategy)],
                                     self.min_switch_feedback, self.confidence)
        if confidence is None:
            return None
        bounds = self.improvement(kind, strategy, confidence)
        return None if bounds is None else (confidence, *bounds)

    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        check_strategy(strategy)
        rng = rng or self.rng
        self.add_reference(scores)
        self._tick()
        kind = kind_of(scores)
        name = KIND_NAMES[kind]
        current = self.strategy_for(scores)
        self.decisions += 1
        if strategy is not None:
            plan = self.forced(strategy, scores, budget_tokens)
            plan = dataclasses.replace(plan, policy=self.name, probability=1.0, reason=(
                f"strategy {strategy} forced by the request" + (
                    f"; {plan.reason}" if plan.reason else "")))
            observed = self.accuracy(kind, plan.strategy)[0]
            return Decision(plan, scores, (Candidate(plan, 1.0, observed),))

        feedback_flows = bool(self.trials.any())
        self.exploring_decisions += feedback_flows
        # What the kind's plan runs: one direct answer where its votes buy too little. Then a
        # real vote is an alternative to explore, so that the votes' agreement and outcomes
        # keep coming and feedback can bring the votes back.
        running = "direct" if (current == "parallel_vote"
                               and self._answers_once(scores)) else current
        alternatives = [a for a in plausible_strategies(scores)
                        if a != running and not self.eliminated(kind, a)]
        may_explore = feedback_flows and bool(alternatives) and self.exploration > 0 and (
            self.explored + 1 <= self.exploration * self.exploring_decisions)
        rate = self._exploration_rate(kind, alternatives) if may_explore else 0.0
        probabilities = {running: 1.0 - rate}
        if may_explore:
            probabilities.update(self._exploration_shares(kind, alternatives, rate))
        chosen = running
        if may_explore and rng.random() < rate:
            weights = [probabilities[a] for a in alternatives]
            chosen = rng.choices(alternatives, weights=weights)[0]
            self.explored += 1
        plans = {a: self.sized(current if a == running else a, scores, budget_tokens,
                               exploring=a != running)
                 for a in probabilities}
        prior_note = "the prior" if current == PRIOR_STRATEGY[name] else "learnt from feedback"
        reason = (f"{name}: {current} ({prior_note})" if chosen == running else
                  f"{name}: exploring {chosen} (share {self.exploration:g}) instead of {running}")
        plan = plans[chosen]
        if plan.reason:
            reason += f"; {plan.reason}"
        # Strategies sized alike under a cap (an explored vote cut to one chain) are one
        # plan: its probability, logged as the propensity, is theirs together.
        probability = sum(p for a, p in probabilities.items() if plans[a].shape == plan.shape)
        plan = dataclasses.replace(plan, policy=self.name, probability=probability,
                                   reason=reason)
        candidates = tuple(
            Candidate(plan if a == chosen else plans[a], p, self.accuracy(kind, a)[0])
            for a, p in probabilities.items())
        return Decision(plan, scores, candidates)

    def potential(self, kind: int, alternatives: Sequence[str]) -> float:
        """What exploring this kind could gain, in [0, 1]: the highest Wilson upper bound of
        its alternatives' accuracy minus its current strategy's observed accuracy (0.5 before
        any outcome of it). An alternative with no outcome has an upper bound of 1."""
        mean = self.accuracy(kind, self.current[kind])[0]
        best = max(self.accuracy(kind, a)[2] for a in alternatives)
        return max(0.0, best - (0.5 if mean is None else mean))

    def _exploration_rate(self, kind: int, alternatives: Sequence[str]) -> float:
        """This decision's chance to explore: the ``exploration`` share scaled by the kind's
        ``potential`` against the mean potential of the traffic, at most
        ``MAX_EXPLORATION_BOOST`` times the share. The share goes where the current strategy
        could be beaten most (a kind whose current strategy fails half the time, against one
        right nine times in ten), as UCB spends its tries (Auer et al. 2002); over all
        decisions it stays the setting, and the running cap in ``decide`` keeps it a hard
        bound.

        The mean is each kind's potential at its latest decision weighted by the kind's share
        of recent decisions (``TRAFFIC_SMOOTHING``), so the chances average to the share now.
        A running mean of past decisions' potentials lagged behind potentials that fall as
        outcomes come in, and the boosts then averaged below one: a third of the share went
        unspent (``bench/exploration_share.py``: a replay of a world like held-out traffic
        seed 31, 60 seeds, 720 decisions each: 3.4% of 5% spent, the chain kind moved to votes
        in 35 runs; with this mean 4.3% and 46 runs).
        """
        potential = self.potential(kind, alternatives)
        self._traffic *= 1.0 - TRAFFIC_SMOOTHING
        self._traffic[kind] += TRAFFIC_SMOOTHING
        self._potentials[kind] = potential
        mean = float(self._traffic @ self._potentials / self._traffic.sum())
        if mean <= 0.0:
            return self.exploration
        boost = min(MAX_EXPLORATION_BOOST, potential / mean)
        return min(0.5, self.exploration * boost)

    def _exploration_shares(self, kind: int, alternatives: list[str], rate: float
                            ) -> dict[str, float]:
        """How this decision's exploring chance ``rate`` is spread: ``FOCUS`` of it on the
        kind's runner-up in ``RUNNER_UP`` until it has ``min_switch_feedback`` outcomes (so
        the literature's second choice reaches its first look soonest), then on the
        alternative with the highest Wilson upper bound (optimism in the face of uncertainty,
        as in UCB: the one that could most be better; ties go to the runner-up order); the
        rest evenly over all, so each keeps a positive propensity for off-policy replay."""
        order = RUNNER_UP[KIND_NAMES[kind].split("/")[1]]
        runner_up = min(alternatives, key=order.index)
        if self.trials[kind, STRATEGIES.index(runner_up)] < self.min_switch_feedback:
            # Until its first look is possible, the archetype's runner-up keeps the focus: an
            # untried alternative's upper bound of 1 would otherwise draw it away after one
            # failure (held-out traffic seed 24: a chain kind's first tries went to a direct
            # answer, and its 3 votes never reached the look at 5 outcomes).
            focus = runner_up
        else:
            focus = max(alternatives,
                        key=lambda a: (self.accuracy(kind, a)[2], -order.index(a)))
        even = (1.0 - FOCUS) / len(alternatives)
        return {a: rate * (even + (FOCUS if a == focus else 0.0)) for a in alternatives}

    # -- learning --------------------------------------------------------------------------

    def update(self, scores: Scores, plan: Plan, correct: bool | float,
               features: Features | None = None, spent_tokens: int | None = None,
               prompt_key: str | None = None) -> None:
        """Count one outcome of ``plan.strategy`` on the prompt's kind, then apply the
        conservative improvement test to that kind (module docstring).

        ``correct``: True/False or a score in [0, 1]. ``spent_tokens``: the completion tokens
        the request spent, when known: a direct answer's tells the kind's answer length
        (unless ``observe_usage`` reports lengths). ``prompt_key``: what identifies the
        prompt (``router_models.prompt.prompt_key``); an outcome of a prompt already counted
        for this kind and strategy is left out (counted in ``repeated``). None: every outcome
        counts.

        Raises:
            ValueError: ``correct`` outside [0, 1].
        """
        y = float(correct)
        if not 0.0 <= y <= 1.0:
            raise ValueError("correct must be a bool or a score in [0, 1]")
        kind = kind_of(scores)
        i = STRATEGIES.index(plan.strategy)
        if self.lengths_from_feedback and spent_tokens:
            self._observe_spend(kind, plan, int(spent_tokens))
        if prompt_key is not None and not self._first_outcome(kind, i, str(prompt_key)):
            self.repeated[kind, i] += 1
        else:
            self.trials[kind, i] += 1
            self.successes[kind, i] += y
            self._consider_switch(kind, plan.strategy)
        self._tick()

    def _first_outcome(self, kind: int, strategy: int, key: str) -> bool:
        """Record that ``key`` has an outcome of this kind and strategy; False when it had
        one already (within the last ``PROMPT_WINDOW`` prompts asked, the one asked longest
        ago dropping out)."""
        counted = self._counted.setdefault((kind, strategy), {})
        if key in counted:
            # Asked again: now the most recent, so a prompt asked often never drops out.
            counted[key] = counted.pop(key)
            return False
        counted[key] = None
        if len(counted) > PROMPT_WINDOW:
            del counted[next(iter(counted))]
        return True

    def _observe_spend(self, kind: int, plan: Plan, spent_tokens: int) -> None:
        # Only a short sample tells how long an answer runs when one is asked for: a chain
        # given room thinks past its answer, and a vote's total hides how many samples it drew
        # (early stopping) and which were cut. observe_usage gets those from the gateway.
        depth = plan.depth_tokens or plan.budget_tokens
        if not depth or plan.strategy != "direct":
            return
        self.lengths.observe(KIND_NAMES[kind], spent_tokens, finished=spent_tokens < depth)
        self._resolve_if_lengths_moved(kind)

    def forget_feedback(self) -> None:
        """Drop what feedback taught (the outcome counts, switched strategies), keeping the
        configuration and what usage taught (answer lengths): the start for replaying a whole
        request log, whose feedback this state may already have counted."""
        self.trials[:] = 0.0
        self.successes[:] = 0.0
        self._counted = {}
        self.repeated[:] = 0.0
        self.current = [PRIOR_STRATEGY[kind] for kind in KIND_NAMES]
        self.switches = []
        self._worse = {}
        self.resolve()

    def observe_usage(self, scores: Scores, samples: Sequence[tuple[int, bool]]) -> None:
        """Record the completion tokens of a request's samples, each with whether it finished
        (False: cut at its ``max_tokens``), for the kind's answer length."""
        kind = kind_of(scores)
        for tokens, finished in samples:
            self.lengths.observe(KIND_NAMES[kind], int(tokens), bool(finished))
        self._resolve_if_lengths_moved(kind)

    def observe_vote(self, scores: Scores, first_agrees: bool) -> None:
        """Record one vote of this prompt's kind: ``first_agrees`` when its first sample
        stated the answer the vote elected (``router_models.vote_agreement``). Re-solves the
        scale when the kind's votes become idle or pay again."""
        key = self.vote_key(scores)
        self.agreement.observe(key, first_agrees)
        if self._idle(key) != (key in self._idle_votes):
            self.resolve()

    def _resolve_if_lengths_moved(self, kind: int) -> None:
        # Plans are sized from the answer lengths the scale was solved with; a length that
        # moved by more than a tenth would otherwise overshoot the target until the next solve.
        solved = self._solved_lengths.get(kind, self.default_answer_tokens)
        if abs(self.answer_tokens(kind) - solved) > 0.1 * solved:
            self.resolve()

    def _consider_switch(self, kind: int, strategy: str) -> None:
        # Only the strategy whose outcome just arrived can have reached a look.
        look = self._look(kind, strategy)
        if look is None:
            return
        confidence, low, high = look
        worse = self._worse.setdefault(kind, set())
        worse.discard(strategy)
        if high < 0.0:
            worse.add(strategy)
        if low <= 0.0:
            return
        current = self.current[kind]
        self.current[kind] = strategy
        # The switch concluded, at the look's confidence, that the old strategy is worse.
        self._worse[kind] = {current}
        self.switches.append({"kind": KIND_NAMES[kind], "from": current, "to": strategy,
                              "difference_lower_bound": round(low, 4),
                              "confidence": round(confidence, 6),
                              "decisions": self.decisions})
        self.resolve()

    # -- reporting and state ---------------------------------------------------------------

    def _counted_state(self) -> dict[str, dict[str, list[str]]]:
        """``_counted`` as JSON (kind name -> strategy -> keys), in (kind, strategy) order; the
        inverse of ``_counted_prompts``."""
        out: dict[str, dict[str, list[str]]] = {}
        for (kind, strategy), keys in sorted(self._counted.items()):
            if keys:
                out.setdefault(KIND_NAMES[kind], {})[STRATEGIES[strategy]] = list(keys)
        return out

    @property
    def repeats(self) -> int:
        """Outcomes left out as repeats of a prompt already counted (``update``)."""
        return int(self.repeated.sum())

    def exploration_share(self) -> float:
        """Explored decisions / all decisions so far (0 before any)."""
        return self.explored / self.decisions if self.decisions else 0.0

    def budgets(self) -> dict[str, dict[str, Any]]:
        """Per kind of prompt: ``feedback`` received, the ``evidence`` the improvement test
        counts of it (repeats of a prompt left out, ``update``), the ``strategy`` it gets now,
        its ``answer_tokens`` estimate, and the ``mean_expected_tokens`` of its current plan
        over its reference prompts (NaN when none of them is of that kind)."""
        out: dict[str, dict[str, Any]] = {}
        prompts = list(self.reference or _DEFAULT_REFERENCE)
        for kind, name in enumerate(KIND_NAMES):
            own = [s for s in prompts if kind_of(s) == kind]
            spend = [self.sized(self.strategy_for(s), s).budget_tokens or 0 for s in own]
            out[name] = {"feedback": float(self.trials[kind].sum() + self.repeated[kind].sum()),
                         "evidence": float(self.trials[kind].sum()),
                         "strategy": self.current[kind],
                         "answer_tokens": self.answer_tokens(kind),
                         "mean_expected_tokens": float(np.mean(spend)) if spend
                         else float("nan")}
        return out

    def state(self) -> dict[str, Any]:
        """Everything needed to restore the policy, JSON-ready."""
        return {
            "state_version": STATE_VERSION,
            "config": {"target_tokens": self.target_tokens, "exploration": self.exploration,
                       "vote_width": self.vote_width,
                       "min_switch_feedback": self.min_switch_feedback,
                       "confidence": self.confidence,
                       "default_answer_tokens": self.default_answer_tokens,
                       "reference_size": self.reference.maxlen,
                       "resolve_every": self.resolve_every,
                       "vote_gain_floor": self.vote_gain_floor},
            "current": dict(zip(KIND_NAMES, self.current, strict=True)),
            "trials": np.round(self.trials, 6).tolist(),
            "successes": np.round(self.successes, 6).tolist(),
            "decisions": self.decisions, "explored": self.explored,
            "exploring_decisions": self.exploring_decisions,
            "switches": self.switches,
            "repeated": self.repeated.tolist(),
            "counted_prompts": self._counted_state(),
            "worse": {KIND_NAMES[k]: sorted(v) for k, v in sorted(self._worse.items()) if v},
            "answer_lengths": self.lengths.state(),
            "vote_agreement": self.agreement.state(),
            "reference": [[round(s.difficulty, 6), round(s.sequential, 6), round(s.search, 6),
                           s.form, s.steps, s.covered] for s in self.reference],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], **overrides: Any) -> LearnedPolicy:
        """Restore from ``state()``; keyword overrides replace config values (for example
        ``target_tokens`` or ``exploration`` from the operator's config).

        A state of an older version (a logistic model over plans this version no longer has)
        is not migrated: the policy starts from the prior with the old state's target and
        exploration, and says so in the log.

        Raises:
            PolicyError: a malformed state.
        """
        version = state.get("state_version")
        if isinstance(version, int) and version < STATE_VERSION:
            old = state.get("config") or {}
            kept = {k: old[k] for k in ("target_tokens", "exploration") if k in old}
            logger.warning("learned policy state version %s predates the prior-based policy "
                           "(version %s): starting from the prior", version, STATE_VERSION)
            return cls(**dict(kept, **overrides))
        if version != STATE_VERSION:
            raise PolicyError(f"learned policy state version {version}; this code reads "
                              f"{STATE_VERSION} and older")
        try:
            policy = cls(**dict(_known_config(state["config"]), **overrides))
            current = state["current"]
            policy.current = [str(current.get(name, PRIOR_STRATEGY[name])) for name in KIND_NAMES]
            if any(s not in STRATEGIES for s in policy.current):
                raise ValueError(f"unknown strategy in {current}")
            # ``repeated`` is absent from a state written before prompts were keyed: every
            # prompt is new to it.
            for name in ("trials", "successes", "repeated"):
                if name == "repeated" and state.get(name) is None:
                    continue
                value = np.array(state[name], float)
                if value.shape != getattr(policy, name).shape:
                    raise ValueError(f"{name} has shape {value.shape}")
                setattr(policy, name, value)
            policy.decisions = int(state.get("decisions", 0))
            policy.explored = int(state.get("explored", 0))
            policy.exploring_decisions = int(state.get(
                "exploring_decisions", policy.decisions if policy.trials.any() else 0))
            policy.switches = list(state.get("switches", []))
            policy._counted = _counted_prompts(state.get("counted_prompts") or {})
            # Verdicts of past looks; a state written before looks existed has none, and its
            # alternatives are judged again at their next look.
            policy._worse = {KIND_NAMES.index(name): set(strategies)
                             for name, strategies in (state.get("worse") or {}).items()
                             if name in KIND_NAMES}
            if any(s not in STRATEGIES for v in policy._worse.values() for s in v):
                raise ValueError(f"unknown strategy in {state.get('worse')}")
            policy.lengths.restore(state.get("answer_lengths", {}))
            # A state written before votes were bounded has none: they are observed anew.
            policy.agreement.restore(state.get("vote_agreement") or {})
            # Rows of older states end earlier: steps, then covered, unknown.
            for d, s, r, form, *rest in state.get("reference", []):
                steps, covered = (list(rest) + [None, None])[:2]
                policy.reference.append(Scores(
                    float(d), float(s), float(r), form if form in FORMS else None,
                    int(steps) if steps is not None else None,
                    bool(covered) if covered is not None else None))
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"malformed learned policy state: {exc}") from exc
        policy.resolve()
        return policy

    def save(self, path: Path) -> None:
        """Write ``state()`` as JSON atomically (a temporary file renamed over ``path``), so
        a crash never leaves a torn file."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(self.state(), indent=1, sort_keys=True) + "\n",
                             encoding="utf-8")
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> LearnedPolicy:
        """Read a state written by ``save`` (JSON only; never unpickles).

        Raises:
            PolicyError: unreadable or malformed file.
        """
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PolicyError(f"cannot read learned policy state {path}: {exc}") from exc
        return cls.from_state(state, **overrides)
