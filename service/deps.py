"""What route handlers need from the app: the shared ``Gateway`` and the request body."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from service.backends import BackendRegistry
from service.errors import ClientClosed, RequestTooLarge
from service.experiments import Experiments
from service.key_streams import KeyStreams
from service.keys import KeyRing
from service.learning import Learner
from service.limits import KeyLimiter
from service.observe import Reporter
from service.routing import Router
from service.search import SearchBackend
from service.settings import Settings
from service.store.log import RequestLog
from service.upstream import UpstreamClient


@dataclass
class Gateway:
    """The state the lifespan owns: settings, the upstream client, the backend registry,
    the reporter of finished requests, the request log (None when there is none), the API
    keys, the per-key limiter and the keys' open streams (``service.admission`` uses them),
    the router (the classifier and the policies behind ``model: "auto"``), the A/B
    experiments, the learner that feeds feedback to the learned policies, and the search
    backend of the ``search`` strategy (opened once, on the app's search HTTP client)."""

    settings: Settings
    client: UpstreamClient
    registry: BackendRegistry
    reporter: Reporter
    request_log: RequestLog | None = None
    keys: KeyRing | None = None
    limiter: KeyLimiter | None = None
    router: Router | None = None
    experiments: Experiments | None = None
    search: SearchBackend | None = None
    learner: Learner | None = None
    streams: KeyStreams | None = None


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused as soon as it passes ``limit_bytes``.

    Raises:
        RequestTooLarge: the declared or the received size is over the limit (413).
        ClientClosed: the client went away before its body was read (uvicorn drops a body it
            buffered once the connection is lost); Starlette's ``ClientDisconnect`` was
            reported as an unexpected error, and a 500 sent to nobody.
    """
    try:
        return await _read_body(request, limit_bytes)
    except ClientDisconnect as exc:
        raise ClientClosed("the client went away before its request was read") from exc


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit_bytes:
            raise RequestTooLarge(f"the request body is over the limit of {limit_bytes} bytes")
        return await request.body()  # the server stops at content-length bytes
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise RequestTooLarge(f"the request body is over the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
