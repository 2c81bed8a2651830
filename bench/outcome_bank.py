"""Record the outcome bank: a real model's answers to the project's task suites, kept so that
any strategy and budget can later be replayed without the model (``ttc-router sim --bank``).

Per run (one item, and for HotpotQA one number of searches: 0, 1 or 3) it records 8 samples at
temperature 0.7 (seeds recorded, 512 tokens of room) and one greedy chain (temperature 0, 2,048
tokens of room: one long chain, the other side of the vote-or-chain question), each with

- ``tokens``: the completion split into its token pieces, so that a budget of ``b`` tokens
  replays exactly as the first ``b`` pieces (finish ``length``);
- ``lp``: each token's log-probability in centi-nats (``round(100 * logprob)``);
- ``lp_mean``: the mean token log-probability (nats);
- ``conf_min``, ``conf_bottom10``, ``conf_mean``: DeepConf's confidences (Fu et al. 2025, "Deep
  Think with Confidence"): token confidence ``C_i = -(1/k) sum_j log P_i(j)`` over the top
  ``k = 20`` tokens, group confidence the mean of ``C_i`` over a sliding window of 32 tokens
  (the paper uses 2,048 for long traces; these chains are a few hundred tokens), then the
  lowest group, the mean of the lowest 10 % of groups, and the mean over the whole trace;
- ``answer`` (``router_models.tasks.checkers.parsed``), ``correct``, ``finish_reason``;
- the run's ``prompt_tokens`` (from the server's usage).

The prompt is the one the evaluation harness sends (``TaskItem.prompt()`` as the only user
message). For HotpotQA with searches, retrieval is BM25 (the project's local tantivy index,
``service.search.local``) over the HotpotQA corpus; the hits are put before the question as the
search strategy quotes them (``service.strategies.search.data_block``). The schedule is fixed,
not chosen by the model: search 1 queries the question; each later search queries the question
plus the title of the previous search's best hit (the bridge entity of a two-hop question), and
returns the top 3 documents not already retrieved. The document ids and queries are recorded.

Items are recorded round-robin over the suites (item 0 of each suite, then item 1, ...), so a
partial bank stays balanced. The bank is append-only JSONL, one line per run, sharded by suite
and part (each file under 2 MB), plus ``bank.json`` (model file and SHA-256, quantization,
server version and arguments, sampling settings, prompt format, dates). A run already in the
bank is skipped, so the command resumes where it stopped.

Usage::

    python -m bench.outcome_bank                   # starts the llama-server the project builds
    python -m bench.outcome_bank --server-binary PATH/llama-server      # or this one
    python -m bench.outcome_bank --url http://127.0.0.1:8080/v1         # any OpenAI server
        [--bank router_models/data/bank] [--items 150] [--suites gsm8k,svamp,...]
        [--samples 8] [--max-tokens 512] [--greedy-max-tokens 2048] [--concurrency 8]

The server must return token log-probabilities (``logprobs``/``top_logprobs``), as
llama.cpp's ``llama-server`` does.
"""

from __future__ import annotations

import argparse
import codecs
import concurrent.futures as futures
import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.options import positive_int
from router_models.tasks import SuiteUnavailable, TaskItem, default_data_dir, load_suite
from router_models.tasks.checkers import is_correct, parsed

# The bank ships inside the package, where ``ttc-router sim --bank`` finds it by default.
DEFAULT_BANK = Path(__file__).resolve().parents[1] / "router_models" / "data" / "bank"
SUITES = ("gsm8k", "svamp", "mmlu", "commonsenseqa", "strategyqa", "hotpotqa",
          "graph_connectivity", "arithmetic_chain")
SEARCH_COUNTS = (0, 1, 3)  # HotpotQA: runs without retrieval, with one search, with three
SEARCH_TOP_K = 3           # documents per search, the gateway's default search_top_k
SEARCH_RESULT_CHARS = 1200  # per document, the gateway's default search_result_chars
SEARCH_NONCE = "bank"      # the data-block marker nonce (the gateway draws a random one)
TOP_LOGPROBS = 20          # DeepConf's k
CONF_WINDOW = 32           # tokens per DeepConf group
SHARD_BYTES = 1_800_000    # a new part starts past this size: every file stays under 2 MB
GENERATED_LIMIT = 10_000


