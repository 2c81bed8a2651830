"""The embedded backend's two servers on the same model, measured in one run: aggregate
throughput under concurrency, and the wall time of a vote of 8 samples against one sample.

For each server (llama-cpp-python's server, then llama.cpp's ``llama-server`` built by
``service.llama_build``; one at a time on the same GGUF, the same threads), the script starts
it as ``ttc-router serve`` would (``service.embedded``), probes its ``n`` support, sends one
unmeasured warm-up request, then measures over the OpenAI API (plain urllib, non-streaming):

* throughput: ``--rounds`` rounds of C concurrent chat requests (C in ``--concurrency``, 1, 4
  and 8 by default) of ``--max-tokens`` (128) completion tokens at temperature 0.7, distinct
  prompts asking for long stories; aggregate completion tokens (from ``usage``) / wall
  seconds;
* a vote of 8 against one sample of the same length (``--vote-tokens``, 64, the gateway's
  least tokens per vote sample): the median wall time over ``--repeats`` of one sample, of 8
  concurrent single-choice calls, of one ``n=8`` call (when the server honours ``n``), and of
  a ``parallel_vote`` request through the gateway (``ttc-router serve --upstream`` on this
  server, one wave of 8 samples: ``budget_tokens`` 8 x 64, ``TTC_VOTE_FIRST_WAVE=8`` (and no
  majority first), and an
  answer-length prior and least sample size under which the planner keeps 8 samples of 64
  tokens) against a ``direct`` request of 64 tokens through the same gateway, each repeat on
  a fresh gateway. The ratios (vote / one sample) are what issue 14 targets: at most 3.

Every request suppresses the model's end-of-generation tokens (``logit_bias`` -100), so each
sample runs to its ``max_tokens`` and "the same length" holds; the printed tokens per request
show it. Ratios compare figures from the same run. On a shared machine the other processes'
share of the CPU while measuring is printed beside each server's figures.

Usage (from the repository root)::

    .venv/bin/python bench/llama_throughput.py [--data-dir DIR] [--llama-server PATH]
        [--max-tokens 128] [--vote-tokens 64] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare_models import cpu_jiffies, own_jiffies  # noqa: E402
from router_models.policies.prior import HEADROOM as ANSWER_HEADROOM  # noqa: E402
from service.embedded import probe_n_support  # noqa: E402
from service.llama_build import find_server, installed_version  # noqa: E402
from service.llama_server import LlamaServer  # noqa: E402
from service.local_backend import (  # noqa: E402
    QWEN_CODER_05B,
    LocalBackend,
    free_port,
    stop_process,
)
from service.local_backend import model_path as assemble_model  # noqa: E402
from service.settings import DEFAULT_DATA_DIR  # noqa: E402

# Qwen2.5's end-of-generation tokens as llama.cpp marks them (<|endoftext|>, <|im_end|>,
# <|fim_pad|>, <|repo_name|>, <|file_sep|>): banned so that every sample runs to max_tokens.
QWEN_EOG_TOKENS = (151643, 151645, 151662, 151663, 151664)
TOPICS = ("a lighthouse keeper", "a lost cat in Paris", "the first train to the coast",
          "a chess match in winter", "a baker who sings", "a storm over the harbour",
          "two rival gardeners", "a clockmaker's apprentice", "a robot learning to paint",
          "a village without maps", "the last bookshop in town", "a kite festival")
VOTE_PROMPT = "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep are left? " \
              "Think step by step, then end with 'The answer is N.'"
VOTE_WIDTH = 8


def server_version(binary: Path) -> str:
    """What ``llama-server --version`` prints (its version and build commit)."""
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    return " ".join((done.stdout + done.stderr).split())


def post(url: str, payload: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


def chat_body(model: str, prompt: str, max_tokens: int, seed: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": seed,
            "logit_bias": {str(token): -100 for token in QWEN_EOG_TOKENS}, **extra}


def process_jiffies(pid: int) -> int:
    """Clock ticks (user + system) that process ``pid`` has used, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuShare:
    """The share of all CPU time used by processes other than this script, the children it
    has reaped (the gateways) and ``pids`` (the server it started) between ``__enter__`` and
    ``__exit__``."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.share: float | None = None
        self._start = (0, 0, 0)

    def _ours(self) -> int:
        times = os.times()
        reaped = round((times.children_user + times.children_system) * os.sysconf("SC_CLK_TCK"))
        return own_jiffies(None) + reaped + sum(process_jiffies(pid) for pid in self.pids)

    def __enter__(self) -> CpuShare:
        self._start = (*cpu_jiffies(), self._ours())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = cpu_jiffies()
        busy0, total0, ours0 = self._start
        self.share = max(0.0, ((busy - busy0) - (self._ours() - ours0)) / max(total - total0, 1))


def throughput(url: str, model: str, concurrency: int, max_tokens: int,
               rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of ``concurrency`` concurrent requests; aggregate completion
    tokens per wall second."""
    tokens = 0
    wall_s = 0.0
    with ThreadPoolExecutor(concurrency) as pool:
        for r in range(rounds):
            bodies = [chat_body(model, f"Write a long, detailed story about "
                                       f"{TOPICS[(r * concurrency + i) % len(TOPICS)]}.",
                                max_tokens, seed=r * 100 + i) for i in range(concurrency)]
            started = time.perf_counter()
            replies = list(pool.map(lambda b: post(url + "/chat/completions", b), bodies))
            wall_s += time.perf_counter() - started
            tokens += sum(int(reply["usage"]["completion_tokens"]) for reply in replies)
    return {"concurrency": concurrency, "completion_tokens": tokens, "wall_s": round(wall_s, 2),
            "tokens_per_s": round(tokens / wall_s, 1),
            "tokens_per_request": round(tokens / (rounds * concurrency), 1)}


