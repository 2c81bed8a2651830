"""Running an evaluation: every (item, strategy, budget) sent to an OpenAI-compatible URL, one
record per reply appended to ``items.jsonl``, resumable.

Two modes:

- ``gateway``: the URL is ttc-router; each request carries ``router: {strategy,
  budget_tokens}`` (or ``{policy}`` for a policy point) and the reply's ``usage`` and
  ``router`` are recorded as they come;
- ``client``: the URL is a plain backend; the strategies are approximated by the request
  alone: ``direct`` and ``sequential`` are one chain of ``max_tokens = budget``,
  ``parallel_vote`` is ``n = k`` chains of ``budget // k`` tokens with a majority vote here,
  k = budget // vote_depth_tokens within [2, 8]; ``search`` and policies need the gateway and
  are skipped.

``auto`` picks ``gateway`` when the URL's ``/models`` lists the model ``auto``. In client mode
the model ``auto`` (the default) means the backend's first listed model, since a plain backend
serves no model of that name.

Resume: a record's key is (suite, item id, strategy, budget). On start the records already in
``items.jsonl`` without an ``error`` are kept and their keys are not sent again; a line cut
short by a kill is ignored. A folder resumes only the run of its own backend URL and model
(``run.json``): another backend's records would be reported as this one's.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from router_models.tasks import TaskItem, checkers

ITEMS_FILE = "items.jsonl"
RUN_FILE = "run.json"  # the backend URL and model the folder's records were measured against
TEXT_CHARS = 2000  # the end of the first choice's text kept per record, to audit the checker
Key = tuple[str, str, str, int | None]


class EvalError(Exception):
    """An evaluation that cannot start: bad options, or an unreachable backend."""


@dataclass(frozen=True)
class Job:
    """One request to make: an item under a strategy and budget, or under a policy (then
    ``strategy`` is ``policy:NAME`` and ``budget_tokens`` None)."""

    item: TaskItem
    strategy: str
    budget_tokens: int | None

    @property
    def key(self) -> Key:
        return (self.item.suite, self.item.item_id, self.strategy, self.budget_tokens)

    @property
    def seed(self) -> int:
        return zlib.crc32(json.dumps(list(self.key)).encode()) & 0x7FFFFFFF


@dataclass
class RunOptions:
    """How to run: the base URL (ending in /v1), model, mode, concurrency, timeouts."""

    backend: str
    model: str = "auto"
    mode: str = "auto"
    concurrency: int = 4
    timeout_s: float = 600.0
    vote_depth_tokens: int = 128
    api_key: str | None = None
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    temperature: float | None = None  # sent with every request when set


def record_key(record: dict[str, Any]) -> Key:
    """The resume key of a record in ``items.jsonl``."""
    return (record["suite"], record["item_id"], record["strategy"], record["budget_tokens"])


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``items.jsonl`` (latest per key wins), skipping lines that do not parse
    (a write cut short by a kill)."""
    if not path.is_file():
        return []
    latest: dict[Key, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            latest[record_key(record)] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return list(latest.values())


def plan_jobs(items: Sequence[TaskItem], strategies: Sequence[str], budgets: Sequence[int],
              policies: Sequence[str] = ()) -> list[Job]:
    """Every (item, strategy, budget) and (item, policy), in a stable order."""
    jobs = [Job(item, s, b) for item in items for s in strategies for b in budgets]
    jobs += [Job(item, f"policy:{p}", None) for item in items for p in policies]
    return jobs


async def detect_mode(client: httpx.AsyncClient, options: RunOptions) -> str:
    """``gateway`` or ``client`` (see the module docstring). Raises EvalError when the URL
    does not answer ``/models`` with a model list (unreachable, a refusal, not JSON)."""
    if options.mode != "auto":
        return options.mode
    return "gateway" if "auto" in await _model_ids(client, options) else "client"


async def resolve_model(client: httpx.AsyncClient, options: RunOptions, mode: str) -> str:
    """The ``model`` field to send: ``options.model``, except ``auto`` in client mode, which
    becomes the backend's first listed model (a plain backend serves no ``auto``: vLLM
    answers it with a 404, so every request of the run failed). A backend that lists no
    models keeps ``auto``: its requests then say what is wrong, one record each."""
    if mode != "client" or options.model != "auto":
        return options.model
    try:
        ids = await _model_ids(client, options)
    except EvalError:  # only with --mode client, which asked for no /models before
        return options.model
    return "auto" if "auto" in ids or not ids else ids[0]


async def _model_ids(client: httpx.AsyncClient, options: RunOptions) -> list[str]:
    """The ids ``GET /models`` lists, in its order.

    Raises:
        EvalError: the URL is unreachable, refuses, or answers with no model list.
    """
    try:
        response = await client.get("/models")
    except httpx.HTTPError as exc:
        raise EvalError(f"{options.backend}/models did not answer: {exc}") from exc
    if response.status_code != 200:
        # The two refusals a user meets first, said in terms of the flags that fix them
        # (httpx's own message ends in a link to a page about HTTP status codes).
        hint = {401: ("; it refused the key given with --api-key" if options.api_key
                      else "; give its key with --api-key KEY"),
                403: "; give a key allowed to use it with --api-key KEY",
                404: "; --backend is the base URL, usually ending in /v1"
                }.get(response.status_code, "")
        raise EvalError(f"{options.backend}/models answered HTTP {response.status_code}"
                        f"{hint}")
    try:
        ids = [m.get("id") for m in response.json().get("data", [])]
    except (ValueError, AttributeError) as exc:
        raise EvalError(f"{options.backend}/models is not an OpenAI model list: {exc}") \
            from exc
    return [i for i in ids if isinstance(i, str) and i]


def claim(out_dir: Path, options: RunOptions, model: str | None = None) -> None:
    """Check that ``out_dir`` holds records of this run's backend URL and model (``model``,
    else ``options.model``; its ``run.json``, else the ``meta`` of a ``summary.json`` written
    before ``run.json`` existed), and record them there when it holds none.

    Raises:
        EvalError: the folder holds another backend's or model's records.
    """
    target = {"backend": options.backend.rstrip("/"), "model": model or options.model}
    held: Any = None
    for name, part in ((RUN_FILE, None), ("summary.json", "meta")):
        try:
            held = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
        held = held.get(part) if part and isinstance(held, dict) else held
        break
    if isinstance(held, dict) and "backend" in held:
        found = {"backend": str(held["backend"]).rstrip("/"), "model": held.get("model")}
        if found != target:
            raise EvalError(
                f"--out {out_dir} holds a run against {found['backend']} (model "
                f"{found['model']}); resuming it against {target['backend']} (model "
                f"{target['model']}) would report those records as this one's: give another "
                "--out, or remove that folder")
    (out_dir / RUN_FILE).write_text(json.dumps(target) + "\n")


def needs_gateway(job: Job) -> bool:
    """Whether ``job`` runs only through the gateway (``search``, and policy points): client
    mode has no way to approximate them, so it skips them."""
    return job.strategy == "search" or job.strategy.startswith("policy:")


def _body(job: Job, mode: str, options: RunOptions, model: str | None = None
          ) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model or options.model, "seed": job.seed,
                            "messages": [{"role": "user", "content": job.item.prompt()}]}
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if mode == "gateway":
        if job.strategy.startswith("policy:"):
            name = job.strategy.split(":", 1)[1]
            body["router"] = {"strategy": "auto"} if name == "auto" else {"policy": name}
        else:
            body["router"] = {"strategy": job.strategy, "budget_tokens": job.budget_tokens}
        return body
    budget = job.budget_tokens or 0
    if job.strategy == "parallel_vote":
        width = vote_width(budget, options.vote_depth_tokens)
        body.update(n=width, max_tokens=max(1, budget // width))
    else:
        body["max_tokens"] = budget
    return body


def vote_width(budget_tokens: int, vote_depth_tokens: int) -> int:
    """Client-mode ``parallel_vote`` width: budget // vote_depth_tokens within [2, 8]."""
    return max(2, min(8, budget_tokens // max(1, vote_depth_tokens)))


def _texts(reply: dict[str, Any]) -> list[str]:
    texts = []
    for choice in reply.get("choices") or []:
        message = choice.get("message") or {}
        texts.append(message.get("content") or choice.get("text") or "")
    return texts


def score(job: Job, mode: str, reply: dict[str, Any], latency_s: float) -> dict[str, Any]:
    """The record of one reply: correctness, the answer, tokens, the gateway's ``router``."""
    item = job.item
    texts = _texts(reply)
    answers = [checkers.parsed(item, t) for t in texts]
    votes = Counter(a for a in answers if a is not None)
    router = reply.get("router") if isinstance(reply.get("router"), dict) else None
    if mode == "client" and len(texts) > 1:
        answer = votes.most_common(1)[0][0] if votes else None
        correct = answer is not None and checkers.is_correct(item, answer)
    else:
        answer = answers[0] if answers else None
        correct = bool(texts) and checkers.check(item, texts[0])
    usage = reply.get("usage") or {}
    return {
        "suite": item.suite, "item_id": item.item_id, "family": item.family,
        "difficulty": item.difficulty, "strategy": job.strategy,
        "budget_tokens": job.budget_tokens, "mode": mode, "correct": bool(correct),
        "answer": answer, "gold": checkers.gold(item),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "upstream_calls": (router or {}).get("upstream_calls", 1),
        "samples": (router or {}).get("samples", len(texts)),
        "votes": (router or {}).get("votes") or (dict(votes) if len(texts) > 1 else None),
        "router": router, "latency_s": round(latency_s, 4),
        "text": texts[0][-TEXT_CHARS:] if texts else None,
        "simulated": reply.get("system_fingerprint") == "simulation"
        or "simulation" in reply,
        "error": None,
    }


def _error_record(job: Job, mode: str, message: str, latency_s: float) -> dict[str, Any]:
    return {"suite": job.item.suite, "item_id": job.item.item_id, "family": job.item.family,
            "difficulty": job.item.difficulty, "strategy": job.strategy,
            "budget_tokens": job.budget_tokens, "mode": mode, "correct": False,
            "answer": None, "gold": checkers.gold(job.item), "completion_tokens": 0,
            "prompt_tokens": 0, "upstream_calls": 0, "samples": 0, "votes": None,
            "router": None, "latency_s": round(latency_s, 4), "simulated": False,
            "error": message[:500]}


async def run_jobs(jobs: Sequence[Job], out_dir: Path, options: RunOptions,
                   progress: Callable[[int, int], Any] | None = None) -> tuple[str, int]:
    """Send the jobs not already recorded in ``out_dir/items.jsonl``, appending a record per
    reply as it arrives. ``progress(done, total)`` builds a tqdm-like bar (``update(1)``,
    ``close()``). Returns (mode, jobs sent now).

    The model sent (``resolve_model``) is recorded in ``out_dir/run.json``.

    Raises:
        EvalError: the backend does not answer ``/models`` (mode ``auto``), or ``out_dir``
            holds another backend's or model's run (``claim``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ITEMS_FILE
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    timeout = httpx.Timeout(options.timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=options.backend.rstrip("/"), timeout=timeout,
                                 headers=headers, transport=options.transport) as client:
        mode = await detect_mode(client, options)
        model = await resolve_model(client, options, mode)
        claim(out_dir, options, model)
        done = {record_key(r) for r in read_records(path) if not r.get("error")}
        applicable = [j for j in jobs if not (mode == "client" and needs_gateway(j))]
        pending = [j for j in applicable if j.key not in done]
        bar = progress(len(applicable) - len(pending), len(applicable)) if progress else None
        if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with path.open("a") as handle:
                handle.write("\n")
        semaphore = asyncio.Semaphore(max(1, options.concurrency))

        async def one(job: Job, handle: Any) -> None:
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions",
                                                 json=_body(job, mode, options, model))
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200:
                        record = _error_record(job, mode, f"HTTP {response.status_code}: "
                                               f"{response.text}", elapsed)
                    else:
                        record = score(job, mode, response.json(), elapsed)
                except (httpx.HTTPError, ValueError) as exc:
                    record = _error_record(job, mode, f"{type(exc).__name__}: {exc}",
                                           time.perf_counter() - started)
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                if bar is not None:
                    bar.update(1)

        try:
            with path.open("a") as handle:
                await asyncio.gather(*(one(job, handle) for job in pending))
        finally:
            if bar is not None:
                bar.close()
    return mode, len(pending)
