"""Reading upstream SSE streams: parsed events, several streams merged, closing them safely,
and a client stream's first chunk read before its response starts (``started``).

Shared by every strategy that streams from a backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import orjson

from service import sse
from service.errors import GatewayError, UpstreamError
from service.upstream import UpstreamStream

DONE = object()  # the payload of a ``data: [DONE]`` event


async def events(stream: UpstreamStream) -> AsyncGenerator[tuple[Any, str], None]:
    """(parsed JSON payload, data text) of each event of one upstream stream; the payload is
    ``DONE`` for ``[DONE]``, and an object's ``choices`` are of the shape ``chunk_choices``
    checks. A stream that fails here is marked broken (``broke()``): its attempt is counted
    as a ``stream_error``.

    Raises:
        UpstreamError: the stream broke off, sent an error event, is not UTF-8 SSE with
            JSON events, or sent a chunk of the wrong shape (``UpstreamTimeout``: it stalled
            past the read timeout).
    """
    decoder = sse.EventDecoder()
    try:
        async for chunk in stream.chunks():
            for event in decoder.feed(chunk):
                parsed = parse_event(event)
                if parsed is not None:
                    yield parsed
        for event in decoder.close():
            parsed = parse_event(event)
            if parsed is not None:
                yield parsed
    except UnicodeDecodeError as exc:
        stream.broke()
        raise UpstreamError("the backend sent a stream that is not UTF-8",
                            code="upstream_malformed") from exc
    except GatewayError:  # broken off, timed out, an error event, an event that is not JSON
        stream.broke()
        raise


def parse_event(event: sse.Event) -> tuple[Any, str] | None:
    if event.data is None:
        return None
    if event.data.strip() == "[DONE]":
        return DONE, event.data
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("the backend sent a stream event that is not JSON",
                            code="upstream_malformed") from exc
    if isinstance(payload, dict) and payload.get("error") is not None:
        detail = payload["error"]
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        raise UpstreamError(f"the backend reported an error in its stream: {message}",
                            code="upstream_stream_error")
    if isinstance(payload, dict):
        chunk_choices(payload)  # a chunk of the wrong shape breaks the stream here
    return payload, event.data


def chunk_choices(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``choices`` of one parsed stream chunk (``[]`` when it has none, as a usage chunk),
    each an object with an integer ``index`` (0 when absent or null) and a ``delta`` that is
    an object when present.

    Raises:
        UpstreamError: ``upstream_malformed``, the chunk is not of that shape (a
            ``choices`` that is not a list of objects, an ``index`` that is not a
            non-negative integer, a ``delta`` that is not an object): the stream cannot be
            read on, and ends with an error event like any other broken stream.
    """
    choices = payload.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise UpstreamError("the backend sent a stream chunk whose choices are not a list of "
                            "objects", code="upstream_malformed")
    for choice in choices:
        index = choice.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                                  or index < 0):
            raise UpstreamError("the backend sent a stream chunk whose choice index is not "
                                "a non-negative integer", code="upstream_malformed")
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise UpstreamError("the backend sent a stream chunk whose delta is not an object",
                                code="upstream_malformed")
    return choices


async def merged_events(streams: list[UpstreamStream],
                        stops: Sequence[Callable[[Any], bool] | None] | None = None,
                        ) -> AsyncGenerator[tuple[int, tuple[Any, str]], None]:
    """(stream index, event) pairs from all streams, in arrival order.

    ``stops``: per stream, None or a predicate given each of its payloads in order (before
    the caller sees it, which may change it); when it says True, that stream ends after that
    event and is closed at once (by the task that reads it), the others go on: a backend
    generating past its grant (``service.strategies.capped.CutRule``) must stop generating,
    not only be ignored.
    """
    if len(streams) == 1:
        stop = stops[0] if stops else None
        stopped = False
        async with aclosing(events(streams[0])) as upstream:
            async for event in upstream:
                stopped = stop is not None and stop(event[0])
                yield 0, event
                if stopped:
                    break
        if stopped:
            await close_all(streams)
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: UpstreamStream) -> None:
        stop = stops[i] if stops else None
        try:
            async with aclosing(events(stream)) as upstream:
                async for event in upstream:
                    stopped = stop is not None and stop(event[0])
                    await queue.put((i, event))
                    if stopped:
                        await close_all([stream])
                        break
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




async def close_all(streams: list[UpstreamStream]) -> None:
    """Close upstream streams, also while the task is being cancelled.

    When the client goes away Starlette cancels the task, and anyio re-raises the cancellation
    at every await: the shield lets the connections close so nothing leaks.
    """
    with anyio.CancelScope(shield=True):
        for stream in streams:
            await stream.aclose()


async def started(body: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``body`` (a client stream's SSE body) with its first chunk already read, so that the
    response starts only once the stream has: a body that fails before it sends anything (its
    backend's 200 stream held only an error event, was empty, or was not SSE) raises here,
    and the client gets that failure as its HTTP status in the envelope, as it gets a
    refusal, rather than a 200 stream holding nothing but the error. The strategies' bodies
    raise such an early failure instead of sending it as an error event.

    Raises:
        GatewayError: ``body`` failed before its first chunk (it is closed first).
    """
    try:
        first = await anext(body)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await body.aclose()
        raise
    return _after(first, body)


async def _after(first: bytes | None, body: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    async with aclosing(body):
        if first is not None:
            yield first
        async for chunk in body:
            yield chunk
