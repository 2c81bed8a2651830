"""One upstream call metered: its grant from the ledger, its retries, and what it cost.

Every strategy sends its calls through ``Metered``, so that the budget ledger, ``usage``,
``router.spent_tokens``, the key limits, the metrics and the request log all read one count
(``call.acct``), whatever the backend reports:

- **Usage reported.** The backend's ``usage`` is the count, reasoning counted apart from
  ``completion_tokens`` included (``upstream.completion_tokens_of``), unless it is below what
  the reply shows: a choice that wrote text or was cut by its cap generated a token at least,
  and so did a stream's every chunk of text. Such a usage is wrong (0 beside an answer) or
  stale, and the call is counted as if it had none.
- **No usage** (llama-cpp-python's server in streams, some proxies): a choice cut by its cap
  (``finish_reason: length``) generated exactly its ``max_tokens``, or its tokenizer's count
  when that is more (a backend that ignores ``max_tokens``); any other choice is counted
  with the backend's own tokenizer (``UpstreamClient.count_tokens``), plus the end-of-sequence
  token and the longest ``stop`` string that the server removed from the text. Without a
  tokenizer the call is charged its whole grant (``max_tokens`` x choices), never less. The
  prompt is counted with the tokenizer too, else bounded by its UTF-8 bytes (every token of a
  byte-level BPE or byte-fallback vocabulary is at least one byte), and marked estimated.
- **Failed calls** are charged what they may have generated: the grant of every attempt that
  reached the backend and may have worked (``upstream.may_have_generated``); nothing for a
  refused connection, a 4xx or a 429.
- **Cancelled calls** (the client left, the shutdown deadline passed) are charged the grant
  of an attempt that had left the gateway (the backend may be generating all of it), and
  nothing for one that had not: still waiting for the backend's concurrency slot, or for a
  retry's backoff (``UpstreamClient``'s ``sending`` hook tells them apart).
- **Retries.** A retried call may generate its tokens again, so a retry needs a new grant of
  the same size from the ledger, and the request's retry count must be under
  ``max_request_retries``; the backend's retry budget is checked by the upstream client.
- **A broken or abandoned stream**, or one the gateway closed at its grant (a backend known to
  ignore ``max_tokens``: ``service.strategies.capped``), is charged its grant unless its final
  usage arrived (the usage chunk, or a usage sent once every choice had finished; a running
  total, vLLM's continuous usage stats, counts only what was sent): the backend may have
  generated more than reached the gateway. A stream's usage below its chunks of text (a token
  each at least) is a stale running total, sent early and never updated: the call is counted
  as if it had none.

A call that cost more than its grant is noted in the registry
(``BackendRegistry.note_ignores_max_tokens``): its backend's later calls are cut at their
grants (``service.strategies.capped``).

``router.usage_source`` names the most cautious source any call needed (``backend``,
``tokenizer``, ``grant``, ``text_bytes``: a call with no cap at all, bounded by its text's
UTF-8 bytes) and ``router.usage_estimated`` is True whenever a count is not the backend's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from router_models.prompt import content_text
from service import metrics
from service.errors import GatewayError, InvalidRequest
from service.ledger import BudgetExhausted
from service.protocol import candidates, candidates_param
from service.strategies.base import Call, default_temperature_only, gateway_chose_temperature
from service.upstream import (
    UpstreamStream,
    completion_tokens_of,
    is_token_count,
    may_have_generated,
    refuses_temperature,
)

_T = TypeVar("_T")

# Tokens a chat template adds around each message (role markers, separators): an upper bound
# for the common templates (ChatML adds 4 to 5, Llama 3 adds 5).
TEMPLATE_TOKENS_PER_MESSAGE = 8


@dataclass
class Metered:
    """The grants and charges of one upstream call with ``n`` choices (and its retries).

    Build it with ``Metered.reserve``; pass ``retry`` to the upstream client as its retry
    hook; end it with ``finish`` (a reply), ``finish_counted`` (a stream's texts), ``abandon``
    (a stream that did not end normally) or ``fail`` (an error); the first one counts.
    ``granted`` is the completion tokens granted per attempt (``per_choice * n``), None for a
    call without a cap (``direct`` with no budget and no ``max_tokens``).
    """

    call: Call
    body: dict[str, Any]
    n: int
    per_choice: int | None
    granted: int | None
    prompt_bound: int = 0
    settled: bool = False
    attempt_open: bool = True  # the current attempt's grant is reserved and not yet settled
    attempt_sent: bool = False  # the current attempt has left the gateway (``sending``)
    cut: bool = False  # read under a ``capped.CutRule`` (``capped.cuts``)
    # The completions the call generates: ``n``, or its ``best_of`` when larger (every one
    # is paid from the grant, though only ``n`` come back); 0 means ``n``.
    candidates: int = 0

    async def open_stream(self, call: Call) -> UpstreamStream:
        """Open this reserved call as a stream; a failure to open is charged what it may have
        generated (``fail``), a cancellation its grant (``abandon``) unless the attempt had
        not left the gateway (``give_back_unsent``).

        Raises:
            GatewayError: the backend refused or failed before streaming.
        """
        try:
            return await self.send(lambda body: call.client.open_stream(
                call.backend, call.path, body, call.acct, retry=self.retry,
                sending=self.sending))
        except GatewayError as exc:
            self.fail(exc)
            raise
        except BaseException:
            if not self.give_back_unsent():
                self.abandon(None, "")
            raise

    async def send(self, send: Callable[[dict[str, Any]], Awaitable[_T]]) -> _T:
        """``send(self.body)``: this call sent upstream (``send`` posts it or opens its
        stream), without the temperature the gateway chose for a backend that takes only
        its default.

        A backend that refuses such a temperature (``refuses_temperature``: OpenAI's
        reasoning models answer any but their default with a 400) is sent the call again
        without it, once, on the same grant: the refusal generated nothing and is charged
        nothing. The backend is then remembered as taking only its default
        (``base.default_temperature_only``). A temperature the client set is never dropped:
        its refusal is raised, for the client to receive as the backend sent it.

        Raises:
            GatewayError: ``send``'s errors.
        """
        call = self.call
        own = gateway_chose_temperature(call, self.body)
        if own and not call.backend.temperature:  # learnt since this body was built
            self.body = _without_temperature(self.body)
        try:
            return await send(self.body)
        except GatewayError as exc:
            if not own or "temperature" not in self.body or not refuses_temperature(exc):
                raise
            default_temperature_only(call, exc.message)
            self.body = _without_temperature(self.body)
        return await send(self.body)

    def sending(self) -> None:
        """The upstream client's send hook: the current attempt leaves the gateway now."""
        self.attempt_sent = True

    def give_back_unsent(self) -> bool:
        """Settle a cancelled call whose current attempt never left the gateway (it waited
        for the backend's concurrency slot, or for a retry's backoff): its grant is given
        back and nothing is charged for it (earlier attempts were charged as they failed).
        Returns whether it did; False (nothing done) when the attempt was sent, or the call
        is settled already."""
        if self.settled or self.attempt_sent:
            return False
        self.settled = True
        if self.attempt_open:
            self.attempt_open = False
            if self.granted is not None:
                self.call.ledger.settle(self.granted, 0, prompt_reserved=self.prompt_bound)
        return True

    @classmethod
    def reserve(cls, call: Call, body: dict[str, Any], per_choice: int | None,
                n: int = 1) -> Metered | None:
        """Reserve ``per_choice`` x ``n`` completion tokens (x ``best_of`` instead when the
        body asks for more candidates than choices; fewer when the ledger has less:
        ``per_choice`` shrinks to what is granted) and write the cap into ``body``'s
        ``max_tokens`` (and ``max_completion_tokens``). Returns None when the ledger cannot
        grant a token per candidate.

        Raises:
            InvalidRequest: the request's first call finds ``budget_total_tokens`` too small
                for its prompt's upper bound and one token of answer, or the budget too
                small for one token per candidate (400).
        """
        ledger = call.ledger
        bound = prompt_bound(call, body) if ledger.total_budget_tokens is not None else 0
        first = ledger.spent == ledger.prompt_spent == ledger.reserved == 0
        if (ledger.total_budget_tokens is not None and bound >= ledger.total_budget_tokens
                and first):
            raise InvalidRequest(
                f"budget_total_tokens ({ledger.total_budget_tokens}) leaves no room for an "
                f"answer after the prompt (at most {bound} tokens, counted as UTF-8 bytes "
                "without the backend's usage)", param="router.budget_total_tokens")
        width = candidates(body, n)  # best_of: candidates the backend generates and drops
        if per_choice is None and call.ledger.remaining is None:
            return cls(call, body, n, None, None, bound, candidates=width)
        want = per_choice if per_choice is not None else call.ledger.remaining or 0
        try:
            granted = call.ledger.reserve(want * width, bound)
        except BudgetExhausted:
            return None
        per = granted // width
        if per < 1:
            call.ledger.settle(granted, 0, prompt_reserved=bound)
            if first:  # the whole budget cannot start one call: the request's fault, not a 502
                param = candidates_param(body, n)
                raise InvalidRequest(
                    f"the token budget ({granted} tokens) is smaller than the {width} "
                    f"candidates {param} asks for, each at least one token", param=param)
            return None
        if per * width != granted:
            call.ledger.settle(granted - per * width, 0)
        set_cap(call, body, per)
        return cls(call, body, n, per, per * width, bound, candidates=width)

    # --- retries -------------------------------------------------------------------------

    def retry(self, error: GatewayError) -> bool:
        """The upstream client's retry hook: charge the failed attempt, then allow another
        one only within the request's retries and with a fresh grant of the same size."""
        call = self.call
        self._charge_attempt(error)
        label = call.backend.label
        if call.acct.retries >= call.settings.max_request_retries:
            metrics.child(metrics.RETRIES_REFUSED, label, "request_retries").inc()
            return False
        if self.granted is not None:
            try:
                again = call.ledger.reserve(self.granted, self.prompt_bound)
            except BudgetExhausted:
                again = 0
            if again < self.granted:
                if again:
                    call.ledger.settle(again, 0, prompt_reserved=self.prompt_bound)
                metrics.child(metrics.RETRIES_REFUSED, label, "token_budget").inc()
                return False
        self.attempt_open = True
        self.attempt_sent = False
        return True

    def _charge_attempt(self, error: GatewayError) -> None:
        """Settle one failed attempt's grant with what it may have generated."""
        if not self.attempt_open:
            return
        self.attempt_open = False
        spent = prompt = 0
        if may_have_generated(error):
            spent = self.granted if self.granted is not None else 0
            prompt = self.prompt_bound or body_prompt_bound(self.body)
            self.call.acct.add_counted(prompt, spent, "grant", estimated=True)
            self.call.acct.add_details(None)  # tokens with no breakdown: the sums are partial
        if self.granted is not None:
            self.call.ledger.settle(self.granted, spent, prompt_reserved=self.prompt_bound,
                                    prompt_spent=prompt)
        else:
            self.call.ledger.charge(spent, prompt)

    def fail(self, error: GatewayError) -> None:
        """The call failed for good with ``error``: charge its last attempt."""
        if self.settled:
            return
        self.settled = True
        self._charge_attempt(error)

    # --- replies -------------------------------------------------------------------------

    async def finish(self, data: dict[str, Any]) -> None:
        """Count a non-streamed reply (its ``usage``, else as the module docstring says) into
        ``call.acct`` and settle the grant."""
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        texts = [choice_tokens_text(c) for c in choices]
        finishes = [c.get("finish_reason") for c in choices]
        await self.finish_counted(data.get("usage"), texts, finishes)

    async def finish_counted(self, usage: Any, texts: list[str],
                             finishes: list[str | None], *, at_least: int = 0) -> None:
        """Count a call from its ``usage`` (None when absent) or from the ``texts`` and
        ``finishes`` of its choices, and settle. ``at_least``: a stream's chunks that carried
        text, a token each at least. A choice that wrote text, or was cut by its cap
        (``length``: a cap is at least a token), generated a token at least too. A usage below
        either is a stale running total (sent early, never updated) or wrong (a usage of 0
        beside a written answer, or a model that thought out of sight until its cap and
        says it spent nothing: believed, the ledger would keep granting), and the call is
        counted as if it had none."""
        if self.settled:
            return
        at_least = max(at_least, sum(1 for text, finish in zip(texts, finishes, strict=True)
                                     if text or finish == "length"))
        if _has_usage(usage) and _completion_of(usage) < at_least:
            usage = None
        completion, prompt, source = await self._count(usage, texts, finishes)
        self._settle(max(completion, at_least), prompt, source,
                     usage if source == "backend" else None)

    def abandon(self, usage: Any, seen_text: str, *, at_least: int = 0) -> None:
        """Settle a stream that did not end normally (broken, abandoned, or cut off for
        sending more than granted): its ``usage`` when it arrived and covers ``at_least``
        (the chunks of text seen), else its grant or ``at_least`` tokens if more (else, with
        no cap, the text seen, in UTF-8 bytes)."""
        if self.settled:
            return
        if _has_usage(usage) and _completion_of(usage) >= at_least:
            self._settle(_completion_of(usage), _prompt_of(usage), "backend", usage)
        elif self.granted is not None:
            self._settle(max(self.granted, at_least), None, "grant")
        else:
            self._settle(len(seen_text.encode()) + self.n, None, "text_bytes")

    async def _count(self, usage: Any, texts: list[str], finishes: list[str | None],
                     ) -> tuple[int, int | None, str]:
        """(completion tokens, prompt tokens or None, source) of a finished call."""
        if _has_usage(usage):
            return _completion_of(usage), _prompt_of(usage), "backend"
        if not texts or self.candidates > self.n:
            # Nothing came back, or best_of's dropped candidates never do: it may have
            # generated its whole grant.
            return self._fallback(texts)
        call = self.call
        total = 0
        source = "tokenizer"
        for text, finish in zip(texts, finishes, strict=True):
            cut = self.per_choice if finish == "length" else None  # the cap that cut it
            if cut is not None and len(text.encode()) <= cut:
                total += cut  # cut by its cap: exactly max_tokens were generated
                continue
            counted = None
            if source == "tokenizer":
                counted = await call.client.count_tokens(call.backend, call.upstream_model,
                                                         text)
            if cut is not None and counted is not None:
                # More UTF-8 bytes than its cap (a token is at least one byte), so it may be
                # more tokens: a backend that ignores max_tokens and stops at its own limit.
                total += max(cut, counted)
            elif counted is not None:
                # The end-of-sequence token, or a stop string the server removed, was
                # generated too; within the cap unless the backend ignored it.
                extra = 1 + _stop_allowance(self.body)
                if self.per_choice is not None and counted <= self.per_choice:
                    extra = min(extra, self.per_choice - counted)
                total += counted + extra
            elif self.per_choice is not None:
                total, source = total + self.per_choice, "grant"  # the choice's whole cap
            else:
                total, source = total + len(text.encode()) + 1, "text_bytes"
        prompt = await self._prompt_count() if source == "tokenizer" else None
        return total, prompt, source

    async def _prompt_count(self) -> int | None:
        """The prompt's tokens by the backend's tokenizer: its text's tokens plus
        ``TEMPLATE_TOKENS_PER_MESSAGE`` per message (the chat template is not applied), or
        None without a tokenizer. Remembered per prompt for the request's other calls."""
        call, key = self.call, prompt_key(self.body)
        known = call.prompt_counts.get(key)
        if known is not None:
            return known
        text, messages = prompt_parts(self.body)
        counted = await call.client.count_tokens(call.backend, call.upstream_model, text)
        if counted is None:
            return None
        call.prompt_counts[key] = counted = counted + TEMPLATE_TOKENS_PER_MESSAGE * messages
        return counted

    def _fallback(self, texts: list[str]) -> tuple[int, int | None, str]:
        if self.granted is not None:
            return self.granted, None, "grant"
        return sum(len(t.encode()) + 1 for t in texts), None, "text_bytes"

    def _settle(self, completion: int, prompt: int | None, source: str,
                usage: Any = None) -> None:
        """Add the call's tokens to ``call.acct`` (and its usage breakdowns when ``usage``,
        the backend's own usage object, has them) and settle its grant in the ledger."""
        call = self.call
        self.settled = True
        call.acct.add_details(usage)
        estimated = source != "backend"
        if prompt is None:
            prompt = self.prompt_bound or body_prompt_bound(self.body)
            estimated = True
        elif call.ledger.total_budget_tokens is not None:
            call.prompt_counts[prompt_key(self.body)] = prompt
        if source == "backend" and not estimated:
            call.acct.prompt_tokens += prompt
            call.acct.completion_tokens += completion
        else:
            call.acct.add_counted(prompt, completion, source, estimated=estimated)
        if self.granted is not None:
            call.ledger.settle(self.granted, completion, prompt_reserved=self.prompt_bound,
                               prompt_spent=prompt)
            if completion > self.granted:
                # It generated past its cap: its later calls are streamed and closed at their
                # grants (``service.strategies.capped``).
                call.registry.note_ignores_max_tokens(call.backend, call.upstream_model)
            elif not self.cut and source in ("backend", "tokenizer"):
                # Sent as usual and counted within its cap: a backend being checked again
                # honours max_tokens now.
                call.registry.note_honours_max_tokens(call.backend, call.upstream_model)
        else:
            call.ledger.charge(completion, prompt)


def set_cap(call: Call, body: dict[str, Any], per_choice: int) -> None:
    """Write ``per_choice`` as the call's ``max_tokens`` (and ``max_completion_tokens``, which
    a backend may honour instead: a cap on only one of them enforces nothing)."""
    body["max_tokens"] = per_choice
    if "max_completion_tokens" in body or call.routed.endpoint == "chat":
        body["max_completion_tokens"] = per_choice


def choice_tokens_text(choice: dict[str, Any]) -> str:
    """Everything a choice generated, as text: content (or completions ``text``), reasoning
    (``reasoning_content``, vLLM's reasoning parsers) and tool calls (names and arguments)."""
    message = choice.get("message")
    if not isinstance(message, dict):
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    parts = [message.get("content"), message.get("reasoning_content"),
             message.get("reasoning")]
    out = "".join(p for p in parts if isinstance(p, str))
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        if isinstance(function, dict):
            out += str(function.get("name") or "") + str(function.get("arguments") or "")
    return out


def delta_text(choice: dict[str, Any]) -> str:
    """What one streamed choice chunk generated, as text (content, reasoning, tool calls)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    out = "".join(v for v in (delta.get("content"), delta.get("reasoning_content"),
                              delta.get("reasoning")) if isinstance(v, str))
    for tool_call in delta.get("tool_calls") or []:
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        if isinstance(function, dict):
            out += str(function.get("name") or "") + str(function.get("arguments") or "")
    return out


def prompt_key(body: dict[str, Any]) -> bytes:
    """What identifies a call's prompt (its messages or prompt, and its tools)."""
    return orjson.dumps([body.get("messages", body.get("prompt")), body.get("tools")])


def prompt_bound(call: Call, body: dict[str, Any]) -> int:
    """The most prompt tokens a call may cost: the count reported for the same prompt by an
    earlier call of the request (fan-out resends it), else ``body_prompt_bound``."""
    known = call.prompt_counts.get(prompt_key(body))
    return known if known is not None else body_prompt_bound(body)


def prompt_parts(body: dict[str, Any]) -> tuple[str, int]:
    """(the prompt's text: message contents, tool calls and tool definitions; the number of
    chat messages) of a call's body."""
    parts = [orjson.dumps(body["tools"]).decode()] if body.get("tools") else []
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        parts.append(prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode())
        return "\n".join(parts), 0
    count = 0
    for message in messages:
        if isinstance(message, dict):
            count += 1
            parts.append(content_text(message.get("content")))
            if message.get("tool_calls"):
                parts.append(orjson.dumps(message["tool_calls"]).decode())
    return "\n".join(parts), count


def body_prompt_bound(body: dict[str, Any]) -> int:
    """An upper bound on a body's prompt tokens without a tokenizer: its text's UTF-8 bytes
    (a token of a byte-level BPE or byte-fallback vocabulary is at least one byte) plus
    ``TEMPLATE_TOKENS_PER_MESSAGE`` per message, the tool definitions included."""
    text, messages = prompt_parts(body)
    return max(1, len(text.encode()) + TEMPLATE_TOKENS_PER_MESSAGE * messages + 1)


def _has_usage(usage: Any) -> bool:
    return isinstance(usage, dict) and is_token_count(usage.get("completion_tokens"))


def _completion_of(usage: dict[str, Any]) -> int:
    """A usage's completion tokens, reasoning counted apart included (``_has_usage``)."""
    return completion_tokens_of(usage) or 0


def _prompt_of(usage: dict[str, Any]) -> int | None:
    prompt = usage.get("prompt_tokens")
    return prompt if is_token_count(prompt) else None



def _stop_allowance(body: dict[str, Any]) -> int:
    """Tokens of the longest ``stop`` string, which servers remove from the text after
    generating it (bounded by its UTF-8 bytes)."""
    stop = body.get("stop")
    if isinstance(stop, str):
        return len(stop.encode())
    if isinstance(stop, list):
        return max((len(s.encode()) for s in stop if isinstance(s, str)), default=0)
    return 0


def _without_temperature(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "temperature"}
