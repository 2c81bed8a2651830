"""Who may use the gateway and how much: the API key on every ``/v1/*`` request, each key's
limits, the operator's caps on one request, and a clean answer for a request cut off at
shutdown.

``AdmissionMiddleware`` (pure ASGI, so it costs nothing measurable on the hot path) runs
before every route:

- with no active key and ``require_keys`` unset, ``/v1/*`` is open;
- otherwise ``Authorization: Bearer KEY`` must name an active key (401), an admin key for the
  admin surfaces (``/v1/experiments...``, 403), and the key must have requests left this
  minute (429 with ``Retry-After`` and ``x-ratelimit-*``; ``POST /v1/feedback`` counts in a
  window of its own, ``KeyLimiter.admit_feedback``); ``/metrics``, when protected
  (``protect_metrics`` or ``metrics_token``), takes an admin key or the metrics token;
- every response of a key carries its ``x-ratelimit-*`` headers, as OpenAI's do;
- a token reservation made by the completion route is settled once the response is sent,
  and a stream's place among its key's open streams (``admit_stream``,
  ``service.key_streams``) given back, however the response ended;
- a request still running when the shutdown deadline cancels it gets a 503 in the envelope, or,
  when its stream had started, a final error event and ``data: [DONE]``;
- a request whose body is not all in within ``client_body_timeout_s`` of its headers (a
  client sending a few bytes a second, or its headers and then nothing) gets a 408
  (``service.body_deadline``), counted in ``ttc_rejected_total{reason="body_timeout"}``, and
  its connection is closed;
- a client that does not take a piece of its response within ``client_send_timeout_s`` (it
  stopped reading and keeps the connection: a full TCP window) is cut off as if it had left
  (``ClientStalled``): its stream would otherwise hold its backend's concurrency slot for as
  long as the client liked, and a few such streams of one key make every tenant wait.

The completion route calls ``reserve_for_call`` between planning and the first upstream
call: it applies the operator's caps (``max_n``, ``max_budget_tokens``, ``max_samples``) and
reserves the request's tokens from its key's limits. Refusals are counted in
``ttc_rejected_total{reason}`` (``auth``, ``rate_limit``, ``budget``, ``overload``,
``body_timeout``).
Neither the key nor the Authorization header is ever logged or echoed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from router_models.plan import Plan
from router_models.policies.prior import fit_cap
from service import metrics
from service.body_deadline import BodyDeadline, BodyDeadlinePassed, has_body
from service.errors import (
    BodyTimeout,
    Forbidden,
    GatewayError,
    InvalidRequest,
    Overloaded,
    RateLimited,
    Unauthorized,
    error_json,
)
from service.key_streams import StreamPlace
from service.keys import ApiKey
from service.limits import Reservation, TokensOverLimit
from service.protocol import RoutedRequest, candidates, candidates_param
from service.strategies.base import estimate_prompt_tokens

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Paths under these prefixes need an admin key once keys exist.
ADMIN_PREFIXES = ("/v1/experiments", "/v1/learner")
# Counted in the key's feedback window, not its request window (``KeyLimiter.admit_feedback``).
FEEDBACK_PATH = "/v1/feedback"
_STATE = "ttc_admission"
_ADMIN = "ttc_admin"


class ClientStalled(BaseException):
    """The client took no piece of its response for ``client_send_timeout_s``: the request
    ends as if the client had left. A ``BaseException``, like a cancellation, so that no
    error handler on its way (Starlette's, FastAPI's) turns it into a 500 for a response that
    has started; ``AdmissionMiddleware`` ends the request with it."""


@dataclass
class Admission:
    """A request admitted with a key: the key, the ``x-ratelimit-*`` headers its response
    gets, the token reservation of a completion request (settled after the response), and
    the place of a stream among its key's open streams (given back after the response)."""

    key: ApiKey
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    stream: StreamPlace | None = None


def admission_of(request: Request) -> Admission | None:
    """The request's ``Admission``, or None when the gateway is open (no keys)."""
    admission = request.scope.get("state", {}).get(_STATE)
    return admission if isinstance(admission, Admission) else None


def is_admin(request: Request) -> bool:
    """Whether the request presented an admin key (set for a protected ``/metrics``)."""
    return bool(request.scope.get("state", {}).get(_ADMIN))


