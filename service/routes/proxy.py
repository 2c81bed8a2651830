"""Every other ``/v1/*`` call (``/v1/embeddings``, ``/v1/responses``, ...), forwarded as it is
to the backend serving the named model, streaming included, so that pointing an application
at the gateway breaks nothing. A JSON body that does not parse is a 400, and a backend's error
reply (whatever its body: JSON or plain text) is rendered in OpenAI's envelope, its message
kept. Counted in ``ttc_proxied_requests_total``; a call that names a model, or starts an
Assistants run (which names none), reserves tokens from its key's limits like a completion
(``admission.reserve_for_proxy``), and the usage its reply reports is counted
(``service.proxy_usage``). With a key that is not an admin key, a
call reaches only the key's own objects (``service.ownership``), those that the requests in a
new batch's input file name included (``service.batch_input``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match

from service import metrics
from service.admission import admission_of, admit_stream, reserve_for_proxy
from service.backends import AUTO_MODEL
from service.batch_input import (
    batch_bound,
    batch_input_file,
    batch_references,
    multipart_upload,
)
from service.deps import Gateway, gateway, read_body
from service.errors import (
    GatewayError,
    MethodNotAllowed,
    RequestTooLarge,
    UpstreamError,
    UpstreamUnavailable,
)
from service.limits import Reservation
from service.ownership import Owned, check_owned, record_owned, target_of
from service.protocol import load_json
from service.proxy_usage import (
    Passing,
    charge_cancelled,
    charge_failed,
    output_cap,
    run_prompt_text,
    starts_run,
)
from service.store import Backend
from service.strategies.base import estimate_prompt_tokens
from service.upstream import is_token_count, may_have_generated

router = APIRouter()

# The endpoint label takes its value from this fixed set, never from the request path.
KNOWN_ENDPOINTS = frozenset({
    "embeddings", "responses", "moderations", "rerank", "score", "tokenize", "detokenize",
    "audio", "images", "files", "batches", "assistants", "threads", "vector_stores", "messages",
})
# Request headers that describe the client's hop, or carry the client's own credentials.
_DROPPED_REQUEST_HEADERS = frozenset({
    "host", "authorization", "content-length", "connection", "keep-alive", "transfer-encoding",
    "accept-encoding", "x-ttc-strategy", "x-ttc-budget-tokens", "x-ttc-policy",
    "x-ttc-experiment",
})


async def forward(path: str, request: Request) -> Response:
    """Forward ``METHOD /v1/{path}`` to the backend serving the body's model (see the module
    docstring); the backend's reply streams back as it comes.

    Raises:
        GatewayError: the body is over ``max_body_bytes`` (413) or not JSON (400), no backend
            serves its model (404), the key may not reach the object it names (404) or is
            over its limits (429), or the backend failed (the ``UpstreamError`` family).
    """
    own = own_route_methods(request)
    if own:  # a path of the gateway's own (no OpenAI path): other methods are not forwarded
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}, which "
                               f"the gateway serves with {', '.join(own)}",
                               allow=", ".join(own))
    gw = gateway(request)
    endpoint = path.split("/", 1)[0] if path.split("/", 1)[0] in KNOWN_ENDPOINTS else "other"
    admission = admission_of(request)
    # Whose objects the call may reach; None: every object (an admin key, or no keys at all).
    owner = None if admission is None or admission.key.admin else admission.key.name
    owned: Owned | None = None
    parsed: Any = None
    reservation: Reservation | None = None
    grant: int | None = None
    label: str | None = None  # the model label of a call that may generate, else None
    run = batch = False
    try:
        body = await read_body(request, gw.settings.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        backend, body, parsed = await _choose_backend(gw, body, content_type)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _DROPPED_REQUEST_HEADERS}
        run = starts_run(request.method, path)
        json_body = _json_body(body, content_type, parsed)
        if isinstance(json_body, dict) and json_body.get("stream") is True:
            await admit_stream(request, gw)  # one of its key's open streams
        if owner is not None:  # before any token is reserved
            owned = await Owned.admit(_objects(gw), owner, request.method, path,
                                      request.url.query, json_body)
        batch_file = batch_input_file(request.method, target_of(path), json_body)
        if batch_file is not None and admission is not None and (
                admission.key.limits_tokens or admission.key.prompt_tpm is not None):
            # Its requests run later, with the gateway's credentials: paid for now.
            body, reservation = await _reserve_batch(request, gw, backend, headers,
                                                     json_body, batch_file, owner)
            batch = True
        elif batch_file is not None and owned is not None and owner is not None:
            # Its requests run with the gateway's credentials: only the key's own objects.
            bare = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            content = (await gw.client.forward(
                backend, "GET", f"/files/{batch_file}/content", b"", bare))[2]
            try:
                await check_owned(owned.store, owner, await batch_references(content))
            finally:
                await content.aclose()
        if run and isinstance(json_body, dict):  # it names no model, yet it generates
            label = str(json_body.get("model") or metrics.NO_LABEL)
            reservation, body, grant = await _reserve_run(request, gw, json_body, body)
        elif parsed is not None:  # a call that may generate: within the key's token limits
            label = str(parsed.get("model"))
            cap = parsed.get("max_output_tokens")  # the Responses API's cap on its output
            valid = isinstance(cap, int) and not isinstance(cap, bool) and cap > 0
            reservation = await reserve_for_proxy(request, gw, cap if valid else None,
                                                  "max_output_tokens", parsed)
            if endpoint == "responses" and not valid and reservation is not None \
                    and reservation.tokens > 0:
                # The key's grant becomes the call's cap: a backend that honours it cannot
                # spend past what the key has left (a budget is never exceeded).
                body = orjson.dumps({**parsed, "max_output_tokens": reservation.tokens})
            # What a call that fails or is cut off may have generated: charged then.
            grant = (reservation.tokens if reservation is not None and reservation.tokens
                     else output_cap(parsed))
        upstream_path = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        sent = generated = False

        def sending() -> None:  # an attempt leaves the gateway: from now on it may generate
            nonlocal sent
            sent = True

        def retrying(error: GatewayError) -> bool:
            # A failed attempt may have generated (a 5xx) or not (a 429, a refused
            # connection); the retry waits out its backoff unsent until it leaves in turn.
            nonlocal sent, generated
            generated = generated or may_have_generated(error)
            sent = False
            return True

        try:
            status, out_headers, chunks = await gw.client.forward(
                backend, request.method, upstream_path, body, headers, sending=sending,
                retry=retrying)
        except GatewayError:
            raise
        except BaseException:  # cancelled (the shutdown deadline): charged if it may have
            if label is not None:  # generated, nothing while it waits for a slot or backoff
                charge_cancelled(label, reservation, grant, sent=sent or generated)
            raise
        if owned is not None and owned.lists(status):

            async def fetch(query: str) -> bytes:  # a further page of the backend's list
                more = await gw.client.forward(backend, "GET", f"/{path}?{query}", b"", headers)
                return b"".join([chunk async for chunk in more[2]])

            first = b"".join([chunk async for chunk in chunks])
            page = await owned.page(request.url.query, first, fetch)
            metrics.PROXIED.labels(endpoint, str(status)).inc()
            return Response(page, status_code=status, headers=out_headers)
    except GatewayError as exc:
        metrics.PROXIED.labels(endpoint, str(exc.status)).inc()
        if label is not None:
            charge_failed(exc, label, reservation, grant)
        elif batch and reservation is not None and not may_have_generated(exc):
            reservation.settle_with(0, 0)  # refused: no batch was made, nothing will run
        raise
    # Counted once the reply ends, as what the client got: a 200 whose body broke off was
    # counted as a 200 when its headers came.
    passing = Passing(endpoint, status, label, reservation, grant, run=run)
    out: AsyncIterator[bytes] = chunks
    if owned is not None:
        out = owned.record(out, status, out_headers.get("content-type", ""))
    return StreamingResponse(passing.chunks(out), status_code=status, headers=out_headers,
                             background=BackgroundTask(passing.close, chunks))


# The first segments of the paths under /v1/ that the gateway serves itself and OpenAI's API
# has not (``/v1/models`` is OpenAI's too: its other methods, such as DELETE of a fine-tuned
# model, are forwarded).
GATEWAY_PATHS = frozenset({"feedback", "learner", "experiments"})


def own_route_methods(request: Request) -> list[str]:
    """The methods the gateway's own routes serve on ``request``'s path when it is one of
    ``GATEWAY_PATHS``, in a fixed order; empty for any other path. Such a path is the
    gateway's, so a method it does not serve there is a 405, not a call forwarded to a backend
    that knows nothing of the path."""
    parts = request.url.path.split("/", 3)  # "", "v1", first segment, rest
    if len(parts) < 3 or parts[1] != "v1" or parts[2] not in GATEWAY_PATHS:
        return []
    # FastAPI wraps an included router in one route (``original_router``); the forwarding
    # routes are this module's ``router``, which serves every path under /v1/.
    own = [route for route in request.app.router.routes
           if getattr(route, "original_router", None) is not router
           and getattr(route, "endpoint", None) is not forward]
    return [method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                   for route in own)]


# One route per method, each with its own operation id: one route serving five methods gave
# them one id in /openapi.json (FastAPI warned "Duplicate Operation ID"), which breaks clients
# generated from the document. The path and the handler are the same for all five.
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    router.add_api_route("/v1/{path:path}", forward, methods=[_method],
                         operation_id=f"forward_{_method.lower()}")


async def _reserve_run(request: Request, gw: Gateway, run: dict[str, Any], body: bytes,
                       ) -> tuple[Reservation | None, bytes, int | None]:
    """(reservation, body, grant) of a call that starts an Assistants run (``run``: its body
    parsed; ``service.proxy_usage``): its ``max_completion_tokens``, else what the key has
    left up to ``default_budget_tokens``, which is then written into the body as the run's
    ``max_completion_tokens`` (the backend ends the run ``incomplete`` there, so the run
    cannot spend past what its key was granted); under a prompt-token limit, its
    ``max_prompt_tokens``, else the estimate of the prompt its body carries. ``grant``: the
    completion tokens the run may generate, charged unless its finished run's usage comes.

    Raises:
        InvalidRequest: ``max_completion_tokens`` is over a whole window of the key (400).
        RateLimited: the key has no tokens left this minute or today (429).
        Overloaded: the shared counters do not answer (503).
    """
    cap = run.get("max_completion_tokens")
    prompt_cap = run.get("max_prompt_tokens")
    valid = is_token_count(cap) and cap > 0
    prompt_tokens = (prompt_cap if is_token_count(prompt_cap) and prompt_cap > 0
                     else estimate_prompt_tokens({"prompt": run_prompt_text(run)}))
    reservation = await reserve_for_proxy(request, gw, cap if valid else None,
                                          "max_completion_tokens", run, prompt_tokens)
    if reservation is None or not reservation.tokens:
        return reservation, body, cap if valid else None
    if not valid:
        body = orjson.dumps({**run, "max_completion_tokens": reservation.tokens})
    return reservation, body, reservation.tokens


async def _reserve_batch(request: Request, gw: Gateway, backend: Any, headers: dict[str, str],
                         batch: dict[str, Any], input_file: str, owner: str | None,
                         ) -> tuple[bytes, Reservation | None]:
    """(body, reservation) of ``POST /v1/batches`` (``batch``: its body) by a key with token
    limits: its input file read back from the backend, whose requests must name only the
    key's own objects (``owner``; None: any), and the most they may generate
    (``batch_input.batch_bound``) reserved from the key. When a request set no cap, a copy of
    the file with ``default_budget_tokens`` written into it is uploaded (the key's own, as
    its upload) and the batch runs that copy instead.

    The batch is charged its whole bound: the gateway keeps no state across requests, and
    its requests finish hours later, so what they did not spend is not given back.

    Raises:
        RequestTooLarge: the input file is over ``max_body_bytes`` (413).
        UnknownObject: a request names an object the key does not own (404).
        InvalidRequest: the bound is over a whole window of the key's limits (400).
        RateLimited: the key has no room for it this minute or today (429).
        Overloaded: the shared counters do not answer (503).
        GatewayError: the backend failed to serve the file or take its copy.
    """
    bare = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    chunks = (await gw.client.forward(backend, "GET", f"/files/{input_file}/content", b"",
                                      bare))[2]
    limit = gw.settings.max_body_bytes
    held = bytearray()
    try:
        async for chunk in chunks:
            held += chunk
            if len(held) > limit:
                raise RequestTooLarge(
                    f"the batch's input file is over {limit} bytes, more than the gateway "
                    "reads to bound what its requests may spend", param="input_file_id",
                    code="batch_input_too_large")
    finally:
        await chunks.aclose()
    content = bytes(held)
    if owner is not None:
        await check_owned(_objects(gw), owner, await batch_references(_once(content)))
    bound = batch_bound(content, gw.settings.default_budget_tokens)
    # A batch of embeddings generates nothing, but a reservation of 0 reads as no room.
    reservation = await reserve_for_proxy(request, gw, max(1, bound.completion_tokens),
                                          "input_file_id", batch, bound.prompt_tokens)
    if bound.content is None:
        return orjson.dumps(batch), reservation
    try:
        upload, content_type = multipart_upload(bound.content)
        reply = (await gw.client.forward(
            backend, "POST", "/files", upload, {**bare, "content-type": content_type}))[2]
        try:
            made = orjson.loads(b"".join([chunk async for chunk in reply]))
        except orjson.JSONDecodeError:
            made = None
        copy = made.get("id") if isinstance(made, dict) else None
        if not isinstance(copy, str):
            raise UpstreamError("the backend's reply to the upload of the batch's input "
                                "file names no file id")
        if owner is not None:
            await record_owned(_objects(gw), owner, [("files", copy)])
    except BaseException:
        if reservation is not None:
            reservation.settle_with(0, 0)  # no batch was made
        raise
    return orjson.dumps({**batch, "input_file_id": copy}), reservation


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _objects(gw: Gateway) -> Backend:
    """The database that records each object's owner (the request log's).

    Raises:
        GatewayError: the gateway has no request log, so owners cannot be checked (500).
    """
    if gw.request_log is None:
        raise GatewayError("the request log is not available: objects' owners are unknown")
    return gw.request_log.backend


def _json_body(body: bytes, content_type: str, parsed: Any) -> Any:
    """The request's JSON body (``parsed`` when ``_choose_backend`` parsed it), else None."""
    if parsed is not None or not body or not content_type.startswith("application/json"):
        return parsed
    return orjson.loads(body)  # valid: ``_choose_backend`` parsed it once already


async def _choose_backend(gw, body: bytes, content_type: str):  # type: ignore[no-untyped-def]
    """(backend, body, parsed): the backend serving the body's ``model`` (``auto`` rewritten
    to the default model) and the body parsed, or the first backend when the call names no
    model (then ``parsed`` is None).

    Raises:
        InvalidRequest: a JSON body that does not parse (400).
        NotFound: no backend serves the named model (404).
    """
    if body and content_type.startswith("application/json"):
        parsed = load_json(body)  # a 400 for a body it could not write again upstream
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            backend, model = await gw.registry.resolve(parsed["model"], gw.client)
            if parsed["model"] == AUTO_MODEL:
                parsed["model"] = model
                body = orjson.dumps(parsed)
            return backend, body, parsed
    if not gw.registry.backends:
        raise UpstreamUnavailable("no backend is configured", code="no_backend")
    return gw.registry.backends[0], body, None
