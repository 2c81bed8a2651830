"""A client that sends its request body slowly (a few bytes a second, or its headers and then
nothing) gets a 408 in the envelope once ``client_body_timeout_s`` has passed, on every route,
and the connection is closed: it held a connection (and its request's place in
``ttc_requests_in_flight``) for as long as it liked. Driven through the real server (uvicorn
on a loopback port, raw sockets) and, for the exact messages, in process."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from service.app import create_app
from service.local_backend import free_port
from service.settings import Settings
from tests.conftest import make_settings, metric
from tests.fakes import FakeBackend

TIMEOUT_S = 0.5
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}
# One route of each kind: the completion hot path, a forwarded call, a FastAPI route.
BODIES = {"/v1/chat/completions": CHAT,
          "/v1/embeddings": {"model": "fake-model", "input": "some text to embed"},
          "/v1/feedback": {"id": "chatcmpl-none", "correct": True}}


@dataclass
class Server:
    port: int


# uvicorn's two HTTP parsers: httptools (what ``uvicorn[standard]`` installs and ``serve``
# picks) and h11 (pure Python, the fallback).
@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gateway, lifespan and all, served by uvicorn in a thread on a free loopback port,
    in front of the fake backend; ``client_body_timeout_s`` is ``TIMEOUT_S``."""
    settings = make_settings(client_body_timeout_s=TIMEOUT_S,
                             data_dir=tmp_path_factory.mktemp("slow-bodies"))
    yield from _serve(settings, request.param)


def _serve(settings: Settings, http: str = "httptools") -> Iterator[Server]:
    port = free_port()
    app = create_app(settings, transport=FakeBackend().transport())
    uvicorn_server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="critical", lifespan="on", http=http,
        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.02)
    try:
        yield Server(port)
    finally:
        uvicorn_server.should_exit = True
        thread.join(10)


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]
    body: bytes
    answered_s: float | None  # when the whole response had arrived, from the first byte sent
    closed_s: float | None  # when the server closed the connection


def trickle(port: int, path: str, body: bytes, *, piece_bytes: int, every_s: float,
            chunked: bool = False, declared: int | None = None,
            give_up_s: float = 6.0, method: str = "POST") -> Reply:
    """Send ``body`` to ``path`` (``method``, POST by default) ``piece_bytes`` at a time,
    one piece every ``every_s`` (the headers at once), reading whatever the server answers
    meanwhile, until the server closes the connection or ``give_up_s`` has passed.
    ``declared``: the Content-Length sent, when not ``len(body)`` (a client that declares a
    body and sends less)."""
    framing = (b"Transfer-Encoding: chunked\r\n" if chunked else
               f"Content-Length: {len(body) if declared is None else declared}\r\n".encode())
    head = (f"{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n"
            "Content-Type: application/json\r\n").encode() + framing + b"\r\n"
    pieces = [body[i:i + piece_bytes] for i in range(0, len(body), piece_bytes)]
    if chunked:
        pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    received = b""
    answered_s = closed_s = None
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s) as sock:
        sock.sendall(head)
        next_piece_s = start + every_s
        while (now := time.monotonic()) - start < give_up_s:
            readable, _, _ = select.select([sock], [], [], max(0.0, next_piece_s - now))
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed_s = time.monotonic() - start
                    break
                received += chunk
                if answered_s is None and _complete(received):
                    answered_s = time.monotonic() - start
                continue
            if pieces and time.monotonic() >= next_piece_s:
                try:
                    sock.sendall(pieces.pop(0))
                except OSError:  # the server closed its side: read what it said
                    pieces.clear()
                next_piece_s += every_s
            elif not pieces:
                next_piece_s = time.monotonic() + 0.05
    return _parse(received, answered_s, closed_s)


def _complete(raw: bytes) -> bool:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return False


def _parse(raw: bytes, answered_s: float | None, closed_s: float | None) -> Reply:
    head, _, rest = raw.partition(b"\r\n\r\n")
    if not head:
        return Reply(None, {}, b"", answered_s, closed_s)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, rest, answered_s, closed_s)


