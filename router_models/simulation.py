"""SIMULATION: a world model of how a reasoner's accuracy depends on the task and the tokens
spent. Pure (no HTTP); ``ttc-router sim`` serves it over the OpenAI API and routing policies
can be evaluated against it offline.

Every figure this module produces is simulated. Its per-family behaviour is set in YAML
(``router_models/data/sim_world.yaml`` by default) and follows three published shapes:

- *independent* families (knowledge, multiple choice): one chain's accuracy rises with its
  length, peaks, then falls as it keeps thinking (overthinking; Ghosal et al. 2025, "Does
  Thinking More Always Help? Understanding the Impact of Test-Time Scaling"), while a majority
  vote over samples amplifies the plurality answer (self-consistency; Wang et al. 2023);
- *compositional* families (graph connectivity, k-step arithmetic, word problems): a chain
  shorter than the steps the answer needs can only guess, so one long chain beats any vote of
  short ones (Mirtaheri et al. 2025, "Let Me Think! A Long Chain-of-Thought Can Be Worth
  Exponentially Many Short Ones");
- *search* families (multi-hop questions): right mostly when retrieved facts are present.

One sample's answer is a label: ``CORRECT``, or ``wrong_label(j)`` for the family's j-th most
common wrong answer (j from 1), or ``NO_ANSWER`` when the chain was cut before it stated one.
The simulator turns labels into concrete answer text for a given question.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from router_models.plan import Plan

CORRECT = "correct"
NO_ANSWER = ""
KINDS = ("independent", "compositional", "search")
# Monte Carlo size and seed of plan_accuracy for votes: standard error <= 0.0036 at 20,000.
VOTE_TRIALS = 20_000
VOTE_SEED = 0


def wrong_label(j: int) -> str:
    """The label of the family's j-th most common wrong answer (j >= 1)."""
    return f"wrong:{j}"


class WorldError(ValueError):
    """A world file that is missing, unreadable or inconsistent, or an unknown family."""


