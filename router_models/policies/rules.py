"""``rules``: thresholds on the scores, and optionally the prompt's form, read from YAML
(``rules.yaml`` here by default, or ``rules:<path>``); the first matching rule picks the
plan."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from router_models.features import FORMS, Features
from router_models.plan import Plan, Scores
from router_models.policies.base import (
    Candidate,
    Decision,
    Policy,
    PolicyError,
    check_strategy,
    fit_to_budget,
)
from router_models.policies.fixed import fixed_plan

# ``steps`` is the count of dependent steps the prompt states (``Scores.steps``; 0 when
# unknown), the three others are probabilities.
SCORE_NAMES = ("difficulty", "sequential", "search", "steps")
PLAN_FIELDS = ("strategy", "budget_tokens", "width", "depth_tokens", "search_calls")


@dataclass(frozen=True)
class Rule:
    """``bounds``: score name -> (min inclusive or None, max exclusive or None)."""

    name: str
    bounds: dict[str, tuple[float | None, float | None]]
    plan: Plan
    forms: frozenset[str] | None = None  # the prompt forms it applies to (None: any)
    # Whether the operator's collection must cover the prompt (``Scores.covered``; unknown
    # counts as not covered), or None: either.
    covered: bool | None = None

    def matches(self, scores: Scores) -> bool:
        if self.forms is not None and scores.form not in self.forms:
            return False
        if self.covered is not None and bool(scores.covered) != self.covered:
            return False
        values = scores.as_dict()
        values.setdefault("steps", 0)
        for score, (lo, hi) in self.bounds.items():
            if (lo is not None and values[score] < lo) or (hi is not None
                                                           and values[score] >= hi):
                return False
        return True


def parse_rules(raw: Any, source: str = "rules") -> tuple[list[Rule], Rule]:
    """Rules and the default rule from the parsed YAML mapping.

    Raises:
        PolicyError: naming the offending entry, for any malformed part.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("rules", []), list) \
            or "default" not in raw:
        raise PolicyError(f"{source}: expected a mapping with `rules` (a list) and `default`")
    rules = [_rule(entry, f"{source}: rules.{i}") for i, entry in enumerate(raw["rules"])]
    default = _rule(raw["default"], f"{source}: default")
    return rules, default


def _rule(entry: Any, where: str) -> Rule:
    if not isinstance(entry, dict) or not isinstance(entry.get("plan"), dict):
        raise PolicyError(f"{where}: expected a mapping with `plan`")
    bounds: dict[str, tuple[float | None, float | None]] = {}
    when = entry.get("when", {}) or {}
    if not isinstance(when, dict):
        raise PolicyError(f"{where}.when: expected a mapping of score -> bounds")
    forms: frozenset[str] | None = None
    covered: bool | None = None
    for score, bound in when.items():
        if score == "covered":
            if not isinstance(bound, bool):
                raise PolicyError(f"{where}.when.covered: expected true or false")
            covered = bound
            continue
        if score == "form":
            names = [bound] if isinstance(bound, str) else bound
            if not isinstance(names, list) or not all(n in FORMS for n in names):
                raise PolicyError(f"{where}.when.form: expected one of {FORMS} or a list")
            forms = frozenset(names)
            continue
        if score not in SCORE_NAMES or not isinstance(bound, dict) \
                or set(bound) - {"min", "max"}:
            raise PolicyError(f"{where}.when.{score}: expected one of {SCORE_NAMES} with "
                              "{min: x} and/or {max: x}")
        try:
            lo = None if bound.get("min") is None else float(bound["min"])
            hi = None if bound.get("max") is None else float(bound["max"])
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{where}.when.{score}: {exc}") from exc
        bounds[score] = (lo, hi)
    fields = entry["plan"]
    unknown = set(fields) - set(PLAN_FIELDS)
    if unknown or "strategy" not in fields or "budget_tokens" not in fields:
        raise PolicyError(f"{where}.plan: needs strategy and budget_tokens; allowed fields "
                          f"{PLAN_FIELDS}" + (f"; unknown {sorted(unknown)}" if unknown else ""))
    try:
        base = fixed_plan(str(fields["strategy"]), int(fields["budget_tokens"]))
        plan = dataclasses.replace(base, **{k: v for k, v in fields.items()
                                             if k not in ("strategy", "budget_tokens")})
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{where}.plan: {exc}") from exc
    return Rule(str(entry.get("name", where)), bounds, plan, forms, covered)


class RulesPolicy(Policy):
    """Score thresholds from YAML; the default file is ``router_models/policies/rules.yaml``."""

    name = "rules"

    def __init__(self, rules: list[Rule], default: Rule, name: str = "rules"):
        self.rules, self.default, self.name = rules, default, name

    @classmethod
    def from_yaml(cls, path: Path | None = None) -> RulesPolicy:
        """Read rules from ``path`` (None: the shipped file).

        Raises:
            PolicyError: unreadable or malformed file.
        """
        try:
            if path is None:
                text = (resources.files("router_models.policies") / "rules.yaml").read_text()
            else:
                text = Path(path).read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read rules {path or 'rules.yaml'}: {exc}") from exc
        rules, default = parse_rules(raw, str(path or "rules.yaml"))
        return cls(rules, default, "rules" if path is None else f"rules:{path}")

    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        check_strategy(strategy)
        candidates = [r for r in self.rules if r.matches(scores)] + [self.default]
        if strategy is not None:
            forced = [r for r in candidates if r.plan.strategy == strategy]
            rule = forced[0] if forced else None
        else:
            rule = candidates[0]
        if rule is None:
            plan = fixed_plan(str(strategy), candidates[0].plan.budget_tokens or 256)
            reason = f"strategy {strategy} forced by the request"
        else:
            plan, reason = rule.plan, f"rule: {rule.name}"
        plan = fit_to_budget(plan, budget_tokens)
        plan = dataclasses.replace(plan, policy=self.name, probability=1.0, reason=reason)
        return Decision(plan, scores, (Candidate(plan, 1.0),))
