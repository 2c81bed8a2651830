"""Drawing samples under the ledger: the building block of ``parallel_vote`` and
``sequential``.

``draw`` asks for ``count`` samples of at most ``max_tokens`` each. It uses the backend's
``n`` when the backend honours it, and concurrent single-choice calls otherwise (at most
``fanout_concurrency`` calls in flight, an ``n`` call counting as one). Every call reserves
its tokens from the ledger before it is sent and settles with what it cost after
(``service.strategies.metered``: the backend's usage, else its tokenizer's count, else the
grant; a failed call is charged what it may have generated), so calls in flight together
never exceed the budget. Failed calls are dropped and returned as failures; the caller
decides what "all failed" means.

``greedy_first`` (a vote's first wave, ``parallel_vote``): the first sample is a call of its
own at temperature 0, granted before the others, so that a ledger short of the whole wave
shortens the sampled ones rather than the sample that ties go to.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from service.errors import GatewayError, UpstreamError
from service.strategies.base import Call, learnt_n_refused, request_body
from service.strategies.capped import cuts, post_streamed
from service.strategies.metered import Metered


@dataclass(frozen=True)
class Sample:
    """One sampled answer.

    ``choice`` is the backend's choice object (``message`` or ``text``), ``reply`` the whole
    reply it came in (for ``id``, ``model``, ``created``). ``confidence`` is exp(mean token
    logprob) in (0, 1] when the backend returned logprobs, else None.
    """

    choice: dict[str, Any]
    reply: dict[str, Any]
    text: str
    finish_reason: str | None
    confidence: float | None


async def draw(call: Call, count: int, max_tokens: int, *, first_sample: int = 0,
               body_overrides: dict[str, Any] | None = None, greedy_first: bool = False,
               ) -> tuple[list[Sample], list[GatewayError]]:
    """Draw up to ``count`` samples of at most ``max_tokens`` completion tokens each.

    Fewer are drawn when the ledger cannot grant ``max_tokens`` to each. With
    ``greedy_first``, sample ``first_sample`` is drawn at temperature 0 in a call of its own,
    reserved before the others and listed first (module docstring). Returns the samples and
    the errors of failed calls.

    Raises:
        InvalidRequest: the greedy sample's grant finds the budget too small for the request
            (``Metered.reserve``); the other calls' errors are returned, not raised.
    """
    gate = asyncio.Semaphore(call.settings.fanout_concurrency)
    if not greedy_first or count < 1:
        return await _draw(call, count, max_tokens, first_sample, body_overrides, gate)
    greedy = _reserve(call, 1, max_tokens, first_sample,
                      {**(body_overrides or {}), "temperature": 0.0})
    if greedy is None:  # the ledger granted nothing: the budget is spent
        return [], []

    async def first() -> tuple[list[Sample], list[GatewayError]]:
        async with gate:
            try:
                return await _send(call, greedy), []
            except GatewayError as exc:
                return [], [exc]

    try:
        (mine, mine_failed), (rest, rest_failed) = await asyncio.gather(
            first(), _draw(call, count - 1, max_tokens, first_sample + 1, body_overrides, gate))
    finally:
        greedy.give_back_unsent()  # cancelled before it was sent: nothing to charge
    return mine + rest, mine_failed + rest_failed


async def _draw(call: Call, count: int, max_tokens: int, first_sample: int,
                body_overrides: dict[str, Any] | None, gate: asyncio.Semaphore,
                ) -> tuple[list[Sample], list[GatewayError]]:
    supports_n = call.registry.supports_n(call.backend)
    if count > 1 and supports_n is not False:
        return await _draw_with_n(call, count, max_tokens, first_sample, body_overrides, gate)

    async def one(sample: int) -> list[Sample]:
        async with gate:
            return await _call(call, 1, max_tokens, sample, body_overrides)

    results = await asyncio.gather(*(one(first_sample + i) for i in range(count)),
                                   return_exceptions=True)
    return _split(results)


async def _draw_with_n(call: Call, count: int, max_tokens: int, first_sample: int,
                       body_overrides: dict[str, Any] | None, gate: asyncio.Semaphore,
                       ) -> tuple[list[Sample], list[GatewayError]]:
    try:
        async with gate:
            samples = await _call(call, count, max_tokens, first_sample, body_overrides)
    except GatewayError as exc:
        if not learnt_n_refused(call, exc):
            return [], [exc]
        # refused for its n, nothing generated: single calls instead
        return await _draw(call, count, max_tokens, first_sample, body_overrides, gate)
    if not samples:  # the ledger granted nothing: the budget is spent
        return [], []
    if len(samples) < count:  # the backend ignores n: fill up with single calls
        call.registry.note_n_support(call.backend, False)
        more, failures = await _draw(call, count - len(samples), max_tokens,
                                     first_sample + len(samples), body_overrides, gate)
        return samples + more, failures
    call.registry.note_n_support(call.backend, True)
    return samples, []


def _reserve(call: Call, n: int, max_tokens: int, sample: int,
             body_overrides: dict[str, Any] | None) -> Metered | None:
    """The body of one call of ``n`` choices, its grant reserved (None: nothing granted)."""
    body = request_body(call, max_tokens=max_tokens, n=n, sample=sample)
    if body_overrides:
        body.update(body_overrides)
    return Metered.reserve(call, body, max_tokens, n)


async def _call(call: Call, n: int, max_tokens: int, sample: int,
                body_overrides: dict[str, Any] | None) -> list[Sample]:
    metered = _reserve(call, n, max_tokens, sample, body_overrides)
    if metered is None:
        return []
    return await _send(call, metered)


async def _send(call: Call, metered: Metered) -> list[Sample]:
    data = await post_completion(call, metered)
    samples = [_sample(choice, data) for choice in data["choices"] if isinstance(choice, dict)]
    if not samples:  # counted; not "the budget is spent", which an empty list would read as
        raise UpstreamError(f"backend {call.backend.label} returned an empty choices list",
                            code="upstream_malformed")
    return samples


async def post_completion(call: Call, metered: Metered) -> dict[str, Any]:
    """One upstream call of ``metered.body``: the reply body, its cost counted into
    ``call.acct`` and the ledger (also when it fails). Sent non-streamed, unless its backend
    is known to generate past ``max_tokens`` (``capped.cuts``): then it is streamed and
    closed at its grant (``capped.post_streamed``), and the reply is assembled from the
    chunks.

    Raises:
        UpstreamError: the reply has no ``choices`` list; and ``post_json``'s errors (or
            ``post_streamed``'s).
    """
    if cuts(call, metered):
        return await post_streamed(call, metered)
    try:
        reply = await metered.send(lambda body: call.client.post_json(
            call.backend, call.path, body, call.acct, retry=metered.retry,
            sending=metered.sending))
        data = reply.body
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"backend {call.backend.label} returned no choices",
                                code="upstream_malformed")
    except GatewayError as exc:
        metered.fail(exc)
        raise
    except BaseException:  # cancelled: once sent, the backend may be generating the grant
        if not metered.give_back_unsent():
            metered.fail(UpstreamError("the call was abandoned", code="connection_lost"))
        raise
    if not isinstance(data.get("usage"), dict):
        data["usage"] = None
    try:
        await metered.finish(data)
    except BaseException:  # cancelled while counting: charge the grant
        metered.abandon(data["usage"], "")
        raise
    return data


def _sample(choice: dict[str, Any], reply: dict[str, Any]) -> Sample:
    return Sample(choice=choice, reply=reply, text=choice_text(choice),
                  finish_reason=choice.get("finish_reason"), confidence=_confidence(choice))


def choice_text(choice: dict[str, Any]) -> str:
    """The text of a chat (``message.content``) or completions (``text``) choice."""
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _confidence(choice: dict[str, Any]) -> float | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    values: list[float] = []
    content = logprobs.get("content")
    if isinstance(content, list):  # chat format
        values = [t["logprob"] for t in content
                  if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
    elif isinstance(logprobs.get("token_logprobs"), list):  # completions format
        values = [v for v in logprobs["token_logprobs"] if isinstance(v, (int, float))]
    if not values:
        return None
    return math.exp(sum(values) / len(values))


def _split(results: list[Any]) -> tuple[list[Sample], list[GatewayError]]:
    samples: list[Sample] = []
    failures: list[GatewayError] = []
    for result in results:
        if isinstance(result, GatewayError):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            samples.extend(result)
    return samples, failures
