"""OpenTelemetry traces of each client request, one span per stage; off unless ``otel_enabled``.

The tree of one ``POST /v1/chat/completions`` (span name, kind):

    chat auto                   SERVER    the client's request, arrival to last byte sent
      ttc.classify              INTERNAL  the classifier reading the prompt
      ttc.decide                INTERNAL  the policy choosing the strategy and budget
      chat <upstream model>     CLIENT    one per upstream call, its retries included
      retrieval <backend>       INTERNAL  one per search of the ``search`` strategy

Attribute names follow OpenTelemetry's GenAI semantic conventions (status: development; the
client inference, retrieval and server spans of semantic-conventions v1.41 and its successor
semantic-conventions-genai): ``gen_ai.operation.name`` (``chat``, ``text_completion``,
``retrieval``), ``gen_ai.provider.name`` (the backend's label from the settings: every backend
speaks OpenAI's API, so the operator's name says more than ``openai`` would),
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.request.max_tokens``,
``gen_ai.request.choice.count``, ``gen_ai.response.id``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``gen_ai.data_source.id`` and ``gen_ai.retrieval.top_k``, with
``server.address``, ``server.port``, ``http.response.status_code`` and ``error.type`` from the
general conventions. The gateway's own are ``ttc.*``: ``ttc.decision_id``, ``ttc.strategy``,
``ttc.policy``, ``ttc.budget_tokens``, ``ttc.upstream_calls``, ``ttc.overhead_ms``,
``ttc.usage_estimated``. Prompt and answer text never go into a span.

Off (the default) every helper returns at once: ``span`` hands back one shared no-op context
manager and the OpenTelemetry SDK is never imported, so the hot path pays a global read per
stage (bench/gateway_overhead.py). On, spans leave through a ``BatchSpanProcessor`` (its own
thread) and the OTLP/HTTP exporter; a test passes an in-memory exporter instead.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from service.latency import overhead_s

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from service.settings import Settings
    from service.strategies.base import Call

log = logging.getLogger(__name__)

OPERATIONS = {"/chat/completions": "chat", "/completions": "text_completion",
              "/v1/chat/completions": "chat", "/v1/completions": "text_completion"}

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def start(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Set up tracing for this process when ``settings.otel_enabled`` or ``exporter`` is given.

    Args:
        settings: ``otel_enabled``, ``otel_endpoint`` (an OTLP/HTTP base URL; None: the SDK's
            ``OTEL_EXPORTER_OTLP_*`` variables), ``otel_service_name``, ``otel_sample_ratio``.
        exporter: where spans go instead of OTLP (tests pass ``InMemorySpanExporter``); spans
            then reach it synchronously, as each one ends.

    Returns:
        Whether tracing is on. The gateway's tracer provider is its own, not the global one,
        so that a library's instrumentation elsewhere in the process is left alone.
    """
    global _tracer, _provider
    if not settings.otel_enabled and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from service import __version__

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name,
                                  "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_endpoint
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=endpoint.rstrip("/") + "/v1/traces" if endpoint else None)))
    _provider = provider
    _tracer = provider.get_tracer("ttc-router", __version__)
    log.info("tracing on: OpenTelemetry spans to %s",
             type(exporter).__name__ if exporter else settings.otel_endpoint or "OTLP default")
    return True


def stop() -> None:
    """Export the spans still queued and turn tracing off (called when the app stops)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Whether spans are being made."""
    return _tracer is not None


def span(name: str, attributes: Mapping[str, Any] | None = None,
         kind: str = "INTERNAL") -> contextlib.AbstractContextManager[Span | None]:
    """A span around a block, current inside it (its children nest under it); yields None
    when tracing is off. An exception leaving the block marks the span as an error."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    from opentelemetry.trace import SpanKind

    return tracer.start_as_current_span(name, kind=SpanKind[kind],
                                        attributes=_clean(attributes))


def open_span(name: str, attributes: Mapping[str, Any] | None = None,
              kind: str = "CLIENT") -> Span | None:
    """A span that outlives the block that starts it (an upstream stream, ended when the
    stream closes), child of the current span; None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return tracer.start_span(name, kind=SpanKind[kind], attributes=_clean(attributes))


@contextlib.contextmanager
def current(span_: Span | None) -> Iterator[None]:
    """Make ``span_`` the current span inside the block (nothing when it is None)."""
    if span_ is None:
        yield
        return
    from opentelemetry.trace import use_span

    with use_span(span_, end_on_exit=False):
        yield


