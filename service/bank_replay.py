"""BANK REPLAY: a real model's recorded outcomes served over the OpenAI API (``ttc-router sim
--bank``), so the gateway, every strategy and every policy run end to end on real-model
outcomes in seconds, without the model.

Every reply says it is a replay: the model id is ``bank-replay``, ``system_fingerprint`` is
``bank-replay``, and a top-level ``replay`` object names the bank run, the recorded samples
served, the token they start at, and what was synthesized or estimated.

How a request is answered (``router_models.bank`` holds the recordings):

- **Matching.** The question is found as the sim does (``router_models.tasks.registry``): a
  system, user or tool message, or one of its blank-line blocks, whose normalised text is a
  recorded question. Unknown prompts get a 404 in OpenAI's error envelope
  (``code: bank_item_not_found``): the bank has no outcome for them, and inventing one would
  not be a replay. A completions batch (``prompt`` a list of prompts) is answered prompt by
  prompt, in OpenAI's order, and is a 404 when one of its prompts is unknown.
- **Samples.** Temperature 0 serves the greedy chain (to every choice). Otherwise choice ``i``
  is recorded sample ``(start + i) mod S`` (``S`` samples per run, 8 in the shipped bank), with
  ``start = seed mod S`` when a seed is given (so replies repeat) and a random start when not.
  ``n`` above ``S`` repeats samples (``replay.repeated: true``), and so may two separate
  calls without a seed (each draws its own start). Whatever temperature is asked,
  the samples are those recorded (at the bank's temperature, ``replay.recorded_temperature``).
- **Budgets.** ``max_tokens`` (or ``max_completion_tokens``, the smaller) cuts the recorded
  token pieces: a choice gets its first ``max_tokens`` pieces, ``finish_reason: length`` when
  that cut it, else the recorded finish reason (a chain the recording cut at its own
  max_tokens stays ``length``). ``stop`` strings end a choice as a server ends it: the text
  stops before the first one generated, ``finish_reason: stop``, and usage counts the pieces
  generated up to the end of that string. As llama.cpp's server does, the pieces of the stop
  string itself are neither streamed nor listed in ``logprobs``.
- **Usage.** ``completion_tokens`` is exactly the pieces generated: those returned, plus a stop
  string's, which are counted but not returned. ``prompt_tokens`` is the
  recorded count when the request is the recorded prompt as the only message; otherwise the
  recorded count plus the pieces of a continued chain's prefix plus 4 characters per token for
  any other text, marked ``replay.prompt_tokens_estimated: true``.
- **Continuations.** When assistant turns after the question (after its last search
  request, if any) are the start of a recorded chain (the gateway's ``sequential`` continuing
  a cut chain, by prefill or by a follow-up turn, or ``search`` forcing an answer after a cut
  reply), the reply is the rest of that same chain from where the prefix ends. When several
  recorded chains start with the prefix, the one the request's seed serves is continued (the
  gateway resends the client's seed), else the greedy chain at temperature 0, else the first
  recorded sample. The bank holds one rest per prefix, so ``n`` above 1 repeats it
  (``replay.repeated: true``).
- **Search.** Retrieved results in the context (``Results of the search ...`` blocks, as the
  search strategy writes them) select the run recorded with that many searches (the largest
  recorded count not above it: 0, 1 or 3 for HotpotQA). When a request offers search (the
  search strategy's text protocol, or a ``search`` tool) with searches left and the bank holds
  a run with more searches, the reply is the recorded schedule's next query (``SEARCH: q`` or a
  tool call), its tokens the recorded tokenizer pieces of that line
  (``replay.synthesized: search_request``), cut by ``max_tokens`` like any reply (then plain
  text, ``finish_reason: length``). The search strategy's request for its final answer
  ("state your final answer now") offers no search: it gets an answer. The answer then
  comes from the run recorded with the bank's retrieval; the gateway's own search results
  are not read.

Endpoints: ``GET /v1/models``, ``GET /v1/models/bank-replay``, ``GET /health``,
``POST /v1/chat/completions`` and ``POST /v1/completions``, JSON or SSE (one chunk per token
piece, then the finish chunks, then a usage chunk when ``stream_options.include_usage``),
and ``POST /tokenize`` (llama.cpp's shape, ``content`` or ``prompt``): the bank keeps pieces,
not token ids, so it returns the pieces (``tokens``), exactly (``exact: true``) for the start
of a recorded completion cut at a piece boundary, else by greedy longest match over the
bank's pieces (``exact: false``).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router_models.bank import Bank, BankRun, BankSample
from service.sim import ENVELOPE_HANDLERS, SimError, SimRequest, cut_at_stop, parse_request
from service.text_protocol import FINAL_ANSWER_MARK, PREFILL, SEARCH_LINE

MODEL_ID = "bank-replay"
FINGERPRINT = "bank-replay"
CONTEXT_ROLES = frozenset({"system", "developer", "user", "tool", "function"})
# What the search strategy writes for each search it ran (service.strategies.search).
_SEARCH_RESULT = re.compile(r"^(?:Results of the search |The search .* found no documents\.)",
                            re.MULTILINE)
_SEARCHES_LEFT = re.compile(r"Searches left: (\d+) of (\d+)")
_SEARCH_CAP = re.compile(r"(?:search at most|call it at most) (\d+) times")
_TEXT_PROTOCOL = "SEARCH: <query>"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ReplayConfig:
    """The replay's set-up: the bank, and latency in seconds (0: as fast as it can)."""

    bank: Bank
    latency_per_token_s: float = 0.0
    ttft_s: float = 0.0


