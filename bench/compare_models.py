"""Compare the embedded backend's candidate models: speed and answer quality on this machine.

For each local model (Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M) the script assembles the
GGUF with ``service.local_backend.model_path``, starts llama-cpp-python's server with
``LocalBackend``, and measures over the OpenAI API (plain urllib, non-streaming):

* load seconds: from ``LocalBackend.start()`` until the server lists its model;
* prompt processing: a ``/v1/completions`` request with ``max_tokens=1`` on a fresh prompt of
  about 200 tokens; its wall time is the time to read the prompt (plus one sampled token), and
  prompt_tokens / that time is the rate;
* decode speed: the same prompt again with ``max_tokens=64``, temperature 0. llama.cpp keeps
  the previous prompt in its context, so this request decodes only; completion tokens (from
  ``usage``) / wall time is the decode rate. The median over ``--speed-prompts`` prompts is
  reported. Speed uses raw completions, not chat, so that a model without a chat template
  (the Gemma GGUF has none; llama-cpp-python then falls back to a llama-2 format and the base
  model stops at once) still produces tokens to time;
* quality: 12 short questions with checkable answers (arithmetic, capitals, yes/no, a one-step
  word problem), temperature 0, ``max_tokens=32``, asked twice: as chat turns over
  ``/v1/chat/completions`` (what the gateway serves: ``correct``) and as a raw
  ``Question: ...\\nAnswer:`` completion (``raw``), which shows what a base model knows without
  a chat template. Replies are scored on their first non-empty line: numbers by the last
  number on it, yes/no by its first word, capitals by the word appearing on it.

One warm-up request per model is sent first and not counted. On a 2-core machine anything else
running slows llama.cpp's threads badly, so before each model the script waits (up to
``--wait-idle`` seconds) for other processes to leave the CPU, and reports the share of all CPU
time that other processes used while it measured (``other CPU``; near 0% for clean figures).
Every child process is stopped in ``finally``.
Usage (from the repository root)::

    .venv/bin/python bench/compare_models.py [--data-dir DIR] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from service.local_backend import (
    GEMMA3_270M,
    QWEN_CODER_05B,
    LocalBackend,
    LocalModel,
    model_path,
)

MODELS: tuple[LocalModel, ...] = (QWEN_CODER_05B, GEMMA3_270M)

# Distinct openings so that each prompt is read cold by its first (max_tokens=1) request:
# llama.cpp reuses only the prefix shared with the previous request.
SPEED_TOPICS = (
    "how lighthouses guided ships before radio",
    "why the sky looks blue during the day",
    "how bread is made from flour, water and yeast",
    "the life cycle of a butterfly",
    "how a bicycle's gears make climbing hills easier",
)
SPEED_CONTEXT = (
    "The following notes were collected for a short article for a general audience. The "
    "article should be clear, accurate and friendly, avoid jargon where a plain word will do, "
    "and explain any technical term the first time it appears. Readers are curious adults "
    "who have no special training in the subject, so each step of the explanation should "
    "follow from the one before it, with a concrete example where that helps. The article "
    "will be printed in a weekend magazine next to a photograph, so it should also be "
    "pleasant to read aloud. Sentences should be of moderate length, and the tone should be "
    "warm without being silly. Facts should be the kind that a reader could check in an "
    "encyclopedia, and nothing should be exaggerated for effect. The editor has asked for a "
    "single flowing paragraph rather than a list, beginning with a sentence that draws the "
    "reader in and ending with a sentence that leaves them with something to think about."
)


def speed_prompt(topic: str) -> str:
    return (f"Article topic: {topic}.\n\n{SPEED_CONTEXT}\n\n"
            f"Here is the paragraph about {topic}:\n\n")

NUMBER = "number"
YESNO = "yesno"
WORD = "word"

# (question, kind, expected answer)
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("What is 7+5? Answer with just the number.", NUMBER, "12"),
    ("What is 9 times 6? Answer with just the number.", NUMBER, "54"),
    ("What is 100 minus 37? Answer with just the number.", NUMBER, "63"),
    ("What is 48 divided by 8? Answer with just the number.", NUMBER, "6"),
    ("What is the capital of France? Answer with just the city name.", WORD, "paris"),
    ("What is the capital of Japan? Answer with just the city name.", WORD, "tokyo"),
    ("What is the capital of Italy? Answer with just the city name.", WORD, "rome"),
    ("Is the Sun a star? Answer yes or no.", YESNO, "yes"),
    ("Is 17 an even number? Answer yes or no.", YESNO, "no"),
    ("Do spiders have eight legs? Answer yes or no.", YESNO, "yes"),
    ("Tom has 3 apples and buys 4 more. How many apples does he have now? "
     "Answer with just the number.", NUMBER, "7"),
    ("A pen costs 2 dollars. How many dollars do 5 pens cost? "
     "Answer with just the number.", NUMBER, "10"),
)


def post(url: str, payload: dict[str, Any],
         timeout_s: float = 120.0) -> tuple[dict[str, Any], float]:
    """POST JSON; returns (reply JSON, wall seconds)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        data = json.loads(reply.read())
    return data, time.perf_counter() - started