def upstream_attributes(base_url: str, label: str, path: str,
                        body: Mapping[str, Any]) -> dict[str, Any]:
    """The request-side attributes of an upstream call's span (GenAI client inference)."""
    parts = urlsplit(base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(path, path.strip("/")),
        "gen_ai.provider.name": label,
        "gen_ai.request.model": body.get("model"),
        "gen_ai.request.max_tokens": body.get("max_tokens"),
        "server.address": parts.hostname,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }
    n = body.get("n")
    if isinstance(n, int) and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    return attributes


def upstream_name(path: str, body: Mapping[str, Any]) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, the convention's span name."""
    return f"{OPERATIONS.get(path, path.strip('/'))} {body.get('model')}"


def note_reply(span_: Span | None, body: Any) -> None:
    """Put a reply's model, id and usage on its span."""
    if span_ is None or not isinstance(body, Mapping):
        return
    if isinstance(body.get("model"), str):
        span_.set_attribute("gen_ai.response.model", body["model"])
    if isinstance(body.get("id"), str):
        span_.set_attribute("gen_ai.response.id", body["id"])
    note_usage(span_, body.get("usage"))


def note_usage(span_: Span | None, usage: Any) -> None:
    """``gen_ai.usage.input_tokens`` / ``output_tokens`` from OpenAI's ``usage`` object."""
    if span_ is None or not isinstance(usage, Mapping):
        return
    for key, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                           ("completion_tokens", "gen_ai.usage.output_tokens")):
        value = usage.get(key)
        if isinstance(value, int):
            span_.set_attribute(attribute, value)


_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def note_stream_chunk(span_: Span | None, chunk: bytes) -> None:
    """Read the usage of a streamed reply from the chunk that carries it (the last one)."""
    if span_ is None or b'"usage"' not in chunk:
        return
    for match in _USAGE.finditer(chunk):
        try:
            note_usage(span_, orjson.loads(match.group(1)))
        except orjson.JSONDecodeError:
            continue


def fail(span_: Span | None, error: BaseException) -> None:
    """Mark ``span_`` failed with ``error.type``: the gateway's error code, a search error's
    reason, or the exception's class."""
    if span_ is None:
        return
    from opentelemetry.trace import Status, StatusCode

    kind = getattr(error, "code", None) or getattr(error, "reason", None)
    span_.set_attribute("error.type", str(kind or type(error).__name__))
    span_.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def describe_request(root: Span, operation: str, call: Call | None, received: float,
                     status: int | None) -> None:
    """Name and describe a client request's root span once it is answered.

    Args:
        root: the request's SERVER span.
        operation: ``chat`` or ``text_completion``.
        call: the route's ``Call`` (None when the request was refused before it was planned).
        received: ``time.perf_counter()`` at arrival.
        status: the HTTP status sent (None when no response started).
    """
    if status is not None:
        root.set_attribute("http.response.status_code", status)
    if call is not None:
        routed = call.routed
        root.update_name(f"{operation} {routed.model}")
        attributes = {
            "gen_ai.request.model": routed.model,
            "gen_ai.response.model": call.upstream_model,
            "gen_ai.request.max_tokens": routed.max_tokens,
            "gen_ai.response.id": call.response_id,
            "gen_ai.usage.input_tokens": call.acct.prompt_tokens,
            "gen_ai.usage.output_tokens": call.acct.completion_tokens,
            "gen_ai.provider.name": call.backend.label,
            "ttc.decision_id": routed.decision_id,
            "ttc.strategy": call.strategy,
            "ttc.policy": call.plan.policy,
            "ttc.budget_tokens": call.plan.budget_tokens,
            "ttc.upstream_calls": call.acct.upstream_calls,
            "ttc.usage_estimated": call.acct.estimated,
            "ttc.overhead_ms": overhead_s(call, received) * 1000,
        }
        root.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if routed.n != 1:
            root.set_attribute("gen_ai.request.choice.count", routed.n)
        if call.stream_error is not None:
            fail(root, call.stream_error)
            return
    if status is not None and status >= 400:
        from opentelemetry.trace import Status, StatusCode

        root.set_attribute("error.type", str(status))
        root.set_status(Status(StatusCode.ERROR))


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # OpenTelemetry refuses None values with a warning: leave the attribute out instead.
    if attributes is None:
        return None
    return {k: v for k, v in attributes.items() if v is not None}