@dataclass(frozen=True)
class Run:
    """One item to record: the item, how many searches feed its prompt, and the prompt."""

    item: TaskItem
    searches: int
    prompt: str
    queries: tuple[str, ...] = ()
    docs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Unique within the bank: suite family, item id and searches."""
        return f"{bank_suite(self.item)}/{self.item.item_id}/{self.searches}"

    def seeds(self, samples: int) -> list[int]:
        """The samples' seeds: a stable base from the key, plus the sample's index."""
        base = zlib.crc32(self.key.encode()) & 0x3FFFFFFF
        return [base + i for i in range(samples)]


def bank_suite(item: TaskItem) -> str:
    """The bank's name for an item's suite (``mmlu:anatomy`` -> ``mmlu``)."""
    return item.suite.partition(":")[0]


# ---------------------------------------------------------------------------- token pieces


def pieces_from_logprobs(content: list[dict[str, Any]]) -> list[str]:
    """The text of each token from llama-server's ``logprobs.content``, decoded from the
    tokens' ``bytes`` so that a character split across tokens is given to the token that
    completes it (the others get ""); ``"".join`` of the result is the completion text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for entry in content:
        raw = entry.get("bytes")
        if isinstance(raw, list):
            out.append(decoder.decode(bytes(raw)))
        else:
            out.append(decoder.decode(str(entry.get("token", "")).encode()))
    tail = decoder.decode(b"", final=True)
    if tail and out:
        out[-1] += tail
    return out


