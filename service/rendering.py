"""Errors as HTTP responses: OpenAI's envelope (``service.errors.error_json``) in a Starlette
``Response``, shared by the FastAPI app's exception handlers and the completion hot path so
that clients cannot tell the two apart."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from service import metrics
from service.errors import GatewayError, InvalidRequest, NotFound, error_json

log = logging.getLogger(__name__)


def error_response(exc: GatewayError) -> Response:
    """The response for a ``GatewayError`` raised while handling a request; a refused
    request (400/404/413/422) is counted in ``ttc_rejected_total{reason="invalid"}``, unless
    it was counted under another reason where it was raised (``exc.counted``)."""
    if isinstance(exc, (InvalidRequest, NotFound)) and not exc.counted:
        metrics.REJECTED.labels("invalid").inc()
    return render(exc)


def unexpected_error_response(request: Request, exc: Exception) -> Response:
    """A 500 in the envelope for a bug: logged with its traceback, never crashing the app."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return render(GatewayError("the gateway failed unexpectedly; it keeps serving"))


def render(exc: GatewayError) -> Response:
    """``exc`` in OpenAI's envelope, with its status and headers, counted nowhere."""
    return Response(error_json(exc), status_code=exc.status, media_type="application/json",
                    headers=exc.headers())
