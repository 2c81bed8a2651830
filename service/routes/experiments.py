"""``GET /v1/experiments/{name}``: an A/B experiment's report (an admin surface: once API keys
exist it needs an admin key, checked by ``service.admission``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from service.deps import Gateway, gateway
from service.errors import GatewayError
from service.store import StoreError

router = APIRouter()


@router.get("/v1/experiments/{name}")
async def experiment_report(name: str, gw: Annotated[Gateway, Depends(gateway)]) -> JSONResponse:
    """Per arm: requests, feedback, accuracy with its Wilson interval, mean completion tokens
    with its interval, correct answers per 1000 tokens; the comparison of the arms (interval,
    p-value) and the always-valid stopping rule (``service.experiments.build_report``).

    Raises:
        InvalidRequest: no experiment has this name (400).
        GatewayError: the request log failed (500).
    """
    assert gw.experiments is not None
    gw.experiments.config(name)
    try:
        report = await gw.experiments.report(name)
    except StoreError as exc:
        raise GatewayError(f"cannot read the experiment's totals: {exc}") from exc
    return JSONResponse(report)
