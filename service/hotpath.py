"""The two completion routes, served without FastAPI's middleware stack and router.

``HotPath`` wraps the FastAPI app (``service.app.create_app`` returns it): ``POST
/v1/chat/completions`` and ``POST /v1/completions`` go through the admission middleware (keys,
limits, shutdown) straight to their handlers, which are registered here only, and everything
else (lifespan included) goes to the FastAPI app as usual. FastAPI's stack (error,
telemetry, body-limit, exit-stack middlewares, two routers) cost about 17% of the gateway's CPU
per request under load, measured with py-spy and bench/gateway_overhead.py. Errors are rendered
by the same functions as the app's exception handlers, so clients cannot tell the paths apart.

Every ``/v1/*`` request is counted in ``ttc_requests_in_flight`` while it is served. A
completion request is timed from its arrival by ``service.latency.ClientTimer`` (the
``x-ttc-overhead-ms`` header, time to first token, inter-token latency) and, with tracing on,
is the root span of its trace (``service.tracing``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from service import metrics, tracing
from service.admission import AdmissionMiddleware, ClientStalled
from service.disconnect import noting_disconnect
from service.errors import ClientClosed, GatewayError
from service.latency import CALL, DISCONNECTED, RECEIVED, ClientTimer
from service.rendering import error_response, unexpected_error_response
from service.routes.completions import chat_completions, completions

Handler = Callable[[Request], Awaitable[Response]]
HANDLERS: dict[str, Handler] = {
    "/v1/chat/completions": chat_completions,
    "/v1/completions": completions,
}


# Response headers a browser page may read when CORS is on (``cors_allow_origins``): the
# gateway's own and the per-key limits', as OpenAI's API exposes its x-ratelimit-* ones.
EXPOSED_HEADERS = ["x-ttc-strategy", "x-ttc-policy", "x-ttc-decision-id", "x-ttc-experiment",
                   "x-ttc-overhead-ms", "x-ratelimit-limit-requests",
                   "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                   "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                   "x-ratelimit-reset-tokens", "retry-after"]

class HotPath:
    """An ASGI app in front of ``app`` (see the module docstring)."""

    def __init__(self, app: FastAPI, cors_allow_origins: Sequence[str] = ()):
        self.app = app
        self._admitted = AdmissionMiddleware(self._handle)
        # CORS wraps everything, completions included: they never reach the app's middleware.
        self._entry: Callable[..., Awaitable[None]] = self._dispatch
        if cors_allow_origins:
            self._entry = CORSMiddleware(
                self._dispatch, allow_origins=list(cors_allow_origins), allow_methods=["*"],
                allow_headers=["*"], expose_headers=EXPOSED_HEADERS)

    @property
    def state(self) -> Any:
        """The wrapped app's state (``state.gateway``), as on the app itself."""
        return self.app.state

    @property
    def router(self) -> Any:
        """The wrapped app's router (``router.lifespan_context`` runs the lifespan)."""
        return self.app.router

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            if scope["method"] == "POST" and scope["path"] in HANDLERS:
                scope["app"] = self.app  # where handlers and admission find the Gateway
                scope[RECEIVED] = time.perf_counter()
                timed = ClientTimer(scope, send)
                if tracing.enabled():
                    await self._traced(scope, receive, timed)
                else:
                    await self._admitted(scope, receive, timed)
            else:
                await self.app(scope, receive, send)
        finally:
            metrics.REQUESTS_IN_FLIGHT.dec()

    async def _traced(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """The request as the root span of its trace: named and described once it is
        answered (the model and strategy are known only then)."""
        operation = tracing.OPERATIONS[scope["path"]]
        status: list[int] = []

        async def send_noting_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with tracing.span(operation, {"gen_ai.operation.name": operation},
                          kind="SERVER") as root:
            await self._admitted(scope, receive, send_noting_status)
            if root is not None:
                tracing.describe_request(root, operation, scope.get(CALL), scope[RECEIVED],
                                         status[0] if status else None)

    async def _handle(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        receive = noting_disconnect(scope, receive)
        request = Request(scope, receive)
        try:
            response = await HANDLERS[scope["path"]](request)
        except ClientClosed:
            return  # nobody is left to read an answer (recorded by the route, 499)
        except GatewayError as exc:
            response = error_response(exc)
        except Exception as exc:  # a bug: a 500 in the envelope, and the gateway keeps serving
            response = unexpected_error_response(request, exc)
        try:
            await response(scope, receive, send)
        except ClientStalled:
            # Cut off as a client that left: its stream is recorded (499) and its upstream
            # call closed now, not when the abandoned body is collected.
            scope[DISCONNECTED] = True
            close = getattr(getattr(response, "body_iterator", None), "aclose", None)
            if close is not None:
                await close()
            raise

