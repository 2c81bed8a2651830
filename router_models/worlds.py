"""SIMULATION: a family of worlds drawn at random, so that no policy can be tuned to one
hand-written world (domain randomization, Tobin et al. 2017, "Domain Randomization for
Transferring Deep Neural Networks from Simulation to the Real World").

A world is drawn from a seed (``draw_world``). Per kind of prompt (``KINDS``: independent
guesses, compositional chains, easy one-liners, facts that need search) it draws

- which axis the kind rewards (``AXES``: votes, chain length, search, nothing). In
  *literature* worlds each kind rewards what the literature found for it (``LITERATURE``);
  in *reversed* worlds every kind rewards another kind's axis (a random derangement); in
  *flat* worlds nothing helps and every plan that finishes ties (``WORLD_TYPES`` gives the
  rates);
- the shape of its accuracy curves, from the axis's ranges in ``RANGES``: the per-sample
  accuracy and how it spreads over prompts (a concentrated spread is what lets a majority
  vote gain, Wang et al. 2023; an all-or-nothing spread gives votes nothing), how much of it
  needs thinking past the answer and how fast that saturates (Mirtaheri et al. 2025), where
  overthinking starts and how fast accuracy declines past it (Ghosal et al. 2025), and what
  retrieval recovers (or, for kinds that do not need it, the harm of distracting passages,
  Shi et al. 2023);
- how long its answers run: the tokens a sample needs to state its answer (a log-normal per
  sample around a per-prompt median that grows with difficulty). A sample cut before that
  states no answer;
- the phrasing of its prompts (``router_models.world_prompts``) and its share of the traffic.

How one sample of allowance D tokens behaves on a prompt with answer length L (drawn per
sample), answer median a, thinking length t (``think`` x a: how long it keeps thinking when
allowed) and saturated accuracy p:

- it answers when L <= D, else it is cut and states nothing;
- it spends min(D, max(L, t)) tokens: a chain that is done early spends less than its
  budget, a model allowed more keeps thinking up to t (``think`` near 1: it stops at once);
- when it answers, it is right with probability
  q = c + (p - c) x [(1 - g) + g x (1 - exp(-(T - a) / (s a)))] x exp(-max(0, T - o a) / (f a))
  where T = max(a, min(D, t)) is how long it thought, c the chance of a guess (1 / choices),
  g the share of the gain that needs thinking past the answer, s the saturation scale, o the
  overthinking onset and f its decay scale (all ratios to a);
- with retrieval (``search`` plans, or any plan with search calls) the facts are found with
  probability 1 - (1 - h)^calls, and then q moves by a share G of the way to 1 (G < 0: that
  share of the way to chance);
- wrong answers: the most common wrong answer takes a share 1 / sum_{j=1..choices-1} j^-z of
  the wrong mass (its Zipf share); the rest is scattered (samples never agree on it). On
  all-or-nothing kinds (concentration 0) every sample of a prompt gives the same answer: the
  model knows it, or holds one guess, right by chance (p = 1 or 0), so votes, length and
  search change nothing once a sample finishes.

A plan of ``width`` samples takes a majority vote over the samples that answered
(self-consistency, Wang et al. 2023): the right answer wins when it has more votes than the
most common wrong answer, half of the ties (scattered wrong answers never form a block); a
plan whose samples all were cut is a guess (chance). The vote's accuracy is the exact sum
over the multinomial counts of (right, most common wrong, scattered wrong, cut). The plan
spends its expected samples x the sample's expected tokens (a vote stops early, as the
gateway's does, when its first three samples agree: ``expected_samples``), plus
``QUERY_TOKENS`` for each retrieval call after the first (the first uses the question as its
query and costs no model tokens).

Every figure is a SIMULATION: the ranges are wide on purpose and NOT fitted to any model.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np
from scipy.special import gammaln, ndtr

from router_models.plan import Plan
from router_models.voting import Ballot, tally, winner
from router_models.world_prompts import KINDS, Phrasing, draw_phrasing, write_prompt

AXES = ("votes", "chain", "search", "nothing")
LITERATURE = {"guess": "votes", "chain": "chain", "easy": "nothing", "fact": "search"}
WORLD_TYPES = {"literature": 0.60, "reversed": 0.25, "flat": 0.15}
# Tokens the model writes per retrieval query (a planning figure, as in the search strategy).
QUERY_TOKENS = 64
# The gateway's first wave of vote samples before its early-stopping rule is read.
FIRST_WAVE = 3
# Redraws of a vote that drew every sample until its first wave disagrees (``vote_ballots``):
# such a wave agrees with the chance the vote stops, so this many fail only where votes stop
# almost always.
FIRST_WAVE_REDRAWS = 64
# A plan with neither depth nor budget: a request without max_tokens.
DEFAULT_MAX_TOKENS = 512
# The answer-length median of a prompt varies around its kind's curve by this log-normal sigma.
PROMPT_LENGTH_SIGMA = 0.25
# Sample answer lengths and thinking lengths never exceed this (tokens).
MAX_TOKENS = 32768

# Per axis, the range each kind parameter is drawn from (uniform; `*_tokens` log-uniform).
#   accuracy: per-sample saturated accuracy, as a share of the way from chance to 1, at
#     difficulty 0 and 1; concentration: the Beta concentration of that share over prompts
#     (0 = all or nothing); wrong_zipf: z; answer_tokens: the answer length median at
#     difficulty 0 and its growth factor to difficulty 1; answer_spread: the per-sample
#     log-normal sigma; length_gain: g; saturation: s; think: t / a; overthink: o; decline: f;
#     search_gain: G; search_hit: h.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "votes": {"accuracy0": (0.40, 0.80), "accuracy1": (0.10, 0.45), "concentration": (3, 15),
              "wrong_zipf": (0.2, 1.0), "answer_tokens": (30, 400), "answer_growth": (1, 2),
              "answer_spread": (0.15, 0.5), "length_gain": (0.0, 0.15),
              "saturation": (0.3, 1.0), "think": (1.5, 5), "overthink": (1.2, 3),
              "decline": (2, 10), "search_gain": (-0.30, 0.0), "search_hit": (0.5, 0.95)},
    "chain": {"accuracy0": (0.75, 0.97), "accuracy1": (0.35, 0.80), "concentration": (1, 6),
              "wrong_zipf": (0.3, 1.5), "answer_tokens": (60, 600), "answer_growth": (2, 6),
              "answer_spread": (0.15, 0.4), "length_gain": (0.5, 0.9),
              "saturation": (0.5, 1.5), "think": (2, 5), "overthink": (6, 12),
              "decline": (5, 20), "search_gain": (-0.35, 0.0), "search_hit": (0.5, 0.95)},
    "search": {"accuracy0": (0.10, 0.45), "accuracy1": (0.0, 0.20), "concentration": (0.3, 2),
               "wrong_zipf": (0.3, 1.0), "answer_tokens": (20, 300), "answer_growth": (1, 1.5),
               "answer_spread": (0.15, 0.5), "length_gain": (0.0, 0.10),
               "saturation": (0.3, 1.0), "think": (1, 2), "overthink": (1.5, 4),
               "decline": (3, 10), "search_gain": (0.5, 0.9), "search_hit": (0.6, 0.95)},
    "nothing": {"accuracy0": (0.80, 0.98), "accuracy1": (0.50, 0.90),
                "concentration": (0.05, 0.3), "wrong_zipf": (1.5, 3.0),
                "answer_tokens": (8, 120), "answer_growth": (1, 1.5),
                "answer_spread": (0.15, 0.4), "length_gain": (0.0, 0.03),
                "saturation": (0.3, 1.0), "think": (1, 1.5), "overthink": (1.5, 4),
                "decline": (3, 10), "search_gain": (-0.20, 0.0), "search_hit": (0.5, 0.95)},
}
# Flat worlds: every kind all-or-nothing (concentration 0), uniform wrong answers, no gain
# from length, votes or search, no overthinking; accuracy and lengths still drawn widely.
FLAT_RANGES: dict[str, tuple[float, float]] = {
    "accuracy0": (0.30, 0.95), "accuracy1": (0.05, 0.60), "concentration": (0, 0),
    "wrong_zipf": (0, 0), "answer_tokens": (8, 400), "answer_growth": (1, 2),
    "answer_spread": (0.15, 0.5), "length_gain": (0, 0), "saturation": (1, 1),
    "think": (1, 3), "overthink": (math.inf, math.inf), "decline": (1, 1),
    "search_gain": (0, 0), "search_hit": (0.5, 0.95)}
LOG_UNIFORM = frozenset({"answer_tokens"})
PARAMETERS = tuple(RANGES["votes"])
# Per-prompt arrays a prompt set carries, besides the kind parameters broadcast to prompts.
_PROMPT_FIELDS = ("chance", "accuracy", "answer_tokens", "top_wrong")


class WorldDrawError(ValueError):
    """An impossible request of the world family (an unknown kind, a negative count)."""


@dataclass(frozen=True)
class KindCurve:
    """One kind of prompt in one world: the axis it rewards, its parameters (names as in
    ``RANGES``; token figures in tokens, the rest ratios or probabilities), its phrasing and
    its share of the traffic."""

    kind: str
    axis: str
    params: dict[str, float]
    phrasing: Phrasing
    share: float

    def accuracy_share(self, difficulty: np.ndarray) -> np.ndarray:
        """Mean saturated accuracy, as a share of the way from chance to 1."""
        a0, a1 = self.params["accuracy0"], self.params["accuracy1"]
        return a0 + (a1 - a0) * difficulty

    def answer_median(self, difficulty: np.ndarray) -> np.ndarray:
        """The answer length median (tokens) of the kind's curve at ``difficulty``."""
        return self.params["answer_tokens"] * self.params["answer_growth"] ** difficulty


