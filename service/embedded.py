"""Choosing and starting the embedded backend when no upstream is configured.

``local_server: auto`` (the default) starts llama.cpp's ``llama-server`` (parallel slots,
continuous batching) when ``service.llama_build`` has built it for the installed
llama-cpp-python, and falls back to llama-cpp-python's server, saying why, when the binary is
missing or does not come up. Naming one server runs that one or fails.

Whether the server returns ``n`` choices in one reply is measured with one 1-token call once
it is up (``probe_n_support``); the gateway fans ``n`` out into single calls where it does not.
"""

from __future__ import annotations

import http.client
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import IO

from service.llama_build import find_server, installed_version
from service.llama_server import LlamaServer, default_slots
from service.local_backend import LOCAL_MODELS, LocalBackend, LocalBackendError, model_path
from service.settings import Settings

log = logging.getLogger("ttc_router")


def start_embedded(settings: Settings, progress: IO[str] | None = sys.stderr) -> LocalBackend:
    """Assemble the model if needed, start the embedded backend and probe its ``n`` support;
    returns it running, with ``supports_n`` set.

    Raises:
        LocalBackendError: an unknown ``local_model``, or the chosen server (after the
            fallback, for ``auto``) cannot start.
    """
    if settings.local_model not in LOCAL_MODELS:
        raise LocalBackendError(f"unknown local_model {settings.local_model!r}; "
                                f"known: {', '.join(LOCAL_MODELS)}")
    model = LOCAL_MODELS[settings.local_model]
    path = model_path(model, settings.data_dir / "models")
    logs = settings.data_dir / "logs"
    timeout_s = settings.local_start_timeout_s
    backend: LocalBackend | None = None
    if settings.local_server != "llama-cpp-python":
        binary = find_server()
        if binary is None:
            reason = (f"llama.cpp's llama-server is not built for llama-cpp-python "
                      f"{installed_version() or '(not installed)'}; `make llama-server` "
                      f"builds it (15 to 60 minutes on 2 cores)")
            if settings.local_server == "llama-server":
                raise LocalBackendError(reason)
            log.warning("%s; falling back to llama-cpp-python's server, which decodes one "
                        "request at a time", reason)
        else:
            slots = settings.local_parallel or default_slots(settings.fanout_concurrency)
            backend = LlamaServer(binary, path, model.alias, n_ctx=settings.local_n_ctx,
                                  slots=slots, threads=settings.local_threads,
                                  log_file=logs / "llama-server.log")
            try:
                _start_and_probe(backend, timeout_s, progress)
            except LocalBackendError as exc:
                if settings.local_server == "llama-server":
                    raise
                log.warning("%s; falling back to llama-cpp-python's server, which decodes "
                            "one request at a time", exc)
                backend = None
    if backend is None:
        backend = LocalBackend(path, model.alias, n_ctx=settings.local_n_ctx,
                               threads=settings.local_threads,
                               log_file=logs / "llama-cpp-python-server.log")
        _start_and_probe(backend, timeout_s, progress)
    if progress is not None:
        layout = (f"{backend.slots} parallel slots x {backend.n_ctx} tokens"
                  if isinstance(backend, LlamaServer) else f"{backend.n_ctx} tokens of context")
        progress.write(f"embedded backend: {backend.name}, {layout}; n "
                       f"{'honoured' if backend.supports_n else 'fanned out by the gateway'}\n")
    return backend


def _start_and_probe(backend: LocalBackend, timeout_s: float, progress: IO[str] | None) -> None:
    """Start ``backend``, then send it the ``n`` probe, which is also its first chat call: a
    server that dies on it (llama.cpp built with instructions this CPU refuses dies with
    SIGILL on its first prompt) counts as one that did not start.

    Raises:
        LocalBackendError: the server did not come up, or exited on the probe.
    """
    backend.start(timeout_s, progress)
    backend.supports_n = probe_n_support(backend.url, backend.alias)
    code = None if backend.supports_n else _exit_code_after_no(backend)
    if code is not None:
        backend.stop()
        raise LocalBackendError(
            f"the embedded backend ({backend.name}) exited with code {code} on its first "
            f"request; see {backend.log_file}")


def _exit_code_after_no(backend: LocalBackend, deadline_s: float = 30.0) -> int | None:
    """After a probe that said no: the server's exit code if the probe killed it, None if it
    still answers ``/health``.

    A no is either a live server that does not honour ``n`` or one that died on the call. A
    dying process can take seconds to be reaped (SIGILL writes a core dump, slowly on a loaded
    machine), and while it dumps its socket still accepts connections that nobody answers; so
    only a real HTTP answer from ``/health`` counts as alive, and the wait ends at the first
    of an exit, an answer or ``deadline_s`` seconds (then: alive, as before this check).
    """
    health = backend.url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if (code := backend.exit_code(wait_s=0.2)) is not None:
            return code
        try:
            with urllib.request.urlopen(health, timeout=1.0):
                return None
        except urllib.error.HTTPError:
            return None  # an answer, whatever its status: the process is serving
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            continue  # refused, reset or unanswered: dying or not yet reaped
    return backend.exit_code()


def probe_n_support(url: str, model: str, timeout_s: float = 60.0) -> bool:
    """Whether the OpenAI-compatible server at ``url`` (ending in /v1) answers ``n: 2`` with
    two choices and counts the tokens of both: one chat call of 1 completion token a choice.

    A refusal (llama-server in llama-cpp-python 0.3.16 answers 500 "Only one completion choice
    is allowed"), one choice, any error, or usage below the tokens the choices spent counts as
    no: llama-server in 0.3.36 returns n choices but the usage of one, which would let a vote
    spend past its budget uncounted. The gateway then sends single-choice calls instead.
    """
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                       "n": 2, "max_tokens": 1}).encode()
    request = urllib.request.Request(url + "/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            data = json.loads(reply.read())
        choices = data["choices"]
        counted = int(data["usage"]["completion_tokens"])
        # a choice cut at max_tokens=1 spent exactly one token
        spent = sum(1 for choice in choices if choice.get("finish_reason") == "length")
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError,
            AttributeError, KeyError, TypeError):
        # HTTPException: a server that dies while it answers (IncompleteRead) is a failed
        # probe, and the caller then finds it exited.
        return False
    return isinstance(choices, list) and len(choices) == 2 and counted >= spent