@dataclass
class Choice:
    """One served choice: the recorded sample and the piece range served, or a synthesized
    search request (``query`` and its pieces). ``withheld`` counts the pieces generated after
    ``pieces`` but not returned (a stop string's): usage counts them, the text does not."""

    pieces: list[str]
    lp: list[int]
    finish_reason: str
    sample: str
    start: int = 0
    query: str | None = None
    tool: bool = False
    withheld: int = 0


@dataclass
class Reply:
    """What a request is answered with, and the ``replay`` object describing it."""

    choices: list[Choice]
    prompt_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.pieces) + c.withheld for c in self.choices)


class PieceCounter:
    """Token pieces of a text, from the bank's recorded completions (see ``/tokenize``)."""

    def __init__(self, bank: Bank):
        samples = [s for run in bank.runs for s in (run.greedy, *run.samples)]
        self._texts = sorted({s.text: s.tokens for s in samples}.items())
        self._keys = [text for text, _ in self._texts]
        self._vocab = {p for s in samples for p in s.tokens if p}
        self._longest = max((len(p) for p in self._vocab), default=1)

    def pieces(self, text: str) -> tuple[list[str], bool]:
        """(pieces, exact): the recorded pieces when ``text`` is the start of a recorded
        completion ending on a piece boundary, else a greedy longest match over the known
        pieces (a character no piece covers counts as one)."""
        at = bisect.bisect_left(self._keys, text)
        while at < len(self._keys) and self._keys[at].startswith(text):
            out, length = [], 0
            for piece in self._texts[at][1]:
                if length == len(text):
                    break
                out.append(piece)
                length += len(piece)
            if length == len(text):
                return out, True
            at += 1
        out, start = [], 0
        while start < len(text):
            for end in range(min(len(text), start + self._longest), start, -1):
                if text[start:end] in self._vocab or end == start + 1:
                    out.append(text[start:end])
                    start = end
                    break
        return out, False


def create_replay_app(config: ReplayConfig) -> Starlette:
    """The replay backend as an ASGI app (mount it with ``httpx.ASGITransport`` in tests)."""
    recorded_max = int((config.bank.meta.get("sessions") or [{}])[-1].get("max_tokens", 512))
    counter = PieceCounter(config.bank)

    async def tokenize(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(SimError("the body is not valid JSON"))
        text = body.get("content", body.get("prompt")) if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(SimError("content must be a string", "content"))
        pieces, exact = counter.pieces(text)
        return JSONResponse({"tokens": pieces, "exact": exact})

    model_card = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": FINGERPRINT,
                  "recorded_model": config.bank.meta.get("model_file")}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name != MODEL_ID:
            return JSONResponse({"error": {
                "message": f"The model '{name}' does not exist; this replay serves {MODEL_ID}",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}},
                status_code=404)
        return JSONResponse(model_card)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "replay": True, "runs": len(config.bank),
                             "suites": config.bank.suites()})

    async def complete(request: Request, endpoint: str) -> Response:
        try:
            body = await request.json()
            parsed = parse_request(body, endpoint, recorded_max)
            reply = answer(config.bank, parsed, body)
        except json.JSONDecodeError:
            return _error(SimError("the body is not valid JSON"))
        except SimError as exc:
            return _error(exc)
        if parsed.stream:
            return StreamingResponse(_stream(config, parsed, reply),
                                     media_type="text/event-stream")
        longest = max((len(c.pieces) + c.withheld for c in reply.choices), default=0)
        await asyncio.sleep(config.ttft_s + longest * config.latency_per_token_s)
        return JSONResponse(_response(parsed, reply))

    async def chat(request: Request) -> Response:
        return await complete(request, "chat")

    async def completions(request: Request) -> Response:
        return await complete(request, "completions")

    return Starlette(routes=[
        Route("/v1/models", models), Route("/v1/models/{model:path}", model),
        Route("/health", health),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
    ], exception_handlers=ENVELOPE_HANDLERS)


