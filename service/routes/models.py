"""``GET /v1/models`` (every backend model, and ``auto``) and ``GET /v1/models/{id}`` (one of
them), in the shape of OpenAI's ``Model`` and ``ListModelsResponse``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.backends import AUTO_MODEL
from service.deps import Gateway, gateway
from service.errors import NotFound

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await _models(gateway(request))})


# ``:path``: backend model ids may hold slashes ("Qwen/Qwen2.5-0.5B-Instruct"), and the SDKs
# put the id in the path as it is.
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    """One model as OpenAI serves it (``client.models.retrieve("auto")``).

    Raises:
        NotFound: no backend serves ``model_id`` and it is not ``auto`` (404).
    """
    for model in await _models(gateway(request)):
        if model["id"] == model_id:
            return JSONResponse(model)
    raise NotFound(f"the model {model_id!r} does not exist; GET /v1/models lists the models",
                   param="model", code="model_not_found")


async def _models(gw: Gateway) -> list[dict[str, Any]]:
    """``auto`` first (its ``root`` the model it resolves to), then every backend's models
    (``owned_by`` the backend's label), each id once."""
    if not gw.registry.model_ids():
        await gw.registry.discover(gw.client)
    data: list[dict[str, Any]] = [{"id": AUTO_MODEL, "object": "model", "created": 0,
                                   "owned_by": "ttc-router",
                                   "root": gw.registry.default_model()}]
    seen = {AUTO_MODEL}
    for backend in gw.registry.backends:
        for model in backend.models:
            if model not in seen:
                seen.add(model)
                data.append({"id": model, "object": "model", "created": 0,
                             "owned_by": backend.label})
    return data