class AdmissionMiddleware:
    """Keys and per-key request limits for ``/v1/*`` and a protected ``/metrics``; see the
    module docstring. Reads the ``Gateway`` from ``app.state.gateway`` at each request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
        if scope["type"] != "http" or gw is None:
            await self.app(scope, receive, send)
            return
        body: BodyDeadline | None = None
        if has_body(scope["headers"]):
            body = BodyDeadline(receive, gw.settings.client_body_timeout_s)
            receive = body.receive
        tracker = _Tracker(send, gw.settings.client_send_timeout_s, body)
        admission: Admission | None = None
        try:
            try:
                admission = await _admit(gw, scope)
            except GatewayError as exc:
                await _send_error(tracker.send, exc)
                return
            if admission is not None:
                scope.setdefault("state", {})[_STATE] = admission
                tracker.extra_headers = admission.headers
            await self.app(scope, receive, tracker.send)
        except BodyDeadlinePassed:
            assert body is not None
            metrics.child(metrics.REJECTED, "body_timeout").inc()
            log.info("408 for %s %s: its body did not arrive within %g s",
                     scope.get("method"), scope["path"], body.timeout_s)
            if not tracker.started:  # else the server closes the unfinished response
                try:
                    await _send_error(tracker.send, BodyTimeout(body.timeout_s))
                except (Exception, ClientStalled):  # gone, or not reading either
                    log.debug("could not send a 408 for a slow body", exc_info=True)
        except ClientStalled:
            # The server closes a connection whose response was not completed.
            log.info("cut off %s %s: its client took no part of the response for %g s",
                     scope.get("method"), scope["path"], gw.settings.client_send_timeout_s)
        except asyncio.CancelledError:
            if not await tracker.cut_off():
                raise
            # The client has its answer and the request its record: the request ends here.
            # Re-raised, the cancellation uvicorn sends at the shutdown deadline reached it as
            # "Exception in ASGI application" with a traceback at ERROR, once per request cut
            # off, on every rolling update with a long request in flight.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            if body is not None:
                body.close()
            tracker.close()
            if admission is not None and admission.stream is not None:
                admission.stream.release()
            if admission is not None and admission.reservation is not None:
                await gw.limiter.settle(admission.reservation)


async def _admit(gw: Any, scope: Scope) -> Admission | None:
    """Check the request's key; None when no key is needed.

    Raises:
        Unauthorized: no key or an unknown one where one is needed (401).
        Forbidden: an admin surface with a key that is not an admin key (403).
        RateLimited: the key used up its requests this minute (429).
        Overloaded: the shared counters do not answer (503).
    """
    path: str = scope["path"]
    settings = gw.settings
    if path == "/metrics":
        if not (settings.protect_metrics or settings.metrics_token is not None):
            return None
        token = _bearer(scope)
        key = await gw.keys.lookup(token) if token else None
        if key is not None and key.admin:
            scope.setdefault("state", {})[_ADMIN] = True
        elif settings.metrics_token is None:  # else the route checks the metrics token
            metrics.child(metrics.REJECTED, "auth").inc()
            raise Unauthorized("GET /metrics needs an admin key: Authorization: Bearer KEY",
                               code="invalid_api_key")
        return None
    if not path.startswith("/v1/"):
        return None
    token = _bearer(scope)
    # A presented key is always looked up (an unknown one reloads the keys), so a key created
    # a moment ago is limited from its first request, even while the gateway is still open.
    key = await gw.keys.lookup(token) if token else None
    if key is None and not settings.require_keys and not await gw.keys.any_keys():
        return None
    if key is None:
        metrics.child(metrics.REJECTED, "auth").inc()
        raise Unauthorized(
            "this gateway needs an API key: Authorization: Bearer KEY" if not token
            else "the API key is not valid (unknown or revoked)", code="invalid_api_key")
    if path.startswith(ADMIN_PREFIXES) and not key.admin:
        metrics.child(metrics.REJECTED, "auth").inc()
        raise Forbidden(f"{path} needs an admin key", code="admin_key_required")
    try:
        if path == FEEDBACK_PATH:  # its own window: see ``KeyLimiter.admit_feedback``
            headers = await gw.limiter.admit_feedback(key)
        else:
            headers = await gw.limiter.admit_request(key)
    except RateLimited:
        metrics.child(metrics.REJECTED, "rate_limit").inc()
        raise
    except Overloaded:
        metrics.child(metrics.REJECTED, "overload").inc()
        raise
    return Admission(key, headers)


async def admit_stream(request: Request, gw: Any) -> None:
    """Take a place among the open streams of the request's key for the stream it asks for
    (``service.key_streams``), before any token is reserved; ``AdmissionMiddleware`` gives it
    back when the response is over. Nothing without a key.

    Raises:
        RateLimited: the key holds ``key_max_concurrent_streams`` open streams already (429,
            ``Retry-After``, with the key's ``x-ratelimit-*`` headers).
        Overloaded: the shared counters do not answer while the refusal's token headers are
            read (503).
    """
    admission = admission_of(request)
    if admission is None or admission.stream is not None or gw.streams is None:
        return
    try:
        admission.stream = gw.streams.open(admission.key.name)
    except RateLimited as exc:
        # Every 429 of a key tells all its limits, as OpenAI's do.
        exc.rate_headers = {**admission.headers,
                            **await gw.limiter.token_headers(admission.key)}
        # Its own reason, named as its code: a key holding streams open is not one sending
        # requests too fast, and the remedy differs (close streams, or raise
        # key_max_concurrent_streams, not rpm).
        metrics.child(metrics.REJECTED, "rate_limit_streams").inc()
        raise


async def reserve_for_call(request: Request, gw: Any, routed: RoutedRequest, plan: Plan,
                           fit: Callable[[Plan, int], Plan] | None = None
                           ) -> tuple[Plan, Reservation | None]:
    """Apply the operator's caps to one completion request and reserve its completion tokens
    from its key's limits, before any upstream call.

    The reservation is the plan's ``budget_tokens``, else ``max_tokens`` x ``n`` (x
    ``best_of`` when larger: every candidate is generated); a request
    with neither gets as many as the key has left, up to ``default_budget_tokens``, which
    becomes its budget. A budget the gateway sized itself (the client set neither
    ``budget_tokens`` nor ``max_tokens``: ``auto``'s plans, a named strategy's default
    budget) is reserved the same way, as much of it as the key has left, and the plan is
    fitted to that by ``fit(plan, tokens)`` (default: ``fit_cap`` with samples of the whole
    grant): only a cap the client set can be over a key's whole window. A key with a
    prompt-token limit also reserves the prompt's estimated tokens times the upstream calls
    the plan may make. Returns the plan (with that budget) and the reservation (None without
    a key), which ``record()`` settles with the true spend.

    Raises:
        InvalidRequest: ``n``, the budget or the samples are over the operator's caps, or the
            request needs more tokens than its key may spend in a whole window (400).
        RateLimited: the key's tokens this minute or today are used up (429).
        Overloaded: the shared counters do not answer (503).
    """
    settings = gw.settings
    if routed.n > settings.max_n:
        raise InvalidRequest(f"n is at most {settings.max_n} on this gateway", param="n",
                             code="over_operator_cap")
    # The client's own budget is checked whether or not it named a strategy: a policy may
    # plan less than was asked, but the request itself is over the operator's cap.
    asked = routed.controls.budget_tokens
    if asked is not None and asked > settings.max_budget_tokens:
        raise InvalidRequest(f"budget_tokens is at most {settings.max_budget_tokens} on this "
                             "gateway", param="router.budget_tokens", code="over_operator_cap")
    if plan.budget_tokens is not None and plan.budget_tokens > settings.max_budget_tokens:
        # Not the client's budget_tokens (checked above): its max_tokens set the plan's.
        field = _cap_field(routed)
        raise InvalidRequest(f"{field} is at most {settings.max_budget_tokens} on this gateway "
                             "when it sets a strategy's budget", param=field,
                             code="over_operator_cap")
    # best_of candidates are samples the backend draws too, though only n come back.
    width = candidates(routed.body, routed.n)
    if width * plan.width > settings.max_samples:
        raise InvalidRequest(f"this request would draw {width * plan.width} samples; at "
                             f"most {settings.max_samples} on this gateway",
                             param=candidates_param(routed.body, routed.n),
                             code="over_operator_cap")
    admission = admission_of(request)
    if admission is None:
        return plan, None
    sized_here = (plan.budget_tokens is not None and routed.controls.budget_tokens is None
                  and routed.max_tokens is None)
    wanted = None if sized_here else plan.budget_tokens
    if wanted is None and routed.max_tokens is not None:
        wanted = routed.max_tokens * width
    prompt_tokens = 0
    if admission.key.prompt_tpm is not None:
        # Every upstream call resends the prompt: one per sample, one more per search call.
        calls = routed.n * plan.width + plan.search_calls
        prompt_tokens = estimate_prompt_tokens(routed.body) * calls
    # The field the client set that asks for these tokens: its budget, else its cap (which a
    # budget the client did not name is taken from).
    param = "router.budget_tokens"
    if routed.controls.budget_tokens is None and routed.max_tokens is not None:
        param = _cap_field(routed)
    flexible_cap = settings.default_budget_tokens
    if sized_here and plan.budget_tokens is not None:
        flexible_cap = plan.budget_tokens
    reservation = await _reserve(gw, admission, wanted, prompt_tokens, param,
                                 flexible_cap=flexible_cap,
                                 prompt_param="messages" if routed.endpoint == "chat"
                                 else "prompt")
    if plan.budget_tokens is None and reservation.tokens:
        plan = dataclasses.replace(plan, budget_tokens=reservation.tokens)
    elif (sized_here and reservation.windows and plan.budget_tokens is not None
          and reservation.tokens < plan.budget_tokens):
        plan = (fit or _fit_whole)(plan, reservation.tokens)
    return plan, reservation


def _cap_field(routed: RoutedRequest) -> str:
    """The field that set ``routed.max_tokens``: ``max_completion_tokens`` when it is the
    smaller one sent, else ``max_tokens``. Only for a request that sent one of them (with
    neither, it would name ``max_completion_tokens``)."""
    return ("max_completion_tokens" if routed.body.get("max_completion_tokens")
            == routed.max_tokens else "max_tokens")


def _fit_whole(plan: Plan, tokens: int) -> Plan:
    return fit_cap(plan, tokens, tokens)


async def reserve_for_proxy(request: Request, gw: Any, wanted: int | None, param: str,
                            body: dict[str, Any], prompt_tokens: int | None = None
                            ) -> Reservation | None:
    """Reserve the completion tokens of a forwarded call that may generate (``/v1/responses``,
    ``/v1/embeddings``, an Assistants run, ...) from its key's limits: ``wanted`` (its own
    cap, ``param``), else what the key has left up to ``default_budget_tokens``; and, under a
    prompt-token limit, ``prompt_tokens``, else the estimated tokens of its ``input``
    (``body``, parsed). The route settles it with the usage the reply reports
    (``service.proxy_usage``), so a key cannot spend past its limits through endpoints other
    than completions. None without a key.

    Raises:
        InvalidRequest: ``wanted`` is more than the key may spend in a whole window (400).
        RateLimited: the key's tokens this minute or today are used up (429).
        Overloaded: the shared counters do not answer (503).
    """
    admission = admission_of(request)
    if admission is None:
        return None
    if admission.key.prompt_tpm is None:
        prompt_tokens = 0
    elif prompt_tokens is None:
        prompt_tokens = estimate_prompt_tokens({"prompt": body.get("input")})
    return await _reserve(gw, admission, wanted, prompt_tokens, param,
                          flexible_cap=gw.settings.default_budget_tokens, prompt_param="input")


async def _reserve(gw: Any, admission: Admission, wanted: int | None, prompt_tokens: int,
                   param: str, flexible_cap: int, prompt_param: str) -> Reservation:
    """``KeyLimiter.reserve_tokens`` with its refusals counted and in the envelope (``param``
    names the field that asked for the completion tokens, ``prompt_param`` the one that holds
    the prompt: ``messages``, ``prompt`` or ``input``); the reservation is kept on
    ``admission`` (settled once the response is sent). With no ``wanted``, as many tokens as
    the key has left up to ``flexible_cap``."""
    try:
        reservation, headers = await gw.limiter.reserve_tokens(
            admission.key, wanted, flexible_cap=flexible_cap, prompt_tokens=prompt_tokens)
    except TokensOverLimit as exc:
        metrics.child(metrics.REJECTED, "budget").inc()
        refused = InvalidRequest(str(exc), param=prompt_param if exc.kind == "prompt" else param,
                                 code="over_key_limit")
        refused.counted = True  # one refusal, one count: not "invalid" again when rendered
        raise refused from exc
    except RateLimited as exc:
        reason = "budget" if exc.code == "daily_budget_exhausted" else "rate_limit"
        metrics.child(metrics.REJECTED, reason).inc()
        exc.rate_headers = {**admission.headers, **exc.rate_headers}
        raise
    except Overloaded:
        metrics.child(metrics.REJECTED, "overload").inc()
        raise
    admission.reservation = reservation
    admission.headers.update(headers)
    return reservation


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _send_error(send: Send, exc: GatewayError) -> None:
    body = error_json(exc)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Tracker:
    """Wraps ``send``: adds the key's ``x-ratelimit-*`` headers (and ``Connection: close`` to
    a response that starts before the request's ``body`` is all read), and remembers how far
    the response got, so that a request cancelled at shutdown can still end cleanly."""

    def __init__(self, send: Send, send_timeout_s: float | None = None,
                 body: BodyDeadline | None = None):
        self._send = send
        self._send_timeout_s = send_timeout_s
        self.body = body  # the request's body, while it may be still arriving
        self._sender: asyncio.Task[Any] | None = None
        self._sending_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._stalled = False
        self.extra_headers: dict[str, str] = {}
        self.started = False
        self.finished = False
        self.sse = False
        self.at_event_boundary = True

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            headers = list(message.get("headers", ()))
            for name, value in headers:
                if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                    self.sse = True
            unread = self.body is not None and not self.body.done
            if self.extra_headers or unread:
                present = {name.lower() for name, _ in headers}
                headers += [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in self.extra_headers.items()
                            if k.encode("latin-1") not in present]
                if unread and b"connection" not in present:
                    # Answered before its body was read (a refusal, a route that reads none):
                    # the server would wait for the rest on the open connection, each byte
                    # stopping its keep-alive timer, for as long as the client trickles it.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.at_event_boundary = body.endswith(b"\n\n")
            if not message.get("more_body", False):
                self.finished = True
            await self._send_body(message)
            return
        await self._send(message)

    async def _send_body(self, message: Message) -> None:
        """Send a body message, cutting the client off (``ClientStalled``) when it does not
        take it within the timeout. One timer per request (``_watch``), not one per message:
        an ``asyncio.timeout`` around each cost 6 us a message, milliseconds a long stream."""
        if self._send_timeout_s is None:
            await self._send(message)
            return
        loop = asyncio.get_running_loop()
        # The task that sends: Starlette streams in a task of its own.
        self._sender = asyncio.current_task()
        self._sending_since = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._send_timeout_s, self._watch)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if not self._stalled or self._sender is None:
                raise
            if self._sender.uncancel() > 0:  # cancelled for another reason too (shutdown)
                raise
            self.finished = False  # not sent: nothing more can be
            raise ClientStalled() from None
        finally:
            self._sending_since = None

    def _watch(self) -> None:
        """The timer: cancel the send that has waited ``_send_timeout_s``, or wait on for the
        one in progress; idle, it stops (the next send starts it again)."""
        self._watchdog = None
        since = self._sending_since
        if since is None or self._sender is None or self._send_timeout_s is None:
            return
        loop = asyncio.get_running_loop()
        left_s = since + self._send_timeout_s - loop.time()
        if left_s > 0:
            self._watchdog = loop.call_later(left_s, self._watch)
            return
        self._stalled = True
        self._sender.cancel()

    def close(self) -> None:
        """Stop the timer (the response is over)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def cut_off(self) -> bool:
        """Answer a request cancelled before it finished (the shutdown deadline passed);
        whether its response is now complete (False: it stopped inside an event, or the
        connection is gone)."""
        if self.finished:
            return True
        error = Overloaded("the gateway is shutting down; retry the request",
                           code="shutting_down")
        try:
            if not self.started:
                await _send_error(self._send, error)
            elif self.sse and self.at_event_boundary:
                await self._send_body({"type": "http.response.body", "more_body": False,
                                       "body": b"data: " + error_json(error)
                                       + b"\n\ndata: [DONE]\n\n"})
            else:
                return False
        except (Exception, ClientStalled):  # the connection is gone or stalled: nothing more
            log.debug("could not answer a request cut off at shutdown", exc_info=True)
            return False
        return True
