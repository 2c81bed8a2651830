"""The real-model study: direct, parallel_vote and sequential at equal budgets on the embedded
local model (Qwen2.5-Coder-0.5B-Instruct, llama.cpp on CPU), through the gateway.

It starts ``ttc-router serve`` with no upstream (so the gateway runs the embedded backend),
waits for ``/ready``, runs ``ttc-router eval`` on small graph-connectivity, arithmetic-chain
and GSM8K suites (GSM8K only when the benchmark data is found), then stops the gateway and
prints the report's path and the wall time. Budgets include ones above the model's natural
chain length: at 256 tokens and below, a 0.5B model's chains are often cut before their
answer. The run is resumable: run the same command again to continue a stopped study.

At about 20 tokens/s on 2 cores, each request costs up to budget / 20 seconds: the defaults
(3 suites x 4 items x 3 strategies x 2 budgets = 72 requests) take on the order of an hour.

Usage (from the repository root)::

    .venv/bin/python bench/real_model_study.py [--limit 4] [--budgets 256,1024]
        [--out bench/results/real-model] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from router_models.tasks import default_data_dir
from service.local_backend import free_port, stop_process

START_TIMEOUT_S = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="items per suite (default 4)")
    parser.add_argument("--budgets", default="256,1024", help="budget_tokens (default 256,1024)")
    parser.add_argument("--strategies", default="direct,parallel_vote,sequential")
    parser.add_argument("--suites", default=None,
                        help="default: graph_connectivity,arithmetic_chain and gsm8k when the "
                             "benchmark data is found")
    parser.add_argument("--out", type=Path, default=Path("bench/results/real-model"))
    parser.add_argument("--data-dir", type=Path,
                        help="gateway state (model files); default TTC_TEST_DATA_DIR or "
                             "the gateway's own default")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight (default 1: llama.cpp queues them anyway)")
    args = parser.parse_args()

    suites = args.suites or ",".join(
        ["graph_connectivity", "arithmetic_chain"] + (["gsm8k"] if default_data_dir() else []))
    port = free_port()
    command = [sys.executable, "-m", "service", "serve", "--port", str(port),
               "--log-level", "warning"]
    data_dir = args.data_dir or os.environ.get("TTC_TEST_DATA_DIR")
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")
           or k == "TTC_BENCH_DATA"}
    started = time.perf_counter()
    gateway = subprocess.Popen(command, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if gateway.poll() is not None:
                print("the gateway exited before it was ready", file=sys.stderr)
                return 1
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"the gateway was not ready in {START_TIMEOUT_S}s", file=sys.stderr)
                return 1
            time.sleep(1)
        print(f"gateway ready in {time.perf_counter() - started:.0f} s", flush=True)
        evaluation = subprocess.run(
            [sys.executable, "-m", "service", "eval", "--backend", url + "/v1",
             "--suite", suites, "--limit", str(args.limit), "--budgets", args.budgets,
             "--strategies", args.strategies, "--concurrency", str(args.concurrency),
             "--timeout-s", "1800", "--out", str(args.out)], check=False)
    finally:
        stop_process(gateway, grace_s=60)
    print(f"study wall time: {time.perf_counter() - started:.0f} s; report: "
          f"{args.out / 'report.md'}")
    return evaluation.returncode


if __name__ == "__main__":
    sys.exit(main())
