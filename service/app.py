"""The FastAPI application: ``create_app(settings, transport=None)``.

The lifespan owns the upstream client, the backend registry and the request log (opened
first, closed last so every record of a finished request is written); the error handlers render
every failure, validation and routing errors included, in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service import __version__, metrics, tracing
from service.admission import AdmissionMiddleware
from service.backends import BackendRegistry
from service.deps import Gateway
from service.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    UnprocessableRequest,
    error_json,
)
from service.experiments import Experiments
from service.keys import KeyRing, open_key_store
from service.limits import KeyLimiter, MemoryCounters, RedisCounters
from service.observe import Reporter
from service.routes import completions, experiments, feedback, health, models, proxy
from service.routing import Router
from service.settings import Settings
from service.store.log import open_request_log
from service.upstream import UpstreamClient

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None,
               on_shutdown: Callable[[], None] | None = None,
               span_exporter: SpanExporter | None = None) -> FastAPI:
    """Build the gateway for ``settings``.

    Args:
        settings: validated settings; ``settings.upstreams`` must not be empty (the CLI starts
            the embedded backend first when it is).
        transport: an httpx transport for all upstream calls; tests pass fakes here.
        on_shutdown: a blocking function run (in a thread) when the app stops, after the
            upstream client closes: the CLI stops the embedded backend with it, since uvicorn
            re-raises SIGTERM once it has shut down and nothing after it would run.
        span_exporter: an OpenTelemetry span exporter that turns tracing on for this app
            (tests pass an in-memory one); otherwise ``settings.otel_enabled`` decides.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.database_url.get_secret_value() if settings.database_url else None
        request_log = open_request_log(settings.data_dir, url,
                                       queue_size=settings.log_queue_size)
        await request_log.start()
        tracing.start(settings, span_exporter)
        client = UpstreamClient(settings, transport=transport)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        limiter = KeyLimiter(RedisCounters(redis_url) if redis_url else MemoryCounters())
        try:
            keys = KeyRing(open_key_store(settings.data_dir, url), settings.keys_refresh_s)
            await keys.reload()  # an unreadable key store stops the start: never fail open
            registry = BackendRegistry(settings.upstreams, settings.default_model)
            router = Router(settings)
            await registry.discover(client, retries=1)
            app.state.gateway = Gateway(
                settings=settings, client=client, registry=registry,
                reporter=Reporter(request_log, keep_text=settings.log_text),
                request_log=request_log, keys=keys, limiter=limiter, router=router,
                experiments=Experiments(settings, request_log))
            # Start-up made hundreds of thousands of long-lived objects (scikit-learn, numpy,
            # the classifier): freezing them keeps the garbage collector's full passes, which
            # pause the event loop, from walking them again and again.
            gc.collect()
            gc.freeze()
            yield
            router.save()
        finally:
            try:
                await client.aclose()
                await limiter.aclose()
                await request_log.close()  # after the last request: every queued row written
                tracing.stop()  # exports the spans still queued
            finally:
                if on_shutdown is not None:
                    await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="ttc-router", version=__version__, lifespan=lifespan)
    # The completion routes first: routes are matched in order, and they take the traffic.
    for module in (completions, health, models, feedback, experiments, proxy):
        app.include_router(module.router)
    app.add_middleware(AdmissionMiddleware)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        metrics.REJECTED.labels("invalid").inc()
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _render(UnprocessableRequest(f"{where}: {first.get('msg', 'invalid')}",
                                            param=where or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error: GatewayError
        if exc.status_code == 404:
            error = NotFound(f"no route for {request.method} {request.url.path}")
        else:
            error = InvalidRequest(str(exc.detail))
            error.status = exc.status_code
        return _render(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_error_response(request, exc)


def error_response(exc: GatewayError) -> Response:
    """The response for a ``GatewayError`` raised while handling a request; a refused
    request (400/404/413/422) is counted in ``ttc_rejected_total{reason="invalid"}``."""
    if isinstance(exc, (InvalidRequest, NotFound)):
        metrics.REJECTED.labels("invalid").inc()
    return _render(exc)


def unexpected_error_response(request: Request, exc: Exception) -> Response:
    """A 500 in the envelope for a bug: logged with its traceback, never crashing the app."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _render(GatewayError("the gateway failed unexpectedly; it keeps serving"))


def _render(exc: GatewayError) -> Response:
    return Response(error_json(exc), status_code=exc.status, media_type="application/json",
                    headers=exc.headers())
