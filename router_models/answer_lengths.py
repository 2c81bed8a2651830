"""How many completion tokens a complete answer takes, learnt from usage per kind of prompt.

A vote is only worth its width when each sample can reach its answer: a sample cut at its
``max_tokens`` before the final answer casts no vote. The tokens an answer needs depend on the
model (a 0.5B model reasons for about 200 tokens on a word problem; a larger one may take 60)
and on the kind of prompt, so they are observed rather than assumed.

Each observation is the tokens one sample took to state its answer, and whether it stated one:
a sample that writes an explicit answer ("The answer is 42.", ``\\boxed{42}``) counts the
tokens up to it, whatever it writes after (a model that checks its work after answering would
otherwise make every later sample, and the spend, grow where accuracy does not); one that
stops without a marker counts all its tokens; one cut at its cap (``finish_reason``
``length``) before any explicit answer says only "at least this many", a right-censored
observation (``observations``). The estimate is the ``QUANTILE`` of the Kaplan-Meier
estimate of the length distribution over the last ``WINDOW`` observations (Kaplan and Meier
1958, the standard estimator under right censoring), so cut samples push the estimate up
instead of being read as short answers. Until ``MIN_OBSERVATIONS`` have been seen the prior
``DEFAULT_ANSWER_TOKENS`` holds.

When the quantile is not reached because more than one sample in ten was cut, two readings are
possible. Either the caps were too tight (the cut ones would have answered a little later), or
some samples never answer at all: a small model that loops, restates the question or drifts
writes until any cap. Survival analysis calls the second a cure model (Berkson and Gage 1952),
and it can be told from too short a follow-up only when the follow-up is long against the event
times (Maller and Zhou 1996): here, when at least one sample in ten was cut with at least
``LOOP_ROOM`` times the length of the longest answer ever observed (and at least ``LOOP_FLOOR``
tokens) and still stated nothing. Then the cut ones are read as never answering, and the
estimate is the length by which nine in ten of the *answering* samples answer
(``answered_quantile``): a vote's samples are sized for the samples that answer, and a chain's
cap (``prior.CHAIN_CAP`` times that) still leaves room. Otherwise the estimate is twice the
longest cut length (capped at ``MAX_ANSWER_TOKENS``), so the next budgets probe higher, and a
probe is what gives loops the room that shows them. A kind none of whose samples ever answered
probes only up to ``PROBE_LIMIT`` times the prior; cut there, it is read as never answering and
its samples return to the prior's size (a cure model whose cure is everyone). Once those long
cuts leave the window, it probes again: a changed model is found at the cost of one climb.
A weaker loop test (cut samples with 1.2 times the answering samples' 90th percentile) read
heavy-tailed answer lengths as loops and under-sized every sample: 6 to 10 points lost in 3
of 17 flat randomized worlds (``bench/policy_sim.py``, SIMULATION).

The shipped outcome bank cannot show loops this way: its samples were recorded with a
512-token cap, so none ever had twice the room of its longest answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence

from router_models.answers import first_answer_end

# The prior length of a complete answer, in tokens: a short chain of thought and its final
# line. Measured on the embedded 0.5B model: about 200 tokens on word problems (issue 13).
DEFAULT_ANSWER_TOKENS = 256
MAX_ANSWER_TOKENS = 4096
QUANTILE = 0.9  # a sample sized at this quantile finishes nine times in ten
WINDOW = 256  # recent observations per key: the model behind a gateway may change
MIN_OBSERVATIONS = 8
# Samples cut with this many times the longest observed answer, still without an answer, are
# read as never answering once they are at least ``1 - QUANTILE`` of the observations.
LOOP_ROOM = 2.0
# ... and with at least this many tokens: a kind that pools one-line answers (4 tokens) with
# guesses that reason for 100 would otherwise read guesses cut at 13 tokens as loops, and keep
# every vote's samples too short to answer (held-out traffic seed 24: the first 45 guess votes
# got 3 samples of 13 tokens). No sample given fewer tokens than an answer is assumed to take
# before usage says (``DEFAULT_ANSWER_TOKENS``) is judged never to answer.
LOOP_FLOOR = DEFAULT_ANSWER_TOKENS
# Probing stops here, as a multiple of the prior (``AnswerLengths.default_tokens``): a kind of
# prompt none of whose samples answered with this much room is read as never answering, and
# its samples go back to the prior's size. Without a stop, a kind that never answers doubled
# its samples at every request up to ``MAX_ANSWER_TOKENS`` and stayed there: votes of 3 x
# 4,096 tokens against a mean of 512. Eight: a 0.5B model reasons for about 200 tokens on a
# word problem, a reasoning model for one to two thousand; an operator whose model needs more
# sets the prior (``default_answer_tokens``).
PROBE_LIMIT = 8
# A sample that spent its whole cap and stated its answer past this share of its text answered
# where the cap was, not where its answer would have ended (``observations``). One over
# ``prior.HEADROOM`` (1.25; not imported, the policies import this module): samples get 1.25x
# the estimate, so an answer read later than 0.8 of a filled sample would raise the estimate,
# and the next cap with it, request after request, for a backend whose answers follow its cap.
# At 0.9, a backend that answers at 89% of its cap and checks until cut climbed to the plan
# ceiling (bench/spend_bounds.py: 3,640 tokens a request against a target of 512; 832 at 0.8);
# on the real bank the cost was 40 more tokens a request out of the box (413 -> 453, same
# accuracy; 7 Dec 2026). Counting such answers at 0.8 of the cap instead of as cut failed on
# chains, whose cap is four samples and more: 1,367 tokens a request.
FILLED_ANSWER_SHARE = 0.8


def kaplan_meier_quantile(observations: Iterable[tuple[int, bool]], quantile: float
                          ) -> int | None:
    """The smallest length L with estimated P(answer length <= L) >= ``quantile``.

    Args:
        observations: (completion tokens, finished) pairs; ``finished`` False means the sample
            was cut at that many tokens (right-censored).
        quantile: in (0, 1).

    Returns:
        The length in tokens, or None when the estimate never reaches ``quantile`` (too many
        samples were cut).
    """
    return next((length for length, share in _kaplan_meier(observations)
                 if share >= quantile - 1e-12), None)


def answered_quantile(observations: Iterable[tuple[int, bool]], quantile: float
                      ) -> int | None:
    """The ``quantile`` of answer lengths among the samples that answer: the smallest length
    L whose Kaplan-Meier P(answer length <= L) is at least ``quantile`` times its value at the
    last observed answer (a cure model's conditional quantile: the share that never answers is
    left out). None when no sample answered.

    Args:
        observations: (completion tokens, finished) pairs, as ``kaplan_meier_quantile``.
        quantile: in (0, 1).
    """
    curve = _kaplan_meier(observations)
    if not curve:
        return None
    ceiling = curve[-1][1]
    return next(length for length, share in curve if share >= quantile * ceiling - 1e-12)


def _kaplan_meier(observations: Iterable[tuple[int, bool]]) -> list[tuple[int, float]]:
    """(length, estimated P(answer length <= length)) at every length where a sample
    answered, in increasing order (Kaplan and Meier 1958)."""
    events: dict[int, list[int]] = {}
    for tokens, finished in observations:
        counts = events.setdefault(int(tokens), [0, 0])
        counts[0 if finished else 1] += 1
    at_risk = sum(ended + cut for ended, cut in events.values())
    survival = 1.0
    curve: list[tuple[int, float]] = []
    for length in sorted(events):
        ended, cut = events[length]
        if ended and at_risk:
            survival *= 1.0 - ended / at_risk
            curve.append((length, 1.0 - survival))
        at_risk -= ended + cut
    return curve


def observations(samples: Sequence[tuple[str, str | None, int | None]],
                 completion_tokens: int) -> list[tuple[int, bool]]:
    """Per sample, (tokens its answer took, stated an answer) for ``AnswerLengths.observe``.

    Args:
        samples: each sample's (text, ``finish_reason``, ``max_tokens`` or None), all from
            calls whose usage sums to ``completion_tokens``.
        completion_tokens: the samples' completion tokens together. Usage is one total per
            call, so a sample's own count is estimated: a sample cut at its cap spent the cap,
            the others share the rest in proportion to their characters.

    Returns:
        One pair per sample with text, or cut by its cap: the tokens up to its first explicit
        answer (``answers.first_answer_end``) and True; else, when it stopped on its own
        before its cap, all its tokens and True; else (cut before any explicit answer) its
        tokens and False. A sample that spent its whole cap and stated its answer only past
        ``FILLED_ANSWER_SHARE`` of its text counts as cut too: a backend that writes until the
        cap and answers there (budget forcing, a simulator) would otherwise teach that answers
        need all the room they were given, and each next sample gets ``prior.HEADROOM`` more
        (the estimate grew 1.25x a request to ``MAX_ANSWER_TOKENS``).
    """
    # A sample cut with no text at all spent its tokens where the reply does not show them (a
    # reasoning model's ``reasoning_content``): still a cut, or such models' samples would
    # never be seen to need more room.
    kept = [(text, reason, cap) for text, reason, cap in samples
            if text or (reason == "length" and cap)]
    counts = _sample_tokens(kept, completion_tokens)
    found: list[tuple[int, bool]] = []
    for (text, reason, cap), tokens in zip(kept, counts, strict=True):
        end = first_answer_end(text)
        filled = cap is not None and tokens >= cap  # spent its whole cap, whatever it says
        if end is not None and not (filled and end > FILLED_ANSWER_SHARE * len(text)):
            found.append((max(1, round(tokens * end / len(text))), True))
        else:
            found.append((tokens, reason != "length" and not filled))
    return found


def _sample_tokens(samples: Sequence[tuple[str, str | None, int | None]],
                   completion_tokens: int) -> list[int]:
    """Each sample's share of ``completion_tokens``: a sample cut (``length``) at its cap spent
    the cap and the others share the rest by their characters; when the total cannot hold
    that (a backend that stopped a sample early, at its context's end), every sample gets its
    share by characters, a cut one at most its cap."""
    chars = [max(1, len(text)) for text, _, _ in samples]
    at_cap = [cap if reason == "length" and cap else None for _, reason, cap in samples]
    rest = completion_tokens - sum(c for c in at_cap if c)
    finished_chars = sum(n for n, c in zip(chars, at_cap, strict=True) if c is None)
    if rest >= sum(c is None for c in at_cap):
        return [c if c else max(1, round(rest * n / (finished_chars or 1)))
                for n, c in zip(chars, at_cap, strict=True)]
    total_chars = sum(chars) or 1
    return [max(1, min(c or completion_tokens, round(completion_tokens * n / total_chars)))
            for n, c in zip(chars, at_cap, strict=True)]


class AnswerLengths:
    """Per key (a kind of prompt, or (model, kind)), the tokens a complete answer takes.

    Args:
        default_tokens: the estimate before ``MIN_OBSERVATIONS`` observations of a key.
        window: observations kept per key.
    """

    def __init__(self, default_tokens: int = DEFAULT_ANSWER_TOKENS, window: int = WINDOW):
        self.default_tokens = int(default_tokens)
        self.window = int(window)
        self._seen: dict[Hashable, deque[tuple[int, bool]]] = {}
        self._cache: dict[Hashable, int] = {}

    def observe(self, key: Hashable, tokens: int, finished: bool) -> None:
        """Record one sample: ``tokens`` completion tokens, ``finished`` False if it was cut."""
        if tokens <= 0:
            return
        seen = self._seen.setdefault(key, deque(maxlen=self.window))
        seen.append((int(tokens), bool(finished)))
        self._cache.pop(key, None)

    def estimate(self, key: Hashable) -> int:
        """Tokens for a sample of this key to finish nine times in ten (module docstring)."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        seen = self._seen.get(key)
        if not seen or len(seen) < MIN_OBSERVATIONS:
            value = self.default_tokens
        else:
            found = kaplan_meier_quantile(seen, QUANTILE)
            if found is None:  # more than one in ten cut: loops, or caps too tight?
                found = self._never_answering(seen) or self._probe(seen)
            value = max(1, min(MAX_ANSWER_TOKENS, found))
        self._cache[key] = value
        return value

    @staticmethod
    def _never_answering(seen: Sequence[tuple[int, bool]]) -> int | None:
        """The answering samples' quantile when the cut ones are read as never answering
        (module docstring: at least ``1 - QUANTILE`` of the observations cut with
        ``LOOP_ROOM`` times the longest answer and at least ``LOOP_FLOOR`` tokens); else
        None."""
        answers = [tokens for tokens, finished in seen if finished]
        if not answers:
            return None
        room = max(LOOP_ROOM * max(answers), LOOP_FLOOR)
        long_cuts = sum(1 for tokens, finished in seen if not finished and tokens >= room)
        if long_cuts < (1.0 - QUANTILE) * len(seen):
            return None
        return answered_quantile(seen, QUANTILE)

    def _probe(self, seen: Sequence[tuple[int, bool]]) -> int:
        """Twice the longest cut, so the next samples get the room that tells tight caps
        from loops; when no sample answered at all, at most ``PROBE_LIMIT`` times the prior,
        and the prior itself once a sample was cut there (never answering: more room buys
        nothing, module docstring)."""
        longest = max(tokens for tokens, finished in seen if not finished)
        if any(finished for _, finished in seen):
            return 2 * longest
        limit = PROBE_LIMIT * self.default_tokens
        return self.default_tokens if longest >= limit else min(limit, 2 * longest)

    def count(self, key: Hashable) -> int:
        """Observations kept for ``key``."""
        return len(self._seen.get(key, ()))

    def state(self) -> dict[str, list[list[int]]]:
        """JSON-ready observations, keyed by ``str(key)`` (keys must be strings to restore)."""
        return {str(k): [[t, int(f)] for t, f in v] for k, v in self._seen.items()}

    def restore(self, state: dict[str, list[list[int]]]) -> None:
        """Load observations written by ``state`` (string keys).

        Raises:
            ValueError, TypeError: a malformed state.
        """
        for key, rows in state.items():
            for tokens, finished in rows:
                self.observe(key, int(tokens), bool(finished))
