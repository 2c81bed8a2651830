"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router_models.prompt import has_conversation
from service.admission import admission_of, reserve_for_call
from service.backends import AUTO_MODEL
from service.deps import gateway, read_body
from service.errors import GatewayError, InvalidRequest, Overloaded
from service.experiments import identity_of
from service.latency import CALL, RECEIVED
from service.protocol import Endpoint, RoutedRequest, parse_json_object, parse_request
from service.routing import Router
from service.strategies import REGISTRY, Call
from service.strategies.base import record

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    return await _complete(request, "chat")


async def completions(request: Request) -> Response:
    return await _complete(request, "completions")


# Plain Starlette routes: FastAPI's per-request dependency solving is a measurable share of the
# gateway's own CPU on the hottest path, and these handlers take nothing but the request.
router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])


async def _complete(request: Request, endpoint: Endpoint) -> Response:
    gw = gateway(request)
    body = parse_json_object(await read_body(request, gw.settings.max_body_bytes))
    routed = parse_request(endpoint, body, dict(request.headers))
    _check_routable(routed)
    assert gw.router is not None and gw.experiments is not None
    experiment = gw.experiments.experiment_for(routed)
    backend, upstream_model = await gw.registry.resolve(routed.model, gw.client)
    assignment = None
    if experiment is not None:
        admission = admission_of(request)
        identity, how = identity_of(routed, request.headers.get("x-session-id"),
                                    admission.key.name if admission is not None else None)
        assignment = await gw.experiments.assign(experiment, identity, how)
    plan, scores = gw.router.plan(routed, backend, upstream_model,
                                  policy=assignment.policy if assignment else None)
    plan, reservation = await reserve_for_call(request, gw, routed, plan)
    call = Call(routed, backend, upstream_model, gw.client, gw.registry, gw.settings, plan,
                reporter=gw.reporter, reservation=reservation, scores=scores,
                assignment=assignment, started=request.scope.get(RECEIVED, time.perf_counter()))
    request.scope[CALL] = call  # for the overhead header and the trace (service.latency)
    strategy = REGISTRY[plan.strategy]
    headers = {"x-ttc-decision-id": routed.decision_id, "x-ttc-strategy": plan.strategy}

    if not routed.stream:
        try:
            result = await strategy.complete(call)
        except GatewayError as exc:
            record(call, str(exc.status))
            raise
        except asyncio.CancelledError:  # cut off at the shutdown deadline: answered 503
            record(call, str(Overloaded.status))
            raise
        record(call, "200")
        _observe_usage(gw.router, call)
        return Response(orjson.dumps(result), media_type="application/json", headers=headers)

    try:
        body_iter = await strategy.open_stream(call)
    except GatewayError as exc:
        record(call, str(exc.status))
        raise
    except asyncio.CancelledError:
        record(call, str(Overloaded.status))
        raise
    headers["cache-control"] = "no-cache"
    return StreamingResponse(_recorded(call, body_iter, gw.router), media_type="text/event-stream",
                             headers=headers)


async def _recorded(call: Call, body: AsyncIterator[bytes], router: Router | None
                    ) -> AsyncIterator[bytes]:
    """The strategy's SSE body, reported once it ends (also when the client goes away)."""
    try:
        async for chunk in body:
            yield chunk
    except asyncio.CancelledError:  # cut off at the shutdown deadline (service.admission)
        call.stream_error = call.stream_error or Overloaded("the gateway is shutting down")
        raise
    finally:
        error = call.stream_error
        record(call, "200" if error is None else str(error.status))
        if error is None:
            _observe_usage(router, call)


def _observe_usage(router: Router | None, call: Call) -> None:
    """Teach the router how long this kind of prompt's answers run on this model."""
    if router is not None:
        router.observe_usage(call.scores, call.plan, call.upstream_model,
                             call.acct.completion_tokens, call.report)


def _check_routable(routed: RoutedRequest) -> None:
    """Refuse prompts ``auto`` cannot read."""
    if (routed.endpoint == "chat" and routed.model == AUTO_MODEL
            and not has_conversation(routed.body["messages"])):
        raise InvalidRequest("messages hold no user turn to answer", param="messages")
