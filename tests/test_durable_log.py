"""A durable request log (``log_durable``): an answer leaves only once its row is committed, so a
replica killed right after answering loses no decision its client has seen."""

from __future__ import annotations

from typing import Any

from tests.conftest import gateway_client, make_settings
from tests.scripted import ScriptedLLM

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}


def llm() -> ScriptedLLM:
    return ScriptedLLM(lambda i, body: "The answer is 4.")


async def test_a_durable_answer_is_committed_before_it_is_sent(tmp_path):
    settings = make_settings(data_dir=tmp_path, log_durable=True)
    async with gateway_client(llm().transport(), settings) as client:
        gw: Any = client._transport.app.state.gateway  # type: ignore[attr-defined]
        reply = await client.post("/v1/chat/completions", json=CHAT)
        # Read the database itself, not through the log (which would flush its queue first).
        row = await gw.request_log.backend.get(reply.headers["x-ttc-decision-id"])
        async with client.stream("POST", "/v1/chat/completions",
                                 json={**CHAT, "stream": True}) as streamed:
            body = await streamed.aread()
        assert body.endswith(b"data: [DONE]\n\n")
        stream_row = await gw.request_log.backend.get(streamed.headers["x-ttc-decision-id"])
        assert gw.reporter._tickets == {}  # every ticket waited for or forgotten
    assert row is not None and row.status == "200"
    assert stream_row is not None and stream_row.stream and stream_row.status == "200"
