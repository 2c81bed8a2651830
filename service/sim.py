"""SIMULATION: the simulated reasoner served over the OpenAI API (``ttc-router sim``).

Every reply is simulated and says so: the model id is ``sim-reasoner``, ``system_fingerprint``
is ``simulation``, and a top-level ``simulation`` object names the world file, the family and
difficulty it read the prompt as, and how it recognised it. The answers come from
``router_models.simulation.World`` (per-family behaviour set in YAML); which task a prompt asks
is recognised by ``router_models.tasks.registry.TaskRegistry`` (a marker, or the known
question text).

Endpoints: ``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, JSON or SSE. Honoured: ``n``; ``max_tokens`` and
``max_completion_tokens`` (the smaller; else the world's ``default_max_tokens``) as each
choice's token allowance; ``temperature`` (reshapes the answer distribution, 0 is greedy);
``seed`` (choice i draws from ``Random(f"{seed}-{i}")``, so replies repeat); ``stream`` with
``stream_options.include_usage``; ``logprobs``/``top_logprobs`` (for the answer span only: the
probability of the stated answer under that sample's distribution, a confidence; in chat's
shape or, on ``/v1/completions``, the legacy ``tokens``/``token_logprobs`` one). Each reply
takes ``ttft_s + tokens * latency_per_token_s`` seconds (choices decode in parallel).

A continued chain counts as one: assistant turns after the question add their tokens to the
chain's length (so a strategy that extends a chain, turn by turn, gets one long chain's
accuracy).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router_models.prompt import content_text
from router_models.simulation import CORRECT, NO_ANSWER, World
from router_models.tasks import TaskItem
from router_models.tasks.registry import Match, TaskRegistry
from router_models.world_backend import WorldReasoner

MODEL_ID = "sim-reasoner"
FINGERPRINT = "simulation"
FILLER = ["let", "me", "work", "through", "this", "carefully", "and", "check", "each",
          "step", "before", "I", "answer", "the", "question"]
MAX_N = 128
MAX_STOP = 4  # OpenAI's API reference: up to 4 stop sequences


class SimError(Exception):
    """A bad request, rendered in OpenAI's error envelope with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass(frozen=True)
class SimConfig:
    """The simulator's set-up: the world (the shipped kind, or one randomized world), the
    known tasks, latency (seconds) and a label for the world shown in replies."""

    world: World | WorldReasoner
    registry: TaskRegistry
    latency_per_token_s: float = 0.0005
    ttft_s: float = 0.01
    world_name: str = "sim_world.yaml"


@dataclass(frozen=True)
class SimRequest:
    """One parsed completion request."""

    endpoint: str
    messages: list[tuple[str, str]]
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    stop: tuple[str, ...] = ()  # OpenAI's ``stop``: up to 4 strings that end a choice
    # A completions batch (``prompt`` a list of prompts): each one's text, answered apart;
    # ``messages`` then holds them joined (the bank replay reads only that).
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One simulated choice: its text (as words), tokens spent, finish reason, the answer it
    states (or None) and that answer's probability."""

    words: list[str]
    tokens: int
    finish_reason: str
    answer: str | None
    probability: float
    alternatives: list[tuple[str, float]]


