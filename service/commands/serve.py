"""``ttc-router serve``: run the gateway, starting the embedded backend when no upstream is
configured."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.settings import Settings, SettingsError, UpstreamSettings, load_settings

if TYPE_CHECKING:
    from service.local_backend import LocalBackend

log = logging.getLogger("ttc_router")


def register(subcommands: Any) -> None:
    serve = subcommands.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway. With no upstream configured it starts the embedded local "
                    "backend (llama.cpp on a small model) and routes to it. Settings come from "
                    "flags, then TTC_* environment variables, then the config file.")
    serve.add_argument("--config", type=Path, help="YAML config file (also TTC_CONFIG)")
    serve.add_argument("--upstream", dest="upstream_urls", action="append", metavar="URL",
                       help="an OpenAI-compatible base URL ending in /v1; repeatable "
                            "(also TTC_UPSTREAM_URL, comma-separated)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--data-dir", type=Path,
                       help="state directory (default ~/.local/share/ttc-router)")
    serve.add_argument("--default-model", help="the backend model that `auto` resolves to")
    serve.add_argument("--local-model", help="the embedded backend's model "
                                             "(qwen2.5-coder-0.5b-instruct or gemma3-270m)")
    serve.add_argument("--local-server", choices=["auto", "llama-server", "llama-cpp-python"],
                       help="the embedded backend's server (default auto: llama.cpp's "
                            "llama-server when built, else llama-cpp-python's)")
    serve.add_argument("--log-level", help="critical, error, warning, info or debug")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.config, upstream_urls=args.upstream_urls, host=args.host, port=args.port,
            data_dir=args.data_dir, default_model=args.default_model,
            local_model=args.local_model, local_server=args.local_server,
            log_level=args.log_level)
        # Checked here, not first in the app's lifespan, where a bad spec became uvicorn's
        # traceback and "Application startup failed" (exit 3).
        from service.routing import configured_policies

        configured_policies(settings)
    except SettingsError as exc:
        print(f"ttc-router: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    local = None
    if not settings.upstreams:
        from service.embedded import start_embedded
        from service.local_backend import LocalBackendError

        try:
            local = start_embedded(settings)
        except LocalBackendError as exc:
            print(f"ttc-router: {exc}", file=sys.stderr)
            return 1
        settings = settings.model_copy(update={"upstreams": [embedded_upstream(settings, local)]})
    try:
        _run_uvicorn(settings, on_shutdown=local.stop if local is not None else None)
    finally:
        if local is not None:  # when uvicorn failed before its lifespan ran
            local.stop()
    return 0


def embedded_upstream(settings: Settings, local: LocalBackend) -> UpstreamSettings:
    """The upstream entry of the running embedded backend ``local``: its URL, model and
    ``n`` support, and its model's own early-stopping rule (``LocalModel.vote_stopping``)
    unless the operator set ``vote_first_wave`` or ``vote_stop_threshold`` (a setting set in
    the config file or the environment holds for every upstream)."""
    from service.local_backend import LOCAL_MODELS

    model = LOCAL_MODELS.get(local.alias)
    stopping = model.vote_stopping if model is not None else None
    chosen = settings.model_fields_set & {"vote_first_wave", "vote_stop_threshold"}
    first, threshold = (None, None) if stopping is None or chosen else stopping
    return UpstreamSettings(url=local.url, name="local", models=[local.alias],
                            supports_n=local.supports_n, vote_first_wave=first,
                            vote_stop_threshold=threshold)


def _run_uvicorn(settings: Settings, on_shutdown: Callable[[], None] | None) -> None:
    import uvicorn

    from service.app import create_app

    if not _is_loopback(settings.host) and not settings.require_keys and not _any_keys(settings):
        log.warning("listening on %s without API keys: every client that can reach it may "
                    "spend tokens; create one with `ttc-router keys create NAME`",
                    settings.host)
    # On SIGTERM uvicorn stops accepting, gives in-flight requests shutdown_timeout_s to
    # finish (service.admission answers the ones cut off), then runs the lifespan's shutdown,
    # which flushes the request log and stops the embedded backend.
    config = uvicorn.Config(
        create_app(settings, on_shutdown=on_shutdown), host=settings.host,
        port=settings.port,
        log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        loop="auto", http="auto")
    uvicorn.Server(config).run()


def _any_keys(settings: Settings) -> bool:
    from service.keys import KeyStoreError, open_key_store

    url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        return bool(open_key_store(settings.data_dir, url).active())
    except KeyStoreError:
        return False  # the app's start-up reports it


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
