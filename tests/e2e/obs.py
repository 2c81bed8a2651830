"""Real processes for the observability tests: the fake backend, ``ttc-router serve`` in front
of it, and Prometheus, each on a free 127.0.0.1 port and stopped by the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.local_backend import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    """A started process, its base URL and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40) -> int:
        """Send ``sig`` and wait; kill after ``timeout_s``. Returns the exit status."""
        return stop_process(self.process, sig, timeout_s)


def _start(args: list[str], log: Path, ready: Callable[[str], bool], url: str,
           env: dict[str, str] | None = None, timeout_s: float = 30) -> Process:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=env)
    started = Process(process, url, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{args[:3]} exited early:\n{log.read_text(errors='replace')}")
        try:
            if ready(url):
                return started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    started.stop(signal.SIGKILL)
    raise AssertionError(f"{args[:3]} not ready in {timeout_s}s:\n"
                         f"{log.read_text(errors='replace')}")


def _answers(path: str) -> Callable[[str], bool]:
    return lambda url: httpx.get(url + path, timeout=1).status_code == 200


def start_fake_backend(workdir: Path, delay_ms: float = 0,
                       token_delay_ms: float = 0) -> Process:
    """``tests/e2e/fake_backend.py`` on a free port (``delay_ms`` before each reply,
    ``token_delay_ms`` per streamed token); its URL ends in ``/v1``."""
    port = free_port()
    return _start([sys.executable, "-m", "tests.e2e.fake_backend", "--port", str(port),
                   "--delay-ms", str(delay_ms), "--token-delay-ms", str(token_delay_ms)],
                  workdir / "backend.log", _answers("/models"), f"http://127.0.0.1:{port}/v1")


def start_sim(workdir: Path) -> Process:
    """``ttc-router sim`` (the simulated reasoner, a SIMULATION) on a free port, answering at
    once; its URL ends in ``/v1``."""
    port = free_port()
    return _start([sys.executable, "-m", "service", "sim", "--port", str(port),
                   "--latency-ms-per-token", "0", "--ttft-ms", "0", "--log-level", "warning"],
                  workdir / "sim.log", _answers("/models"), f"http://127.0.0.1:{port}/v1",
                  timeout_s=90)


def start_gateway(upstream: str, data_dir: Path, workdir: Path,
                  env: dict[str, str] | None = None) -> Process:
    """``ttc-router serve --upstream UPSTREAM`` with its data under ``data_dir``."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    return _start([sys.executable, "-m", "service", "serve", "--upstream", upstream,
                   "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"],
                  workdir / "gateway.log", _answers("/ready"), f"http://127.0.0.1:{port}",
                  env={**clean, **(env or {})})


def start_prometheus(config: Path, workdir: Path, binary: str) -> Process:
    """Prometheus with ``config``, its storage under ``workdir``."""
    port = free_port()
    return _start([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                  workdir / "prometheus.log", _answers("/-/ready"), f"http://127.0.0.1:{port}")
