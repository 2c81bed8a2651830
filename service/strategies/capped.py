"""Calls to a backend that generates past ``max_tokens``: streamed, and closed at their grants.

A backend that ignores its cap (``max_tokens`` and ``max_completion_tokens``: a proxy that
drops them, a server that stops only at its own limit) generates a non-streamed reply in full
before the gateway reads a byte of it, so the ledger can only count the overrun
(``router.budget_overrun``). ``Metered`` notes every call that cost more than its grant in the
registry (``BackendRegistry.note_ignores_max_tokens``, per backend and model). From then on
(for ``ignores_max_tokens_ttl_s``), or from the start for an upstream configured with
``ignores_max_tokens``:

- every strategy call that would go to that backend non-streamed (``sampling.post_completion``:
  ``direct``'s JSON, a vote's samples, a chain, its forced answer, a search turn) is sent
  streamed with ``stream_options.include_usage`` and read by ``post_streamed``, which returns
  the reply a non-streamed call would have (a choice it cut finishes with ``length``);
- a stream to the client (``direct``, ``sequential``) is read under the same ``CutRule``.

``CutRule``: every chunk of a choice's text is a token at least. A choice whose chunks reach
its cap is cut: its later chunks are dropped. The stream is closed once every choice asked
for has finished or been cut, or once its chunks together reach the call's grant (a choice
cut early leaves the others less room than their caps: a backend that also ignores ``n``
sends one choice, which may use the grant of all). A stream closed so is charged
(``Metered.abandon``) its grant, or its chunks when more: the backend may have generated
tokens it had not sent yet. A stream that ends by itself is counted like a reply.

What it cannot do: the call that shows a backend ignoring its cap has already overrun (a
non-streamed one, in full; a stream, by the chunks read past the grant before the gateway
noticed), and so has every call sent with it before its reply came back (a vote's first
wave). Tokens a backend generates after the gateway closed its stream and before it notices
reach nobody and are not counted: none for a server that checks its client before each
token, a few a choice for one that notices later (when a write fails, or when it next reads
the socket). A backend that cannot stream at all fails these calls (``stream_truncated``)
until the fact expires.

Why not stream every call: a backend that honours its cap needs no cut, a non-streamed reply
is one JSON document instead of a parsed event per token, and some servers report no usage
in streams (llama-cpp-python's), which the gateway then counts with a tokenizer or charges
the grant. The common path is left as it was; only a backend seen misbehaving pays.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from service import metrics
from service.errors import UpstreamError
from service.strategies.base import Call
from service.strategies.metered import Metered, delta_text
from service.streaming import DONE, chunk_choices, close_all, events

# What ``post_streamed`` merges from the chunks of a chat choice's delta, as text.
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")


def cuts(call: Call, metered: Metered) -> bool:
    """Whether ``metered``'s call must be read under a ``CutRule`` (noted in ``metered.cut``:
    asked once per call, as it may be the one that checks the backend again): its backend is
    known to generate past ``max_tokens`` for this model, and the call has a cap. A call
    with ``best_of`` candidates beyond its ``n`` cannot be streamed (OpenAI refuses both) and
    is left as it is."""
    metered.cut = (metered.per_choice is not None and metered.candidates <= metered.n
                   and call.registry.ignores_max_tokens(call.backend, call.upstream_model))
    return metered.cut


@dataclass
class CutRule:
    """When to stop reading a stream of ``choices`` choices of at most ``per_choice`` tokens
    each, ``granted`` tokens in all: feed it every chunk (``see``); ``over`` says when to
    close it, and ``charge_cut`` settles it then. ``total`` counts the chunks of text of all
    choices, dropped ones included (a token each at least: what the call cost at least).

    A chunk is taken for one token, as llama.cpp, vLLM and OpenAI send them: a backend that
    puts several in a chunk is cut later than its cap, and ``charge_cut`` counts the text."""

    per_choice: int
    choices: int
    granted: int
    total: int = 0
    text: str = ""  # everything the chunks generated, dropped chunks included
    counts: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    cut: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, metered: Metered) -> CutRule:
        assert metered.per_choice is not None and metered.granted is not None
        return cls(metered.per_choice, metered.n, metered.granted)

    def see(self, payload: Any) -> list[int]:
        """Count one chunk; returns the choices it cut (empty when none). A chunk that brings
        a choice's last granted token with its finish reason finishes it instead."""
        if not isinstance(payload, dict):
            return []
        newly = []
        for choice in chunk_choices(payload):
            index = choice.get("index") or 0
            text = delta_text(choice)
            generated = bool(text)
            self.total += generated
            self.text += text
            if index in self.finished or index in self.cut:
                continue
            self.counts[index] = self.counts.get(index, 0) + generated
            if choice.get("finish_reason") is not None:
                self.finished.add(index)
            elif self.counts[index] >= self.per_choice:
                self.cut.add(index)
                newly.append(index)
        if self.total >= self.granted:
            # The grant is spent: every choice still open is cut where it stands.
            still = [i for i in self.counts if i not in self.finished and i not in self.cut]
            self.cut.update(still)
            newly += still
        return newly

    @property
    def over(self) -> bool:
        """True once nothing more may be read: a choice is still open (a stream whose choices
        all finished is read to its end, for its usage), and the chunks reached the grant or
        every choice asked for has finished or been cut."""
        if len(self.finished) >= self.choices:
            return False
        return self.total >= self.granted or (
            bool(self.cut) and len(self.finished | self.cut) >= self.choices)


