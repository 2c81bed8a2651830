"""OpenAI wire format in, ``RoutedRequest`` out: the request is parsed and checked once here.

The checks are deliberately the few the gateway relies on (the body is a JSON object, ``model``
is a string, ``messages`` / ``prompt`` are present, the token caps and ``n`` are positive
integers, ``temperature`` and ``top_p`` are in range). Everything else, including fields the
gateway does not know, content given as a list of parts, assistant turns with ``content:
null`` and ``tool_calls``, and tool turns, is left for the backend exactly as the client sent
it: strict validators wrongly refuse valid inputs.

A field that fails a check is refused as OpenAI refuses it: 400 ``invalid_request_error``
with its ``param``, OpenAI's ``code`` (``missing_required_parameter``, ``invalid_type``,
``empty_array``, ``integer_below_min_value``, ``decimal_above_max_value``, ...) and wording,
so that a client written for OpenAI catches the same exception (the SDKs pick it by status)
and reads the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from service.errors import InvalidRequest

Endpoint = Literal["chat", "completions"]

STRATEGIES = ("auto", "direct", "parallel_vote", "sequential", "search")
# Strategies this version can execute; the others are refused with a clear 400.
AVAILABLE_STRATEGIES = ("auto", "direct", "parallel_vote", "sequential", "search")


@dataclass(frozen=True)
class RouterControls:
    """The optional ``router`` object (or ``x-ttc-*`` headers) of a request."""

    strategy: str = "auto"
    budget_tokens: int | None = None
    # Prompt and completion tokens of all upstream calls together (fan-out and search resend
    # the prompt); None: only ``budget_tokens`` (completion tokens) applies.
    budget_total_tokens: int | None = None
    policy: str | None = None
    experiment: str | None = None


# The keys a request's ``router`` object may hold (../shared/INTERFACE.md: any other is a 400).
ROUTER_CONTROLS = frozenset(RouterControls.__dataclass_fields__)


@dataclass(frozen=True)
class RoutedRequest:
    """A parsed, checked request.

    ``body`` is what goes upstream: the client's body minus ``router``, with ``model`` set to
    the upstream model id by the caller. ``n`` is the number of choices the client asked for;
    ``max_tokens`` the smaller of ``max_tokens`` and ``max_completion_tokens`` (tokens), or
    None when neither was given. ``decision_id`` names the routing decision (header
    ``x-ttc-decision-id``), ``response_id`` is the response's ``id`` (``new_response_id``).
    """

    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    controls: RouterControls
    decision_id: str
    response_id: str


def candidates(body: dict[str, Any], n: int) -> int:
    """The completions one upstream call of ``body`` generates for its ``n`` choices: ``n``,
    or the legacy completions API's ``best_of`` when larger (the backend generates
    ``best_of`` candidates and returns the ``n`` best, and every candidate costs tokens),
    for each prompt of a batch (``prompt_count``). A ``best_of`` that is not a positive
    integer is the backend's to refuse, and counts as ``n``."""
    best_of = body.get("best_of")
    if isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > n:
        return best_of * prompt_count(body)
    return n * prompt_count(body)


def candidates_param(body: dict[str, Any], n: int) -> str:
    """The field that makes ``candidates(body, n)`` as large as it is, for an error's
    ``param``: ``prompt`` (a batch), ``best_of`` or ``n``."""
    if prompt_count(body) > 1:
        return "prompt"
    return "best_of" if candidates(body, n) > n else "n"


