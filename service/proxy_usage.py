"""What a forwarded call (``/v1/responses``, ``/v1/embeddings``, ...) gave its client and
cost, read from the reply as it passes through to the client.

The gateway does not parse these replies, but they spend tokens upstream like any completion,
so their ``usage`` is counted in ``ttc_tokens_total`` (``strategy``, ``policy`` and ``arm``
``none``: no strategy ran, and no request of ``ttc_requests_total`` goes with them, so no mean
per request moves), in ``ttc_key_tokens_total`` and against the key's token limits.

The usage is the last ``"usage"`` object in the reply's final ``TAIL_BYTES``: a JSON reply
ends with it (chat, embeddings, the Responses API), a stream's last event carries it (a
chat chunk's ``usage``, the Responses API's ``response.completed``), and a later usage is a
running total that replaces an earlier one. Its fields are OpenAI's two spellings:
``prompt_tokens`` / ``completion_tokens`` and the Responses API's ``input_tokens`` /
``output_tokens``, with reasoning reported apart from them counted in
(``upstream.completion_tokens_of``). A whole reply with no usage is counted as nothing: the
gateway cannot tell what an unknown endpoint generated. A reply that did not end (it broke
off, or its client left) and a call that failed once it reached the backend (a 5xx, a body
cut off or not JSON) may have generated their whole grant, and are charged it, as a
completion's failed call is: the call's reservation (``max_output_tokens``, or what the key
had left), else its own cap; a call the backend refused (a 4xx, a 429) or never reached is
charged nothing, and so is one cancelled before it left the gateway (it waited for the
backend's concurrency slot at the shutdown deadline: ``charge_cancelled``).

An Assistants API run (``POST /v1/threads/runs``, ``POST /v1/threads/{id}/runs``: ``starts_run``)
names no model, yet it generates, and mostly after its reply: a run comes back ``queued`` and
runs on. So it reserves from its key like any call that may generate (its own
``max_completion_tokens``, else what the key has left, which the route sends as its cap) and
is charged the ``usage`` of the finished run its reply ends with (a stream that ran to its
end), else its whole grant (``run_usage``): a reply that ends before its run did cannot say
what the run will spend, only the cap it runs under.

``ttc_proxied_requests_total{endpoint, status}`` counts each call once, with what its client
got: the backend's status for a reply that ended whole, the error's (502, 504) for one that
broke off after its headers, 499 for one whose client left before its end.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from service import metrics
from service.errors import ClientClosed, GatewayError
from service.limits import Reservation
from service.upstream import completion_tokens_of, is_token_count, may_have_generated

# The end of a reply kept to find its usage in: a Responses API object puts ``usage`` after
# its whole output, and a stream's final event repeats that output.
TAIL_BYTES = 1 << 20
_KEY = b'"usage"'
_DECODER = json.JSONDecoder()
# The forwarded paths (without ``/v1/``) that start a run: a thread's, or a new thread's.
_RUN_PATH = re.compile(r"threads/(?:[^/]+/)?runs/?")
# The statuses of a run that is over: its usage is the whole run's.
_RUN_ENDED = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
# The fields of a run's body that carry prompt text (the thread's earlier messages do too,
# unseen by the gateway).
_RUN_PROMPT_FIELDS = ("instructions", "additional_instructions", "additional_messages",
                      "thread")


def read_usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of the last usage object in ``tail`` (bytes of a
    reply), or None when it has none. A usage that is null, or whose counts are not
    non-negative integers, does not count."""
    text = tail.decode("utf-8", errors="replace")
    end = len(text)
    while (found := text.rfind(_KEY.decode(), 0, end)) >= 0:
        end = found
        start = text.find("{", found + len(_KEY), found + len(_KEY) + 64)
        if start < 0 or text[found + len(_KEY):start].strip() != ":":
            continue  # "usage": null, or the word inside a string
        try:
            usage, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        counts = _counts(usage)
        if counts is not None:
            return counts
    return None


