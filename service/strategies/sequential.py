"""``sequential``: one long chain of thought given most of the budget.

A small part of the budget (``answer_reserve_tokens``, at most a quarter of it) is held back.
When the chain is cut by its cap before it states a final answer, the reserve buys one short
continuation that asks for the final answer now, so a budget cut never returns an answerless
text (budget forcing in the sense of Muennighoff et al. 2025, "s1": end the thinking, then
force the answer). The continuation is an assistant prefill (``continue_final_message``, as
vLLM accepts) for upstreams configured with ``prefill: true``, else a follow-up user turn.
Backends configured with ``reasoning_effort: true`` are told how hard to think from the chain's
cap when the client did not say.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from router_models.answers import extract_answer
from service import sse
from service.errors import GatewayError, UpstreamError, error_json
from service.strategies.base import (
    Call,
    conform_chat_logprobs,
    reply_cap,
    request_body,
    router_info,
    structured_output,
    usage_body,
)
from service.strategies.capped import CutRule, charge_cut, cuts
from service.strategies.metered import Metered, delta_text
from service.strategies.parallel_vote import completion_body
from service.strategies.sampling import Sample, draw
from service.streaming import DONE, close_all, events, started
from service.text_protocol import PREFILL
from service.upstream import UpstreamStream

# Tokens of the shortest forced answer, "The answer is 42." (7 pieces in Qwen2.5's tokenizer,
# by the bank replay's /tokenize); a smaller reserve cannot hold it.
FORCED_ANSWER_TOKENS = 7
FINAL_ANSWER_REQUEST = ("You are out of thinking budget. State your final answer now, in the "
                        "form \"The answer is X.\"")


class Sequential:
    """One chain of up to ``budget - reserve`` tokens, and a forced answer if it is cut."""

    name: ClassVar[str] = "sequential"

    async def complete(self, call: Call) -> dict[str, Any]:
        chain = await run_chain(call)
        call.report["samples"] = 1
        return completion_body(call, chain)

    async def open_stream(self, call: Call) -> AsyncIterator[bytes]:
        chain_cap, reserve = caps(call)
        opened = await _open(call, chain_cap, _effort(call, chain_cap))
        if opened is None:
            raise UpstreamError("the chain could not be started", code="budget_spent")
        call.report.update({"samples": 1, "chain_tokens": chain_cap, "continued": False})
        return await started(_stream(call, opened, chain_cap, reserve))


async def run_chain(call: Call, budget_tokens: int | None = None,
                    temperature: float | None = None) -> Sample:
    """One chain within ``budget_tokens`` (default the plan's), and when the chain is cut
    before it states an answer, the forced answer its reserve buys (``caps``): the chain, or
    the chain joined with its forced answer. Adds the chain to ``call.answer_samples`` and
    ``chain_tokens`` and ``continued`` (whether a forced answer was drawn) to
    ``call.report``. ``parallel_vote`` runs one with the tokens of its undrawn samples when
    its first wave was all cut, at ``temperature`` (None: as the request and plan say).

    Raises:
        The chain's own error when its call failed; UpstreamError (``budget_spent``) when the
        ledger granted it nothing.
    """
    sampling = {} if temperature is None else {"temperature": temperature}
    chain_cap, reserve = caps(call, budget_tokens)
    samples, failures = await draw(call, 1, chain_cap,
                                   body_overrides={**_effort(call, chain_cap), **sampling})
    if not samples:
        raise failures[0] if failures else UpstreamError("the chain could not be started",
                                                         code="budget_spent")
    chain = samples[0]
    call.answer_samples.append((chain.text, chain.finish_reason, chain_cap))
    call.report.update({"chain_tokens": chain_cap, "continued": False})
    if (not reserve or not _needs_answer(call, chain.finish_reason, chain.text)
            or call.ledger.remaining == 0):
        return chain
    continuation, _ = await draw(call, 1, reserve,
                                 body_overrides={**_continuation(call, chain.text), **sampling})
    if not continuation:  # failed or not granted: the cut chain is the reply
        return chain
    call.report["continued"] = True
    return _joined(call, chain, continuation[0])


def caps(call: Call, budget_tokens: int | None = None) -> tuple[int, int]:
    """(chain cap, reserve) in tokens: the reserve is ``answer_reserve_tokens`` but at most a
    quarter of the budget; the chain gets the rest (or the plan's depth if smaller). The chain
    and its continuation are the reply the client receives, so together they get at most the
    client's ``max_tokens`` (``base.reply_cap``), whatever larger ``budget_tokens`` it set.
    Structured output (``structured_output``) keeps no reserve, nor does a budget whose
    quarter cannot hold a forced answer (``FORCED_ANSWER_TOKENS``).

    Args:
        budget_tokens: the chain's and its forced answer's tokens together; None for the
            plan's budget (and then the plan's depth caps the chain: a vote's depth is not
            the chain's when it passes ``budget_tokens``).

    Raises:
        InvalidRequest: never; a budget of 1 gives the chain 1 token and no reserve.
    """
    given = budget_tokens
    budget = reply_cap(call, given or call.plan.budget_tokens
                       or call.settings.default_budget_tokens)
    # structured output is never continued (``_needs_answer``): the chain gets it all
    reserve = 0 if structured_output(call.routed.body) else min(
        call.settings.answer_reserve_tokens, budget // 4)
    if reserve < FORCED_ANSWER_TOKENS:
        # A reserve that cannot hold "The answer is X." would append a cut fragment to the
        # reply and resend the prompt and chain for it: the chain gets it all instead.
        reserve = 0
    chain = budget - reserve
    if given is None and call.plan.depth_tokens is not None:
        chain = min(chain, call.plan.depth_tokens)
    return max(1, chain), reserve


def _needs_answer(call: Call, finish_reason: str | None, text: str) -> bool:
    """Whether a chain was cut before stating an answer, and a forced answer may follow: not
    for structured output (``response_format`` json_object or json_schema), where a prose
    answer appended to cut JSON would be neither, and would hide the cut (finish "stop")."""
    if structured_output(call.routed.body):
        return False
    return finish_reason == "length" and extract_answer(text, strict=True) is None


def _effort(call: Call, chain_cap: int) -> dict[str, Any]:
    if not call.backend.reasoning_effort:
        return {}
    if "reasoning_effort" in call.routed.body:
        return {}
    effort = "high" if chain_cap >= 4096 else "medium" if chain_cap >= 1024 else "low"
    return {"reasoning_effort": effort}


def _continuation(call: Call, chain_text: str) -> dict[str, Any]:
    """Body fields that turn the request into "the chain so far, now the final answer"."""
    body = call.routed.body
    if call.routed.endpoint == "completions":
        return {"prompt": f"{body['prompt']}{chain_text}{PREFILL}"}
    messages = list(body["messages"])
    if call.backend.prefill:
        messages.append({"role": "assistant", "content": chain_text + PREFILL})
        return {"messages": messages, "continue_final_message": True,
                "add_generation_prompt": False}
    messages += [{"role": "assistant", "content": chain_text},
                 {"role": "user", "content": FINAL_ANSWER_REQUEST}]
    return {"messages": messages}


def _separator(call: Call) -> str:
    prefilled = call.routed.endpoint == "completions" or call.backend.prefill
    return PREFILL if prefilled else "\n\n"


def _joined(call: Call, chain: Sample, continuation: Sample) -> Sample:
    text = chain.text + _separator(call) + continuation.text
    choice = dict(chain.choice)
    if "message" in choice:
        choice["message"] = {**choice["message"], "content": text}
    else:
        choice["text"] = text
    choice["finish_reason"] = continuation.finish_reason
    return Sample(choice=choice, reply=chain.reply, text=text,
                  finish_reason=continuation.finish_reason, confidence=None)


# --- SSE ------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """What one streamed upstream call showed."""

    text: str = ""
    generated: str = ""  # everything generated, as text: content, reasoning, tool calls
    chunks: int = 0  # chunks that carried generated text: each holds at least one token
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    # The usage came in the usage chunk (no choices) or once the choice had finished: the
    # whole call's count, not a running total (which a broken stream is not charged by).
    usage_final: bool = False
    done: bool = False
    opened: bool = False  # its call was opened (a forced answer: its separator was sent)
    template: dict[str, Any] = field(default_factory=dict)


async def _stream(call: Call, opened: tuple[UpstreamStream, Metered], chain_cap: int,
                  reserve: int) -> AsyncGenerator[bytes, None]:
    """The chain's SSE body; a chain that failed before it sent anything raises its error
    (``streaming.started``), one that failed later ends with an error event."""
    chain = _Piece()
    last = chain
    sent = False
    try:
        async for out in _forward(call, *opened, chain):
            sent = True
            yield out
        call.answer_samples = [(chain.text, chain.finish_reason, chain_cap)]
        if _needs_answer(call, chain.finish_reason, chain.text) and reserve:
            last = _Piece(template=chain.template)
            try:
                async for out in _continue(call, chain.text, reserve, last):
                    sent = True
                    yield out
            except GatewayError:
                # As without streaming (``run_chain``): a forced answer that failed leaves
                # the cut chain as the reply, ended as cut rather than by an error event
                # after its text (which the SDKs raise, losing the chain).
                call.report["continued"] = False
                last.finish_reason = last.finish_reason or "length"
            if not last.opened:
                # Not granted (a total budget the resent chain does not fit) or refused: the
                # client got the chain alone, which ends as cut, as the JSON reply does.
                last = chain
    except GatewayError as exc:
        if not sent:
            raise
        call.stream_error = exc
        yield sse.data_event(error_json(exc))
        yield sse.DONE
        return
    call.answer_text = chain.text if last is chain else chain.text + _separator(call) + last.text
    yield sse.data_event(orjson.dumps(_finish_chunk(call, chain.template, last.finish_reason)))
    if call.routed.include_usage:
        yield sse.data_event(orjson.dumps({**chain.template, "choices": [],
                                           "usage": usage_body(call),
                                           "router": router_info(call)}))
    yield sse.DONE


async def _continue(call: Call, chain_text: str, reserve: int,
                    piece: _Piece) -> AsyncIterator[bytes]:
    opened = await _open(call, reserve, _continuation(call, chain_text))
    if opened is None:
        return
    call.report["continued"] = True  # the forced answer's call was sent
    # The separator only once a forced answer follows it: a chain left without one is sent
    # as the JSON reply has it, with nothing after its text.
    piece.opened = True
    yield _delta_event(piece.template, call, _separator(call))
    async for out in _forward(call, *opened, piece):
        yield out


async def _open(call: Call, cap: int,
                overrides: dict[str, Any]) -> tuple[UpstreamStream, Metered] | None:
    """Open one streamed call of at most ``cap`` tokens under the ledger; None when the
    ledger grants nothing. A failed call is charged what it may have generated."""
    body = {**request_body(call, max_tokens=cap, stream=True), **overrides}
    metered = Metered.reserve(call, body, cap)
    if metered is None:
        return None
    return await metered.open_stream(call), metered


async def _forward(call: Call, stream: UpstreamStream, metered: Metered,
                   piece: _Piece) -> AsyncIterator[bytes]:
    """Send one upstream stream's content to the client, holding back its finish reason and
    usage (the client gets one of each at the very end). Counts the call at the end
    (``Metered``): its usage, else its tokenizer's count, else its grant; a stream that did
    not end normally is charged its grant unless its usage arrived. Stops reading a backend
    that sends more chunks of text than it was granted tokens: it ignores its cap, and every
    chunk it sends costs a token at least. A backend already known to ignore its cap
    (``capped.cuts``) is closed when its chunks reach the grant, and the piece ends with
    ``length``."""
    overran = False
    rule = CutRule.of(metered) if cuts(call, metered) else None
    try:
        async with aclosing(events(stream)) as upstream:
            async for payload, _data in upstream:
                if payload is DONE:
                    piece.done = True
                    break
                out = _take(call, piece, payload)
                if out is not None:
                    yield out
                if rule is not None:
                    rule.see(payload)
                    if rule.over:
                        piece.finish_reason = "length"  # as from a backend honouring its cap
                        break
                elif metered.granted is not None and piece.chunks > metered.granted:
                    overran = True
                    # stopped at its grant, as a backend honouring its cap would have: the
                    # client is told the reply was cut, not sent a null finish reason
                    piece.finish_reason = piece.finish_reason or "length"
                    break
        if rule is not None and rule.over:
            # A backend known to ignore its cap, closed at its grant before it makes more;
            # charged the grant: it may have generated tokens it had not sent yet.
            await close_all([stream])
            await charge_cut(call, metered, rule)
        elif overran:  # counted in full (at least a token per chunk): the ledger notes it
            metered.abandon(_final_usage(piece), piece.generated, at_least=piece.chunks)
        elif not piece.done and piece.finish_reason is None:
            stream.broke()
            raise UpstreamError("the stream from the backend ended before the answer was "
                                "complete", code="stream_truncated")
        await metered.finish_counted(piece.usage, [piece.generated], [piece.finish_reason],
                                     at_least=piece.chunks)
    finally:
        await close_all([stream])
        metered.abandon(_final_usage(piece), piece.generated)


def _final_usage(piece: _Piece) -> dict[str, Any] | None:
    """The usage a call that did not end normally may be charged: its final one only (a
    running total counts what was sent, not what the backend went on generating)."""
    return piece.usage if piece.usage_final else None


def _take(call: Call, piece: _Piece, payload: Any) -> bytes | None:
    if not isinstance(payload, dict):
        raise UpstreamError("the backend sent a stream chunk that is not an object",
                            code="upstream_malformed")
    if not piece.template:
        # system_fingerprint too: the chunks the gateway writes itself (the forced answer's
        # separator, the finish and usage chunks) must read like the backend's own.
        piece.template.update({k: payload[k] for k in ("object", "created", "model",
                                                       "system_fingerprint") if k in payload})
        piece.template["id"] = call.response_id
    choices = payload.get("choices")  # a list of objects (streaming.chunk_choices)
    if choices and choices[0].get("finish_reason") is not None:
        piece.finish_reason = choices[0]["finish_reason"]
    if isinstance(payload.get("usage"), dict):
        piece.usage = payload["usage"]
        piece.usage_final = not choices or piece.finish_reason is not None
    if not choices:
        return None
    choice = choices[0]
    generated = delta_text(choice)
    if generated:
        piece.generated += generated
        piece.chunks += 1
    delta = choice.get("delta") or {}
    text = delta.get("content") or choice.get("text") or ""
    if not text and not delta.get("role") and not choice.get("logprobs"):
        return None  # (a backend may send a token's logprobs on a chunk with no text)
    piece.text += text
    # The gateway's id and the chain's time on every chunk, the continuation's too: the
    # client reads one completion, not the two upstream calls behind it.
    forwarded_choice = {**choice, "index": 0, "finish_reason": None}
    if call.routed.endpoint != "chat":
        forwarded_choice.setdefault("logprobs", None)  # as OpenAI's completions chunks
    elif "logprobs" in choice:
        forwarded_choice["logprobs"] = conform_chat_logprobs(choice["logprobs"])
    forwarded = {**payload, "id": piece.template["id"], "choices": [forwarded_choice]}
    if "created" in piece.template:
        forwarded["created"] = piece.template["created"]
    forwarded.pop("usage", None)
    return sse.data_event(orjson.dumps(forwarded))


def _delta_event(template: dict[str, Any], call: Call, text: str) -> bytes:
    if call.routed.endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
    return sse.data_event(orjson.dumps({**template, "choices": [choice]}))


def _finish_chunk(call: Call, template: dict[str, Any],
                  finish_reason: str | None) -> dict[str, Any]:
    if call.routed.endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
    return {**template, "choices": [choice]}

