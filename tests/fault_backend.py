"""A fault-injecting OpenAI-compatible backend on a real socket, for fault, shutdown and
multi-process tests: ``python -m tests.fault_backend --port PORT [--delay-s S]``, or
``serve_in_thread()`` inside a test.

The model named in the request picks the behaviour:

- ``ok-model``: answers normally; the completion is exactly ``max_tokens`` words (16 without a
  cap), so every grant is spent in full, and the usage says so;
- ``slow-model``: the same, after ``delay_s`` seconds;
- ``hang-model``: never answers;
- ``garbage-model``: 200 with a body that is not JSON (or, streamed, not SSE);
- ``cut-model``: sends part of the reply, then drops the connection;
- ``trickle-model``: streams one word every ``trickle_s`` seconds.

A refusing backend needs no server: use ``closed_port_url()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.local_backend import free_port

MODELS = ("ok-model", "slow-model", "hang-model", "garbage-model", "cut-model",
          "trickle-model")


class BrokenOff(Exception):
    """Raised inside a response body so that the server drops the connection mid-reply."""


def make_app(delay_s: float = 1.0, trickle_s: float = 0.05,
             models: tuple[str, ...] = MODELS) -> Starlette:
    """The backend as an ASGI app (see the module docstring for the models)."""

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fault"} for m in models]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        stream = bool(body.get("stream"))
        cap = body.get("max_tokens")
        words = ["w"] * (int(cap) if isinstance(cap, int) else 16)
        if model == "hang-model":
            await asyncio.sleep(3600)
        if model == "slow-model":
            await asyncio.sleep(delay_s)
        if model == "garbage-model":
            return Response(b"\x00\xffthis is not what the API promised" * 3,
                            media_type="text/event-stream" if stream else "application/json")
        if model == "cut-model" and not stream:
            return StreamingResponse(_cut(b'{"id": "chatcmpl-cut", "choices": [{"mess'),
                                     media_type="application/json")
        if stream:
            pause = trickle_s if model == "trickle-model" else 0.0
            events = _events(body, words, pause, cut=model == "cut-model")
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(_completion(body, words))

    return Starlette(routes=[Route("/v1/models", list_models),
                             Route("/v1/chat/completions", chat, methods=["POST"])])


def _usage(words: list[str]) -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": len(words),
            "total_tokens": 5 + len(words)}


def _completion(body: dict[str, Any], words: list[str]) -> dict[str, Any]:
    return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "usage": _usage(words),
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": " ".join(words)}}]}


async def _cut(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(0.01)
    raise BrokenOff("dropping the connection on purpose")


async def _events(body: dict[str, Any], words: list[str], pause_s: float,
                  cut: bool) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1,
            "model": body["model"]}
    for i, word in enumerate(words):
        if cut and i == 2:
            raise BrokenOff("dropping the stream on purpose")
        if pause_s:
            await asyncio.sleep(pause_s)
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": word + " "},
                                      "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    yield b"data: " + json.dumps(final).encode() + b"\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield b"data: " + json.dumps({**base, "choices": [], "usage": _usage(words)}).encode()
        yield b"\n\n"
    yield b"data: [DONE]\n\n"


def closed_port_url() -> str:
    """A base URL on which nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL
    (ending in /v1) and stops the server on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fault backend did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        server.force_exit = True  # hang-model's requests would hold a graceful exit forever
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=1.0, help="slow-model's delay")
    parser.add_argument("--trickle-s", type=float, default=0.05,
                        help="trickle-model's pause between words")
    args = parser.parse_args()
    uvicorn.run(make_app(delay_s=args.delay_s, trickle_s=args.trickle_s), host="127.0.0.1",
                port=args.port, log_level="critical", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()


class LyingBackend:
    """A *simulated* backend, in process (``transport()``), that knows how many tokens it
    really generated (``generated``) whatever it reports, for accounting tests.

    One word is one token. Sample ``i`` (counting every choice of every call) writes
    ``lengths[i % len(lengths)]`` words, the last of them ``tail(i)`` (so a script can answer or
    ask for a search); ``max_tokens`` cuts it (``finish_reason: length``: exactly
    ``max_tokens`` generated), else it ends with ``stop`` after one more, unseen,
    end-of-sequence token, as real servers do.

    - ``usage=False``: no ``usage`` anywhere, in replies or streams;
    - ``tokens_per_chunk``: words per streamed content chunk (a server that batches tokens);
    - ``fail``: sample numbers whose call generates its whole text and then fails: a 500 for
      a JSON reply, a connection broken after half of the chunks for a stream; with
      ``fail_status=429`` the call is refused instead, before generating anything;
    - ``tokenizer``: serve llama.cpp's ``POST /tokenize`` (``{"tokens": [...]}``), counting
      words; without it that path answers 404;
    - ``honours_n``: answer ``n`` choices per call, or one;
    - ``zero_usage``: a usage that says ``completion_tokens: 0`` (``total_tokens`` the
      prompt's), whatever was generated.
    """

    def __init__(self, lengths: list[int], *, tail: Any = None, usage: bool = True,
                 tokens_per_chunk: int = 1, fail: set[int] | None = None,
                 tokenizer: bool = False, honours_n: bool = True, model: str = "fake-model",
                 fail_status: int = 500, zero_usage: bool = False):
        self.lengths = lengths
        self.tail = tail or (lambda i: "7")
        self.usage = usage
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.fail = fail or set()
        self.tokenizer = tokenizer
        self.honours_n = honours_n
        self.model = model
        self.fail_status = fail_status
        self.zero_usage = zero_usage
        self.generated = 0  # completion tokens really generated, failed calls included
        self.calls = 0  # completion calls received, failed ones included
        self.tokenize_calls = 0  # tokenizer calls answered
        self.probes = 0  # tokenizer calls of any kind, answered or not
        self._samples = 0

    def transport(self) -> Any:
        import httpx

        return httpx.MockTransport(self._handle)

    def _handle(self, request: Any) -> Any:
        import httpx

        from tests.fakes import ScriptedStream

        path = request.url.path
        if path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": self.model}]})
        body = json.loads(request.content)
        if path == "/tokenize" or path.startswith("/extras"):
            self.probes += 1
        if path == "/tokenize":
            if not self.tokenizer:
                return httpx.Response(404, json={"error": "not found"})
            self.tokenize_calls += 1
            words = str(body.get("content") or "").split()
            return httpx.Response(200, json={"tokens": list(range(len(words)))})
        if path.startswith("/extras"):
            return httpx.Response(404, json={"detail": "Not Found"})
        self.calls += 1
        n = int(body.get("n") or 1) if self.honours_n else 1
        cap = body.get("max_tokens")
        choices = []
        spent = 0
        failed = False
        for index in range(n):
            number = self._samples
            self._samples += 1
            length = self.lengths[number % len(self.lengths)]
            words = ["w"] * max(0, length - 1) + [str(self.tail(number))]
            if isinstance(cap, int) and len(words) >= cap:
                words, finish, cost = words[:cap], "length", cap
            else:
                finish, cost = "stop", len(words) + 1  # the end-of-sequence token
            spent += cost
            failed = failed or number in self.fail
            choices.append((index, words, finish))
        if failed and self.fail_status == 429:
            return httpx.Response(429, json={"error": {"message": "slow down"}})
        self.generated += spent
        usage = {"prompt_tokens": 5, "completion_tokens": spent, "total_tokens": 5 + spent}
        if self.zero_usage:
            usage |= {"completion_tokens": 0, "total_tokens": 5}
        if body.get("stream"):
            chunks = self._sse(choices, usage if self.usage else None, body)
            if failed:
                return httpx.Response(200, stream=ScriptedStream(
                    chunks[:max(1, len(chunks) // 2)], httpx.ReadError("broken on purpose")))
            return httpx.Response(200, stream=ScriptedStream(chunks))
        if failed:
            return httpx.Response(500, json={"error": {"message": "crashed after generating"}})
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": 1,
            "model": body["model"],
            "choices": [{"index": i, "finish_reason": finish,
                         "message": {"role": "assistant", "content": " ".join(words)}}
                        for i, words, finish in choices]}
        if self.usage:
            reply["usage"] = usage
        return httpx.Response(200, json=reply)

    def _sse(self, choices: list[tuple[int, list[str], str]], usage: dict[str, int] | None,
             body: dict[str, Any]) -> list[bytes]:
        base = {"id": "chatcmpl-lying", "object": "chat.completion.chunk", "created": 1,
                "model": body["model"]}
        out = []
        for index, words, finish in choices:
            for start in range(0, len(words), self.tokens_per_chunk):
                piece = " ".join(words[start:start + self.tokens_per_chunk])
                text = piece if start == 0 else " " + piece
                out.append({**base, "choices": [{"index": index, "delta": {"content": text},
                                                 "finish_reason": None}]})
            out.append({**base, "choices": [{"index": index, "delta": {},
                                             "finish_reason": finish}]})
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            out.append({**base, "choices": [], "usage": usage})
        return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in out] + [
            b"data: [DONE]\n\n"]