def median_wall(action: Callable[[int], int], repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``action(repeat)`` and mean completion tokens it returned."""
    walls: list[float] = []
    tokens: list[int] = []
    for repeat in range(repeats):
        started = time.perf_counter()
        tokens.append(action(repeat))
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), statistics.mean(tokens)


def vote_ratios(url: str, open_gateway: Callable[[], AbstractContextManager[str]], model: str,
                supports_n: bool, tokens: int, repeats: int) -> dict[str, Any]:
    """Wall time of one sample of ``tokens`` tokens and of votes of 8 such samples. Each
    gateway repeat runs on a fresh gateway (``open_gateway`` yields its URL): one that has
    seen cut samples learns longer answers and would plan fewer, longer samples."""
    chat = url + "/chat/completions"

    def one(repeat: int) -> int:
        return int(post(chat, chat_body(model, VOTE_PROMPT, tokens, repeat))["usage"][
            "completion_tokens"])

    def concurrent(repeat: int) -> int:
        with ThreadPoolExecutor(VOTE_WIDTH) as pool:
            replies = list(pool.map(lambda i: post(chat, chat_body(
                model, VOTE_PROMPT, tokens, repeat * VOTE_WIDTH + i)), range(VOTE_WIDTH)))
        return sum(int(reply["usage"]["completion_tokens"]) for reply in replies)

    def with_n(repeat: int) -> int:
        reply = post(chat, chat_body(model, VOTE_PROMPT, tokens, repeat, n=VOTE_WIDTH))
        return int(reply["usage"]["completion_tokens"])

    def through(gateway_url: str, strategy: str, budget: int, repeat: int) -> int:
        reply = post(gateway_url + "/v1/chat/completions", chat_body(
            "auto", VOTE_PROMPT, tokens, repeat,
            router={"strategy": strategy, "budget_tokens": budget}))
        router = reply["router"]
        assert router["strategy"] == strategy, router
        assert router["samples"] == (VOTE_WIDTH if strategy == "parallel_vote" else 1), router
        return int(reply["usage"]["completion_tokens"])

    result: dict[str, Any] = {"sample_tokens": tokens}
    single_s, single_tokens = median_wall(one, repeats)
    result["one_sample"] = {"wall_s": round(single_s, 2), "tokens": single_tokens}
    runs = {"8_concurrent_calls": concurrent}
    if supports_n:
        runs["one_call_n_8"] = with_n
    for name, action in runs.items():
        wall_s, spent = median_wall(action, repeats)
        result[name] = {"wall_s": round(wall_s, 2), "tokens": spent,
                        "ratio": round(wall_s / single_s, 2)}
    walls: dict[str, list[float]] = {"direct": [], "parallel_vote": []}
    gateway_spent: dict[str, list[int]] = {"direct": [], "parallel_vote": []}
    for repeat in range(repeats):
        with open_gateway() as gateway_url:
            for strategy, budget in (("direct", tokens), ("parallel_vote", VOTE_WIDTH * tokens)):
                started = time.perf_counter()
                gateway_spent[strategy].append(through(gateway_url, strategy, budget, repeat))
                walls[strategy].append(time.perf_counter() - started)
    gateway_one_s = statistics.median(walls["direct"])
    result["gateway_direct"] = {"wall_s": round(gateway_one_s, 2),
                                "tokens": statistics.mean(gateway_spent["direct"])}
    wall_s = statistics.median(walls["parallel_vote"])
    result["gateway_parallel_vote_8"] = {"wall_s": round(wall_s, 2),
                                         "tokens": statistics.mean(gateway_spent["parallel_vote"]),
                                         "ratio": round(wall_s / gateway_one_s, 2)}
    return result


def start_gateway(upstream: str, supports_n: bool, sample_tokens: int,
                  work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``ttc-router serve`` on ``upstream`` with votes drawn in one wave of 8 samples."""
    config = work / "gateway.yaml"
    config.write_text(f"upstreams:\n  - url: {upstream}\n    name: bench\n"
                      f"    supports_n: {'true' if supports_n else 'false'}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    # One wave of 8 samples of ``sample_tokens``, which the planner must count as enough (its
    # prior otherwise wants 320 tokens a sample and 64 at least, and turns a small vote into
    # fewer samples or one chain); a shared machine may need more than the 300 s read timeout.
    env.update(TTC_VOTE_FIRST_WAVE=str(VOTE_WIDTH), TTC_VOTE_MAJORITY_FIRST="false",
               TTC_VOTE_MIN_DEPTH_TOKENS=str(sample_tokens),
               TTC_DEFAULT_ANSWER_TOKENS=str(int(sample_tokens / ANSWER_HEADROOM)),
               TTC_READ_TIMEOUT_S="1800")
    with (work / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--config", str(config), "--port",
             str(port), "--data-dir", str(work / "data"), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited; see {work / 'gateway.log'}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as reply:
                if reply.status == 200:
                    return process, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_process(process)
    raise RuntimeError("the gateway was not ready in 120 s")


def run_server(backend: LocalBackend, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start ``backend``, measure it, stop it."""
    print(f"\n== {backend.name}", file=sys.stderr)
    backend.start(args.start_timeout_s)
    try:
        supports_n = probe_n_support(backend.url, backend.alias)
        post(backend.url + "/chat/completions", chat_body(backend.alias, "Hello", 16, 0))
        assert backend._process is not None
        pids = [backend._process.pid]
        with CpuShare(pids) as load:
            rates = []
            for concurrency in args.concurrency:
                rate = throughput(backend.url, backend.alias, concurrency, args.max_tokens,
                                  args.rounds)
                print(f"  {concurrency} at a time: {rate['tokens_per_s']} tokens/s "
                      f"({rate['tokens_per_request']} tokens a request)", file=sys.stderr)
                rates.append(rate)

        @contextlib.contextmanager
        def open_gateway() -> Iterator[str]:
            process, url = start_gateway(backend.url, supports_n, args.vote_tokens, work)
            try:
                yield url
            finally:
                stop_process(process)

        with CpuShare(pids) as vote_load:
            votes = vote_ratios(backend.url, open_gateway, backend.alias, supports_n,
                                args.vote_tokens, args.repeats)
        print(f"  vote of 8 / one sample: {json.dumps(votes)}", file=sys.stderr)
    finally:
        backend.stop()
    return {"server": backend.name, "supports_n": supports_n,
            "slots": getattr(backend, "slots", 1), "threads": backend.threads,
            "throughput": rates, "vote": votes,
            "other_cpu_share_throughput": round(load.share or 0.0, 2),
            "other_cpu_share_vote": round(vote_load.share or 0.0, 2)}


def print_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    heads = " | ".join(f"{c} at a time" for c in args.concurrency)
    print(f"\nAggregate completion tokens/s, {args.max_tokens}-token answers, "
          f"{args.rounds} round(s):\n")
    print(f"| server | {heads} | other processes' CPU share |")
    print("| --- |" + " --- |" * (len(args.concurrency) + 1))
    for r in results:
        rates = " | ".join(f"{t['tokens_per_s']}" for t in r["throughput"])
        print(f"| {r['server']} | {rates} | {r['other_cpu_share_throughput']:.0%} |")
    print(f"\nA vote of 8 samples of {args.vote_tokens} tokens against one sample, median of "
          f"{args.repeats} (wall seconds, and the ratio vote / one sample):\n")
    print("| server | one sample | 8 concurrent calls | one call, n=8 | gateway: direct | "
          "gateway: parallel_vote of 8 | other processes' CPU share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        v = r["vote"]
        print(f"| {r['server']} | {_cell(v, 'one_sample')} | {_cell(v, '8_concurrent_calls')} "
              f"| {_cell(v, 'one_call_n_8')} | {_cell(v, 'gateway_direct')} "
              f"| {_cell(v, 'gateway_parallel_vote_8')} | {r['other_cpu_share_vote']:.0%} |")


def _cell(vote: dict[str, Any], key: str) -> str:
    if key not in vote:
        return "n not honoured"
    ratio = vote[key].get("ratio")
    return f"{vote[key]['wall_s']} s" + ("" if ratio is None else f" ({ratio}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where the assembled model lives (default: the gateway's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--slots", type=int, default=8, help="llama-server's parallel slots")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context per slot (tokens)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vote-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--start-timeout-s", type=float, default=300.0)
    parser.add_argument("--llama-server", type=Path,
                        help="the llama-server binary (default: the one built for the "
                             "installed llama-cpp-python)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    binary = args.llama_server or find_server()
    if binary is None:
        print("llama-server is not built: run `make llama-server` first", file=sys.stderr)
        return 1
    versions = {"llama-cpp-python": installed_version(), "llama-server": server_version(binary)}
    model = assemble_model(QWEN_CODER_05B, args.data_dir.expanduser() / "models")
    results = []
    with tempfile.TemporaryDirectory(prefix="llama-throughput-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        servers: list[LocalBackend] = [
            LocalBackend(model, QWEN_CODER_05B.alias, n_ctx=args.n_ctx, threads=args.threads,
                         log_file=logs / "llama-cpp-python-server.log"),
            LlamaServer(binary, model, QWEN_CODER_05B.alias, n_ctx=args.n_ctx,
                        slots=args.slots, threads=args.threads,
                        log_file=logs / "llama-server.log")]
        for backend in servers:
            results.append(run_server(backend, args, work))
    print_tables(results, args)
    print(f"\nmachine: {os.cpu_count()} cores; threads {args.threads}; llama-server slots "
          f"{args.slots} x {args.n_ctx} tokens; versions: {versions}")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "servers": results},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