def chat(backend: LocalBackend, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any], float]:
    """One chat turn at temperature 0; returns (reply text, usage, wall seconds)."""
    data, wall = post(backend.url + "/chat/completions", {
        "model": backend.alias, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0})
    return data["choices"][0]["message"].get("content") or "", data["usage"], wall


def complete(backend: LocalBackend, prompt: str, max_tokens: int,
             stop: list[str] | None = None) -> tuple[str, dict[str, Any], float]:
    """One raw text completion at temperature 0; returns (text, usage, wall seconds)."""
    payload: dict[str, Any] = {"model": backend.alias, "prompt": prompt,
                               "max_tokens": max_tokens, "temperature": 0}
    if stop:
        payload["stop"] = stop
    data, wall = post(backend.url + "/completions", payload)
    return data["choices"][0].get("text") or "", data["usage"], wall


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def own_jiffies(pid: int | None) -> int:
    """Clock ticks used by this script plus process ``pid`` (the server)."""
    times = os.times()
    ticks = round((times.user + times.system) * os.sysconf("SC_CLK_TCK"))
    if pid is not None:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


class OtherLoad:
    """The share of all CPU time that processes other than ours used while measuring.

    On a 2-core machine llama.cpp's threads slow down badly when anything else runs, so the
    figure is printed beside the results it qualifies.
    """

    def __init__(self, pid: int | None = None):
        self.pid = pid
        self.share: float | None = None
        self._start: tuple[int, int, int] | None = None

    def __enter__(self) -> OtherLoad:
        try:
            self._start = (*cpu_jiffies(), own_jiffies(self.pid))
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        try:
            busy, total = cpu_jiffies()
            own = own_jiffies(self.pid)
        except (OSError, ValueError, IndexError):
            return
        busy0, total0, own0 = self._start
        self.share = max(0.0, ((busy - busy0) - (own - own0)) / max(total - total0, 1))


