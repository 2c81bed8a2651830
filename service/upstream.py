"""Calls to OpenAI-compatible backends: the only module that names the HTTP client library.

One ``UpstreamClient`` per gateway owns a shared connection pool (httpx's API over aiohttp's
transport, see bench/gateway_overhead.py for why), connect/read timeouts, and retries with
exponential backoff on connection errors, 429 and 5xx. A streamed call is retried only until
its first bytes arrive, before anything is sent to the client; after that a failure is raised
as ``UpstreamError`` for the caller to end its stream with.

Every failure of the transport is one of httpx's, translated here into the gateway's error
tree (``_Translating`` closes the gaps httpx-aiohttp leaves); a backend's own refusal (a
4xx) keeps its message, its error vocabulary made OpenAI's (``_openai_vocabulary``). Every
attempt is counted in ``ttc_upstream_requests_total{backend, status}`` and timed in
``ttc_upstream_duration_seconds{backend}``; retries in ``ttc_upstream_retries_total``. A
completion's 2xx reply is counted once its body has been read (a stream: once it is closed),
under ``STREAM_ERROR`` when the body failed after its 2xx headers, so that broken streams
reach the backend error ratio instead of hiding under their 200.

Retries are bounded three ways: per call (``max_retries``), per client request (the caller's
``retry`` hook: the request's own retry count, and a new grant from its budget ledger, since
a retried call may generate its tokens again), and across requests by a retry budget per
backend (``service.retry_budget``: retries at most ``retry_budget_ratio`` of the calls over a
sliding window, plus a floor per second, as Finagle's and Envoy's retry budgets). Refused
retries are counted in ``ttc_upstream_retries_refused_total{backend, reason}``.

``count_tokens`` counts a text with the backend's own tokenizer, for replies that carry no
usage: ``POST /tokenize`` (llama.cpp's server and vLLM, at the server's root) or ``POST
/extras/tokenize/count`` (llama-cpp-python's server), detected once per backend and cached.

Each backend has a ``ConcurrencyGate`` (calls in flight, held until the reply is read or the
stream closed) and a ``CircuitBreaker`` fed with every call's final fate, once per call and
not per attempt (``service.breaker``); readiness probes (``probe``) bypass both;
``BackendRegistry.resolve`` reads the breakers to steer new requests around a failing backend.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard, TypeVar

import httpx
import orjson

from service import metrics, tracing
from service.breaker import CircuitBreaker, ConcurrencyGate
from service.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamClientError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.retry_budget import RetryBudget
from service.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Response headers that describe the upstream hop itself and must not be copied to the client.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
     "server", "date"}
)
# The most URLs ``UpstreamClient`` keeps parsed: its own few paths are parsed once each, while
# a forwarded call's path is the client's choice, so an unbounded cache grew with every new one.
MAX_CACHED_URLS = 256
# The most a Retry-After from a backend may delay one retry; longer waits become a 429 reply.
MAX_RETRY_AFTER_S = 5.0
# ``ttc_upstream_requests_total``'s status for a reply whose body failed after its 2xx headers:
# it broke off or timed out, was not the JSON or SSE promised, or (a stream) carried an error
# event or ended before its answer did. The attempt is counted under it instead of its 2xx.
STREAM_ERROR = "stream_error"
# Its status for an attempt the gateway gave up on before the backend sent its headers.
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Backend:
    """One configured upstream: its label (for metrics), base URL ending in /v1, API key, the
    model ids it serves, and what it accepts (see ``UpstreamSettings``)."""

    label: str
    base_url: str
    api_key: str | None
    models: tuple[str, ...]
    prefill: bool = False
    reasoning_effort: bool = False
    # it accepts a temperature other than its default (configured, or learnt false from a
    # refusal: ``BackendRegistry.note_default_temperature_only``)
    temperature: bool = True
    budget_tokens: int | None = None
    # Its votes' early-stopping rule where it differs from the gateway's (None: the gateway's).
    vote_first_wave: int | None = None
    vote_stop_threshold: float | None = None


# How a call's tokens were known, from the best source to the most cautious: the backend's
# usage, a count with the backend's tokenizer, the whole grant (neither available), or the
# text's UTF-8 bytes (a call with no cap, so no grant).
USAGE_SOURCES = ("backend", "tokenizer", "grant", "text_bytes")


# The breakdowns OpenAI's ``usage`` carries (CompletionUsage in its OpenAPI document).
DETAIL_FIELDS = ("completion_tokens_details", "prompt_tokens_details")


def is_token_count(value: Any) -> TypeGuard[int]:
    """A token count a backend may report: a non-negative int (a bool is not one). A negative
    count (a broken proxy) would lower the ledger's spend and cannot go into a Prometheus
    counter, so a usage holding one is read as no usage."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def completion_tokens_of(usage: Mapping[str, Any]) -> int | None:
    """The completion tokens a backend's ``usage`` says a call generated, reasoning
    included; None when it holds no count (``completion_tokens``, or the Responses API's
    ``output_tokens``, missing or not ``is_token_count``).

    OpenAI counts reasoning inside ``completion_tokens`` (``reasoning_tokens`` in its
    details is a part of it), and ``total_tokens`` is prompt plus completion. Some backends
    count the reasoning apart (Gemini's OpenAI-compatible endpoint and several proxies:
    ``total_tokens`` = prompt + completion + reasoning, or ``completion_tokens`` 0 beside
    ``reasoning_tokens`` 60), which would make a thinking model's tokens free. So the count
    is at least ``total_tokens - prompt_tokens``, and a ``reasoning_tokens`` larger than it
    (no part can be) is added to it. Both only ever raise the count: a backend following
    OpenAI's reading is counted as it says.
    """
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not is_token_count(completion):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    total = usage.get("total_tokens")
    if is_token_count(total) and is_token_count(prompt) and total - prompt > completion:
        completion = total - prompt
    details = usage.get("completion_tokens_details", usage.get("output_tokens_details"))
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    if is_token_count(reasoning) and reasoning > completion:
        completion += reasoning
    return completion