@dataclass(frozen=True)
class Family:
    """One task family's simulated behaviour (see the shipped YAML for each field's meaning).

    Token fields are completion tokens; ``*_accuracy`` pairs are (at difficulty 0, at 1).
    """

    name: str
    kind: str
    choices: int
    wrong_zipf: float = 1.0
    peak_accuracy: tuple[float, float] = (0.8, 0.4)
    rise_tokens: float = 48.0
    peak_tokens: int = 192
    fall_tokens: float = 800.0
    max_chain_tokens: int = 4096
    steps: tuple[int, int] = (1, 1)
    tokens_per_step: int = 32
    step_accuracy: float = 1.0
    closed_book_accuracy: tuple[float, float] = (0.3, 0.1)
    open_book_accuracy: tuple[float, float] = (0.9, 0.7)

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess over ``choices`` options."""
        return 1.0 / self.choices


def _lerp(pair: tuple[float, float], difficulty: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * difficulty


def _pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, int | float):
        return (float(value), float(value))
    if isinstance(value, list | tuple) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    raise WorldError(f"{name}: expected a number or [at difficulty 0, at difficulty 1]")


class World:
    """SIMULATION: the per-family answer distributions of a simulated reasoner.

    Build it with ``World.load(path)``. Methods take a family name (``families()``), a
    difficulty in [0, 1] (clamped) and a sample's completion-token allowance ``depth_tokens``.
    """

    def __init__(self, families: dict[str, Family], *, answer_tokens: int = 8,
                 default_max_tokens: int = 512, default_family: str | None = None):
        if not families:
            raise WorldError("a world needs at least one family")
        self._families = families
        self.answer_tokens = answer_tokens
        self.default_max_tokens = default_max_tokens
        self.default_family = default_family or next(iter(families))
        if self.default_family not in families:
            raise WorldError(f"default_family {self.default_family!r} is not a family")

    @classmethod
    def load(cls, path: str | Path | None = None) -> World:
        """Read a world from YAML; ``None`` reads the shipped ``sim_world.yaml``.

        Raises:
            WorldError: the file is missing, not YAML, or a family is inconsistent.
        """
        try:
            if path is None:
                text = (resources.files("router_models") / "data" / "sim_world.yaml").read_text()
            else:
                text = Path(path).read_text()
            raw = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise WorldError(f"cannot read world {path or 'sim_world.yaml'}: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> World:
        """Build a world from the YAML's parsed mapping (same errors as ``load``)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("families"), dict):
            raise WorldError("a world needs a `families` mapping")
        families = {name: _family(name, spec) for name, spec in raw["families"].items()}
        return cls(families, answer_tokens=int(raw.get("answer_tokens", 8)),
                   default_max_tokens=int(raw.get("default_max_tokens", 512)),
                   default_family=raw.get("default_family"))

    def families(self) -> list[str]:
        """The family names, in file order."""
        return list(self._families)

    def family(self, name: str) -> Family:
        """One family's parameters. Raises ``WorldError`` for an unknown name."""
        try:
            return self._families[name]
        except KeyError:
            raise WorldError(f"unknown family {name!r}; known: {', '.join(self._families)}") \
                from None

    def needed_tokens(self, family: str, difficulty: float) -> int:
        """Completion tokens a chain needs to reach its answer on a compositional or search
        family (steps x tokens_per_step + answer_tokens); for independent families, the
        tokens past which it starts to overthink plus answer_tokens."""
        fam, d = self.family(family), _clamp(difficulty)
        if fam.kind == "independent":
            return fam.peak_tokens + self.answer_tokens
        return self.steps(family, d) * fam.tokens_per_step + self.answer_tokens

    def steps(self, family: str, difficulty: float) -> int:
        """Dependent steps an item of this difficulty needs (compositional and search)."""
        fam = self.family(family)
        return max(1, round(_lerp((float(fam.steps[0]), float(fam.steps[1])),
                                  _clamp(difficulty))))

    def tokens_used(self, family: str, difficulty: float, depth_tokens: int) -> int:
        """Completion tokens one sample spends when allowed ``depth_tokens`` (<= it)."""
        fam = self.family(family)
        if fam.kind == "independent":
            natural = fam.max_chain_tokens
        else:
            natural = self.needed_tokens(family, difficulty)
        return max(0, min(int(depth_tokens), natural))

    def answer_distribution(self, family: str, difficulty: float, depth_tokens: int,
                            searched: bool = False,
                            temperature: float = 1.0) -> dict[str, float]:
        """One sample's answer distribution: label -> probability, summing to 1.

        ``NO_ANSWER`` carries the probability that the chain is cut before its answer.
        ``temperature`` reshapes the answers (p ** (1 / T), renormalised; T = 0 is greedy:
        all mass on the most likely answer), a simulation choice, not a measured law.
        """
        fam, d = self.family(family), _clamp(difficulty)
        length = self.tokens_used(family, d, depth_tokens)
        if length < self.answer_tokens:
            return {NO_ANSWER: 1.0}
        if fam.kind != "independent" and length < self.needed_tokens(family, d):
            # Too short to reach the answer: a uniform guess over the options.
            dist = {CORRECT: fam.chance}
            dist.update({wrong_label(j): fam.chance for j in range(1, fam.choices)})
            return _temper(dist, temperature)
        p = self._reasoned_accuracy(fam, d, length, searched)
        weights = [j ** -fam.wrong_zipf for j in range(1, fam.choices)]
        total = sum(weights)
        dist = {CORRECT: p}
        dist.update({wrong_label(j): (1 - p) * w / total for j, w in enumerate(weights, 1)})
        return _temper(dist, temperature)

    def _reasoned_accuracy(self, fam: Family, d: float, length: int, searched: bool) -> float:
        if fam.kind == "independent":
            peak = _lerp(fam.peak_accuracy, d)
            rise = 1 - math.exp(-(length - self.answer_tokens) / fam.rise_tokens)
            fall = math.exp(-max(0, length - fam.peak_tokens) / fam.fall_tokens)
            return fam.chance + (peak - fam.chance) * rise * fall
        if fam.kind == "compositional":
            steps = self.steps(fam.name, d)
            return fam.chance + (1 - fam.chance) * fam.step_accuracy ** steps
        return _lerp(fam.open_book_accuracy if searched else fam.closed_book_accuracy, d)

    def sample_correct_prob(self, family: str, difficulty: float, depth_tokens: int,
                            searched: bool = False) -> float:
        """Probability that one sample of ``depth_tokens`` answers correctly (temperature 1)."""
        return self.answer_distribution(family, difficulty, depth_tokens, searched)[CORRECT]

    def draw(self, rng: random.Random, family: str, difficulty: float, depth_tokens: int,
             searched: bool = False, temperature: float = 1.0) -> tuple[str, int]:
        """One sample: (answer label, completion tokens used <= depth_tokens).

        The label is ``CORRECT``, ``wrong_label(j)`` or ``NO_ANSWER``; ``rng`` makes it
        reproducible.
        """
        dist = self.answer_distribution(family, difficulty, depth_tokens, searched,
                                        temperature)
        labels = list(dist)
        label = rng.choices(labels, weights=[dist[x] for x in labels])[0]
        return label, self.tokens_used(family, difficulty, depth_tokens)

    def plan_depth(self, plan: Plan) -> int:
        """Each sample's token allowance under ``plan``: its depth_tokens, else an even share
        of its budget, else the default cap."""
        if plan.depth_tokens is not None:
            return plan.depth_tokens
        if plan.budget_tokens is not None:
            return plan.budget_tokens // plan.width
        return self.default_max_tokens

    def plan_tokens(self, family: str, difficulty: float, plan: Plan) -> int:
        """Completion tokens ``plan`` spends on an item (width x tokens used per sample)."""
        return plan.width * self.tokens_used(family, difficulty, self.plan_depth(plan))

    def plan_accuracy(self, family: str, difficulty: float, plan: Plan) -> float:
        """Expected accuracy of ``plan``: ``width`` samples of ``plan_depth`` tokens, majority
        vote over stated answers, ties broken uniformly at random (self-consistency; Wang et
        al. 2023). Exact for one sample, else Monte Carlo with ``VOTE_TRIALS`` trials and a
        fixed seed (deterministic). ``search`` plans (or any with search_calls) count as
        searched."""
        searched = plan.strategy == "search" or plan.search_calls > 0
        dist = self.answer_distribution(family, difficulty, self.plan_depth(plan), searched)
        if plan.width == 1:
            return dist[CORRECT]
        return vote_accuracy(dist, plan.width)