def create_sim_app(config: SimConfig) -> Starlette:
    """The simulator as an ASGI app (mount it with ``httpx.ASGITransport`` in tests)."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": FINGERPRINT}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "simulation": True,
                             "known_tasks": len(config.registry)})

    async def chat(request: Request) -> Response:
        return await _complete(config, request, "chat")

    async def completions(request: Request) -> Response:
        return await _complete(config, request, "completions")

    return Starlette(routes=[
        Route("/v1/models", models), Route("/health", health),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ], exception_handlers=ENVELOPE_HANDLERS)


def _error(exc: SimError) -> Response:
    return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error",
                                   "param": exc.param, "code": None}}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """A route or method this backend does not serve (404, 405), in OpenAI's error envelope
    like its other errors: Starlette's default answer is plain text, which an OpenAI client
    cannot read."""
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: "
                                              f"{exc.detail}",
                                   "type": "invalid_request_error", "param": None,
                                   "code": None}}, status_code=exc.status_code,
                        headers=exc.headers)


# Starlette's exception_handlers for the simulated backends (this one and service.bank_replay).
ENVELOPE_HANDLERS: dict[Any, Any] = {HTTPException: _http_error}


async def _complete(config: SimConfig, request: Request, endpoint: str) -> Response:
    try:
        body = await request.json()
        parsed = parse_request(body, endpoint, config.world.default_max_tokens)
    except json.JSONDecodeError:
        return _error(SimError("the body is not valid JSON"))
    except SimError as exc:
        return _error(exc)
    # A batch answers each prompt as alone (its n choices, its seeds), in OpenAI's order:
    # prompt i's choices at i * n .. i * n + n - 1.
    matches = [config.registry.identify([("user", p)]) for p in parsed.prompts] or [
        config.registry.identify(parsed.messages)]
    samples = [s for match in matches for s in sample(config.world, match, parsed)]
    match = matches[0]
    meta = {"world": config.world_name, "family": match.item.family,
            "difficulty": match.item.difficulty, "match": match.how,
            "searched": match.searched}
    if len(matches) > 1:
        meta["prompts"] = len(matches)  # the fields above are the first prompt's
    if parsed.stream:
        return StreamingResponse(_stream(config, parsed, samples, meta),
                                 media_type="text/event-stream")
    longest = max((s.tokens for s in samples), default=0)
    await asyncio.sleep(config.ttft_s + longest * config.latency_per_token_s)
    return JSONResponse(_response(parsed, samples, meta))


def parse_request(body: Any, endpoint: str, default_max_tokens: int) -> SimRequest:
    """Validate a request body. Raises ``SimError`` naming the field at fault."""
    if not isinstance(body, dict):
        raise SimError("the body must be a JSON object")
    prompts: tuple[str, ...] = ()
    if endpoint == "chat":
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise SimError("messages must be a non-empty list", "messages")
        messages = [(str(m.get("role", "")), content_text(m.get("content")))
                    for m in raw if isinstance(m, dict)]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(
                isinstance(p, str | list) for p in prompt):
            # Several prompts (strings, or token id lists); a list of token ids is one.
            prompts = tuple(p if isinstance(p, str) else "\n".join(str(t) for t in p)
                            for p in prompt)
            prompt = "\n".join(prompts)
        elif isinstance(prompt, list):
            prompt = "\n".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            raise SimError("prompt must be a string", "prompt")
        messages = [("user", prompt)]
    caps = [body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    for cap in caps:
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise SimError("max_tokens must be a positive integer", "max_tokens")
    n = 1 if body.get("n") is None else body["n"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise SimError(f"n must be an integer from 1 to {MAX_N}", "n")
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise SimError("temperature must be a number from 0 to 2", "temperature")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise SimError("seed must be an integer", "seed")
    top = 0 if body.get("top_logprobs") is None else body["top_logprobs"]
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
        raise SimError("top_logprobs must be an integer from 0 to 20", "top_logprobs")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):  # "yes" is not true, as at OpenAI
        raise SimError("stream must be a boolean", "stream")
    logprobs = body.get("logprobs")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    # OpenAI's schema: null, a string, or a list of 1 to MAX_STOP strings.
    if stop is not None and (not isinstance(stops, list) or not 0 < len(stops) <= MAX_STOP
                             or not all(isinstance(x, str) and x for x in stops)):
        raise SimError(f"stop must be a non-empty string or a list of 1 to {MAX_STOP} of "
                       "them", "stop")
    return SimRequest(
        endpoint=endpoint, messages=messages, n=n,
        max_tokens=min(caps) if caps else default_max_tokens,
        temperature=float(temperature), seed=seed, stream=bool(stream),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        logprobs=bool(logprobs) or (endpoint == "completions" and isinstance(logprobs, int)),
        top_logprobs=top, stop=tuple(stops), prompts=prompts)


def sample(world: World | WorldReasoner, match: Match, request: SimRequest) -> list[Sample]:
    """Draw the request's ``n`` choices from the world (SIMULATION)."""
    item = match.item
    family = item.family if item.family in world.families() else world.default_family
    depth = match.prior_tokens + request.max_tokens
    dist = world.answer_distribution(family, item.difficulty, depth, match.searched,
                                     request.temperature)
    samples = []
    for index in range(request.n):
        rng = random.Random(f"{request.seed}-{index}") if request.seed is not None \
            else random.Random()
        label, used = world.draw(rng, family, item.difficulty, depth, match.searched,
                                 request.temperature)
        tokens = max(0, min(request.max_tokens, used - match.prior_tokens))
        if label == NO_ANSWER or tokens < world.answer_tokens:
            samples.append(Sample(_filler(tokens), tokens, "length", None, 0.0, []))
            continue
        answer = answer_text(item, label)
        words = _filler(tokens - world.answer_tokens) + f"The answer is {answer}.".split()
        ranked = sorted(((answer_text(item, x), p) for x, p in dist.items() if x != NO_ANSWER),
                        key=lambda pair: -pair[1])
        samples.append(Sample(words, tokens, "stop", answer, dist[label],
                              ranked[:request.top_logprobs]))
    return [stopped(s, request.stop) for s in samples] if request.stop else samples