def deepconf(top: list[list[float]], window: int = CONF_WINDOW) -> dict[str, float]:
    """DeepConf's confidences (Fu et al. 2025) from each token's top-k log-probabilities:
    token confidence ``-mean(top-k logprobs)``; group confidence the mean over a sliding
    window of ``window`` tokens (the whole trace when shorter); returns the lowest group
    (``conf_min``), the mean of the lowest 10 % of groups (``conf_bottom10``) and the mean
    token confidence (``conf_mean``), rounded to 3 decimals. All 0.0 for an empty trace."""
    token_conf = [-sum(lps) / len(lps) for lps in top if lps]
    if not token_conf:
        return {"conf_min": 0.0, "conf_bottom10": 0.0, "conf_mean": 0.0}
    width = min(window, len(token_conf))
    running = sum(token_conf[:width])
    groups = [running / width]
    for i in range(width, len(token_conf)):
        running += token_conf[i] - token_conf[i - width]
        groups.append(running / width)
    lowest = sorted(groups)[:max(1, len(groups) // 10)]
    return {"conf_min": round(min(groups), 3),
            "conf_bottom10": round(sum(lowest) / len(lowest), 3),
            "conf_mean": round(sum(token_conf) / len(token_conf), 3)}


def sample_record(item: TaskItem, choice: dict[str, Any], seed: int | None,
                  temperature: float) -> dict[str, Any]:
    """One recorded sample from an OpenAI chat choice carrying ``logprobs.content``.

    Raises:
        ValueError: the choice has no token log-probabilities.
    """
    content = (choice.get("logprobs") or {}).get("content")
    text = (choice.get("message") or {}).get("content") or ""
    if not isinstance(content, list) or (text and not content):
        raise ValueError("the server returned no token logprobs; the bank needs them")
    tokens = pieces_from_logprobs(content)
    lps = [float(entry.get("logprob", 0.0)) for entry in content]
    top = [[float(t.get("logprob", 0.0)) for t in entry.get("top_logprobs") or []]
           for entry in content]
    answer = parsed(item, text)
    record: dict[str, Any] = {
        "seed": seed, "temperature": temperature,
        "finish_reason": choice.get("finish_reason"), "completion_tokens": len(tokens),
        "answer": answer, "correct": bool(answer is not None and is_correct(item, answer)),
        "lp_mean": round(sum(lps) / len(lps), 4) if lps else 0.0, **deepconf(top),
        "tokens": tokens, "lp": [round(100 * v) for v in lps]}
    if "".join(tokens) != text:
        record["text"] = text  # the pieces do not rebuild the text: keep it, replay uses it
    return record


# ----------------------------------------------------------------------------- retrieval


class Retriever:
    """BM25 retrieval over the HotpotQA corpus with the project's local index (tantivy),
    built once in a temporary folder."""

    def __init__(self, corpus: Path):
        from service.search.documents import Document
        from service.search.local import LocalIndex

        self._dir = tempfile.TemporaryDirectory(prefix="bank-index-")
        self.index = LocalIndex(Path(self._dir.name))
        docs = json.loads(corpus.read_text())
        self.index.add(Document(id=title, title=title, text="".join(sentences))
                       for title, sentences in docs.items())

    def schedule(self, question: str, searches: int) -> tuple[list[str], list[list[Any]]]:
        """The fixed search schedule (see the module docstring): the queries and, per
        query, its hits not already retrieved (at most ``SEARCH_TOP_K``)."""
        queries: list[str] = []
        results: list[list[Any]] = []
        seen: set[str] = set()
        query = question
        for _ in range(searches):
            hits = [h for h in self.index.search(query, SEARCH_TOP_K + len(seen))
                    if h.id not in seen][:SEARCH_TOP_K]
            seen.update(h.id for h in hits)
            queries.append(query)
            results.append(hits)
            if hits:
                query = f"{question} {hits[0].title}"
        return queries, results


def search_prompt(item: TaskItem, queries: list[str], results: list[list[Any]]) -> str:
    """The user message of a run with searches: each search's results quoted as the search
    strategy quotes them, then the item's prompt."""
    from service.strategies.search import data_block

    blocks = [data_block(q, hits, SEARCH_NONCE, SEARCH_RESULT_CHARS)
              for q, hits in zip(queries, results, strict=True)]
    return "\n\n".join([*blocks, item.prompt()])


# -------------------------------------------------------------------------------- the plan


def plan_runs(suites: list[str], items: int, data_dir: Path | None) -> list[Run]:
    """The runs in recording order: round-robin over suites, ``items`` items each (HotpotQA
    items give one run per search count). Suites whose data is absent are skipped with a
    message."""
    per_suite: list[list[Run]] = []
    retriever: Retriever | None = None
    for name in suites:
        try:
            loaded = load_suite(name, limit=items, data_dir=data_dir)
        except SuiteUnavailable as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        runs: list[Run] = []
        for item in loaded:
            if name != "hotpotqa":
                runs.append(Run(item, 0, item.prompt()))
                continue
            if retriever is None:
                folder = data_dir or default_data_dir()
                assert folder is not None
                retriever = Retriever(folder / "hotpotqa" / "hotpotqa_train_corpus.json")
            for count in SEARCH_COUNTS:
                queries, results = retriever.schedule(item.question, count)
                runs.append(Run(item, count,
                                search_prompt(item, queries, results) if count else
                                item.prompt(), tuple(queries),
                                tuple(h.id for hits in results for h in hits)))
        per_suite.append(runs)
    ordered: list[Run] = []
    for rank in range(max((len(r) for r in per_suite), default=0)):
        ordered += [runs[rank] for runs in per_suite if rank < len(runs)]
    return ordered


# ------------------------------------------------------------------------------- the bank


@dataclass
class Bank:
    """The bank folder: the keys already recorded, and appending runs to shards."""

    path: Path
    done: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> None:
        """Read every shard's keys; a shard whose last line is incomplete (a killed run) is
        cut back to its last complete line."""
        self.path.mkdir(parents=True, exist_ok=True)
        for shard in sorted(self.path.glob("*.jsonl")):
            data = shard.read_bytes()
            good = data.rfind(b"\n") + 1
            if good != len(data):
                with shard.open("r+b") as handle:
                    handle.truncate(good)
            for line in data[:good].splitlines():
                if line.strip():
                    self.done.add(json.loads(line)["key"])

    def shard_for(self, suite: str) -> Path:
        """The part of ``suite`` to append to: the last one, or a new one when it is full."""
        parts = sorted(self.path.glob(f"{suite}-*.jsonl"))
        if parts and parts[-1].stat().st_size < SHARD_BYTES:
            return parts[-1]
        number = int(parts[-1].stem.rsplit("-", 1)[1]) + 1 if parts else 1
        return self.path / f"{suite}-{number:03d}.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        """Append one run as one line (written whole, then flushed)."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self.lock:
            with self.shard_for(record["suite"]).open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
            self.done.add(record["key"])


# ------------------------------------------------------------------------------ the server


def server_version(binary: Path) -> str:
    """``llama-server --version``'s version line, e.g. ``version: 1 (4227c9b)``."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return " | ".join(ln.strip() for ln in lines if "version" in ln or "built" in ln)


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


class Server:
    """llama-server as a child process: ``-c CTX -np SLOTS`` on a free port."""

    def __init__(self, binary: Path, model: Path, slots: int, ctx: int, log: Path,
                 threads: int | None):
        from service.local_backend import _die_with_parent, free_port

        self.port = free_port()
        self.args = ["-m", str(model), "-c", str(ctx), "-np", str(slots),
                     "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]
        if threads:
            self.args += ["-t", str(threads)]
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("ab")
        # The server dies with the recorder, even when the recorder is killed outright.
        self.process = subprocess.Popen([str(binary), *self.args], stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"llama-server exited ({self.process.returncode}); see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code \
                        == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"llama-server did not come up in 300 s; see {log}")

    def quantization(self) -> str | None:
        """The model's file type as llama.cpp's loader logs it (``Q4_K - Medium``, ...)."""
        found = re.findall(r"file type\s*=\s*(.+)", self.log.read_text(errors="replace"))
        return found[-1].strip() if found else None

    def stop(self) -> None:
        """Stop the child and close its log."""
        from service.local_backend import stop_process

        stop_process(self.process)
        self._log.close()


# ------------------------------------------------------------------------------ recording


def chat(client: httpx.Client, url: str, prompt: str, *, temperature: float, seed: int | None,
         max_tokens: int, attempts: int = 4) -> dict[str, Any]:
    """One chat completion with token logprobs, retried on connection errors and 5xx.

    Raises:
        httpx.HTTPError: still failing after ``attempts`` tries.
    """
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}], "temperature": temperature,
        "max_tokens": max_tokens, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    if seed is not None:
        body["seed"] = seed
    for attempt in range(attempts):
        try:
            reply = client.post(f"{url}/chat/completions", json=body)
            reply.raise_for_status()
            return reply.json()
        except httpx.HTTPError:
            if attempt == attempts - 1:
                raise
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def record_run(client: httpx.Client, url: str, run: Run, pool: futures.Executor, *,
               samples: int, temperature: float, max_tokens: int,
               greedy_max_tokens: int | None = None) -> dict[str, Any]:
    """Record one run: ``samples`` seeded samples of at most ``max_tokens`` tokens and one
    greedy chain of at most ``greedy_max_tokens`` (None: ``max_tokens``), concurrently."""
    seeds = run.seeds(samples)
    jobs = [pool.submit(chat, client, url, run.prompt, temperature=temperature, seed=s,
                        max_tokens=max_tokens) for s in seeds]
    jobs.append(pool.submit(chat, client, url, run.prompt, temperature=0.0, seed=None,
                            max_tokens=greedy_max_tokens or max_tokens))
    replies = [job.result() for job in jobs]
    out = [sample_record(run.item, r["choices"][0], s, temperature)
           for r, s in zip(replies[:-1], seeds, strict=True)]
    greedy = sample_record(run.item, replies[-1]["choices"][0], None, 0.0)
    prompt_tokens = int((replies[-1].get("usage") or {}).get("prompt_tokens") or 0)
    item = run.item
    record: dict[str, Any] = {
        "key": run.key, "suite": bank_suite(item), "item_suite": item.suite,
        "item_id": item.item_id, "family": item.family, "difficulty": item.difficulty,
        "kind": item.kind, "question": item.question, "answer": item.answer,
        "choices": list(item.choices), "searches": run.searches,
        "prompt": run.prompt, "prompt_tokens": prompt_tokens,
        "recorded": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "greedy": greedy, "samples": out}
    if run.searches:
        record["queries"] = list(run.queries)
        record["docs"] = list(run.docs)
        # The replay answers a search strategy's request to search with the recorded query;
        # the model's tokens for that turn are its tokenizer's pieces of the line.
        record["search_turns"] = [tokenize(client, url, f"SEARCH: {q}") for q in run.queries]
    return record


def tokenize(client: httpx.Client, url: str, text: str) -> list[str] | None:
    """``text``'s token pieces from llama-server's ``/tokenize`` (``with_pieces``), or None
    when the server has no such endpoint."""
    base = url[:-3] if url.endswith("/v1") else url
    try:
        reply = client.post(f"{base}/tokenize", json={"content": text, "with_pieces": True})
        reply.raise_for_status()
        tokens = reply.json()["tokens"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for token in tokens:
        piece = token.get("piece", "") if isinstance(token, dict) else ""
        raw = bytes(piece) if isinstance(piece, list) else str(piece).encode()
        pieces.append(decoder.decode(raw))
    return pieces


def write_meta(bank: Path, meta: dict[str, Any]) -> None:
    """Merge ``meta`` into ``bank.json`` (dates of every recording session are kept)."""
    path = bank / "bank.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    sessions = old.get("sessions", [])
    sessions.append(meta.pop("session"))
    old.update(meta)
    old["sessions"] = sessions
    # Written beside and renamed over: a recorder stopped mid-write leaves the old file whole.
    fresh = path.with_suffix(".json.tmp")
    fresh.write_text(json.dumps(old, indent=1, ensure_ascii=False) + "\n")
    os.replace(fresh, path)


def _sampling_temperature(text: str) -> float:
    """A temperature in (0, 2]: 0 would record the greedy chain again as every sample."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number expected, not {text!r}") from None
    if not 0 < value <= 2:
        raise argparse.ArgumentTypeError(f"above 0 and at most 2 expected, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(
        "Record the outcome bank: a real model's answers to the project's task suites, kept so "
        "that any strategy and budget can later be replayed without the model (ttc-router sim "
        "--bank). Resumable: runs already in the bank are skipped."))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="an OpenAI-compatible base URL ending in /v1")
    where.add_argument("--server-binary", type=Path,
                       help="start this llama-server (default: the one the project builds, "
                            "python -m service.llama_build)")
    parser.add_argument("--model", type=Path,
                        help="the GGUF file (default: the embedded Qwen2.5-Coder-0.5B, "
                             "assembled under the data directory)")
    parser.add_argument("--bank", type=Path, default=DEFAULT_BANK,
                        help="bank folder, created or resumed (default: the shipped "
                             "router_models/data/bank)")
    parser.add_argument("--data", type=Path, default=None, help="benchmark data folder")
    parser.add_argument("--suites", default=",".join(SUITES),
                        help=f"comma-separated suites (default {','.join(SUITES)})")
    parser.add_argument("--items", type=positive_int, default=150,
                        help="items per suite (default 150)")
    parser.add_argument("--samples", type=positive_int, default=8,
                        help="sampled chains per run (default 8)")
    parser.add_argument("--temperature", type=_sampling_temperature, default=0.7,
                        help="the samples' temperature, above 0 and at most 2 (default 0.7)")
    parser.add_argument("--max-tokens", type=positive_int, default=512,
                        help="tokens per sample (default 512)")
    # One long chain is what the literature compares votes with on compositional tasks (Let
    # Me Think!); at 512 tokens the cap cut 75% of the greedy chains on graph connectivity.
    parser.add_argument("--greedy-max-tokens", type=positive_int, default=2048,
                        help="tokens of the greedy chain (default 2048; bench/long_chains.py "
                             "extends chains recorded with less)")
    parser.add_argument("--concurrency", type=positive_int, default=8,
                        help="requests in flight (default 8)")
    parser.add_argument("--ctx", type=positive_int, default=32768,
                        help="llama-server -c (all slots)")
    # One thread: on a shared machine two spinning llama.cpp threads that wait for each other
    # at every barrier ran at 0.8 tokens/s (8 requests at a time), one thread at 4.5-5.6.
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="llama-server -t (default 1)")
    parser.add_argument("--log", type=Path, default=Path("/tmp/outcome-bank-server.log"),
                        help="llama-server's log (default /tmp/outcome-bank-server.log)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.url is None and args.server_binary is None:
        from service.llama_build import find_server

        args.server_binary = find_server()
        if args.server_binary is None:
            raise SystemExit("no llama-server: build it with `python -m service.llama_build`, "
                             "or give --server-binary PATH or --url URL")
    # SIGTERM (kill PID) ends the recording like Ctrl-C: the server is stopped, and the runs
    # already written stay in the bank for the next start to skip.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bank = Bank(args.bank)
    bank.load()
    runs = [r for r in plan_runs(args.suites.split(","), args.items, args.data)
            if r.key not in bank.done]
    print(f"{len(bank.done)} runs in the bank, {len(runs)} to record", file=sys.stderr)
    if not runs:
        return
    server: Server | None = None
    session: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samples": args.samples, "temperature": args.temperature,
        "max_tokens": args.max_tokens, "greedy_max_tokens": args.greedy_max_tokens,
        "concurrency": args.concurrency}
    meta: dict[str, Any] = {
        "format": 1, "top_logprobs": TOP_LOGPROBS, "conf_window": CONF_WINDOW,
        "prompt_format": "one user message: TaskItem.prompt() (question, blank line, "
                         "instruction); HotpotQA with searches: the data blocks of "
                         "service.strategies.search.data_block (nonce 'bank'), then the prompt",
        "search": {"engine": "tantivy BM25 (service.search.local)", "top_k": SEARCH_TOP_K,
                   "result_chars": SEARCH_RESULT_CHARS, "counts": list(SEARCH_COUNTS),
                   "schedule": "query 1 = question; query j = question + title of the best "
                               "hit of query j-1; only documents not already retrieved"},
        "seeds": "crc32(key) & 0x3FFFFFFF + sample index; greedy: temperature 0, no seed"}
    if args.server_binary:
        model = args.model
        if model is None:
            from service.local_backend import QWEN_CODER_05B, model_path
            from service.settings import load_settings

            model = model_path(QWEN_CODER_05B, Path(load_settings().data_dir) / "models")
        server = Server(args.server_binary, model, args.concurrency, args.ctx, args.log,
                        args.threads)
        url = server.url
        meta.update({"model_file": model.name, "model_sha256": sha256(model),
                     "quantization": server.quantization(),
                     "server": f"llama.cpp llama-server {server_version(args.server_binary)}",
                     "server_args": [a if a != str(model) else model.name
                                     for a in server.args if a]})
        session["server_args"] = meta["server_args"]
        session["server"] = meta["server"]  # a resumed recording may use another build
    else:
        url = args.url.rstrip("/")
        session["url"] = url
    meta["session"] = session
    write_meta(args.bank, meta)
    tokens = 0
    started = time.monotonic()
    try:
        with httpx.Client(timeout=httpx.Timeout(7200.0, connect=10.0)) as client, \
                futures.ThreadPoolExecutor(args.concurrency) as pool, \
                futures.ThreadPoolExecutor(max(2, args.concurrency // 4)) as runners, \
                tqdm(total=len(runs), unit="run", smoothing=0.05) as bar:
            # A few runs in flight at once keep every server slot busy between runs.
            pending: set[futures.Future[dict[str, Any]]] = set()
            queue = iter(runs)

            def refill() -> None:
                for run in queue:
                    pending.add(runners.submit(
                        record_run, client, url, run, pool, samples=args.samples,
                        temperature=args.temperature, max_tokens=args.max_tokens,
                        greedy_max_tokens=args.greedy_max_tokens))
                    if len(pending) >= 3:
                        break

            refill()
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for job in done:
                    pending.discard(job)
                    record = job.result()
                    bank.append(record)
                    tokens += record["greedy"]["completion_tokens"] + sum(
                        s["completion_tokens"] for s in record["samples"])
                    bar.update(1)
                    rate = tokens / (time.monotonic() - started)
                    bar.set_postfix(key=record["key"], tok_s=f"{rate:.1f}")
                refill()
    finally:
        if server is not None:
            server.stop()
        elapsed = time.monotonic() - started
        print(f"{tokens} completion tokens in {elapsed:.0f} s: "
              f"{tokens / max(elapsed, 1e-9):.1f} tokens/s", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
