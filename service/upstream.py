"""Calls to OpenAI-compatible backends: the only module that names the HTTP client library.

One ``UpstreamClient`` per gateway owns a shared connection pool (httpx's API over aiohttp's
transport, see bench/gateway_overhead.py for why), connect/read timeouts, and retries with
exponential backoff on connection errors, 429 and 5xx. A streamed call is retried only until
its first bytes arrive, before anything is sent to the client; after that a failure is raised
as ``UpstreamError`` for the caller to end its stream with.

Every attempt is counted in ``ttc_upstream_requests_total{backend, status}`` and timed in
``ttc_upstream_duration_seconds{backend}``; retries in ``ttc_upstream_retries_total``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from service import metrics
from service.errors import (
    GatewayError,
    UpstreamClientError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.settings import Settings

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Response headers that describe the upstream hop itself and must not be copied to the client.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
     "server", "date"}
)
# The most a Retry-After from a backend may delay one retry; longer waits become a 429 reply.
MAX_RETRY_AFTER_S = 5.0


@dataclass(frozen=True)
class Backend:
    """One configured upstream: its label (for metrics), base URL ending in /v1, API key and
    the model ids it serves."""

    label: str
    base_url: str
    api_key: str | None
    models: tuple[str, ...]


@dataclass
class Accounting:
    """What one client request cost upstream, filled in by every call made on its behalf.

    Tokens are as the backends reported them (``estimated`` when one did not); ``wait_s`` is
    seconds spent waiting on backends, so that gateway overhead = total duration - wait_s.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_calls: int = 0
    wait_s: float = 0.0
    retries: int = 0
    backends: set[str] = field(default_factory=set)
    estimated: bool = False  # True when a backend reported no usage and tokens were counted

    def add_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Add one call's final ``usage`` object (prompt and completion tokens)."""
        if not usage:
            return
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)


@dataclass(frozen=True)
class JsonReply:
    """A successful (2xx) non-streamed reply, its body parsed."""

    status: int
    body: Any
    headers: Mapping[str, str]


class UpstreamStream:
    """An open streamed reply (2xx) whose first chunk has already arrived.

    Iterate ``chunks()`` for the raw bytes; failures while reading raise ``UpstreamError`` or
    ``UpstreamTimeout``. Always ``aclose()`` (the routes do it in ``finally``).
    """

    def __init__(self, response: httpx.Response, first: bytes, byte_iter: AsyncIterator[bytes],
                 backend: Backend, acct: Accounting | None, started: float):
        self.status = response.status_code
        self.headers = response.headers
        self._response = response
        self._first = first
        self._iter = byte_iter
        self._backend = backend
        self._acct = acct
        self._started = started

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        while True:
            waited_from = time.perf_counter()
            try:
                chunk = await self._iter.__anext__()
            except StopAsyncIteration:
                return
            except httpx.HTTPError as exc:
                raise _translate(exc, self._backend, streaming=True) from exc
            finally:
                if self._acct is not None:
                    self._acct.wait_s += time.perf_counter() - waited_from
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()
        metrics.UPSTREAM_DURATION.labels(self._backend.label).observe(
            time.perf_counter() - self._started)


