"""Replicas on real processes: three gateways behind HAProxy, one PostgreSQL, one Redis.

    .venv/bin/python bench/replicas.py [--learn 240] [--duration-s 6] [--concurrency 32]
    make bench-replicas

Starts a throw-away PostgreSQL (``tests/pg.py``), Redis (``tests/redis_server.py``), the
SIMULATED reasoner backend (``ttc-router sim``, labelled simulation: its answers come from
``router_models/data/sim_world.yaml``), three ``ttc-router serve`` processes sharing the
database and Redis, and HAProxy (Debian's package) in front of them, then proves:

1. learning: answers go through the balancer and each feedback is posted to a replica that
   did *not* serve the answer; every replica ends at the same learning cursor with the same
   state (SHA-256), equal to a fourth gateway alone on a copy of the log given the same
   feedback in the same order, so all make the same decisions;
2. a per-key limit holds across replicas (requests per minute, completion tokens per minute);
3. SIGKILL of one replica under load at concurrency 32: every answered decision and every
   accepted feedback is in the database, and the errors are the requests that replica held;
4. a rolling restart under load (drain in HAProxy, SIGTERM, start, ready) gives zero errors;

and measures the throughput of one replica against three in the same run. This is a bench,
not a test: it prints its figures and exits 1 when a claim fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.local_backend import free_port, stop_process  # noqa: E402
from tests.pg import PostgresServer, start_postgres  # noqa: E402
from tests.redis_server import start_redis  # noqa: E402

PY = sys.executable
PHASES = "throughput,durable,learning,limits,kill,restart"
# (family, question) pairs: the marker tells the simulator the task; the text is what the
# classifier reads.
TASKS = [
    ("word_math", "Tom has {a} apples and buys {b} bags of 6. How many apples has he now?"),
    ("arithmetic_chain", "Start at {a}. Add {b}, multiply by 3, subtract 7, add {a}. Result?"),
    ("graph_connectivity", "Edges: a-b, b-c, c-d, d-e, x-y. Is node a connected to node "
                           "e? Think step by step."),
    ("independent_mc", "Which number is prime? A) {a}4 B) {b}6 C) 7 D) 9"),
    ("knowledge_mc", "Which planet is closest to the sun? A) Venus B) Mercury C) Mars "
                     "D) Earth"),
    ("yes_no", "Is {a}{b}7 an odd number? Answer yes or no."),
    ("commonsense_mc", "Where would you keep milk cold? A) oven B) fridge C) closet D) car "
                       "E) garden"),
]
ANSWERS = {"independent_mc": "C", "knowledge_mc": "B", "commonsense_mc": "B", "yes_no": "yes"}


def prompt(rng: random.Random) -> tuple[str, str]:
    """A chat prompt for the simulator and its correct answer."""
    family, text = rng.choice(TASKS)
    answer = ANSWERS.get(family, str(rng.randint(10, 99)))
    difficulty = round(rng.uniform(0.1, 0.9), 2)
    question = text.format(a=rng.randint(1, 9), b=rng.randint(1, 9))
    return f"[[sim family={family} difficulty={difficulty} answer={answer}]] {question}", answer


# -- processes ---------------------------------------------------------------------------


def wait_http(url: str, process: subprocess.Popen[bytes] | None = None,
              timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url}: the process exited early ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s}s")


@dataclass
class Gateway:
    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, upstream: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [PY, "-m", "service", "serve", "--upstream", upstream, "--port",
                 str(self.port)], env={**os.environ, **self.env,
                                       "TTC_DATA_DIR": str(self.data_dir)},
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_http(self.url + "/ready", self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig, grace_s=40)


class HAProxy:
    """HAProxy in front of the gateways, with an admin socket for drain / ready / stats."""

    def __init__(self, root: Path, servers: list[Gateway]):
        self.port = free_port()
        self.socket = root / "haproxy.sock"
        config = root / "haproxy.cfg"
        lines = [
            "global", "  maxconn 4096", f"  stats socket {self.socket} mode 600 level admin",
            "defaults", "  mode http", "  timeout connect 1s", "  timeout client 60s",
            "  timeout server 60s", "  retries 3", "  option redispatch",
            # Only a request that never reached a gateway is retried elsewhere: a POST that
            # did is not idempotent (its tokens were spent). A connection per request to the
            # gateways (loopback, cheap), so that none is reused after its gateway died.
            "  retry-on conn-failure", "  option http-server-close",
            "frontend gateway", f"  bind 127.0.0.1:{self.port}", "  default_backend replicas",
            "backend replicas", "  balance leastconn", "  option httpchk GET /health",
            "  http-after-response set-header x-replica %s",
            # Passive checks too: the first refused connection marks a server down at once,
            # or leastconn would send every retry to the dead server (it has the fewest
            # connections) until the active check notices.
            *(f"  server {g.name} 127.0.0.1:{g.port} check inter 300ms fall 2 rise 2 "
              "observe layer4 error-limit 1 on-error mark-down" for g in servers)]
        config.write_text("\n".join(lines) + "\n")
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise SystemExit("haproxy is not installed: apt-get install haproxy")
        self.process = subprocess.Popen([binary, "-f", str(config), "-db"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"haproxy did not start: {self.process.stderr.read()!r}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self.socket))
            conn.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def set_state(self, server: str, state: str) -> None:
        self.command(f"set server replicas/{server} state {state}")

    def stats(self, server: str) -> dict[str, str]:
        header, *rows = self.command("show stat").splitlines()
        names = header.lstrip("# ").split(",")
        for row in rows:
            values = dict(zip(names, row.split(","), strict=False))
            if values.get("pxname") == "replicas" and values.get("svname") == server:
                return values
        return {}

    def wait_status(self, server: str, prefix: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.stats(server).get("status", "").startswith(prefix):
            if time.monotonic() > deadline:
                raise SystemExit(f"haproxy: {server} not {prefix} after {timeout_s}s")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)


# -- load ------------------------------------------------------------------------------


@dataclass
class Result:
    """One request (and its feedback): statuses, the replica that answered (HAProxy's
    ``x-replica``), and when each call was sent and ended (``time.monotonic()`` seconds)."""

    status: int
    replica: str
    decision_id: str | None
    feedback_status: int | None = None
    sent_s: float = 0.0
    latency_s: float = 0.0
    completion_tokens: int = 0
    ended_s: float = 0.0
    feedback_sent_s: float = 0.0
    feedback_ended_s: float = 0.0
    error: str = ""  # the client's exception when no HTTP answer came

    def overlaps(self, start: float, end: float) -> bool:
        """Whether the call that failed was sent before ``end`` and ended after ``start``."""
        if self.status != 200:
            return self.sent_s <= end and self.ended_s >= start
        return self.feedback_sent_s <= end and self.feedback_ended_s >= start


async def load(url: str, concurrency: int, duration_s: float, *, feedback: bool = False,
               headers: dict[str, str] | None = None, seed: int = 0,
               total: int | None = None, stop: asyncio.Event | None = None) -> list[Result]:
    """``concurrency`` workers posting cheap ``auto`` requests (strategy direct, 64 tokens) for
    ``duration_s`` seconds (or ``total`` requests, or until ``stop`` is set), each answered
    request's feedback posted through the balancer when ``feedback``."""
    results: list[Result] = []
    stop_at = time.monotonic() + duration_s
    sent = 0

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + index)
        while (time.monotonic() < stop_at and (total is None or sent < total)
               and (stop is None or not stop.is_set())):
            sent += 1
            text, answer = prompt(rng)
            body = {"model": "auto", "messages": [{"role": "user", "content": text}],
                    "router": {"strategy": "direct", "budget_tokens": 64}}
            t0 = time.perf_counter()
            sent_s = time.monotonic()
            try:
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers=headers) as reply:
                    result = Result(reply.status, reply.headers.get("x-replica", "?"),
                                    reply.headers.get("x-ttc-decision-id"), sent_s=sent_s)
                    text = await reply.text()
                    try:
                        payload = json.loads(text)
                    except json.JSONDecodeError:  # the balancer's own error page
                        payload = {}
                        result.error = text[:160]
            except (TimeoutError, aiohttp.ClientError) as exc:
                result = Result(0, "?", None, sent_s=sent_s, error=repr(exc)[:160])
                payload = {}
            result.latency_s = time.perf_counter() - t0
            result.ended_s = time.monotonic()
            if result.status == 200:
                result.completion_tokens = int(payload["usage"]["completion_tokens"])
            if feedback and result.status == 200 and result.decision_id:
                content = payload["choices"][0]["message"]["content"] or ""
                correct = f"answer is {answer}".lower() in content.lower()
                result.feedback_sent_s = time.monotonic()
                try:
                    async with session.post(url + "/v1/feedback", json={
                            "id": result.decision_id, "correct": correct}) as answered:
                        result.feedback_status = answered.status
                except aiohttp.ClientError as exc:
                    result.feedback_status = 0
                    result.error = repr(exc)[:160]
                result.feedback_ended_s = time.monotonic()
            results.append(result)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
    return results


