"""Conformance: responses and stream chunks of every strategy, the model listing and the error
envelope, checked against OpenAI's published OpenAPI schemas (``tests/openai_schema``: the
schemas cut from github.com/openai/openai-openapi, with their commit and version).

The backend here is a scripted one that sends what llama.cpp's server sends: no ``refusal``
in its messages or its chat ``logprobs``, and ``logprobs`` only when asked, so the gateway's
own conformance is what is checked.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from service.search import LocalIndex
from service.search.documents import Document
from service.search.local import index_path
from tests.conftest import gateway_client, make_settings
from tests.fakes import ScriptedStream

SCHEMAS = json.loads((Path(__file__).parent / "openai_schema" / "schemas.json").read_text())
STRATEGIES = ("direct", "parallel_vote", "sequential", "search")


def _nullable_as_null(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true``, which the 3.1 document still uses in places, as JSON
    Schema says it: the value may also be null."""
    if isinstance(node, list):
        return [_nullable_as_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_as_null(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


_DOCUMENT = _nullable_as_null(copy.deepcopy({"components": SCHEMAS["components"]}))


def validator(name: str) -> Draft202012Validator:
    """A validator for ``components.schemas[name]``, its references resolved in the cut."""
    return Draft202012Validator({**_DOCUMENT, "$ref": f"#/components/schemas/{name}"})


def check(name: str, instance: Any) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def test_the_schemas_say_where_they_come_from():
    source = SCHEMAS["x-source"]
    assert source["repository"] == "https://github.com/openai/openai-openapi"
    assert len(source["commit"]) == 40 and source["api_version"]
    for root in source["roots"]:
        assert root in SCHEMAS["components"]["schemas"]


def test_the_check_fails_on_a_message_without_refusal():
    """The check can fail: a choice as llama.cpp sends it is not OpenAI's shape."""
    bare = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": "hi"}}]}
    assert list(validator("CreateChatCompletionResponse").iter_errors(bare))


def _logprobs(words: list[str], chat: bool) -> dict[str, Any]:
    """``words``' logprobs as llama.cpp's server sends them: chat's ``content`` list with no
    ``refusal`` key, or the legacy completions lists."""
    if chat:
        return {"content": [{"token": w, "logprob": -0.5, "bytes": list(w.encode()),
                             "top_logprobs": []} for w in words]}
    return {"tokens": words, "token_logprobs": [-0.5] * len(words),
            "top_logprobs": [{} for _ in words], "text_offset": list(range(len(words)))}


class LlamaLike:
    """Chat and completions, streamed or not, in llama.cpp's server's shape (no ``refusal``,
    ``logprobs`` only when asked); the i-th sample's text is ``script(i, body)``; one word a
    token. A completions ``echo`` puts the prompt before the text (in a stream, in the first
    token's chunk), as vLLM does."""

    def __init__(self, script: Callable[[int, dict[str, Any]], str]):
        self.script = script
        self.counter = itertools.count()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "fake-model", "object": "model", "owned_by": "llamacpp"}]})
        body = json.loads(request.content)
        chat = request.url.path.endswith("/chat/completions")
        words = self.script(next(self.counter), body).split(" ")
        cap = body.get("max_tokens")
        finish = "stop"
        if cap is not None and len(words) > cap:
            words, finish = words[:cap], "length"
        text = " ".join(words)
        if body.get("echo") and not chat:
            text = body["prompt"] + text
        usage = {"prompt_tokens": 5, "completion_tokens": len(words),
                 "total_tokens": 5 + len(words)}
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if body.get("logprobs"):
                choice["logprobs"] = _logprobs(words, chat)
            return httpx.Response(200, json={"id": "cmpl-1", "object": kind, "created": 1,
                                             "model": body["model"], "choices": [choice],
                                             "usage": usage})
        base = {"id": "cmpl-1", "object": kind + (".chunk" if chat else ""), "created": 1,
                "model": body["model"]}
        events = []
        for j, word in enumerate(words):
            piece = word if j == 0 else " " + word
            if j == 0 and body.get("echo") and not chat:
                piece = body["prompt"] + piece  # with the first token, as vLLM sends it
            part: dict[str, Any] = {"delta": {"content": piece}} if chat else {"text": piece}
            if body.get("logprobs"):
                part["logprobs"] = _logprobs([piece], chat)
            events.append({**base, "choices": [{"index": 0, **part, "finish_reason": None}]})
        end = {"delta": {}} if chat else {"text": ""}
        events.append({**base, "choices": [{"index": 0, **end, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": usage})
        chunks = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        return httpx.Response(200, stream=ScriptedStream(chunks + [b"data: [DONE]\n\n"]))


def _script(i: int, body: dict[str, Any]) -> str:
    """Searches once when asked to (the search strategy's protocol), else answers."""
    messages = body.get("messages") or []
    said = " ".join(str(m.get("content") or "") for m in messages)
    if "SEARCH:" in said and "BEGIN DATA-" not in said:  # results come as BEGIN DATA-<nonce>
        return "SEARCH: owls"
    return "Owls hunt at night. The answer is 4."


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    LocalIndex(index_path(data)).add([Document("owl", "Owls", "Owls are nocturnal birds.")])
    return data


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


async def _conforming_chat_chunks(client: Any, body: dict[str, Any],
                                  include_usage: bool) -> list[dict[str, Any]]:
    """``body`` streamed: asserts a 200 with chunks and no error event, each chunk a
    CreateChatCompletionStreamResponse; returns the chunks."""
    stream = await client.post("/v1/chat/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": include_usage}})
    assert stream.status_code == 200, stream.text
    chunks = _events(stream.text)
    assert chunks and not any("error" in c for c in chunks), stream.text
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    return chunks


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_chat_responses_and_chunks_of_every_strategy_conform(strategy, data_dir):
    body = {"model": "auto", "messages": [{"role": "user", "content": "How many legs?"}],
            "router": {"strategy": strategy, "budget_tokens": 1024}}
    async with gateway_client(LlamaLike(_script).transport(),
                              make_settings(data_dir=data_dir)) as client:
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["router"]["strategy"] == strategy
        if strategy == "search":  # the question's search (no hits here), then the model's own
            assert reply.json()["router"]["search_calls"] == 2
        check("CreateChatCompletionResponse", reply.json())
        for include_usage in (False, True):
            chunks = await _conforming_chat_chunks(client, body, include_usage)
            assert ("usage" in chunks[-1]) is include_usage


@pytest.mark.parametrize("strategy", (*STRATEGIES, "auto"))
async def test_chat_logprobs_of_every_strategy_conform(strategy, data_dir):
    """A chat choice's ``logprobs`` holds ``content`` and ``refusal`` (both required, null
    allowed), in replies and in chunks, whichever sample a strategy picks: llama.cpp and vLLM
    send no ``refusal``."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "How many legs?"}],
            "logprobs": True, "top_logprobs": 2,
            "router": {"strategy": strategy, "budget_tokens": 1024}}
    async with gateway_client(LlamaLike(_script).transport(),
                              make_settings(data_dir=data_dir)) as client:
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        check("CreateChatCompletionResponse", reply.json())
        assert reply.json()["choices"][0]["logprobs"]["content"]
        chunks = await _conforming_chat_chunks(client, body, include_usage=True)
        assert any(c.get("logprobs") for chunk in chunks for c in chunk["choices"])


@pytest.mark.parametrize("strategy", ("direct", "parallel_vote", "sequential"))
async def test_completions_responses_and_chunks_of_every_strategy_conform(strategy):
    body = {"model": "fake-model", "prompt": "2+2=",
            "router": {"strategy": strategy, "budget_tokens": 300}}
    async with gateway_client(LlamaLike(_script).transport()) as client:
        reply = await client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        check("CreateCompletionResponse", reply.json())
        stream = await client.post("/v1/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}})
        chunks = _events(stream.text)
        assert chunks and not any("error" in c for c in chunks), stream.text
        # The document has no schema for legacy completion chunks (OpenAI's own carry
        # ``finish_reason: null`` until the last one, which CreateCompletionResponse forbids;
        # the SDK reads them as ``Completion``): every chunk with its finish reason filled in
        # is a CreateCompletionResponse, its choices' ``logprobs`` present (null when not
        # asked), as OpenAI sends them.
        for chunk in chunks[:-1]:
            check("CreateCompletionResponse", {**chunk, "choices": [
                {**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]})
        assert "usage" in chunks[-1]


async def test_the_model_listing_and_each_model_conform():
    async with gateway_client(LlamaLike(_script).transport()) as client:
        listing = (await client.get("/v1/models")).json()
        check("ListModelsResponse", listing)
        for model in listing["data"]:
            one = await client.get(f"/v1/models/{model['id']}")
            assert one.status_code == 200
            check("Model", one.json())
            assert one.json() == model
        missing = await client.get("/v1/models/no-such-model")
        assert missing.status_code == 404
        check("ErrorResponse", missing.json())


async def test_errors_conform_to_the_error_envelope():
    def plain_text_failure(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        return httpx.Response(500, text="Internal Server Error")

    async with gateway_client(httpx.MockTransport(plain_text_failure)) as client:
        replies = [
            await client.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                "router": {"stratgy": "direct"}}),
            await client.post("/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"}),
            await client.post("/v1/embeddings", json={"model": "fake-model", "input": "hi"}),
            await client.post("/v1/embeddings", content=b"{not json",
                              headers={"content-type": "application/json"}),
        ]
    assert [r.status_code for r in replies] == [400, 400, 502, 400]
    for reply in replies:
        check("ErrorResponse", reply.json())


@pytest.mark.parametrize("budget", [40, 300])
@pytest.mark.parametrize("strategy", ("direct", "parallel_vote", "sequential", "auto"))
async def test_an_echoed_prompt_comes_back_once_whatever_the_strategy(strategy, budget):
    """``echo`` (completions) returns the prompt, then the completion. A chain that was cut
    and continued sent its continuation prompt (prompt + chain) with ``echo`` too, and
    returned the prompt three times; a vote counted answers in the echoed prompt."""
    prompt = "Q: 2 + 2?\nA:"
    long_chain = " ".join(["step"] * 50) + " The answer is 4."
    body = {"model": "auto" if strategy == "auto" else "fake-model", "prompt": prompt,
            "echo": True, "router": {"strategy": strategy, "budget_tokens": budget}}
    async with gateway_client(LlamaLike(lambda i, b: long_chain).transport()) as client:
        reply = await client.post("/v1/completions", json=body)
        stream = await client.post("/v1/completions", json={**body, "stream": True})
    assert reply.status_code == 200, reply.text
    check("CreateCompletionResponse", reply.json())
    text = reply.json()["choices"][0]["text"]
    assert text.startswith(prompt) and text.count(prompt) == 1, text
    assert reply.json()["router"]["strategy"] == "direct"
    streamed = "".join(c["text"] for chunk in _events(stream.text) for c in chunk["choices"])
    assert streamed.startswith(prompt) and streamed.count(prompt) == 1, streamed
