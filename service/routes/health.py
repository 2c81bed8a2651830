"""``GET /health`` (the process is alive), ``GET /ready`` (a backend answers), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.deps import gateway
from service.errors import GatewayError, UpstreamUnavailable, error_body

router = APIRouter()

READY_TIMEOUT_S = 5.0


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    gw = gateway(request)

    async def probe(backend):  # type: ignore[no-untyped-def]
        try:
            await asyncio.wait_for(gw.client.get_json(backend, "/models", retries=0),
                                   READY_TIMEOUT_S)
            return "up"
        except (GatewayError, TimeoutError):
            return "down"

    states = await asyncio.gather(*(probe(b) for b in gw.registry.backends))
    backends = {b.label: s for b, s in zip(gw.registry.backends, states, strict=True)}
    if "up" in states:
        if not gw.registry.model_ids():
            await gw.registry.discover(gw.client)
        return JSONResponse({"status": "ready", "backends": backends})
    body = error_body(UpstreamUnavailable("no backend is reachable", code="not_ready"))
    body["backends"] = backends
    return JSONResponse(body, status_code=503)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
