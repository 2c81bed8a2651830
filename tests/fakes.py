"""Fake OpenAI-compatible backends for contract tests, mounted in process.

``FakeBackend`` is a real ASGI app (Starlette) reached through ``httpx.ASGITransport``;
``scripted_transport`` is an ``httpx.MockTransport`` for byte-level faults (a stream that
breaks after N chunks, a character split across chunks) that an ASGI app cannot produce;
``RecordingBackend`` is the skeleton of a stateful backend (objects with ids, every call kept)
that a test module fills in with the endpoints it needs.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PROMPT_TOKENS = 7


@dataclass
class FakeBackend:
    """A scripted backend that answers ``answer`` to everything.

    ``honours_n``: return ``n`` choices (vLLM) or always one (llama-cpp-python's server).
    ``failures``: statuses to answer with, one per request, before answering normally.
    ``tool_call``: answer with this tool call (name, arguments JSON) instead of text.
    ``continuous_usage``: put running usage totals on every stream chunk (vLLM's option).
    ``model_answers``: the answer of a model other than ``answer`` (model id -> text).
    ``cut_reason``: the ``finish_reason`` of an answer its ``max_tokens`` cut (real servers
    say ``length``; "stop" by default, as this fake always said).
    ``requests``: the JSON bodies received, in order.
    """

    models: tuple[str, ...] = ("fake-model",)
    answer: str = "The answer is 4."
    honours_n: bool = True
    failures: list[int] = field(default_factory=list)
    tool_call: tuple[str, str] | None = None
    continuous_usage: bool = False
    model_answers: dict[str, str] = field(default_factory=dict)
    cut_reason: str = "stop"
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app())

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self._models),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
        ])

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fake"} for m in self.models]})

    async def _receive(self, request: Request) -> dict[str, Any] | Response:
        self.paths.append(request.url.path)
        body = await request.json()
        self.requests.append(body)
        if self.failures:
            status = self.failures.pop(0)
            return JSONResponse({"error": {"message": f"scripted failure {status}",
                                           "type": "fake", "param": None, "code": None}},
                                status_code=status)
        return body

    def _tokens(self, model: Any = None) -> list[str]:
        answer = self.model_answers.get(model, self.answer) if isinstance(model, str) else (
            self.answer)
        return [piece + " " for piece in answer.split(" ")]

    async def _chat(self, request: Request) -> Response:
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        n = int(body.get("n") or 1) if self.honours_n else 1
        tokens = self._tokens(body.get("model"))
        cap = body.get("max_tokens")
        finish = "tool_calls" if self.tool_call else "stop"
        if cap is not None and len(tokens) > cap:
            tokens = tokens[:cap]
            if not self.tool_call:
                finish = self.cut_reason
        if body.get("stream"):
            return StreamingResponse(self._chat_stream(body, n, tokens, finish),
                                     media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        if self.tool_call:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": self.tool_call[0], "arguments": self.tool_call[1]}}]}
        choices = [{"index": i, "message": message,
                    "finish_reason": "stop" if self.tool_call else finish} for i in range(n)]
        return JSONResponse({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "choices": choices,
            "usage": _usage(PROMPT_TOKENS, len(tokens) * n)})

    async def _chat_stream(self, body: dict[str, Any], n: int, tokens: list[str],
                           finish: str) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": body["model"]}
        sent = 0
        for i in range(n):
            yield _event({**base, "choices": [{"index": i, "delta": {"role": "assistant"},
                                               "finish_reason": None}]})
        if self.tool_call:
            name, arguments = self.tool_call
            pieces = [arguments[j:j + 3] for j in range(0, len(arguments), 3)]
            yield _event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": name, "arguments": ""}}]}, "finish_reason": None}]})
            for piece in pieces:
                yield _event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": piece}}]}, "finish_reason": None}]})
            tokens = pieces
        else:
            for token in tokens:
                for i in range(n):
                    sent += 1
                    chunk: dict[str, Any] = {**base, "choices": [
                        {"index": i, "delta": {"content": token}, "finish_reason": None}]}
                    if self.continuous_usage:
                        chunk["usage"] = _usage(PROMPT_TOKENS, sent)
                    yield _event(chunk)
        for i in range(n):
            yield _event({**base, "choices": [{"index": i, "delta": {},
                                               "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _event({**base, "choices": [], "usage": _usage(PROMPT_TOKENS,
                                                                 len(tokens) * n)})
        yield b"data: [DONE]\n\n"

    async def _completions(self, request: Request) -> Response:
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        n = int(body.get("n") or 1) if self.honours_n else 1
        tokens = self._tokens(body.get("model"))
        return JSONResponse({
            "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": body["model"],
            "choices": [{"index": i, "text": "".join(tokens), "finish_reason": "stop"}
                        for i in range(n)],
            "usage": _usage(PROMPT_TOKENS, len(tokens) * n)})

    async def _embeddings(self, request: Request) -> Response:
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        return JSONResponse({"object": "list", "model": body["model"],
                             "data": [{"object": "embedding", "index": 0,
                                       "embedding": [0.1, 0.2, 0.3]}],
                             "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    async def _responses(self, request: Request) -> Response:
        body = await self._receive(request)
        if isinstance(body, Response):
            return body

        async def events() -> AsyncIterator[bytes]:
            for kind in ("response.created", "response.output_text.delta", "response.completed"):
                yield f"event: {kind}\ndata: {json.dumps({'type': kind})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class ScriptedStream(httpx.AsyncByteStream):
    """Yields ``chunks`` (bytes) then, if ``error`` is set, raises it: a stream that breaks."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None):
        self.chunks = chunks
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


def scripted_transport(handler: Callable[[httpx.Request], httpx.Response | Exception],
                       models: tuple[str, ...] = ("fake-model",)) -> httpx.MockTransport:
    """A MockTransport that lists ``models`` and sends every other request to ``handler``
    (which returns a response, or an exception to raise)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json=_model_list(models))
        result = handler(request)
        if isinstance(result, Exception):
            raise result
        return result

    return httpx.MockTransport(handle)


def _model_list(models: tuple[str, ...]) -> dict[str, Any]:
    """``GET /v1/models``'s body listing ``models`` (ids)."""
    return {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}


class RecordingBackend:
    """The skeleton of a stateful fake backend on an ``httpx.MockTransport``.

    ``GET /v1/models`` lists ``fake-model``; every other call is kept in ``calls`` as
    (method, path), e.g. ``("POST", "/v1/files")``, then answered by ``route`` with the path's
    parts after ``/v1/`` (``/v1/files/file-1`` -> ``["files", "file-1"]``). ``_ids`` numbers
    the objects a subclass makes, from 1, one counter for every kind. A subclass must define
    ``route``; the base one raises ``NotImplementedError``.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.removeprefix("/v1/").split("/")
        if parts == ["models"]:
            return httpx.Response(200, json=_model_list(("fake-model",)))
        self.calls.append((request.method, request.url.path))
        return self.route(request, parts)

    def route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        """The answer to a call other than ``GET /v1/models``; ``parts`` as in the class doc."""
        raise NotImplementedError


def sse_body(*payloads: dict[str, Any] | str) -> list[bytes]:
    """SSE events as chunks: dicts become ``data: {json}``, strings are sent as they are."""
    return [p.encode() if isinstance(p, str) else _event(p) for p in payloads]


def completion_choices(reply: httpx.Response, stream: bool, count: int
                       ) -> tuple[list[str], dict[str, Any]]:
    """The texts of a /v1/completions reply's ``count`` choices, by index, and its usage,
    whether it was streamed (its chunks joined per index; the usage of the last chunk, which
    ``stream_options.include_usage`` asks for) or not. Asserts every index is present."""
    if stream:
        chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == set(range(count))
        texts = ["".join(c["choices"][0]["text"] for c in chunks
                         if c["choices"] and c["choices"][0]["index"] == i) for i in range(count)]
        return texts, chunks[-1]["usage"]
    assert [c["index"] for c in reply.json()["choices"]] == list(range(count))
    return [c["text"] for c in reply.json()["choices"]], reply.json()["usage"]
