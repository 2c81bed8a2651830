"""What every strategy shares: the ``Call`` it runs, the ``Strategy`` protocol, the bodies
it sends upstream, the ``router`` object it returns and the outcome it reports."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from router_models.experiments.assignment import Assignment
from router_models.plan import Plan, Scores
from router_models.prompt import content_text, prompt_key, prompt_text
from service.backends import BackendRegistry
from service.errors import GatewayError
from service.ledger import BudgetLedger
from service.limits import Reservation
from service.observe import Outcome, Reporter
from service.protocol import RoutedRequest
from service.search import SearchBackend
from service.settings import Settings
from service.upstream import Accounting, Backend, UpstreamClient, refuses_n

PATHS = {"chat": "/chat/completions", "completions": "/completions"}
SAMPLING_FIELDS = ("temperature", "top_p")  # a client that sets either chose how to sample


@dataclass
class Call:
    """One client request being executed: what was asked, where it goes, the plan, and the
    running account of what it cost. Built by the route, used once.

    ``report`` collects strategy-specific fields of the ``router`` object (``votes``,
    ``early_stop``, ``reason``, ...); ``answer_text`` is the text answered (for the request
    log, when the operator keeps text); ``response_id`` is the ``id`` the client receives;
    ``stream_error`` is set when a stream ended with an
    error event after its 200 status was sent.
    """

    routed: RoutedRequest
    backend: Backend
    upstream_model: str
    client: UpstreamClient
    registry: BackendRegistry
    settings: Settings
    plan: Plan
    reporter: Reporter = field(default_factory=Reporter)
    acct: Accounting = field(default_factory=Accounting)
    ledger: BudgetLedger = field(default_factory=lambda: BudgetLedger(None))
    report: dict[str, Any] = field(default_factory=dict)
    answer_text: str | None = None
    scores: Scores | None = None
    stream_error: GatewayError | None = None
    started: float = field(default_factory=time.perf_counter)
    # The API key's tokens reserved for this request (None without keys); ``record`` settles
    # it with the true spend.
    reservation: Reservation | None = None
    # The request's A/B arm (None outside experiments).
    assignment: Assignment | None = None
    # Prompt tokens reported for each prompt sent (``metered.prompt_key``): fan-out resends
    # a prompt, and its later calls reserve its true size against ``budget_total_tokens``.
    prompt_counts: dict[bytes, int] = field(default_factory=dict)
    # The app's search backend (None: ``search`` opens the configured one for this call).
    search: SearchBackend | None = None
    # (text, finish_reason, max_tokens) of each sample that answered the prompt on its own (a
    # direct answer's choices, a vote's samples, a chain): what answer lengths are learnt from
    # (``Router.observe_usage``, ``router_models.answer_lengths.observations``).
    answer_samples: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    # A vote's: whether its first sample stated the answer the vote elected (False when a
    # chain replaced a cut wave: its answer is the reply), what bounds a vote's gain over one
    # answer (``router_models.vote_agreement``). None: no vote, one that elected nothing, or
    # a greedy one (temperature 0: its samples agree by construction).
    vote_first_agrees: bool | None = None

    def __post_init__(self) -> None:
        self.ledger = BudgetLedger(self.plan.budget_tokens,
                                   self.routed.controls.budget_total_tokens)

    @property
    def path(self) -> str:
        return PATHS[self.routed.endpoint]

    @property
    def strategy(self) -> str:
        return self.plan.strategy

    @property
    def response_id(self) -> str:
        """The ``id`` of every response body and stream chunk this request answers with: the
        gateway's own (``service.protocol.new_response_id``), never a backend's, which may
        repeat and differs between the calls of a vote or a chain."""
        return self.routed.response_id


class Strategy(Protocol):
    """One way of spending a request's budget. ``name`` is the registry key, the API value,
    the metric label and the log value alike.

    ``complete`` returns an OpenAI response body (dict). ``open_stream`` does whatever must
    happen before the client's 200 (so that a refusal becomes an HTTP status) and returns the
    SSE body. Both raise the ``GatewayError`` family; tokens spent before a failure are still
    in ``call.acct``.
    """

    name: ClassVar[str]

    async def complete(self, call: Call) -> dict[str, Any]: ...

    async def open_stream(self, call: Call) -> AsyncIterator[bytes]: ...


def request_body(call: Call, *, max_tokens: int | None, n: int = 1, sample: int = 0,
                 stream: bool = False, messages: list[Any] | None = None,
                 prompt: Any = None) -> dict[str, Any]:
    """The body of one upstream call: the client's body (every field it sent, ``router``
    removed) with the model resolved and the caps set.

    ``max_tokens`` (tokens per choice) is written to both ``max_tokens`` and
    ``max_completion_tokens``: a backend may honour either one, and a cap on only one of them
    enforces nothing. Fanned-out calls with a client ``seed`` get ``seed + sample`` so that
    they are not all the same sample. Streamed calls always ask for usage. The plan's
    ``temperature`` is sent when the client set none (absent or null: OpenAI reads a null as
    unset, and a null sent on would leave the backend at its own default).
    """
    routed = call.routed
    body = dict(routed.body)
    body["model"] = call.upstream_model
    if gateway_temperature(call) is not None and body.get("temperature") is None:
        body["temperature"] = call.plan.temperature
    if messages is not None:
        body["messages"] = messages
    if prompt is not None:
        body["prompt"] = prompt
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
        if "max_completion_tokens" in body or routed.endpoint == "chat":
            body["max_completion_tokens"] = max_tokens
    if n != 1 or "n" in body:
        body["n"] = n
    if sample and isinstance(body.get("seed"), int):
        body["seed"] = body["seed"] + sample
    if stream:
        body["stream"] = True
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def reply_cap(call: Call, tokens: int) -> int:
    """``tokens``, at most the client's ``max_tokens`` (``RoutedRequest.max_tokens``, the
    smaller of ``max_tokens`` and ``max_completion_tokens``) when it set one.

    The cap of every upstream call whose reply the client may receive: OpenAI's ``max_tokens``
    is the most tokens of the reply the client gets, so a gateway that spends a larger
    ``budget_tokens`` on votes or searches still never returns a longer answer. The budget
    bounds all calls together (the ledger); this bounds each reply."""
    cap = call.routed.max_tokens
    return tokens if cap is None else min(tokens, cap)


def router_info(call: Call) -> dict[str, Any]:
    """The ``router`` object of a response (the fields ../shared/INTERFACE.md lists, plus
    the strategy's own in ``call.report``)."""
    info: dict[str, Any] = {
        "decision_id": call.routed.decision_id,
        "strategy": call.strategy,
        "policy": call.plan.policy,
        "arm": call.assignment.arm if call.assignment is not None else None,
        "budget_tokens": call.plan.budget_tokens,
        "spent_tokens": call.acct.completion_tokens,
        "upstream_calls": call.acct.upstream_calls,
        "samples": call.routed.n,
        "votes": None,
        "search_calls": 0,
        "scores": call.scores.as_dict() if call.scores is not None else None,
        "usage_estimated": call.acct.estimated,
        "usage_source": call.acct.usage_source,
        "prompt_tokens": call.acct.prompt_tokens,
        "retries": call.acct.retries,
        "budget_overrun": call.ledger.overrun,
    }
    if call.ledger.total_budget_tokens is not None:
        info["budget_total_tokens"] = call.ledger.total_budget_tokens
    if call.plan.reason:
        info["reason"] = call.plan.reason
    if gateway_temperature(call) is not None:  # the gateway chose how the chain samples
        info["temperature"] = call.plan.temperature
    if call.plan.policy is not None:  # the propensity, for off-policy evaluation
        info["probability"] = call.plan.probability
    if call.assignment is not None:
        info["experiment"] = call.assignment.experiment
        info["assignment"] = call.assignment.how  # user, session, key, or random
    info.update(call.report)
    return info


def conform_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A response choice as OpenAI's schemas require it (``CreateChatCompletionResponse``,
    ``CreateCompletionResponse``): ``logprobs`` present (null when the backend sent none),
    and a chat message's ``refusal`` present (null unless the backend gave one), in the
    message and in its ``logprobs`` (``conform_chat_logprobs``). Backends such as llama.cpp
    leave them out; the SDKs tolerate it, strict clients do not."""
    out = {**choice}
    out.setdefault("logprobs", None)
    message = out.get("message")
    if isinstance(message, dict):
        if "refusal" not in message:
            out["message"] = {**message, "refusal": None}
        out["logprobs"] = conform_chat_logprobs(out["logprobs"])
    return out


def conform_chat_logprobs(logprobs: Any) -> Any:
    """A chat choice's (or chunk choice's) ``logprobs`` with both keys OpenAI's schemas
    require, ``content`` and ``refusal`` (null when absent: llama.cpp and vLLM send no
    ``refusal``); anything but an object is returned as it is. Completions' legacy
    ``logprobs`` (``tokens``, ``token_logprobs``, ...) must not pass through here."""
    if not isinstance(logprobs, dict) or ("content" in logprobs and "refusal" in logprobs):
        return logprobs
    return {"content": None, "refusal": None, **logprobs}


def usage_body(call: Call) -> dict[str, Any]:
    """OpenAI's ``usage`` summed over every upstream call of the request, with
    ``completion_tokens_details`` / ``prompt_tokens_details`` summed too when every call's
    usage had them (``Accounting.usage_details``)."""
    return {"prompt_tokens": call.acct.prompt_tokens,
            "completion_tokens": call.acct.completion_tokens,
            "total_tokens": call.acct.prompt_tokens + call.acct.completion_tokens,
            **call.acct.usage_details()}


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A prompt's size in tokens before it is sent, for admission: one token per 4 characters
    of prompt text, the rule of thumb OpenAI gives for English text. (What a call really cost
    is counted by ``service.strategies.metered``.)"""
    if "messages" in body:
        chars = sum(len(content_text(m.get("content"))) + 4 for m in body["messages"]
                    if isinstance(m, dict))
    else:
        prompt = body.get("prompt")
        chars = len(prompt) if isinstance(prompt, str) else len(orjson.dumps(prompt))
    return max(1, -(-chars // 4))


def record(call: Call, status: str) -> None:
    """Report the finished request (metrics, and the request log when there is one), and
    settle its key's token reservation with the completion tokens really spent."""
    if call.reservation is not None:
        call.reservation.settle_with(call.acct.completion_tokens, call.acct.prompt_tokens)
    votes = call.report.get("votes")
    call.reporter.report(Outcome(
        decision_id=call.routed.decision_id,
        response_id=call.response_id,
        endpoint=call.routed.endpoint,
        model=call.upstream_model,
        strategy=call.strategy,
        policy=call.plan.policy,
        arm=call.assignment.arm if call.assignment is not None else None,
        experiment=call.assignment.experiment if call.assignment is not None else None,
        status=status,
        budget_tokens=call.plan.budget_tokens,
        prompt_tokens=call.acct.prompt_tokens,
        completion_tokens=call.acct.completion_tokens,
        upstream_calls=call.acct.upstream_calls,
        samples=int(call.report.get("samples", call.routed.n)),
        duration_s=time.perf_counter() - call.started,
        wait_s=call.acct.wait_s,
        estimated=call.acct.estimated,
        stream=call.routed.stream,
        key_name=call.reservation.key_name if call.reservation is not None else None,
        votes=votes if isinstance(votes, dict) else None,
        search_calls=int(call.report.get("search_calls", 0)),
        extra={k: v for k, v in call.report.items() if k in ("early_stop", "samples_saved",
                                                              "failed_samples", "continued")},
        plan=call.plan,
        scores=call.scores.as_dict() if call.scores is not None else None,
        prompt_text=_prompt_of(call.routed.body) if call.reporter.keep_text else None,
        answer_text=call.answer_text,
        propensity=propensity(call),
        controls={"strategy": call.routed.controls.strategy,
                  "budget_tokens": call.routed.controls.budget_tokens or call.routed.max_tokens},
        # Only a logged decision with scores can teach the learner (service.learning skips
        # the rest), so only it pays for hashing the prompt, images included.
        prompt_key=(_prompt_key_of(call.routed.body) if call.scores is not None
                    and call.reporter.request_log is not None else None),
    ))


def propensity(call: Call) -> float:
    """The probability with which this request got its plan: the policy's probability of the
    plan times, in an A/B experiment, the share of traffic its arm had when it was assigned
    (inverse propensity weights need both when arms run different policies)."""
    share = call.assignment.probability if call.assignment is not None else 1.0
    return share * call.plan.probability


def _prompt_key_of(body: dict[str, Any]) -> str | None:
    if isinstance(body.get("messages"), list):
        return prompt_key(body["messages"])
    prompt = body.get("prompt")
    return prompt_key(prompt) if isinstance(prompt, str) else None


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return prompt_text(body["messages"])
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def structured_output(body: dict[str, Any]) -> bool:
    """True when the request asks for JSON output (OpenAI's ``response_format`` types
    ``json_object`` and ``json_schema``)."""
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object", "json_schema")


def client_chose_sampling(body: dict[str, Any]) -> bool:
    """True when the client set ``temperature`` or ``top_p`` (a null reads as unset, as in
    OpenAI's API): then the gateway keeps its sampling as sent."""
    return any(body.get(name) is not None for name in SAMPLING_FIELDS)


def gateway_temperature(call: Call) -> float | None:
    """The temperature the gateway chose for this call's plan (``plan.temperature``), or None
    when it chose none or the backend takes only its default (``Backend.temperature``)."""
    return call.plan.temperature if call.backend.temperature else None


def may_set_temperature(call: Call) -> bool:
    """Whether the gateway may send a temperature of its own on this call: the client set
    no sampling (``client_chose_sampling``) and the backend accepts one."""
    return call.backend.temperature and not client_chose_sampling(call.routed.body)


def gateway_chose_temperature(call: Call, body: Mapping[str, Any]) -> bool:
    """Whether ``body``, one of ``call``'s upstream calls, carries a temperature the gateway
    chose rather than the client.

    Every temperature of the gateway's (the plan's in ``request_body``, a vote's samples and
    its greedy first one, a chain's ``chain_temperature``) is set only when the client's body
    has none, and the client's is never replaced: so a body's temperature is the gateway's
    exactly when the client sent none. Only such a temperature may be dropped for a backend
    that refuses it (``default_temperature_only``); the client's is sent as it was set.
    """
    return body.get("temperature") is not None and call.routed.body.get("temperature") is None


def default_temperature_only(call: Call, refusal: str) -> None:
    """``call``'s backend refused a temperature the gateway chose (``refusal``, its message):
    it is remembered as taking only its default (``BackendRegistry``), and this request runs
    on as if it had been configured so: its later calls carry no temperature of the
    gateway's, and its ``router`` object claims none (``router_info``); a plan that chose one
    says that none was sent."""
    call.backend = call.registry.note_default_temperature_only(call.backend, refusal)
    if call.plan.temperature is not None:
        why = "the backend takes only its default temperature: sent none"
        call.plan = dataclasses.replace(call.plan, temperature=None, reason=(
            f"{call.plan.reason}; {why}" if call.plan.reason else why))


def learnt_n_refused(call: Call, error: GatewayError) -> bool:
    """True when ``error`` is the backend's refusal of a call's ``n`` (``refuses_n``:
    llama.cpp's server allows one choice a call); the backend is then remembered as not
    honouring ``n``, and the caller asks for one choice a call instead. False for any other
    error."""
    if not refuses_n(error):
        return False
    call.registry.note_n_support(call.backend, False)
    return True
