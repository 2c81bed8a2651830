"""Security basics: only the configuration says where upstream calls go and with which key;
the client's Authorization never travels upstream; keys and Authorization headers never reach
logs (at DEBUG), error messages, metrics or the request log; prompts are logged only when the
operator opts in."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from service.app import create_app
from service.keys import SqliteKeyStore
from service.settings import Settings, UpstreamSettings
from tests.conftest import BACKEND_URL, gateway_client, make_settings
from tests.fakes import FakeBackend

CHAT = "/v1/chat/completions"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
PROMPT = "my-private-prompt-7f3a9"


class Recorder:
    """A MockTransport backend that records every request's URL and headers, and answers."""

    def __init__(self, status: int = 200, echo_auth: bool = False):
        self.seen: list[httpx.Request] = []
        self.status = status
        self.echo_auth = echo_auth

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "fake-model"}]})
        if self.status != 200:
            message = f"bad credentials {request.headers.get('authorization')}" \
                if self.echo_auth else "no"
            return httpx.Response(self.status, json={"error": {"message": message}})
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json={"data": [], "object": "list"})
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 1, "model": "fake-model",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "fine"}}]})


def keyed_settings(**overrides) -> Settings:
    upstream = UpstreamSettings(url=BACKEND_URL, name="fake", models=["fake-model"],
                                api_key=UPSTREAM_KEY)
    return make_settings(upstreams=[upstream], **overrides)


def new_key(name: str = "client", **limits) -> str:
    return SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db").create(name, **limits)


async def test_no_request_field_or_header_can_point_the_gateway_elsewhere():
    backend = Recorder()
    hostile_headers = {"host": "evil.test", "x-forwarded-host": "evil.test",
                       "x-upstream-url": "http://evil.test/v1", "x-ttc-backend": "evil",
                       "forwarded": "host=evil.test", "x-original-url": "http://evil.test"}
    hostile_fields = {"base_url": "http://evil.test/v1", "api_base": "http://evil.test/v1",
                      "upstream": "http://evil.test/v1", "api_key": "sk-client",
                      "router": {"strategy": "direct"}}
    async with gateway_client(backend.transport(), keyed_settings()) as client:
        for path, body in ((CHAT, {"model": "fake-model", "messages": [
                {"role": "user", "content": "hi"}], **hostile_fields}),
                ("/v1/embeddings", {"model": "fake-model", "input": "x", **hostile_fields})):
            reply = await client.post(path, json=body, headers=hostile_headers)
            assert reply.status_code == 200, reply.text
        # a destination among the routing controls is an unknown control: a 400 naming it
        steer = {"strategy": "direct", "upstream": "http://evil.test/v1"}
        reply = await client.post(CHAT, json={"model": "fake-model", "router": steer,
                                              "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "router.upstream"
    assert backend.seen
    assert {r.url.host for r in backend.seen} == {"backend.test"}
    assert all(str(r.url).startswith(BACKEND_URL) for r in backend.seen)


async def test_the_clients_authorization_never_goes_upstream_only_the_configured_key():
    backend = Recorder()
    secret = new_key()
    async with gateway_client(backend.transport(), keyed_settings()) as client:
        for path, body in ((CHAT, {"model": "fake-model", "messages": [
                {"role": "user", "content": "hi"}]}),
                ("/v1/embeddings", {"model": "fake-model", "input": "x"})):
            reply = await client.post(path, json=body,
                                      headers={"authorization": f"Bearer {secret}"})
            assert reply.status_code == 200
    calls = [r for r in backend.seen if not r.url.path.endswith("/models")]
    assert len(calls) == 2
    for request in calls:
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert secret not in str(request.headers) and secret.encode() not in request.content


@pytest.mark.parametrize("upstream_status", [200, 401, 500])
async def test_keys_never_reach_logs_errors_metrics_or_the_request_log(caplog,
                                                                        upstream_status):
    caplog.set_level(logging.DEBUG)
    secret = new_key("logged", rpm=3, tokens_per_day=1000)
    wrong = "ttc-not-a-real-key-but-secret-looking"
    backend = Recorder(status=upstream_status, echo_auth=True)
    settings = keyed_settings(max_retries=0)
    app = create_app(settings, transport=backend.transport())
    bodies = []
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        for token in (secret, wrong, secret, secret, secret):  # the last one is over the rpm
            for stream in (False, True):
                reply = await client.post(
                    CHAT, headers={"authorization": f"Bearer {token}"},
                    json={"model": "fake-model", "stream": stream, "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hello"}]})
                bodies.append(reply.text + str(reply.headers))
        request_log = app.state.gateway.request_log
        await request_log.flush()
    assert any("429" in b or "rate_limit" in b for b in bodies)
    exposed = generate_latest(REGISTRY).decode()
    data = b"".join(p.read_bytes() for p in Path(os.environ["TTC_DATA_DIR"]).glob("requests.db*"))
    for needle in (secret, wrong, UPSTREAM_KEY):
        assert needle not in caplog.text
        assert all(needle not in body for body in bodies)
        assert needle not in exposed
        assert needle.encode() not in data
    assert "Bearer" not in caplog.text


