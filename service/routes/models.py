"""``GET /v1/models``: every backend model, and ``auto``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.backends import AUTO_MODEL
from service.deps import gateway

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    gw = gateway(request)
    if not gw.registry.model_ids():
        await gw.registry.discover(gw.client)
    data = [{"id": AUTO_MODEL, "object": "model", "created": 0, "owned_by": "ttc-router",
             "root": gw.registry.default_model()}]
    for backend in gw.registry.backends:
        for model in backend.models:
            data.append({"id": model, "object": "model", "created": 0,
                         "owned_by": backend.label})
    return JSONResponse({"object": "list", "data": data})
