"""A scripted OpenAI-compatible backend for strategy tests: each sample's text comes from a
script, one word is one token, ``max_tokens`` cuts the text (``finish_reason: length``)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes import ScriptedStream


@dataclass
class ScriptedLLM:
    """``script(i, body)`` gives the text of the i-th sample drawn (0, 1, 2, ...).

    ``honours_n``: answer ``n`` choices per call, or always one. ``fail``: sample numbers whose
    call answers 500. ``ignore_cap``: send the whole text whatever ``max_tokens`` says.
    ``requests``: every JSON body received; ``reported_tokens``: the completion tokens all
    replies reported.
    """

    script: Callable[[int, dict[str, Any]], str]
    honours_n: bool = True
    fail: set[int] = field(default_factory=set)
    ignore_cap: bool = False
    model: str = "fake-model"
    requests: list[dict[str, Any]] = field(default_factory=list)
    reported_tokens: int = 0  # completion tokens reported in all replies so far
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": self.model}]})
        body = json.loads(request.content)
        self.requests.append(body)
        n = int(body.get("n") or 1) if self.honours_n else 1
        cap = body.get("max_tokens")
        choices = []
        spent = 0
        for index in range(n):
            number = next(self._counter)
            if number in self.fail:
                return httpx.Response(500, json={"error": {"message": "scripted failure"}})
            words = self.script(number, body).split(" ")
            finish = "stop"
            if cap is not None and len(words) > cap and not self.ignore_cap:
                words, finish = words[:cap], "length"
            spent += len(words)
            choices.append((index, " ".join(words), finish))
        self.reported_tokens += spent
        usage = {"prompt_tokens": 5, "completion_tokens": spent, "total_tokens": 5 + spent}
        if body.get("stream"):
            return httpx.Response(200, stream=ScriptedStream(_sse(choices, usage, body)))
        return httpx.Response(200, json={
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 1,
            "model": body["model"], "usage": usage,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish} for i, text, finish in choices]})


def _sse(choices: list[tuple[int, str, str]], usage: dict[str, int],
         body: dict[str, Any]) -> list[bytes]:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
            "model": body["model"]}
    out = []
    for index, text, finish in choices:
        words = text.split(" ")
        for j, word in enumerate(words):
            piece = word if j == 0 else " " + word
            out.append({**base, "choices": [{"index": index, "delta": {"content": piece},
                                             "finish_reason": None}]})
        out.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**base, "choices": [], "usage": usage})
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in out] + [b"data: [DONE]\n\n"]