def summary(results: list[Result], seconds: float) -> str:
    ok = [r for r in results if r.status == 200]
    lat = sorted(r.latency_s for r in ok) or [0.0]
    return (f"{len(ok) / seconds:7.1f} req/s answered, p50 {statistics.median(lat) * 1000:.0f} ms, "
            f"p99 {lat[int(0.99 * (len(lat) - 1))] * 1000:.0f} ms, "
            f"errors {len(results) - len(ok)}")


# -- the claims ------------------------------------------------------------------------


def learner(gateway: Gateway, state: bool = False) -> dict[str, Any]:
    with urllib.request.urlopen(gateway.url + f"/v1/learner?state={str(state).lower()}",
                                timeout=30) as reply:
        return json.load(reply)


async def learning(lb: HAProxy, gateways: list[Gateway], n: int) -> list[tuple[str, bool]]:
    """Answers through the balancer, each feedback to a replica that did not answer it."""
    by_name = {g.name: g for g in gateways}
    rng = random.Random(11)
    posted: list[tuple[str, bool]] = []
    refused = 0
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            nonlocal refused
            text, answer = prompt(random.Random(i))
            async with sem:
                async with session.post(lb.url + "/v1/chat/completions", json={
                        "model": "auto", "messages": [{"role": "user", "content": text}]}) as r:
                    payload = await r.json()
                    served = r.headers["x-replica"]
                content = payload["choices"][0]["message"]["content"] or ""
                correct = f"answer is {answer}".lower() in content.lower()
                other = rng.choice([g for g in gateways if g.name != served])
                decision = payload["router"]["decision_id"]
                async with session.post(other.url + "/v1/feedback", json={
                        "id": decision, "correct": correct}) as f:
                    if f.status != 200:
                        refused += 1
                        return
                posted.append((decision, correct))
                assert by_name[served] is not other

        await asyncio.gather(*(one(i) for i in range(n)))
    print(f"  {len(posted)} feedbacks posted to a replica other than the one that answered; "
          f"{refused} refused")
    return posted


