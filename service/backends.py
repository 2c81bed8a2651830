"""Which backend serves which model: the registry of configured upstreams.

Model ids come from each upstream's ``models`` setting or, when that is empty, from its
``GET /models`` (read at start-up, and again at most every ``REDISCOVER_S`` seconds when a
request names a model nobody is known to serve). ``auto`` resolves to the default model: the
``default_model`` setting, else the first model of the first upstream.

A model served by several upstreams goes to the first whose circuit breaker lets traffic
through (``service.breaker``): a backend taken out after repeated failures is skipped, counted
in ``ttc_upstream_failovers_total{backend}``, until its cool-down is over.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from service import metrics
from service.errors import GatewayError, NotFound, Overloaded, UpstreamUnavailable
from service.settings import UpstreamSettings
from service.upstream import Backend, UpstreamClient

log = logging.getLogger(__name__)

AUTO_MODEL = "auto"
REDISCOVER_S = 5.0


class BackendRegistry:
    """Maps model ids to backends and remembers which backends honour ``n``, which
    generate past ``max_tokens`` and which take only their default temperature.

    What it learns is this process's own: each replica learns it from its own calls, with no
    state shared between replicas.

    Args:
        upstreams: the configured upstreams, in order of preference.
        default_model: the model ``auto`` means, or None for the first one known.
        ignores_max_tokens_ttl_s: seconds a backend and model seen generating past
            ``max_tokens`` are remembered as doing it (``ignores_max_tokens``).
    """

    def __init__(self, upstreams: list[UpstreamSettings], default_model: str | None = None,
                 ignores_max_tokens_ttl_s: float = 3600.0):
        self._configured = upstreams
        self._default_model = default_model
        self._backends = [
            Backend(u.label, u.url, u.api_key.get_secret_value() if u.api_key else None,
                    tuple(u.models), prefill=u.prefill, reasoning_effort=u.reasoning_effort,
                    temperature=u.temperature, budget_tokens=u.budget_tokens,
                    vote_first_wave=u.vote_first_wave, vote_stop_threshold=u.vote_stop_threshold)
            for u in upstreams
        ]
        self._supports_n: dict[str, bool | None] = {u.label: u.supports_n for u in upstreams}
        self._last_discovery = 0.0
        self._warned_default = False
        self._ignores_configured = {u.label for u in upstreams if u.ignores_max_tokens}
        # (backend label, model) -> monotonic time until which it is taken to ignore its cap
        self._ignores_until: dict[tuple[str, str], float] = {}
        # Those whose time is over and whose one checking call has not reported yet
        self._checking: set[tuple[str, str]] = set()
        self._ignores_ttl_s = ignores_max_tokens_ttl_s
        # Every (backend label, model) ever noted: exported at 0 once its fact expired
        self._noted: set[tuple[str, str]] = set()

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    async def discover(self, client: UpstreamClient, *, retries: int = 0) -> None:
        """Read ``GET /models`` of every upstream configured without a model list.

        A backend that cannot be reached keeps an empty list and is retried later; the error
        is logged, not raised.
        """
        self._last_discovery = time.monotonic()
        for i, (settings, backend) in enumerate(zip(self._configured, self._backends,
                                                    strict=True)):
            if settings.models:
                continue
            try:
                listing = await client.get_json(backend, "/models", retries=retries)
                ids = tuple(str(m["id"]) for m in listing.get("data", []) if "id" in m)
            except (GatewayError, AttributeError, KeyError, TypeError) as exc:
                # The usual cause of a 404 here is a base URL without its /v1; other servers
                # (Gemini's .../v1beta/openai) are not refused for it, so it is only said.
                hint = (f" ({settings.url} does not end in /v1: is it the API's base URL?)"
                        if getattr(exc, "status", None) == 404
                        and not settings.url.endswith("/v1") else "")
                log.warning("could not list the models of backend %s: %s%s", backend.label,
                            exc, hint)
                continue
            # the entry as it is now: what was learnt while the listing was read is kept
            self._backends[i] = dataclasses.replace(self._backends[i], models=ids)
        served = self.model_ids()
        if (self._default_model and served and self._default_model not in served
                and not self._warned_default):
            # Said once, at start-up in practice: every "auto" request fails until it is fixed.
            self._warned_default = True
            log.warning("default_model %r is served by no backend (they serve: %s): requests "
                        "for model auto fail with 404", self._default_model, ", ".join(served))

    def model_ids(self) -> list[str]:
        """Every model id served, in configuration order, without duplicates."""
        seen: dict[str, None] = {}
        for backend in self._backends:
            for model in backend.models:
                seen.setdefault(model, None)
        return list(seen)

    def default_model(self) -> str | None:
        if self._default_model:
            return self._default_model
        ids = self.model_ids()
        return ids[0] if ids else None

    async def resolve(self, model: str, client: UpstreamClient) -> tuple[Backend, str]:
        """The backend for ``model`` and the model id to send it (``auto`` resolved).

        Raises:
            NotFound: no configured backend serves ``model`` (404; for ``auto``, the message
                names ``default_model``, which no backend serves).
            UpstreamUnavailable: no backend's models are known, none is reachable (503).
            Overloaded: every backend serving ``model`` is cooling down after failures (503
                with ``Retry-After``).
        """
        found = self._lookup(model)
        if found is None and time.monotonic() - self._last_discovery > REDISCOVER_S:
            await self.discover(client)
            found = self._lookup(model)
        if found is not None:
            return self._healthy(found, client)
        served = self.model_ids()
        if not served:
            raise UpstreamUnavailable("no backend is available: none could list its models",
                                      code="no_backend")
        if model == AUTO_MODEL:
            # "auto" is listed by GET /v1/models whatever it resolves to, so the usual message
            # would send the client to a listing that shows it.
            raise NotFound(f"model 'auto' resolves to default_model {self.default_model()!r}, "
                           f"which no backend serves (they serve: {', '.join(served)})",
                           param="model", code="model_not_found")
        raise NotFound(f"the model {model!r} does not exist; GET /v1/models lists the models",
                       param="model", code="model_not_found")

    def _lookup(self, model: str) -> tuple[list[Backend], str] | None:
        """Every backend serving ``model`` (``auto`` resolved), in order of preference."""
        if model == AUTO_MODEL:
            target = self.default_model()
            if target is None:
                return None
            model = target
        serving = [backend for backend in self._backends if model in backend.models]
        return (serving, model) if serving else None

    @staticmethod
    def _healthy(found: tuple[list[Backend], str],
                 client: UpstreamClient) -> tuple[Backend, str]:
        """The first backend whose circuit lets traffic through; the ones skipped on the way
        are counted as failovers."""
        serving, model = found
        for i, backend in enumerate(serving):
            if client.breaker(backend).allows():
                for skipped in serving[:i]:
                    metrics.child(metrics.UPSTREAM_FAILOVERS, skipped.label).inc()
                return backend, model
        wait_s = min(client.breaker(backend).retry_after_s() for backend in serving)
        names = ", ".join(backend.label for backend in serving)
        raise Overloaded(f"every backend serving {model!r} ({names}) failed repeatedly and is "
                         f"cooling down; retry in {max(1, round(wait_s))}s",
                         retry_after_s=wait_s, code="backends_cooling_down")

    def supports_n(self, backend: Backend) -> bool | None:
        """True/False when known; None until a reply shows it."""
        return self._supports_n.get(backend.label)

    def note_n_support(self, backend: Backend, supported: bool) -> None:
        if self._supports_n.get(backend.label) is None:
            log.info("backend %s %s n", backend.label, "honours" if supported else "ignores")
        self._supports_n[backend.label] = supported

    def note_default_temperature_only(self, backend: Backend, refusal: str) -> Backend:
        """Remember that ``backend`` refused a temperature the gateway chose (``refusal``, its
        message): from now on it is served as if configured ``temperature: false``, so no
        call of the gateway's own carries one. Returns the backend as now known; logged once.
        """
        for i, known in enumerate(self._backends):
            if known.label == backend.label:
                if known.temperature:
                    log.info("backend %s takes only its default temperature (%s): the gateway "
                             "sends it none of its own (as configured temperature: false)",
                             backend.label, refusal)
                    self._backends[i] = dataclasses.replace(known, temperature=False)
                return self._backends[i]
        return dataclasses.replace(backend, temperature=False)

    def ignores_max_tokens(self, backend: Backend, model: str) -> bool:
        """Whether ``backend`` generates past ``max_tokens`` for ``model``: configured so
        (``ignores_max_tokens``), or seen doing it (``note_ignores_max_tokens``) less than
        ``ignores_max_tokens_ttl_s`` ago. Once that time is over, the next call (this one:
        False) checks it again, sent as to any backend, while the calls sent before it
        reports stay cut: a backend fixed since (a new version, a proxy that now passes the
        cap on) keeps to its cap and gets its usual calls back
        (``note_honours_max_tokens``), one that is not overruns that one call and is noted
        again. A check that never reports (it failed) is repeated after the same time."""
        if backend.label in self._ignores_configured:
            return True
        key = (backend.label, model)
        until = self._ignores_until.get(key)
        if until is None:
            return False
        now = time.monotonic()
        if now < until:
            return True
        # Forgotten at once, every call sent before the check came back would overrun too
        # (a vote's wave, n fanned out, concurrent requests): only this one may.
        self._ignores_until[key] = now + self._ignores_ttl_s
        self._checking.add(key)
        log.info("backend %s (model %s): checking again whether it honours max_tokens",
                 backend.label, model)
        return False

    def note_honours_max_tokens(self, backend: Backend, model: str) -> None:
        """A call to ``backend`` for ``model`` sent as usual (not cut) kept to its
        ``max_tokens``: while it is being checked again (``ignores_max_tokens``), the fact
        is forgotten."""
        key = (backend.label, model)
        if key in self._checking:
            self._checking.discard(key)
            self._ignores_until.pop(key, None)
            log.info("backend %s (model %s) honours max_tokens again: its calls are sent "
                     "as usual", backend.label, model)

    def note_ignores_max_tokens(self, backend: Backend, model: str) -> None:
        """Remember that ``backend`` generated past a call's ``max_tokens`` for ``model``
        (counted in ``ttc_upstream_max_tokens_overruns_total``)."""
        key = (backend.label, model)
        metrics.child(metrics.MAX_TOKENS_OVERRUNS, backend.label, model).inc()
        self._noted.add(key)
        if ((key not in self._ignores_until or key in self._checking)
                and backend.label not in self._ignores_configured):
            log.warning("backend %s (model %s) generated more tokens than max_tokens granted: "
                        "for %.0f s its strategy calls are streamed and cut at their grants",
                        backend.label, model, self._ignores_ttl_s)
        self._checking.discard(key)
        self._ignores_until[key] = time.monotonic() + self._ignores_ttl_s

    def export_ignores_max_tokens(self) -> None:
        """Set ``ttc_upstream_ignores_max_tokens{backend, model, source}`` from what this
        registry holds now (called when Prometheus scrapes): 1 for every model of an upstream
        configured with ``ignores_max_tokens``, and for each backend and model seen overrunning
        whose fact has not expired, 0 for those whose fact expired or was forgotten. Read
        without ``ignores_max_tokens``' side effect: a scrape never starts a check. Set here
        rather than on events, since the fact expires with no call to tell it."""
        now = time.monotonic()
        gauge = metrics.IGNORES_MAX_TOKENS
        gauge.clear()  # only what this registry knows: no series of an earlier one in process
        for backend in self._backends:
            if backend.label in self._ignores_configured:
                for model in backend.models:
                    gauge.labels(backend.label, model, "configured").set(1)
        for label, model in self._noted:
            if label not in self._ignores_configured:
                ignoring = self._ignores_until.get((label, model), 0.0) > now
                gauge.labels(label, model, "observed").set(float(ignoring))
