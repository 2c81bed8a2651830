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

Every vote, whoever planned it, is fitted to the answer lengths observed for its kind of prompt
and backend model (``router_models.answer_lengths``, fed from each request's usage by
``observe_usage``): its samples are long enough to finish, and a budget that buys only one
complete sample runs one chain, saying so in ``router.reason``.

The learned policy learns from ``POST /v1/feedback``: each decision's scores and plan are
kept in memory (the last ``DECISION_MEMORY`` of them) until feedback names it, and the
policy's state is saved under the data directory at shutdown, so it survives restarts;
``ttc-router train --from-log`` replays the durable request log instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from pathlib import Path

from router_models import load_default
from router_models.answer_lengths import AnswerLengths
from router_models.classifier import Classifier
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies import KIND_NAMES, LearnedPolicy, Policy, PolicyError, parse_policy
from router_models.policies.prior import fit_vote, kind_of
from router_models.prompt import has_conversation
from service import metrics, tracing
from service.backends import AUTO_MODEL
from service.errors import InvalidRequest
from service.planning import choose_plan, may_call_tools
from service.protocol import RoutedRequest
from service.settings import Settings, SettingsError
from service.upstream import Backend

log = logging.getLogger(__name__)

DECISION_MEMORY = 50_000  # decisions kept for online learning (about 200 bytes each)
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
        self.classifier, builtins = load_default(
            self.models_dir, target_tokens=settings.learned_target_tokens,
            exploration=settings.learned_exploration, vote_width=settings.vote_width,
            default_answer_tokens=settings.default_answer_tokens)
        learned = builtins.get("learned")
        if isinstance(learned, LearnedPolicy):
            learned.lengths_from_feedback = False  # observe_usage reports every request's
        # Tokens a complete answer takes, per (backend model, kind of prompt).
        self.answer_lengths = AnswerLengths(settings.default_answer_tokens)
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
        self._decisions: OrderedDict[str, tuple[Scores, Plan]] = OrderedDict()

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
            plan = choose_plan(routed, self.settings, backend, upstream_model)
            if plan.strategy != "parallel_vote":
                return plan, None
            scores = self.score(routed)
            return self._fit_vote(plan, scores, upstream_model), scores
        chosen = self.policies.get(policy_name)
        if chosen is None:
            known = ", ".join(sorted(self.policies))
            raise InvalidRequest(f"unknown policy {policy_name!r}; known: {known}",
                                 param="router.policy")
        scores = self.score(routed)
        controls = routed.controls
        forced = None if controls.strategy == "auto" else controls.strategy
        try:
            with tracing.span("ttc.decide", {"ttc.policy": policy_name}) as span:
                decision = chosen.decide(scores, budget_tokens=controls.budget_tokens
                                         or routed.max_tokens, strategy=forced)
                if span is not None:
                    span.set_attributes({"ttc.strategy": decision.plan.strategy,
                                         "ttc.budget_tokens": decision.plan.budget_tokens or 0})
        except PolicyError as exc:
            raise InvalidRequest(str(exc), param="router") from exc
        plan = self._fit_vote(decision.plan, scores, upstream_model)
        if plan.strategy == "search" and routed.endpoint != "chat":
            plan = dataclasses.replace(plan, strategy="sequential", search_calls=0,
                                       reason="search needs chat messages: ran sequential")
        self._remember(routed.decision_id, scores, plan)
        return plan, scores

    def score(self, routed: RoutedRequest) -> Scores:
        """The classifier's scores for the request's prompt, timed in
        ``ttc_classifier_duration_seconds``.

        Raises:
            InvalidRequest: a chat request with no user, assistant or tool turn.
        """
        started = time.perf_counter()
        with tracing.span("ttc.classify"):
            if routed.endpoint == "chat":
                messages = routed.body["messages"]
                if not has_conversation(messages):
                    raise InvalidRequest("messages hold no user turn to answer",
                                         param="messages")
                scores = self.classifier.score(messages)
            else:
                prompt = routed.body["prompt"]
                scores = self.classifier.score(prompt if isinstance(prompt, str)
                                               else str(prompt))
        metrics.CLASSIFIER_DURATION.observe(time.perf_counter() - started)
        return scores

    def answer_tokens(self, scores: Scores, upstream_model: str) -> int:
        """Tokens a complete answer takes for this kind of prompt on this model (p90)."""
        return self.answer_lengths.estimate((upstream_model, KIND_NAMES[kind_of(scores)]))

    def _fit_vote(self, plan: Plan, scores: Scores, upstream_model: str) -> Plan:
        if plan.strategy != "parallel_vote":
            return plan
        return fit_vote(plan, self.answer_tokens(scores, upstream_model))

    def observe_usage(self, scores: Scores | None, plan: Plan, upstream_model: str,
                      completion_tokens: int, report: dict[str, object]) -> None:
        """Learn answer lengths from one answered request: its samples' completion tokens,
        each finished or cut at its ``max_tokens`` (right-censored). A vote's samples count
        as its mean tokens per sample; a chain that needed a continuation counts as cut."""
        if scores is None or completion_tokens <= 0:
            return
        samples: list[tuple[int, bool]]
        if plan.strategy == "parallel_vote":
            count = int(report.get("samples", 0) or 0)  # type: ignore[call-overload]
            cut = int(report.get("cut_samples", 0) or 0)  # type: ignore[call-overload]
            if count <= 0:
                return
            depth = int(report.get("depth_tokens", 0) or 0)  # type: ignore[call-overload]
            mean = max(1, round(completion_tokens / count))
            samples = [(mean, True)] * (count - cut) + [(depth or mean, False)] * cut
        elif plan.strategy in ("direct", "sequential") and plan.budget_tokens:
            finished = (not report.get("continued")
                        and completion_tokens < plan.budget_tokens)
            samples = [(completion_tokens, finished)]
        else:
            return
        key = (upstream_model, KIND_NAMES[kind_of(scores)])
        for tokens, finished in samples:
            self.answer_lengths.observe(key, tokens, finished)
        learned = self.policies.get("learned")
        if isinstance(learned, LearnedPolicy):
            learned.observe_usage(scores, samples)

    def learn(self, decision_id: str, score: float, spent_tokens: int | None = None) -> bool:
        """Teach the deciding policy the outcome of one decision; False when the decision is
        not in memory (made by another replica, or too long ago)."""
        remembered = self._decisions.get(decision_id)
        if remembered is None:
            return False
        scores, plan = remembered
        policy = self.policies.get(plan.policy or "")
        if policy is None:
            return False
        policy.update(scores, plan, score, spent_tokens=spent_tokens)
        return True

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
                if "strategy" in row:
                    for strategy in STRATEGIES:
                        metrics.POLICY_STRATEGY.labels(name, kind, strategy).set(
                            float(row["strategy"] == strategy))
            if isinstance(policy, LearnedPolicy):
                metrics.POLICY_TARGET_TOKENS.labels(name).set(policy.target_tokens)
                metrics.POLICY_EXPLORATION_SHARE.labels(name).set(policy.exploration)
                metrics.POLICY_EXPLORED_RATIO.labels(name).set(policy.exploration_share())

    def save(self) -> None:
        """Write the learned policy's state under ``data_dir/models`` (called at shutdown)."""
        learned = self.policies.get("learned")
        save = getattr(learned, "save", None)
        if save is None:
            return
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            save(Path(self.models_dir / LEARNED_STATE))
        except OSError as exc:
            log.warning("could not save the learned policy's state: %s", exc)

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

    def _remember(self, decision_id: str, scores: Scores, plan: Plan) -> None:
        self._decisions[decision_id] = (scores, plan)
        if len(self._decisions) > DECISION_MEMORY:
            self._decisions.popitem(last=False)
