"""The fake backend of ``tests/fakes.py`` as its own process, for end-to-end tests:
``python -m tests.e2e.fake_backend --port PORT [--delay-ms MS] [--token-delay-ms MS]``.

Models: ``fake-model`` answers normally; ``overrun-model`` ignores ``max_tokens`` (so it spends
more than a budget grants) and answers at length (``OVERRUN_ANSWER``, 24 tokens);
``flaky-model`` always answers 500.

``GET /stats`` says how many completion tokens each model generated (``{"generated": {model:
tokens}}``): a reply's every token, and a stream's tokens up to the moment its client left.
With ``--token-delay-ms`` a stream generates one token per that many milliseconds and, like a
server that aborts a request whose client went away, generates no token after it notices the
disconnect (it checks before each one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import FakeBackend

MODELS = ("fake-model", "overrun-model", "flaky-model")
# Long enough that every small budget cuts it: 20 steps and the answer, a token a word.
OVERRUN_ANSWER = " ".join(["step"] * 20) + " The answer is 4."


@dataclass
class ServedBackend(FakeBackend):
    """``FakeBackend`` with per-model faults, an optional delay per request and per streamed
    token (seconds), and the tokens each model generated (``generated``)."""

    delay_s: float = 0.0
    token_delay_s: float = 0.0
    generated: dict[str, int] = field(default_factory=dict)

    def app(self) -> Starlette:
        app = super().app()
        app.router.routes.append(Route("/stats", self._stats))
        return app

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({"generated": self.generated})

    async def _receive(self, request: Request) -> dict[str, Any] | Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        body = await super()._receive(request)
        self.requests.clear()  # a long-running process must not keep every body
        if isinstance(body, Response):
            return body
        if body.get("model") == "flaky-model":
            return JSONResponse({"error": {"message": "scripted failure", "type": "fake",
                                           "param": None, "code": None}}, status_code=500)
        if body.get("model") == "overrun-model":
            body.pop("max_tokens", None)
            body.pop("max_completion_tokens", None)
        return body

    async def _chat(self, request: Request) -> Response:
        response = await super()._chat(request)
        if response.status_code != 200:
            return response
        model = str((await request.json()).get("model"))
        self.generated.setdefault(model, 0)
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._paced(response.body_iterator, request, model)
        else:
            self.generated[model] += json.loads(response.body)["usage"]["completion_tokens"]
        return response

    async def _paced(self, chunks: AsyncIterable[Any], request: Request,
                     model: str) -> AsyncIterable[bytes]:
        """The stream's chunks, a token each ``token_delay_s`` apart, stopped before the next
        token once the client has gone (counted in ``generated`` as they are made)."""
        async for chunk in chunks:
            data = chunk if isinstance(chunk, bytes) else str(chunk).encode()
            if b'"content"' in data:  # one generated token (the fake's chunks hold one)
                # Asking lets uvicorn read the socket again (it stops reading once a request's
                # body is in), so a close that came while the token was made is seen below.
                if await request.is_disconnected():
                    return
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                if await request.is_disconnected():
                    return
                self.generated[model] += 1
            yield data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    backend = ServedBackend(models=MODELS, model_answers={"overrun-model": OVERRUN_ANSWER})
    backend.delay_s = args.delay_ms / 1000
    backend.token_delay_s = args.token_delay_ms / 1000
    uvicorn.run(backend.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