@dataclass
class Accounting:
    """What one client request cost upstream, filled in by every call made on its behalf.

    Tokens are as the backends reported them, else counted by the gateway
    (``service.strategies.metered``): ``usage_source`` is the most cautious way any call was
    counted (one of ``USAGE_SOURCES``), and ``estimated`` is True when any count is not the
    backend's own (a grant charged in full, or a prompt estimated). ``retries`` counts the
    attempts repeated for this request; ``wait_s`` is seconds spent waiting on backends, so
    that gateway overhead = total duration - wait_s.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_calls: int = 0
    wait_s: float = 0.0
    estimated: bool = False
    usage_source: str = "backend"
    retries: int = 0
    # Backends whose circuit breaker has counted this request's failure: a request counts
    # once, however many of its calls (vote samples, retries) failed.
    failed_backends: set[str] = field(default_factory=set)
    # OpenAI's usage breakdowns (``completion_tokens_details.reasoning_tokens``,
    # ``prompt_tokens_details.cached_tokens``, ...) summed over the calls that reported them;
    # ``settled_calls`` / ``detailed_calls`` say whether every call did.
    details: dict[str, dict[str, int]] = field(default_factory=dict)
    settled_calls: int = 0
    detailed_calls: int = 0

    def add_details(self, usage: Any) -> None:
        """Count one settled call: add its ``*_tokens_details`` integers when ``usage`` (the
        backend's own usage object, or None when the call was counted otherwise) has any."""
        self.settled_calls += 1
        if not isinstance(usage, Mapping):
            return
        found = {name: {k: v for k, v in part.items() if isinstance(v, int)
                        and not isinstance(v, bool)}
                 for name in DETAIL_FIELDS if isinstance(part := usage.get(name), Mapping)}
        if not any(found.values()):
            return
        self.detailed_calls += 1
        for name, part in found.items():
            into = self.details.setdefault(name, {})
            for key, value in part.items():
                into[key] = into.get(key, 0) + value

    def usage_details(self) -> dict[str, dict[str, int]]:
        """The summed breakdowns, only when every settled call reported one (a sum over some
        of the calls would understate the request), else {}."""
        if self.detailed_calls == 0 or self.detailed_calls != self.settled_calls:
            return {}
        return {name: dict(part) for name, part in self.details.items()}

    def add_counted(self, prompt_tokens: int, completion_tokens: int, source: str,
                    *, estimated: bool) -> None:
        """Add one call's tokens counted by the gateway, saying how (``source``)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.estimated = self.estimated or estimated
        if USAGE_SOURCES.index(source) > USAGE_SOURCES.index(self.usage_source):
            self.usage_source = source


# A hook a caller gives a call: told of a failed attempt that could be retried, it charges
# what the attempt may have generated and says whether another attempt may be made (False:
# the error is raised instead). See ``service.strategies.metered``.
RetryHook = Callable[["GatewayError"], bool]
# Called as an attempt leaves the gateway: from then on it may make the backend generate.
SendHook = Callable[[], None]


@dataclass(frozen=True)
class JsonReply:
    """A successful (2xx) non-streamed reply, its body parsed."""

    status: int
    body: Any
    headers: Mapping[str, str]


class UpstreamStream:
    """An open streamed reply (2xx) whose first chunk has already arrived.

    Iterate ``chunks()`` for the raw bytes; failures while reading raise ``UpstreamError`` or
    ``UpstreamTimeout``. A failure the reader finds in the bytes themselves (an error event,
    a malformed or truncated stream) is reported with ``broke()``. Always ``aclose()`` (the
    routes do it in ``finally``): the attempt is counted in ``ttc_upstream_requests_total``
    then, under its status, or ``STREAM_ERROR`` when it broke.
    """

    def __init__(self, response: httpx.Response, first: bytes, byte_iter: AsyncIterator[bytes],
                 backend: Backend, acct: Accounting | None, started: float,
                 gate: ConcurrencyGate | None = None, breaker: CircuitBreaker | None = None):
        self.status = response.status_code
        self.headers = response.headers
        self._response = response
        self._first = first
        self._iter = byte_iter
        self._backend = backend
        self._acct = acct
        self._started = started
        self._gate = gate
        self._breaker = breaker
        self.span: Any = None  # the call's trace span, ended by aclose (service.tracing)
        # Counted by aclose, once; a status other than 2xx was counted by ``_exchange``.
        self._outcome = str(response.status_code) if response.is_success else None
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            tracing.note_stream_chunk(self.span, self._first)
            yield self._first
        while True:
            waited_from = time.perf_counter()
            try:
                chunk = await self._iter.__anext__()
            except StopAsyncIteration:
                return
            except httpx.HTTPError as exc:
                self.broke()
                if self._breaker is not None:
                    count_failure(self._breaker, self._backend, self._acct)
                error = _translate(exc, self._backend, streaming=True)
                tracing.fail(self.span, error)
                raise error from exc
            finally:
                if self._acct is not None:
                    self._acct.wait_s += time.perf_counter() - waited_from
            if self.span is not None:
                tracing.note_stream_chunk(self.span, chunk)
            yield chunk

    def broke(self) -> None:
        """Note that this stream failed after its 2xx headers (an error event, a malformed or
        truncated stream): ``aclose`` counts it as ``STREAM_ERROR``."""
        if self._outcome is not None:
            self._outcome = STREAM_ERROR

    async def aclose(self) -> None:
        """Close the reply (idempotent), count its attempt and free its concurrency slot."""
        if self._closed:
            return
        self._closed = True
        if self._outcome is not None:
            outcome, self._outcome = self._outcome, None
            metrics.child(metrics.UPSTREAM_REQUESTS, self._backend.label, outcome).inc()
        try:
            await self._response.aclose()
        finally:
            if self._gate is not None:
                gate, self._gate = self._gate, None
                gate.release()
            if self.span is not None:
                span, self.span = self.span, None
                span.end()
        metrics.child(metrics.UPSTREAM_DURATION, self._backend.label).observe(
            time.perf_counter() - self._started)


class UpstreamClient:
    """The shared client for all backends.

    Requests are ``httpx.Request`` objects handed straight to the transport's
    ``handle_async_request``: ``httpx.AsyncClient``'s own layers (URL merging, cookie jar,
    redirects, auth) cost about 250 microseconds of CPU per request under load and the
    gateway needs none of them (measured with bench/gateway_overhead.py and py-spy).

    Args:
        settings: timeouts (seconds), retries, pool size.
        transport: an httpx transport to use instead of aiohttp's (tests inject fakes here).
    """

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self._settings = settings
        self._timeouts = {"timeout": {"connect": settings.connect_timeout_s,
                                      "read": settings.read_timeout_s,
                                      "write": settings.read_timeout_s,
                                      "pool": settings.connect_timeout_s}}
        if transport is None:
            from httpx_aiohttp import AiohttpTransport

            transport = _Translating(AiohttpTransport(limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections)))
        self._transport = transport
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._gates: dict[str, ConcurrencyGate] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._retry_budgets: dict[str, RetryBudget] = {}
        # backend label -> its tokenizer path, or None when it has none (absent: not probed)
        self._tokenizers: dict[str, str | None] = {}
        # backend label -> the one cap field its calls carry, for a backend that refused a
        # body carrying both (``_one_cap_field``); absent: both are sent.
        self._cap_field: dict[str, str] = {}

    def retry_budget(self, backend: Backend) -> RetryBudget:
        """The retry budget of ``backend`` (one per backend label)."""
        budget = self._retry_budgets.get(backend.label)
        if budget is None:
            settings = self._settings
            budget = self._retry_budgets[backend.label] = RetryBudget(
                ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s,
                window_s=settings.retry_budget_window_s)
        return budget

    def breaker(self, backend: Backend) -> CircuitBreaker:
        """The circuit breaker of ``backend`` (one per backend label)."""
        breaker = self._breakers.get(backend.label)
        if breaker is None:
            breaker = self._breakers[backend.label] = CircuitBreaker(
                backend.label, self._settings.breaker_failures,
                self._settings.breaker_cool_down_s)
        return breaker

    def _gate(self, backend: Backend) -> ConcurrencyGate:
        gate = self._gates.get(backend.label)
        if gate is None:
            gate = self._gates[backend.label] = ConcurrencyGate(
                backend.label, self._settings.backend_max_concurrency,
                self._settings.backend_max_waiting, self._settings.backend_queue_timeout_s)
        return gate

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def get_json(self, backend: Backend, path: str, *, retries: int | None = None) -> Any:
        """GET ``path`` (relative to the backend's base URL) and parse the JSON body.

        Raises the ``UpstreamError`` family on failure.
        """
        reply = await self._retrying(
            backend, None, retries,
            lambda last: self._json_attempt(backend, "GET", path, None, None))
        return reply.body

    async def probe(self, backend: Backend, path: str) -> Any:
        """GET ``path`` once for a health check: outside the backend's concurrency gate (a
        readiness probe must not queue behind traffic, or every replica turns NotReady under
        load), without retries, and without feeding the circuit breaker.

        Raises the ``UpstreamError`` family on failure.
        """
        response = await self._exchange(backend, "GET", self._url(backend, path), None,
                                        _fixed_headers(backend, "json"), None)
        payload = await _read(response, backend)
        if response.status_code >= 400:
            raise _error_from_status(response.status_code, payload, response.headers,
                                     backend.api_key)
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"backend {backend.label} returned a body that is not JSON",
                                code="upstream_malformed") from exc

    async def post_json(self, backend: Backend, path: str, body: Mapping[str, Any],
                        acct: Accounting | None = None, retry: RetryHook | None = None,
                        sending: SendHook | None = None) -> JsonReply:
        """POST a JSON body and parse the JSON reply, with retries (each one first allowed by
        ``retry`` when given, and by the backend's retry budget). ``sending()``, when given,
        is called as each attempt leaves the gateway (its concurrency slot taken): an attempt
        cancelled before that never reached the backend. The caps are sent as the backend
        takes them (``_one_cap_field``).

        Raises:
            UpstreamClientError: the backend refused the request (4xx other than 429).
            UpstreamRateLimited: 429 after retries.
            UpstreamUnavailable: the backend could not be reached.
            UpstreamTimeout: no reply within the read timeout.
            UpstreamError: 5xx after retries, or a body that is not JSON.
        """
        return await self._one_cap_field(
            backend, body, lambda sent: self._post_json(backend, path, sent, acct, retry,
                                                        sending))

    async def _one_cap_field(self, backend: Backend, body: Mapping[str, Any],
                             send: Callable[[Mapping[str, Any]], Awaitable[_T]]) -> _T:
        """``send(body)``, with one of ``max_tokens`` and ``max_completion_tokens`` left out
        for a backend that refuses the two together.

        The strategies cap every chat call with both fields, since some servers honour only
        one of them. OpenAI's API refuses the pair ("Setting 'max_tokens' and
        'max_completion_tokens' at the same time is not supported", a 400), and its reasoning
        models refuse ``max_tokens`` at all, so against it every capped call failed, the
        client's own passed-through ``max_tokens`` included. Such a refusal (a 400 naming
        ``max_completion_tokens``) is answered by sending the body again with
        ``max_completion_tokens`` alone, or, when that is refused for naming it, with
        ``max_tokens`` alone (a server that knows only the older field); the backend
        generated nothing, so nothing is charged twice. The field that was taken is
        remembered for the backend's later calls.
        """
        kept = self._cap_field.get(backend.label)
        if kept is not None:
            return await send(_only_cap(body, kept))
        try:
            return await send(body)
        except UpstreamClientError as error:
            if not _refuses_both_caps(error, body):
                raise
            refusal = error
        for kept in CAP_FIELDS:
            try:
                result = await send(_only_cap(body, kept))
            except UpstreamClientError as error:
                if error.status != 400 or kept not in error.message:
                    raise
                refusal = error
                continue
            log.info("backend %s refuses max_tokens and max_completion_tokens together (%s): "
                     "its calls carry %s alone", backend.label, refusal.message, kept)
            self._cap_field[backend.label] = kept
            return result
        raise refusal

    async def _post_json(self, backend: Backend, path: str, body: Mapping[str, Any],
                         acct: Accounting | None, retry: RetryHook | None,
                         sending: SendHook | None) -> JsonReply:
        content = orjson.dumps(body)

        def attempt(last: bool) -> Awaitable[JsonReply]:
            return self._json_attempt(backend, "POST", path, content, acct, sending)

        if not tracing.enabled():
            return await self._retrying(backend, acct, None, attempt, retry)
        with tracing.span(tracing.upstream_name(path, body), tracing.upstream_attributes(
                backend.base_url, backend.label, path, body), kind="CLIENT") as span:
            try:
                reply = await self._retrying(backend, acct, None, attempt, retry)
            except GatewayError as error:
                tracing.fail(span, error)
                raise
            tracing.note_reply(span, reply.body)
            return reply

    async def open_stream(self, backend: Backend, path: str, body: Mapping[str, Any],
                          acct: Accounting | None = None, retry: RetryHook | None = None,
                          sending: SendHook | None = None) -> UpstreamStream:
        """POST and open a streamed reply; retried until the first bytes arrive (each retry
        first allowed by ``retry`` when given, and by the backend's retry budget);
        ``sending`` as ``post_json``'s.

        Raises the same errors as ``post_json`` for failures before the first byte.
        """
        return await self._one_cap_field(
            backend, body, lambda sent: self._open_stream(backend, path, sent, acct, retry,
                                                          sending))

    async def _open_stream(self, backend: Backend, path: str, body: Mapping[str, Any],
                           acct: Accounting | None, retry: RetryHook | None,
                           sending: SendHook | None) -> UpstreamStream:
        content = orjson.dumps(body)

        def attempt(last: bool) -> Awaitable[UpstreamStream]:
            return self._stream_attempt(backend, path, content, acct, sending)

        if not tracing.enabled():
            return await self._retrying(backend, acct, None, attempt, retry)
        # The span lasts as long as the stream: it ends when the stream is closed.
        span = tracing.open_span(tracing.upstream_name(path, body), tracing.upstream_attributes(
            backend.base_url, backend.label, path, body))
        try:
            with tracing.current(span):
                stream = await self._retrying(backend, acct, None, attempt, retry)
        except BaseException as error:
            tracing.fail(span, error)
            if span is not None:
                span.end()
            raise
        stream.span = span
        return stream

    async def count_tokens(self, backend: Backend, model: str, text: str) -> int | None:
        """The tokens of ``text`` by the backend's own tokenizer, without special tokens; None
        when the backend offers no tokenizer endpoint or it failed.

        The endpoint is detected at the first use and remembered per backend: ``POST
        {root}/tokenize`` with ``content`` (llama.cpp's server) and ``prompt`` (vLLM), then
        ``POST {root}/extras/tokenize/count`` with ``input`` (llama-cpp-python's server), where
        root is the base URL without its ``/v1``. One attempt, no retry: a failed count falls
        back to charging the grant.
        """
        if not text:
            return 0
        known = self._tokenizers.get(backend.label, "")
        if known is None:
            return None
        paths = (known,) if known else TOKENIZE_PATHS
        for path in paths:
            count = await self._tokenize_once(backend, path, model, text)
            if count is not None:
                self._tokenizers[backend.label] = path
                return count
        if not known:
            self._tokenizers[backend.label] = None  # no tokenizer here: never ask again
        return None

    async def _tokenize_once(self, backend: Backend, path: str, model: str,
                             text: str) -> int | None:
        root = backend.base_url.removesuffix("/").removesuffix("/v1")
        body = ({"input": text, "model": model} if path.startswith("/extras") else
                {"model": model, "content": text, "prompt": text, "add_special": False,
                 "add_special_tokens": False})
        # Through ``_exchange``, so that it is counted in ttc_upstream_requests_total like
        # every other call to the backend (it was sent beside the metric).
        try:
            response = await self._exchange(backend, "POST", httpx.URL(root + path),
                                            orjson.dumps(body), _fixed_headers(backend, "json"),
                                            None, count_2xx=False)
        except GatewayError:
            return None
        try:
            payload = await _read(response, backend)
            parsed = orjson.loads(payload) if response.status_code == 200 else None
        except (GatewayError, orjson.JSONDecodeError):
            _count_2xx(backend, response, STREAM_ERROR)
            return None
        except BaseException:  # cancelled: the gateway gave up, not the backend
            _count_2xx(backend, response)
            raise
        _count_2xx(backend, response)
        if not isinstance(parsed, dict):
            return None
        if isinstance(parsed.get("count"), int):
            return int(parsed["count"])
        tokens = parsed.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    async def forward(self, backend: Backend, method: str, path: str, body: bytes,
                      headers: Mapping[str, str], acct: Accounting | None = None,
                      sending: SendHook | None = None, retry: RetryHook | None = None,
                      ) -> tuple[int, dict[str, str], ForwardedBody]:
        """Forward any other ``/v1/*`` call as it is: returns (status, headers, body chunks).
        ``sending`` and ``retry`` as ``post_json``'s.

        Retried on connection errors, 429 and 5xx before any byte is returned. A JSON reply
        (``application/json``) is read whole and checked before it is returned, so that one
        cut off or not JSON is an error the client gets in the envelope rather than a 200
        with a broken body; any other (a stream, a file) is returned as it comes. The body
        iterator closes the upstream response when exhausted or closed, and counts the
        attempt in ``ttc_upstream_requests_total`` then: ``stream_error`` when it broke off.

        Raises:
            the ``UpstreamError`` family as ``post_json`` does, for a failure or an error
            status (4xx, or 5xx after retries) of the last attempt: the backend's own error
            body is never passed through as it is; and (not retried: the backend may have
            done the work) ``UpstreamError`` for a JSON reply cut off or not JSON.
        """

        url = self._url(backend, path)  # a path no URL can hold is the client's 400, untried

        async def attempt(last: bool) -> tuple[int, dict[str, str], ForwardedBody]:
            started = time.perf_counter()
            # A forwarded call holds its slot until the reply's headers arrive (a JSON reply:
            # until it is read): a stream's body is read by the route's response, which may
            # never start if the client goes away.
            gate = self._gate(backend)
            await gate.acquire()
            if sending is not None:
                sending()
            try:
                response = await self._exchange(backend, method, url,
                                                body, _auth_headers(backend, headers), acct,
                                                count_2xx=False)
                if response.status_code in RETRYABLE_STATUSES and not last:
                    await _read(response, backend)
                    raise _error_from_status(response.status_code, b"", response.headers)
                if response.status_code >= 400:
                    # Rendered in OpenAI's envelope like every other error, whatever the
                    # backend's body was (plain text included); its message is kept.
                    payload = await _read(response, backend)
                    raise _error_from_status(response.status_code, payload, response.headers,
                                             backend.api_key)
                out_headers = {k: v for k, v in response.headers.items()
                               if k.lower() not in HOP_HEADERS}
                if response.headers.get("content-type", "").startswith("application/json"):
                    payload = await _forwarded_json(response, backend, started)
                    return response.status_code, out_headers, ForwardedBody.read(payload)
            finally:
                gate.release()
            return (response.status_code, out_headers,
                    ForwardedBody(response, backend, started))

        return await self._retrying(backend, acct, None, attempt, retry)

    # --- one attempt each -------------------------------------------------------------------

    async def _json_attempt(self, backend: Backend, method: str, path: str,
                            content: bytes | None, acct: Accounting | None,
                            sending: SendHook | None = None) -> JsonReply:
        gate = self._gate(backend)
        await gate.acquire()
        if sending is not None:
            sending()
        started = time.perf_counter()
        try:
            response = await self._exchange(backend, method, self._url(backend, path), content,
                                            _fixed_headers(backend, "json"), acct,
                                            count_2xx=False)
            try:
                payload = await _read(response, backend)
            except GatewayError:
                _count_2xx(backend, response, STREAM_ERROR)
                raise
            except BaseException:  # cancelled: the gateway gave up, not the backend
                _count_2xx(backend, response)
                raise
        finally:
            gate.release()
            elapsed = time.perf_counter() - started
            metrics.child(metrics.UPSTREAM_DURATION, backend.label).observe(elapsed)
            if acct is not None:
                acct.wait_s += elapsed
        if response.status_code >= 400:
            raise _error_from_status(response.status_code, payload, response.headers,
                                     backend.api_key)
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            _count_2xx(backend, response, STREAM_ERROR)
            raise UpstreamError(f"backend {backend.label} returned a body that is not JSON",
                                code="upstream_malformed") from exc
        _count_2xx(backend, response)
        return JsonReply(response.status_code, parsed, response.headers)

    async def _stream_attempt(self, backend: Backend, path: str, content: bytes,
                              acct: Accounting | None,
                              sending: SendHook | None = None) -> UpstreamStream:
        gate = self._gate(backend)
        await gate.acquire()
        if sending is not None:
            sending()
        started = time.perf_counter()
        try:
            response = await self._exchange(backend, "POST", self._url(backend, path), content,
                                            _fixed_headers(backend, "sse"), acct,
                                            count_2xx=False)
            if response.status_code >= 400:
                payload = await _read(response, backend)
                raise _error_from_status(response.status_code, payload, response.headers,
                                         backend.api_key)
            byte_iter = response.aiter_bytes().__aiter__()
            try:
                first = await byte_iter.__anext__()
            except StopAsyncIteration:
                first = b""
            except httpx.HTTPError as exc:
                _count_2xx(backend, response, STREAM_ERROR)
                await response.aclose()
                raise _translate(exc, backend) from exc  # nothing reached the client: retryable
            except BaseException:  # cancelled: the gateway gave up, not the backend
                _count_2xx(backend, response)
                raise
        except BaseException:
            gate.release()
            raise
        finally:
            if acct is not None:
                acct.wait_s += time.perf_counter() - started
        return UpstreamStream(response, first, byte_iter, backend, acct, started, gate,
                              self.breaker(backend))

    async def _exchange(self, backend: Backend, method: str, url: httpx.URL,
                        content: bytes | None, headers: Mapping[str, str],
                        acct: Accounting | None, *, count_2xx: bool = True) -> httpx.Response:
        """Send one request and return the response with its body unread; counts the attempt
        in ``ttc_upstream_requests_total`` (a 2xx one only with ``count_2xx``: else the
        caller counts it once its body is read, ``_count_2xx``) and translates transport
        errors."""
        request = httpx.Request(method, url, content=content or None, headers=headers,
                                extensions=self._timeouts)
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            metrics.child(metrics.UPSTREAM_REQUESTS, backend.label, "error").inc()
            raise _translate(exc, backend) from exc
        except asyncio.CancelledError:
            # The gateway gave up before the backend answered (the client left, or the
            # shutdown deadline passed): counted, as every attempt is, but apart from
            # "error", since the backend did not fail. Uncounted, the metric showed fewer
            # attempts than the backend served.
            metrics.child(metrics.UPSTREAM_REQUESTS, backend.label, CANCELLED).inc()
            raise
        except Exception:
            metrics.child(metrics.UPSTREAM_REQUESTS, backend.label, "error").inc()
            raise
        if count_2xx or not response.is_success:
            metrics.child(metrics.UPSTREAM_REQUESTS, backend.label,
                          str(response.status_code)).inc()
        if acct is not None:
            acct.upstream_calls += 1
        return response

    def _url(self, backend: Backend, path: str) -> httpx.URL:
        """``backend``'s URL for ``path`` (which starts with ``/``, and may hold a query).

        Raises:
            InvalidRequest: no URL can hold ``path`` (a forwarded call's path with a control
                character, say): the client's fault, a 400 naming ``path``.
        """
        # Parsing a URL string is a visible share of the per-request CPU: parse each once.
        key = (backend.base_url, path)
        url = self._urls.get(key)
        if url is None:
            try:
                url = httpx.URL(backend.base_url + path)
            except httpx.InvalidURL as exc:
                raise InvalidRequest(f"the path cannot be forwarded: {exc}",
                                     param="path") from exc
            if "?" not in path and len(self._urls) < MAX_CACHED_URLS:
                self._urls[key] = url
        return url

    async def _retrying(self, backend: Backend, acct: Accounting | None,
                        max_retries: int | None,
                        attempt: Callable[[bool], Awaitable[_T]],
                        retry: RetryHook | None = None) -> _T:
        """Run ``attempt(last)`` until it succeeds, or fails with an error not worth another
        try, or the retries run out (this call's ``max_retries``, the caller's ``retry`` hook,
        the backend's retry budget). Backoff is exponential with jitter; a backend's
        ``Retry-After`` is honoured up to ``MAX_RETRY_AFTER_S``."""
        limit = self._settings.max_retries if max_retries is None else max_retries
        breaker = self.breaker(backend)
        budget = self.retry_budget(backend)
        budget.deposit()
        tries = 0
        while True:
            try:
                result = await attempt(tries >= limit)
            except GatewayError as error:
                delay = self._settings.retry_backoff_s * (2 ** tries) * (0.5 + random.random())
                wait = error.retry_after_s if isinstance(error, UpstreamRateLimited) else None
                if wait is not None:
                    delay = max(delay, wait)
                if (tries >= limit or not _retryable(error)
                        or (wait is not None and wait > MAX_RETRY_AFTER_S)
                        or not self._may_retry(backend, budget, retry, error)):
                    # The breaker hears of a request once, at a call's final outcome:
                    # counting every attempt opened it after two requests with two retries.
                    if _backend_fault(error):
                        count_failure(breaker, backend, acct)
                    else:  # the backend answered (a refusal, a 429): not a verdict on it
                        breaker.end_trial()
                    raise
                budget.withdraw()
                metrics.child(metrics.RETRY_BUDGET_AVAILABLE, backend.label).set(
                    budget.available())
                metrics.child(metrics.UPSTREAM_RETRIES, backend.label, error.type).inc()
                if acct is not None:
                    acct.retries += 1
                tries += 1
                await asyncio.sleep(delay)
            else:
                breaker.record_success()
                return result

    @staticmethod
    def _may_retry(backend: Backend, budget: RetryBudget, retry: RetryHook | None,
                   error: GatewayError) -> bool:
        """Whether the backend's retry budget, then the caller's hook, allow one more try."""
        if not budget.can_withdraw():
            metrics.child(metrics.RETRIES_REFUSED, backend.label, "retry_budget").inc()
            return False
        return retry is None or retry(error)


class _Unreadable(httpx.RemoteProtocolError):
    """A reply the transport could not read as HTTP (``_Translating``)."""


class _Translating(httpx.AsyncBaseTransport):
    """A transport whose failures to send or read a request's head are all httpx's.

    httpx-aiohttp maps most of aiohttp's errors to httpx's, not all: a reply no HTTP client
    can read (a bad status line, a malformed header) comes as aiohttp's
    ``ClientResponseError``, which escaped the error tree as a 500 "the gateway failed
    unexpectedly", never recorded. It becomes ``_Unreadable``, a 502 ``upstream_malformed``.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport):
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.HTTPError:
            raise
        except Exception as exc:
            raise _Unreadable(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


_T = TypeVar("_T")
TOKENIZE_PATHS = ("/tokenize", "/extras/tokenize/count")
_JSON_HEADERS = {"content-type": "application/json"}
_SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


def _count_2xx(backend: Backend, response: httpx.Response, outcome: str | None = None) -> None:
    """Count an attempt whose 2xx status ``_exchange`` left uncounted: under ``outcome``
    (``STREAM_ERROR``: its body failed), else its status. Other statuses were counted."""
    if response.is_success:
        metrics.child(metrics.UPSTREAM_REQUESTS, backend.label,
                      outcome or str(response.status_code)).inc()


async def _read(response: httpx.Response, backend: Backend) -> bytes:
    """The whole body of ``response``, which is then closed."""
    try:
        if response.is_stream_consumed:  # a response built with its body already read
            return response.content
        if "content-encoding" not in response.headers:
            # The raw stream, without httpx's decoder chain (identity: nothing to decode).
            return b"".join([chunk async for chunk in response.aiter_raw()])
        return await response.aread()
    except httpx.HTTPError as exc:
        raise _translate(exc, backend) from exc
    finally:
        await response.aclose()


async def _forwarded_json(response: httpx.Response, backend: Backend, started: float) -> bytes:
    """The whole body of a forwarded 2xx JSON reply, checked, then closed; its attempt
    counted under its status, or ``STREAM_ERROR`` when the body broke off or is not JSON.
    An empty body passes (a DELETE's 200 may have none).

    Raises:
        UpstreamError: the body broke off (``stream_broken``) or is not JSON
            (``upstream_malformed``); ``UpstreamTimeout``: it stalled past the read timeout.
    """
    outcome: str | None = None
    try:
        # Decoded (gzip, ...), as a streamed body is: the encoding header is not passed on.
        payload = b"".join([chunk async for chunk in response.aiter_bytes()])
        if payload.strip():
            orjson.loads(payload)
    except httpx.HTTPError as exc:
        outcome = STREAM_ERROR
        raise _translate(exc, backend, streaming=True) from exc
    except orjson.JSONDecodeError as exc:
        outcome = STREAM_ERROR
        raise UpstreamError(f"backend {backend.label} returned a body that is not JSON",
                            code="upstream_malformed") from exc
    finally:
        await response.aclose()
        _count_2xx(backend, response, outcome)  # cancelled: under its status, as elsewhere
        metrics.child(metrics.UPSTREAM_DURATION, backend.label).observe(
            time.perf_counter() - started)
    return payload


class ForwardedBody:
    """The body of a forwarded reply, as an async iterator of chunks with ``aclose``.

    Streamed: ``ForwardedBody(response, backend, started)`` reads the response as the client
    takes it and, when it ends, breaks off or is closed (read or not: exactly once), closes
    it and counts its attempt in ``ttc_upstream_requests_total``, ``STREAM_ERROR`` when it
    broke off. Read already (a JSON reply, counted when read): ``ForwardedBody.read(payload)``.
    """

    def __init__(self, response: httpx.Response | None, backend: Backend | None,
                 started: float, payload: bytes | None = None):
        self._response = response
        self._backend = backend
        self._started = started
        self._payload = payload
        self._chunks = response.aiter_bytes() if response is not None else None
        self._closed = response is None

    @classmethod
    def read(cls, payload: bytes) -> ForwardedBody:
        """A body read whole already: one chunk (none when empty)."""
        return cls(None, None, 0.0, payload)

    def __aiter__(self) -> ForwardedBody:
        return self

    async def __anext__(self) -> bytes:
        if self._chunks is None:
            payload, self._payload = self._payload, None
            if not payload:
                raise StopAsyncIteration
            return payload
        assert self._backend is not None
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._close(None)
            raise
        except httpx.HTTPError as exc:
            await self._close(STREAM_ERROR)
            raise _translate(exc, self._backend, streaming=True) from exc

    async def aclose(self) -> None:
        """Close the upstream response (cancelled or left unread: the attempt counts under
        its status; the gateway gave up, not the backend)."""
        await self._close(None)

    async def _close(self, outcome: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        assert self._response is not None and self._backend is not None
        try:
            await self._response.aclose()
        finally:
            _count_2xx(self._backend, self._response, outcome)
            metrics.child(metrics.UPSTREAM_DURATION, self._backend.label).observe(
                time.perf_counter() - self._started)


@functools.lru_cache(maxsize=256)
def _fixed_headers(backend: Backend, kind: str) -> httpx.Headers:
    """The headers of the gateway's own JSON (``kind`` "json") or SSE ("sse") calls to
    ``backend``, built once: parsing headers is a visible share of each call's CPU."""
    base = _JSON_HEADERS if kind == "json" else _SSE_HEADERS
    return httpx.Headers(_auth_headers(backend, base))


def _auth_headers(backend: Backend, headers: Mapping[str, str]) -> dict[str, str]:
    # The client's own Authorization never travels upstream: only the configured key does.
    out = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    if backend.api_key:
        out["authorization"] = f"Bearer {backend.api_key}"
    return out


def count_failure(breaker: CircuitBreaker, backend: Backend, acct: Accounting | None) -> None:
    """Tell ``breaker`` one client request failed on ``backend``, once per request: the
    breaker counts requests, not their calls or attempts (without ``acct``, the call)."""
    if acct is not None:
        if backend.label in acct.failed_backends:
            return
        acct.failed_backends.add(backend.label)
    breaker.record_failure()


# The messages of llama.cpp's server (tools/server/utils.hpp, server.cpp) refusing a request's
# parameters, which it sends as 500 server_error, lower-cased, and the parameter each names
# (None: read from the message, "Unsupported param: best_of").
_LLAMA_CPP_REFUSALS = (
    ("only one completion choice is allowed", "n"),  # also "Illegal param: only one ..."
    ("only no echo is supported", "echo"),
    ("requires logprobs", "top_logprobs"),
    ('"top_logprobs" requires', "top_logprobs"),
    ("--jinja", "tools"),  # "Unsupported param (--jinja mode required for tool call): tools"
    ("unsupported param", None),
    ("illegal param", None),
)
_NAMED_PARAM = re.compile(r"param(?: \([^)]*\))?: \"?([A-Za-z_]+)")


def _llama_cpp_refusal(message: str) -> str | None:
    """The parameter a backend's 5xx ``message`` refuses, when it is one of llama.cpp's
    server's refusals of a request parameter ("" when it names none), else None."""
    lowered = message.lower()
    for marker, param in _LLAMA_CPP_REFUSALS:
        if marker in lowered:
            if param is not None:
                return param
            named = _NAMED_PARAM.search(message)
            return named[1] if named else ""
    return None


def refuses_n(error: GatewayError) -> bool:
    """True when ``error`` is a backend's refusal of a call's ``n`` (more than one choice):
    a 4xx naming ``n`` as its ``param``, llama.cpp's "Only one completion choice is allowed"
    included. Such a backend is asked for one choice a call instead."""
    return isinstance(error, UpstreamClientError) and error.param == "n"


def _refuses_both_caps(error: UpstreamClientError, body: Mapping[str, Any]) -> bool:
    """True when ``error`` is a backend's 400 for a ``body`` carrying both ``max_tokens`` and
    ``max_completion_tokens`` that asks for the latter: OpenAI's refusal of the pair, or of
    ``max_tokens`` on its reasoning models, both of which name ``max_completion_tokens``
    (a cap too large for the model names only the field it was given)."""
    return (error.status == 400 and "max_tokens" in body and "max_completion_tokens" in body
            and "max_completion_tokens" in error.message)


def refuses_temperature(error: GatewayError) -> bool:
    """True when ``error`` is a backend's refusal of the ``temperature`` a call carried: a
    4xx whose ``param`` is ``temperature`` (OpenAI's reasoning models: "Unsupported value:
    'temperature' does not support 0.0 with this model. Only the default (1) value is
    supported."), or whose message names temperature as unsupported (servers and proxies
    that leave ``param`` out)."""
    if not isinstance(error, UpstreamClientError) or not 400 <= error.status < 500:
        return False
    if error.param == "temperature":
        return True
    message = error.message.lower()
    return "temperature" in message and any(
        words in message for words in ("unsupported", "not supported", "does not support",
                                       "only the default"))


# The cap fields a call may carry alone, in the order tried (``UpstreamClient._one_cap_field``).
CAP_FIELDS = ("max_completion_tokens", "max_tokens")


def _only_cap(body: Mapping[str, Any], kept: str) -> Mapping[str, Any]:
    """``body`` capped by the field ``kept`` alone, when it carries both cap fields."""
    if "max_tokens" not in body or "max_completion_tokens" not in body:
        return body
    dropped = next(field for field in CAP_FIELDS if field != kept)
    return {key: value for key, value in body.items() if key != dropped}


def _backend_fault(error: GatewayError) -> bool:
    """Whether ``error`` says the backend is failing (counted by its circuit breaker), as
    opposed to refusing this request (its 4xx) or asking for patience (429)."""
    return isinstance(error, UpstreamError) and not isinstance(
        error, (UpstreamClientError, UpstreamRateLimited))


def may_have_generated(error: GatewayError) -> bool:
    """Whether a call that failed with ``error`` may have made the backend generate tokens:
    the request reached it and it may have worked on it (a 5xx, a read timeout, a lost
    connection, a broken stream, a body that is not JSON), as opposed to a refused connection,
    a connect timeout, a 4xx, a 429 or the gateway's own refusal (nothing generated)."""
    if isinstance(error, UpstreamTimeout):
        return error.code != "connect_timeout"
    if isinstance(error, (UpstreamClientError, UpstreamRateLimited, UpstreamUnavailable)):
        return False
    return isinstance(error, UpstreamError) and error.code != "upstream_auth"


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
    cause = exc.__cause__
    if isinstance(exc, _Unreadable):
        return UpstreamError(f"backend {name} sent a reply that is not readable HTTP",
                             code="upstream_malformed")
    if isinstance(exc, httpx.ConnectTimeout) and cause is not None and not isinstance(
            cause, TimeoutError):
        # httpx-aiohttp maps every aiohttp ClientConnectionError to ConnectTimeout, a refused
        # connection and a server that hung up included: tell them apart by the cause.
        if isinstance(cause, OSError):
            return UpstreamUnavailable(f"backend {name} is unreachable", code="connect_error")
        if streaming:
            return UpstreamError(f"the stream from backend {name} broke off",
                                 code="stream_broken")
        return UpstreamError(f"lost the connection to backend {name}", code="connection_lost")
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


def _error_from_status(status: int, payload: bytes, headers: Mapping[str, str],
                       secret: str | None = None) -> GatewayError:
    message, param, code, error_type = _parse_error(payload)
    if secret:  # a backend that echoes the gateway's own key must not show it to the client
        message = message.replace(secret, "[redacted]")
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
    refused = _llama_cpp_refusal(message)
    if refused is not None and status >= 500:
        # llama.cpp's server refuses a parameter it does not take with a 500 (a runtime_error
        # while it parses the request), before generating anything: the client's 400, not a
        # backend failure to retry, charge or count against its circuit breaker (five such
        # requests took the backend out for every client).
        return UpstreamClientError(message, status=400, param=refused or None,
                                   code="unsupported_parameter")
    if 400 <= status < 500:
        error_type, code = _openai_vocabulary(status, error_type, code)
        return UpstreamClientError(message or f"the backend refused the request ({status})",
                                   status=status, param=param or refused or None, code=code,
                                   error_type=error_type,
                                   allow=headers.get("allow") if status == 405 else None)
    return UpstreamError(f"backend error {status}: {message}" if message
                         else f"backend error {status}", code="upstream_5xx")


# Error types of the backends the gateway fronts that OpenAI's API never sends, as OpenAI
# types a refusal of the same kind: llama.cpp's server (the embedded backend) answers a path
# it does not serve with ``not_found_error``, a prompt over its context with
# ``exceed_context_size_error`` (OpenAI: code ``context_length_exceeded``); vLLM names its
# exception's class. Clients written for OpenAI branch on ``invalid_request_error``.
_FOREIGN_TYPES = {
    "not_found_error": ("invalid_request_error", None),
    "NotFoundError": ("invalid_request_error", None),
    "BadRequestError": ("invalid_request_error", None),
    "exceed_context_size_error": ("invalid_request_error", "context_length_exceeded"),
}


def _openai_vocabulary(status: int, error_type: str | None, code: str | None,
                       ) -> tuple[str | None, str | None]:
    """(type, code) of a backend's 4xx as OpenAI words them: a type in ``_FOREIGN_TYPES``
    translated, and a code that only repeats the HTTP status (llama.cpp's and vLLM's
    ``"code": 404``; OpenAI's codes are names such as ``model_not_found``) dropped."""
    if code == str(status):
        code = None
    if error_type in _FOREIGN_TYPES:
        error_type, usual_code = _FOREIGN_TYPES[error_type]
        code = code or usual_code
    return error_type, code


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