def _error(exc: SimError) -> Response:
    code = "bank_item_not_found" if exc.status == 404 else None
    return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error",
                                   "param": exc.param, "code": code}}, status_code=exc.status)


# ------------------------------------------------------------------------------ answering


def answer(bank: Bank, request: SimRequest, body: dict[str, Any]) -> Reply:
    """The choices a request is answered with (see the module docstring).

    Raises:
        SimError: 404 when no recorded question is in the prompt (of a batch: in one of its
            prompts).
    """
    if len(request.prompts) > 1:
        # A completions batch: each prompt answered as alone, prompt i's n choices at
        # i * n .. i * n + n - 1, as OpenAI orders them.
        replies = [answer(bank, dataclasses.replace(request, messages=[("user", prompt)],
                                                    prompts=()), body)
                   for prompt in request.prompts]
        return Reply([c for reply in replies for c in reply.choices],
                     sum(reply.prompt_tokens for reply in replies),
                     {**replies[0].meta, "prompts": len(replies)})
    messages = request.messages
    found = _find_question(bank, messages)
    if found is None:
        raise SimError("no recorded question in this prompt: the outcome bank replays only "
                       "the questions it holds (ttc-router sim --bank PATH)",
                       "messages" if request.endpoint == "chat" else "prompt", 404)
    runs, position = found
    searched = sum(len(_SEARCH_RESULT.findall(text)) for _, text in messages)
    run = runs[max((s for s in runs if s <= searched), default=min(runs))]
    meta: dict[str, Any] = {"bank": bank.path.name if bank.path else None, "key": run.key,
                            "searches": run.searches}
    if request.endpoint == "chat":
        later = [text for role, text in messages[position + 1:] if role == "assistant"]
        # A search request ends a reply, and the reply after its results starts afresh: only
        # the assistant turns after the last request can be the start of a recorded chain.
        asked = [i for i, text in enumerate(later) if SEARCH_LINE.search(text)]
        prefix = "".join(later[asked[-1] + 1:] if asked else later)
    else:
        prompt = messages[0][1]
        at = prompt.find(run.prompt)
        prefix = prompt[at + len(run.prompt):] if at >= 0 else ""
    query = _next_query(runs, searched, messages, body)
    choices: list[Choice] | None = None
    if query is not None:
        text, pieces, tool = query
        finish = "stop"
        if len(pieces) > request.max_tokens:
            # The cap cuts the request line as it cuts any reply: a partial line, and no tool
            # call (its arguments would not be whole).
            pieces, finish, tool = pieces[:request.max_tokens], "length", False
        choices = [Choice(pieces, [0] * len(pieces), finish, "search_request", query=text,
                          tool=tool) for _ in range(request.n)]
        meta["synthesized"] = "search_request"
    elif prefix.strip():
        choices = _continuation(run, prefix, request, meta)
    if choices is None:
        choices = _fresh(run, request, meta)
    exact = request.endpoint == "chat" and messages == [("user", run.prompt)]
    prompt_tokens = run.prompt_tokens
    if not exact:
        extra = sum(len(text) for _, text in messages) - len(run.prompt) - len(prefix)
        prompt_tokens += meta.get("prefix_tokens", 0) + max(0, math.ceil(
            extra / CHARS_PER_TOKEN))
        meta["prompt_tokens_estimated"] = True
    return Reply(choices, prompt_tokens, meta)


def _find_question(bank: Bank, messages: Sequence[tuple[str, str]]
                   ) -> tuple[dict[int, BankRun], int] | None:
    for position in range(len(messages) - 1, -1, -1):
        role, text = messages[position]
        if role in CONTEXT_ROLES:
            runs = bank.lookup(text)
            if runs is not None:
                return runs, position
    return None


