"""Gateway resources: the memory (RSS) and CPU of one ``ttc-router serve`` process under load,
for sizing a pod's requests and limits (docs/deploy.md, "Resources").

What it measures
    The gateway runs in front of ``ttc-router sim`` (the **simulated** reasoner: no model, so
    the backend's own cost is out of the gateway's figures), each in its own process on
    127.0.0.1. This process sends ``model: "auto"`` chat completions (the classifier and the
    learned policy decide each one, as in production; half of them streamed) at each
    concurrency level for a fixed time, and reads the gateway's ``/proc/PID`` before and
    after: CPU seconds per wall second (cores), CPU per request, resident memory at the end of
    the level, and the peak (``VmHWM``). The idle RSS is read after start-up and one request.

    A fast backend (``--latency-ms-per-token 0.5``, the sim's default) makes the gateway's own
    CPU the limit; a slow one (``--slow-ms-per-token``) keeps many requests in flight at once,
    which is what memory per in-flight request needs.

How to run it (from the repository root, with the project's virtualenv)
    .venv/bin/python bench/gateway_resources.py                     # about 1 minute
    .venv/bin/python bench/gateway_resources.py --seconds 10 --concurrency 1,32,256

Linux only (/proc). Both servers are stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

QUESTIONS = ("What is 17 * 3?", "Name the capital of France.",
             "If a train leaves at 3 pm and travels 120 km at 60 km/h, when does it arrive?",
             "Is 91 a prime number? Answer yes or no.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (and of its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)


async def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout_s} s")
            await asyncio.sleep(0.2)


async def load(base: str, concurrency: int, seconds: float) -> tuple[int, int]:
    """Send requests with ``concurrency`` workers for ``seconds``: (answered, failed)."""
    answered = failed = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def worker(w: int) -> None:
            nonlocal answered, failed
            i = w
            while time.monotonic() < deadline:
                body = {"model": "auto", "max_tokens": 128, "stream": i % 2 == 1,
                        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
                i += concurrency
                try:
                    reply = await client.post("/v1/chat/completions", json=body)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                answered += ok
                failed += not ok

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return answered, failed


async def run(args: argparse.Namespace) -> None:
    py = sys.executable
    data = Path(tempfile.mkdtemp(prefix="gateway-resources-"))
    fast_port, slow_port = free_port(), free_port()
    sims = {
        "fast": subprocess.Popen([py, "-m", "service", "sim", "--port", str(fast_port),
                                  "--log-level", "warning", "--latency-ms-per-token",
                                  str(args.fast_ms_per_token)], stdin=subprocess.DEVNULL),
        "slow": subprocess.Popen([py, "-m", "service", "sim", "--port", str(slow_port),
                                  "--log-level", "warning", "--latency-ms-per-token",
                                  str(args.slow_ms_per_token)], stdin=subprocess.DEVNULL),
    }
    ports = {"fast": fast_port, "slow": slow_port}
    gateways: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for port in ports.values():
            await wait_ready(f"http://127.0.0.1:{port}/v1/models", 60)
        print(f"{'backend':<6} {'conc':>5} {'req/s':>7} {'fail':>5} {'cores':>6} "
              f"{'cpu ms/req':>10} {'rss MiB':>8} {'peak MiB':>8}")
        for name, port in ports.items():
            gw_port = free_port()
            gateway = gateways[name] = subprocess.Popen(
                [py, "-m", "service", "serve", "--upstream", f"http://127.0.0.1:{port}/v1",
                 "--port", str(gw_port), "--data-dir", str(data / name), "--log-level",
                 "warning"], stdin=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{gw_port}"
            await wait_ready(base + "/health", 120)
            await load(base, 1, 1.0)  # warm: the first request loads what is loaded lazily
            idle, _ = proc_memory_mib(gateway.pid)
            print(f"{name:<6} {'idle':>5} {'':>7} {'':>5} {'':>6} {'':>10} {idle:8.0f}")
            for concurrency in args.concurrency:
                cpu0, wall0 = proc_cpu_s(gateway.pid), time.perf_counter()
                answered, failed = await load(base, concurrency, args.seconds)
                cpu, wall = proc_cpu_s(gateway.pid) - cpu0, time.perf_counter() - wall0
                rss, peak = proc_memory_mib(gateway.pid)
                per_request = f"{cpu / answered * 1000:10.2f}" if answered else f"{'-':>10}"
                print(f"{name:<6} {concurrency:>5} {answered / wall:7.1f} {failed:>5} "
                      f"{cpu / wall:6.2f} {per_request} {rss:8.0f} {peak:8.0f}", flush=True)
    finally:
        for proc in [*gateways.values(), *sims.values()]:
            proc.terminate()
        for proc in [*gateways.values(), *sims.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32,128",
                        type=lambda v: [int(c) for c in v.split(",")])
    parser.add_argument("--seconds", type=float, default=10.0, help="per level and backend")
    parser.add_argument("--fast-ms-per-token", type=float, default=0.5)
    parser.add_argument("--slow-ms-per-token", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
