"""A batch's requests are paid from its key's token limits when it is created: the backend runs
them later with the gateway's credentials, so nothing else would see what they spend. The
gateway in process, in front of a backend that stores files and batches as OpenAI does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.keys import open_key_store
from tests.conftest import gateway_client, make_settings
from tests.fakes import RecordingBackend


class BatchBackend(RecordingBackend):
    """Files (multipart upload, ``GET /v1/files/{id}[/content]``), batches (``POST
    /v1/batches``, which keeps the input file it would run in ``ran``) and chat completions
    (which spend what they are allowed). Every call is kept in ``calls``."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.ran: list[list[dict[str, Any]]] = []  # each batch's input lines, as it runs them

    def route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        match request.method, parts:
            case "POST", ["files"]:
                ident = f"file-{next(self._ids)}"
                body = request.content
                start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
                self.files[ident] = body[start:body.index(b"\r\n--", start)]
                return httpx.Response(200, json={"id": ident, "object": "file",
                                                 "purpose": "batch"})
            case "GET", ["files", ident]:
                return httpx.Response(200, json={"id": ident, "object": "file"})
            case "GET", ["files", ident, "content"] if ident in self.files:
                return httpx.Response(200, content=self.files[ident])
            case "POST", ["batches"]:
                body = json.loads(request.content)
                ident = body["input_file_id"]
                if body["completion_window"] != "24h":
                    return httpx.Response(400, json={"error": {
                        "message": "completion_window must be 24h",
                        "type": "invalid_request_error", "param": "completion_window",
                        "code": None}})
                self.ran.append([json.loads(line) for line in self.files[ident].splitlines()
                                 if line.strip()])
                return httpx.Response(200, json={"id": f"batch_{next(self._ids)}",
                                                 "object": "batch", "input_file_id": ident,
                                                 "status": "validating"})
            case "POST", ["chat", "completions"]:
                cap = json.loads(request.content).get("max_tokens", 16)
                return httpx.Response(200, json={
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                    "model": "fake-model", "choices": [{
                        "index": 0, "finish_reason": "length",
                        "message": {"role": "assistant", "content": "x " * cap}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": cap,
                              "total_tokens": 3 + cap}})
        return httpx.Response(404, json={"error": {"message": "not found",
                                                   "type": "invalid_request_error"}})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat_line(i: int, **caps: Any) -> dict[str, Any]:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                     **caps}}


async def create_batch(client: httpx.AsyncClient, key: str, lines: list[dict[str, Any]],
                       window: str = "24h") -> httpx.Response:
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = await client.post("/v1/files", files={"file": ("in.jsonl", content)},
                               data={"purpose": "batch"}, headers=bearer(key))
    assert upload.status_code == 200, upload.text
    return await client.post("/v1/batches", headers=bearer(key), json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": window})


def keyed(admin: bool = False, **limits: Any) -> tuple[Any, str]:
    settings = make_settings(default_budget_tokens=100)
    key = open_key_store(settings.data_dir, None).create("batcher", admin=admin, **limits)
    return settings, key


@pytest.mark.parametrize("admin", [False, True])
async def test_a_batch_reserves_its_requests_caps_from_the_key(admin):
    # Three requests of at most 200 tokens (one drawing n 2) may generate 800: a key with
    # 1,000 a minute has 200 left, so a chat asking 300 more is refused.
    settings, key = keyed(admin=admin, tpm=1000)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        made = await create_batch(client, key, [
            chat_line(0, max_tokens=200), chat_line(1, max_completion_tokens=200),
            chat_line(2, max_tokens=200, n=2)])
        assert made.status_code == 200, made.text
        assert made.headers["x-ratelimit-remaining-tokens"] == "200"
        chat = await client.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 300})
        assert chat.status_code == 429, chat.text
        assert chat.json()["error"]["code"] == "rate_limit_tokens"


async def test_a_batch_without_room_is_a_429_and_never_reaches_the_backend():
    settings, key = keyed(tpm=1000)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        first = await create_batch(client, key, [chat_line(i, max_tokens=300) for i in range(3)])
        assert first.status_code == 200, first.text
        refused = await create_batch(client, key, [chat_line(0, max_tokens=200)])
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_tokens")
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["x-ratelimit-remaining-tokens"] == "100"
        assert len(backend.ran) == 1


async def test_a_batch_over_a_whole_window_is_a_400():
    settings, key = keyed(tpm=1000, tokens_per_day=5000)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        refused = await create_batch(client, key, [chat_line(i, max_tokens=300)
                                                   for i in range(4)])
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["param"], error["code"]) == ("input_file_id", "over_key_limit")
        assert "1200" in error["message"]
        assert backend.ran == []


async def test_a_request_without_a_cap_runs_under_the_default_written_into_it():
    # The bound must hold however the backend treats a request with no cap: the gateway
    # writes default_budget_tokens (100) into it, in a copy of the input file it uploads.
    settings, key = keyed(tpm=1000)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        made = await create_batch(client, key, [chat_line(0), chat_line(1, max_tokens=50)])
        assert made.status_code == 200, made.text
        assert made.headers["x-ratelimit-remaining-tokens"] == "850"
        ran = backend.ran[0]
        assert [line["body"].get("max_completion_tokens") for line in ran] == [100, None]
        assert ran[1]["body"]["max_tokens"] == 50
        assert [line["custom_id"] for line in ran] == ["r0", "r1"]
        # The copy the batch runs is the key's own, as the file it uploaded is.
        copy = made.json()["input_file_id"]
        assert (await client.get(f"/v1/files/{copy}", headers=bearer(key))).status_code == 200


async def test_a_batch_the_backend_refuses_gives_its_reservation_back():
    settings, key = keyed(tpm=1000)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        refused = await create_batch(client, key, [chat_line(i, max_tokens=300)
                                                   for i in range(3)], window="1h")
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "completion_window"
        missing = await client.post("/v1/batches", headers=bearer(key), json={
            "input_file_id": "file-missing", "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
        assert missing.status_code == 404, missing.text
        made = await create_batch(client, key, [chat_line(i, max_tokens=300) for i in range(3)])
        assert made.status_code == 200, made.text
        assert made.headers["x-ratelimit-remaining-tokens"] == "100"


async def test_a_batch_under_no_token_limit_is_forwarded_as_sent():
    settings, key = keyed(rpm=100)
    backend = BatchBackend()
    async with gateway_client(backend.transport(), settings) as client:
        made = await create_batch(client, key, [chat_line(0)])
        assert made.status_code == 200, made.text
        assert backend.ran == [[chat_line(0)]]
