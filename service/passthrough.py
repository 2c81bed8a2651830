"""The pass-through execution of a completion request (strategy ``direct``), JSON and SSE.

The client's body goes upstream as it came (``router`` removed, ``model`` resolved, token caps
set from the budget). Two things are added for every backend:

- usage is always asked for (``stream_options.include_usage``) and summed over every upstream
  call, whatever the client asked; the usage chunk is stripped from the client's stream when it
  did not ask for it;
- ``n`` is honoured against backends that ignore it (llama-cpp-python's server) by fanning out
  ``n`` single-choice calls, at most ``fanout_concurrency`` at a time, merged into one reply
  whose choices are re-indexed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from router_models.prompt import content_text
from service import sse
from service.backends import BackendRegistry
from service.errors import GatewayError, InvalidRequest, UpstreamError, error_json
from service.observe import Outcome, Reporter
from service.protocol import RoutedRequest
from service.upstream import Accounting, Backend, UpstreamClient, UpstreamStream

STRATEGY = "direct"
PATHS = {"chat": "/chat/completions", "completions": "/completions"}


@dataclass
class Call:
    """Everything one pass-through request needs; built by the route, used once."""

    routed: RoutedRequest
    backend: Backend
    upstream_model: str
    client: UpstreamClient
    registry: BackendRegistry
    fanout_concurrency: int
    reporter: Reporter = field(default_factory=Reporter)
    acct: Accounting = field(default_factory=Accounting)
    response_id: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def path(self) -> str:
        return PATHS[self.routed.endpoint]


def upstream_body(call: Call, *, n: int, sample: int = 0) -> dict[str, Any]:
    """The body of one upstream call asking for ``n`` choices.

    Token caps: ``max_tokens`` and ``max_completion_tokens`` are both set to the same value
    (a backend may honour either one), the smaller of the client's caps and, when a
    ``budget_tokens`` is given, the budget divided by the choices asked for. Fanned-out calls
    with a client ``seed`` get ``seed + sample`` so that they are not all the same sample.

    Raises:
        InvalidRequest: a budget smaller than the number of choices.
    """
    routed = call.routed
    body = dict(routed.body)
    body["model"] = call.upstream_model
    cap = routed.max_tokens
    if routed.controls.budget_tokens is not None:
        per_choice = routed.controls.budget_tokens // routed.n
        if per_choice < 1:
            raise InvalidRequest("budget_tokens is smaller than the number of choices n",
                                 param="router.budget_tokens")
        cap = per_choice if cap is None else min(cap, per_choice)
    if cap is not None:
        body["max_tokens"] = cap
        if "max_completion_tokens" in body or routed.endpoint == "chat":
            body["max_completion_tokens"] = cap
    if n != routed.n or "n" in body:
        body["n"] = n
    if sample and isinstance(body.get("seed"), int):
        body["seed"] = body["seed"] + sample
    if routed.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return body


def router_info(call: Call, *, samples: int) -> dict[str, Any]:
    """The ``router`` object of a response (fields as ../shared/INTERFACE.md lists)."""
    return {
        "decision_id": call.routed.decision_id,
        "strategy": STRATEGY,
        "policy": None,
        "arm": None,
        "budget_tokens": call.routed.controls.budget_tokens,
        "spent_tokens": call.acct.completion_tokens,
        "upstream_calls": call.acct.upstream_calls,
        "samples": samples,
        "votes": None,
        "search_calls": 0,
        "scores": None,
        "usage_estimated": call.acct.estimated,
    }


def _fans_out(call: Call) -> bool:
    return call.routed.n > 1 and call.registry.supports_n(call.backend) is False


# --- JSON -----------------------------------------------------------------------------------


async def complete_json(call: Call) -> dict[str, Any]:
    """Run the request without streaming and return the merged OpenAI response body.

    Raises the ``UpstreamError`` family; tokens of calls that succeeded before a failure are
    still in ``call.acct``.
    """
    n = call.routed.n
    if _fans_out(call):
        replies = await _fan_out_json(call, range(n))
    else:
        first = await _one_json(call, n=n, sample=0)
        replies = [first]
        got = len(first["choices"])
        if n > 1 and got < n:  # the backend ignores n (llama-cpp-python's server)
            call.registry.note_n_support(call.backend, False)
            replies += await _fan_out_json(call, range(max(got, 1), n))
        elif n > 1:
            call.registry.note_n_support(call.backend, True)
    return _merge_json(call, replies)


async def _one_json(call: Call, *, n: int, sample: int) -> dict[str, Any]:
    reply = await call.client.post_json(call.backend, call.path,
                                        upstream_body(call, n=n, sample=sample), call.acct)
    body = reply.body
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise UpstreamError(f"backend {call.backend.label} returned no choices",
                            code="upstream_malformed")
    call.acct.add_usage(body.get("usage") if isinstance(body.get("usage"), dict) else None)
    return body


async def _fan_out_json(call: Call, samples: range) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(call.fanout_concurrency)

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
    if len(replies) > 1:
        choices: list[dict[str, Any]] = []
        for reply in replies:
            for choice in reply["choices"]:
                choice = dict(choice)
                choice["index"] = len(choices)
                choices.append(choice)
        merged["choices"] = choices
    call.response_id = merged.get("id") if isinstance(merged.get("id"), str) else None
    usage = dict(merged.get("usage") or {})
    usage["prompt_tokens"] = call.acct.prompt_tokens
    usage["completion_tokens"] = call.acct.completion_tokens
    usage["total_tokens"] = call.acct.prompt_tokens + call.acct.completion_tokens
    merged["usage"] = usage
    merged["router"] = router_info(call, samples=len(merged["choices"]))
    return merged


# --- SSE ------------------------------------------------------------------------------------


@dataclass
class _StreamState:
    """What one upstream stream showed: its last usage (running totals: the last one wins),
    the choices that finished, and a token estimate for backends that send no usage."""

    offset: int
    usage: dict[str, Any] | None = None
    finished: set[int] = field(default_factory=set)
    tokens_seen: int = 0
    done: bool = False


async def open_streams(call: Call) -> list[UpstreamStream]:
    """Open the upstream stream(s) before the client's response starts, so that a refusal
    reaches the client as an HTTP status. One stream, or ``n`` when fanning out.

    Raises the ``UpstreamError`` family; streams already opened are closed first.
    """
    if not _fans_out(call):
        return [await call.client.open_stream(call.backend, call.path,
                                              upstream_body(call, n=call.routed.n), call.acct)]
    gate = asyncio.Semaphore(call.fanout_concurrency)

    async def one(sample: int) -> UpstreamStream:
        async with gate:
            return await call.client.open_stream(
                call.backend, call.path, upstream_body(call, n=1, sample=sample), call.acct)

    results = await asyncio.gather(*(one(s) for s in range(call.routed.n)),
                                   return_exceptions=True)
    streams = [r for r in results if isinstance(r, UpstreamStream)]
    for result in results:
        if isinstance(result, BaseException):
            for stream in streams:
                await stream.aclose()
            raise result
    return streams


async def relay(call: Call, streams: list[UpstreamStream],
                on_done: Any = None) -> AsyncIterator[bytes]:
    """The client's SSE body: upstream chunks passed through (byte for byte unless a choice
    index or a usage field had to change), one usage chunk at the end when the client asked,
    then ``data: [DONE]``. A broken upstream ends the stream with an error event.

    ``on_done(error_or_None)`` is called once at the end, also when the client goes away.
    """
    states = [_StreamState(offset=i if len(streams) > 1 else 0) for i in range(len(streams))]
    template: dict[str, Any] = {}
    error: GatewayError | None = None
    try:
        async with aclosing(_merged_events(streams)) as events:
            async for index, (payload, data) in events:
                out = _rewrite_chunk(call, states[index], payload, data, template)
                if out is not None:
                    yield sse.data_event(out)
        _check_complete(call, states)
    except GatewayError as exc:
        error = exc
    finally:
        # When the client goes away the task is cancelled, and anyio re-raises the
        # cancellation at every await: shield the clean-up so the upstream connections are
        # closed and the tokens already spent are still counted.
        with anyio.CancelScope(shield=True):
            for stream in streams:
                await stream.aclose()
        _settle_usage(call, states)
        if on_done is not None:
            on_done(error)
    if error is not None:
        yield sse.data_event(error_json(error))
    elif call.routed.include_usage:
        yield sse.data_event(orjson.dumps(_usage_chunk(call, template)))
    yield sse.DONE


async def _merged_events(streams: list[UpstreamStream],
                         ) -> AsyncGenerator[tuple[int, tuple[Any, str]], None]:
    """(stream index, event) pairs from all streams, in arrival order."""
    if len(streams) == 1:
        async for event in _events(streams[0]):
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: UpstreamStream) -> None:
        try:
            async for event in _events(stream):
                await queue.put((i, event))
        except GatewayError as exc:
            await queue.put((i, exc))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is end:
                running -= 1
            elif isinstance(item, GatewayError):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_DONE = object()


async def _events(stream: UpstreamStream) -> AsyncIterator[tuple[Any, str]]:
    """(parsed JSON payload, data text) of each event of one upstream stream; the payload is
    ``_DONE`` for ``[DONE]``."""
    decoder = sse.EventDecoder()
    try:
        async for chunk in stream.chunks():
            for event in decoder.feed(chunk):
                parsed = _parse_event(event)
                if parsed is not None:
                    yield parsed
        for event in decoder.close():
            parsed = _parse_event(event)
            if parsed is not None:
                yield parsed
    except UnicodeDecodeError as exc:
        raise UpstreamError("the backend sent a stream that is not UTF-8",
                            code="upstream_malformed") from exc


def _parse_event(event: sse.Event) -> tuple[Any, str] | None:
    if event.data is None:
        return None
    if event.data.strip() == "[DONE]":
        return _DONE, event.data
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("the backend sent a stream event that is not JSON",
                            code="upstream_malformed") from exc
    if isinstance(payload, dict) and payload.get("error") is not None:
        detail = payload["error"]
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        raise UpstreamError(f"the backend reported an error mid-stream: {message}",
                            code="upstream_stream_error")
    return payload, event.data


def _rewrite_chunk(call: Call, state: _StreamState, payload: Any, data: str,
                   template: dict[str, Any]) -> bytes | None:
    """The bytes to send for one upstream chunk, or None to hold it back."""
    if payload is _DONE:
        state.done = True
        return None
    if not isinstance(payload, dict):
        raise UpstreamError("the backend sent a stream chunk that is not an object",
                            code="upstream_malformed")
    if not template:
        template.update({k: payload[k] for k in ("id", "object", "created", "model",
                                                 "system_fingerprint") if k in payload})
        if isinstance(template.get("id"), str):
            call.response_id = template["id"]
    usage = payload.get("usage")
    if isinstance(usage, dict):
        state.usage = usage
    choices = payload.get("choices")
    if not choices:
        return None  # the usage chunk: one summed chunk is sent at the end instead
    changed = False
    if usage is not None and not call.routed.include_usage:
        payload.pop("usage")
        changed = True
    for choice in choices:
        index = int(choice.get("index", 0)) + state.offset
        if state.offset:
            choice["index"] = index
            changed = True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
            state.tokens_seen += 1
        if choice.get("finish_reason") is not None:
            if index in state.finished:
                choice["finish_reason"] = None  # one finish_reason per choice reaches the client
                changed = True
            state.finished.add(index)
    return orjson.dumps(payload) if changed else data.encode()


def _check_complete(call: Call, states: list[_StreamState]) -> None:
    for state in states:
        expected = 1 if len(states) > 1 else call.routed.n
        if not state.done and len(state.finished) < expected:
            raise UpstreamError("the stream from the backend ended before the answer was complete",
                                code="stream_truncated")


def _settle_usage(call: Call, states: list[_StreamState]) -> None:
    # A backend that sends no usage in streams (llama-cpp-python's server ignores
    # stream_options) still spent tokens: count one completion token per content chunk
    # (servers send a token per chunk) and estimate the prompt, and say it is an estimate.
    for state in states:
        if state.usage is not None:
            call.acct.add_usage(state.usage)
        else:
            call.acct.completion_tokens += state.tokens_seen
            call.acct.prompt_tokens += estimate_prompt_tokens(call.routed.body)
            call.acct.estimated = True


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A prompt's size in tokens when the backend did not report it: one token per 4
    characters of prompt text, the rule of thumb OpenAI gives for English text."""
    if "messages" in body:
        chars = sum(len(content_text(m.get("content"))) + 4 for m in body["messages"]
                    if isinstance(m, dict))
    else:
        prompt = body.get("prompt")
        chars = len(prompt) if isinstance(prompt, str) else len(orjson.dumps(prompt))
    return max(1, -(-chars // 4))


def _usage_chunk(call: Call, template: dict[str, Any]) -> dict[str, Any]:
    chunk = dict(template)
    chunk["choices"] = []
    chunk["usage"] = {
        "prompt_tokens": call.acct.prompt_tokens,
        "completion_tokens": call.acct.completion_tokens,
        "total_tokens": call.acct.prompt_tokens + call.acct.completion_tokens,
    }
    chunk["router"] = router_info(call, samples=call.routed.n)
    return chunk


def record(call: Call, status: str) -> None:
    """Report the finished request (metrics, and the request log when there is one)."""
    call.reporter.report(Outcome(
        decision_id=call.routed.decision_id,
        response_id=call.response_id,
        endpoint=call.routed.endpoint,
        model=call.upstream_model,
        strategy=STRATEGY,
        policy=None,
        arm=None,
        status=status,
        budget_tokens=call.routed.controls.budget_tokens,
        prompt_tokens=call.acct.prompt_tokens,
        completion_tokens=call.acct.completion_tokens,
        upstream_calls=call.acct.upstream_calls,
        samples=call.routed.n,
        duration_s=time.perf_counter() - call.started,
        wait_s=call.acct.wait_s,
        estimated=call.acct.estimated,
        stream=call.routed.stream,
    ))
