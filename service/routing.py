"""``model: "auto"`` made measurable: the classifier scores the prompt and a named policy turns
the scores into a plan; feedback teaches the learned policy online.

Which policy decides a request, first match wins:

1. the request's ``router.policy`` (or ``x-ttc-policy``): a name from ``policies`` in the
   config, or ``rules`` / ``learned``; an unknown name is a 400;
2. the operator's ``model_policies[model]`` for the backend model asked for;
3. ``default_policy`` (``learned``) for ``model: "auto"`` with ``router.strategy`` ``auto``.

Otherwise the plan comes from ``service.planning`` (a forced strategy, or a backend model passed
through as ``direct``). Turns that may be answered by tool calls, and ``n`` > 1, always run
``direct``.

The learned policies learn from ``POST /v1/feedback`` through ``service.learning.Learner``,
which reads each decision's scores and plan from the durable request log (so feedback may reach
any replica) and replaces the policies served here as the shared state moves;
``ttc-router train --from-log`` re-fits from the same log offline.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time

from router_models import load_default
from router_models.classifier import Classifier
from router_models.plan import Plan, Scores
from router_models.policies import Policy, PolicyError, parse_policy
from router_models.prompt import has_conversation
from service import metrics
from service.backends import AUTO_MODEL
from service.errors import InvalidRequest
from service.planning import choose_plan, may_call_tools
from service.protocol import RoutedRequest
from service.settings import Settings, SettingsError
from service.upstream import Backend

log = logging.getLogger(__name__)

LEARNED_STATE = "learned.json"


class Router:
    """The classifier and the named policies of one gateway.

    Args:
        settings: ``policies`` (name -> spec), ``model_policies``, ``default_policy``,
            ``data_dir`` (re-fitted artifacts and learned state under ``data_dir/models``).

    Raises:
        SettingsError: a configured policy spec is malformed, or a policy name is unknown.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models_dir = settings.data_dir / "models"
        self.classifier: Classifier
        builtins: dict[str, Policy]
        self.classifier, builtins = load_default(self.models_dir)
        self.policies: dict[str, Policy] = dict(builtins)
        for name, spec in settings.policies.items():
            try:
                policy = parse_policy(spec)
            except PolicyError as exc:
                raise SettingsError(f"invalid settings:\n  policies.{name}: {exc}") from exc
            policy.name = name
            self.policies[name] = policy
        for experiment, config in settings.experiments.items():
            for arm, arm_settings in config.arms.items():
                spec = arm_settings.policy
                if spec in self.policies:
                    continue
                try:  # an arm may name a spec directly; it is registered under that spec
                    policy = parse_policy(spec)
                except PolicyError as exc:
                    raise SettingsError(f"invalid settings:\n  experiments.{experiment}.arms."
                                        f"{arm}.policy: {exc}") from exc
                policy.name = spec
                self.policies[spec] = policy
        for field_name, names in (("default_policy", [settings.default_policy]),
                                  ("model_policies", list(settings.model_policies.values()))):
            unknown = [n for n in names if n is not None and n not in self.policies]
            if unknown:
                raise SettingsError(f"invalid settings:\n  {field_name}: unknown policy "
                                    f"{unknown[0]!r}; known: {', '.join(sorted(self.policies))}")
        # The random source of exploring policies, this process's own: the policies served
        # are copies of a shared state (service.learning), and each copy's own source would
        # restart from the same draw at every refresh, on every replica.
        self._rng = random.Random()

    def plan(self, routed: RoutedRequest, backend: Backend, upstream_model: str,
             policy: str | None = None) -> tuple[Plan, Scores | None]:
        """The plan for one request, and the classifier's scores when a policy decided.
        ``policy`` (an A/B arm's) takes the place of the request's and the configured ones.

        Raises:
            InvalidRequest: an unknown policy, no user turn to score, or ``n`` > 1 with a
                strategy other than ``direct`` (400).
        """
        policy_name = policy or self._policy_name(routed, upstream_model)
        if policy_name is None or may_call_tools(routed) or routed.n > 1:
            return choose_plan(routed, self.settings, backend, upstream_model), None
        chosen = self.policies.get(policy_name)
        if chosen is None:
            known = ", ".join(sorted(self.policies))
            raise InvalidRequest(f"unknown policy {policy_name!r}; known: {known}",
                                 param="router.policy")
        scores = self.score(routed)
        controls = routed.controls
        forced = None if controls.strategy == "auto" else controls.strategy
        try:
            decision = chosen.decide(scores, budget_tokens=controls.budget_tokens
                                     or routed.max_tokens, strategy=forced, rng=self._rng)
        except PolicyError as exc:
            raise InvalidRequest(str(exc), param="router") from exc
        plan = decision.plan
        if plan.strategy == "search" and routed.endpoint != "chat":
            plan = dataclasses.replace(plan, strategy="sequential", search_calls=0,
                                       reason="search needs chat messages: ran sequential")
        return plan, scores

    def score(self, routed: RoutedRequest) -> Scores:
        """The classifier's scores for the request's prompt, timed in
        ``ttc_classifier_duration_seconds``.

        Raises:
            InvalidRequest: a chat request with no user, assistant or tool turn.
        """
        started = time.perf_counter()
        if routed.endpoint == "chat":
            messages = routed.body["messages"]
            if not has_conversation(messages):
                raise InvalidRequest("messages hold no user turn to answer", param="messages")
            scores = self.classifier.score(messages)
        else:
            prompt = routed.body["prompt"]
            scores = self.classifier.score(prompt if isinstance(prompt, str) else str(prompt))
        metrics.CLASSIFIER_DURATION.observe(time.perf_counter() - started)
        return scores

    def export_budgets(self) -> None:
        """Set ``ttc_policy_budget_tokens`` and ``ttc_policy_feedback`` from the learning
        policies' current budget curriculum (called when Prometheus scrapes)."""
        for name, policy in self.policies.items():
            budgets = getattr(policy, "budgets", None)
            if budgets is None:
                continue
            for kind, row in budgets().items():
                if row["mean_expected_tokens"] == row["mean_expected_tokens"]:  # not NaN
                    metrics.POLICY_BUDGET.labels(name, kind).set(row["mean_expected_tokens"])
                metrics.POLICY_FEEDBACK.labels(name, kind).set(row["feedback"])

    def _policy_name(self, routed: RoutedRequest, upstream_model: str) -> str | None:
        controls = routed.controls
        if controls.policy is not None:
            return controls.policy
        configured = self.settings.model_policies.get(upstream_model)
        if configured is not None:
            return configured
        if routed.model == AUTO_MODEL and controls.strategy == "auto":
            return self.settings.default_policy
        return None
