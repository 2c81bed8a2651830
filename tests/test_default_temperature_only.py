"""An upstream that takes only its default temperature (OpenAI's reasoning models answer any
other with a 400, ``param: temperature``): with ``temperature: false`` the gateway sends no
temperature of its own, so greedy chains, greedy-first votes and the vote's 0.7 never reach
it, while a client's own temperature still does. Without the setting, the first refusal
teaches the gateway the same (tests/test_direct.py covers it in detail)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.settings import UpstreamSettings
from tests.conftest import BACKEND_URL, gateway_client, make_settings
from tests.scripted import ScriptedLLM

QUESTION = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 6*7?"}]}
REJECTION = {"error": {
    "message": "Unsupported value: 'temperature' does not support 0 with this model. Only the "
               "default (1) value is supported.",
    "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}


@dataclass
class DefaultTemperatureOnly(ScriptedLLM):
    """A scripted backend that refuses any request carrying a temperature, as OpenAI's
    reasoning models do."""

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/completions") and \
                json.loads(request.content).get("temperature") is not None:
            self.requests.append(json.loads(request.content))
            return httpx.Response(400, json=REJECTION)
        return super()._handle(request)


def settings(accepts: bool, **overrides: Any):
    upstream = UpstreamSettings(url=BACKEND_URL, name="fake", models=["fake-model"],
                                temperature=accepts)
    return make_settings(upstreams=[upstream], **overrides)


async def ask(llm: ScriptedLLM, body: dict[str, Any], accepts: bool,
              **overrides: Any) -> httpx.Response:
    async with gateway_client(llm.transport(), settings(accepts, **overrides)) as client:
        return await client.post("/v1/chat/completions", json=body)


CASES = [
    ("auto's chain", {**QUESTION, "model": "auto", "router": {"policy": "chain"}},
     {"policies": {"chain": "fixed:sequential@512"}}),
    ("a named vote", {**QUESTION, "router": {"strategy": "parallel_vote", "budget_tokens": 512}},
     {"vote_width": 3, "vote_first_wave": 3, "vote_majority_first": False}),
    ("a vote whose first wave is cut",
     {**QUESTION, "router": {"strategy": "parallel_vote", "budget_tokens": 8 * 64}},
     {"vote_width": 8, "supports_n": False}),
]


@pytest.mark.parametrize("name, body, overrides", CASES, ids=[c[0] for c in CASES])
async def test_no_temperature_of_the_gateways_own_reaches_such_an_upstream(name, body,
                                                                           overrides):
    cut_first = "cut" in name
    text = (" ".join(["step"] * 200) + " The answer is 42.") if cut_first else "The answer is 42."
    llm = DefaultTemperatureOnly(lambda i, b: text)
    reply = await ask(llm, body, accepts=False, **overrides)
    assert reply.status_code == 200, reply.text
    assert llm.requests and all("temperature" not in b for b in llm.requests), llm.requests
    router = reply.json()["router"]
    assert "temperature" not in router and router.get("greedy_first") in (None, False)
    assert "chain_temperature" not in router.get("reason", "")
    # The same upstream configured as taking temperatures gets the gateway's, refuses it, and
    # is sent the call again without it (the setting spares that refused call).
    learning = DefaultTemperatureOnly(lambda i, b: text)
    learnt = await ask(learning, body, accepts=True, max_retries=0, **overrides)
    assert learnt.status_code == 200, learnt.text
    assert any(b.get("temperature") is not None for b in learning.requests)
    router = learnt.json()["router"]
    assert "temperature" not in router and router.get("greedy_first") in (None, False)


async def test_a_clients_own_temperature_is_still_sent():
    llm = DefaultTemperatureOnly(lambda i, b: "The answer is 42.")
    reply = await ask(llm, {**QUESTION, "temperature": 0.2}, accepts=False)
    assert reply.status_code == 400 and llm.requests[0]["temperature"] == 0.2
