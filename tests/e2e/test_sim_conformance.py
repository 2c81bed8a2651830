"""Real processes on 127.0.0.1: ``ttc-router serve --upstream`` in front of ``ttc-router sim``
(SIMULATION), its replies checked against OpenAI's published schemas (``tests/openai_schema``)
and read by the official ``openai`` client, for every strategy and ``auto``: chat and
completions, JSON and streamed, with the options a client sends (``n``, ``logprobs``,
``stream_options.include_usage``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from service.local_backend import free_port
from tests.e2e.conftest import stop
from tests.test_openai_schema import check

pytestmark = pytest.mark.e2e

QUESTION = "[[sim family=independent_mc difficulty=0.3 answer=B]] Which is right? A, B, C or D."
STRATEGIES = ("direct", "parallel_vote", "sequential", "search", "auto")


def _start(command: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "service", *command],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(ready, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{command[0]} did not start: {log.read_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("conformance")
    sim_port, port = free_port(), free_port()
    sim = _start(["sim", "--port", str(sim_port), "--latency-ms-per-token", "0.01",
                  "--ttft-ms", "1"], folder / "sim.log", f"http://127.0.0.1:{sim_port}/health")
    try:
        gateway = _start(["serve", "--upstream", f"http://127.0.0.1:{sim_port}/v1",
                          "--port", str(port), "--data-dir", str(folder / "data"),
                          "--log-level", "warning"],
                         folder / "gateway.log", f"http://127.0.0.1:{port}/ready")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(gateway)
    finally:
        stop(sim)


def _body(strategy: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "auto", "max_tokens": 400, **fields}
    if strategy != "auto":
        body["router"] = {"strategy": strategy, "budget_tokens": 2048}
    return body


def _chunks(text: str) -> list[dict[str, Any]]:
    lines = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert lines and lines[-1] == "[DONE]", text[-300:]
    chunks = [json.loads(line) for line in lines[:-1]]
    assert not any("error" in chunk for chunk in chunks), text[-300:]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    return chunks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chat_replies_and_streams_conform(gateway_url: str, strategy: str) -> None:
    n = 2 if strategy in ("direct", "auto") else 1  # n > 1 runs direct (README)
    body = _body(strategy, messages=[{"role": "user", "content": QUESTION}], n=n,
                 logprobs=True, top_logprobs=2)
    with httpx.Client(base_url=gateway_url, timeout=120) as http:
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        check("CreateChatCompletionResponse", reply.json())
        parsed = ChatCompletion.model_validate(reply.json())
        assert [c.index for c in parsed.choices] == list(range(n))
        assert all(c.logprobs and c.logprobs.content for c in parsed.choices)
        stream = http.post("/v1/chat/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}})
    assert stream.status_code == 200, stream.text
    chunks = _chunks(stream.text)
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    finishes = [(c["index"], c["finish_reason"]) for chunk in chunks
                for c in chunk["choices"] if c["finish_reason"] is not None]
    assert sorted(i for i, _ in finishes) == list(range(n))
    assert {i for chunk in chunks for c in chunk["choices"] if c.get("logprobs")
            for i in [c["index"]]} == set(range(n))
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
    with client.chat.completions.stream(
            model="auto", messages=body["messages"], max_tokens=400, n=n, logprobs=True,
            stream_options={"include_usage": True},
            extra_body={"router": body["router"]} if "router" in body else None) as events:
        final = events.get_final_completion()
    assert len(final.choices) == n and final.usage is not None


@pytest.mark.parametrize("strategy", ("direct", "parallel_vote", "sequential", "auto"))
def test_completions_replies_and_streams_conform(gateway_url: str, strategy: str) -> None:
    body = _body(strategy, prompt=QUESTION, logprobs=2)
    with httpx.Client(base_url=gateway_url, timeout=120) as http:
        reply = http.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        check("CreateCompletionResponse", reply.json())
        logprobs = Completion.model_validate(reply.json()).choices[0].logprobs
        assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
        stream = http.post("/v1/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}})
    assert stream.status_code == 200, stream.text
    chunks = _chunks(stream.text)
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    streamed = [c["logprobs"] for chunk in chunks for c in chunk["choices"] if c["logprobs"]]
    assert streamed and all(lp["tokens"] and lp["token_logprobs"] for lp in streamed)
