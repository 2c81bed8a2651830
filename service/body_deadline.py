"""The deadline on a request's body: all of it within ``client_body_timeout_s`` of its headers.

The server hands the application a request once its headers are in, and the body follows as
the client sends it, with no read timeout of its own (uvicorn has none): a client sending a
few bytes a second, or its headers and then nothing, held its connection and its request for
as long as it liked. ``BodyDeadline`` wraps the request's ``receive``: when the deadline
passes while the request's task waits in it for more of the body, that wait ends in
``BodyDeadlinePassed``, which ``service.admission.AdmissionMiddleware`` answers with a 408 and
``Connection: close`` (the rest of the body, still on its way, is no request to parse).

A deadline on the whole body, not a wait per read: a trickle gives every read something. One
timer per request with a body, cancelled once the body is in (a request without one, a GET,
costs nothing), as ``service.admission._Tracker`` times the sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class BodyDeadlinePassed(BaseException):
    """The request's body was not all received within ``client_body_timeout_s``. A
    ``BaseException``, like a cancellation, so that no handler on its way (FastAPI's body
    parsing turns any ``Exception`` into a 400) takes it for something else;
    ``AdmissionMiddleware`` ends the request with it."""


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's headers announce a body (a ``Content-Length`` above 0, or a
    ``Transfer-Encoding``): without one the server says at once that there is none."""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class BodyDeadline:
    """``receive`` for one request with a body (see the module docstring).

    Args:
        receive: the server's ``receive``.
        timeout_s: seconds from now until the body must be all in.

    Only the task that made it (the request's) is ever cancelled: a watcher of the client
    (``service.disconnect``) reads ``receive`` only after the body, in a task of its own.
    """

    __slots__ = ("_receive", "_task", "_timer", "_waiting", "_late", "expired", "done",
                 "timeout_s")

    def __init__(self, receive: Receive, timeout_s: float):
        task = asyncio.current_task()
        assert task is not None, "BodyDeadline runs inside the request's task"
        self._receive = receive
        self._task = task
        self.timeout_s = timeout_s
        self._waiting = False  # the request's task waits in ``receive`` now
        self._late = False  # the deadline passed while it did not
        self.expired = False  # the deadline passed while it waited: it was cancelled for it
        self.done = False  # the body is all in (or the client left)
        self._timer: asyncio.Handle | None = asyncio.get_running_loop().call_later(
            timeout_s, self._expire)

    async def receive(self) -> Message:
        """The next message from the server; past the deadline, ``BodyDeadlinePassed``
        instead of a wait for more of the body.

        Raises:
            BodyDeadlinePassed: the deadline passed while the request's task waited here.
        """
        if self.done:
            return await self._receive()
        mine = asyncio.current_task() is self._task
        if mine and self._late:
            # A part of the body the server already holds still comes back at once; a wait
            # for more is cut on the loop's next turn.
            self._timer = asyncio.get_running_loop().call_soon(self._expire)
        self._waiting = mine
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self.expired or self._task.uncancel() > 0:
                raise  # not ours, or another cancellation too (the shutdown deadline)
            raise BodyDeadlinePassed() from None
        finally:
            self._waiting = False
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.close()  # the body is in, or the client has gone: nothing more to time
        return message

    def _expire(self) -> None:
        self._timer = None
        if self.done:
            return
        if self._waiting:
            self.expired = True
            self._task.cancel("the request's body did not arrive in time")
        else:
            self._late = True

    def close(self) -> None:
        """Stop the timer (the body is in, or the request is over)."""
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
