"""Routing policies behind one interface (``Policy.decide``), selectable by spec.

Specs (``parse_policy``):

- ``fixed:<strategy>@<budget_tokens>``: the same plan always (``FixedPolicy``);
- ``random:<strategy>@<tokens>,...``: a uniformly random choice among fixed plans, the
  logging policy for off-policy evaluation (``RandomPolicy``);
- ``rules`` or ``rules:<path.yaml>``: thresholds on the scores (``RulesPolicy``);
- ``learned`` or ``learned:<state.json>``: the literature's prior per kind of prompt, sized to
  a mean budget, with bounded exploration and conservative learning (``LearnedPolicy``); plain
  ``learned`` starts from the shipped state in ``router_models/artifacts/learned.json`` when it
  exists, else from the prior.

``POLICIES`` maps each spec's name to its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_models.policies.base import Candidate, Decision, Policy, PolicyError, fit_to_budget
from router_models.policies.fixed import FixedPolicy, RandomPolicy, fixed_plan
from router_models.policies.learned import LearnedPolicy
from router_models.policies.prior import KIND_NAMES, PRIOR_STRATEGY, kind_of
from router_models.policies.rules import RulesPolicy

POLICIES: dict[str, type[Policy]] = {
    "fixed": FixedPolicy, "random": RandomPolicy, "rules": RulesPolicy, "learned": LearnedPolicy}
SHIPPED_LEARNED_STATE = Path(__file__).resolve().parents[1] / "artifacts" / "learned.json"


def parse_policy(spec: str, **learned_options: Any) -> Policy:
    """The policy a spec names.

    Args:
        spec: ``fixed:<strategy>@<tokens>``, ``rules[:<path>]`` or ``learned[:<path>]``.
        learned_options: for ``learned``: ``target_tokens``, ``exploration`` and the other
            ``LearnedPolicy`` settings, overriding the stored state's.

    Raises:
        PolicyError: an unknown name or a malformed spec or file.
    """
    name, _, argument = spec.strip().partition(":")
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {spec!r}: expected fixed:<strategy>@<tokens>, "
                          "random:<strategy>@<tokens>,..., rules or learned")
    if name == "fixed":
        return FixedPolicy.from_spec(spec.strip())
    if name == "random":
        return RandomPolicy.from_spec(spec.strip())
    if name == "rules":
        return RulesPolicy.from_yaml(Path(argument) if argument else None)
    path = Path(argument) if argument else SHIPPED_LEARNED_STATE
    if argument or path.exists():
        policy = LearnedPolicy.load(path, **learned_options)
    else:
        policy = LearnedPolicy(**learned_options)
    if argument:
        policy.name = f"learned:{argument}"
    return policy


__all__ = ["KIND_NAMES", "POLICIES", "PRIOR_STRATEGY", "Candidate", "Decision", "FixedPolicy",
           "LearnedPolicy", "Policy", "PolicyError", "RandomPolicy", "RulesPolicy", "fit_to_budget",
           "fixed_plan", "kind_of", "parse_policy"]
