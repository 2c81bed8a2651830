"""Errors a drop-in OpenAI client meets are OpenAI's: the status, ``type``, ``param`` and
``code`` that api.openai.com answers for the same mistake (the openai SDK picks its exception
class by the status, and clients branch on ``code``).

The expected bodies are OpenAI's as recorded or observed:

- unknown URL: 404 ``invalid_request_error``, code ``unknown_url`` (bodies quoted in
  artificial-julien/docker-nginx-openai-api-cache#2 and InternLM/MindSearch#150, 2024);
- unknown model: 404 ``invalid_request_error``, code ``model_not_found`` (api.openai.com
  cassette ``chat-bad-model.yaml`` in envoyproxy/ai-gateway, 2025-07);
- ``stream_options`` without ``stream``: 400, param ``stream_options`` (the body quoted in
  BerriAI/litellm#5803);
- a missing, empty, mistyped or out-of-range field: 400 with codes
  ``missing_required_parameter`` (cassette ``chat-no-messages.yaml``, envoyproxy/ai-gateway),
  ``empty_array``, ``invalid_type``, ``integer_below_min_value``, ``decimal_above_max_value``
  (OpenAI's wording, "Invalid 'temperature': decimal above maximum value. Expected a value
  <= 2, but got 2.5 instead.", as quoted in many client bug reports).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import gateway_client
from tests.fakes import FakeBackend

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
STREAM_OPTIONS_ONLY_WITH_STREAM = (
    "The 'stream_options' parameter is only allowed when 'stream' is enabled.")


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    """The envelope's ``error`` of a refusal with ``status``, checked to be OpenAI's shape."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# ------------------------------------------------------------------------- unknown things


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_unknown_route_is_invalid_request_error_unknown_url(method):
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.request(method, "/nothing/here")
    error = error_of(reply, 404)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", None, "unknown_url")
    assert f"{method} /nothing/here" in error["message"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", CHAT, {"model": "no-such-model", "messages": MESSAGES}),
    ("POST", COMPLETIONS, {"model": "no-such-model", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "no-such-model", "input": "hi"}),
    ("GET", "/v1/models/no-such-model", None),
], ids=["chat", "completions", "forwarded", "retrieve"])
async def test_an_unknown_model_is_invalid_request_error_model_not_found(method, path, body):
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.request(method, path, json=body)
    error = error_of(reply, 404)
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    assert "no-such-model" in error["message"]
    assert backend.requests == []


