"""From a request's controls to a ``Plan``: which strategy, and how many tokens.

Until the policy issue lands, ``auto`` means the configured ``default_strategy`` for
``model: "auto"``, and ``direct`` for a request naming a backend model (existing clients see
no change until they opt in). The budget of a request that names none:

- ``direct``: none; the client's own ``max_tokens`` (per choice) applies;
- other strategies, when the request sets ``max_tokens`` (or ``max_completion_tokens``): that
  value, as the total of all calls: a client that capped its answer at N tokens is never
  billed more than N completion tokens, whatever the strategy;
- otherwise the model's ``model_budget_tokens``, else the upstream's ``budget_tokens``, else
  ``default_budget_tokens``, at most ``max_budget_tokens``.

A request's ``max_tokens`` also caps the reply it receives when it names a larger budget: the
strategies grant every call whose reply may be returned at most that
(``service.strategies.base.reply_cap``), while the budget bounds all calls together.

A forced ``parallel_vote`` whose budget buys fewer than three samples of
``vote_min_depth_tokens`` runs one chain and says so in its reason (``fit_vote`` then checks
the samples against the answer lengths observed).

A ``search`` plan may make up to ``search_max_calls`` retrieval calls; search on the
completions endpoint (a bare prompt, no messages to hold results) runs ``sequential``.
"""

from __future__ import annotations

from router_models.plan import Plan
from router_models.policies.prior import MIN_VOTE_WIDTH
from router_models.prompt import has_conversation
from service.backends import AUTO_MODEL
from service.errors import InvalidRequest
from service.protocol import RoutedRequest
from service.settings import Settings
from service.upstream import Backend


def choose_plan(routed: RoutedRequest, settings: Settings, backend: Backend,
                upstream_model: str) -> Plan:
    """The plan for ``routed``.

    Raises:
        InvalidRequest: ``n`` > 1, or a completions ``prompt`` given as a list
            (``prompt_list``), with a strategy other than ``direct`` named by the request
            (under ``auto`` those run ``direct``).
    """
    controls = routed.controls
    strategy = controls.strategy
    reason = ""
    if strategy == "auto":
        strategy = settings.default_strategy if routed.model == AUTO_MODEL else "direct"
        reason = "auto: the configured default" if routed.model == AUTO_MODEL else \
            "a backend model without router controls passes through"
    # Under ``auto`` the reason names what held the request to ``direct`` even when the
    # default strategy is ``direct``: otherwise it says "the configured default", as if no
    # policy were configured, when a policy would have planned the turn.
    unnamed = controls.strategy == "auto" and (
        strategy != "direct" or routed.model == AUTO_MODEL)
    if unnamed and (routed.n > 1 or prompt_list(routed)):
        # Nobody asked for this strategy, and it returns one answer: a request OpenAI accepts
        # (n choices, a batch of prompts) is answered directly rather than refused.
        asked = "n > 1" if routed.n > 1 else "a prompt list"
        return Plan("direct", budget_tokens=controls.budget_tokens, reason=(
            f"{asked} needs direct (a vote or a chain returns one answer)"))
    if unnamed and without_user_turn(routed):
        # Instructions alone (system or developer messages), which OpenAI answers: nothing a
        # classifier could read or a vote could count, so the backend answers them as sent.
        return Plan("direct", budget_tokens=controls.budget_tokens, reason=(
            "no user turn to read, only instructions: answered directly"))
    if (unnamed or strategy != "direct") and may_call_tools(routed):
        asked = "" if controls.strategy == "auto" else f"{strategy} asked, but "
        return Plan("direct", budget_tokens=controls.budget_tokens, reason=(
            f"{asked}the answer may be tool calls: answered directly"))
    if (unnamed or strategy != "direct") and echoes(routed):
        # The backend returns the prompt before each sample's text: a chain's continuation
        # would echo the prompt and the chain again, and a vote would read the prompt's text.
        asked = "" if controls.strategy == "auto" else f"{strategy} asked, but "
        return Plan("direct", budget_tokens=controls.budget_tokens, reason=(
            f"{asked}echo returns the prompt with the answer: answered directly"))
    if strategy != "direct" and routed.n > 1:
        raise InvalidRequest(f"n > 1 needs strategy direct, not {strategy}", param="n")
    if strategy != "direct" and prompt_list(routed):
        raise InvalidRequest(
            f"a prompt given as a list (several prompts, or token ids) needs strategy direct, "
            f"not {strategy}: the other strategies read one prompt's text and return one "
            f"answer", param="prompt")
    if strategy == "direct":
        return Plan("direct", budget_tokens=controls.budget_tokens, reason=reason)

    if strategy == "search" and routed.endpoint != "chat":
        strategy, reason = "sequential", "search needs chat messages: ran sequential"

    # The operator's own default holds under its cap (``max_budget_tokens``): the client asked
    # for no budget, so nothing it sent is over the cap (only a cap it sends is refused).
    budget = controls.budget_tokens or routed.max_tokens or min(
        settings.max_budget_tokens, settings.model_budget_tokens.get(upstream_model)
        or backend.budget_tokens or settings.default_budget_tokens)
    width = 1
    if strategy == "parallel_vote":
        width = max(1, min(settings.vote_width, budget // settings.vote_min_depth_tokens))
        if width < min(MIN_VOTE_WIDTH, settings.vote_width):
            # Two samples that disagree have no majority, and one is no vote: the budget
            # buys one chain (the samples' own length is checked later, by ``fit_vote``).
            bought = "one" if width < 2 else (
                f"{width}, and a vote needs {MIN_VOTE_WIDTH} for a majority")
            return Plan("sequential", budget_tokens=budget, reason=(
                f"a vote needs samples of at least {settings.vote_min_depth_tokens} tokens "
                f"(vote_min_depth_tokens); {budget} tokens buy {bought}: ran one chain"))
    search_calls = settings.search_max_calls if strategy == "search" else 0
    return Plan(strategy, budget_tokens=budget, width=width, search_calls=search_calls,
                reason=reason)


def without_user_turn(routed: RoutedRequest) -> bool:
    """True when a chat request's messages hold no user, assistant or tool turn, only
    system or developer instructions."""
    return routed.endpoint == "chat" and not has_conversation(routed.body["messages"])


def may_call_tools(routed: RoutedRequest) -> bool:
    """True when the answer may be tool calls (``tools`` given, ``tool_choice`` not none)."""
    tools = routed.body.get("tools") or routed.body.get("functions")
    return bool(tools) and routed.body.get("tool_choice") != "none"


def echoes(routed: RoutedRequest) -> bool:
    """True when a completions request sets ``echo`` (the reply's text starts with the
    prompt)."""
    return routed.endpoint == "completions" and routed.body.get("echo") is True


def prompt_list(routed: RoutedRequest) -> bool:
    """True when a completions request's ``prompt`` is not one string: a batch of prompts
    (OpenAI answers each, ``n`` choices apiece) or token ids. Only ``direct`` passes those
    through whole; a vote or a chain would read one text and return one choice."""
    return routed.endpoint != "chat" and not isinstance(routed.body.get("prompt"), str)