def prompt_count(body: dict[str, Any]) -> int:
    """The prompts one legacy completions call answers: each string or token list of a batch
    ``prompt`` (OpenAI answers each with its ``n`` choices), else 1 (one string, or one
    prompt's token ids)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return 1


# orjson reads 1,024 levels of nesting but writes at most 254, so a body nested deeper parses
# and then cannot be sent upstream (a 500 as the first call was made).
MAX_JSON_DEPTH = 254


def load_json(raw: bytes) -> Any:
    """Decode a request body that the gateway may have to write again to send it upstream.

    Raises:
        InvalidRequest: the body is not valid UTF-8 JSON, or is nested deeper than
            ``MAX_JSON_DEPTH`` levels (400).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    # Only a body with that many brackets can be that deep; counting them is C-speed, so the
    # usual body pays no second serialisation.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        try:
            orjson.dumps(body)
        except TypeError as exc:  # orjson's "Recursion limit reached"
            raise InvalidRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} "
                                 "levels, more than the gateway forwards") from exc
    return body


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body (``load_json``) that must be a JSON object.

    Raises:
        InvalidRequest: the body is empty, not valid UTF-8 JSON, nested too deep, or not a
            JSON object.
    """
    if not raw:
        raise InvalidRequest("the request body is empty; expected a JSON object")
    body = load_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def parse_request(endpoint: Endpoint, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> RoutedRequest:
    """Check the fields the gateway uses and build the ``RoutedRequest``.

    Raises:
        InvalidRequest: (400, OpenAI's codes) a missing ``model``, ``messages`` or
            ``prompt``; a field of the wrong type or out of range (``stop`` counts as used,
            since the ledger sizes a stopped reply's allowance by it, and so do
            ``temperature`` and ``top_p``, ``SAMPLING_RANGES``, which routing reads);
            empty ``messages``; ``stream_options`` without ``stream``; a bad ``router``
            control.
    """
    model = body.get("model")
    if model is None or model == "":
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)

    if endpoint == "chat":
        _check_messages(body.get("messages"))
    else:
        _check_prompt(body.get("prompt"))

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _invalid_type("stream_options", "an object", stream_options)
    if stream_options is not None and not stream:
        # OpenAI's refusal, word for word; the gateway would otherwise drop the options.
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' "
                             "is enabled.", param="stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage"))

    _check_stop(body.get("stop"))
    for name, (low, high) in SAMPLING_RANGES.items():
        _check_number(body, name, low, high)
    n = _positive_int(body, "n", default=1)
    caps = [v for v in (_positive_int(body, "max_tokens"),
                        _positive_int(body, "max_completion_tokens")) if v is not None]
    controls = _parse_controls(body.get("router"), headers or {})

    upstream_body = {key: value for key, value in body.items() if key != "router"}
    return RoutedRequest(
        endpoint=endpoint,
        model=model,
        body=upstream_body,
        stream=stream,
        include_usage=include_usage,
        n=n or 1,
        max_tokens=min(caps) if caps else None,
        controls=controls,
        decision_id=new_decision_id(),
        response_id=new_response_id(endpoint),
    )


def new_decision_id() -> str:
    """A unique id for one routing decision: ``dec_`` and 32 hex digits."""
    return "dec_" + os.urandom(16).hex()  # as random as uuid4, without building a UUID


def new_response_id(endpoint: Endpoint) -> str:
    """The ``id`` of the response the gateway sends for one request: ``chatcmpl-`` (chat) or
    ``cmpl-`` (text completions) and 32 hex digits, OpenAI's prefixes.

    Minted here rather than copied from the backend: backends repeat ids (Ollama draws
    ``chatcmpl-%d`` from 999 values, llama.cpp's server and simple proxies may send one id
    for every call), a vote or a chain makes several upstream calls with several ids, and
    ``POST /v1/feedback`` finds a request by this id, so it must name one request only."""
    prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
    return prefix + os.urandom(16).hex()


def _kind(value: Any) -> str:
    """A JSON value's type as OpenAI's messages name it ("a string", "a decimal number")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _invalid_type(name: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{name}': expected {expected}, but got "
                          f"{_kind(value)} instead.", param=name, code="invalid_type")


def _out_of_range(name: str, kind: str, value: float, bound: float) -> InvalidRequest:
    """OpenAI's refusal of a ``kind`` ("integer", "decimal") below or above ``bound``: code
    ``{kind}_below_min_value`` or ``{kind}_above_max_value``, with its wording."""
    below = value < bound
    side, limit, sign = ("below", "minimum", ">=") if below else ("above", "maximum", "<=")
    return InvalidRequest(f"Invalid '{name}': {kind} {side} {limit} value. Expected a value "
                          f"{sign} {bound:g}, but got {value} instead.", param=name,
                          code=f"{kind}_{side}_{limit[:3]}_value")


def _missing(name: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                          code="missing_required_parameter")


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array of objects", messages)
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum "
                             "length 1, but got an empty array instead.", param="messages",
                             code="empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid_type(f"messages[{i}]", "an object", message)
        if "role" not in message:
            raise _missing(f"messages[{i}].role")
        if not isinstance(message["role"], str):
            raise _invalid_type(f"messages[{i}].role", "a string", message["role"])
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _invalid_type(f"messages[{i}].content",
                                "one of a string, an array of content parts, or null", content)


def _check_prompt(prompt: Any) -> None:
    if prompt is None:
        raise _missing("prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and all(
            isinstance(p, (str, int)) or (isinstance(p, list) and
                                          all(isinstance(t, int) for t in p))
            for p in prompt):
        return
    raise _invalid_type("prompt", "one of a string, an array of strings, an array of integers "
                        "or an array of arrays of integers", prompt)


def _check_stop(stop: Any) -> None:
    # OpenAI's type for stop: a string, a list of strings, or null. How many, and whether an
    # empty one is allowed, is left to the backend (OpenAI takes 4, llama.cpp and vLLM more).
    # The type is checked here: llama.cpp's server (the embedded backend) silently ignores a
    # stop that is neither a string nor a list, so a client's mistake would pass unnoticed.
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list):
        raise _invalid_type("stop", "one of a string, an array of strings, or null", stop)
    for i, word in enumerate(stop):
        if not isinstance(word, str):
            raise _invalid_type(f"stop[{i}]", "a string", word)


