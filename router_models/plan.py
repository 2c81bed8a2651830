"""The values that pass from deciding to executing: ``Scores`` and ``Plan``.

A ``Plan`` is a width x depth allocation inside a total token budget: ``width`` parallel
samples (a majority vote when more than one), each allowed ``depth_tokens`` completion tokens,
plus up to ``search_calls`` retrieval calls. ``direct`` is one sample with the client's own
parameters, ``parallel_vote`` many short samples, ``sequential`` one long chain; the general
k chains x L tokens lie between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# One name per strategy, used alike in the API, the registry, metrics, logs and A/B arms.
STRATEGIES = ("direct", "parallel_vote", "sequential", "search")


@dataclass(frozen=True)
class Scores:
    """A classifier's reading of one prompt; each a probability in [0, 1].

    ``difficulty``: how likely a small budget is to fail. ``sequential``: how much the prompt
    depends on accumulating intermediate results (a chain helps, a vote of short tries does
    not). ``search``: how much it needs facts the model may not have. ``form``: the
    prompt's form, one of ``router_models.features.FORMS``, or None when unknown (scores
    logged before forms existed, or built by hand). ``steps``: the dependent steps the prompt
    states (``router_models.steps.state_steps``), or None when unknown. ``covered``: whether
    the operator's document collection covers the question (``prior.read_search``: what its
    top hits hold of the question reaches ``prior.COVERED``), or None when no collection was
    read (then ``search`` is the classifier's alone).
    """

    difficulty: float
    sequential: float
    search: float
    form: str | None = None
    steps: int | None = None
    covered: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """The three scores by name, plus ``form``, ``steps`` and ``covered`` when known."""
        out: dict[str, Any] = {"difficulty": self.difficulty, "sequential": self.sequential,
                               "search": self.search}
        if self.form is not None:
            out["form"] = self.form
        if self.steps is not None:
            out["steps"] = self.steps
        if self.covered is not None:
            out["covered"] = self.covered
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Scores:
        """The inverse of ``as_dict`` (a logged ``scores`` object).

        Raises:
            KeyError: a score is missing. TypeError, ValueError: a score is not a number.
        """
        form, steps, covered = values.get("form"), values.get("steps"), values.get("covered")
        return cls(float(values["difficulty"]), float(values["sequential"]),
                   float(values["search"]), str(form) if form is not None else None,
                   int(steps) if steps is not None else None,
                   bool(covered) if covered is not None else None)


@dataclass(frozen=True)
class Plan:
    """How to spend one request's tokens.

    Args:
        strategy: one of ``STRATEGIES``.
        budget_tokens: the most completion tokens all upstream calls may spend together, or
            None for no budget (``direct`` with the client's own caps).
        width: parallel samples (k); 1 for direct and sequential.
        depth_tokens: completion tokens per sample (L), or None to share the budget evenly.
        search_calls: the most retrieval calls (the ``search`` strategy).
        policy: the name of the policy that chose the plan.
        probability: the probability with which the policy chose it (1.0 when deterministic),
            logged so that other policies can be evaluated offline (inverse propensity).
        reason: a short human-readable why.
        temperature: the sampling temperature of the plan's calls when the client set none
            (``auto``'s one chain runs greedy, ``service.routing.greedy_chain``), or None:
            the client's temperature, else the backend's default.
        decided: the plan a policy chose, as ``(strategy, budget_tokens, width,
            depth_tokens, search_calls)``, set by the gateway, which may run it fitted (to
            answer lengths, caps, a key's budget; a vote too narrow for a majority runs as
            one chain); None when no policy chose. Off-policy replay compares policies by
            what they choose: the fitting depends on the gateway's state, not the policy.
    """

    strategy: str
    budget_tokens: int | None = None
    width: int = 1
    depth_tokens: int | None = None
    search_calls: int = 0
    policy: str | None = None
    probability: float = 1.0
    reason: str = ""
    temperature: float | None = None
    decided: tuple[str, int | None, int, int | None, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.decided, list):  # read back from a logged row's JSON
            object.__setattr__(self, "decided", tuple(self.decided))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if self.width < 1:
            raise ValueError("width must be at least 1")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError("budget_tokens must be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("temperature must be at least 0")

    @property
    def shape(self) -> tuple[str, int | None, int, int | None, int]:
        """What makes two plans the same plan: ``(strategy, budget_tokens, width,
        depth_tokens, search_calls)``."""
        return (self.strategy, self.budget_tokens, self.width, self.depth_tokens,
                self.search_calls)