def _eventually(check: Callable[[], bool], within_s: float = 1.0) -> bool:
    """Whether ``check()`` holds within ``within_s`` (the server's thread ends a request a
    moment after the client has seen its connection close)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def rejected_for_slow_bodies() -> float:
    return metric("ttc_rejected_total", reason="body_timeout")


@pytest.mark.parametrize("path", list(BODIES))
def test_headers_and_then_nothing_is_a_408_and_the_connection_closes(server, path):
    # The body of a request that declares 200 bytes never comes: before, the request (and
    # its connection) waited for it for ever.
    before = rejected_for_slow_bodies()
    reply = trickle(server.port, path, b"", piece_bytes=1, every_s=0.1, declared=200)
    assert reply.status == 408, reply
    error = json.loads(reply.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "body_timeout"
    assert reply.headers.get("connection") == "close"
    assert reply.answered_s is not None and TIMEOUT_S - 0.05 <= reply.answered_s < TIMEOUT_S + 1
    assert reply.closed_s is not None and reply.closed_s < TIMEOUT_S + 1.5
    assert rejected_for_slow_bodies() == before + 1
    assert _eventually(lambda: metric("ttc_requests_in_flight") == 0)  # nothing held now


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", list(BODIES))
def test_a_body_trickled_a_few_bytes_at_a_time_is_cut_off_at_the_deadline(server, path,
                                                                           chunked):
    # 2 bytes every 0.1 s: every read gets something, so only a deadline on the whole body
    # (not a wait per read) stops it; the body would take seconds.
    body = json.dumps(BODIES[path]).encode()
    assert len(body) / 2 * 0.1 > 3 * TIMEOUT_S
    before = rejected_for_slow_bodies()
    reply = trickle(server.port, path, body, piece_bytes=2, every_s=0.1, chunked=chunked)
    assert reply.status == 408, reply
    assert json.loads(reply.body)["error"]["code"] == "body_timeout"
    assert reply.answered_s is not None and reply.answered_s < TIMEOUT_S + 1
    assert reply.closed_s is not None and reply.closed_s < TIMEOUT_S + 1.5
    assert rejected_for_slow_bodies() == before + 1


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
def test_an_answer_sent_before_the_body_is_read_closes_the_connection(server, path):
    # A route that reads no body answers at once; the server then waited for the rest of the
    # body on the open connection, and each byte stopped its keep-alive timer: a trickle
    # held the connection for as long as it went on.
    reply = trickle(server.port, path, b"x" * 200, piece_bytes=1, every_s=0.1, method="GET",
                    give_up_s=3)
    assert reply.status == 200, reply
    assert reply.headers.get("connection") == "close"
    assert reply.closed_s is not None and reply.closed_s < 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_that_arrives_in_pieces_within_the_deadline_is_served(server, chunked):
    body = json.dumps(CHAT).encode()
    before = rejected_for_slow_bodies()
    reply = trickle(server.port, "/v1/chat/completions", body,
                    piece_bytes=len(body) // 3 + 1, every_s=0.1, chunked=chunked, give_up_s=2)
    assert reply.status == 200, reply
    assert json.loads(reply.body)["choices"][0]["message"]["content"].strip() == "The answer is 4."
    assert reply.closed_s is None  # kept alive for the client's next request
    assert rejected_for_slow_bodies() == before


@dataclass
class SlowBackend(FakeBackend):
    """``FakeBackend`` whose chat answers take twice ``TIMEOUT_S``."""

    async def _chat(self, request: Request) -> Response:
        await asyncio.sleep(TIMEOUT_S * 2)
        return await super()._chat(request)


async def test_a_request_that_takes_longer_than_the_deadline_after_its_body_is_not_cut(
        tmp_path):
    # The deadline is on receiving the body, not on the answer: a vote or a long chain takes
    # as long as it takes.
    settings = make_settings(client_body_timeout_s=TIMEOUT_S, data_dir=tmp_path)
    app = create_app(settings, transport=SlowBackend().transport())
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        started = time.monotonic()
        reply = await client.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started >= TIMEOUT_S * 2


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json"),
                        *headers],
            "client": ("127.0.0.1", 40000), "server": ("gateway.test", 80)}


@pytest.mark.parametrize("path", list(BODIES))
async def test_in_process_the_408_is_sent_at_the_deadline_and_the_request_ends(tmp_path, path):
    # The server gives the first piece of the body, then nothing (the client is still
    # connected): the request ends with the 408 at the deadline, and asks the server to
    # close the connection, whose unread rest of the body it could not parse as a request.
    settings = make_settings(client_body_timeout_s=TIMEOUT_S, data_dir=tmp_path / "data")
    app = create_app(settings, transport=FakeBackend().transport())
    given = [False]

    async def receive() -> dict:
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": b'{"model": "fa', "more_body": True}
        await asyncio.Event().wait()  # the client neither sends nor leaves
        raise AssertionError("unreachable")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    before = rejected_for_slow_bodies()
    async with app.router.lifespan_context(app):
        started = time.monotonic()
        call = asyncio.create_task(app(_scope(path, [(b"content-length", b"300")]),
                                       receive, send))
        try:
            await asyncio.wait_for(asyncio.shield(call), TIMEOUT_S + 1)
        finally:
            call.cancel()
        took_s = time.monotonic() - started
    assert TIMEOUT_S - 0.05 <= took_s < TIMEOUT_S + 0.5
    start, body = sent[0], sent[1]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {"error": {
        "message": f"the request body did not arrive within {TIMEOUT_S:g} s "
                   "(client_body_timeout_s)",
        "type": "invalid_request_error", "param": None, "code": "body_timeout"}}
    assert not body.get("more_body", False)
    assert rejected_for_slow_bodies() == before + 1


def test_the_body_timeout_defaults_to_30_s_and_must_be_positive(tmp_path: Path):
    assert Settings(data_dir=tmp_path).client_body_timeout_s == 30.0
    with pytest.raises(ValueError, match="client_body_timeout_s"):
        Settings(data_dir=tmp_path, client_body_timeout_s=0)