def _counts(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = (completion_tokens_of(usage)
                  if "completion_tokens" in usage or "output_tokens" in usage else 0)
    if not (is_token_count(prompt) and is_token_count(completion)):
        return None
    return (prompt, completion) if prompt or completion else None


def starts_run(method: str, path: str) -> bool:
    """Whether ``METHOD /v1/{path}`` starts an Assistants API run (see the module
    docstring)."""
    return method == "POST" and _RUN_PATH.fullmatch(path) is not None


def run_prompt_text(body: dict[str, Any]) -> Any:
    """What a run's body adds to its prompt (instructions, messages), for an estimate."""
    return [body[name] for name in _RUN_PROMPT_FIELDS if body.get(name)]


def run_usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of a run reply (``tail``: its bytes): the usage of
    the last run object in it (a JSON reply's run, a stream's last ``thread.run.*`` event)
    when that run is over; None when it is not (``queued``, ``requires_action``: the run goes
    on) or reports no usage. A step's usage is a part of the run's, never its whole."""
    events = [line[5:].strip() for line in tail.split(b"\n") if line.startswith(b"data:")]
    for payload in reversed(events or [tail]):
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("object") == "thread.run":
            return _counts(data.get("usage")) if data.get("status") in _RUN_ENDED else None
    return None


def output_cap(body: dict[str, Any]) -> int | None:
    """The call's own cap on what it generates: ``max_output_tokens`` (the Responses API),
    else ``max_completion_tokens`` or ``max_tokens`` (chat-like and Messages APIs); None
    when it sets none that is a positive integer."""
    for name in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        cap = body.get(name)
        if is_token_count(cap) and cap > 0:
            return cap
    return None


def _charge(model: str, reservation: Reservation | None, prompt: int, completion: int) -> None:
    """Count one forwarded call's tokens in the metrics and settle its key's reservation
    with them: the one count both use."""
    metrics.record_tokens(metrics.NO_LABEL, metrics.NO_LABEL, metrics.NO_LABEL, model,
                          prompt, completion)
    if reservation is not None:
        reservation.settle_with(completion, prompt)
        for kind, tokens in (("prompt", prompt), ("completion", completion)):
            if tokens:
                metrics.child(metrics.KEY_TOKENS, reservation.key_name, kind).inc(tokens)


def _charge_grant(model: str, reservation: Reservation | None, grant: int | None) -> None:
    """Charge a call that may have generated without reporting it: its grant, and the
    prompt tokens its key reserved (the estimate: the backend read the prompt)."""
    _charge(model, reservation, reservation.prompt_tokens if reservation is not None else 0,
            grant or 0)


def charge_failed(error: GatewayError, model: str, reservation: Reservation | None,
                  grant: int | None) -> None:
    """Charge a forwarded call that failed before its reply reached the client: ``grant``
    (completion tokens) when it may have generated (``upstream.may_have_generated``), else
    nothing, its reservation given back."""
    if may_have_generated(error):
        _charge_grant(model, reservation, grant)
    else:
        _charge(model, reservation, 0, 0)


def charge_cancelled(model: str, reservation: Reservation | None, grant: int | None, *,
                     sent: bool) -> None:
    """Charge a forwarded call cancelled before its reply came (the shutdown deadline): its
    grant when ``sent`` (an attempt in flight, or an earlier one that failed as one that may
    have generated: the backend may be generating all of it), nothing when it was still
    waiting for the backend's concurrency slot, or for a retry's backoff after attempts
    that generated nothing (a 429, a refused connection)."""
    if sent:
        _charge_grant(model, reservation, grant)
    else:
        _charge(model, reservation, 0, 0)


class Passing:
    """One forwarded reply on its way to the client (see the module docstring).

    Args:
        endpoint: the ``endpoint`` label (``service.routes.proxy.KNOWN_ENDPOINTS`` or
            ``other``).
        status: the reply's HTTP status.
        model: the model the call named; None for a call that names none (its tokens are
            not counted: nothing can generate under no model).
        reservation: its key's token reservation, settled here (None without keys).
        grant: the completion tokens it may generate (its reservation's, else its cap);
            charged when it does not end whole and reports no usage.
        run: the call starts a run (``starts_run``): charged its finished run's usage, else
            its grant, however its reply ended.
    """

    def __init__(self, endpoint: str, status: int, model: str | None,
                 reservation: Reservation | None, grant: int | None, *, run: bool = False):
        self._endpoint = endpoint
        self._status = status
        self._model = model
        self._reservation = reservation
        self._grant = grant
        self._run = run
        self._tail = bytearray()
        self._finished = False

    async def chunks(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` passed through unchanged; the reply is counted when they end or break
        off, or the client stops reading them."""
        try:
            async for chunk in chunks:
                if self._model is not None:
                    self._tail += chunk
                    if len(self._tail) > 2 * TAIL_BYTES:
                        del self._tail[:-TAIL_BYTES]
                yield chunk
        except GatewayError as exc:  # the body broke off: the client got that error
            self.finish(exc.status, whole=False)
            raise
        except BaseException:  # closed or cancelled: the client went away
            self.finish(ClientClosed.status, whole=False)
            raise
        self.finish(self._status, whole=True)

    def finish(self, status: int, *, whole: bool) -> None:
        """Count the reply once (later calls do nothing): ``status`` in
        ``ttc_proxied_requests_total``, and its tokens (see the module docstring)."""
        if self._finished:
            return
        self._finished = True
        metrics.PROXIED.labels(self._endpoint, str(status)).inc()
        if self._model is None:
            return
        tail = bytes(self._tail[-TAIL_BYTES:])
        usage = run_usage(tail) if self._run else read_usage(tail)
        if usage is None and (self._run or not whole):
            _charge_grant(self._model, self._reservation, self._grant)
        else:
            _charge(self._model, self._reservation, *(usage or (0, 0)))

    async def close(self, body: Any) -> None:
        """After the response (its background task): close the upstream ``body`` and count
        a reply whose client left before it was read (one never started included)."""
        try:
            await body.aclose()
        finally:
            self.finish(ClientClosed.status, whole=False)
