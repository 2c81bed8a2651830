"""``model: "auto"`` made measurable: the classifier scores the prompt and a named policy turns
the scores into a plan; feedback teaches the learned policy online.

Which policy decides a request, first match wins:

1. the request's ``router.policy`` (or ``x-ttc-policy``): a name from ``policies`` in the
   config, or ``rules`` / ``learned``; an unknown name is a 400;
2. the operator's ``model_policies[model]`` for the backend model asked for;
3. ``default_policy`` (``learned``) for ``model: "auto"`` with ``router.strategy`` ``auto``.

Otherwise the plan comes from ``service.planning`` (a forced strategy, or a backend model passed
through as ``direct``). Turns that may be answered by tool calls, ``n`` > 1, and, under a
policy, open-ended generation (``router_models.generation``: a poem, a translation, an
explanation; no answer a vote could count) always run ``direct``; a vote the client did not
name runs one chain at temperature 0 (``greedy_vote_as_chain``), and the one chain a policy
plans runs at ``chain_temperature`` (0: greedy) when the client set no temperature
(``greedy_chain``).

With the local search backend, a prompt's ``search`` score is read against the index before a
policy sees it (``search_evidence``): 0 with an empty index, so ``auto`` never plans search
where nothing can be found; with documents, the share of the question that the top hits cover
(``service.coverage``), so it searches where the collection can answer.

Every vote, whoever planned it, is fitted to the answer lengths observed for its kind of prompt
and backend model (``router_models.answer_lengths``, fed from each request's usage by
``observe_usage``): its samples are long enough to finish, and a budget that buys fewer than
three complete samples (no majority) runs one chain, saying so in ``router.reason``.

The learned policies learn from ``POST /v1/feedback`` through ``service.learning.Learner``,
which reads each decision's scores and plan from the durable request log (so feedback may reach
any replica) and applies it to the policies served here in the log's order;
``ttc-router train --from-log`` re-fits from the same log offline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from router_models import load_default
from router_models.answer_lengths import AnswerLengths, observations
from router_models.classifier import Classifier
from router_models.experiments.replay import plan_key
from router_models.generation import conversation_generation, open_generation
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies import KIND_NAMES, LearnedPolicy, Policy, PolicyError, parse_policy
from router_models.policies.learned import plan_ceiling
from router_models.policies.prior import (
    MIN_VOTE_WIDTH,
    fit_cap,
    fit_vote,
    kind_of,
    read_search,
)
from router_models.prompt import has_conversation, prompt_text
from service import metrics, tracing
from service.backends import AUTO_MODEL
from service.coverage import coverage_shares
from service.errors import InvalidRequest
from service.planning import choose_plan, echoes, may_call_tools, prompt_list, without_user_turn
from service.protocol import RoutedRequest
from service.search.base import SearchError, question_query
from service.search.local import LocalIndex, index_path
from service.settings import Settings, SettingsError
from service.strategies.base import client_chose_sampling
from service.upstream import Backend

log = logging.getLogger(__name__)

LEARNED_STATE = "learned.json"
SEARCH_CHECK_S = 2.0  # how stale the "is there anything to search" answer may be
COVERAGE_HITS = 3  # top hits whose words count as the collection's cover of a question


def greedy_vote_as_chain(plan: Plan, body: dict[str, Any]) -> Plan:
    """``plan``, or one chain of its budget when it is a vote and the request decodes greedily
    (``temperature`` 0): self-consistency needs sampled reasoning paths (Wang et al. 2023,
    arXiv 2203.11171), and greedy samples are all one answer, so such a vote pays two or three
    times for it. Only for votes the client did not ask for (the caller checks): a client that
    names ``parallel_vote`` with temperature 0 gets what it named."""
    temperature = body.get("temperature")
    if plan.strategy != "parallel_vote" or isinstance(temperature, bool) or not isinstance(
            temperature, int | float) or temperature > 0:
        return plan
    why = "temperature 0 makes every sample the same answer: ran one chain"
    return dataclasses.replace(plan, strategy="sequential", width=1,
                               depth_tokens=plan.budget_tokens, search_calls=0,
                               reason=f"{plan.reason}; {why}" if plan.reason else why)


CHAINS = ("direct", "sequential", "search")  # the strategies that run one chain


def greedy_chain(plan: Plan, body: dict[str, Any], temperature: float | None) -> Plan:
    """``plan`` with ``temperature`` (``chain_temperature``) when it runs one chain and the
    client chose no sampling (neither ``temperature`` nor ``top_p``); else ``plan``.

    One chain's answer is what the client gets, and decoding it greedily is the more accurate
    way for it on the outcome bank: the embedded model's greedy chain is right on 33.3% of
    498 items, a chain sampled at temperature 0.7 on 28.1%, at 227 and 232 mean tokens
    (+5.2 points, paired 95% interval [+0.6, +9.8], McNemar p = 0.036; ahead on 5 of 8
    suites, behind on MMLU and StrategyQA by 3 and 1.5; 543-run bank, 7 Dec 2026;
    ``python -m bench.bank_findings``, section e). Votes keep sampling all but their first
    sample (self-consistency needs different paths, Wang et al. 2023; the first is greedy,
    ``parallel_vote``'s "greedy first"). A chat UI's "regenerate"
    then repeats the answer unless it sends a temperature, as with any greedy backend."""
    if temperature is None or plan.strategy not in CHAINS or client_chose_sampling(body):
        return plan
    why = f"one chain at temperature {temperature:g} (chain_temperature)"
    return dataclasses.replace(plan, temperature=float(temperature),
                               reason=f"{plan.reason}; {why}" if plan.reason else why)


def routed_text(routed: RoutedRequest) -> str:
    """The text a request asks about: its last user turn, or a completions prompt (a prompt
    list reads as its ``str``)."""
    if routed.endpoint == "chat":
        return prompt_text(routed.body["messages"])
    return str(routed.body.get("prompt", ""))


BUILTIN_POLICIES = ("rules", "learned")  # the names ``router_models.load_default`` serves


def configured_policies(settings: Settings) -> dict[str, Policy]:
    """The policies the configuration adds to the built-in ones: each of ``policies`` under
    its name, and each experiment arm's spec that names no policy, under that spec. Cheap
    (no classifier), so ``ttc-router serve`` checks them before the server starts.

    Raises:
        SettingsError: a malformed spec, or a ``default_policy`` / ``model_policies`` name
            that no policy has; the message names the setting.
    """
    policies: dict[str, Policy] = {}
    for name, spec in settings.policies.items():
        try:
            policy = parse_policy(spec)
        except PolicyError as exc:
            raise SettingsError(f"invalid settings:\n  policies.{name}: {exc}") from exc
        policy.name = name
        policies[name] = policy
    for experiment, config in settings.experiments.items():
        for arm, arm_settings in config.arms.items():
            spec = arm_settings.policy
            if spec in policies or spec in BUILTIN_POLICIES:
                continue
            try:  # an arm may name a spec directly; it is registered under that spec
                policy = parse_policy(spec)
            except PolicyError as exc:
                raise SettingsError(f"invalid settings:\n  experiments.{experiment}.arms."
                                    f"{arm}.policy: {exc}") from exc
            policy.name = spec
            policies[spec] = policy
    known = set(policies) | set(BUILTIN_POLICIES)
    for field_name, names in (("default_policy", [settings.default_policy]),
                              ("model_policies", list(settings.model_policies.values()))):
        unknown = [n for n in names if n is not None and n not in known]
        if unknown:
            raise SettingsError(f"invalid settings:\n  {field_name}: unknown policy "
                                f"{unknown[0]!r}; known: {', '.join(sorted(known))}")
    return policies


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
        self._learned_options: dict[str, Any] = {
            "target_tokens": settings.learned_target_tokens,
            "exploration": settings.learned_exploration, "vote_width": settings.vote_width,
            "default_answer_tokens": settings.default_answer_tokens,
            "vote_gain_floor": settings.learned_vote_gain_floor}
        self.classifier, builtins = load_default(self.models_dir, **self._learned_options)
        learned = builtins.get("learned")
        if isinstance(learned, LearnedPolicy):
            learned.lengths_from_feedback = False  # observe_usage reports every request's
        # Tokens a complete answer takes, per (backend model, kind of prompt).
        self.answer_lengths = AnswerLengths(settings.default_answer_tokens)
        self.policies: dict[str, Policy] = {**builtins, **configured_policies(settings)}
        self._search_available = False
        self._search_checked_at = -SEARCH_CHECK_S
        self._index: LocalIndex | None = None

    def plan(self, routed: RoutedRequest, backend: Backend, upstream_model: str,
             policy: str | None = None) -> tuple[Plan, Scores | None]:
        """The plan for one request, and the classifier's scores when a policy decided.
        ``policy`` (an A/B arm's) takes the place of the request's and the configured ones.

        Raises:
            InvalidRequest: an unknown policy, no user turn to score, or ``n`` > 1 or a
                completions prompt list with a strategy other than ``direct`` (400).
        """
        policy_name = policy or self._policy_name(routed, upstream_model)
        if (policy_name is None or may_call_tools(routed) or routed.n > 1
                or prompt_list(routed) or echoes(routed) or without_user_turn(routed)):
            plan = choose_plan(routed, self.settings, backend, upstream_model)
            if plan.strategy != "parallel_vote":
                return plan, None
            # Read against the collection as a policy's scores are, so the prompt is the same
            # kind (and shares its answer lengths) whichever path planned it.
            scores = self.search_evidence(routed, self.score(routed))
            plan = self._fit_vote(plan, scores, upstream_model)
            if routed.controls.strategy == "auto":  # the configured default, not the client
                plan = greedy_vote_as_chain(plan, routed.body)
            return plan, scores
        chosen = self.policies.get(policy_name)
        if chosen is None:
            # Not the configured names: they are the operator's (the experiments' arm specs
            # among them), not every caller's.
            raise InvalidRequest(f"unknown policy {policy_name!r}", param="router.policy")
        if routed.controls.strategy == "auto" and (
                conversation_generation(routed.body["messages"]) if routed.endpoint == "chat"
                else open_generation(routed_text(routed))):
            # Not scored for the policies either: feedback on a poem or a translation says
            # nothing about how a kind of question should be answered.
            return Plan("direct", budget_tokens=self.generation_budget(routed), reason=(
                "open-ended generation (write, translate, explain, ...): no answer a vote "
                "could count, answered directly")), None
        scores = self.search_evidence(routed, self.score(routed))
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
        answer = self.answer_tokens(scores, upstream_model)
        # The operator's cap holds for what a policy plans too: a plan sized from long answers
        # is fitted under it, never refused (the client asked for no such budget).
        plan = fit_cap(fit_vote(decision.plan, answer, min_width=self._min_vote_width()),
                       self.settings.max_budget_tokens, answer)
        if plan.strategy == "search" and routed.endpoint != "chat":
            plan = dataclasses.replace(plan, strategy="sequential", search_calls=0,
                                       reason="search needs chat messages: ran sequential")
        if forced is None:  # a strategy the client named runs as it asked
            # (an upstream that takes only its default temperature gets none of ours)
            plan = greedy_chain(greedy_vote_as_chain(plan, routed.body), routed.body,
                                self.settings.chain_temperature if backend.temperature
                                else None)
        # Logged with what ran: replay compares policies by what they chose, whatever the
        # answer lengths, caps and a key's budget (``fit_budget``, later) made of it.
        plan = dataclasses.replace(plan, decided=plan_key(decision.plan))
        return plan, scores

    def generation_budget(self, routed: RoutedRequest) -> int:
        """The budget of open-ended generation (tokens): the client's ``budget_tokens`` or
        ``max_tokens``, else the ceiling of any plan a policy makes on its own
        (``plan_ceiling`` of ``learned_target_tokens``: 4,096 by default): room for a long text,
        and a bound on a backend that never stops."""
        controls = routed.controls
        return controls.budget_tokens or routed.max_tokens or min(
            self.settings.max_budget_tokens, plan_ceiling(self.settings.learned_target_tokens))

    def search_available(self) -> bool:
        """Whether ``search`` can find anything: a remote search service is configured, or the
        local index holds documents (``ttc-router index add``). Read at most every
        ``SEARCH_CHECK_S`` seconds, so documents added while the gateway runs count."""
        if self.settings.search_backend != "local":
            return True
        now = time.monotonic()
        if now - self._search_checked_at >= SEARCH_CHECK_S:
            self._search_checked_at = now
            try:
                self._search_available = self._local_index().exists()
            except OSError:
                self._search_available = False
        return self._search_available

    def search_evidence(self, routed: RoutedRequest, scores: Scores) -> Scores:
        """``scores`` with ``search`` read against what there is to search.

        Nothing to search in (the local backend with an empty index, or one that cannot be
        read): 0, so no policy plans or explores search. A local index with documents: the
        share of the question's content words its top hits cover, each weighed by its
        rarity in the collection (``service.coverage``, ``LocalIndex.idf``;
        ``prior.read_search``: at least ``COVERED`` makes a search prompt, less caps the score
        at ``UNCOVERED_SEARCH``). A remote search service: the classifier's score.
        """
        if self.settings.search_backend != "local":
            return scores
        if not self.search_available():
            return dataclasses.replace(scores, search=0.0) if scores.search else scores
        question = routed_text(routed)
        index = self._local_index()
        try:
            hits = index.search(question_query(question), COVERAGE_HITS)
            # Read each hit as far as the search strategy shows it to the model: words past
            # that cannot answer, and a whole book of a document would be read on the event
            # loop. Words weigh by their rarity in the collection (``LocalIndex.idf``).
            cut = self.settings.search_result_chars
            shares = coverage_shares(question, [dataclasses.replace(hit, text=hit.text[:cut])
                                                for hit in hits], index.idf)
        except SearchError as exc:
            # A damaged index, or one another version wrote, answers no search either: as
            # with an empty one, nothing can be found there.
            log.warning("coverage check of the local index failed: %s", exc)
            return dataclasses.replace(scores, search=0.0) if scores.search else scores
        return read_search(scores, shares.words, shares.names)

    def _local_index(self) -> LocalIndex:
        if self._index is None:
            self._index = LocalIndex(index_path(self.settings.data_dir))
        return self._index

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

    def fit_budget(self, plan: Plan, budget_tokens: int, scores: Scores | None,
                   upstream_model: str) -> Plan:
        """``plan`` within ``budget_tokens`` (what a key has left, when less than the budget
        the plan sized itself): a vote keeps the samples of this kind's answer length that fit
        (``fit_cap``, ``fit_vote``; one chain when fewer than three do), a chain or a direct
        answer gets the tokens, a search the retrieval calls they leave room for."""
        answer = budget_tokens if scores is None else self.answer_tokens(scores, upstream_model)
        return fit_cap(plan, budget_tokens, answer)

    def _fit_vote(self, plan: Plan, scores: Scores, upstream_model: str) -> Plan:
        if plan.strategy != "parallel_vote":
            return plan
        return fit_vote(plan, self.answer_tokens(scores, upstream_model),
                        min_width=self._min_vote_width())

    def _min_vote_width(self) -> int:
        """The narrowest vote that runs: a strict majority needs three samples, unless the
        operator set ``vote_width`` below that (then votes of that width are asked for)."""
        return min(MIN_VOTE_WIDTH, self.settings.vote_width)

    def observe_usage(self, scores: Scores | None, plan: Plan, upstream_model: str,
                      completion_tokens: int,
                      samples: Sequence[tuple[str, str | None, int | None]], *,
                      vote_first_agrees: bool | None = None) -> None:
        """Learn answer lengths from one answered request of a direct answer, a vote or a
        chain: each sample's (text, ``finish_reason``, ``max_tokens``), whose usage sums to
        ``completion_tokens`` (``router_models.answer_lengths.observations``: the tokens up to
        its first explicit answer, or all of them; cut before any answer, right-censored). A
        chain counts up to its answer too, so what a model writes after it (a chain given
        room checks its work) does not grow the kind's samples; a chain cut by its cap tells
        the kind's answers need more room. A search's answer, read with passages in its
        context, is not counted. ``vote_first_agrees``, a vote's: whether its first sample
        stated the elected answer (``LearnedPolicy.observe_vote``: what votes can buy)."""
        if (scores is None or completion_tokens <= 0 or not samples
                or plan.strategy not in ("direct", "parallel_vote", "sequential")):
            return
        found = observations(samples, completion_tokens)
        key = (upstream_model, KIND_NAMES[kind_of(scores)])
        for tokens, finished in found:
            self.answer_lengths.observe(key, tokens, finished)
        learned = self.policies.get("learned")
        if isinstance(learned, LearnedPolicy):
            learned.observe_usage(scores, found)
            if plan.strategy == "parallel_vote" and vote_first_agrees is not None:
                learned.observe_vote(scores, vote_first_agrees)

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
                metrics.POLICY_REPEATS.labels(name).set(policy.repeats)

    def restore(self, name: str, state: dict[str, Any]) -> Policy:
        """The policy ``name`` rebuilt from a ``state()`` of it (a checkpoint of the shared
        learned state), with this gateway's settings applied as at start-up; it does not
        replace the served one.

        Raises:
            PolicyError: a malformed state. KeyError: no policy has this name.
        """
        current = self.policies[name]
        options = self._learned_options if name == "learned" else {}
        restored: Policy = type(current).from_state(state, **options)  # type: ignore[attr-defined]
        restored.name = current.name
        if isinstance(restored, LearnedPolicy) and isinstance(current, LearnedPolicy):
            restored.lengths_from_feedback = current.lengths_from_feedback
        return restored

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