@dataclass
class Prompts:
    """SIMULATION: a set of prompts of one world, with each prompt's hidden truth as arrays of
    shape (n,): ``kind`` (index into ``KINDS``), ``difficulty``, ``chance`` (1 / choices),
    ``accuracy`` (p: the saturated per-sample accuracy), ``answer_tokens`` (the answer
    length median a, tokens), ``top_wrong`` (the most common wrong answer's share of the wrong
    mass), and every kind parameter of ``RANGES`` broadcast to its prompts (``params``).
    ``messages`` are what the router sees; ``templates`` name each prompt's template."""

    messages: list[list[dict[str, Any]]]
    templates: list[str]
    kind: np.ndarray
    difficulty: np.ndarray
    chance: np.ndarray
    accuracy: np.ndarray
    answer_tokens: np.ndarray
    top_wrong: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True)
class RandomWorld:
    """SIMULATION: one world of the family (module docstring). Build with ``draw_world``."""

    seed: int
    world_type: str
    curves: dict[str, KindCurve]

    @property
    def axes(self) -> dict[str, str]:
        """Kind -> the axis it rewards in this world."""
        return {k: c.axis for k, c in self.curves.items()}

    def prompts(self, count: int, split: str = "eval", per_kind: bool = False) -> Prompts:
        """``count`` prompts of this world: by traffic share (at least one per kind), or
        ``count`` of every kind when ``per_kind``. Splits (any string: ``train``, ``eval``)
        draw disjoint random streams, so held-out prompts differ from training ones.
        Deterministic per (seed, split, count, per_kind).

        Raises:
            WorldDrawError: a negative count.
        """
        if count < 0:
            raise WorldDrawError("count must be >= 0")
        if per_kind:
            counts = {k: count for k in KINDS}
        else:
            raw = np.array([self.curves[k].share for k in KINDS]) * count
            counts = dict(zip(KINDS, np.maximum(1, np.round(raw)).astype(int).tolist(),
                              strict=True))
        rows: list[tuple[Any, ...]] = []
        for k_index, kind in enumerate(KINDS):
            curve = self.curves[kind]
            rng = random.Random(f"world-{self.seed}-{split}-{kind}")
            for _ in range(counts[kind]):
                difficulty = rng.random()
                messages, choices, template = write_prompt(curve.phrasing, difficulty, rng)
                rows.append((messages, template, k_index, difficulty, choices,
                             rng.random(), rng.gauss(0.0, 1.0)))
        return self._truth(rows)

    def _truth(self, rows: list[tuple[Any, ...]]) -> Prompts:
        kind = np.array([r[2] for r in rows], int)
        difficulty = np.array([r[3] for r in rows], float)
        choices = np.array([r[4] for r in rows], float)
        u = np.array([r[5] for r in rows], float)
        z = np.array([r[6] for r in rows], float)
        chance = 1.0 / choices
        share = np.zeros(len(rows))
        median = np.zeros(len(rows))
        params = {name: np.zeros(len(rows)) for name in PARAMETERS}
        all_or_nothing = np.zeros(len(rows), bool)
        for k_index, kind_name in enumerate(KINDS):
            rows_k = kind == k_index
            if not rows_k.any():
                continue
            curve = self.curves[kind_name]
            mean = np.clip(curve.accuracy_share(difficulty[rows_k]), 1e-3, 1 - 1e-3)
            kappa = curve.params["concentration"]
            if kappa <= 0:
                # All or nothing: the model knows the answer (share `mean`), else it holds one
                # answer, a guess fixed per prompt: right by chance.
                lucky = mean + (1 - mean) * chance[rows_k]
                share[rows_k] = (u[rows_k] < lucky).astype(float)
                all_or_nothing[rows_k] = True
            else:
                share[rows_k] = _beta_quantile(u[rows_k], kappa * mean, kappa * (1 - mean))
            median[rows_k] = curve.answer_median(difficulty[rows_k])
            for name in PARAMETERS:
                params[name][rows_k] = curve.params[name]
        answer_tokens = np.minimum(MAX_TOKENS, median * np.exp(PROMPT_LENGTH_SIGMA * z))
        wrongs = np.maximum(1, choices - 1)
        top_wrong = np.array([1.0 / sum(j ** -zipf for j in range(1, int(m) + 1))
                              for m, zipf in zip(wrongs, params["wrong_zipf"], strict=True)])
        accuracy = np.where(all_or_nothing, share, chance + (1 - chance) * share)
        top_wrong = np.where(all_or_nothing, 1.0, top_wrong)
        return Prompts(messages=[r[0] for r in rows], templates=[r[1] for r in rows],
                       kind=kind, difficulty=difficulty, chance=chance, accuracy=accuracy,
                       answer_tokens=answer_tokens, top_wrong=top_wrong, params=params)

    # -- plans ----------------------------------------------------------------------------

    def outcome(self, prompts: Prompts, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """Expected accuracy and expected completion tokens of ``plan`` on every prompt:
        two arrays of shape (len(prompts),) (module docstring for the model)."""
        depth = float(plan_depth(plan))
        calls = plan.search_calls
        searched = plan.strategy == "search" or calls > 0
        answered, right, top, other = self.sample_parts(prompts, depth, searched, calls)
        accuracy = vote_accuracy(answered, right, top, other, prompts.chance, plan.width)
        a, spread = prompts.answer_tokens, prompts.params["answer_spread"]
        think = np.minimum(MAX_TOKENS, prompts.params["think"] * a)
        tokens = expected_samples(plan, answered, right, top) * sample_tokens(
            depth, a, spread, think)
        if searched:
            tokens = tokens + QUERY_TOKENS * max(0, calls - 1)
        return accuracy, tokens

    def sample_parts(self, prompts: Prompts, depth: float, searched: bool, calls: int = 1
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One sample of allowance ``depth`` tokens, per prompt: P(it answers), and given an
        answer P(right), P(the most common wrong answer), P(a scattered wrong one); (n,)
        each (module docstring)."""
        a = prompts.answer_tokens
        answered = finish_probability(depth, a, prompts.params["answer_spread"])
        think = np.minimum(MAX_TOKENS, prompts.params["think"] * a)
        right = self._sample_accuracy(prompts, depth, think, searched, max(1, calls))
        top = (1.0 - right) * prompts.top_wrong
        return answered, right, top, 1.0 - right - top

    def average_prompt(self, kind: str, difficulty: float) -> Prompts:
        """A stand-in for an unknown prompt of ``kind`` at ``difficulty``: the kind's mean
        accuracy and answer length there, four choices, no text.

        Raises:
            WorldDrawError: an unknown kind.
        """
        if kind not in self.curves:
            raise WorldDrawError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        curve = self.curves[kind]
        d = np.array([difficulty])
        chance = np.array([0.25])
        share = np.clip(curve.accuracy_share(d), 0.0, 1.0)
        zipf = curve.params["wrong_zipf"]
        return Prompts(messages=[[]], templates=["average"], kind=np.array([KINDS.index(kind)]),
                       difficulty=d, chance=chance, accuracy=chance + (1 - chance) * share,
                       answer_tokens=curve.answer_median(d),
                       top_wrong=np.array([1.0 / sum(j ** -zipf for j in range(1, 4))]),
                       params={k: np.array([v]) for k, v in curve.params.items()})

    def _sample_accuracy(self, prompts: Prompts, depth: float, think: np.ndarray,
                         searched: bool, calls: int) -> np.ndarray:
        p, a, c = prompts.params, prompts.answer_tokens, prompts.chance
        thought = np.maximum(a, np.minimum(depth, think))
        g = p["length_gain"]
        level = (1 - g) + g * (1 - np.exp(-(thought - a) / (p["saturation"] * a)))
        with np.errstate(invalid="ignore"):
            past = np.where(np.isinf(p["overthink"]), 0.0,
                            np.maximum(0.0, thought - p["overthink"] * a))
        q = c + (prompts.accuracy - c) * level * np.exp(-past / (p["decline"] * a))
        if searched:
            found = 1 - (1 - p["search_hit"]) ** calls
            gain = p["search_gain"]
            q = np.where(gain >= 0, q + found * gain * (1 - q), q + found * gain * (q - c))
        return q

    def realize(self, prompts: Prompts, index: int, plan: Plan, rng: np.random.Generator,
                accuracy: float | None = None) -> tuple[bool, int]:
        """One served request: (correct, completion tokens spent), drawn. Each sample's
        answer length is drawn (log-normal), so the tokens vary as a real request's do;
        correctness is a Bernoulli draw of the plan's expected accuracy on the prompt
        (``accuracy`` when the caller has it), independent of the lengths drawn."""
        correct, spent, _ = self.realize_usage(prompts, index, plan, rng, accuracy)
        return correct, spent

    def realize_usage(self, prompts: Prompts, index: int, plan: Plan,
                      rng: np.random.Generator, accuracy: float | None = None
                      ) -> tuple[bool, int, list[tuple[int, bool]]]:
        """``realize``, plus each sample's (tokens to its answer, stated it within its
        allowance), as the gateway observes a request's samples (``Router.observe_usage``)."""
        if accuracy is None:
            accuracy = float(self.outcome(single_prompt(prompts, index), plan)[0][0])
        depth = plan_depth(plan)
        a = float(prompts.answer_tokens[index])
        think = min(MAX_TOKENS, float(prompts.params["think"][index]) * a)
        lengths = a * np.exp(float(prompts.params["answer_spread"][index])
                             * rng.standard_normal(plan.width))
        # A vote stops after its first wave with the chance ``expected_samples`` models, and
        # then spends and reports only the samples it drew, as the gateway does.
        drawn = self._samples_drawn(prompts, index, plan, depth, rng)
        lengths = lengths[:drawn]
        tokens = np.minimum(depth, np.maximum(lengths, think))
        spent = float(tokens.sum())
        if plan.strategy == "search" or plan.search_calls > 0:
            spent += QUERY_TOKENS * max(0, plan.search_calls - 1)
        # What the gateway observes of each sample (answer_lengths.observations): the tokens up
        # to its stated answer, whatever it thinks after; cut before it, its cap (censored).
        samples = [(max(1, int(round(length))), True) if length <= depth else (int(depth), False)
                   for length in lengths]
        return bool(rng.random() < accuracy), int(round(spent)), samples


    def vote_agreement(self, prompts: Prompts, index: int, plan: Plan, drawn: int,
                       rng: np.random.Generator) -> bool | None:
        """One vote of ``drawn`` samples of ``plan`` on prompt ``index`` (``vote_ballots``):
        whether its first sample stated the answer the vote elected (what the gateway
        reports, ``Router.observe_usage``); None when no sample answered. Elected as the
        gateway elects (``router_models.voting``: the most votes, ties to the first seen)."""
        ballots = self.vote_ballots(prompts, index, plan, drawn, rng)
        elected = winner(tally(Ballot(b) for b in ballots))
        return None if elected is None else ballots[0] == elected

    def vote_ballots(self, prompts: Prompts, index: int, plan: Plan, drawn: int,
                     rng: np.random.Generator) -> list[str | None]:
        """The answers of one vote's ``drawn`` samples (``max(1, drawn)`` of them): None for a
        sample cut before its answer, else ``"right"``, ``"top"`` (the most common wrong
        answer) or ``"scattered j"`` (a wrong answer of its own), with ``sample_parts``'
        chances, and as the number drawn says (``_samples_drawn``, ``expected_samples``): a
        vote of more than ``FIRST_WAVE`` that stopped after it drew a first wave that agreed
        (all right or all the top wrong answer), one that drew every sample a first wave that
        did not. Drawn apart from ``realize_usage``'s outcome, which is the plan's expected
        accuracy: both follow the same chances."""
        answered, right, top, _ = self.sample_parts(
            single_prompt(prompts, index), float(plan_depth(plan)), plan.search_calls > 0,
            plan.search_calls)
        a, r, t = float(answered[0]), float(right[0]), float(top[0])
        count = max(1, drawn)
        stops = plan.strategy == "parallel_vote" and plan.width > FIRST_WAVE
        alike_right, alike_top = (a * r) ** FIRST_WAVE, (a * t) ** FIRST_WAVE
        if stops and count < plan.width and alike_right + alike_top > 0:
            # Stopped after the first wave: its samples agreed, on the right answer or on the
            # top wrong one in proportion to the chances of each.
            agreed = "right" if rng.random() * (alike_right + alike_top) < alike_right else "top"
            return [agreed] * count

        def one(j: int) -> str | None:
            if rng.random() >= a:
                return None
            u = rng.random()
            return "right" if u < r else "top" if u < r + t else f"scattered {j}"

        ballots = [one(j) for j in range(count)]
        # Drew every sample: its first wave did not agree (rejection; a first wave that
        # nearly always agrees nearly always stops, so few redraws are needed).
        for _ in range(FIRST_WAVE_REDRAWS):
            if not (stops and count >= plan.width and _alike(ballots[:FIRST_WAVE])):
                break
            ballots = [one(j) for j in range(count)]
        return ballots

    def _samples_drawn(self, prompts: Prompts, index: int, plan: Plan, depth: int,
                       rng: np.random.Generator) -> int:
        """Samples one request of ``plan`` draws: all ``width``, or for a vote the first
        wave alone with the chance that its samples agree (``expected_samples``)."""
        if plan.strategy != "parallel_vote" or plan.width <= FIRST_WAVE:
            return plan.width
        searched = plan.search_calls > 0
        answered, right, top, _ = self.sample_parts(single_prompt(prompts, index), float(depth),
                                                    searched, plan.search_calls)
        expected = float(np.asarray(expected_samples(plan, answered, right, top))[0])
        stop = (plan.width - expected) / (plan.width - FIRST_WAVE)
        return FIRST_WAVE if rng.random() < stop else plan.width


def _alike(wave: list[str | None]) -> bool:
    """Whether a first wave's samples all state one answer (``expected_samples``' stop)."""
    return bool(wave) and wave[0] is not None and all(b == wave[0] for b in wave)


def plan_depth(plan: Plan) -> int:
    """Each sample's token allowance: ``depth_tokens``, else an even share of the budget,
    else ``DEFAULT_MAX_TOKENS``."""
    if plan.depth_tokens is not None:
        return plan.depth_tokens
    if plan.budget_tokens is not None:
        return plan.budget_tokens // plan.width
    return DEFAULT_MAX_TOKENS


def finish_probability(depth: float, answer_tokens: np.ndarray, spread: np.ndarray
                       ) -> np.ndarray:
    """P(a sample's log-normal answer length <= ``depth``): the chance it states an answer."""
    if depth <= 0:
        return np.zeros_like(answer_tokens)
    return ndtr((math.log(depth) - np.log(answer_tokens)) / spread)


def sample_tokens(depth: float, answer_tokens: np.ndarray, spread: np.ndarray,
                  think: np.ndarray) -> np.ndarray:
    """E[min(D, max(L, t))] for L ~ LogNormal(log a, spread): the tokens one sample of
    allowance D spends (closed form with the log-normal's partial expectations)."""
    if depth <= 0:
        return np.zeros_like(answer_tokens)
    mu, s = np.log(answer_tokens), spread
    mean = np.exp(mu + s * s / 2)

    def below(x: np.ndarray | float) -> np.ndarray:  # E[L; L < x]
        return mean * ndtr((np.log(x) - mu - s * s) / s)

    def cdf(x: np.ndarray | float) -> np.ndarray:
        return ndtr((np.log(x) - mu) / s)

    t = np.minimum(think, depth)
    inside = t * cdf(t) + below(depth) - below(t) + depth * (1 - cdf(depth))
    return np.where(think >= depth, float(depth), inside)


def expected_samples(plan: Plan, answered: np.ndarray, right: np.ndarray, top: np.ndarray
                     ) -> np.ndarray | float:
    """Samples a plan draws, per prompt. A vote stops early as the gateway's does
    (Adaptive-Consistency, Aggarwal et al. 2023; ``parallel_vote``'s defaults: a first wave of
    ``FIRST_WAVE``, stopped when the Beta rule is settled): modelled as stopping after the
    first wave when its samples agree (three alike settle the rule at threshold 0.9), else
    drawing all ``width``; the vote's accuracy is taken as the full vote's (the gateway's
    early stopping kept it within 0.3 points in bench/early_stopping.py)."""
    if plan.strategy != "parallel_vote" or plan.width <= FIRST_WAVE:
        return float(plan.width)
    alike = (answered * right) ** FIRST_WAVE + (answered * top) ** FIRST_WAVE
    return FIRST_WAVE + (1.0 - alike) * (plan.width - FIRST_WAVE)


@functools.lru_cache(maxsize=64)
def _vote_terms(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every multinomial count (right, top wrong, other wrong, cut) of ``width`` samples:
    (terms, 4) counts, (terms,) log multinomial coefficients, (terms,) the right answer's
    share of the win (1, 1/2 on a tie with the top wrong, 0 otherwise; 0 when all are cut,
    whose chance is added apart)."""
    counts = np.array([(r, t, o, width - r - t - o) for r in range(width + 1)
                       for t in range(width + 1 - r) for o in range(width + 1 - r - t)], float)
    log_coef = gammaln(width + 1) - gammaln(counts + 1).sum(axis=1)
    right, top = counts[:, 0], counts[:, 1]
    win = np.where(right > top, 1.0, np.where((right == top) & (right > 0), 0.5, 0.0))
    return counts, log_coef, win


def vote_accuracy(answered: np.ndarray, right: np.ndarray, top_wrong: np.ndarray,
                  other_wrong: np.ndarray, chance: np.ndarray, width: int) -> np.ndarray:
    """P(a majority vote over ``width`` samples elects the right answer), per prompt.

    Each sample answers with probability ``answered``; an answer is right, the most common
    wrong answer or another wrong one with probabilities ``right``, ``top_wrong``,
    ``other_wrong`` (summing to 1). Ties with the top wrong answer are split; when no sample
    answers, the reply is a guess (``chance``). All arrays have shape (n,).
    """
    if width == 1:
        return answered * right + (1 - answered) * chance
    counts, log_coef, win = _vote_terms(width)
    probs = np.stack([answered * right, answered * top_wrong, answered * other_wrong,
                      1 - answered], axis=1)
    # A zero probability becomes log 1e-300: a count of 0 times it adds nothing, a positive
    # count makes the term vanish, as it should.
    logs = np.log(np.clip(probs, 1e-300, None))
    log_p = log_coef[:, None] + counts @ logs.T  # (terms, n)
    return win @ np.exp(log_p) + (1 - answered) ** width * chance


def _beta_quantile(u: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.special import betaincinv

    return betaincinv(np.maximum(a, 1e-3), np.maximum(b, 1e-3), u)


def single_prompt(prompts: Prompts, index: int) -> Prompts:
    """Prompt ``index`` of ``prompts`` as a set of one."""
    take = slice(index, index + 1)
    return Prompts(messages=prompts.messages[take], templates=prompts.templates[take],
                   kind=prompts.kind[take], difficulty=prompts.difficulty[take],
                   chance=prompts.chance[take], accuracy=prompts.accuracy[take],
                   answer_tokens=prompts.answer_tokens[take], top_wrong=prompts.top_wrong[take],
                   params={k: v[take] for k, v in prompts.params.items()})


def _derangements() -> list[tuple[str, ...]]:
    literature = tuple(LITERATURE[k] for k in KINDS)
    return [p for p in permutations(literature)
            if all(x != y for x, y in zip(p, literature, strict=True))]


DERANGEMENTS = _derangements()


def _draw_params(ranges: dict[str, tuple[float, float]], rng: random.Random) -> dict[str, float]:
    out = {}
    for name in PARAMETERS:
        lo, hi = ranges[name]
        if name in LOG_UNIFORM:
            out[name] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            out[name] = lo if lo == hi else rng.uniform(lo, hi)
    return out


def draw_world(seed: int) -> RandomWorld:
    """The world of ``seed`` (deterministic): its type (``WORLD_TYPES`` rates), each kind's
    axis, curve parameters, phrasing and traffic share (Dirichlet(3, 3, 3, 3))."""
    rng = random.Random(f"world-{seed}")
    roll, world_type = rng.random(), "flat"
    cumulative = 0.0
    for name, rate in WORLD_TYPES.items():
        cumulative += rate
        if roll < cumulative:
            world_type = name
            break
    if world_type == "literature":
        axes = dict(LITERATURE)
    elif world_type == "reversed":
        axes = dict(zip(KINDS, rng.choice(DERANGEMENTS), strict=True))
    else:
        axes = {k: "nothing" for k in KINDS}
    weights = [rng.gammavariate(3.0, 1.0) for _ in KINDS]
    curves = {}
    for kind, weight in zip(KINDS, weights, strict=True):
        ranges = FLAT_RANGES if world_type == "flat" else RANGES[axes[kind]]
        params = _draw_params(ranges, rng)
        if world_type == "flat":
            params["accuracy1"] = min(params["accuracy1"], params["accuracy0"])
        curves[kind] = KindCurve(kind=kind, axis=axes[kind], params=params,
                                 phrasing=draw_phrasing(kind, rng),
                                 share=weight / sum(weights))
    return RandomWorld(seed=seed, world_type=world_type, curves=curves)
