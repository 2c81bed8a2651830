"""The prior: what the test-time-compute literature says to do with each kind of prompt, before
any feedback, and how large each plan is.

Kinds of prompt (``KIND_NAMES``) are read off the classifier's scores: easy (``difficulty``
below ``EASY_BELOW``, 0.1: the direct answer fails less than one time in ten) or hard, and of
three archetypes: ``search`` (``search`` >= 0.5: facts the model lacks; the gateway reads this
score against its collection, ``read_search``; a prompt stating ``SELF_CONTAINED_STEPS``
dependent steps only when the collection covers it, ``is_search``), ``chain`` (the answer
builds on intermediate results: the prompt states ``CHAIN_STEPS`` dependent steps, or is a
graph, or ``sequential`` >= 0.5; ``is_chain``), else ``independent`` (knowledge, estimation,
judgement: each try is an independent guess).

The strategy per kind (``PRIOR_STRATEGY``):

- independent, not easy: ``parallel_vote``. Majority voting over independent samples helps
  where each try is a guess (self-consistency, Wang et al. 2023; at equal tokens a vote of short
  chains beats one long chain by up to 20 points, Ghosal et al. 2025), and it helps well below
  "hard": five samples each right 80% of the time elect the right answer 94% of the time;
- chain: ``sequential``. On compositional tasks one long chain is exponentially better than any
  vote over short ones (Mirtaheri et al. 2025, "Let Me Think!"); an easy chain ends early, so it
  costs what a direct answer would;
- search: ``search``. Reasoning tokens cannot supply a missing fact; retrieval can (ReAct, Yao
  et al. 2023). Its answer is one chain sized like ``sequential``'s, so a chain-like prompt
  read as needing facts keeps its room;
- independent and easy: ``direct`` with a small budget: extra compute buys little on easy
  prompts (Snell et al. 2024).

Sizes (``size_plan``) follow the tokens a complete answer of that kind takes, ``answer_tokens``
(observed: ``router_models.answer_lengths``), times ``HEADROOM``: a direct answer and each vote
sample get that much, so every sample can finish. A chain's cap is ``CHAIN_CAP`` samples times
(1 + difficulty): room for long chains, not spend, since a chain stops when its answer is
written; never less than ``chain_floor`` (one sample of the answer length assumed before
usage), since a kind's observed answers can all be one-liners while some of its prompts reason
for hundreds of tokens. A vote gets ``2 + scale x difficulty`` samples, and ``scale`` is
solved so the mean expected spend over recent traffic meets the operator's target
(``solve_scale``, ``mean_spend``): harder prompts get more tokens within the configured mean
(compute-optimal allocation, Snell et al. 2024). A vote whose budget buys fewer than three
complete samples runs one chain instead (``fit_vote``). The vote's early stopping
(Adaptive-Consistency) then saves samples where the first ones agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from router_models.plan import Plan, Scores
from router_models.policies.base import QUERY_TOKENS

ARCHETYPES = ("independent", "chain", "search")
LEVELS = ("easy", "hard")
KIND_NAMES = tuple(f"{level}/{archetype}" for level in LEVELS for archetype in ARCHETYPES)
PRIOR_STRATEGY = {
    "easy/independent": "direct", "easy/chain": "sequential", "easy/search": "search",
    "hard/independent": "parallel_vote", "hard/chain": "sequential", "hard/search": "search",
}
# A sample gets this multiple of the observed p90 answer length: room for the answer itself
# and for variation between samples.
HEADROOM = 1.25
# A direct answer planned for a prompt that is not easy (an explored or learnt alternative, or
# the one answer that replaces votes which buy nothing) gets this many samples' tokens as room:
# a sample is sized to finish nine times in ten, and a vote outlives a cut sample where one
# answer does not. A direct answer stops when done, so room is not spend. One room for those
# paths, whose outcomes count together per kind, so that a kind learns of the plan it will run
# (tune seeds 30-69 of bench/policy_sim.py, SIMULATION: after 100 feedbacks per kind, (b) median
# share 76% against 75%, flat worlds' feedback target 3/3 against 2/3; (a) unchanged).
DIRECT_ROOM = 2
# A chain's cap is this multiple of a sample, times (1 + difficulty): a chain ends when its
# answer is written, so the cap is room for long chains (whose length the answer-length
# estimate of the kind may not know yet), not spend.
CHAIN_CAP = 4.0
MIN_VOTE_WIDTH = 3  # the smallest vote with a strict majority of two against one
# Easy: the direct answer fails less than one time in ten. Above that, votes still gain: a
# majority of five samples each right 80% of the time is right 94% of the time (Condorcet).
# Low, because a vote of an easy prompt costs little (its first samples agree and it stops
# early) while a guess misread as easy loses the vote's gain: on the randomized worlds'
# phrasing the classifier's difficulty did not separate one-liners from guesses (tune seeds
# 30-69 of bench/policy_sim.py: 0.2 met target 1 in 13/26 literature worlds, 0.1 with a
# 512-token target in 21/26).
EASY_BELOW = 0.1
MAX_SCALE = 32.0
# A prompt that states this many dependent steps (a quantity and what happens to it, moves,
# swaps, operators) is a chain (``router_models.steps``). Two: one premise is a fact or a
# story, two that build on each other are a chain. On public data (bench/steps_check.py, 200
# prompts each) two or more steps held for 84% of GSM8K, 82% of SVAMP and 100% of MultiArith
# (the rule was tuned on missed SVAMP and MultiArith prompts), and, held out, for 100% of
# object tracking and coin flips, 68% of dates, 0% of CommonsenseQA, StrategyQA and HotpotQA
# and 18% of MMLU (its arithmetic and algebra).
CHAIN_STEPS = 2
# A prompt that states this many dependent steps is self-contained, not a search prompt,
# whatever the classifier's ``search`` (which reads kinds of prompt it never saw as search:
# held-out graph questions scored 0.86, README's leave-one-dataset-out table), unless the
# operator's collection covers its content words (``Scores.covered``): a calculation over
# figures a report holds needs the report. A word problem's words count only when it holds a
# document's whole subject (``service.coverage.coverage_shares``); on the HotpotQA corpus none
# of 1,000 GSM8K or SVAMP, 600 MultiArith, 750 object-tracking or 369 date prompts is covered
# (``python -m bench.coverage_check --limit 1000``, 7 Dec 2026). Three, not two,
# for a margin: with years not counted as quantities (``router_models.steps``: dated background
# sentences before a fact question do not make it self-contained), none of HotpotQA's 100 or
# FanOutQA's 310 dev questions states even two, while 616 of GSM8K's 1,319 test problems (47%)
# and every generated graph state three or more (``state_steps``, 6 Dec 2026, 21:30 UTC).
SELF_CONTAINED_STEPS = 3
# The search score above which a prompt outside the search archetype may still be offered
# search while exploring (a plausible plan, not a prior choice).
PLAUSIBLE_SEARCH = 0.25


# The search score from the operator's collection (``read_search``): a question whose content
# words the top hits cover at least this much is a search prompt; one covered less keeps at most
# ``UNCOVERED_SEARCH`` (plausible to explore, never the prior's choice).
COVERED = 0.5
UNCOVERED_SEARCH = 0.3


def read_search(scores: Scores, coverage: float | None, name_coverage: float = 0.0
                ) -> Scores:
    """``scores`` with ``search`` read against the collection there is to search.

    Args:
        scores: the classifier's reading.
        coverage: the share of the question's content words the collection's top hits hold
            (``service.coverage``), or None when the collection cannot be read (a remote
            search service): then the classifier decides.
        name_coverage: the share of the question's names that a top hit is about. It counts
            as coverage except for a prompt that states ``CHAIN_STEPS`` dependent steps: such
            a prompt carries its own facts, and its names are its characters ("Natalia sold
            clips to 48 of her friends..." is not about the Natalia of a document that the
            top hit is about; a GSM8K item's first name matched a HotpotQA article for 5 of
            24 word problems on the outcome bank). A word problem with fewer steps ("Claire
            makes a 3 egg omelet every morning...") arrives with a name share of 0, and a
            word share of 0 unless it holds the whole subject of a top hit
            (``service.coverage.coverage_shares``).

    Returns:
        ``scores`` with ``covered`` set (True when the coverage reaches ``COVERED``) and
        ``search`` the coverage, or at most ``UNCOVERED_SEARCH`` when not covered; ``scores``
        unchanged when ``coverage`` is None.
    """
    if coverage is None:
        return scores
    if (scores.steps or 0) < CHAIN_STEPS:
        coverage = max(coverage, name_coverage)
    if coverage >= COVERED:
        return dataclasses.replace(scores, search=round(coverage, 4), covered=True)
    return dataclasses.replace(scores, search=min(scores.search, UNCOVERED_SEARCH),
                               covered=False)


def archetype_of(scores: Scores) -> str:
    """``search``, ``chain`` or ``independent`` (module docstring). A prompt of form ``graph``
    is a chain whatever its ``sequential`` score: graph connectivity is the compositional task
    on which one long chain beats any vote (Mirtaheri et al. 2025)."""
    return ARCHETYPES[_archetype_index(scores)]


def is_search(scores: Scores) -> bool:
    """Whether the prompt needs facts from a collection: ``search`` at least 0.5, unless it
    states ``SELF_CONTAINED_STEPS`` or more dependent steps (it carries its premises: a graph
    given by its edges, a word problem, a sequence of moves) and the operator's collection
    does not cover it (``Scores.covered``): the classifier's score alone does not make such a
    prompt a search prompt, the collection holding its words does."""
    return scores.search >= 0.5 and (
        bool(scores.covered) or (scores.steps or 0) < SELF_CONTAINED_STEPS)


def _archetype_index(scores: Scores) -> int:
    # On the request path: the index computed, not looked up by name.
    return 2 if is_search(scores) else (1 if is_chain(scores) else 0)


def is_chain(scores: Scores) -> bool:
    """Whether the answer builds on intermediate results: the prompt states at least
    ``CHAIN_STEPS`` dependent steps (``router_models.steps``), or its form is ``graph``, or the
    classifier's ``sequential`` score is at least 0.5."""
    return (scores.sequential >= 0.5 or scores.form == "graph"
            or (scores.steps or 0) >= CHAIN_STEPS)


def kind_of(scores: Scores) -> int:
    """The kind of prompt: an index into ``KIND_NAMES``."""
    return (3 if scores.difficulty >= EASY_BELOW else 0) + _archetype_index(scores)


def plausible_strategies(scores: Scores) -> tuple[str, ...]:
    """The strategies worth trying for this prompt: all but ``search`` unless the prompt may
    need facts (search score at least ``PLAUSIBLE_SEARCH``)."""
    if archetype_of(scores) == "search" or scores.search >= PLAUSIBLE_SEARCH:
        return ("direct", "parallel_vote", "sequential", "search")
    return ("direct", "parallel_vote", "sequential")


def sample_tokens(answer_tokens: int) -> int:
    """Tokens one sample gets: the answer length with ``HEADROOM``."""
    return max(1, math.ceil(answer_tokens * HEADROOM))


def size_plan(strategy: str, scores: Scores, answer_tokens: int, scale: float,
              vote_width: int = 8, search_calls: int = 3, vote_above: float = 0.0,
              chain_floor: int = 0) -> Plan:
    """The plan of ``strategy`` for this prompt (module docstring).

    A direct answer and each vote sample get ``sample_tokens(answer)``. A chain (``sequential``,
    and the answer of ``search``) gets a cap of ``CHAIN_CAP x sample x (1 + difficulty)``: a
    chain ends when its answer is written, so the cap is room, not spend. A vote of a prompt
    that is not easy gets ``2 + scale x difficulty`` samples (at least ``MIN_VOTE_WIDTH``, at
    most ``vote_width``). Search may make ``search_calls`` retrieval calls, the first with the
    question itself.

    Args:
        strategy: one of ``plan.STRATEGIES``.
        scores: the prompt's scores (``difficulty`` sizes chains and votes).
        answer_tokens: tokens a complete answer of this kind takes (p90).
        scale: the vote width's multiplier of difficulty (``solve_scale``), >= 0.
        vote_width: the most samples of a vote.
        search_calls: the most retrieval calls of a search.
        vote_above: the difficulty below which the mean budget buys no vote
            (``solve_vote_above``): such a prompt gets one direct answer instead.
        chain_floor: the least room a chain gets, tokens, whatever ``answer_tokens`` says
            (``LearnedPolicy`` passes one sample of the answer length assumed before usage).

    Returns:
        A ``Plan`` with ``budget_tokens`` and ``depth_tokens`` set; a vote that cannot buy two
        complete samples comes back as one chain (``fit_vote``).
    """
    sample = sample_tokens(answer_tokens)
    one = direct_room(answer_tokens, scores)
    if strategy == "direct":
        return Plan("direct", one, depth_tokens=one)
    cap = max(chain_floor, int(sample * CHAIN_CAP * (1.0 + scores.difficulty)))
    if strategy == "sequential":
        return Plan("sequential", cap, depth_tokens=cap)
    if strategy == "parallel_vote" and scores.difficulty < vote_above:
        # The mean's own cut: one sample, since room is spent by models that think on
        # (tune seeds 30-69, SIMULATION: two samples' room here took target 1 from 22/26
        # literature worlds to 20/26).
        return Plan("direct", sample, depth_tokens=sample, reason=(
            f"the mean budget buys votes only above difficulty {vote_above:.2f}: one answer"))
    if strategy == "parallel_vote":
        width = vote_width_for(scores.difficulty, scale, vote_width)
        return fit_vote(Plan("parallel_vote", width * sample, width=width, depth_tokens=sample),
                        answer_tokens)
    if strategy == "search":
        return Plan("search", cap + QUERY_TOKENS * (search_calls - 1), depth_tokens=cap,
                    search_calls=search_calls)
    raise ValueError(f"unknown strategy {strategy!r}")


def direct_room(answer_tokens: int, scores: Scores) -> int:
    """Tokens a direct answer gets: one sample (``sample_tokens``) for an easy prompt,
    ``DIRECT_ROOM`` samples for any other."""
    sample = sample_tokens(answer_tokens)
    return sample if scores.difficulty < EASY_BELOW else DIRECT_ROOM * sample


def vote_width_for(difficulty: float, scale: float, vote_width: int) -> int:
    """Samples of a vote: ``2 + scale x difficulty``, within [``MIN_VOTE_WIDTH``,
    ``vote_width``]."""
    return int(max(min(MIN_VOTE_WIDTH, vote_width), min(vote_width,
                                                         2 + scale * difficulty)))


def fit_vote(plan: Plan, answer_tokens: int, budget_tokens: int | None = None,
             min_width: int | None = None) -> Plan:
    """A vote whose every sample can finish: samples of at least ``sample_tokens(answer)``
    tokens, as many as ``budget_tokens`` (default: the plan's budget) buys; with fewer than
    ``MIN_VOTE_WIDTH`` (three: two samples that disagree have no majority, so a vote of two
    answers like one sample at twice the tokens), one chain of the whole budget, saying so in
    ``reason``. A plan that asks for a narrower vote itself keeps its width, unless
    ``min_width`` says otherwise. Other plans pass unchanged.

    Args:
        plan: any plan.
        answer_tokens: tokens a complete answer takes (p90) for this kind and model.
        budget_tokens: the total to fit in (None: ``plan.budget_tokens``, else the plan's
            width x depth).
        min_width: the narrowest vote that may run (None: ``MIN_VOTE_WIDTH``, or the plan's
            own width when narrower). The gateway gives ``min(MIN_VOTE_WIDTH, vote_width)``:
            a vote narrowed by a budget cut (``fit_to_budget``) is not one the operator asked
            for, and runs as one chain too.
    """
    if plan.strategy != "parallel_vote":
        return plan
    needed = sample_tokens(answer_tokens)
    total = budget_tokens or plan.budget_tokens or plan.width * max(plan.depth_tokens or 0,
                                                                      needed)
    depth = plan.depth_tokens or total // plan.width  # unset: the budget shared evenly
    floor = min(MIN_VOTE_WIDTH, plan.width) if min_width is None else min_width
    if depth >= needed and plan.width * depth <= total:
        if plan.width >= floor:
            return plan if plan.budget_tokens == total else dataclasses.replace(
                plan, budget_tokens=total)
        # Samples long enough, but the budget cut the vote below a majority.
        bought = "one sample" if plan.width < 2 else (
            f"{plan.width} samples of {depth} tokens, and a vote needs {MIN_VOTE_WIDTH} "
            "for a majority")
        why = f"{total} tokens buy {bought}: ran one chain"
    else:
        depth = max(depth, needed)
        width = min(plan.width, total // depth)
        if width >= floor:
            return dataclasses.replace(plan, budget_tokens=total, width=width,
                                       depth_tokens=depth)
        bought = "one" if width < 2 else (
            f"{width}, and a vote needs {MIN_VOTE_WIDTH} for a majority")
        why = (f"a vote needs samples of {depth} tokens to finish (answers take about "
               f"{answer_tokens}); {total} tokens buy {bought}: ran one chain")
    return dataclasses.replace(plan, strategy="sequential", budget_tokens=total, width=1,
                               depth_tokens=total, search_calls=0,
                               reason=f"{plan.reason}; {why}" if plan.reason else why)


def fit_cap(plan: Plan, cap: int | None, answer_tokens: int) -> Plan:
    """``plan`` within a request's cap of ``cap`` completion tokens (None: unchanged): a vote
    keeps the samples that fit whole (``fit_vote``), a chain or direct answer gets at most the
    cap, a search keeps the retrieval calls that leave its answer one sample's room
    (``sample_tokens(answer_tokens)``) and gives its answer the rest.

    A search's answer is a chain whose cap is room, not spend (``size_plan``), while its
    retrieval calls are what the strategy is for: so the room gives way first. (It used to
    be the calls: a kind whose answers grew long got a room at the cap and one call, and lost
    accuracy to feedback; tune seeds 100-199 of bench/policy_sim.py, SIMULATION.)"""
    if cap is None or (plan.budget_tokens is not None and plan.budget_tokens <= cap):
        return plan
    if plan.strategy == "parallel_vote":
        return fit_vote(plan, answer_tokens, cap)
    if plan.strategy == "search":
        room = min(plan.depth_tokens or cap, cap)
        needed = min(room, sample_tokens(answer_tokens))
        calls = max(1, min(plan.search_calls, 1 + (cap - needed) // QUERY_TOKENS))
        depth = min(room, cap - QUERY_TOKENS * (calls - 1))
        return dataclasses.replace(plan, budget_tokens=cap, depth_tokens=depth,
                                   search_calls=calls)
    return dataclasses.replace(plan, budget_tokens=cap, depth_tokens=cap)


def solve_scale(mean_spend: Callable[[float], float], target_tokens: float,
                iterations: int = 40) -> float:
    """The largest ``scale`` in [0, ``MAX_SCALE``] whose mean budget is at most
    ``target_tokens``, by bisection (the mean budget is non-decreasing in ``scale``).
    Returns 0 when even ``scale`` 0 spends more than the target."""
    if mean_spend(MAX_SCALE) <= target_tokens:
        return MAX_SCALE
    if mean_spend(0.0) > target_tokens:
        return 0.0
    lo, hi = 0.0, MAX_SCALE
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_spend(mid) <= target_tokens:
            lo = mid
        else:
            hi = mid
    return lo


def solve_vote_above(mean_spend: Callable[[float, float], float], target_tokens: float,
                     iterations: int = 30) -> float:
    """The least difficulty ``vote_above`` in [0, 1] below which votes become one direct
    answer, so that the mean budget at ``scale`` 0 (the narrowest votes) meets
    ``target_tokens``: when even three-sample votes for every independent prompt cost more than
    the operator's mean, the easiest prompts give up their votes first (compute-optimal: the
    tokens go where the direct answer fails most, Snell et al. 2024). 0 when the target is met
    without it, and also when even no votes at all would meet it: then the votes are not what
    overspends (long chains are), and cutting them all would only lose what they buy.
    ``mean_spend(scale, vote_above)`` is non-increasing in ``vote_above``."""
    if mean_spend(0.0, 0.0) <= target_tokens or mean_spend(0.0, 1.0) > target_tokens:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_spend(0.0, mid) <= target_tokens:
            hi = mid
        else:
            lo = mid
    return hi


def mean_spend(rows: Sequence[tuple[Scores, str, int]], scale: float, vote_width: int = 8,
                search_calls: int = 3, vote_above: float = 0.0) -> float:
    """The mean expected spend over ``rows`` of (scores, strategy, answer tokens) at ``scale``:
    a chain, a search or a direct answer spends about one answer (a chain stops when done),
    a vote one answer per sample (before early stopping saves some). Vectorised, since
    ``solve_scale`` evaluates it some forty times per solve."""
    if not rows:
        return 0.0
    difficulty = np.array([r[0].difficulty for r in rows])
    answer = np.array([r[2] for r in rows], float)
    strategy = np.array([r[1] for r in rows])
    low = min(MIN_VOTE_WIDTH, vote_width)
    width = np.floor(np.clip(2 + scale * difficulty, low, vote_width))
    votes = (strategy == "parallel_vote") & (difficulty >= vote_above)
    spend = np.select([votes, strategy == "search"],
                      [width * answer, answer + QUERY_TOKENS], answer)
    return float(spend.mean())
