"""A client that goes away: the server's ``http.disconnect`` noted in the scope, and the work
of a JSON request stopped when it comes.

A stream notices its client leaving by itself (Starlette cancels the body that is being
sent); a JSON request sends nothing until its answer is ready, so without ``ClientWatch`` a
vote or a long chain whose client gave up would draw every sample and be logged 200,
answered to nobody. ``noting_disconnect`` marks ``scope[DISCONNECTED]`` either way, which is
what tells a client's leaving from the shutdown deadline: both cancel the request's task.
``already_left`` asks once, without waiting, whether the client is gone before a strategy
starts: one that left while the request was classified or queued costs no upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.latency import DISCONNECTED

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

# Seconds into a request before its client is watched (``ClientWatch``): less than a request
# that is worth stopping takes, more than the gateway's fast answers (a few milliseconds).
WATCH_AFTER_S = 0.05


def noting_disconnect(scope: MutableMapping[str, Any], receive: Receive) -> Receive:
    """``receive`` that marks ``scope[DISCONNECTED]`` when the client goes away: a stream's
    body is then cancelled the same way as at the shutdown deadline, and only this tells the
    two apart (``service.routes.completions``)."""

    async def noted() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope[DISCONNECTED] = True
        return message

    return noted


# Messages ``already_left`` reads at most: a server may repeat an empty body message before
# its disconnect (uvicorn answers one whenever its message event was set without one).
_PEEKS = 4


def already_left(receive: Receive) -> bool:
    """Whether the server has already said that the client went away, asked without waiting
    and without a task: ``receive()`` is stepped by hand once. A server that knows of the
    disconnect answers at once (uvicorn, hypercorn: ``http.disconnect`` from the moment the
    connection is lost); one with nothing to say suspends, and the suspended ``receive()`` is
    closed, never scheduled. Costs a coroutine step: a task per request (``ClientWatch``
    from the start) cost 12-20% more CPU at concurrency 32 (bench/gateway_overhead.py).

    Call it only once the request's body has been read (it takes the messages it reads).
    False when the server's ``receive`` cannot be read this way (an error, an awaitable that
    is not a generator-based coroutine): the request is served as before."""
    for _ in range(_PEEKS):
        try:
            step = receive().__await__()
        except Exception:
            return False
        try:
            step.send(None)
        except StopIteration as answered:
            message = answered.value
            if not isinstance(message, MutableMapping):
                return False
            if message.get("type") == "http.disconnect":
                return True
            continue  # a repeated empty body message: read on
        except Exception:
            return False
        # Suspended: the client is still there. (A receive that swallows the close raises
        # here; there is nothing more to learn from it.)
        with contextlib.suppress(Exception):
            step.close()
        return False
    return False


class ClientWatch:
    """Cancels the task that made it when the client goes away, until ``close()``.

    A task of its own waits on ``receive`` (the request's body must have been read: it
    takes every message) for ``http.disconnect``, then sets ``left`` and cancels the
    request's task, as the shutdown deadline does: the upstream calls in flight are abandoned
    and charged what they may have generated (``service.strategies.metered``), and no call is
    made after. The handler that catches that ``CancelledError`` reads ``left`` to know whose
    it was, and takes it back with ``uncancel()``.

    The watcher starts only ``after_s`` seconds in (a timer until then): most requests are
    answered sooner, and a watcher task from the start cost 12-20% more of the gateway's CPU
    per request at concurrency 32 (bench/gateway_overhead.py against the gateway without it,
    three runs; with the timer, within the noise). A client that left meanwhile is seen at
    once: the server answers ``http.disconnect`` from then on.

    ``close()`` must run as soon as the watched work returns or raises, before any other
    await: the handler then runs on without yielding to the watcher, so a cancellation of the
    watcher's cannot land later, outside the work.
    """

    __slots__ = ("_task", "_receive", "_timer", "_watcher", "left")

    def __init__(self, receive: Receive, after_s: float = WATCH_AFTER_S):
        task = asyncio.current_task()
        assert task is not None, "ClientWatch runs inside the request's task"
        self._task = task
        self._receive = receive
        self.left = False  # the client went away, and the task was cancelled for it
        self._watcher: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch(self._receive))

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass  # a server may repeat an empty body message: only a disconnect counts
        except Exception:  # a server that cannot say: the request is served as before
            return
        self.left = True
        self._task.cancel("the client went away")

    def close(self) -> None:
        """Stop watching."""
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def uncancel(self) -> bool:
        """Take the watcher's cancellation back from the task (call it only when ``left``),
        so that the handler can end without it; False when another one is pending as well
        (the shutdown deadline's), which the handler must then let go on."""
        return self._task.uncancel() == 0