def cut_at_stop(pieces: Sequence[str], stops: Sequence[str]
                ) -> tuple[list[str], int] | None:
    """Where a server with these ``stop`` strings (OpenAI's ``stop``) ends a completion of
    these token pieces: the pieces it returns, the text ending before the first stop string
    generated (a piece that starts before it is cut short), and how many pieces were generated
    up to the end of that string, which usage counts (the stop's own included, as llama.cpp
    and vLLM count them). None when no stop string occurs."""
    text = "".join(pieces)
    found = [(at + len(stop), at) for stop in stops if (at := text.find(stop)) >= 0]
    if not found:
        return None
    stop_end, keep = min(found)
    kept: list[str] = []
    generated = length = 0
    for piece in pieces:
        if length >= stop_end:
            break
        if length < keep:
            kept.append(piece[:keep - length])
        generated += 1
        length += len(piece)
    return kept, generated


def stopped(sample: Sample, stops: tuple[str, ...]) -> Sample:
    """``sample`` ended where a server with these ``stop`` strings ends it (``cut_at_stop``;
    a word is a token, the space before it its own): ``finish_reason`` ``stop``, usage the
    words generated through the stop. An answer whose sentence the stop cut is no longer
    stated. Unchanged when no stop string occurs."""
    cut = cut_at_stop([w if i == 0 else " " + w for i, w in enumerate(sample.words)], stops)
    if cut is None:
        return sample
    kept_pieces, generated = cut
    kept = "".join(kept_pieces)
    stated = sample.answer is not None and f"The answer is {sample.answer}." in kept
    return Sample(kept.split(" "), generated, "stop", sample.answer if stated else None,
                  sample.probability if stated else 0.0,
                  sample.alternatives if stated else [])


def answer_text(item: TaskItem, label: str) -> str:
    """The concrete answer a label stands for on ``item``: the gold answer for ``CORRECT``;
    for ``wrong:j``, the j-th of the item's wrong answers in a fixed per-item order (the other
    options; the other of yes/no; nearby numbers; for phrases, numbered alternatives)."""
    if label == CORRECT:
        return item.answer
    j = int(label.split(":", 1)[1])
    rng = random.Random(f"wrong-{item.suite}-{item.item_id}")
    if item.choices:
        others = [c for c in item.choices if c.lower() != item.answer.lower()]
        rng.shuffle(others)
        return others[(j - 1) % len(others)] if others else item.answer
    if item.kind == "yes_no":
        return "no" if item.answer.lower() == "yes" else "yes"
    if item.kind == "number":
        try:
            gold = float(item.answer.replace(",", ""))
        except ValueError:
            gold = 0.0
        base = int(gold) if gold.is_integer() else gold
        deltas = [d for d in range(-30, 31) if d] + [int(base) * 2 if base else 100]
        rng.shuffle(deltas)
        value = base + deltas[(j - 1) % len(deltas)]
        return str(value)
    return f"{item.answer} alternative {j}"


