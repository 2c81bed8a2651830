"""Gateway settings: one ``Settings`` class, built once at the entry point and passed down.

Precedence, highest first: command-line flags, ``TTC_*`` environment variables, the YAML
config file (``--config FILE`` or ``TTC_CONFIG``). Everything is validated at start-up;
``load_settings`` turns a pydantic ``ValidationError`` into ``SettingsError`` whose message
names each bad setting by its path (``upstreams.0.url``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

DEFAULT_DATA_DIR = Path("~/.local/share/ttc-router")

log = logging.getLogger(__name__)

# TTC_* variables that are read but are no setting: the config file, the upstream list, and
# those of the benchmarks, the image build and the tests.
OTHER_VARIABLES = frozenset({"TTC_CONFIG", "TTC_UPSTREAM_URL", "TTC_BENCH_DATA",
                             "TTC_CACHE_DIR", "TTC_TEST_DATA_DIR", "TTC_BASE_IMAGE",
                             "TTC_IMAGE", "TTC_GATEWAY_PORT"})
# The service links Kubernetes sets in every pod for each Service (ttc-router ->
# TTC_ROUTER_SERVICE_HOST, TTC_ROUTER_PORT_8000_TCP_ADDR, ...): not a setting, not a typo.
_SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)"
    r"(_(PROTO|PORT|ADDR))?)?)")


class SettingsError(ValueError):
    """Raised when the settings cannot be loaded; the message names the bad settings."""


class UpstreamSettings(BaseModel):
    """One OpenAI-compatible backend (vLLM, llama.cpp, Ollama, OpenAI, ...).

    ``url`` is the base URL ending in ``/v1``. ``models`` lists the model ids it serves; when
    empty they are read from its ``GET /models`` at start-up. ``supports_n``: whether the
    backend honours ``n`` (None: detected from the first reply that returns fewer choices).
    ``prefill``: it continues a final assistant message (vLLM's ``continue_final_message``).
    ``reasoning_effort``: it accepts OpenAI's ``reasoning_effort``. ``temperature``: it
    accepts a temperature other than its default (false for OpenAI's reasoning models, which
    answer any other with a 400): when false the gateway sends no temperature of its own
    (greedy chains, greedy-first votes and the votes' 0.7), and a client's own is sent as
    given; when true, a refusal of the gateway's own sets it false for this process
    (``BackendRegistry.note_default_temperature_only``), false sparing that refused call.
    ``budget_tokens``: the
    default budget (tokens) of requests it serves that name none. ``tools``: it accepts
    OpenAI tool calls, so the ``search`` strategy offers search as a tool instead of its
    plain-text protocol. ``ignores_max_tokens``: it is known to generate past ``max_tokens``,
    so the strategies stream their calls to it and close each at its grant from the first
    request (without it, the gateway learns it from the first call that overruns:
    ``service.strategies.capped``). ``vote_first_wave`` and ``vote_stop_threshold``: the
    early-stopping rule of votes run against it (samples in the first wave, Beta threshold),
    when its model's own outcomes call for another than the gateway-wide ``vote_first_wave``
    and ``vote_stop_threshold`` (None: those; the embedded model sets its own,
    ``LocalModel.vote_stopping``).
    """

    model_config = ConfigDict(extra="forbid")

    url: str
    name: str | None = None
    models: list[str] = Field(default_factory=list)
    api_key: SecretStr | None = None
    supports_n: bool | None = None
    prefill: bool = False
    reasoning_effort: bool = False
    temperature: bool = True
    budget_tokens: int | None = Field(default=None, ge=1)
    # It accepts OpenAI's tools / tool_calls: the search strategy offers search as a tool.
    tools: bool = False
    # It generates past max_tokens: strategy calls to it are streamed and cut at their grant.
    ignores_max_tokens: bool = False
    vote_first_wave: int | None = Field(default=None, ge=1)
    vote_stop_threshold: float | None = Field(default=None, gt=0, le=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s):// base URL ending in /v1, got {value!r}")
        return value

    @property
    def label(self) -> str:
        """The name used in metrics and logs: the configured name, else host:port."""
        if self.name:
            return self.name
        return self.url.split("://", 1)[1].split("/", 1)[0]


class ArmSettings(BaseModel):
    """One arm of an A/B experiment: its policy (a name from ``policies``, ``rules``,
    ``learned``, or a spec such as ``fixed:sequential@512``) and its weight (any positive
    scale; the arms' weights are normalised to shares)."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)


class ExperimentSettings(BaseModel):
    """One A/B experiment (``service.experiments``): named arms, and optional adaptive
    allocation by Thompson sampling.

    ``adaptive``: once every arm has ``min_feedback`` requests with feedback, shares follow
    the posterior probability that each arm is best on ``objective`` (``accuracy``, or
    ``accuracy_minus_tokens``: accuracy - ``lambda_per_1k_tokens`` x mean completion tokens /
    1000), never below ``floor`` per arm. ``planned_feedback``: the feedback per arm at which
    the repeated-look stopping rule is tightest.
    """

    model_config = ConfigDict(extra="forbid")

    arms: dict[str, ArmSettings] = Field(min_length=1)
    adaptive: bool = False
    objective: Literal["accuracy", "accuracy_minus_tokens"] = "accuracy"
    lambda_per_1k_tokens: float = Field(0.0, ge=0)
    min_feedback: int = Field(100, ge=1)
    floor: float = Field(0.05, ge=0, lt=1)
    planned_feedback: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _floor_fits(self) -> ExperimentSettings:
        if self.floor * len(self.arms) > 1:
            raise ValueError(f"floor {self.floor} x {len(self.arms)} arms is more than 1")
        return self


def _with_scheme(value: SecretStr | None, schemes: tuple[str, ...]) -> SecretStr | None:
    """``value`` when it is None or starts with one of ``schemes``; the error names the
    schemes, never the secret.

    Raises:
        ValueError: another scheme.
    """
    if value is not None and not value.get_secret_value().startswith(schemes):
        raise ValueError(f"must start with {', '.join(schemes[:-1])} or {schemes[-1]}")
    return value


class Settings(BaseSettings):
    """Every setting of ``ttc-router serve``.

    Times are seconds, sizes bytes. A ``TTC_*`` variable set to ``null`` unsets its setting
    (None), as ``null`` does in the file. Raises ``pydantic.ValidationError`` on bad values
    (use ``load_settings`` for a readable ``SettingsError``).
    """

    # env_parse_none_str: a Deployment's env is often the only way to set anything, and
    # settings such as default_policy and chain_temperature are turned off by None.
    model_config = SettingsConfigDict(env_prefix="TTC_", extra="forbid", yaml_file=None,
                                      env_parse_none_str="null")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    default_model: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.25, ge=0)
    # Retries of all the upstream calls of one client request together (a vote of 8 with
    # max_retries 2 could otherwise send 24 calls to a failing backend).
    max_request_retries: int = Field(4, ge=0, le=100)
    # The retry budget per backend (service/retry_budget.py, after Finagle's): retries are at
    # most this share of the calls over the window, plus a floor per second.
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)
    retry_budget_min_per_s: float = Field(10.0, ge=0)
    retry_budget_window_s: float = Field(10.0, ge=1, le=600)
    max_connections: int = Field(512, ge=1)
    fanout_concurrency: int = Field(8, ge=1, le=256)

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Browser origins allowed to call the gateway directly (CORS: a web app's page on another
    # origin), such as https://app.example.com, or "*" for any; a list in the file,
    # comma-separated in TTC_CORS_ALLOW_ORIGINS. Empty (the default): no CORS headers, and
    # browsers keep other origins' pages out, as before.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Strategies (see README, "Strategies and budgets").
    default_strategy: Literal["direct", "parallel_vote", "sequential"] = "direct"
    # Policies (service/routing.py): named specs (fixed:<strategy>@<tokens>, rules[:file],
    # learned[:file]), the policy per backend model, and the one `model: auto` uses (None:
    # `default_strategy` instead).
    policies: dict[str, str] = Field(default_factory=dict)
    model_policies: dict[str, str] = Field(default_factory=dict)
    default_policy: str | None = "learned"
    # The learned policy (router_models/policies/learned.py): the mean budget per request it
    # sizes plans to (completion tokens), and the most share of decisions that may explore
    # another plausible strategy (ttc_policy_target_tokens, ttc_policy_exploration_share).
    # 512: a modest mean, so votes stay at three samples until the operator pays for more;
    # spend beyond what pays is what lost `auto` its margin on the randomized worlds
    # (bench/policy_sim.py, tune seeds 30-69: 21/26 literature worlds met target 1 at 512,
    # 13/26 at 1024).
    learned_target_tokens: float = Field(512.0, gt=0)
    learned_exploration: float = Field(0.05, ge=0, lt=1)
    # A kind of prompt whose votes can gain less than this share of accuracy over one answer
    # gets one answer instead (the share of votes whose first sample did not state the
    # elected answer bounds that gain: router_models/vote_agreement.py); 0 keeps every vote.
    learned_vote_gain_floor: float = Field(0.05, ge=0, le=1)
    # Completion tokens a complete answer is assumed to take (p90) for a kind of prompt and
    # model until usage has shown it (router_models/answer_lengths.py): a vote's samples get
    # 1.25x that, so none is cut before its answer.
    default_answer_tokens: int = Field(256, ge=1)
    # The temperature of the one chain `auto` plans (direct, sequential, search) when the
    # client sets neither temperature nor top_p; None keeps the backend's default. 0 (greedy):
    # on the outcome bank a greedy chain is right on 33.3% of 498 items against 28.1% for a
    # sampled one (temperature 0.7) at about the same tokens (service/routing.py,
    # greedy_chain; python -m bench.bank_findings, section e).
    chain_temperature: float | None = Field(0.0, ge=0, le=2)
    # A/B experiments (service/experiments.py): name -> arms; a request joins one by
    # `router.experiment` / `x-ttc-experiment`, or the `default_experiment`.
    experiments: dict[str, ExperimentSettings] = Field(default_factory=dict)
    default_experiment: str | None = None
    # How often (s) adaptive allocation re-reads the request log (other replicas' feedback).
    experiment_refresh_s: float = Field(10.0, gt=0)
    default_budget_tokens: int = Field(1024, ge=1)
    model_budget_tokens: dict[str, int] = Field(default_factory=dict)
    vote_width: int = Field(8, ge=1, le=64)
    vote_min_depth_tokens: int = Field(64, ge=1)
    # Early stopping: 3 unanimous samples settle a vote at threshold 0.9 (Beta(4, 1) gives
    # 0.9375); the paper's 0.95 needs 4. Measured in bench/early_stopping.py (simulation).
    vote_first_wave: int = Field(3, ge=1)
    vote_wave: int = Field(1, ge=1)
    # When the first wave would draw the whole vote, draw a strict majority of it first: if
    # those agree, the rest cannot change the answer (a vote of 3 settled by 2 agreeing
    # samples spends two thirds), at the latency of one more wave when they disagree.
    vote_majority_first: bool = True
    # A vote whose sampling the gateway chooses (the client set neither temperature nor top_p)
    # draws its first sample greedily (temperature 0) and the rest sampled; ties go to the
    # first answer seen, so to the greedy one (parallel_vote.py, "greedy first").
    vote_greedy_first: bool = True
    vote_stop_threshold: float = Field(0.9, gt=0, le=1)
    answer_reserve_tokens: int = Field(64, ge=0)
    # How long (s) a backend seen generating past max_tokens has its strategy calls streamed
    # and cut at their grants (service/strategies/capped.py) before one call is sent as
    # usual again, to see whether it still does: one overrun at most per backend, model and
    # replica in this time.
    ignores_max_tokens_ttl_s: float = Field(3600.0, gt=0)
    keepalive_s: float = Field(10.0, gt=0)

    # The search strategy (README, "Search"): where it searches, how often, how much it reads.
    # local: the tantivy index under data_dir (ttc-router index add); searxng: a SearxNG base
    # URL; elasticsearch: an Elasticsearch/OpenSearch base URL and index.
    search_backend: Literal["local", "searxng", "elasticsearch"] = "local"
    search_url: str | None = None
    search_index: str = "documents"
    search_api_key: SecretStr | None = None
    search_timeout_s: float = Field(5.0, gt=0)
    search_max_calls: int = Field(3, ge=0, le=32)
    # The first search uses the user's question as its query, before the first model call
    # (no model tokens; works with a model that never asks); it counts as one of the calls.
    search_question_first: bool = True
    search_top_k: int = Field(3, ge=1, le=20)
    search_result_chars: int = Field(1200, ge=100)  # per hit, in the context
    log_level: str = "info"

    # The request log: SQLite at data_dir/requests.db unless database_url names PostgreSQL
    # (postgresql://...) or another SQLite file (sqlite:///PATH).
    database_url: SecretStr | None = None
    log_text: bool = False  # keep prompt and answer text in the request log
    log_queue_size: int = Field(10_000, ge=1)  # records waiting for the writer; more are dropped
    # Answer a request only once its record is committed (a replica killed with SIGKILL loses
    # no decision a client has seen); None: on when database_url is PostgreSQL.
    log_durable: bool | None = None
    # Learning from feedback (service/learning.py): how often each replica reads new feedback
    # from the shared log (seconds), and every how many feedback events the learned policies'
    # state is checkpointed into the database (and saved under data_dir/models).
    learn_interval_s: float = Field(1.0, gt=0)
    learn_checkpoint_every: int = Field(100, ge=1)
    # When set, GET /metrics needs `Authorization: Bearer <metrics_token>` (or an admin key).
    metrics_token: SecretStr | None = None
    # OpenTelemetry traces (service/tracing.py), off by default: one span per stage of each
    # request, sent over OTLP/HTTP to otel_endpoint (a base URL; unset: the SDK's
    # OTEL_EXPORTER_OTLP_* variables, else http://localhost:4318), a share of the traces kept.
    otel_enabled: bool = False
    otel_endpoint: str | None = None
    otel_service_name: str = "ttc-router"
    otel_sample_ratio: float = Field(1.0, ge=0, le=1)

    # API keys (``ttc-router keys``) and their limits; see service/keys.py, service/limits.py.
    require_keys: bool = False  # refuse /v1/* without a key even before any key exists
    protect_metrics: bool = False  # GET /metrics needs an admin key (or the metrics_token)
    keys_refresh_s: float = Field(1.0, gt=0)  # how stale the gateway's view of the keys may be
    # Per-key counters shared by replicas (redis://...); without it they live in this process.
    redis_url: SecretStr | None = None
    # Streams one key may hold open at once on each replica (service/key_streams.py); past it
    # a 429 with Retry-After. None: unlimited. 64: a quarter of backend_max_concurrency, so
    # one key's streams cannot hold every slot of a backend.
    key_max_concurrent_streams: int | None = Field(64, ge=1)
    # Operator caps per request: past them a 400, never an unbounded amount of work.
    max_n: int = Field(16, ge=1)
    max_budget_tokens: int = Field(32_768, ge=1)
    max_samples: int = Field(64, ge=1)  # upstream samples of one request (n x vote width)
    # Per backend: calls in flight, calls waiting for a slot, and the wait (seconds); past
    # them a 503 with Retry-After.
    backend_max_concurrency: int = Field(256, ge=1)
    backend_max_waiting: int = Field(1024, ge=0)
    backend_queue_timeout_s: float = Field(10.0, gt=0)
    # Circuit breaker: consecutive failures that take a backend out, and for how long (s).
    breaker_failures: int = Field(5, ge=1)
    breaker_cool_down_s: float = Field(30.0, gt=0)
    # A client that takes longer than this (s) to take one piece of its response (it stopped
    # reading: a full TCP window) is cut off, so that its stream frees its backend slot.
    client_send_timeout_s: float = Field(60.0, gt=0)
    # A request whose body has not all arrived this long (s) after its headers gets a 408 and
    # its connection is closed: a client sending a few bytes a second, or its headers and then
    # nothing, held its connection and request for as long as it liked.
    client_body_timeout_s: float = Field(30.0, gt=0)
    # On SIGTERM, in-flight requests get this long (s) to finish before they are cut off.
    shutdown_timeout_s: float = Field(30.0, ge=0)

    # The embedded backend (no upstream configured): which server (auto: llama.cpp's
    # llama-server when built, else llama-cpp-python's), its model, the context of each
    # parallel slot (tokens), the slots (None: sized for the machine, service.llama_server)
    # and the CPU threads (None: all cores).
    local_server: Literal["auto", "llama-server", "llama-cpp-python"] = "auto"
    local_model: str = "qwen2.5-coder-0.5b-instruct"
    local_n_ctx: int = Field(4096, ge=256)
    local_parallel: int | None = Field(None, ge=1, le=256)
    local_threads: int | None = Field(None, ge=1)
    local_start_timeout_s: float = Field(180.0, gt=0)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        # The environment gives one string: origins separated by commas.
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _with_scheme(value, ("postgresql://", "postgres://", "sqlite:///"))

    @field_validator("search_url")
    @classmethod
    def _search_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s):// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _search_needs_url(self) -> Settings:
        if self.search_backend != "local" and not self.search_url:
            raise ValueError(f"search_backend {self.search_backend} needs search_url")
        return self

    @model_validator(mode="after")
    def _default_experiment_exists(self) -> Settings:
        if self.default_experiment is not None and self.default_experiment not in \
                self.experiments:
            raise ValueError(f"default_experiment {self.default_experiment!r} is not one of "
                             f"experiments: {', '.join(sorted(self.experiments)) or 'none'}")
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("must be one of critical, error, warning, info, debug")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _with_scheme(value, ("redis://", "rediss://", "unix://"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | str | None = None, **flags: Any) -> Settings:
    """Build the settings from flags (keyword arguments; None means "not given"), ``TTC_*``
    variables and the YAML file.

    ``upstream_urls`` (the repeatable ``--upstream`` flag, or ``TTC_UPSTREAM_URL`` with
    comma-separated URLs) replaces the file's ``upstreams``.

    Raises:
        SettingsError: a missing config file, bad YAML, or any invalid setting.
    """
    config_file = config_file or os.environ.get("TTC_CONFIG")
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")

    given = {key: value for key, value in flags.items() if value is not None}
    upstream_urls = given.pop("upstream_urls", None) or _env_upstream_urls()
    if upstream_urls:
        given["upstreams"] = [{"url": url} for url in upstream_urls]

    class _WithFile(Settings):
        model_config = SettingsConfigDict(yaml_file=config_file)

    _warn_unknown_variables(os.environ)
    try:
        loaded = _WithFile(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
    except SourceError as exc:  # a TTC_* variable of a list or mapping that is not JSON
        found = re.search(r'field "([^"]+)" from source "EnvSettingsSource"', str(exc))
        if found is None:
            raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
        raise SettingsError(
            f"invalid settings:\n  {found[1]}: TTC_{found[1].upper()} must be JSON, as "
            f"the setting is a list or a mapping: {exc.__cause__ or exc}") from exc
    except Exception as exc:  # the YAML source raises yaml.YAMLError and friends
        raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
    return Settings.model_construct(_fields_set=loaded.model_fields_set, **dict(loaded))


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log a warning for each ``TTC_*`` variable that names no setting, with the setting's
    variable it is closest to: pydantic-settings ignores such a variable, so a typo such as
    ``TTC_SHUTDOWN_TIMEOUT`` would leave its setting at the default without a word (a typo
    in the config file is an error, ``extra="forbid"``; a variable is only warned about,
    since other tools may share the prefix)."""
    known = {f"TTC_{name.upper()}" for name in Settings.model_fields}
    for name in sorted(environ):
        if (not name.startswith("TTC_") or name in known or name in OTHER_VARIABLES
                or _SERVICE_LINK.fullmatch(name)):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        log.warning("the variable %s names no setting and is ignored%s", name,
                    f"; did you mean {close[0]}?" if close else "")


def _env_upstream_urls() -> list[str]:
    raw = os.environ.get("TTC_UPSTREAM_URL", "")
    return [url.strip() for url in raw.split(",") if url.strip()]


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown setting")
        else:
            lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)
