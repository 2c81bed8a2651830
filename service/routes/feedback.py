"""``POST /v1/feedback``: the outcome of one request, by decision id or response id.

Once API keys exist, a key posts only on the requests made with it (and on those logged
before any key existed); an admin key on any. Another key's request answers as an unknown id
(404), so one tenant can neither teach the learned policies another's outcomes nor probe
which ids exist. The request log's stored ``key_name`` decides, so every replica agrees.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import metrics
from service.admission import admission_of
from service.deps import Gateway, gateway, read_body
from service.errors import Conflict, GatewayError, NotFound
from service.store import AmbiguousId, StoreError, UnknownId, is_correct

log = logging.getLogger(__name__)
router = APIRouter()


class FeedbackRequest(BaseModel):
    """``{"id", "correct": bool}`` or ``{"id", "score": 0.0..1.0}``; ``id`` is a decision id
    (``dec_...``) or the response's ``id`` (the gateway's own, ``chatcmpl-...`` / ``cmpl-...``;
    or, for requests logged before it minted them, the backend's)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    # Strict: an outcome of 1, "yes" or "0.5" is a client's bug, refused (422) rather than
    # guessed at and learned from; a whole-number score (0 or 1) is still a number.
    correct: bool | None = Field(None, strict=True)
    score: float | None = Field(None, ge=0.0, le=1.0, strict=True)

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackRequest:
        if (self.correct is None) == (self.score is None):
            raise ValueError("give exactly one of correct (a boolean) or score (0.0 to 1.0)")
        return self

    def as_score(self) -> float:
        """The feedback as a score in [0, 1]: ``correct`` is 1.0, incorrect 0.0."""
        if self.score is not None:
            return self.score
        return 1.0 if self.correct else 0.0


@router.post("/v1/feedback", openapi_extra={"requestBody": {"content": {"application/json": {
    "schema": FeedbackRequest.model_json_schema()}}, "required": True}})
async def feedback(request: Request, gw: Annotated[Gateway, Depends(gateway)]) -> JSONResponse:
    """Record the outcome on the request log (the last value wins) and, at a request's first
    feedback only, in ``ttc_feedback_total`` and as a learning event (``service.learning``:
    the learned policies learn each decision once, from its first feedback).

    Raises:
        RequestTooLarge: the body is over ``max_body_bytes`` (413).
        RequestValidationError: the body is not JSON (400) or not a ``FeedbackRequest``
            (422), rendered by the app's handler.
        NotFound: no request has this id, or (a key that is not an admin key) only another
            key's request has it (404, the same answer; counted in
            ``ttc_rejected_total{reason="unknown_id"}``).
        Conflict: several requests logged before the gateway minted its own response ids
            share this response id (409; the decision id names one).
        GatewayError: the request log failed (500).
    """
    body = await _feedback_body(request, gw.settings.max_body_bytes)
    if gw.request_log is None:
        raise GatewayError("the request log is not available")
    score = body.as_score()
    admission = admission_of(request)  # None: no keys, the gateway is open to all
    key_name = None if admission is None or admission.key.admin else admission.key.name
    try:
        applied = await gw.request_log.feedback(body.id, score, key_name=key_name)
    except UnknownId as exc:
        # Its own reason, not "invalid": a well-formed feedback on a stale id, or on another
        # key's (answered alike), is not a malformed request and is watched for apart.
        metrics.child(metrics.REJECTED, "unknown_id").inc()
        unknown = NotFound(str(exc), param="id", code="unknown_id")
        unknown.counted = True
        raise unknown from exc
    except AmbiguousId as exc:
        raise Conflict(str(exc), param="id", code="ambiguous_id") from exc
    except StoreError as exc:
        raise GatewayError(f"cannot record feedback: {exc}") from exc
    correct = is_correct(score)
    if gw.learner is not None:
        # Learn it here before answering, also when it was posted before (perhaps to another
        # replica, whose reply the client lost): its event is then in the log already, and
        # this replica would otherwise decide without it until its next read.
        try:  # other replicas read it within learn_interval_s
            await gw.learner.sync()
        except StoreError as exc:  # recorded all the same: the learner's next read applies it
            log.warning("feedback recorded, learning deferred: %s", exc)
    if applied.first:
        metrics.child(metrics.FEEDBACK, applied.strategy, applied.policy or metrics.NO_LABEL,
                      applied.arm or metrics.NO_LABEL,
                      "correct" if correct else "incorrect").inc()
    if gw.experiments is not None:
        await gw.experiments.feedback(applied, correct)
    return JSONResponse({"object": "feedback", "id": body.id,
                         "decision_id": applied.decision_id, "correct": correct,
                         "score": score})


async def _feedback_body(request: Request, limit_bytes: int) -> FeedbackRequest:
    """The body, read within ``limit_bytes`` as every other body is (``read_body``): declared
    as a FastAPI body parameter, it was read whole, whatever its size, before any check."""
    raw = await read_body(request, limit_bytes)
    if not raw.strip():  # as FastAPI words a missing body: "not valid JSON: it is empty"
        raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                       "msg": "Field required", "input": None}])
    try:
        return FeedbackRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from exc
