"""The two completion routes, served without FastAPI's middleware stack and router.

``HotPath`` wraps the FastAPI app (``service.app.create_app`` returns it): ``POST
/v1/chat/completions`` and ``POST /v1/completions`` go through the admission middleware (keys,
limits, shutdown) straight to their handlers, which are registered here only, and everything
else (lifespan included) goes to the FastAPI app as usual. FastAPI's stack (error,
telemetry, body-limit, exit-stack middlewares, two routers) cost about 17% of the gateway's CPU
per request under load, measured with py-spy and bench/gateway_overhead.py. Errors are rendered
by the same functions as the app's exception handlers, so clients cannot tell the paths apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from service.admission import AdmissionMiddleware
from service.errors import GatewayError
from service.rendering import error_response, unexpected_error_response
from service.routes.completions import chat_completions, completions

Handler = Callable[[Request], Awaitable[Response]]
HANDLERS: dict[str, Handler] = {
    "/v1/chat/completions": chat_completions,
    "/v1/completions": completions,
}


class HotPath:
    """An ASGI app in front of ``app`` (see the module docstring)."""

    def __init__(self, app: FastAPI):
        self.app = app
        self._admitted = AdmissionMiddleware(self._handle)

    @property
    def state(self) -> Any:
        """The wrapped app's state (``state.gateway``), as on the app itself."""
        return self.app.state

    @property
    def router(self) -> Any:
        """The wrapped app's router (``router.lifespan_context`` runs the lifespan)."""
        return self.app.router

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in HANDLERS):
            scope["app"] = self.app  # where handlers and admission find the Gateway
            await self._admitted(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await HANDLERS[scope["path"]](request)
        except GatewayError as exc:
            response = error_response(exc)
        except Exception as exc:  # a bug: a 500 in the envelope, and the gateway keeps serving
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)