async def reference(pg: PostgresServer, source_url: str, root: Path, upstream: str,
                    gateways: list[Gateway]) -> dict[str, Any]:
    """A fourth gateway alone on a copy of the requests, given the same feedback in the same
    (sequence) order."""
    url = pg.new_database()
    alone = Gateway("alone", free_port(), root / "alone",
                    {"TTC_DATABASE_URL": url, "TTC_LOG_LEVEL": "warning"})
    alone.start(upstream)
    try:
        with psycopg.connect(source_url) as src, psycopg.connect(url) as dst:
            with src.cursor().copy("COPY requests TO STDOUT") as out, \
                    dst.cursor().copy("COPY requests FROM STDIN") as into:
                for data in out:
                    into.write(data)
            events = src.execute("SELECT decision_id, score FROM feedback_events "
                                 "ORDER BY seq").fetchall()
        async with aiohttp.ClientSession() as session:
            for decision, score in events:
                async with session.post(alone.url + "/v1/feedback",
                                        json={"id": decision, "score": score}) as reply:
                    assert reply.status == 200, await reply.text()
        return learner(alone, state=True)
    finally:
        alone.stop()


def greedy_plans(state: dict[str, Any], probes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    from router_models.plan import Scores
    from router_models.policies import LearnedPolicy

    policy = LearnedPolicy.from_state(state, exploration=0.0)
    out = []
    for probe in probes:
        plan = policy.decide(Scores.from_dict(probe)).plan
        out.append((plan.strategy, plan.budget_tokens, plan.width))
    return out


def decisions_in_log(url: str, ids: list[str]) -> int:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT COUNT(*) FROM requests WHERE decision_id = ANY(%s)",
                         (ids,)).fetchone()
    return int(row[0]) if row else 0


