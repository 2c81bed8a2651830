"""Every Prometheus object of the gateway, prefix ``ttc_``; served at ``GET /metrics``.

Names (labels):

- ``ttc_requests_total{strategy, policy, arm, model, status}``: client requests answered.
- ``ttc_tokens_total{kind, strategy, policy, arm, model}``: upstream tokens, ``kind`` is
  ``prompt`` or ``completion``, summed over every upstream call of a request; the usage of a
  forwarded call (``/v1/responses``, ``/v1/embeddings``, ...) has ``strategy``, ``policy``
  and ``arm`` ``none`` (``service.proxy_usage``).
- ``ttc_upstream_requests_total{backend, status}``: every attempt sent to a backend, retries
  and the tokenizer's calls included, each once; ``status`` is the HTTP status, ``error``
  when no status came back, ``cancelled`` when the gateway gave up on it before the backend
  sent its headers (the client left, or the shutdown deadline passed: not a backend
  failure), or ``stream_error`` when a 2xx reply failed after its headers (its body
  broke off or timed out, was not the JSON or SSE promised, or a stream sent an error event
  or ended before its answer): such an attempt, a forwarded call's included, is counted once
  its body is read, a stream once closed.
- ``ttc_upstream_retries_total{backend, reason}``: attempts repeated after a failure.
- ``ttc_upstream_retries_refused_total{backend, reason}``: retries not made although the call
  allowed one: ``retry_budget`` (the backend's retry budget, a share of its calls, was spent),
  ``request_retries`` (the request made ``max_request_retries``), ``token_budget`` (the
  request's ledger could not grant the retried call its tokens again).
- ``ttc_retry_budget_available{backend}``: retries the backend's retry budget allows now.
- ``ttc_request_prompt_tokens{strategy}``: histogram of the prompt tokens of one request,
  summed over its upstream calls: fan-out and search resend the prompt with every call.
- ``ttc_upstream_duration_seconds{backend}``: one upstream call, first byte sent to last read.
- ``ttc_request_duration_seconds{strategy}``: one client request, end to end.
- ``ttc_overhead_seconds``: time spent in the gateway itself, upstream waits excluded, from
  the request's arrival (also returned per request in the ``x-ttc-overhead-ms`` header).
- ``ttc_requests_in_flight``: client ``/v1/*`` requests this process is serving (the load
  metric the HorizontalPodAutoscaler in deploy/k8s scales on).
- ``ttc_time_to_first_token_seconds{strategy}``: for streams, from the request's arrival to
  the first event carrying generated text sent to the client; and
  ``ttc_inter_token_latency_seconds{strategy}``: the gaps between such events
  (``service.latency``).
- ``ttc_proxied_requests_total{endpoint, status}``: other ``/v1/*`` calls forwarded as they
  are, each counted once its reply ends, with what its client got: the backend's status, the
  error's (502, 504) when the reply failed (a JSON body cut off or not JSON is a 502 before
  any byte is sent; a stream that broke off after its headers counts as its error), or 499
  when the client left before the end (``service.proxy_usage``).
- ``ttc_rejected_total{reason}``: requests refused before any upstream call
  (``invalid``, ``auth``, ``rate_limit``: a key's requests or tokens per minute,
  ``rate_limit_streams``: a key holding ``key_max_concurrent_streams`` open streams already,
  ``budget``, ``overload``, ``body_timeout``: a body not all received within
  ``client_body_timeout_s``, and ``unknown_id``: a feedback on an id no request has, or only
  another key's). ``reason=~"rate_limit.*"`` counts every 429 of a key's limits.
- ``ttc_key_open_streams{key_name}``: streams each API key holds open on this replica
  (``service.key_streams``; capped at ``key_max_concurrent_streams``); 0 once they end.
- ``ttc_upstream_ignores_max_tokens{backend, model, source}``: 1 while the gateway takes a
  backend and model for one that generates past ``max_tokens``, so that its strategy calls
  are streamed and cut at their grants (``service.strategies.capped``), else 0; ``source`` is
  ``configured`` (the upstream's ``ignores_max_tokens``) or ``observed`` (a call overran, less
  than ``ignores_max_tokens_ttl_s`` ago). Set at each scrape from the registry, as the
  observed fact expires without an event.
- ``ttc_upstream_max_tokens_overruns_total{backend, model}``: calls that generated more
  completion tokens than their ``max_tokens`` granted (each one notes the backend as above).
- ``ttc_budget_cut_calls_total{backend, model}``: calls to such a backend closed at their
  grants (``capped.charge_cut``) before they finished by themselves.
- ``ttc_budget_tokens{strategy}``: histogram of the completion-token budgets allocated, one
  observation per request that had a budget.
- ``ttc_budget_utilization_ratio{strategy}``: histogram of spent / allocated completion tokens
  per request with a budget; above 1 means a backend overran what it was granted.
- ``ttc_vote_samples{policy}``: histogram of the samples drawn per ``parallel_vote`` request.
- ``ttc_vote_early_stops_total{policy}``: votes stopped before drawing every planned sample.
- ``ttc_classifier_duration_seconds``: one classifier reading of a prompt.
- ``ttc_feedback_total{strategy, policy, arm, outcome}``: feedback received, ``outcome`` is
  ``correct`` or ``incorrect`` (a score counts as correct from 0.5); counted once per request,
  at its first feedback.
- ``ttc_search_calls_total{backend}``: retrieval calls of the ``search`` strategy.
- ``ttc_experiment_assignments_total{experiment, arm}``: requests assigned to an A/B arm
  that ran (the report's ``requests``: one refused after its arm was drawn is not counted).
- ``ttc_experiment_tokens_total{experiment, arm}``: upstream completion tokens of an arm's
  requests, and ``ttc_experiment_feedback_total{experiment, arm, outcome}``: its feedback
  (once per request), so an experiment's arms are told apart from another's of the same name.
- ``ttc_key_tokens_total{key_name, kind}``: upstream tokens per API key (the operator's names).
- ``ttc_circuit_open{backend}``: 1 while a backend is taken out after repeated failures
  (``service.breaker``), else 0.
- ``ttc_upstream_failovers_total{backend}``: requests sent to another upstream because this
  backend's circuit was open.
- ``ttc_upstream_in_flight{backend}``: calls in flight to a backend (bounded by
  ``backend_max_concurrency``).
- ``ttc_log_records_total{result}``: request log records, ``written`` (committed), ``dropped``
  (the queue was full) or ``failed`` (the database refused them after retries).
- ``ttc_log_queue_records``: records waiting for the request log's writer.
- ``ttc_policy_budget_tokens{policy, kind}`` and ``ttc_policy_feedback{policy, kind}``: the
  learned policy's budget curriculum per kind of prompt (its mean budget in tokens, and the
  feedback it has learned from), set at each scrape by ``service.routing``;
  ``ttc_policy_target_tokens{policy}``, ``ttc_policy_exploration_share{policy}``,
  ``ttc_policy_explored_ratio{policy}``, ``ttc_policy_repeated_feedback{policy}`` and
  ``ttc_policy_strategy{policy, kind, strategy}``.

``service.observe.Reporter`` records the request, token, duration, budget, vote and key metrics
from each ``Outcome``; ``service.routes.feedback`` records feedback; the upstream client, the
classifier, the search strategy and the experiment assignment record their own.

Label values come from configuration (model ids, backend labels, strategy names) or from fixed
sets, never from free request text, so every label set stays bounded.

OpenTelemetry GenAI mapping: ``ttc_tokens_total`` is the counter form of the histogram
``gen_ai.client.token.usage`` (``kind`` = ``gen_ai.token.type`` with values ``input``/
``output`` named ``prompt``/``completion`` as in OpenAI's ``usage``; ``model`` =
``gen_ai.request.model``); ``ttc_upstream_duration_seconds`` corresponds to
``gen_ai.client.operation.duration``; ``ttc_time_to_first_token_seconds`` and
``ttc_inter_token_latency_seconds`` to ``gen_ai.server.time_to_first_token`` and
``gen_ai.server.time_per_output_token``, measured where the gateway serves the client.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets (seconds) from sub-millisecond gateway work to minute-long CPU generations.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

NO_LABEL = "none"  # the value of ``policy`` / ``arm`` when a request has none

REQUESTS = Counter(
    "ttc_requests", "Client requests answered by the gateway.",
    ["strategy", "policy", "arm", "model", "status"])
TOKENS = Counter(
    "ttc_tokens", "Upstream tokens spent, by kind (prompt, completion).",
    ["kind", "strategy", "policy", "arm", "model"])
UPSTREAM_REQUESTS = Counter(
    "ttc_upstream_requests", "Attempts sent to a backend, retries included.",
    ["backend", "status"])
UPSTREAM_RETRIES = Counter(
    "ttc_upstream_retries", "Upstream attempts repeated after a failure.", ["backend", "reason"])
RETRIES_REFUSED = Counter(
    "ttc_upstream_retries_refused", "Retries not made: the backend's retry budget, the "
    "request's retry count or its token budget refused them.", ["backend", "reason"])
RETRY_BUDGET_AVAILABLE = Gauge(
    "ttc_retry_budget_available", "Retries a backend's retry budget allows now.", ["backend"])
UPSTREAM_DURATION = Histogram(
    "ttc_upstream_duration_seconds", "Duration of one upstream call.", ["backend"],
    buckets=_LATENCY_BUCKETS)
REQUEST_DURATION = Histogram(
    "ttc_request_duration_seconds", "Duration of one client request.", ["strategy"],
    buckets=_LATENCY_BUCKETS)
OVERHEAD = Histogram(
    "ttc_overhead_seconds", "Time spent in the gateway itself, upstream waits excluded.",
    buckets=_OVERHEAD_BUCKETS)
REQUESTS_IN_FLIGHT = Gauge(
    "ttc_requests_in_flight", "Client /v1/* requests this process is serving.")
# Streaming latencies: first tokens from tens of milliseconds (a cached answer) to a minute (a
# long vote on CPU); token gaps from a fast GPU's millisecond to a slow CPU's second.
TIME_TO_FIRST_TOKEN = Histogram(
    "ttc_time_to_first_token_seconds", "Streams: request arrival to the first generated text "
    "sent to the client.", ["strategy"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80))
INTER_TOKEN_LATENCY = Histogram(
    "ttc_inter_token_latency_seconds", "Streams: gap between consecutive events carrying "
    "generated text sent to the client.", ["strategy"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5))
PROXIED = Counter(
    "ttc_proxied_requests", "Other /v1/* calls forwarded to a backend as they are.",
    ["endpoint", "status"])
REJECTED = Counter(
    "ttc_rejected", "Requests refused before any upstream call.", ["reason"])

# Budgets (tokens) from a one-line answer to a long chain; ratios around the 1.0 that matters.
_BUDGET_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0)
_SAMPLE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64)

BUDGET_TOKENS = Histogram(
    "ttc_budget_tokens", "Completion-token budget allocated to one request.", ["strategy"],
    buckets=_BUDGET_BUCKETS)
_PROMPT_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
REQUEST_PROMPT_TOKENS = Histogram(
    "ttc_request_prompt_tokens", "Prompt tokens of one request, summed over its upstream "
    "calls (fan-out and search resend the prompt).", ["strategy"], buckets=_PROMPT_BUCKETS)
BUDGET_UTILIZATION = Histogram(
    "ttc_budget_utilization_ratio", "Completion tokens spent / allocated, per request.",
    ["strategy"], buckets=_RATIO_BUCKETS)
VOTE_SAMPLES = Histogram(
    "ttc_vote_samples", "Samples drawn by one parallel_vote request.", ["policy"],
    buckets=_SAMPLE_BUCKETS)
VOTE_EARLY_STOPS = Counter(
    "ttc_vote_early_stops", "Votes stopped before drawing every planned sample.", ["policy"])
CLASSIFIER_DURATION = Histogram(
    "ttc_classifier_duration_seconds", "Duration of one classifier reading of a prompt.",
    buckets=_OVERHEAD_BUCKETS)
FEEDBACK = Counter(
    "ttc_feedback", "Feedback received, once per request, by outcome (correct, incorrect).",
    ["strategy", "policy", "arm", "outcome"])
SEARCH_CALLS = Counter(
    "ttc_search_calls", "Retrieval calls made by the search strategy.", ["backend"])
EXPERIMENT_ASSIGNMENTS = Counter(
    "ttc_experiment_assignments", "Requests assigned to an A/B experiment arm.",
    ["experiment", "arm"])
EXPERIMENT_TOKENS = Counter(
    "ttc_experiment_tokens", "Upstream completion tokens of an A/B arm's requests.",
    ["experiment", "arm"])
EXPERIMENT_FEEDBACK = Counter(
    "ttc_experiment_feedback", "Feedback on an A/B arm's requests, once per request, by "
    "outcome (correct, incorrect).", ["experiment", "arm", "outcome"])
KEY_TOKENS = Counter(
    "ttc_key_tokens", "Upstream tokens spent per API key, by kind (prompt, completion).",
    ["key_name", "kind"])
KEY_OPEN_STREAMS = Gauge(
    "ttc_key_open_streams", "Streams an API key holds open on this replica.", ["key_name"])
IGNORES_MAX_TOKENS = Gauge(
    "ttc_upstream_ignores_max_tokens", "1 while a backend and model are taken to generate past "
    "max_tokens (their calls are streamed and cut at their grants), by source (configured, "
    "observed); set at each scrape.", ["backend", "model", "source"])
MAX_TOKENS_OVERRUNS = Counter(
    "ttc_upstream_max_tokens_overruns", "Upstream calls that generated more completion tokens "
    "than their max_tokens granted.", ["backend", "model"])
BUDGET_CUT_CALLS = Counter(
    "ttc_budget_cut_calls", "Upstream calls to a backend that ignores max_tokens closed at "
    "their grants.", ["backend", "model"])
CIRCUIT_OPEN = Gauge(
    "ttc_circuit_open", "1 while a backend is taken out after repeated failures.", ["backend"])
UPSTREAM_FAILOVERS = Counter(
    "ttc_upstream_failovers", "Requests sent to another upstream because this backend's "
    "circuit was open.", ["backend"])
UPSTREAM_IN_FLIGHT = Gauge(
    "ttc_upstream_in_flight", "Calls in flight to a backend.", ["backend"])
LOG_RECORDS = Counter(
    "ttc_log_records", "Request log records by result (written, dropped, failed).", ["result"])
LOG_QUEUE = Gauge(
    "ttc_log_queue_records", "Records waiting for the request log's writer.")
POLICY_BUDGET = Gauge(
    "ttc_policy_budget_tokens", "The learned policy's current mean budget per kind of prompt "
    "(tokens; its budget curriculum), set at each scrape.", ["policy", "kind"])
POLICY_FEEDBACK = Gauge(
    "ttc_policy_feedback", "Feedback the learned policy has learned from, per kind of prompt.",
    ["policy", "kind"])
POLICY_TARGET_TOKENS = Gauge(
    "ttc_policy_target_tokens", "The mean budget per request (completion tokens) the learned "
    "policy sizes its plans to (setting learned_target_tokens).", ["policy"])
POLICY_EXPLORATION_SHARE = Gauge(
    "ttc_policy_exploration_share", "The most share of decisions the learned policy may spend "
    "exploring (setting learned_exploration).", ["policy"])
POLICY_EXPLORED_RATIO = Gauge(
    "ttc_policy_explored_ratio", "The share of the learned policy's decisions so far that "
    "explored another strategy (never above ttc_policy_exploration_share).", ["policy"])
POLICY_REPEATS = Gauge(
    "ttc_policy_repeated_feedback", "Feedback the learned policy left out because its prompt "
    "already had an outcome of the same strategy on its kind (each prompt is one unit of "
    "evidence).", ["policy"])
POLICY_STRATEGY = Gauge(
    "ttc_policy_strategy", "1 for the strategy the learned policy currently gives each kind of "
    "prompt (the prior until feedback shows another better with confidence), else 0.",
    ["policy", "kind", "strategy"])


@lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: ``labels()`` takes a lock and builds a key on every
    call, a measurable cost on the request path. Label sets are bounded, and so is the cache."""
    return metric.labels(*labels)


def record_tokens(strategy: str, policy: str, arm: str, model: str,
                  prompt_tokens: int, completion_tokens: int) -> None:
    """Add one request's upstream tokens to ``ttc_tokens_total``."""
    if prompt_tokens:
        child(TOKENS, "prompt", strategy, policy, arm, model).inc(prompt_tokens)
    if completion_tokens:
        child(TOKENS, "completion", strategy, policy, arm, model).inc(completion_tokens)
