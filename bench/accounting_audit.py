"""Audit of "every token spent upstream is counted, and a budget is never exceeded", with real
processes: ``ttc-router sim`` (SIMULATION: it reports exact usage), a counting proxy in front
of it (a thread of this process), and ``ttc-router serve`` in front of the proxy, with an admin
API key, driven by the official ``openai`` client (raw httpx for a client that leaves).

Per scenario it compares (a) what the backend generated: the ``usage`` of every call that
reached the sim, or, for a call the gateway gave up on before its usage arrived, the tokens the
proxy saw go by (a lower bound, marked ``+``: the sim decodes as it streams); (b) the client's
``usage``; (c) the deltas of ``ttc_tokens_total`` (and of ``ttc_key_tokens_total`` and
``ttc_request_prompt_tokens_sum``, which must move with it) on ``/metrics``; (d) the request
log's row (SQLite, ``DATA_DIR/requests.db``); (e) the budget asked (``budget_tokens``, else the
client's cap, else the budget the gateway chose, from the log), and ``budget_total_tokens``.
Flags: ``UNCOUNTED`` (a place counted less than the backend generated), ``OVER`` (completion
tokens above the budget), ``OVER_TOTAL`` (prompt plus completion above the total budget),
``MISMATCH`` / ``PROMPT`` (completion / prompt figures differ though the backend's are exact:
a cancelled call is charged its grant, so this one is expected where a client left),
``COUNTERS`` (the key's or the histogram's tokens differ from ``ttc_tokens_total``).

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/accounting_audit.py`` (83 scenarios, a
minute); ``--only TEXT`` runs the scenarios whose name contains it, ``--fan-out`` configures
the upstream as ignoring ``n`` (the gateway fans ``n`` out), ``--bank DIR`` serves an outcome
bank (``ttc-router sim --bank``: a real model's recorded pieces, so chains cut before their
answer, continuations, votes whose samples are all cut, search requests) and runs its 27
scenarios (give it a copy, never the bank being recorded: ``git archive HEAD
router_models/data/bank | tar -x -C /tmp/copy``), ``--gateway-env TTC_X=V`` sets the
gateway's settings (``TTC_DEFAULT_ANSWER_TOKENS=60`` lets a vote's samples be cut), and
``--verbose`` prints each upstream call and the reply's ``router`` object.
``tests/e2e/test_accounting_audit.py`` runs subsets as tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.local_backend import free_port, stop_process

HOST = "127.0.0.1"
# Marker prompts the sim reads: a short chain (about 56 tokens), an independent question
# whose chains fill their cap, a 9-step chain (152 tokens), a 24-step one (584 tokens).
VOTE_Q = "[[sim family=arithmetic_chain difficulty=0.1 answer=B]] Which is prime? (A) 4 (B) 7"
MC_Q = "[[sim family=independent_mc difficulty=0.5 answer=B]] Which is prime? (A) 4 (B) 7"
CHAIN_Q = "[[sim family=arithmetic_chain difficulty=0.5 answer=42]] Start at 6, times 7."
LONG_Q = "[[sim family=graph_connectivity difficulty=1.0 answer=yes]] Is A linked to Z?"

Act = Callable[[], Awaitable[tuple[int | None, str | None]]]


@dataclass
class UpstreamCall:
    """One completion call the proxy passed to the sim."""

    path: str
    body: dict[str, Any]
    usage: dict[str, Any] | None = None
    text_tokens: int = 0  # whitespace words of text seen in a stream
    finished: bool = False  # the JSON body, or the stream's [DONE], went through
    status: int = 0


@dataclass
class CountingProxy:
    """Forwards every path to the sim and records each completion call."""

    upstream: str
    calls: list[UpstreamCall] = field(default_factory=list)
    open_calls: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._forward,
                                       methods=["GET", "POST", "HEAD"])])

    async def _forward(self, request: Request) -> Response:
        client = httpx.AsyncClient(timeout=120)
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        record = UpstreamCall(request.url.path, body)
        if request.method == "POST" and request.url.path.endswith("completions"):
            self.calls.append(record)
        self.open_calls += 1
        try:
            upstream = await client.send(client.build_request(
                request.method, self.upstream + request.url.path, content=raw,
                headers={"content-type": "application/json"}), stream=True)
        except BaseException:
            self.open_calls -= 1
            await client.aclose()
            raise
        record.status = upstream.status_code
        if not body.get("stream"):
            try:
                content = await upstream.aread()
                with contextlib.suppress(ValueError):
                    record.usage = json.loads(content).get("usage")
                record.finished = True
            finally:
                self.open_calls -= 1
                await upstream.aclose()
                await client.aclose()
            return Response(content, upstream.status_code,
                            media_type=upstream.headers.get("content-type"))

        async def relay() -> AsyncIterator[bytes]:
            buffer = b""
            try:
                async for chunk in upstream.aiter_raw():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        _note(record, event)
                        yield event + b"\n\n"
            finally:
                self.open_calls -= 1
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), upstream.status_code,
                                 media_type="text/event-stream")


def _note(record: UpstreamCall, event: bytes) -> None:
    line = event.decode().strip()
    if line == "data: [DONE]":
        record.finished = True
        return
    if not line.startswith("data: {"):
        return
    data = json.loads(line[6:])
    if data.get("usage"):
        record.usage = data["usage"]
    for choice in data.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        record.text_tokens += len(text.split())


@dataclass
class Outcome:
    """One scenario's figures (tokens); None where a place has none (a client that left)."""

    name: str
    generated: int
    generated_exact: bool
    client: int | None
    metrics: float
    log: int | None
    log_status: str | None
    budget: int | None
    calls: int
    prompts: tuple[int | None, ...] = ()  # backend, client, metrics, log
    total_budget: int | None = None
    counters_agree: bool = True
    note: str = ""

    def flags(self) -> list[str]:
        """What is wrong with the figures (empty: nothing)."""
        out = []
        counted = [x for x in (self.client, self.metrics, self.log) if x is not None]
        if any(x < self.generated for x in counted):
            out.append("UNCOUNTED")
        if self.generated_exact and any(x != self.generated for x in counted):
            out.append("MISMATCH")
        spent = max([self.generated, *counted])
        if self.budget is not None and spent > self.budget:
            out.append("OVER")
        prompts = [p for p in self.prompts if p is not None]
        if self.generated_exact and len(set(prompts)) > 1:
            out.append("PROMPT")
        if self.total_budget is not None and max(prompts, default=0) + spent > self.total_budget:
            out.append("OVER_TOTAL")
        if not self.counters_agree:
            out.append("COUNTERS")
        return out

    def line(self) -> str:
        return (f"{self.name:40} gen={self.generated:5}{' ' if self.generated_exact else '+'}"
                f" client={self.client!s:5} metrics={self.metrics:5.0f} log={self.log!s:5} "
                f"status={self.log_status!s:4} budget={self.budget!s:5} calls={self.calls:2} "
                f"prompt={'/'.join(str(p) for p in self.prompts)} "
                f"{' '.join(self.flags()) or 'ok'} {self.note}")