def backend_answering_404(body: dict[str, Any]) -> httpx.MockTransport:
    """A backend that lists ``fake-model`` and answers every other call 404 with ``body``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        return httpx.Response(404, json=body)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("body", [
    # llama.cpp's server (the embedded backend) on a path it does not serve
    {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
    # vLLM's ErrorResponse: its exception's class name as the type, the status as the code
    {"error": {"message": "File Not Found", "type": "NotFoundError", "param": None,
               "code": 404}},
], ids=["llama.cpp", "vllm"])
async def test_a_backends_own_404_vocabulary_becomes_openais(body):
    async with gateway_client(backend_answering_404(body)) as client:
        reply = await client.get("/v1/nonexistent")
    error = error_of(reply, 404)
    assert error == {"message": "File Not Found", "type": "invalid_request_error",
                     "param": None, "code": None}


async def test_a_prompt_over_llama_cpps_context_is_openais_context_length_exceeded():
    # llama.cpp's server types the overflow its own way and echoes the status as the code;
    # OpenAI answers 400 invalid_request_error, code context_length_exceeded, which clients
    # (LangChain's, LiteLLM's) test to trim the conversation.
    overflow = {"error": {"code": 400, "type": "exceed_context_size_error",
                          "message": "the request exceeds the available context size, try "
                                     "increasing it", "n_prompt_tokens": 5000, "n_ctx": 4096}}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        return httpx.Response(400, json=overflow)

    async with gateway_client(httpx.MockTransport(handle)) as client:
        for stream in (False, True):
            reply = await client.post(CHAT, json={"model": "fake-model", "messages": MESSAGES,
                                                  "stream": stream})
            assert error_of(reply, 400) == {"message": overflow["error"]["message"],
                                            "type": "invalid_request_error", "param": None,
                                            "code": "context_length_exceeded"}


async def test_an_openai_shaped_404_from_the_backend_passes_unchanged():
    # OpenAI's own answer for a file id it does not have: nothing to translate.
    body = {"error": {"message": "No such File object: file-abc", "type": "invalid_request_error",
                      "param": "id", "code": None}}
    async with gateway_client(backend_answering_404(body)) as client:
        reply = await client.get("/v1/files/file-abc")
    assert error_of(reply, 404) == body["error"]


# -------------------------------------------------------------------------- stream_options


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", [{}, {"stream": False}, {"stream": None}],
                         ids=["absent", "false", "null"])
async def test_stream_options_without_stream_is_a_400(path, stream):
    backend = FakeBackend()
    prompt = {"messages": MESSAGES} if path == CHAT else {"prompt": "hi"}
    body = {"model": "fake-model", **prompt, **stream,
            "stream_options": {"include_usage": True}}
    async with gateway_client(backend.transport()) as client:
        reply = await client.post(path, json=body)
    assert error_of(reply, 400) == {"message": STREAM_OPTIONS_ONLY_WITH_STREAM,
                                    "type": "invalid_request_error",
                                    "param": "stream_options", "code": None}
    assert backend.requests == []


async def test_stream_options_null_without_stream_and_with_a_stream_are_served():
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        unset = await client.post(CHAT, json={"model": "fake-model", "messages": MESSAGES,
                                              "stream": False, "stream_options": None})
        streamed = await client.post(CHAT, json={"model": "fake-model", "messages": MESSAGES,
                                                 "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert unset.status_code == 200, unset.text
    assert streamed.status_code == 200, streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")


# ------------------------------------------------------------------ fields OpenAI validates

# (endpoint, the body's fields besides model, param, code, message or its opening)
FIELD_CASES = [
    (CHAT, {"messages": MESSAGES, "temperature": 2.5}, "temperature",
     "decimal_above_max_value",
     "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
     "but got 2.5 instead."),
    (CHAT, {"messages": MESSAGES, "temperature": -1}, "temperature",
     "decimal_below_min_value",
     "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, "
     "but got -1 instead."),
    (CHAT, {"messages": MESSAGES, "top_p": 1.5}, "top_p", "decimal_above_max_value",
     "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, "
     "but got 1.5 instead."),
    (CHAT, {"messages": MESSAGES, "temperature": "0"}, "temperature", "invalid_type",
     "Invalid type for 'temperature': expected a decimal, but got a string instead."),
    (CHAT, {"messages": MESSAGES, "n": 0}, "n", "integer_below_min_value",
     "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    (CHAT, {"messages": MESSAGES, "n": 1.5}, "n", "invalid_type",
     "Invalid type for 'n': expected an integer, but got a decimal number instead."),
    (CHAT, {"messages": MESSAGES, "max_tokens": -1}, "max_tokens", "integer_below_min_value",
     "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, "
     "but got -1 instead."),
    (CHAT, {"messages": MESSAGES, "max_completion_tokens": -5}, "max_completion_tokens",
     "integer_below_min_value",
     "Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 1, "
     "but got -5 instead."),
    (CHAT, {"messages": MESSAGES, "max_completion_tokens": "abc"}, "max_completion_tokens",
     "invalid_type",
     "Invalid type for 'max_completion_tokens': expected an integer, but got a string "
     "instead."),
    (CHAT, {"messages": MESSAGES, "stream": "yes"}, "stream", "invalid_type",
     "Invalid type for 'stream': expected a boolean, but got a string instead."),
    (CHAT, {"messages": MESSAGES, "stop": 5}, "stop", "invalid_type",
     "Invalid type for 'stop': expected"),
    (CHAT, {}, "messages", "missing_required_parameter",
     "Missing required parameter: 'messages'."),
    (CHAT, {"messages": []}, "messages", "empty_array",
     "Invalid 'messages': empty array. Expected an array with minimum length 1, "
     "but got an empty array instead."),
    (CHAT, {"messages": "hi"}, "messages", "invalid_type",
     "Invalid type for 'messages': expected an array of objects, but got a string instead."),
    (CHAT, {"messages": [{"content": "hi"}]}, "messages[0].role",
     "missing_required_parameter", "Missing required parameter: 'messages[0].role'."),
    (CHAT, {"messages": [*MESSAGES, {"role": "user", "content": 123}]},
     "messages[1].content", "invalid_type", "Invalid type for 'messages[1].content': expected"),
    (COMPLETIONS, {"prompt": "hi", "temperature": 3}, "temperature",
     "decimal_above_max_value",
     "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
     "but got 3 instead."),
    (COMPLETIONS, {"prompt": "hi", "n": 0}, "n", "integer_below_min_value",
     "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    (COMPLETIONS, {}, "prompt", "missing_required_parameter",
     "Missing required parameter: 'prompt'."),
    (COMPLETIONS, {"prompt": {"a": 1}}, "prompt", "invalid_type",
     "Invalid type for 'prompt': expected"),
]


@pytest.mark.parametrize(("path", "fields", "param", "code", "message"), FIELD_CASES,
                         ids=[f"{'chat' if case[0] == CHAT else 'text'}-{case[2]}-{case[3]}"
                              for case in FIELD_CASES])
async def test_a_field_openai_refuses_is_its_400(path, fields, param, code, message):
    backend = FakeBackend()
    async with gateway_client(backend.transport()) as client:
        reply = await client.post(path, json={"model": "fake-model", **fields})
    error = error_of(reply, 400)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", param, code)
    assert error["message"].startswith(message), error["message"]
    assert backend.requests == []


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"model": "fake-model", "messages": [', b"not valid JSON"),
    (b"not json at all", b"not valid JSON"),
    (b'[{"model": "fake-model"}]', b"JSON object"),
], ids=["truncated", "not JSON", "an array"])
async def test_a_body_that_is_no_json_object_is_a_400_without_param_or_code(raw, fragment):
    # Already as OpenAI answers ("We could not parse the JSON body of your request.", 400,
    # param and code null); kept so.
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    error = error_of(reply, 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    assert fragment.decode() in error["message"]