def cut_choices(rule: CutRule, choices: list[dict[str, Any]],
                chat: bool) -> tuple[list[dict[str, Any]], bool]:
    """A chunk's choices under ``rule`` (fed the chunk here): those of choices cut before it
    dropped, a choice it cuts ending with ``length`` (as from a backend that honours its
    cap), and a finish of ``length`` added for each choice it cuts without a chunk in it (the
    grant ran out on the others). Returns the choices and whether they changed: what a
    client's stream (``direct``) sends and a streamed call's reply (``post_streamed``) is
    assembled from."""
    cut_before = set(rule.cut)
    newly = rule.see({"choices": choices})
    kept = [c for c in choices if (c.get("index") or 0) not in cut_before]
    changed = len(kept) != len(choices)
    present = set()
    for choice in kept:
        index = choice.get("index") or 0
        present.add(index)
        if index in newly:
            choice["finish_reason"] = "length"
            changed = True
    for index in newly:
        if index not in present:
            empty: dict[str, Any] = {"delta": {}} if chat else {"text": "", "logprobs": None}
            kept.append({"index": index, **empty, "finish_reason": "length"})
            changed = True
    return kept, changed


@dataclass
class _Choice:
    """One choice assembled from its chunks."""

    role: str | None = None
    texts: dict[str, str] = field(default_factory=dict)  # "content", "text", reasoning
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, list[Any]] | None = None
    finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("role"), str):
                self.role = delta["role"]
            for name in _TEXT_FIELDS:
                if isinstance(delta.get(name), str):
                    self.texts[name] = self.texts.get(name, "") + delta[name]
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._add_tool_call(call)
        elif isinstance(choice.get("text"), str):
            self.texts["text"] = self.texts.get("text", "") + choice["text"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            merged = self.logprobs if self.logprobs is not None else {}
            for key, value in logprobs.items():
                if isinstance(value, list):
                    merged.setdefault(key, []).extend(value)
            self.logprobs = merged
        if choice.get("finish_reason") is not None and self.finish_reason is None:
            self.finish_reason = choice["finish_reason"]

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        raw = call.get("index")
        index = raw if isinstance(raw, int) else len(self.tool_calls)
        into = self.tool_calls.setdefault(index, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            into["id"] = call["id"]
        if call.get("type"):
            into["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    into["function"][key] += function[key]

    def body(self, index: int, chat: bool) -> dict[str, Any]:
        """This choice as a non-streamed reply carries it."""
        out: dict[str, Any] = {"index": index}
        if chat:
            message: dict[str, Any] = {"role": self.role or "assistant",
                                       "content": self.texts.get("content")}
            if message["content"] is None and not self.tool_calls:
                message["content"] = ""
            for name in _TEXT_FIELDS[1:]:
                if name in self.texts:
                    message[name] = self.texts[name]
            if self.tool_calls:
                message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out["message"] = message
        else:
            out["text"] = self.texts.get("text", "")
        out["logprobs"] = self.logprobs
        out["finish_reason"] = self.finish_reason
        return out


async def post_streamed(call: Call, metered: Metered) -> dict[str, Any]:
    """``metered``'s call (reserved, ``cuts`` true) sent streamed and read under its
    ``CutRule``: the reply body a non-streamed call returns, its ``usage`` the backend's
    final one or None, its cost counted into ``call.acct`` and the ledger (also when it
    fails: a stream that broke is charged its grant unless its final usage came).

    Raises:
        UpstreamError: the stream broke, ended before its answer did (``stream_truncated``)
            or sent a chunk that is not an object; and ``open_stream``'s errors.
    """
    body = metered.body
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    stream = await metered.open_stream(call)
    rule = CutRule.of(metered)
    choices: dict[int, _Choice] = {}
    template: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    usage_final = done = False
    chat = call.routed.endpoint == "chat"
    try:
        async with aclosing(events(stream)) as upstream:
            async for payload, _data in upstream:
                if payload is DONE:
                    done = True
                    break
                if not isinstance(payload, dict):
                    raise UpstreamError("the backend sent a stream chunk that is not an object",
                                        code="upstream_malformed")
                if not template:
                    template = {k: payload[k] for k in ("id", "object", "created", "model",
                                                        "system_fingerprint") if k in payload}
                kept, _ = cut_choices(rule, chunk_choices(payload), chat)
                for choice in kept:
                    choices.setdefault(choice.get("index") or 0, _Choice()).add(choice)
                if isinstance(payload.get("usage"), dict):
                    # the call's count once every choice has finished, not a running total
                    usage = payload["usage"]
                    usage_final = (not payload.get("choices")
                                   or len(rule.finished) >= rule.choices)
                if rule.over:
                    break
        if rule.over:
            await close_all([stream])
            await charge_cut(call, metered, rule)
        elif not done and len(rule.finished) < rule.choices:
            stream.broke()
            raise UpstreamError("the stream from the backend ended before the answer was "
                                "complete", code="stream_truncated")
        else:
            ordered = sorted(choices)
            await metered.finish_counted(
                usage, [_generated(choices[i]) for i in ordered],
                [choices[i].finish_reason for i in ordered], at_least=rule.total)
    finally:
        await close_all([stream])
        metered.abandon(usage if usage_final else None, "", at_least=rule.total)
    kind = str(template.get("object") or ("chat.completion" if chat else "text_completion"))
    return {**template, "object": kind.removesuffix(".chunk"),
            "choices": [choices[i].body(i, chat) for i in sorted(choices)],
            "usage": usage if usage_final else None}


async def charge_cut(call: Call, metered: Metered, rule: CutRule) -> None:
    """Settle a stream closed under ``rule`` (``Metered.abandon``): its grant, since the
    backend may have generated tokens it had not sent yet, or more when its chunks show more,
    or the text they carried does, counted with the backend's tokenizer when it has one (a
    backend may put several tokens in a chunk). Counted in ``ttc_budget_cut_calls_total``."""
    metrics.child(metrics.BUDGET_CUT_CALLS, call.backend.label, call.upstream_model).inc()
    counted = None
    if rule.text and not metered.settled:
        counted = await call.client.count_tokens(call.backend, call.upstream_model, rule.text)
    metered.abandon(None, rule.text, at_least=max(rule.total, counted or 0))


def _generated(choice: _Choice) -> str:
    """Everything a choice generated, as text (``metered.choice_tokens_text`` of its body)."""
    out = "".join(choice.texts.values())
    for call in choice.tool_calls.values():
        out += call["function"]["name"] + call["function"]["arguments"]
    return out
