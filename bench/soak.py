"""Load and soak: the real gateway process at a fixed concurrency against ``ttc-router sim``.

    .venv/bin/python bench/soak.py [--duration 300] [--concurrency 64] [--warmup 60]

Starts ``ttc-router sim`` and ``ttc-router serve --upstream`` on free loopback ports (a fresh
data directory, no keys), then keeps ``--concurrency`` requests in flight for ``--duration``
seconds: mostly ``direct`` answers, one in five a ``parallel_vote`` under a 256-token budget,
one in four streamed. It prints throughput, latency percentiles, errors, and the gateway's
resident memory (VmRSS) sampled every 5 s; the memory growth is measured from the end of the
warm-up (the first minute by default) to the end. This is a benchmark, not a test: it prints
its figures and exits 1 only when a request failed or memory grew by 10% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from service.local_backend import free_port

PROMPT = "[[sim family=word_math difficulty=0.3 answer=42]] What is 6 * 7?"


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited early")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout_s}s")


def body(rng: random.Random) -> dict:
    request: dict = {"model": "sim-reasoner", "max_tokens": 32,
                     "messages": [{"role": "user", "content": PROMPT}]}
    if rng.random() < 0.2:
        request["router"] = {"strategy": "parallel_vote", "budget_tokens": 256}
        request.pop("max_tokens")
    if rng.random() < 0.25:
        request["stream"] = True
    return request


async def load(url: str, concurrency: int, duration_s: float, gateway_pid: int,
               warmup_s: float) -> int:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    memory: list[tuple[float, float]] = []
    started = time.monotonic()
    stop_at = started + duration_s

    async def worker(seed: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            sent = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", json=body(rng)) as reply:
                    payload = await reply.read()
                    if reply.status != 200 or b'"error"' in payload[-400:]:
                        key = f"HTTP {reply.status}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - sent)

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            memory.append((time.monotonic() - started, rss_mb(gateway_pid)))
            elapsed = time.monotonic() - started
            if memory and int(elapsed) % 30 < 5:
                print(f"  {elapsed:5.0f}s  {len(latencies):7d} ok  {sum(errors.values())} errors"
                      f"  rss {memory[-1][1]:.1f} MB", flush=True)
            await asyncio.sleep(5)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(sampler(), *(worker(i, session) for i in range(concurrency)))
    memory.append((time.monotonic() - started, rss_mb(gateway_pid)))
    elapsed = time.monotonic() - started

    ordered = sorted(latencies)
    after_warmup = [mb for t, mb in memory if t >= warmup_s]
    base = after_warmup[0] if after_warmup else memory[0][1]
    growth = (memory[-1][1] - base) / base * 100
    print(f"\nconcurrency {concurrency}, {elapsed:.0f} s: {len(ordered)} requests ok, "
          f"{sum(errors.values())} errors {errors or ''}")
    print(f"throughput {len(ordered) / elapsed:.1f} requests/s")
    if ordered:
        print(f"latency p50 {statistics.median(ordered) * 1000:.1f} ms, "
              f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms, "
              f"max {ordered[-1] * 1000:.1f} ms")
    print(f"gateway RSS: start {memory[0][1]:.1f} MB, at {warmup_s:.0f} s {base:.1f} MB, "
          f"end {memory[-1][1]:.1f} MB, peak {max(mb for _, mb in memory):.1f} MB; "
          f"growth after warm-up {growth:+.1f}% (target < 10%)")
    return 0 if not errors and growth < 10 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds (default 300)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=60,
                        help="seconds before the memory baseline (default 60)")
    parser.add_argument("--sim-latency-ms-per-token", type=float, default=0.5)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="ttc-soak-"))
    sim_port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    cli = [sys.executable, "-m", "service"]
    sim = subprocess.Popen([*cli, "sim", "--port", str(sim_port), "--latency-ms-per-token",
                            str(args.sim_latency_ms_per_token)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = None
    try:
        wait_ready(f"http://127.0.0.1:{sim_port}/v1/models", sim)
        gateway = subprocess.Popen(
            [*cli, "serve", "--upstream", f"http://127.0.0.1:{sim_port}/v1", "--port",
             str(gateway_port), "--data-dir", str(data_dir), "--log-level", "warning"],
            env=env)
        wait_ready(f"http://127.0.0.1:{gateway_port}/ready", gateway)
        print(f"gateway pid {gateway.pid} on :{gateway_port}, sim on :{sim_port}; "
              f"concurrency {args.concurrency} for {args.duration:.0f} s", flush=True)
        return asyncio.run(load(f"http://127.0.0.1:{gateway_port}", args.concurrency,
                                args.duration, gateway.pid, args.warmup))
    finally:
        for process in (gateway, sim):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