def vote_accuracy(dist: dict[str, float], width: int, trials: int = VOTE_TRIALS,
                  seed: int = VOTE_SEED) -> float:
    """Probability that a majority vote over ``width`` independent samples from ``dist``
    (label -> probability) elects ``CORRECT``; ``NO_ANSWER`` samples do not vote and ties
    are broken uniformly at random. Monte Carlo (numpy) with a fixed seed."""
    wrongs = [x for x in dist if x not in (CORRECT, NO_ANSWER)]
    probs = np.array([dist.get(CORRECT, 0.0), *(dist[x] for x in wrongs),
                      dist.get(NO_ANSWER, 0.0)])
    counts = np.random.default_rng(seed).multinomial(width, probs / probs.sum(), size=trials)
    right = counts[:, 0]
    if not wrongs:
        return float(np.mean(right > 0))
    wrong = counts[:, 1:-1]
    top_wrong = wrong.max(axis=1)
    tied = (wrong == top_wrong[:, None]).sum(axis=1)
    share = np.where(right > top_wrong, 1.0,
                     np.where((right == top_wrong) & (right > 0), 1.0 / (1 + tied), 0.0))
    return float(share.mean())


def _temper(dist: dict[str, float], temperature: float) -> dict[str, float]:
    if temperature == 1.0:
        return dist
    if temperature > 0:
        powered = {x: p ** (1.0 / temperature) for x, p in dist.items()}
        total = sum(powered.values())
        if total > 0:
            return {x: p / total for x, p in powered.items()}
        # A temperature so near 0 (1e-40) that every power underflowed: greedy, as at 0.
    # Greedy: the most likely answer; answers tied for it share the mass, so a greedy
    # guess among equally likely options is right by chance, not always (the first key
    # is the right answer: picking it on a tie made every greedy guess right).
    top = max(dist.values())
    best = [x for x, p in dist.items() if p == top]
    return {x: (1.0 / len(best) if x in best else 0.0) for x in dist}


def _clamp(difficulty: float) -> float:
    return min(1.0, max(0.0, float(difficulty)))


def _family(name: str, spec: Any) -> Family:
    if not isinstance(spec, dict):
        raise WorldError(f"families.{name}: expected a mapping")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise WorldError(f"families.{name}.kind: expected one of {', '.join(KINDS)}")
    values: dict[str, Any] = {"name": name, "kind": kind}
    try:
        values["choices"] = int(spec.get("choices", 4))
        for key in ("wrong_zipf", "rise_tokens", "fall_tokens", "step_accuracy"):
            if key in spec:
                values[key] = float(spec[key])
        for key in ("peak_tokens", "max_chain_tokens", "tokens_per_step"):
            if key in spec:
                values[key] = int(spec[key])
        for key in ("peak_accuracy", "closed_book_accuracy", "open_book_accuracy"):
            if key in spec:
                values[key] = _pair(spec[key], f"families.{name}.{key}")
        if "steps" in spec:
            lo, hi = _pair(spec["steps"], f"families.{name}.steps")
            values["steps"] = (int(lo), int(hi))
    except (TypeError, ValueError) as exc:
        raise WorldError(f"families.{name}: {exc}") from exc
    family = Family(**values)
    if family.choices < 2:
        raise WorldError(f"families.{name}.choices: at least 2")
    relevant = {"independent": ("peak_accuracy",), "compositional": (),
                "search": ("closed_book_accuracy", "open_book_accuracy")}[kind]
    for key in relevant:
        if not all(family.chance <= p <= 1 for p in getattr(family, key)):
            raise WorldError(f"families.{name}.{key}: between chance (1/choices) and 1")
    if not 0 < family.step_accuracy <= 1:
        raise WorldError(f"families.{name}.step_accuracy: in (0, 1]")
    return family