# OpenAI's ranges for the sampling fields (``CreateChatCompletionRequest``). The gateway reads
# them (a greedy request is never planned a vote; ``chain_temperature`` applies only when the
# client chose none), so a string or an out-of-range value is refused here, not by whichever
# backend a plan's calls reach.
SAMPLING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}


def _check_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(name, "a decimal", value)
    if value < low:
        raise _out_of_range(name, "decimal", value, low)
    if value > high:
        raise _out_of_range(name, "decimal", value, high)


def _positive_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if value < 1:
        raise _out_of_range(name, "integer", value, 1)
    return value


def _parse_controls(router: Any, headers: dict[str, str]) -> RouterControls:
    if router is None:
        router = {}
    if not isinstance(router, dict):
        raise InvalidRequest("router must be an object", param="router")
    unknown = sorted(str(key) for key in router if key not in ROUTER_CONTROLS)
    if unknown:  # a misspelt control ("stratgy") must not be silently ignored
        raise InvalidRequest(
            f"unknown router control {unknown[0]!r}; expected one of "
            f"{', '.join(sorted(ROUTER_CONTROLS))}", param=f"router.{unknown[0]}",
            code="unknown_parameter")
    strategy = router.get("strategy", headers.get("x-ttc-strategy", "auto"))
    if strategy is None:  # null is "not given", as for every other control
        strategy = "auto"
    if strategy not in STRATEGIES:
        raise InvalidRequest(
            f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}",
            param="router.strategy")
    if strategy not in AVAILABLE_STRATEGIES:
        raise InvalidRequest(f"strategy {strategy!r} is not available in this version",
                             param="router.strategy")
    budget = _token_control(router, headers, "budget_tokens")
    budget_total = _token_control(router, headers, "budget_total_tokens")
    policy = router.get("policy", headers.get("x-ttc-policy"))
    experiment = router.get("experiment", headers.get("x-ttc-experiment"))
    for name, value in (("policy", policy), ("experiment", experiment)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", param=f"router.{name}")
    return RouterControls(strategy=strategy, budget_tokens=budget,
                          budget_total_tokens=budget_total, policy=policy,
                          experiment=experiment)


def _token_control(router: dict[str, Any], headers: dict[str, str], name: str) -> int | None:
    """A positive token count from ``router.<name>`` (a JSON integer) or the
    ``x-ttc-<name>`` header (its digits)."""
    if name in router:
        value = router[name]
        if value is None:
            return None
        # int() would read true as 1, 1.5 as 1 and "100" as 100: a client's mistake, refused.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} must be an integer", param=f"router.{name}")
    else:
        header = headers.get("x-ttc-" + name.replace("_", "-"))
        if header is None:
            return None
        # Digits only: int() also reads "+5", " 5" and "1_000", which the contract does not.
        if not (header.isascii() and header.isdigit()):
            raise InvalidRequest(f"{name} must be an integer (its digits)",
                                 param=f"router.{name}")
        value = int(header)
    if value < 1:
        raise InvalidRequest(f"{name} must be at least 1", param=f"router.{name}")
    return value