async def test_prompts_are_logged_only_when_the_operator_opts_in(caplog):
    caplog.set_level(logging.DEBUG)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": PROMPT}]}
    for keep in (False, True):
        app = create_app(keyed_settings(log_text=keep), transport=Recorder().transport())
        async with (app.router.lifespan_context(app),
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url="http://gateway.test") as client):
            reply = await client.post(CHAT, json=body)
            record = await app.state.gateway.request_log.get(reply.headers["x-ttc-decision-id"])
        assert PROMPT not in caplog.text  # never in the process log
        assert (record.prompt_text is not None and PROMPT in record.prompt_text) == keep


async def test_the_data_dir_and_its_databases_are_private_to_the_gateways_user():
    # The request log keeps prompts and answers (log_text), and the key store every tenant's
    # name and limits: under the usual umask (022) they were made readable by every local user.
    data = Path(os.environ["TTC_DATA_DIR"])
    previous = os.umask(0o022)
    try:
        key = new_key("alice")
        async with gateway_client(Recorder().transport(), make_settings(log_text=True)) as client:
            reply = await client.post(CHAT, headers={"authorization": f"Bearer {key}"}, json={
                "model": "fake-model", "messages": [{"role": "user", "content": PROMPT}]})
            assert reply.status_code == 200
            made = sorted(path.name for path in data.iterdir())
            assert {"keys.db", "requests.db"} <= set(made)
            for path in data.iterdir():  # the databases, their -wal and -shm files
                if path.is_file():
                    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path.name, made)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def _requests_with_status(status: str) -> float:
    return sum(sample.value for family in REGISTRY.collect()
               if family.name == "ttc_requests" for sample in family.samples
               if sample.name == "ttc_requests_total" and sample.labels["status"] == status)


def _stalled_stream_call(app, body: bytes, key: str):  # type: ignore[no-untyped-def]
    """Call ``app`` as a server would for a client that sends ``body`` and then never reads
    its response (a zero TCP window: every body message waits for ever) and never leaves.
    Returns the call's task and the statuses the server was sent."""
    statuses: list[int] = []
    given = [False]

    async def receive() -> dict:
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message.get("body"):
            await asyncio.Event().wait()  # the client's window is full: never drains

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 40000), "server": ("gateway.test", 80)}
    return asyncio.create_task(app(scope, receive, send)), statuses


async def test_a_client_that_stops_reading_its_stream_does_not_hold_a_backend_slot():
    # A stream holds its backend's concurrency slot until it ends, and it ends only when the
    # client has read it: a client that stops reading (and keeps the connection) held the
    # slot for ever, so a key's 256 such streams made every other tenant's request wait
    # backend_queue_timeout_s and get a 503.
    mallory, alice = new_key("mallory"), new_key("alice")
    settings = make_settings(backend_max_concurrency=1, backend_queue_timeout_s=2.0,
                             client_send_timeout_s=0.3)
    app = create_app(settings, transport=FakeBackend().transport())
    ask = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    left_before = _requests_with_status("499")
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        stalled, statuses = _stalled_stream_call(
            app, json.dumps({**ask, "stream": True}).encode(), mallory)
        try:
            for _ in range(200):
                if statuses:
                    break
                await asyncio.sleep(0.01)
            assert statuses == [200]  # its stream started, and holds the one slot
            reply = await client.post(CHAT, json=ask,
                                      headers={"authorization": f"Bearer {alice}"})
            assert reply.status_code == 200, reply.text
            # The stalled call ended (a server closes its connection then), recorded as a
            # client that left.
            await asyncio.wait_for(asyncio.shield(stalled), 2.0)
            assert _requests_with_status("499") == left_before + 1
        finally:
            stalled.cancel()  # before the fix: cancelled, it waited on its client for ever
            await asyncio.wait({stalled}, timeout=1.0)