class UpstreamClient:
    """The shared client for all backends.

    Args:
        settings: timeouts (seconds), retries, pool size.
        transport: an httpx transport to use instead of aiohttp's (tests inject fakes here).
    """

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self._settings = settings
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=settings.max_connections,
                              max_keepalive_connections=settings.max_connections)
        if transport is None:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_json(self, backend: Backend, path: str, *, retries: int | None = None) -> Any:
        """GET ``path`` (relative to the backend's base URL) and parse the JSON body.

        Raises the ``UpstreamError`` family on failure.
        """
        reply = await self._send(backend, "GET", path, None, None, retries=retries)
        return reply.body

    async def post_json(self, backend: Backend, path: str, body: Mapping[str, Any],
                        acct: Accounting | None = None) -> JsonReply:
        """POST a JSON body and parse the JSON reply, with retries.

        Raises:
            UpstreamClientError: the backend refused the request (4xx other than 429).
            UpstreamRateLimited: 429 after retries.
            UpstreamUnavailable: the backend could not be reached.
            UpstreamTimeout: no reply within the read timeout.
            UpstreamError: 5xx after retries, or a body that is not JSON.
        """
        return await self._send(backend, "POST", path, body, acct)

    async def open_stream(self, backend: Backend, path: str, body: Mapping[str, Any],
                          acct: Accounting | None = None) -> UpstreamStream:
        """POST and open a streamed reply; retried until the first bytes arrive.

        Raises the same errors as ``post_json`` for failures before the first byte.
        """
        attempt = 0
        while True:
            started = time.perf_counter()
            request = self._client.build_request(
                "POST", backend.base_url + path, content=orjson.dumps(body),
                headers=_auth_headers(backend, {"content-type": "application/json",
                                                "accept": "text/event-stream"}))
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error = _translate(exc, backend)
                if await self._should_retry(backend, attempt, error, acct):
                    attempt += 1
                    continue
                raise error from exc
            finally:
                if acct is not None:
                    acct.wait_s += time.perf_counter() - started
            metrics.UPSTREAM_REQUESTS.labels(backend.label, str(response.status_code)).inc()
            if acct is not None:
                acct.upstream_calls += 1
                acct.backends.add(backend.label)
            if response.status_code >= 400:
                payload = await response.aread()
                await response.aclose()
                error = _error_from_status(response.status_code, payload, response.headers)
                if await self._should_retry(backend, attempt, error, acct):
                    attempt += 1
                    continue
                raise error
            byte_iter = response.aiter_bytes().__aiter__()
            first_from = time.perf_counter()
            try:
                first = await byte_iter.__anext__()
            except StopAsyncIteration:
                first = b""
            except httpx.HTTPError as exc:
                await response.aclose()
                error = _translate(exc, backend)  # nothing reached the client: retryable
                if await self._should_retry(backend, attempt, error, acct):
                    attempt += 1
                    continue
                raise error from exc
            finally:
                if acct is not None:
                    acct.wait_s += time.perf_counter() - first_from
            return UpstreamStream(response, first, byte_iter, backend, acct, started)

    async def forward(self, backend: Backend, method: str, path: str, body: bytes,
                      headers: Mapping[str, str], acct: Accounting | None = None,
                      ) -> tuple[int, dict[str, str], AsyncGenerator[bytes, None]]:
        """Forward any other ``/v1/*`` call as it is: returns (status, headers, body chunks).

        Retried on connection errors, 429 and 5xx before any byte is returned. The body
        iterator closes the upstream response when exhausted or closed.
        """
        attempt = 0
        while True:
            started = time.perf_counter()
            request = self._client.build_request(
                method, backend.base_url + path, content=body or None,
                headers=_auth_headers(backend, headers))
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error = _translate(exc, backend)
                if await self._should_retry(backend, attempt, error, acct):
                    attempt += 1
                    continue
                raise error from exc
            finally:
                if acct is not None:
                    acct.wait_s += time.perf_counter() - started
            metrics.UPSTREAM_REQUESTS.labels(backend.label, str(response.status_code)).inc()
            if acct is not None:
                acct.upstream_calls += 1
            if response.status_code in RETRYABLE_STATUSES and attempt < self._settings.max_retries:
                await response.aread()
                await response.aclose()
                error = _error_from_status(response.status_code, b"", response.headers)
                if await self._should_retry(backend, attempt, error, acct):
                    attempt += 1
                    continue
            out_headers = {k: v for k, v in response.headers.items()
                           if k.lower() not in HOP_HEADERS}
            return response.status_code, out_headers, _closing_iter(response, backend, started)

    async def _send(self, backend: Backend, method: str, path: str,
                    body: Mapping[str, Any] | None, acct: Accounting | None,
                    retries: int | None = None) -> JsonReply:
        attempt = 0
        max_retries = self._settings.max_retries if retries is None else retries
        while True:
            started = time.perf_counter()
            try:
                response = await self._client.request(
                    method, backend.base_url + path,
                    content=None if body is None else orjson.dumps(body),
                    headers=_auth_headers(backend, {"content-type": "application/json"}))
            except httpx.HTTPError as exc:
                error = _translate(exc, backend)
                if await self._should_retry(backend, attempt, error, acct, max_retries):
                    attempt += 1
                    continue
                raise error from exc
            finally:
                elapsed = time.perf_counter() - started
                metrics.UPSTREAM_DURATION.labels(backend.label).observe(elapsed)
                if acct is not None:
                    acct.wait_s += elapsed
            metrics.UPSTREAM_REQUESTS.labels(backend.label, str(response.status_code)).inc()
            if acct is not None:
                acct.upstream_calls += 1
                acct.backends.add(backend.label)
            if response.status_code >= 400:
                error = _error_from_status(response.status_code, response.content,
                                           response.headers)
                if await self._should_retry(backend, attempt, error, acct, max_retries):
                    attempt += 1
                    continue
                raise error
            try:
                parsed = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError(
                    f"backend {backend.label} returned a body that is not JSON",
                    code="upstream_malformed") from exc
            return JsonReply(response.status_code, parsed, response.headers)

    async def _should_retry(self, backend: Backend, attempt: int, error: GatewayError,
                            acct: Accounting | None, max_retries: int | None = None) -> bool:
        """Sleep and return True when ``error`` is worth another attempt."""
        limit = self._settings.max_retries if max_retries is None else max_retries
        if attempt >= limit or not _retryable(error):
            return False
        delay = self._settings.retry_backoff_s * (2 ** attempt) * (0.5 + random.random())
        if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
            if error.retry_after_s > MAX_RETRY_AFTER_S:
                return False
            delay = max(delay, error.retry_after_s)
        metrics.UPSTREAM_RETRIES.labels(backend.label, error.type).inc()
        if acct is not None:
            acct.retries += 1
        await asyncio.sleep(delay)
        return True


