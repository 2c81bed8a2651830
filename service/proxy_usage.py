"""What a forwarded call (``/v1/responses``, ``/v1/embeddings``, ...) cost, read from the reply
as it passes through to the client.

The gateway does not parse these replies, but they spend tokens upstream like any completion,
so their ``usage`` is counted in ``ttc_tokens_total`` (``strategy``, ``policy`` and ``arm``
``none``: no strategy ran, and no request of ``ttc_requests_total`` goes with them, so no mean
per request moves), in ``ttc_key_tokens_total`` and against the key's token limits.

The usage is the last ``"usage"`` object in the reply's final ``TAIL_BYTES``: a JSON reply
ends with it (chat, embeddings, the Responses API), a stream's last event carries it (a
chat chunk's ``usage``, the Responses API's ``response.completed``), and a later usage is a
running total that replaces an earlier one. Its fields are OpenAI's two spellings:
``prompt_tokens`` / ``completion_tokens`` and the Responses API's ``input_tokens`` /
``output_tokens``. A reply with no usage is counted as nothing: the gateway cannot tell what
an unknown endpoint generated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from service import metrics
from service.limits import Reservation
from service.upstream import is_token_count

# The end of a reply kept to find its usage in: a Responses API object puts ``usage`` after
# its whole output, and a stream's final event repeats that output.
TAIL_BYTES = 1 << 20
_KEY = b'"usage"'
_DECODER = json.JSONDecoder()


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
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not (is_token_count(prompt) and is_token_count(completion)):
        return None
    return (prompt, completion) if prompt or completion else None


async def counted(chunks: AsyncIterator[bytes], model: str,
                  reservation: Reservation | None) -> AsyncIterator[bytes]:
    """``chunks`` passed through unchanged; once the reply ends, its usage is added to the
    metrics and settles ``reservation`` (a reply that did not end keeps its whole
    reservation charged, as a completion's does)."""
    tail = bytearray()
    async for chunk in chunks:
        tail += chunk
        if len(tail) > 2 * TAIL_BYTES:
            del tail[:-TAIL_BYTES]
        yield chunk
    prompt, completion = read_usage(bytes(tail[-TAIL_BYTES:])) or (0, 0)
    metrics.record_tokens(metrics.NO_LABEL, metrics.NO_LABEL, metrics.NO_LABEL, model,
                          prompt, completion)
    if reservation is not None:
        reservation.settle_with(completion, prompt)
        for kind, tokens in (("prompt", prompt), ("completion", completion)):
            if tokens:
                metrics.child(metrics.KEY_TOKENS, reservation.key_name, kind).inc(tokens)