def wait_for_idle(max_wait_s: float, threshold: float = 0.15) -> float | None:
    """Wait up to ``max_wait_s`` for other processes to use under ``threshold`` of the CPU;
    returns the last share measured (over one second)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        if load.share is None or load.share < threshold or time.monotonic() >= deadline:
            return load.share
        print(f"  other processes use {load.share:.0%} of the CPU; waiting ...", file=sys.stderr)


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def is_correct(kind: str, expected: str, text: str) -> bool:
    line = first_line(text).lower()
    if kind == NUMBER:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", line.replace(",", ""))
        return bool(numbers) and float(numbers[-1]) == float(expected)
    if kind == YESNO:
        words = re.findall(r"[a-z]+", line)
        return bool(words) and words[0] == expected
    return re.search(rf"\b{re.escape(expected)}\b", line) is not None


def measure_speed(backend: LocalBackend, topics: tuple[str, ...]) -> dict[str, Any]:
    runs = []
    for topic in topics:
        prompt = speed_prompt(topic)
        _, cold, pp_wall = complete(backend, prompt, max_tokens=1)
        _, warm, decode_wall = complete(backend, prompt, max_tokens=64)
        prompt_tokens = cold["prompt_tokens"]
        completion_tokens = warm["completion_tokens"]
        runs.append({
            "prompt_tokens": prompt_tokens,
            "prompt_s": round(pp_wall, 3),
            "prompt_tok_s": round(prompt_tokens / pp_wall, 1),
            "completion_tokens": completion_tokens,
            "decode_s": round(decode_wall, 3),
            "decode_tok_s": round(completion_tokens / decode_wall, 2),
        })
        print(f"  speed: {prompt_tokens} prompt tokens in {pp_wall:.2f}s; "
              f"{completion_tokens} tokens in {decode_wall:.2f}s "
              f"= {completion_tokens / decode_wall:.1f} tok/s", file=sys.stderr)
    return {
        "runs": runs,
        "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in runs),
        "prompt_s_median": statistics.median(r["prompt_s"] for r in runs),
        "prompt_tok_s_median": statistics.median(r["prompt_tok_s"] for r in runs),
    }


def measure_quality(backend: LocalBackend) -> dict[str, Any]:
    answers = []
    for question, kind, expected in QUESTIONS:
        text, _, wall = chat(backend, question, max_tokens=32)
        raw, _, raw_wall = complete(backend, f"Question: {question}\nAnswer:", max_tokens=32,
                                    stop=["\nQuestion:"])
        correct = is_correct(kind, expected, text)
        raw_correct = is_correct(kind, expected, raw)
        answers.append({"question": question, "expected": expected,
                        "chat_reply": text, "correct": correct, "wall_s": round(wall, 3),
                        "raw_reply": raw, "raw_correct": raw_correct,
                        "raw_wall_s": round(raw_wall, 3)})
        print(f"  chat {'ok ' if correct else 'BAD'} {first_line(text)[:24]!r:28} "
              f"raw {'ok ' if raw_correct else 'BAD'} {first_line(raw)[:24]!r:28} "
              f"<- {question[:34]!r}", file=sys.stderr)
    return {"correct": sum(a["correct"] for a in answers),
            "raw_correct": sum(a["raw_correct"] for a in answers),
            "total": len(answers), "answers": answers}


def run_model(model: LocalModel, data_dir: Path, threads: int | None, n_ctx: int,
              speed_prompts: int, wait_idle_s: float) -> dict[str, Any]:
    busy = wait_for_idle(wait_idle_s)
    if busy is not None:
        print(f"  other processes' CPU share before start: {busy:.0%}", file=sys.stderr)
    started = time.perf_counter()
    path = model_path(model, data_dir / "models")
    assemble_s = time.perf_counter() - started
    backend = LocalBackend(path, model.alias, n_ctx=n_ctx, threads=threads,
                           log_file=data_dir / "logs" / f"{model.alias}.log")
    try:
        started = time.perf_counter()
        backend.start()
        load_s = time.perf_counter() - started
        complete(backend, "Hello, world.", max_tokens=4)  # warm-up, not counted
        process = backend._process  # for its CPU time only
        with OtherLoad(process.pid if process is not None else None) as load:
            speed = measure_speed(backend, SPEED_TOPICS[:speed_prompts])
            quality = measure_quality(backend)
    finally:
        backend.stop()
    return {
        "model": model.alias,
        "file": str(path),
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "assemble_s": round(assemble_s, 2),
        "load_s": round(load_s, 2),
        "threads": threads or os.cpu_count() or 1,
        "n_ctx": n_ctx,
        "other_cpu_before": None if busy is None else round(busy, 3),
        "other_cpu_during": None if load.share is None else round(load.share, 3),
        **speed,
        **quality,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'model':30} {'file MB':>8} {'load s':>7} {'tok/s':>7} "
              f"{'prompt s':>9} {'prompt tok/s':>13} {'correct':>8} {'raw':>6} {'other CPU':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        other = "-" if r["other_cpu_during"] is None else f"{r['other_cpu_during']:.0%}"
        print(f"{r['model']:30} {r['file_mb']:>8.1f} {r['load_s']:>7.2f} "
              f"{r['decode_tok_s_median']:>7.1f} {r['prompt_s_median']:>9.2f} "
              f"{r['prompt_tok_s_median']:>13.1f} {r['correct']:>5}/{r['total']} "
              f"{r['raw_correct']:>3}/{r['total']} {other:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/ttc-bench-models"),
                        help="where the GGUF files are assembled and logs written")
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads (default: all cores, as LocalBackend does)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--speed-prompts", type=int, default=5,
                        choices=range(1, len(SPEED_TOPICS) + 1), metavar="N",
                        help=f"speed prompts per model, 1..{len(SPEED_TOPICS)} (default 5)")
    parser.add_argument("--models", nargs="+", default=[m.alias for m in MODELS],
                        choices=[m.alias for m in MODELS])
    parser.add_argument("--wait-idle", type=float, default=60.0, metavar="SECONDS",
                        help="before each model, wait up to this long for other processes "
                             "to leave the CPU (default 60)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"threads: {args.threads or os.cpu_count()} (os.cpu_count()={os.cpu_count()}), "
          f"n_ctx: {args.n_ctx}", file=sys.stderr)
    results = []
    started = time.perf_counter()
    for model in MODELS:
        if model.alias in args.models:
            print(f"== {model.alias}", file=sys.stderr)
            results.append(run_model(model, args.data_dir, args.threads, args.n_ctx,
                                     args.speed_prompts, args.wait_idle))
    total_s = time.perf_counter() - started
    print_table(results)
    print(f"threads={results[0]['threads'] if results else '-'}  total {total_s:.0f}s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"total_s": round(total_s, 1), "results": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
