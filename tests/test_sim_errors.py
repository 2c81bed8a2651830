"""Both simulated backends (``ttc-router sim`` and ``sim --bank``) answer a route or method
they do not serve in OpenAI's error envelope, as every other error, not Starlette's plain
text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from router_models.bank import Bank
from router_models.simulation import World
from router_models.tasks.registry import TaskRegistry
from service.bank_replay import ReplayConfig, create_replay_app
from service.sim import SimConfig, create_sim_app

FIXTURE = Path(__file__).parent / "bank_fixture"


def apps() -> list[Starlette]:
    sim = create_sim_app(SimConfig(World.load(), TaskRegistry([]), latency_per_token_s=0,
                                   ttft_s=0))
    return [sim, create_replay_app(ReplayConfig(bank=Bank.load(FIXTURE)))]


@pytest.mark.parametrize("app", apps(), ids=["sim", "sim --bank"])
@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/embeddings", 404), ("GET", "/v1/chat/completions", 405)])
async def test_unknown_routes_and_methods_answer_in_openai_envelope(
        app: Starlette, method: str, path: str, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim.test") as client:
        reply = await client.request(method, path, json={})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert path in error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("app", apps(), ids=["sim", "sim --bank"])
@pytest.mark.parametrize("stream", ["yes", 1, "false"])
async def test_stream_must_be_a_boolean(app: Starlette, stream: object) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim.test") as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "stream" and "boolean" in error["message"]
