"""``GET /health`` (the process is alive), ``GET /ready`` (a backend answers), ``/metrics``.

The two probes also answer ``HEAD`` (the same status, no body): some load balancers check
health with it."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.admission import is_admin
from service.deps import gateway
from service.errors import GatewayError, Unauthorized, UpstreamUnavailable, error_body

router = APIRouter()

READY_TIMEOUT_S = 5.0


@router.get("/health")
@router.head("/health", include_in_schema=False)
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
@router.head("/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    gw = gateway(request)

    async def probe(backend):  # type: ignore[no-untyped-def]
        try:
            # Outside the traffic's concurrency gate: a saturated backend is still ready.
            await asyncio.wait_for(gw.client.probe(backend, "/models"), READY_TIMEOUT_S)
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
async def metrics(request: Request) -> Response:
    """Prometheus exposition; behind ``Authorization: Bearer <metrics_token>`` (or an admin
    key, see ``service.admission``) when the ``metrics_token`` setting is set.

    Raises:
        Unauthorized: the token is set and the request does not carry it (401).
    """
    token = gateway(request).settings.metrics_token
    if token is not None and not is_admin(request):
        expected = b"Bearer " + token.get_secret_value().encode()
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise Unauthorized("GET /metrics needs Authorization: Bearer <metrics_token>")
    gw = gateway(request)
    if gw.router is not None:
        gw.router.export_budgets()
    gw.registry.export_ignores_max_tokens()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