def _next_query(runs: dict[int, BankRun], searched: int, messages: Sequence[tuple[str, str]],
                body: dict[str, Any]) -> tuple[str, list[str], bool] | None:
    """The recorded schedule's next search request when the request offers search with
    searches left; None otherwise."""
    deepest = runs[max(runs)]
    if searched >= len(deepest.queries):
        return None
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    offered_tool = any((t.get("function") or {}).get("name") == "search" for t in tools) \
        and body.get("tool_choice") != "none"
    text = "\n".join(t for _, t in messages)
    if not offered_tool and (_TEXT_PROTOCOL not in text
                             # the search strategy's request for its final answer offers
                             # no search (a tool upstream gets tool_choice "none")
                             or (messages and FINAL_ANSWER_MARK in messages[-1][1])):
        return None
    left = _SEARCHES_LEFT.findall(text)
    if left:
        remaining = int(left[-1][0])
    else:
        cap = _SEARCH_CAP.findall(text)
        remaining = int(cap[-1]) - searched if cap else 0
    if remaining <= 0:
        return None
    query = deepest.queries[searched]
    line = f"SEARCH: {query}"
    recorded = deepest.search_turns[searched] if searched < len(deepest.search_turns) else None
    pieces = list(recorded) if recorded else re.findall(r"\s*\S+", line)
    return query, pieces, offered_tool


def _continuation(run: BankRun, prefix: str, request: SimRequest,
                  meta: dict[str, Any]) -> list[Choice] | None:
    """The rest of the recorded chain that ``prefix`` starts, or None when it starts none.
    The prefix matches the first ``k`` pieces exactly, or up to trailing whitespace (then
    the largest such ``k``); the sequential strategy's prefill is not part of it."""
    target = prefix.removesuffix(PREFILL)
    stripped = target.rstrip()
    for name, sample in _candidates(run, request):
        text, loose = "", None
        for k in range(len(sample.tokens) + 1):
            if text == target:
                return _served(name, sample, k, request, meta)
            if text.rstrip() == stripped:
                loose = k
            elif len(text.rstrip()) > len(stripped):
                break
            if k < len(sample.tokens):
                text += sample.tokens[k]
        if loose is not None:
            return _served(name, sample, loose, request, meta)
    return None


def _served(name: str, sample: BankSample, start: int, request: SimRequest,
            meta: dict[str, Any]) -> list[Choice]:
    meta.update({"continued": True, "prefix_tokens": start})
    choice = _cut(name, sample, start, request)
    meta["samples"] = [name]
    if request.n > 1:  # the bank holds one rest of this prefix: the n choices repeat it
        meta["repeated"] = True
    return [choice for _ in range(request.n)]


def _candidates(run: BankRun, request: SimRequest) -> list[tuple[str, BankSample]]:
    """The recorded chains a continuation may continue, in the order tried: the greedy chain
    first at temperature 0; else the samples from the one the request's seed serves (the
    order ``_fresh`` serves them in), so a chain cut and continued with one seed continues the
    same sample even when other samples start alike, then the greedy chain."""
    named = [(f"sample:{i}", s) for i, s in enumerate(run.samples)]
    if request.seed is not None and named:
        start = request.seed % len(named)
        named = named[start:] + named[:start]
    greedy = ("greedy", run.greedy)
    return [greedy, *named] if request.temperature == 0 else [*named, greedy]


def _fresh(run: BankRun, request: SimRequest, meta: dict[str, Any]) -> list[Choice]:
    if request.temperature == 0 or not run.samples:
        chosen = [("greedy", run.greedy)] * request.n
    else:
        count = len(run.samples)
        start = request.seed % count if request.seed is not None else random.randrange(count)
        chosen = [(f"sample:{(start + i) % count}", run.samples[(start + i) % count])
                  for i in range(request.n)]
        meta["recorded_temperature"] = run.samples[0].temperature
        if request.n > count:
            meta["repeated"] = True
    meta["samples"] = [name for name, _ in chosen]
    return [_cut(name, sample, 0, request) for name, sample in chosen]


def _cut(name: str, sample: BankSample, start: int, request: SimRequest) -> Choice:
    end = min(len(sample.tokens), start + request.max_tokens)
    finish = "length" if end < len(sample.tokens) else sample.finish_reason
    choice = Choice(list(sample.tokens[start:end]), list(sample.lp[start:end]), finish, name,
                    start)
    return _stopped(choice, request.stop)


def _stopped(choice: Choice, stops: Sequence[str]) -> Choice:
    """``choice`` ended where a server with these ``stop`` strings ends it: at the first piece
    after which the text holds one of them. The text returned ends before that string (servers
    drop it) while the usage still counts every piece generated, the stop's own included, as
    llama.cpp and vLLM count them; ``finish_reason`` is then ``stop``. The pieces that lie
    wholly inside the stop string are ``withheld``: not returned, streamed or given
    log-probabilities (llama.cpp's server drops them from its probabilities too); a piece
    that starts before it is returned cut short."""
    cut = cut_at_stop(choice.pieces, stops)
    if cut is None:
        return choice
    pieces, generated = cut
    return replace(choice, pieces=pieces, lp=choice.lp[:len(pieces)], finish_reason="stop",
                   withheld=generated - len(pieces))