def _filler(tokens: int) -> list[str]:
    return [FILLER[i % len(FILLER)] for i in range(tokens)]


def _logprobs(request: SimRequest, s: Sample) -> dict[str, Any] | None:
    """The answer span's log-probability (one token) in the endpoint's shape: chat's
    ``content`` list, or the legacy completions lists (``tokens``, ``token_logprobs``,
    ``top_logprobs`` as token -> logprob, ``text_offset`` into the choice's text)."""
    if not request.logprobs:
        return None
    if request.endpoint != "chat":
        if s.answer is None:
            return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        stated = f"The answer is {s.answer}."
        return {"tokens": [s.answer], "token_logprobs": [math.log(max(s.probability, 1e-12))],
                "top_logprobs": [{a: math.log(max(p, 1e-12)) for a, p in s.alternatives}],
                "text_offset": [" ".join(s.words).rfind(stated) + len("The answer is ")]}
    if s.answer is None:
        return {"content": []}

    def entry(token: str, p: float) -> dict[str, Any]:
        return {"token": token, "logprob": math.log(max(p, 1e-12)),
                "bytes": list(token.encode())}
    main = entry(s.answer, s.probability)
    main["top_logprobs"] = [entry(a, p) for a, p in s.alternatives]
    return {"content": [main]}


def _usage(samples: list[Sample], messages: list[tuple[str, str]]) -> dict[str, int]:
    prompt = sum(len(text.split()) for _, text in messages)
    completion = sum(s.tokens for s in samples)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _response(request: SimRequest, samples: list[Sample], meta: dict[str, Any]) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index, s in enumerate(samples):
        text = " ".join(s.words)
        if request.endpoint == "chat":
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": s.finish_reason,
                            "logprobs": _logprobs(request, s)})
        else:
            choices.append({"index": index, "text": text, "finish_reason": s.finish_reason,
                            "logprobs": _logprobs(request, s)})
    return {"id": f"{'chatcmpl' if request.endpoint == 'chat' else 'cmpl'}-sim-"
                  f"{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if request.endpoint == "chat" else "text_completion",
            "created": int(time.time()), "model": MODEL_ID, "system_fingerprint": FINGERPRINT,
            "choices": choices, "usage": _usage(samples, request.messages),
            "simulation": meta}


async def _stream(config: SimConfig, request: SimRequest, samples: list[Sample],
                  meta: dict[str, Any]) -> AsyncIterator[bytes]:
    chat = request.endpoint == "chat"
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": MODEL_ID, "system_fingerprint": FINGERPRINT}

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    def piece(index: int, text: str | None, finish: str | None = None,
              logprobs: Any = None) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": finish,
                    "logprobs": logprobs}
        return {"index": index, "text": text or "", "finish_reason": finish,
                "logprobs": logprobs}

    await asyncio.sleep(config.ttft_s)
    if chat:
        for index in range(len(samples)):
            yield event([{"index": index, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}])
    # Decode steps run for all choices at once; sleep at least ~2 ms at a time.
    latency = config.latency_per_token_s
    group = max(1, math.ceil(0.002 / latency)) if latency > 0 else 64
    longest = max((len(s.words) for s in samples), default=0)
    for start in range(0, longest, group):
        if latency > 0:
            await asyncio.sleep(latency * group)
        for index, s in enumerate(samples):
            words = s.words[start:start + group]
            if words:
                text = ("" if start == 0 else " ") + " ".join(words)
                yield event([piece(index, text)])
    for index, s in enumerate(samples):
        yield event([piece(index, None, s.finish_reason, _logprobs(request, s))])
    if request.include_usage:
        yield event([], usage=_usage(samples, request.messages), simulation=meta)
    yield b"data: [DONE]\n\n"