@dataclass
class Stack:
    """The running sim, proxy and gateway."""

    gateway: str
    proxy: CountingProxy
    data_dir: Path
    key: str
    model: str = "sim-reasoner"


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_stack(folder: Path, *, fan_out: bool = False, latency_ms_per_token: float = 1.0,
                  bank: Path | None = None, gateway_env: dict[str, str] | None = None
                  ) -> Iterator[Stack]:
    """Start ``ttc-router sim`` (``--bank bank`` when given: a real model's recorded outcomes),
    the counting proxy (a thread) and ``ttc-router serve`` (an admin key made first;
    keep-alives every 0.5 s), logs in ``folder``; stop them on exit."""
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    sim_port, proxy_port, gw_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: Path, extra: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen([python, "-m", "service", *argv], stdout=out,
                                       stderr=subprocess.STDOUT, env={**env, **(extra or {})})
        processes.append(process)
        return process

    proxy = CountingProxy(f"http://{HOST}:{sim_port}")
    server = uvicorn.Server(uvicorn.Config(proxy.app(), host=HOST, port=proxy_port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        sim = start(["sim", "--port", str(sim_port), "--latency-ms-per-token",
                     str(latency_ms_per_token), "--ttft-ms", "1", "--log-level", "warning",
                     *(["--bank", str(bank)] if bank is not None else [])],
                    folder / "sim.log")
        _wait_ready(f"http://{HOST}:{sim_port}/health", sim, folder / "sim.log")
        thread.start()
        made = subprocess.run([python, "-m", "service", "keys", "create", "audit", "--admin",
                               "--data-dir", str(folder / "data")], capture_output=True,
                              text=True, check=True, env=env)
        key = made.stdout.strip().splitlines()[-1]
        upstream = ["--upstream", f"http://{HOST}:{proxy_port}/v1"]
        if fan_out:
            config = folder / "ttc.yaml"
            config.write_text(f"upstreams:\n  - url: http://{HOST}:{proxy_port}/v1\n"
                              "    name: sim\n    supports_n: false\n")
            upstream = ["--config", str(config)]
        gateway = start(["serve", *upstream, "--port", str(gw_port), "--data-dir",
                         str(folder / "data"), "--log-level", "warning"],
                        folder / "gateway.log", {"TTC_KEEPALIVE_S": "0.5", **(gateway_env or {})})
        _wait_ready(f"http://{HOST}:{gw_port}/health", gateway, folder / "gateway.log")
        _wait_ready(f"http://{HOST}:{gw_port}/ready", gateway, folder / "gateway.log")
        yield Stack(f"http://{HOST}:{gw_port}", proxy, folder / "data", key,
                    "bank-replay" if bank is not None else "sim-reasoner")
    finally:
        for process in reversed(processes):
            stop_process(process, grace_s=15)
        server.should_exit = True
        if thread.is_alive():
            thread.join(10)


class Audit:
    """Makes requests through a ``Stack`` and measures each one (``run``). Build it inside
    the event loop that runs the requests."""

    def __init__(self, stack: Stack, verbose: bool = False):
        self.stack = stack
        self.proxy = stack.proxy
        self.db = stack.data_dir / "requests.db"
        self.auth = {"authorization": f"Bearer {stack.key}"}
        self.sdk = openai.AsyncOpenAI(base_url=stack.gateway + "/v1", api_key=stack.key,
                                      max_retries=0, timeout=120)
        self.http = httpx.AsyncClient(base_url=stack.gateway, timeout=120, headers=self.auth)
        self.verbose = verbose
        self.router: dict[str, Any] = {}
        self.prompt_seen: int | None = None

    async def aclose(self) -> None:
        await self.sdk.close()
        await self.http.aclose()

    async def token_metrics(self) -> tuple[float, ...]:
        """(``ttc_tokens_total`` completion, prompt; ``ttc_key_tokens_total`` completion,
        prompt; ``ttc_request_prompt_tokens_sum``), each summed over its labels."""
        text = (await self.http.get("/metrics")).text
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

        def total(name: str, kind: str | None = None) -> float:
            return sum(s.value for s in samples if s.name == name
                       and (kind is None or s.labels.get("kind") == kind))

        return (total("ttc_tokens_total", "completion"), total("ttc_tokens_total", "prompt"),
                total("ttc_key_tokens_total", "completion"),
                total("ttc_key_tokens_total", "prompt"),
                total("ttc_request_prompt_tokens_sum"))

    def log_row(self, decision_id: str | None) -> tuple[int, str, int, int | None] | None:
        """(completion tokens, status, prompt tokens, budget) of a request's log row."""
        if decision_id is None or not self.db.exists():
            return None
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            row = db.execute("SELECT completion_tokens, status, prompt_tokens, budget_tokens "
                             "FROM requests WHERE decision_id = ?", (decision_id,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]), row[3])

    async def run(self, name: str, budget: int | None, act: Act,
                  total_budget: int | None = None) -> Outcome:
        """Make one request (``act`` returns the client's completion tokens and the decision
        id) and measure it once the proxy is idle and the log row is written."""
        first_call = len(self.proxy.calls)
        self.router, self.prompt_seen = {}, None
        before = await self.token_metrics()
        try:
            client, decision = await act()
            note = ""
        except openai.APIStatusError as exc:
            client, decision = None, exc.response.headers.get("x-ttc-decision-id")
            note = f"HTTP {exc.status_code}: {exc.message[:120]}"
        row = None
        for _ in range(50):  # the log writes off the request path; a cut call settles late
            await asyncio.sleep(0.1)
            row = self.log_row(decision)
            if row is not None and self.proxy.open_calls == 0:
                break
        await asyncio.sleep(0.2)
        calls = self.proxy.calls[first_call:]
        generated = prompt = 0
        exact = True
        for call in calls:
            if call.usage is not None and call.finished:
                generated += int(call.usage.get("completion_tokens") or 0)
                prompt += int(call.usage.get("prompt_tokens") or 0)
            else:
                generated += call.text_tokens
                exact = False
        delta = [a - b for a, b in zip(await self.token_metrics(), before, strict=True)]
        if row is not None and row[3] is not None and budget is None:
            budget = int(row[3])  # the budget the gateway chose
        outcome = Outcome(
            name, generated, exact, client, delta[0], row[0] if row else None,
            row[1] if row else None, budget, len(calls),
            prompts=(prompt if calls else None, self.prompt_seen, int(delta[1]),
                     row[2] if row else None),
            total_budget=total_budget,
            counters_agree=delta[2:4] == delta[0:2] and delta[4] == delta[1], note=note)
        print(outcome.line(), flush=True)
        if self.verbose:
            print("    router:", {k: self.router.get(k) for k in (
                "strategy", "budget_tokens", "spent_tokens", "samples", "greedy_first",
                "reason", "continued") if k in self.router})
            print("    calls (n, max_tokens, temperature, stream, usage, finished, status):",
                  [(c.body.get("n"), c.body.get("max_tokens"), c.body.get("temperature"),
                    bool(c.body.get("stream")), (c.usage or {}).get("completion_tokens"),
                    c.finished, c.status) for c in calls])
        return outcome

    # --- request shapes -----------------------------------------------------------------

    def ask(self, strategy: str | None, question: Any, *, budget: int | None = None,
            total: int | None = None, stream: bool = False, endpoint: str = "chat",
            usage_opt: bool = True, model: str = "sim-reasoner", **extra: Any) -> Act:
        """A request by the ``openai`` client; ``strategy`` None names none. The model
        ``sim-reasoner`` stands for the backend's model (``bank-replay`` on a bank)."""
        if model == "sim-reasoner":
            model = self.stack.model
        router = {k: v for k, v in (("strategy", strategy), ("budget_tokens", budget),
                                    ("budget_total_tokens", total)) if v is not None}

        async def act() -> tuple[int | None, str | None]:
            kwargs: dict[str, Any] = {"model": model, **extra}
            if router:
                kwargs["extra_body"] = {"router": router}
            api: Any
            if endpoint == "chat":
                kwargs["messages"] = [{"role": "user", "content": question}]
                api = self.sdk.chat.completions.with_raw_response
            else:
                kwargs["prompt"] = question
                api = self.sdk.completions.with_raw_response
            if stream:
                kwargs["stream"] = True
                if usage_opt:
                    kwargs["stream_options"] = {"include_usage": True}
            raw = await api.create(**kwargs)
            decision = raw.headers.get("x-ttc-decision-id")
            reply = raw.parse()
            if not stream:
                self.router = (reply.model_extra or {}).get("router") or {}
                self.prompt_seen = reply.usage.prompt_tokens if reply.usage else None
                return (reply.usage.completion_tokens if reply.usage else None), decision
            usage = None
            async for chunk in reply:
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
                    self.prompt_seen = chunk.usage.prompt_tokens
                    self.router = (chunk.model_extra or {}).get("router") or {}
            return usage, decision

        return act

    def leave(self, body: dict[str, Any], after_lines: int, endpoint: str = "chat") -> Act:
        """A raw streaming client that reads ``after_lines`` lines of SSE (keep-alive comments
        and blank lines included), then closes its connection."""

        async def act() -> tuple[int | None, str | None]:
            path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
            async with httpx.AsyncClient(base_url=self.stack.gateway, timeout=120,
                                         headers=self.auth) as client, \
                    client.stream("POST", path, json={**body, "stream": True}) as reply:
                decision = reply.headers.get("x-ttc-decision-id")
                seen = 0
                async for _line in reply.aiter_lines():
                    seen += 1
                    if seen >= after_lines:
                        break
            return None, decision

        return act

    def leave_json(self, body: dict[str, Any], after_s: float) -> Act:
        """A raw client that gives up on a JSON request after ``after_s`` seconds."""

        async def act() -> tuple[int | None, str | None]:
            since = time.time() - 0.01
            async with httpx.AsyncClient(base_url=self.stack.gateway,
                                         headers=self.auth) as client:
                with contextlib.suppress(httpx.TimeoutException):
                    await client.post("/v1/chat/completions", json=body,
                                      timeout=httpx.Timeout(after_s))
            # Its decision id never reached the client: the row logged since it was sent is
            # this request's (written once its abandoned calls have settled).
            for _ in range(100):
                await asyncio.sleep(0.1)
                with contextlib.closing(sqlite3.connect(self.db)) as db:
                    row = db.execute("SELECT decision_id FROM requests WHERE time_s >= ? "
                                     "ORDER BY time_s DESC LIMIT 1", (since,)).fetchone()
                if row is not None:
                    return None, row[0]
            return None, None

        return act


@dataclass
class Scenario:
    """A named request, the completion budget it must keep to (None: the gateway's, read
    from the log) and the total budget (prompt and completion), if any."""

    name: str
    budget: int | None
    act: Act
    total_budget: int | None = None
    client_leaves: bool = False


def scenarios(audit: Audit) -> list[Scenario]:
    """Every scenario of the audit, in the order run."""
    a = audit.ask
    out: list[Scenario] = []
    for strategy, question in (("direct", CHAIN_Q), ("parallel_vote", VOTE_Q),
                               ("sequential", CHAIN_Q), ("search", VOTE_Q)):
        for stream in (False, True):
            tag = f"{strategy} {'stream' if stream else 'json'}"
            budget = None if strategy == "direct" else 1200
            cap: dict[str, Any] = {"max_tokens": 200} if strategy == "direct" else {}
            out += [
                Scenario(f"{tag} b={budget or 'none, max 200'}", budget or 200,
                         a(strategy, question, budget=budget, stream=stream, **cap)),
                Scenario(f"{tag} budget 10", 10, a(strategy, question, budget=10,
                                                   stream=stream)),
                Scenario(f"{tag} max_tokens 5", 5, a(strategy, question, stream=stream,
                                                     max_tokens=5)),
                Scenario(f"{tag} no usage asked", budget or 200,
                         a(strategy, question, budget=budget, stream=stream, usage_opt=False,
                           **cap)),
            ]
    out += [
        Scenario("vote json t=0.7 b=1200", 1200, a("parallel_vote", VOTE_Q, budget=1200,
                                                   temperature=0.7)),
        Scenario("vote json top_p=0.9 b=1200", 1200, a("parallel_vote", VOTE_Q, budget=1200,
                                                       top_p=0.9)),
        Scenario("vote json t=0 b=1200", 1200, a("parallel_vote", VOTE_Q, budget=1200,
                                                 temperature=0)),
        Scenario("vote json greedy first b=2000", 2000, a("parallel_vote", MC_Q, budget=2000)),
        Scenario("vote stream greedy first b=2000", 2000, a("parallel_vote", MC_Q,
                                                            budget=2000, stream=True)),
        Scenario("vote json seed b=1200", 1200, a("parallel_vote", VOTE_Q, budget=1200,
                                                  seed=7)),
        Scenario("vote json logprobs b=1500", 1500, a("parallel_vote", MC_Q, budget=1500,
                                                      logprobs=True, top_logprobs=2)),
        Scenario("vote json max_completion 40 b=2000", 2000,
                 a("parallel_vote", MC_Q, budget=2000, max_completion_tokens=40)),
        Scenario("vote by headers b=700", 700, a(None, MC_Q, extra_headers={
            "x-ttc-strategy": "parallel_vote", "x-ttc-budget-tokens": "700"})),
        Scenario("direct json n=3 max 50", 150, a("direct", VOTE_Q, n=3, max_tokens=50)),
        Scenario("direct stream n=3 max 50", 150, a("direct", VOTE_Q, n=3, max_tokens=50,
                                                    stream=True)),
        Scenario("direct json n=3 b=90", 90, a("direct", VOTE_Q, n=3, budget=90)),
        Scenario("direct stream n=3 b=90", 90, a("direct", VOTE_Q, n=3, budget=90,
                                                 stream=True)),
        Scenario("direct json stop n=2 max 80", 160, a("direct", CHAIN_Q, n=2, max_tokens=80,
                                                       stop=["times"])),
        Scenario("seq stream max_completion 30", 30, a("sequential", CHAIN_Q, stream=True,
                                                       max_completion_tokens=30)),
        Scenario("search json max 50 max_completion 20", 20,
                 a("search", MC_Q, max_tokens=50, max_completion_tokens=20)),
        Scenario("auto json mc", None, a(None, MC_Q, model="auto")),
        Scenario("auto json short chain", None, a(None, VOTE_Q, model="auto")),
        Scenario("auto stream short chain", None, a(None, VOTE_Q, model="auto", stream=True)),
        Scenario("auto json chain b=300", 300, a(None, CHAIN_Q, model="auto", budget=300)),
        Scenario("auto stream chain max 40", 40, a(None, CHAIN_Q, model="auto", stream=True,
                                                   max_tokens=40)),
        Scenario("auto json n=2 max 30", 60, a(None, VOTE_Q, model="auto", n=2,
                                               max_tokens=30)),
        Scenario("auto stream by header b=200", 200, a(None, MC_Q, model="auto", stream=True,
                                                       extra_headers={
                                                           "x-ttc-budget-tokens": "200"})),
        Scenario("completions direct json max 60", 60,
                 a("direct", CHAIN_Q, endpoint="completions", max_tokens=60)),
        Scenario("completions direct stream max 60", 60,
                 a("direct", CHAIN_Q, endpoint="completions", max_tokens=60, stream=True)),
        Scenario("completions direct n=2 max 40", 80,
                 a("direct", VOTE_Q, endpoint="completions", n=2, max_tokens=40)),
        Scenario("completions vote json b=400", 400,
                 a("parallel_vote", VOTE_Q, endpoint="completions", budget=400)),
        Scenario("completions vote stream b=400", 400,
                 a("parallel_vote", VOTE_Q, endpoint="completions", budget=400, stream=True)),
        Scenario("completions seq json b=300", 300,
                 a("sequential", CHAIN_Q, endpoint="completions", budget=300)),
        Scenario("completions auto json", None, a(None, VOTE_Q, endpoint="completions",
                                                  model="auto")),
        Scenario("completions batch n=2 max 20", 80,
                 a("direct", [VOTE_Q, CHAIN_Q], endpoint="completions", n=2, max_tokens=20)),
        Scenario("completions batch stream max 20", 40,
                 a("direct", [VOTE_Q, CHAIN_Q], endpoint="completions", max_tokens=20,
                   stream=True)),
        Scenario("completions best_of 3 max 30", 90,
                 a("direct", CHAIN_Q, endpoint="completions", max_tokens=30, best_of=3)),
    ]
    named: tuple[tuple[str | None, str], ...] = (
        ("direct", CHAIN_Q), ("parallel_vote", MC_Q), ("sequential", CHAIN_Q), (None, MC_Q))
    for maybe, question in named:
        for stream in (False, True):
            out.append(Scenario(
                f"{maybe or 'auto'} {'stream' if stream else 'json'} total 300", None,
                a(maybe, question, total=300, stream=stream,
                  model="sim-reasoner" if maybe else "auto"), total_budget=300))
    chat: dict[str, Any] = {"model": "sim-reasoner",
                            "messages": [{"role": "user", "content": LONG_Q}]}
    for strategy, budget, lines in (("direct", None, 6), ("sequential", 3000, 6),
                                    ("parallel_vote", 3000, 2), ("search", 3000, 2)):
        body: dict[str, Any] = {**chat, "router": {"strategy": strategy,
                                                   "budget_tokens": budget}}
        if budget is None:
            body = {**chat, "router": {"strategy": strategy}, "max_tokens": 3000}
        out.append(Scenario(f"{strategy} stream client leaves", 3000,
                            audit.leave(body, lines), client_leaves=True))
    out += [
        Scenario("chat direct no cap stream leaves", None,
                 audit.leave({**chat, "router": {"strategy": "direct"}}, 40),
                 client_leaves=True),
        Scenario("completions direct no cap stream leaves", None,
                 audit.leave({"model": "sim-reasoner", "prompt": LONG_Q,
                              "router": {"strategy": "direct"}}, 40, endpoint="completions"),
                 client_leaves=True),
        Scenario("completions stream client leaves", 3000,
                 audit.leave({"model": "sim-reasoner", "prompt": LONG_Q, "max_tokens": 3000,
                              "router": {"strategy": "direct"}}, 6, endpoint="completions"),
                 client_leaves=True),
        Scenario("direct stream n=3 client leaves", 3000,
                 audit.leave({**chat, "n": 3, "max_tokens": 1000,
                              "router": {"strategy": "direct"}}, 8), client_leaves=True),
        Scenario("direct json n=3 client leaves", 3000,
                 audit.leave_json({**chat, "n": 3, "max_tokens": 1000,
                                   "router": {"strategy": "direct"}}, 0.2),
                 client_leaves=True),
        Scenario("vote json client leaves", 3000,
                 audit.leave_json({**chat, "router": {"strategy": "parallel_vote",
                                                      "budget_tokens": 3000}}, 0.3),
                 client_leaves=True),
    ]
    return out


def bank_scenarios(audit: Audit, bank: Path) -> list[Scenario]:
    """Scenarios on a real model's recorded outcomes (``ttc-router sim --bank``), which the
    simulator cannot produce: chains cut before their answer (``sequential`` continues them),
    votes whose samples are all cut (their rest buys one chain), search requests."""
    from router_models.bank import Bank

    first: dict[str, str] = {}
    for run in Bank.load(bank).runs:
        if run.searches == 0:
            first.setdefault(run.suite, run.item.question)

    def pick(*suites: str) -> str:
        return next(first[suite] for suite in suites if suite in first)

    # in the shipped bank: a greedy chain of 234 tokens; samples of 385-512 tokens (a fixture
    # bank has fewer suites: the nearest is taken)
    gsm8k = pick("gsm8k", "svamp", "arithmetic_chain")
    graph = pick("graph_connectivity", "arithmetic_chain", "gsm8k")
    mmlu = pick("mmlu", "commonsenseqa", "strategyqa")
    hotpot = pick("hotpotqa")
    a = audit.ask
    out = [
        Scenario("bank seq json cut b=150", 150, a("sequential", gsm8k, budget=150)),
        Scenario("bank seq stream cut b=150", 150, a("sequential", gsm8k, budget=150,
                                                     stream=True)),
        Scenario("bank seq json t=0 b=100", 100, a("sequential", gsm8k, budget=100,
                                                   temperature=0)),
        Scenario("bank seq stream max 60", 60, a("sequential", gsm8k, stream=True,
                                                 max_tokens=60)),
        Scenario("bank vote json gsm8k b=1500", 1500, a("parallel_vote", gsm8k, budget=1500)),
        Scenario("bank vote stream gsm8k b=1500", 1500, a("parallel_vote", gsm8k, budget=1500,
                                                          stream=True)),
        Scenario("bank vote json graph cut b=1500", 1500, a("parallel_vote", graph,
                                                            budget=1500)),
        Scenario("bank vote stream graph cut b=1500", 1500, a("parallel_vote", graph,
                                                              budget=1500, stream=True)),
        Scenario("bank vote json graph b=600", 600, a("parallel_vote", graph, budget=600)),
        Scenario("bank vote stream graph b=600", 600, a("parallel_vote", graph, budget=600,
                                                        stream=True)),
        Scenario("bank vote json mmlu t=0.7 b=2000", 2000, a("parallel_vote", mmlu,
                                                             budget=2000, temperature=0.7)),
        Scenario("bank search json hotpot b=600", 600, a("search", hotpot, budget=600)),
        Scenario("bank search stream hotpot b=600", 600, a("search", hotpot, budget=600,
                                                           stream=True)),
        Scenario("bank search json hotpot max 20", 20, a("search", hotpot, max_tokens=20)),
        Scenario("bank search json hotpot b=60", 60, a("search", hotpot, budget=60)),
        Scenario("bank direct json n=3 max 100", 300, a("direct", mmlu, n=3, max_tokens=100)),
        Scenario("bank direct stream n=3 b=120", 120, a("direct", mmlu, n=3, budget=120,
                                                        stream=True)),
        Scenario("bank auto json gsm8k", None, a(None, gsm8k, model="auto")),
        Scenario("bank auto stream graph", None, a(None, graph, model="auto", stream=True)),
        Scenario("bank auto json hotpot", None, a(None, hotpot, model="auto")),
        Scenario("bank auto json mmlu b=300", 300, a(None, mmlu, model="auto", budget=300)),
        Scenario("bank completions seq b=150", 150, a("sequential", gsm8k, budget=150,
                                                      endpoint="completions")),
        Scenario("bank completions vote b=1500", 1500, a("parallel_vote", graph, budget=1500,
                                                         endpoint="completions")),
        Scenario("bank seq total 250", None, a("sequential", gsm8k, total=250),
                 total_budget=250),
        Scenario("bank vote total 700", None, a("parallel_vote", gsm8k, total=700),
                 total_budget=700),
    ]
    chat: dict[str, Any] = {"model": audit.stack.model,
                            "messages": [{"role": "user", "content": graph}]}
    out += [
        Scenario("bank seq stream client leaves", 1500, audit.leave(
            {**chat, "router": {"strategy": "sequential", "budget_tokens": 1500}}, 8),
            client_leaves=True),
        Scenario("bank vote stream client leaves", 1500, audit.leave(
            {**chat, "router": {"strategy": "parallel_vote", "budget_tokens": 1500}}, 2),
            client_leaves=True),
    ]
    return out


async def audit_all(stack: Stack, only: str = "", verbose: bool = False,
                    bank: Path | None = None) -> list[Outcome]:
    """Run the scenarios whose name contains ``only`` (the bank's, with ``bank``); returns
    their outcomes."""
    audit = Audit(stack, verbose)
    try:
        chosen = bank_scenarios(audit, bank) if bank is not None else scenarios(audit)
        return [await audit.run(s.name, s.budget, s.act, s.total_budget)
                for s in chosen if only in s.name]
    finally:
        await audit.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    parser.add_argument("--latency-ms-per-token", type=float, default=1.0)
    parser.add_argument("--fan-out", action="store_true",
                        help="configure the upstream as ignoring n (supports_n: false), so "
                        "the gateway fans n out into single-choice calls")
    parser.add_argument("--bank", type=Path, default=None, metavar="DIR",
                        help="serve this outcome bank (ttc-router sim --bank DIR; a copy, not "
                        "the one being recorded) and run the bank's scenarios")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="TTC_X=V",
                        help="a setting for the gateway (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="each upstream call and the "
                        "reply's router object")
    args = parser.parse_args()
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="ttc-audit-"))
    with running_stack(folder, fan_out=args.fan_out,
                       latency_ms_per_token=args.latency_ms_per_token,
                       bank=args.bank,
                       gateway_env=dict(e.split("=", 1) for e in args.gateway_env)) as stack:
        outcomes = asyncio.run(audit_all(stack, args.only, args.verbose, args.bank))
    flagged = [o for o in outcomes if o.flags()]
    print(f"\n{len(outcomes)} scenarios, {len(flagged)} flagged "
          f"({', '.join(sorted({f for o in flagged for f in o.flags()})) or 'none'}); "
          f"logs in {folder}; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
