"""``POST /v1/chat/completions`` and ``POST /v1/completions``: the handlers, served by
``service.hotpath`` (registered there only: FastAPI's routing and dependency solving are a
measurable share of the gateway's own CPU on the hottest path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service import sse
from service.admission import admission_of, admit_stream, reserve_for_call
from service.backends import AUTO_MODEL
from service.deps import gateway, read_body
from service.disconnect import ClientWatch, already_left
from service.errors import ClientClosed, GatewayError, InvalidRequest, Overloaded
from service.experiments import identity_of
from service.latency import CALL, DISCONNECTED, RECEIVED
from service.object_refs import references
from service.observe import Reporter
from service.ownership import check_owned
from service.planning import without_user_turn
from service.protocol import Endpoint, RoutedRequest, parse_json_object, parse_request
from service.routing import Router
from service.strategies import REGISTRY, Call
from service.strategies.base import Strategy, record


async def chat_completions(request: Request) -> Response:
    return await _complete(request, "chat")


async def completions(request: Request) -> Response:
    return await _complete(request, "completions")


async def _complete(request: Request, endpoint: Endpoint) -> Response:
    gw = gateway(request)
    body = parse_json_object(await read_body(request, gw.settings.max_body_bytes))
    routed = parse_request(endpoint, body, dict(request.headers))
    admission = admission_of(request)
    if admission is not None and not admission.key.admin:
        # A content part may name a file (``{"type": "file", "file": {"file_id": ...}}``),
        # which the backend reads with the gateway's credentials: the key's own only.
        await check_owned(gw.request_log.backend if gw.request_log is not None else None,
                          admission.key.name, references(body))
    _check_routable(routed)
    assert gw.router is not None and gw.experiments is not None
    experiment = gw.experiments.experiment_for(routed)
    backend, upstream_model = await gw.registry.resolve(routed.model, gw.client)
    assignment = None
    if experiment is not None:
        identity, how = identity_of(routed, request.headers.get("x-session-id"),
                                    admission.key.name if admission is not None else None)
        assignment = await gw.experiments.assign(experiment, identity, how)
    plan, scores = gw.router.plan(routed, backend, upstream_model,
                                  policy=assignment.policy if assignment else None)
    router = gw.router
    if routed.stream:  # one of its key's open streams, before its tokens are reserved
        await admit_stream(request, gw)
    plan, reservation = await reserve_for_call(
        request, gw, routed, plan,
        fit=lambda p, tokens: router.fit_budget(p, tokens, scores, upstream_model))
    call = Call(routed, backend, upstream_model, gw.client, gw.registry, gw.settings, plan,
                reporter=gw.reporter, reservation=reservation, scores=scores,
                assignment=assignment, search=gw.search,
                started=request.scope.get(RECEIVED, time.perf_counter()))
    request.scope[CALL] = call  # for the overhead header and the trace (service.latency)
    strategy = REGISTRY[plan.strategy]
    headers = {"x-ttc-decision-id": routed.decision_id, "x-ttc-strategy": plan.strategy}
    if already_left(request.receive):
        # Gone while the request was classified, its key's tokens reserved or its model
        # resolved: the watcher (50 ms into the strategy) would see it only after the first
        # upstream calls went out, for nobody.
        record(call, str(ClientClosed.status))
        raise ClientClosed("the client went away before its request was started")

    if not routed.stream:
        result = await _complete_watched(call, strategy, request)
        record(call, "200")
        _observe_usage(gw.router, call)
        if gw.reporter.durable:  # the decision is in the shared log before the client sees it
            await gw.reporter.committed(routed.decision_id)
        return Response(orjson.dumps(result), media_type="application/json", headers=headers)

    try:
        body_iter = await strategy.open_stream(call)
    except GatewayError as exc:
        record(call, str(exc.status))
        raise
    except asyncio.CancelledError:
        record(call, str(Overloaded.status))
        raise
    except Exception:  # a bug: answered 500 (service.hotpath), and what it spent counted
        record(call, str(GatewayError.status))
        raise
    headers["cache-control"] = "no-cache"
    return StreamingResponse(_recorded(call, body_iter, gw.router, gw.reporter,
                                       client_left=lambda: bool(request.scope.get(DISCONNECTED))),
                             media_type="text/event-stream",
                             headers=headers)


async def _complete_watched(call: Call, strategy: Strategy, request: Request) -> dict[str, Any]:
    """``strategy.complete(call)``, stopped if the client goes away meanwhile
    (``service.disconnect.ClientWatch``). A failure is recorded here: its own status, 503
    for the shutdown deadline's cancellation, 499 for the client's.

    Raises:
        ClientClosed: the client went away; its upstream calls were abandoned and counted.
        GatewayError: the strategy failed.
        asyncio.CancelledError: the shutdown deadline passed.
        Exception: a bug (recorded 500: the tokens its calls spent are counted all the
            same, and the watch is closed, which would otherwise cancel the task later).
    """
    watch = ClientWatch(request.receive)
    try:
        result = await strategy.complete(call)
    except GatewayError as exc:
        watch.close()
        if not watch.left:
            record(call, str(exc.status))
            raise
    except Exception:
        watch.close()
        if not watch.left:
            record(call, str(GatewayError.status))
            raise
    except asyncio.CancelledError:
        watch.close()
        if not watch.left:  # cut off at the shutdown deadline: answered 503
            record(call, str(Overloaded.status))
            raise
    else:
        watch.close()
        if not watch.left:
            return result
    # The client went away, and its cancellation ended the work (or was lost in it).
    record(call, str(ClientClosed.status))
    if not watch.uncancel():
        raise asyncio.CancelledError("the gateway is shutting down")
    raise ClientClosed("the client went away before its answer was ready")


async def _recorded(call: Call, body: AsyncIterator[bytes], router: Router | None,
                    reporter: Reporter | None = None,
                    client_left: Callable[[], bool] = lambda: False) -> AsyncIterator[bytes]:
    """The strategy's SSE body, reported once it ends (also when the client goes away: 499,
    ``client_left()`` says so; else a cancellation is the shutdown deadline's, 503). A
    durable reporter's row is committed before the client reads ``data: [DONE]``."""
    recorded = False
    try:
        async for chunk in body:
            if chunk == sse.DONE and not recorded:
                recorded = True
                _finish_stream(call, router)
                if reporter is not None and reporter.durable:
                    await reporter.committed(call.routed.decision_id)
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):  # the client left (or stopped reading and
        # was cut off: the body is closed), or the shutdown deadline passed
        call.stream_error = call.stream_error or (
            ClientClosed("the client went away") if client_left()
            else Overloaded("the gateway is shutting down"))
        raise
    finally:
        if not recorded:
            _finish_stream(call, router)
            if reporter is not None:
                reporter.forget(call.routed.decision_id)


def _finish_stream(call: Call, router: Router | None) -> None:
    error = call.stream_error
    record(call, "200" if error is None else str(error.status))
    if error is None:
        _observe_usage(router, call)


def _observe_usage(router: Router | None, call: Call) -> None:
    """Teach the router how long this kind of prompt's answers run on this model."""
    if router is not None:
        router.observe_usage(call.scores, call.plan, call.upstream_model,
                             call.acct.completion_tokens, call.answer_samples,
                             vote_first_agrees=call.vote_first_agrees)


def _check_routable(routed: RoutedRequest) -> None:
    """Refuse a strategy that reads the question (any but ``direct``, named by the client)
    for messages that hold none; under ``auto`` those are answered directly
    (``planning.without_user_turn``)."""
    if (routed.model == AUTO_MODEL and routed.controls.strategy not in ("auto", "direct")
            and without_user_turn(routed)):
        raise InvalidRequest("messages hold no user turn to answer", param="messages")
