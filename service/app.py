"""The gateway as an ASGI application: ``create_app(settings, transport=None)``.

The lifespan owns the upstream client, the backend registry, the request log (opened
first, closed last so every record of a finished request is written) and the learner that
feeds the request log's feedback to the learned policies; the error handlers render
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
from starlette.routing import Match

from router_models.answers import load_latex_parser
from service import __version__, metrics, tracing
from service.admission import AdmissionMiddleware
from service.backends import BackendRegistry
from service.deps import Gateway
from service.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UnprocessableRequest,
)
from service.experiments import Experiments
from service.hotpath import HotPath
from service.key_streams import KeyStreams
from service.keys import KeyRing, open_key_store
from service.learning import Learner
from service.limits import KeyLimiter, MemoryCounters, RedisCounters
from service.observe import Reporter
from service.rendering import error_response, render, unexpected_error_response
from service.routes import experiments, feedback, health, learning, models, proxy
from service.routes.proxy import own_route_methods
from service.routing import Router
from service.search import SearchBackend, open_backend, open_client
from service.settings import Settings
from service.store.log import open_request_log
from service.upstream import UpstreamClient

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None,
               on_shutdown: Callable[[], None] | None = None,
               search_backend: SearchBackend | None = None,
               search_transport: httpx.AsyncBaseTransport | None = None,
               span_exporter: SpanExporter | None = None) -> HotPath:
    """Build the gateway for ``settings``: the completion hot path (``service.hotpath``) in
    front of the FastAPI app that serves everything else and owns the lifespan.

    Args:
        settings: validated settings; ``settings.upstreams`` must not be empty (the CLI starts
            the embedded backend first when it is).
        transport: an httpx transport for all upstream calls; tests pass fakes here.
        on_shutdown: a blocking function run (in a thread) when the app stops, after the
            upstream client closes: the CLI stops the embedded backend with it, since uvicorn
            re-raises SIGTERM once it has shut down and nothing after it would run.
        search_backend: the ``search`` strategy's backend instead of the configured one
            (tests, embedding programs).
        search_transport: an httpx transport for the search client (tests).
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
        search_client = open_client(search_transport)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        limiter = KeyLimiter(RedisCounters(redis_url) if redis_url else MemoryCounters())
        learner: Learner | None = None
        try:
            keys = KeyRing(open_key_store(settings.data_dir, url), settings.keys_refresh_s)
            await keys.reload()  # an unreadable key store stops the start: never fail open
            shared = url is not None and url.startswith(("postgresql://", "postgres://"))
            if shared and redis_url is None and keys.limited():
                # Keys in PostgreSQL reach every replica; the counters here reach only this one.
                log.warning("keys %s have limits, counted in this process only: every replica "
                            "on this database allows them in full (3 replicas, 3 times each "
                            "limit); set redis_url to share the counters",
                            ", ".join(repr(name) for name in keys.limited()))
            if (await keys.any_keys() and not settings.protect_metrics
                    and settings.metrics_token is None):
                # Every tenant can read /metrics: each key's name and token counts among them.
                log.warning("API keys exist but /metrics is open to anyone who can reach it "
                            "(every key's name and token counts); set protect_metrics: true "
                            "or a metrics_token, or keep /metrics off the tenants' network")
            registry = BackendRegistry(settings.upstreams, settings.default_model,
                                       settings.ignores_max_tokens_ttl_s)
            router = Router(settings)
            learner = Learner(router, request_log.backend, interval_s=settings.learn_interval_s,
                              checkpoint_every=settings.learn_checkpoint_every,
                              models_dir=router.models_dir)
            await learner.start()
            await registry.discover(client, retries=1)
            durable = settings.log_durable
            if durable is None:  # a shared database: replicas come and go, decisions stay
                durable = url is not None and url.startswith(("postgresql://", "postgres://"))
            app.state.gateway = Gateway(
                settings=settings, client=client, registry=registry,
                reporter=Reporter(request_log, keep_text=settings.log_text, durable=durable),
                request_log=request_log, keys=keys, limiter=limiter, router=router,
                experiments=Experiments(settings, request_log), learner=learner,
                search=search_backend or open_backend(settings, search_client),
                streams=KeyStreams(settings.key_max_concurrent_streams))
            # Start-up made hundreds of thousands of long-lived objects (scikit-learn, numpy,
            # the classifier): freezing them keeps the garbage collector's full passes, which
            # pause the event loop, from walking them again and again.
            gc.collect()
            gc.freeze()
            # SymPy and the LaTeX parser votes use for LaTeX answers take seconds to import:
            # off the event loop, now, rather than on the first such answer.
            warm_up = asyncio.create_task(asyncio.to_thread(load_latex_parser))
            yield
            await warm_up
        finally:
            try:
                if learner is not None:
                    await learner.close()  # applies the last feedback, saves learned.json
                await client.aclose()
                await search_client.aclose()
                await limiter.aclose()
                await request_log.close()  # after the last request: every queued row written
                tracing.stop()  # exports the spans still queued
            finally:
                if on_shutdown is not None:
                    await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="ttc-router", version=__version__, lifespan=lifespan)
    for module in (health, models, feedback, experiments, learning, proxy):
        app.include_router(module.router)
    app.add_middleware(AdmissionMiddleware)
    _install_error_handlers(app)
    # The completion routes are registered once, on the hot path in front of the app.
    return HotPath(app, settings.cors_allow_origins)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        metrics.REJECTED.labels("invalid").inc()
        first = exc.errors()[0] if exc.errors() else {}
        # A body that is not JSON at all is a 400, as on the completion routes
        # (``protocol.parse_json_object``); a well-formed body that fails its schema is a 422.
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "invalid")
            return render(InvalidRequest(f"the request body is not valid JSON: {detail}"))
        if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
            return render(InvalidRequest("the request body is not valid JSON: it is empty"))
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid"))
        if first.get("type") == "value_error":  # our own validator's words, without pydantic's
            message = message.removeprefix("Value error, ")
        return render(UnprocessableRequest(f"{where}: {message}" if where else message,
                                            param=where or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error: GatewayError
        if exc.status_code == 404:  # OpenAI's answer to a path it does not serve
            error = NotFound(f"Unknown request URL: {request.method} {request.url.path}. "
                             "Please check the URL for typos; the OpenAI API is served "
                             "under /v1/.", code="unknown_url")
        elif exc.status_code == 405:
            error = MethodNotAllowed(str(exc.detail), allow=_allowed_methods(request))
        else:
            error = InvalidRequest(str(exc.detail))
            error.status = exc.status_code
        return render(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_error_response(request, exc)


def _allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405 for ``request``'s path: every method some route serves
    there. Starlette's own names only the first route's, and the forwarding routes are one
    per method (``service.routes.proxy``), so it would allow GET alone on ``/v1/...``. On a
    path the gateway serves itself, only its own routes' methods
    (``service.routes.proxy.own_route_methods``)."""
    own = own_route_methods(request)
    if own:  # the gateway's own path: the forwarding routes do not serve it
        return ", ".join(own)
    routes = request.app.router.routes
    allowed = [method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                      for route in routes)]
    return ", ".join(allowed)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
