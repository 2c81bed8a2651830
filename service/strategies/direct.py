"""The ``direct`` strategy: the client's request passed through, JSON and SSE.

The client's body goes upstream as it came (``router`` removed, ``model`` resolved, the caps
set from the budget: each of the ``n`` choices gets ``budget_tokens // n``). Two things are
added for every backend:

- usage is always asked for (``stream_options.include_usage``) and summed over every upstream
  call, whatever the client asked; the usage chunk is stripped from the client's stream when it
  did not ask for it;
- every call is metered (``service.strategies.metered``): under a budget it reserves its
  choices' caps from the ledger, and its cost is the backend's usage, else its tokenizer's
  count, else its grant; a failed call is charged what it may have generated;
- ``n`` is honoured against backends that ignore it (llama-cpp-python's server) by fanning out
  ``n`` single-choice calls, at most ``fanout_concurrency`` at a time, merged into one reply
  whose choices are re-indexed; a batch ``prompt`` (a list of prompts) is fanned out unless the
  backend is known to honour ``n``, since a first reply of one choice per prompt cannot show
  whether it did, and its choices take OpenAI's order: ``i * n + sample`` for prompt ``i``;
- against a backend known to ignore ``max_tokens`` (``service.strategies.capped``), a JSON
  call is sent streamed and a stream is read under a ``CutRule``: each choice ends with
  ``length`` at its cap and the upstream stream is closed at its grant. A stream to a backend
  not known to ignore it is cut off once it has sent more chunks of text than its grant
  (``upstream_over_cap``), and the backend is noted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from service import sse
from service.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamClientError,
    UpstreamError,
    error_json,
)
from service.protocol import prompt_count
from service.strategies.base import (
    Call,
    conform_chat_logprobs,
    conform_choice,
    learnt_n_refused,
    request_body,
    router_info,
    usage_body,
)
from service.strategies.capped import CutRule, charge_cut, cut_choices, cuts
from service.strategies.metered import Metered, delta_text
from service.strategies.sampling import choice_text, post_completion
from service.streaming import DONE, close_all, merged_events, started
from service.upstream import DETAIL_FIELDS, UpstreamStream


class Direct:
    """One upstream call with the client's own parameters (``n`` choices)."""

    name: ClassVar[str] = "direct"

    async def complete(self, call: Call) -> dict[str, Any]:
        return await complete_json(call)

    async def open_stream(self, call: Call) -> AsyncIterator[bytes]:
        return await started(relay(call, await open_streams(call)))


def choice_cap(call: Call) -> int | None:
    """``max_tokens`` per choice: the client's cap, and ``budget_tokens // n`` under a budget.

    Raises:
        InvalidRequest: a budget smaller than the number of choices.
    """
    routed = call.routed
    cap = routed.max_tokens
    if call.plan.budget_tokens is not None:
        per_choice = call.plan.budget_tokens // routed.n
        if per_choice < 1:
            raise InvalidRequest("budget_tokens is smaller than the number of choices n",
                                 param="router.budget_tokens")
        cap = per_choice if cap is None else min(cap, per_choice)
    return cap


def _body(call: Call, *, n: int, sample: int = 0) -> dict[str, Any]:
    return request_body(call, max_tokens=choice_cap(call), n=n, sample=sample,
                        stream=call.routed.stream)


def _fans_out(call: Call) -> bool:
    support = call.registry.supports_n(call.backend)
    return call.routed.n > 1 and (support is False or (
        support is None and prompt_count(call.routed.body) > 1))


async def complete_json(call: Call) -> dict[str, Any]:
    """Run the request without streaming and return the merged OpenAI response body.

    Raises the ``UpstreamError`` family; tokens of calls that succeeded before a failure are
    still in ``call.acct``.
    """
    n = call.routed.n
    first = None
    if not _fans_out(call):
        try:
            first = await _one_json(call, n=n, sample=0)
        except UpstreamClientError as exc:
            if n == 1 or not learnt_n_refused(call, exc):
                raise
    if first is None:
        replies = await _fan_out_json(call, range(n))
    else:
        replies = [first]
        got = len(first["choices"])
        if n > 1 and got < n:  # the backend ignores n (llama-cpp-python's server)
            call.registry.note_n_support(call.backend, False)
            replies += await _fan_out_json(call, range(max(got, 1), n))
        elif n > 1:
            call.registry.note_n_support(call.backend, True)
    return _merge_json(call, replies)


def _metered(call: Call, *, n: int, sample: int = 0) -> Metered:
    """One call's body under the ledger (the caps as ``choice_cap`` says).

    Raises:
        UpstreamError: the budget is spent (failed calls were charged what they may have
            generated, and nothing is left for this one).
    """
    metered = Metered.reserve(call, _body(call, n=n, sample=sample), choice_cap(call), n)
    if metered is None:
        raise UpstreamError("the token budget is spent", code="budget_spent")
    return metered