def feedback_in_log(url: str, ids: list[str]) -> int:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT COUNT(*) FROM feedback_events WHERE decision_id = ANY(%s)",
                         (ids,)).fetchone()
    return int(row[0]) if row else 0


async def main_async(args: argparse.Namespace) -> int:
    failures: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="ttc-replicas-"))
    pg = start_postgres()
    redis_process, redis_url = start_redis()
    database_url = pg.new_database()
    sim_port = free_port()
    sim = subprocess.Popen([PY, "-m", "service", "sim", "--port", str(sim_port),
                            "--ttft-ms", "2", "--latency-ms-per-token", "0.02"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{sim_port}/v1"
    env = {"TTC_DATABASE_URL": database_url, "TTC_REDIS_URL": redis_url,
           "TTC_LOG_LEVEL": "warning", "TTC_SHUTDOWN_TIMEOUT_S": "20"}
    gateways = [Gateway(f"r{i}", free_port(), root / f"r{i}", dict(env)) for i in (1, 2, 3)]
    lb: HAProxy | None = None
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health", sim)
        for g in gateways:
            g.start(upstream)
        lb = HAProxy(root, gateways)
        for g in gateways:
            lb.wait_status(g.name, "UP")
        print(f"3 gateways (SIMULATED backend ttc-router sim), HAProxy {lb.url}, "
              f"PostgreSQL, Redis; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}")

        if "throughput" in args.phases:
            # Throughput: one replica, then three, same load, same run, alternated twice so that
            # a change in the machine's other load hits both alike.
            await load(lb.url, args.concurrency, 2.0)  # warm-up, every replica
            rates: dict[int, list[float]] = {1: [], 3: []}
            print(f"throughput, concurrency {args.concurrency}, direct answers of <= 64 tokens:")
            for round_ in (1, 2):
                for replicas in (1, 3):
                    for g in gateways[1:]:
                        lb.set_state(g.name, "maint" if replicas == 1 else "ready")
                    for g in gateways[1:replicas]:
                        lb.wait_status(g.name, "UP")
                    results = await load(lb.url, args.concurrency, args.duration_s, seed=round_)
                    rates[replicas].append(sum(r.status == 200 for r in results) / args.duration_s)
                    print(f"  round {round_}, {replicas} replica{'s' if replicas > 1 else ' '}: "
                          f"{summary(results, args.duration_s)}")
            ratio = statistics.mean(rates[3]) / statistics.mean(rates[1])
            print(f"  load average {os.getloadavg()[0]:.1f} (other work on the machine counts too)")
            print(f"  mean: 1 replica {statistics.mean(rates[1]):.1f} req/s, 3 replicas "
                  f"{statistics.mean(rates[3]):.1f} req/s, ratio 3/1 {ratio:.2f}")

        if "durable" in args.phases:
            # The cost of the durable log: one replica with and without it, alternated.
            first = gateways[0]
            durable_rates: dict[str, list[float]] = {"true": [], "false": []}
            for g in gateways[1:]:
                lb.set_state(g.name, "maint")
            for durable in ("false", "true", "false", "true"):
                first.env["TTC_LOG_DURABLE"] = durable
                lb.set_state(first.name, "drain")
                await asyncio.to_thread(first.stop)
                await asyncio.to_thread(first.start, upstream)
                lb.set_state(first.name, "ready")
                await asyncio.to_thread(lb.wait_status, first.name, "UP")
                await load(lb.url, args.concurrency, 1.0)  # warm-up
                results = await load(lb.url, args.concurrency, args.duration_s, seed=5)
                durable_rates[durable].append(sum(r.status == 200 for r in results)
                                              / args.duration_s)
                print(f"  1 replica, log_durable {durable:5}: {summary(results, args.duration_s)}")
            for g in gateways[1:]:
                lb.set_state(g.name, "ready")
            for g in gateways[1:]:
                lb.wait_status(g.name, "UP")
            print(f"  durable log: {statistics.mean(durable_rates['true']):.1f} req/s against "
                  f"{statistics.mean(durable_rates['false']):.1f} without")

        if "learning" in args.phases:
            # 1. Learning.
            print("1. learning across replicas")
            posted = await learning(lb, gateways, args.learn)
            await asyncio.sleep(2.5)  # more than learn_interval_s (1 s)
            status = [learner(g, state=True) for g in gateways]
            cursors = [s["cursor"] for s in status]
            digests = [s["policies"]["learned"]["sha256"] for s in status]
            print(f"  cursors {cursors}; learned state sha256 {[d[:12] for d in digests]}")
            alone = await reference(pg, database_url, root, upstream, gateways)
            print(f"  one gateway alone, same feedback: cursor {alone['cursor']}, sha256 "
                  f"{alone['policies']['learned']['sha256'][:12]}")
            probes = [{"difficulty": d / 10, "sequential": s / 10, "search": 0.1, "form": form}
                      for d in range(1, 10, 2) for s in range(1, 10, 2)
                      for form in ("numeric", "choice", "graph", "yes_no")]
            plans = [greedy_plans(s["policies"]["learned"]["state"], probes) for s in status]
            alone_plans = greedy_plans(alone["policies"]["learned"]["state"], probes)
            same = sum(all(p[i] == alone_plans[i] for p in plans) for i in range(len(probes)))
            print(f"  greedy decisions on {len(probes)} probe prompts: {same} identical on all "
                  "three replicas and the lone gateway")
            if len(set(digests)) != 1 or len(set(cursors)) != 1 or cursors[0] != len(posted):
                failures.append("replicas did not converge")
            if alone["policies"]["learned"]["sha256"] != digests[0] or same != len(probes):
                failures.append("replicas differ from one gateway given the same feedback")

        if "limits" in args.phases:
            # 2. Per-key limits across replicas.
            print("2. per-key limits across replicas (Redis, sliding 60 s windows)")
            cli_env = {**os.environ, **env, "TTC_DATA_DIR": str(root / "cli")}

            def keys(*argv: str) -> str:
                done = subprocess.run([PY, "-m", "service", "keys", *argv], env=cli_env,
                                      capture_output=True, text=True, cwd=ROOT, check=True)
                return done.stdout.strip().splitlines()[-1]

            secret = keys("create", "bench-rpm", "--rpm", "60")
            limited = await load(lb.url, 16, 30.0, total=150,
                                 headers={"Authorization": f"Bearer {secret}"})
            codes = Counter(r.status for r in limited)
            served_by = Counter(r.replica for r in limited if r.status == 200)
            print(f"  rpm 60, 150 requests at concurrency 16: {dict(sorted(codes.items()))}; "
                  f"answered per replica {dict(sorted(served_by.items()))}")
            if codes.get(200) != 60:
                failures.append("the request limit did not hold across replicas")
            secret = keys("create", "bench-tpm", "--tpm", "640")
            limited = await load(lb.url, 16, 30.0, total=150,
                                 headers={"Authorization": f"Bearer {secret}"})
            codes = Counter(r.status for r in limited)
            spent = sum(r.completion_tokens for r in limited)
            print(f"  tpm 640, 150 requests reserving 64 tokens each: "
                  f"{dict(sorted(codes.items()))}; {spent} completion tokens spent (unspent "
                  "reservations given back)")
            if spent > 640 or not codes.get(429):
                failures.append("the token limit did not hold across replicas")
            keys("revoke", "bench-rpm")
            keys("revoke", "bench-tpm")
            await asyncio.sleep(1.5)  # keys_refresh_s: the gateways are open again

        if "kill" in args.phases:
            # 3. SIGKILL under load.
            print(f"3. SIGKILL of one replica under load (concurrency {args.concurrency})")
            victim = gateways[1]
            task = asyncio.create_task(load(lb.url, args.concurrency, args.duration_s,
                                            feedback=True, seed=3))
            await asyncio.sleep(args.duration_s / 3)
            held = lb.stats(victim.name).get("scur", "?")
            assert victim.process is not None
            victim.process.kill()
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.process.wait)
            gone_at = time.monotonic()  # reaped: its sockets, listening one included, closed
            results = await task
            answered = [r.decision_id for r in results if r.status == 200 and r.decision_id]
            fed = [r.decision_id for r in results if r.feedback_status == 200 and r.decision_id]
            errors = [r for r in results if r.status != 200 or r.feedback_status not in (200, None)]
            # The killed replica held the calls in flight at the kill (their connections
            # reset) and those HAProxy sent it before the process was gone (the kernel still
            # accepted them into its listen queue, then reset them): a failed call sent
            # after the process was gone, or ended before the kill, is one the balancer should
            # have avoided.
            others = [r for r in errors if not r.overlaps(killed_at, gone_at)]
            in_log = decisions_in_log(database_url, answered)
            fb_in_log = feedback_in_log(database_url, fed)
            print(f"  {len(results)} requests; {len(answered)} answered, {in_log} of them in the "
                  f"log; {len(fed)} feedbacks accepted, {fb_in_log} in the log")
            print(f"  errors: {len(errors)}, all but {len(others)} on calls in flight between "
                  f"the kill and the process's end {(gone_at - killed_at) * 1000:.0f} ms later "
                  f"({sum(r.overlaps(killed_at, killed_at) for r in errors)} in flight at the "
                  f"kill itself; HAProxy counted {held} sessions on it just before)")
            if in_log != len(answered) or fb_in_log != len(fed):
                failures.append("a decision or a feedback was lost")
            for r in others:
                print(f"    other: status {r.status} via {r.replica}, feedback "
                      f"{r.feedback_status}, sent {r.sent_s - killed_at:+.3f} s, ended "
                      f"{r.ended_s - killed_at:+.3f} s from the kill; {r.error}")
            if others:
                failures.append("errors beyond the requests the killed replica held")
            victim.start(upstream)
            lb.wait_status(victim.name, "UP")

        if "restart" in args.phases:
            # 4. Rolling restart under load.
            print(f"4. rolling restart under load (concurrency {args.concurrency})")
            stop = asyncio.Event()
            task = asyncio.create_task(load(lb.url, args.concurrency, 600, feedback=True, seed=4,
                                            stop=stop))
            started = time.monotonic()
            await asyncio.sleep(1.0)
            for g in gateways:  # what Kubernetes does: out of the endpoints, drain, stop, start
                lb.set_state(g.name, "drain")
                deadline = time.monotonic() + 30
                while lb.stats(g.name).get("scur", "0") != "0" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(g.stop)
                await asyncio.to_thread(g.start, upstream)
                lb.set_state(g.name, "ready")
                await asyncio.to_thread(lb.wait_status, g.name, "UP")
            await asyncio.sleep(1.0)
            stop.set()
            results = await task
            elapsed = time.monotonic() - started
            answered = [r.decision_id for r in results if r.status == 200 and r.decision_id]
            fed = [r.decision_id for r in results if r.feedback_status == 200 and r.decision_id]
            errors = [r for r in results if r.status != 200 or r.feedback_status not in (200, None)]
            print(f"  {len(results)} requests in {elapsed:.1f} s while each replica restarted in "
                  f"turn: {len(errors)} errors; {decisions_in_log(database_url, answered)} of "
                  f"{len(answered)} decisions and {feedback_in_log(database_url, fed)} of "
                  f"{len(fed)} feedbacks in the log")
            if errors:
                failures.append("errors during the rolling restart")
        return 1 if failures else 0
    finally:
        if lb is not None:
            lb.stop()
        for g in gateways:
            g.stop()
        stop_process(sim)
        stop_process(redis_process)
        pg.stop()
        if failures:
            print("FAILED: " + "; ".join(failures))
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learn", type=int, default=240, help="answers with feedback")
    parser.add_argument("--duration-s", type=float, default=6.0, help="each load phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--phases", type=lambda v: set(v.split(",")),
                        default=set(PHASES.split(",")),
                        help=f"which parts to run (default all: {PHASES})")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
