"""The gateway's error tree and the one function that renders OpenAI's error envelope.

Every error a client can see is a ``GatewayError``; each subclass carries its HTTP status and
OpenAI ``type``. Code raises them; the handlers installed by ``service.app`` render them with
``error_body``. Foreign exceptions (the HTTP client's, JSON decoding) are translated at the
boundary where they happen, ``raise ...Error(...) from exc``.

    GatewayError                       500 server_error
    +-- InvalidRequest                 400 invalid_request_error
    |   +-- UnprocessableRequest       422 invalid_request_error
    |   +-- RequestTooLarge            413 invalid_request_error
    |   +-- BodyTimeout                408 invalid_request_error (body not in within the timeout)
    |   +-- MethodNotAllowed           405 invalid_request_error (with its Allow header)
    +-- Unauthorized                   401 authentication_error (missing or wrong bearer token)
    +-- Forbidden                      403 permission_error (an admin surface, no admin key)
    +-- NotFound                       404 invalid_request_error (unknown model, route, id)
    +-- UnknownObject                  404 invalid_request_error (another key's object)
    +-- Conflict                       409 invalid_request_error (an id naming several rows)
    +-- RateLimited                    429 rate_limit_error (over an API key's limits)
    +-- Overloaded                     503 service_unavailable (saturated, or cooling down)
    +-- ClientClosed                   499 client_closed (the client left; recorded, never sent)
    +-- UpstreamError                  502 upstream_error (5xx, garbage, broken stream)
    |   +-- UpstreamClientError        the backend's own 4xx status, passed on
    |   +-- UpstreamRateLimited        429 rate_limit_error
    |   +-- UpstreamUnavailable        503 service_unavailable (refused connection, no backend)
    |   +-- UpstreamTimeout            504 timeout_error
"""

from __future__ import annotations

import math
from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every error rendered to a client.

    Args:
        message: human-readable text; never contains keys or Authorization headers.
        param: the request field at fault, when there is one (OpenAI's ``param``).
        code: a short machine-readable code (OpenAI's ``code``), or None.

    ``counted`` is set where a refusal is counted in ``ttc_rejected_total`` under a reason of
    its own (``budget``), so that rendering it does not count it again as ``invalid``.
    """

    status: int = 500
    type: str = "server_error"
    counted: bool = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def headers(self) -> dict[str, str]:
        """Extra response headers (for example ``Retry-After``); none by default."""
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class UnprocessableRequest(InvalidRequest):
    status = 422


class RequestTooLarge(InvalidRequest):
    status = 413


class BodyTimeout(InvalidRequest):
    """The request's body did not all arrive within ``client_body_timeout_s`` of its
    headers (``service.body_deadline``). Sent with ``Connection: close``: the rest of the body
    may still be on its way, and is no request to parse. Counted under its own reason,
    ``ttc_rejected_total{reason="body_timeout"}``."""

    status = 408
    counted = True

    def __init__(self, timeout_s: float):
        super().__init__(f"the request body did not arrive within {timeout_s:g} s "
                         "(client_body_timeout_s)", code="body_timeout")

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class MethodNotAllowed(InvalidRequest):
    """A route asked for with a method it does not serve.

    Args:
        allow: the methods it serves, for the ``Allow`` header RFC 9110 requires of a 405.
    """

    status = 405

    def __init__(self, message: str, *, allow: str):
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class Unauthorized(GatewayError):
    """A missing or wrong ``Authorization: Bearer`` token."""

    status = 401
    type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(GatewayError):
    """A valid key without the right: an admin surface asked for with a key that is not an
    admin key."""

    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    """Something the request names does not exist: a model (code ``model_not_found``), a
    route (``unknown_url``), a logged request's id. Typed ``invalid_request_error`` as every
    404 of OpenAI's API is; ``not_found_error`` is other APIs' vocabulary (Anthropic's,
    llama.cpp's server's), which clients written for OpenAI do not expect."""

    status = 404
    type = "invalid_request_error"


class UnknownObject(GatewayError):
    """A forwarded call names an object its key may not reach: another key's, or one no key
    made through the gateway (``service.ownership``). Shaped as OpenAI answers an id it does
    not have, with one message for both cases, so a key cannot learn which ids exist.

    Args:
        ident: the object id the call named.
        param: where it named it: ``id`` (the path) or the body's field.
    """

    status = 404
    type = "invalid_request_error"

    def __init__(self, ident: str, *, param: str):
        super().__init__(f"No such object: {ident}", param=param)


class Conflict(GatewayError):
    """The request names something ambiguously: a response id that several logged requests
    carry (``service.store.AmbiguousId``)."""

    status = 409
    type = "invalid_request_error"


class RateLimited(GatewayError):
    """Over one of an API key's limits (requests or tokens per minute, tokens per day).

    Args:
        retry_after_s: seconds until the limit that refused the request frees up.
        rate_headers: the ``x-ratelimit-*`` headers to send with the refusal.
    """

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, code: str,
                 rate_headers: dict[str, str] | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.rate_headers = rate_headers or {}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s))), **self.rate_headers}


class Overloaded(GatewayError):
    """The gateway will not queue more work: a backend's concurrency and waiting room are
    full, every backend serving the model is cooling down after failures, or the gateway is
    shutting down. ``retry_after_s``: seconds worth waiting before trying again."""

    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str = "overloaded"):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ClientClosed(GatewayError):
    """The client went away before its answer ended (a stream it stopped reading): what the
    request log and ``ttc_requests_total`` record, with nginx's 499, so that a closed chat tab
    is not counted as the gateway's own 503. Never rendered: nobody is left to read it."""

    status = 499
    type = "client_closed"


class UpstreamError(GatewayError):
    """The backend failed: a 5xx after retries, a body that is not what the API promises, or a
    stream that broke."""

    status = 502
    type = "upstream_error"


class UpstreamClientError(UpstreamError):
    """The backend refused the request itself (a 4xx such as a context-length overflow): the
    client sees the backend's status and message, since the fault is in the request.
    ``allow``: a 405's ``Allow`` header, passed on as the backend sent it."""

    def __init__(self, message: str, *, status: int, param: str | None = None,
                 code: str | None = None, error_type: str | None = None,
                 allow: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = error_type or "invalid_request_error"
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow is not None else {}


class UpstreamRateLimited(UpstreamError):
    """The backend answered 429 after the gateway's retries. ``retry_after_s``: the backend's
    own ``Retry-After``, or None when it sent none.

    The client's 429 always carries a ``Retry-After``, as every 429 of the gateway does: the
    backend's, in whole seconds rounded up (never sooner than it asked), else 1 s (the
    gateway has already retried with backoff and knows no better)."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message, code="upstream_rate_limited")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s or 0)))}


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "service_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"


def error_body(exc: GatewayError) -> dict[str, Any]:
    """OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def error_json(exc: GatewayError) -> bytes:
    """``error_body`` serialised, as sent in a response body or a final SSE event."""
    return orjson.dumps(error_body(exc))