async def _closing_iter(response: httpx.Response, backend: Backend,
                        started: float) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        raise _translate(exc, backend, streaming=True) from exc
    finally:
        await response.aclose()
        metrics.UPSTREAM_DURATION.labels(backend.label).observe(time.perf_counter() - started)


def _auth_headers(backend: Backend, headers: Mapping[str, str]) -> dict[str, str]:
    # The client's own Authorization never travels upstream: only the configured key does.
    out = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    if backend.api_key:
        out["authorization"] = f"Bearer {backend.api_key}"
    return out


def _retryable(error: GatewayError) -> bool:
    if isinstance(error, UpstreamClientError):
        return False
    if isinstance(error, UpstreamTimeout):
        return error.code == "connect_timeout"
    return isinstance(error, (UpstreamUnavailable, UpstreamRateLimited)) or (
        isinstance(error, UpstreamError) and error.code in {"upstream_5xx", "connection_lost"})


def _translate(exc: httpx.HTTPError, backend: Backend, streaming: bool = False) -> GatewayError:
    """Map an httpx exception to the error tree; messages name the backend, never its key."""
    name = backend.label
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"backend {name} did not accept a connection in time",
                               code="connect_timeout")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"backend {name} did not answer within the read timeout",
                               code="read_timeout")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"backend {name} is unreachable", code="connect_error")
    if streaming:
        return UpstreamError(f"the stream from backend {name} broke off", code="stream_broken")
    return UpstreamError(f"lost the connection to backend {name}", code="connection_lost")


def _error_from_status(status: int, payload: bytes, headers: Mapping[str, str]) -> GatewayError:
    message, param, code, error_type = _parse_error(payload)
    if status == 429:
        retry_after = _retry_after_s(headers)
        return UpstreamRateLimited(message or "the backend is rate limiting",
                                   retry_after_s=retry_after)
    if status in (401, 403):
        # The backend refused the gateway's own credentials: a configuration fault, not the
        # client's; its message may echo the key, so it is not passed on.
        return UpstreamError(f"the backend refused the gateway's credentials ({status})",
                             code="upstream_auth")
    if status == 408:
        return UpstreamTimeout("the backend timed out", code="upstream_408")
    if 400 <= status < 500:
        return UpstreamClientError(message or f"the backend refused the request ({status})",
                                   status=status, param=param, code=code, error_type=error_type)
    return UpstreamError(f"backend error {status}: {message}" if message
                         else f"backend error {status}", code="upstream_5xx")


def _parse_error(payload: bytes) -> tuple[str, str | None, str | None, str | None]:
    try:
        body = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return payload[:300].decode("utf-8", "replace").strip(), None, None, None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or ""
            code = error.get("code")
            return (str(message)[:2000], _str_or_none(error.get("param")),
                    None if code is None else str(code), _str_or_none(error.get("type")))
        if isinstance(error, str):
            return error[:2000], None, None, None
    return "", None, None, None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
