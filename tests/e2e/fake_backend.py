"""The fake backend of ``tests/fakes.py`` as its own process, for end-to-end tests:
``python -m tests.e2e.fake_backend --port PORT [--delay-ms MS]``.

Models: ``fake-model`` answers normally; ``overrun-model`` ignores ``max_tokens`` (so it spends
more than a budget grants); ``flaky-model`` always answers 500.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes import FakeBackend

MODELS = ("fake-model", "overrun-model", "flaky-model")


class ServedBackend(FakeBackend):
    """``FakeBackend`` with per-model faults and an optional delay per request (seconds)."""

    delay_s: float = 0.0

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    backend = ServedBackend(models=MODELS)
    backend.delay_s = args.delay_ms / 1000
    uvicorn.run(backend.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
