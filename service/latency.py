"""What a client waits for, measured where its bytes leave: the gateway's own overhead per
request (the ``x-ttc-overhead-ms`` response header), and for streams the time to first token
and the inter-token latency per strategy (``ttc_time_to_first_token_seconds``,
``ttc_inter_token_latency_seconds``).

``ClientTimer`` wraps the ASGI ``send`` of one completion request (``service.hotpath``). The
clock starts when the request arrives (``RECEIVED`` in the scope, also the ``Call``'s start);
the route puts its ``Call`` in the scope under ``CALL``, which gives the strategy and the
upstream wait.

- Overhead = time from arrival to the response's headers, less the time spent waiting on
  backends (``Accounting.wait_s``): for a JSON reply the whole request's overhead, for a stream
  the part before its first byte (parsing, classifying, deciding, opening the upstream stream).
  MLflow's AI gateway returns its overhead the same way.
- A token event is an SSE event that carries generated text (a non-empty ``content``,
  ``text``, ``reasoning_content`` or tool-call ``arguments`` string): servers send one token
  per event, the gateway passes them on as they come. Time to first token runs from arrival
  to the first such event sent; inter-token latency is the gap between consecutive ones.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from service import metrics

if TYPE_CHECKING:
    from service.strategies.base import Call

RECEIVED = "ttc.received"  # scope key: time.perf_counter() when the request arrived
CALL = "ttc.call"  # scope key: the request's ``Call``, set by the completion route
# scope key: True once the server said the client went away (``http.disconnect``), set by
# ``service.hotpath``: a stream cancelled after it was cut by the client, not by a shutdown.
DISCONNECTED = "ttc.disconnected"
OVERHEAD_HEADER = b"x-ttc-overhead-ms"

_TOKEN_TEXT = re.compile(rb'"(?:content|text|reasoning_content|arguments)"\s*:\s*"(?!")')

Message = MutableMapping[str, Any]


class ClientTimer:
    """The ``send`` of one request, timing what the client receives (see the module)."""

    __slots__ = ("_scope", "_send", "_received", "_strategy", "_last_token")

    def __init__(self, scope: MutableMapping[str, Any], send: Callable[[Message],
                                                                          Awaitable[None]]):
        self._scope = scope
        self._send = send
        self._received: float = scope[RECEIVED]
        self._strategy: str | None = None  # set for a stream: its token events are timed
        self._last_token: float | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._strategy is not None and _TOKEN_TEXT.search(message.get("body", b"")):
                self._token(time.perf_counter())
        elif kind == "http.response.start":
            call: Call | None = self._scope.get(CALL)
            if call is not None:
                overhead_ms = overhead_s(call, self._received) * 1000
                message["headers"] = [*message.get("headers", ()),
                                      (OVERHEAD_HEADER, b"%.3f" % overhead_ms)]
                if call.routed.stream and message.get("status") == 200:
                    self._strategy = call.strategy
        await self._send(message)

    def _token(self, now: float) -> None:
        assert self._strategy is not None
        if self._last_token is None:
            metrics.child(metrics.TIME_TO_FIRST_TOKEN, self._strategy).observe(
                now - self._received)
        else:
            metrics.child(metrics.INTER_TOKEN_LATENCY, self._strategy).observe(
                now - self._last_token)
        self._last_token = now


def overhead_s(call: Call, received: float) -> float:
    """Seconds the gateway itself spent on ``call`` from ``received`` until now: wall time
    less the upstream wait (never negative)."""
    return max(0.0, time.perf_counter() - received - call.acct.wait_s)
