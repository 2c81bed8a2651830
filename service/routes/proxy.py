"""Every other ``/v1/*`` call (``/v1/embeddings``, ``/v1/responses``, ...), forwarded as it is
to the backend serving the named model, streaming included, so that pointing an application
at the gateway breaks nothing. A JSON body that does not parse is a 400, and a backend's error
reply (whatever its body: JSON or plain text) is rendered in OpenAI's envelope, its message
kept. Counted in ``ttc_proxied_requests_total``; a call that names a model reserves tokens
from its key's limits like a completion (``admission.reserve_for_proxy``), and the usage its
reply reports is counted (``service.proxy_usage``)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse

from service import metrics
from service.admission import reserve_for_proxy
from service.backends import AUTO_MODEL
from service.deps import gateway, read_body
from service.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from service.proxy_usage import counted

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


@router.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def forward(path: str, request: Request) -> StreamingResponse:
    gw = gateway(request)
    endpoint = path.split("/", 1)[0] if path.split("/", 1)[0] in KNOWN_ENDPOINTS else "other"
    try:
        body = await read_body(request, gw.settings.max_body_bytes)
        backend, body, parsed = await _choose_backend(
            gw, body, request.headers.get("content-type", ""))
        model = parsed.get("model") if parsed is not None else None
        reservation = None
        if parsed is not None:  # a call that may generate: within the key's token limits
            cap = parsed.get("max_output_tokens")  # the Responses API's cap on its output
            valid = isinstance(cap, int) and not isinstance(cap, bool) and cap > 0
            reservation = await reserve_for_proxy(request, gw, cap if valid else None,
                                                  "max_output_tokens", parsed)
            if endpoint == "responses" and not valid and reservation is not None \
                    and reservation.tokens > 0:
                # The key's grant becomes the call's cap: a backend that honours it cannot
                # spend past what the key has left (a budget is never exceeded).
                body = orjson.dumps({**parsed, "max_output_tokens": reservation.tokens})
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _DROPPED_REQUEST_HEADERS}
        upstream_path = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        status, out_headers, chunks = await gw.client.forward(
            backend, request.method, upstream_path, body, headers)
    except GatewayError as exc:
        metrics.PROXIED.labels(endpoint, str(exc.status)).inc()
        raise
    metrics.PROXIED.labels(endpoint, str(status)).inc()
    out = chunks if parsed is None else counted(chunks, str(model), reservation)
    return StreamingResponse(out, status_code=status, headers=out_headers,
                             background=BackgroundTask(chunks.aclose))


async def _choose_backend(gw, body: bytes, content_type: str):  # type: ignore[no-untyped-def]
    """(backend, body, parsed): the backend serving the body's ``model`` (``auto`` rewritten
    to the default model) and the body parsed, or the first backend when the call names no
    model (then ``parsed`` is None).

    Raises:
        InvalidRequest: a JSON body that does not parse (400).
        NotFound: no backend serves the named model (404).
    """
    if body and content_type.startswith("application/json"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            backend, model = await gw.registry.resolve(parsed["model"], gw.client)
            if parsed["model"] == AUTO_MODEL:
                parsed["model"] = model
                body = orjson.dumps(parsed)
            return backend, body, parsed
    if not gw.registry.backends:
        raise UpstreamUnavailable("no backend is configured", code="no_backend")
    return gw.registry.backends[0], body, None
