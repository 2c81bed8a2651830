"""Record long greedy chains: the bank's greedy chains that its cap cut, recorded again with
more room, so that "one long chain" is measured at the lengths the literature means.

The outcome bank records every chain with the same cap (512 tokens by default). On graph
connectivity that cap cut 75% of the greedy chains, so the bank could not say whether one
long chain beats a vote there, which is the compositional task on which it should
(Mirtaheri et al. 2025, "Let Me Think!"). This command asks the same model again, at
temperature 0 with ``--max-tokens`` room (2,048 by default), for every run whose greedy chain
finished ``length`` below that room, and appends each as one line of
``<bank>/long-chains-NNN.jsonl`` (``key``, ``max_tokens``, ``recorded``, ``server``,
``same_until``, ``greedy``; each file under 2 MB). ``router_models.bank.Bank.load`` puts it in
place of the run's greedy chain. ``same_until`` counts the leading tokens it shares with the
chain it replaces: greedy decoding on a CPU server that batches is not reproducible (another
thread count or batch sums the logits in another order, and a near tie flips), so a long chain
is another greedy chain of the same model, not the old one continued; the median is printed.
Resumable: runs already extended are skipped.

``--report`` records nothing: over the runs that have a long chain, per suite, it sets the
long chain against the chain the cap cut and against votes of the recorded samples (cut at
512 tokens), paired on the same items (McNemar's exact p, ``bench.bank_findings.paired``).

Usage::

    python -m bench.long_chains --url http://127.0.0.1:8080/v1 [--suites graph_connectivity]
        [--max-tokens 2048] [--concurrency 4] [--bank router_models/data/bank]
    python -m bench.long_chains          # starts the llama-server the project builds
    python -m bench.long_chains --report [--bank PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime as dt
import json
import os
import statistics
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.bank_figures import SAMPLE_TOKENS, outcome, spent
from bench.bank_findings import paired
from bench.options import positive_int
from bench.outcome_bank import (
    DEFAULT_BANK,
    SHARD_BYTES,
    Server,
    chat,
    sample_record,
    server_version,
)
from router_models.bank import LONG_CHAINS, Bank, BankRun


def runs_to_extend(bank: Bank, suites: set[str] | None, max_tokens: int,
                   done: set[str]) -> list[BankRun]:
    """The runs whose greedy chain the recording's cap cut below ``max_tokens`` tokens, of
    ``suites`` (None: all), not yet in ``done``, in bank order."""
    return [run for run in bank.runs
            if (suites is None or run.suite in suites) and run.key not in done
            and run.greedy.finish_reason == "length" and len(run.greedy.tokens) < max_tokens]


class LongChains:
    """The ``long-chains-NNN.jsonl`` files of a bank folder: the keys done, appending lines.
    Opening it cuts a file back to its last whole line (a run killed mid-line), so the next
    line appended starts on a line of its own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.done: set[str] = set()
        for path in self.files():
            data = path.read_bytes()
            whole = data.rfind(b"\n") + 1
            if whole != len(data):  # a line cut by a killed run: dropped, recorded again
                with path.open("r+b") as handle:
                    handle.truncate(whole)
            for line in data[:whole].decode("utf-8").splitlines():
                if line.strip():
                    self.done.add(json.loads(line)["key"])

    def files(self) -> list[Path]:
        """The files in order."""
        return sorted(self.folder.glob(f"{LONG_CHAINS}*.jsonl"))

    def append(self, record: dict[str, Any]) -> None:
        """Append one line, starting a new file past ``SHARD_BYTES``."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self.lock:
            files = self.files()
            path = files[-1] if files and files[-1].stat().st_size < SHARD_BYTES else (
                self.folder / f"{LONG_CHAINS}{len(files) + 1:03d}.jsonl")
            with path.open("a", encoding="utf-8") as out:
                out.write(line)
            self.done.add(record["key"])


def same_until(old: Sequence[str], new: Sequence[str]) -> int:
    """How many leading token pieces ``old`` and ``new`` share."""
    shorter = min(len(old), len(new))
    return next((i for i in range(shorter) if old[i] != new[i]), shorter)


def record_long_chain(client: httpx.Client, url: str, run: BankRun, max_tokens: int,
                      server: str = "") -> dict[str, Any]:
    """One run's greedy chain with ``max_tokens`` of room, as a ``long-chains`` line
    (``server``: what answered, for the record).

    Raises:
        httpx.HTTPError: the server kept failing (``outcome_bank.chat`` retries).
        ValueError: the reply had no token log-probabilities.
    """
    reply = chat(client, url, run.prompt, temperature=0.0, seed=None, max_tokens=max_tokens)
    greedy = sample_record(run.item, reply["choices"][0], None, 0.0)
    return {"key": run.key, "max_tokens": max_tokens,
            "recorded": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "server": server, "same_until": same_until(run.greedy.tokens, greedy["tokens"]),
            "greedy": greedy}


REPORT_ARMS = ("cut chain", "long chain", "vote 4", "vote 8")


def report_rows(recorded: Bank, extended: Bank, keys: set[str]) -> list[dict[str, Any]]:
    """Per suite with long chains, then ``all``: the runs' accuracy (%) and mean completion
    tokens per arm (the chain the cap cut, the long chain, votes of the first 4 and of all 8
    recorded samples), and the long chain minus each other arm, paired (``Paired``).

    Args:
        recorded: the bank as recorded (``Bank.load(path, long_chains=False)``).
        extended: the same bank with its long chains (``Bank.load(path)``).
        keys: the runs that have a long chain (``LongChains.done``).
    """
    longer = {run.key: run for run in extended.runs if run.key in keys}
    by_suite: dict[str, list[tuple[BankRun, BankRun]]] = {}
    for run in recorded.runs:
        if run.key in longer and run.searches == 0:
            by_suite.setdefault(run.suite, []).append((run, longer[run.key]))
    groups = dict(sorted(by_suite.items()))
    if len(groups) > 1:
        groups["all"] = [pair for pairs in by_suite.values() for pair in pairs]
    rows = []
    for suite, pairs in groups.items():
        right = {arm: [_right(old, new, arm) for old, new in pairs] for arm in REPORT_ARMS}
        tokens = {arm: statistics.fmean(_tokens(old, new, arm) for old, new in pairs)
                  for arm in REPORT_ARMS}
        rows.append({"suite": suite, "n": len(pairs),
                     "accuracy": {a: 100 * sum(r) / len(r) for a, r in right.items()},
                     "tokens": tokens,
                     "long_minus": {a: paired(right["long chain"], right[a])
                                    for a in REPORT_ARMS if a != "long chain"}})
    return rows


def _right(cut: BankRun, extended: BankRun, arm: str) -> bool:
    if arm == "cut chain":
        return cut.greedy.correct
    if arm == "long chain":
        return extended.greedy.correct
    return bool(outcome(cut, arm, SAMPLE_TOKENS * int(arm.split()[1])))


def _tokens(cut: BankRun, extended: BankRun, arm: str) -> int:
    if arm == "cut chain":
        return len(cut.greedy.tokens)
    if arm == "long chain":
        return len(extended.greedy.tokens)
    return spent(cut, arm, SAMPLE_TOKENS * int(arm.split()[1]))


def render_report(rows: Sequence[dict[str, Any]]) -> str:
    """``report_rows`` as a Markdown table: accuracy % (mean tokens) per arm, then the long
    chain minus the vote of 8 and minus the cut chain in points (paired 95%), McNemar p."""
    head = ("| suite | n | " + " | ".join(REPORT_ARMS)
            + " | long chain - vote 8 | long chain - cut chain |")
    lines = [head, "| --- | ---: |" + " ---: |" * len(REPORT_ARMS) + " --- | --- |"]
    for row in rows:
        cells = [f"{row['accuracy'][a]:.1f} ({row['tokens'][a]:.0f} t)" for a in REPORT_ARMS]
        lines.append(f"| {row['suite']} | {row['n']} | " + " | ".join(cells) + " | "
                     + f"{row['long_minus']['vote 8'].render()} | "
                     + f"{row['long_minus']['cut chain'].render()} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="an OpenAI-compatible base URL ending in /v1 (the "
                                     "server that recorded the bank, for chains that match)")
    where.add_argument("--server-binary", type=Path,
                       help="start this llama-server (default: the one the project builds)")
    parser.add_argument("--bank", type=Path, default=DEFAULT_BANK)
    parser.add_argument("--suites", default="graph_connectivity",
                        help="comma-separated suites, or 'all' (default graph_connectivity)")
    parser.add_argument("--max-tokens", type=positive_int, default=2048,
                        help="room of each chain (default 2048)")
    parser.add_argument("--concurrency", type=positive_int, default=4)
    parser.add_argument("--report", action="store_true",
                        help="record nothing: compare the long chains recorded so far with "
                             "the cut chains and with votes, paired")
    # One thread: on a machine shared with other work, llama.cpp's threads wait on each other
    # whenever another process holds a core (generation fell to 0.5 tokens/s per slot at -t 2
    # beside tests on 2 cores).
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="llama-server -t when this command starts it (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        rows = report_rows(Bank.load(args.bank, long_chains=False), Bank.load(args.bank),
                           LongChains(args.bank).done)
        print(render_report(rows) if rows else "no long chains in this bank yet")
        return
    bank = Bank.load(args.bank)
    store = LongChains(args.bank)
    suites = None if args.suites == "all" else set(args.suites.split(","))
    todo = runs_to_extend(bank, suites, args.max_tokens, store.done)
    print(f"{len(store.done)} long chains in the bank, {len(todo)} to record", file=sys.stderr)
    if not todo:
        return
    server: Server | None = None
    if args.url is None:
        from service.llama_build import find_server
        from service.local_backend import QWEN_CODER_05B, model_path
        from service.settings import load_settings

        binary = args.server_binary or find_server()
        if binary is None:
            raise SystemExit("no llama-server: build it with `python -m service.llama_build`, "
                             "or give --server-binary PATH or --url URL")
        model = model_path(QWEN_CODER_05B, Path(load_settings().data_dir) / "models")
        server = Server(binary, model, args.concurrency, 4096 * args.concurrency,
                        Path("/tmp/long-chains-server.log"), args.threads)
        url = server.url
        served = " ".join([f"llama.cpp llama-server {server_version(binary)}",
                           *(a if a != str(model) else model.name for a in server.args)])
    else:
        url = served = args.url.rstrip("/")
    shared: list[int] = []
    finished = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(7200.0, connect=10.0)) as client, \
                futures.ThreadPoolExecutor(args.concurrency) as pool, \
                tqdm(total=len(todo), unit="chain") as bar:
            jobs = [pool.submit(record_long_chain, client, url, run, args.max_tokens, served)
                    for run in todo]
            for job in futures.as_completed(jobs):
                record = job.result()
                store.append(record)
                shared.append(record["same_until"])
                finished += record["greedy"]["finish_reason"] == "stop"
                bar.update(1)
                bar.set_postfix(key=record["key"], finished=finished)
    finally:
        if server is not None:
            server.stop()
    if shared:
        print(f"{finished} of {len(shared)} finished within {args.max_tokens} tokens; they "
              f"share a median of {statistics.median(shared):g} leading tokens with the chains "
              "they replace", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