# ------------------------------------------------------------------------------- rendering


def _usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _logprobs(request: SimRequest, choice: Choice) -> dict[str, Any] | None:
    """The recorded log-probabilities of the served pieces (the bank keeps no alternatives),
    in the chat shape (``content``) or the completions shape (``token_logprobs``)."""
    if not request.logprobs:
        return None
    values = [lp / 100 for lp in choice.lp]
    if request.endpoint != "chat":
        offsets = [sum(len(p) for p in choice.pieces[:i]) for i in range(len(choice.pieces))]
        return {"tokens": list(choice.pieces), "token_logprobs": values,
                "top_logprobs": [{} for _ in values], "text_offset": offsets}
    return {"content": [{"token": p, "logprob": v, "bytes": list(p.encode()),
                         "top_logprobs": []} for p, v in zip(choice.pieces, values,
                                                            strict=True)]}


def _tool_call(choice: Choice) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": choice.query})}}


def _is_tool(choice: Choice) -> bool:
    return choice.tool


def _response(request: SimRequest, reply: Reply) -> dict[str, Any]:
    chat = request.endpoint == "chat"
    out: list[dict[str, Any]] = []
    for index, choice in enumerate(reply.choices):
        text = "".join(choice.pieces)
        if chat and _is_tool(choice):
            out.append({"index": index, "finish_reason": "tool_calls", "logprobs": None,
                        "message": {"role": "assistant", "content": None,
                                    "tool_calls": [_tool_call(choice)]}})
        elif chat:
            out.append({"index": index, "message": {"role": "assistant", "content": text},
                        "finish_reason": choice.finish_reason,
                        "logprobs": _logprobs(request, choice)})
        else:
            out.append({"index": index, "text": text, "finish_reason": choice.finish_reason,
                        "logprobs": _logprobs(request, choice)})
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-replay-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": MODEL_ID, "system_fingerprint": FINGERPRINT,
            "choices": out, "usage": _usage(reply), "replay": reply.meta}


async def _stream(config: ReplayConfig, request: SimRequest,
                  reply: Reply) -> AsyncIterator[bytes]:
    chat = request.endpoint == "chat"
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-replay-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": MODEL_ID, "system_fingerprint": FINGERPRINT}

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    def piece(index: int, position: int, text: str, logprob: int | None) -> dict[str, Any]:
        # each chunk's logprobs in its endpoint's shape, as _logprobs gives a whole reply's
        if chat:
            logprobs = None if logprob is None or not request.logprobs else {"content": [
                {"token": text, "logprob": logprob / 100, "bytes": list(text.encode()),
                 "top_logprobs": []}]}
            return {"index": index, "delta": {"content": text}, "finish_reason": None,
                    "logprobs": logprobs}
        offset = sum(len(p) for p in reply.choices[index].pieces[:position])
        legacy = None if logprob is None or not request.logprobs else {
            "tokens": [text], "token_logprobs": [logprob / 100], "top_logprobs": [{}],
            "text_offset": [offset]}
        return {"index": index, "text": text, "finish_reason": None, "logprobs": legacy}

    await asyncio.sleep(config.ttft_s)
    if chat:
        for index in range(len(reply.choices)):
            yield event([{"index": index, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}])
    longest = max((len(c.pieces) + c.withheld for c in reply.choices), default=0)
    for position in range(longest):
        if config.latency_per_token_s > 0:
            await asyncio.sleep(config.latency_per_token_s)
        for index, choice in enumerate(reply.choices):
            if position < len(choice.pieces) and not (chat and _is_tool(choice)):
                yield event([piece(index, position, choice.pieces[position],
                                   choice.lp[position])])
    for index, choice in enumerate(reply.choices):
        if chat and _is_tool(choice):
            call = _tool_call(choice)
            yield event([{"index": index, "delta": {"tool_calls": [{"index": 0, **call}]},
                          "finish_reason": "tool_calls"}])
        elif chat:
            yield event([{"index": index, "delta": {}, "finish_reason": choice.finish_reason}])
        else:
            yield event([{"index": index, "text": "", "finish_reason": choice.finish_reason}])
    if request.include_usage:
        yield event([], usage=_usage(reply), replay=reply.meta)
    yield b"data: [DONE]\n\n"