async def _one_json(call: Call, *, n: int, sample: int) -> dict[str, Any]:
    return await post_completion(call, _metered(call, n=n, sample=sample))


async def _fan_out_json(call: Call, samples: range) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(call.settings.fanout_concurrency)

    async def one(sample: int) -> dict[str, Any]:
        async with gate:
            return await _one_json(call, n=1, sample=sample)

    results = await asyncio.gather(*(one(s) for s in samples), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


def _merge_json(call: Call, replies: list[dict[str, Any]]) -> dict[str, Any]:
    merged = replies[0] if len(replies) == 1 else dict(replies[0])
    if len(replies) > 1 and prompt_count(call.routed.body) > 1:
        # Fanned out, one reply per sample, each with a choice per prompt: prompt i's
        # samples are choices i * n .. i * n + n - 1, as OpenAI orders a batch's choices.
        n = call.routed.n
        indexed = []
        for sample, reply in enumerate(replies):
            for choice in reply["choices"]:
                choice = dict(choice)
                choice["index"] = (choice.get("index") or 0) * n + sample
                indexed.append(choice)
        merged["choices"] = sorted(indexed, key=lambda c: c["index"])
    elif len(replies) > 1:
        choices: list[dict[str, Any]] = []
        for reply in replies:
            for choice in reply["choices"]:
                choice = dict(choice)
                choice["index"] = len(choices)
                choices.append(choice)
        merged["choices"] = choices
    merged["choices"] = [conform_choice(c) if isinstance(c, dict) else c
                         for c in merged["choices"]]
    merged["id"] = call.response_id
    if merged["choices"] and isinstance(merged["choices"][0], dict):
        call.answer_text = choice_text(merged["choices"][0])
    cap = choice_cap(call)
    call.answer_samples = [(choice_text(c), c.get("finish_reason"), cap)
                           for c in merged["choices"] if isinstance(c, dict)]
    # The first reply's own breakdowns describe one call of several: only the summed ones
    # (present when every call reported them) may stand beside the summed totals.
    upstream_usage = {k: v for k, v in (merged.get("usage") or {}).items()
                      if k not in DETAIL_FIELDS}
    merged["usage"] = {**upstream_usage, **usage_body(call)}
    merged["router"] = router_info(call)
    return merged


# --- SSE ------------------------------------------------------------------------------------


@dataclass
class _StreamState:
    """What one upstream stream showed: its last usage (running totals: the last one wins),
    the text and finish reason of each choice (to count a stream that sends no usage)."""

    offset: int
    metered: Metered
    expected: int = 1  # choices this stream was asked for (for each prompt of a batch)
    # A fanned-out stream's choice i (prompt i of a batch) is the client's i * stride + offset.
    stride: int = 1
    usage: dict[str, Any] | None = None
    # The usage came in the usage chunk (no choices) or once every choice had finished: a
    # count of the whole call, not a running total of what had been sent so far.
    usage_final: bool = False
    finished: set[int] = field(default_factory=set)
    texts: dict[int, str] = field(default_factory=dict)
    finishes: dict[int, str | None] = field(default_factory=dict)
    chunks: int = 0  # choice chunks that carried generated text: a token each at least
    done: bool = False
    # Set when the backend is known to generate past max_tokens (``capped.cuts``): each
    # choice is cut at its cap and the stream closed at its grant (``capped.CutRule``).
    rule: CutRule | None = None


@dataclass(frozen=True)
class OpenStream:
    """An upstream stream opened for the client and the metering of its call."""

    stream: UpstreamStream
    metered: Metered


async def open_streams(call: Call) -> list[OpenStream]:
    """Open the upstream stream(s) before the client's response starts, so that a refusal
    reaches the client as an HTTP status. One stream, or ``n`` when fanning out.

    Raises the ``UpstreamError`` family; streams already opened are closed first (and
    charged their grants: their backends may have started generating).
    """
    if not _fans_out(call):
        try:
            return [await _open_one(call, call.routed.n, 0)]
        except UpstreamClientError as exc:
            if call.routed.n == 1 or not learnt_n_refused(call, exc):
                raise
    return await _open_single_choices(call, range(call.routed.n))


async def _open_single_choices(call: Call, samples: range) -> list[OpenStream]:
    """One single-choice stream per sample, ``fanout_concurrency`` opening at a time; when
    one fails, those opened are closed (and charged their grants) and its error raised."""
    gate = asyncio.Semaphore(call.settings.fanout_concurrency)

    async def one(sample: int) -> OpenStream:
        async with gate:
            return await _open_one(call, 1, sample)

    results = await asyncio.gather(*(one(s) for s in samples), return_exceptions=True)
    opened = [r for r in results if isinstance(r, OpenStream)]
    for result in results:
        if isinstance(result, BaseException):
            for item in opened:
                await item.stream.aclose()
                item.metered.abandon(None, "")
            raise result
    return opened


async def _open_one(call: Call, n: int, sample: int) -> OpenStream:
    metered = _metered(call, n=n, sample=sample)
    return OpenStream(await metered.open_stream(call), metered)


async def relay(call: Call, opened: list[OpenStream]) -> AsyncGenerator[bytes, None]:
    """The client's SSE body: upstream chunks passed through with the gateway's response id
    (``call.response_id``) in place of the backend's, choices re-indexed when fanned out, one
    usage chunk at the end when the client asked, then ``data: [DONE]``. A broken upstream
    ends the stream with an error event, or, when it broke before the body sent anything,
    raises its ``GatewayError`` (``streaming.started`` makes that the HTTP status).

    Usage is settled in ``call.acct`` and the ledger at the end, also when the client goes
    away (``service.strategies.metered``: a stream that did not finish is charged its grant
    unless its usage arrived).

    A single stream asked for ``n`` > 1 choices that ends with fewer (a backend that ignores
    ``n``, not known to: ``supports_n`` unset) is followed by single-choice streams for the
    rest, as ``complete_json`` does, and the backend is noted as ignoring ``n``.
    """
    streams = [item.stream for item in opened]
    prompts = prompt_count(call.routed.body)
    fanned = len(opened) > 1
    states = [_StreamState(offset=i if fanned else 0, metered=item.metered,
                           expected=prompts * (1 if fanned else call.routed.n),
                           stride=call.routed.n if fanned else 1,
                           rule=_rule(call, item.metered))
              for i, item in enumerate(opened)]
    template: dict[str, Any] = {}
    error: GatewayError | None = None
    sent = False
    try:
        async for out in _relay_events(call, streams, states, template):
            sent = True
            yield out
        _check_complete(call, states, streams)
        got = max(len(states[0].finished), 1)
        if len(states) == 1 and got < call.routed.n:
            call.registry.note_n_support(call.backend, False)
            await close_all(streams)  # its concurrency slot is needed for the rest
            await _count_stream(call, states[0])  # and its grant, of every choice's cap
            more = await _open_single_choices(call, range(got, call.routed.n))
            new_states = [_StreamState(offset=got + i, metered=item.metered,
                                       rule=_rule(call, item.metered))
                          for i, item in enumerate(more)]
            streams += [item.stream for item in more]
            states += new_states
            async for out in _relay_events(call, streams[1:], new_states, template):
                sent = True
                yield out
            _check_complete(call, states, streams)
        for state in states:
            await _count_stream(call, state)
    except GatewayError as exc:
        error = exc
    finally:
        await close_all(streams)
        for state in states:  # not counted above: broken, or the client went away
            state.metered.abandon(_final_usage(state), "".join(state.texts.values()))
    if error is not None:
        if not sent:
            raise error
        call.stream_error = error
        yield sse.data_event(error_json(error))
    elif call.routed.include_usage:
        yield sse.data_event(orjson.dumps(_usage_chunk(call, template)))
    yield sse.DONE


def _rule(call: Call, metered: Metered) -> CutRule | None:
    """The ``CutRule`` of a stream whose backend is known to generate past its cap."""
    return CutRule.of(metered) if cuts(call, metered) else None


def _stops(states: list[_StreamState]) -> list[Callable[[Any], bool] | None]:
    """For ``merged_events``: close each cut stream as soon as its rule is over (a rule of
    its own, fed the same chunks as the state's)."""

    def stop(rule: CutRule) -> Callable[[Any], bool]:
        def over(payload: Any) -> bool:
            rule.see(payload)
            return rule.over
        return over

    return [stop(dataclasses.replace(state.rule, counts={}, finished=set(), cut=set()))
            if state.rule is not None else None for state in states]


def _final_usage(state: _StreamState) -> dict[str, Any] | None:
    """The usage a stream that did not end normally may be charged: its final one only. A
    running total (vLLM's continuous usage stats) counts what was sent before the break;
    the backend may have gone on generating, so without a final usage the grant is charged."""
    return state.usage if state.usage_final else None


async def _count_stream(call: Call, state: _StreamState) -> None:
    """Count a stream that ended normally (once) and note its choices' answers."""
    if state.metered.settled:
        return
    await state.metered.finish_counted(
        state.usage, list(state.texts.values()),
        [state.finishes.get(i) for i in state.texts], at_least=state.chunks)
    call.answer_samples += [(text, state.finishes.get(i), choice_cap(call))
                            for i, text in state.texts.items()]


async def _relay_events(call: Call, streams: list[UpstreamStream], states: list[_StreamState],
                        template: dict[str, Any]) -> AsyncIterator[bytes]:
    """The client's events for ``streams`` (``states`` alike), merged as they arrive.

    Raises:
        UpstreamError: a stream broke, or sent more chunks of text than its grant
            (``upstream_over_cap``: it ignores ``max_tokens``; counted in full).
    """
    async with aclosing(merged_events(streams, _stops(states))) as events:
        async for index, (payload, data) in events:
            state = states[index]
            out = _rewrite_chunk(call, state, payload, data, template)
            if out is not None:
                yield sse.data_event(out)
            if state.rule is not None:
                if state.rule.over:  # closed at its grant (``merged_events`` closed it)
                    state.done = True
                    await charge_cut(call, state.metered, state.rule)
                    call.answer_samples += [(text, state.finishes.get(i), choice_cap(call))
                                            for i, text in state.texts.items()]
                continue
            granted = state.metered.granted
            if granted is not None and state.chunks > granted:
                # It ignores max_tokens, and every chunk of text costs a token at least:
                # stop paying, count it in full (the ledger marks the overrun).
                state.metered.abandon(_final_usage(state), "", at_least=state.chunks)
                raise UpstreamError("the backend sent more tokens than its max_tokens",
                                    code="upstream_over_cap")


def _rewrite_chunk(call: Call, state: _StreamState, payload: Any, data: str,
                   template: dict[str, Any]) -> bytes | None:
    """The bytes to send for one upstream chunk, or None to hold it back."""
    if payload is DONE:
        state.done = True
        return None
    if not isinstance(payload, dict):
        raise UpstreamError("the backend sent a stream chunk that is not an object",
                            code="upstream_malformed")
    if not template:
        template.update({k: payload[k] for k in ("object", "created", "model",
                                                 "system_fingerprint") if k in payload})
        template["id"] = call.response_id
    usage = payload.get("usage")
    if isinstance(usage, dict):
        state.usage = usage
    choices = payload.get("choices")  # a list of objects (streaming.chunk_choices)
    if not choices:
        state.usage_final = state.usage_final or isinstance(usage, dict)
        return None  # the usage chunk: one summed chunk is sent at the end instead
    changed = False
    chat = call.routed.endpoint == "chat"
    if state.rule is not None:
        choices, changed = cut_choices(state.rule, choices, chat)
        if not choices:
            return None
        payload["choices"] = choices
    for key in ("id", "created"):
        # One completion's chunks share one id (the gateway's, not the backend's) and one
        # time: clients group a stream's chunks by id, and n fanned out as several calls
        # brings several streams, each with its own time.
        if key in template and payload.get(key) != template[key]:
            payload[key] = template[key]
            changed = True
    if usage is not None and not call.routed.include_usage:
        payload.pop("usage")
        changed = True
    for choice in choices:
        index = (choice.get("index") or 0) * state.stride + state.offset
        if index != (choice.get("index") or 0):
            choice["index"] = index
            changed = True
        if chat and isinstance(choice.get("logprobs"), dict):
            conformed = conform_chat_logprobs(choice["logprobs"])
            if conformed is not choice["logprobs"]:
                choice["logprobs"] = conformed
                changed = True
        elif not chat and "logprobs" not in choice:
            choice["logprobs"] = None  # OpenAI's completions chunks always carry the key
            changed = True
        generated = delta_text(choice)
        state.texts[index] = state.texts.get(index, "") + generated
        state.chunks += 1 if generated else 0
        if choice.get("finish_reason") is not None:
            state.finishes[index] = choice["finish_reason"]
            if index in state.finished:
                choice["finish_reason"] = None  # one finish_reason per choice reaches the client
                changed = True
            state.finished.add(index)
    if isinstance(usage, dict):
        state.usage_final = len(state.finished) >= state.expected
    return orjson.dumps(payload) if changed else data.encode()


def _check_complete(call: Call, states: list[_StreamState],
                    streams: list[UpstreamStream]) -> None:
    """Raise ``UpstreamError`` (``stream_truncated``) when a stream ended before its answer
    did (no ``[DONE]``, choices without a finish reason); that stream is marked broken."""
    for state, stream in zip(states, streams, strict=True):
        if not state.done and len(state.finished) < state.expected:
            stream.broke()
            raise UpstreamError("the stream from the backend ended before the answer was complete",
                                code="stream_truncated")


def _usage_chunk(call: Call, template: dict[str, Any]) -> dict[str, Any]:
    chunk = dict(template)
    chunk["choices"] = []
    chunk["usage"] = usage_body(call)
    chunk["router"] = router_info(call)
    return chunk
