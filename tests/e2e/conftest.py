"""Real processes on 127.0.0.1: ``ttc-router serve`` with its embedded llama.cpp backend.

The gateway's data directory is ``TTC_TEST_DATA_DIR`` when set, else a temporary one. The
model is assembled once into the user's cache (``service.local_backend.model_path``), so a
temporary data directory no longer costs a 491 MB copy a run; a copy already in
``TTC_TEST_DATA_DIR/models`` is used as before.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.local_backend import free_port, stop_process

START_TIMEOUT_S = 300


@dataclass
class GatewayProcess:
    """A running ``ttc-router serve``: its process, base URL and embedded backend's port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def backend_port(self) -> int:
        # the last address printed: the fallback's, when llama-server did not come up
        found = re.findall(r"on 127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace"))
        assert found, "the gateway did not print its embedded backend's address"
        return int(found[-1])

    def backend_honours_n(self) -> bool:
        found = re.search(r"embedded backend: .*; n (honoured|fanned out)",
                          self.log.read_text(errors="replace"))
        assert found, "the gateway did not print which embedded backend it started"
        return found.group(1) == "honoured"


def start_gateway(data_dir: Path, log: Path) -> GatewayProcess:
    """Start the gateway on the embedded backend and wait until /ready answers 200."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install '.[local]'")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(gateway.url + "/ready", timeout=2).status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(gateway.process)
    raise AssertionError(f"the gateway was not ready in {START_TIMEOUT_S}s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    stop_process(process, sig, grace_s=30)


def port_answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def wait_until_closed(port: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not port_answers(port):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("TTC_TEST_DATA_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("ttc-data")


@pytest.fixture(scope="session")
def gateway(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = start_gateway(data_dir, tmp_path_factory.mktemp("logs") / "gateway.log")
    try:
        yield running
    finally:
        stop(running.process)
