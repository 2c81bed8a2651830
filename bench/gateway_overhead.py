"""Gateway overhead: latency and throughput added by ``ttc-router serve`` over a fast backend.

What it measures
    Non-streamed ``POST /v1/chat/completions`` (a small chat request, a fixed small
    ``chat.completion`` reply with ``usage``) sent to a fake OpenAI-compatible backend that
    answers at once, through each of these targets:

    - ``direct``        the fake backend itself (raw ``aiohttp.web`` on uvloop): the floor;
    - ``gateway``       ``ttc-router serve --upstream <backend>/v1`` (its own uvicorn);
    - ``proxy-aiohttp`` a bare pass-through: FastAPI + one ``aiohttp.ClientSession``;
    - ``proxy-httpx``   a bare pass-through: FastAPI + one ``httpx.AsyncClient`` (httpcore);
    - ``proxy-httpx-aiohttp`` the same with httpx over ``httpx_aiohttp.AiohttpTransport``, the
      client stack the gateway uses (service/upstream.py), so its cost can be told apart
      from the gateway's own code.

    The proxies only read the body, forward it and return the reply: they are what any
    Python gateway costs at least. Every FastAPI server runs under uvicorn with uvloop and
    httptools, each server in its own subprocess, all on 127.0.0.1. The load generator is this
    process (aiohttp on uvloop): at each concurrency level it sends a fixed number of requests
    to each target after a warm-up, in rounds with the target order rotated so that slow drift
    of a noisy machine hits every target alike. It reports p50/p99 latency (ms), requests/s,
    and the CPU time the target's front process spent per request (from /proc, Linux only).

    The machine, the servers and the load generator share the same few cores, so absolute
    numbers mean little; the ratios measured in the same run are what the targets check:

    - at concurrency 1 the gateway adds at most 1 ms to the direct p50 latency;
    - at concurrency 32 the gateway's throughput is at least 70% of the bare aiohttp proxy's.

How to run it (from the repository root, with the project's virtualenv)
    .venv/bin/python bench/gateway_overhead.py                 # full run, about 40 s on 2 cores
    .venv/bin/python bench/gateway_overhead.py --quick         # a short smoke run
    .venv/bin/python bench/gateway_overhead.py --concurrency 1,8,32 --requests 5000 \\
        --json bench-gateway.json

    ``--baseline DIR`` adds the target ``gateway-baseline``: the same gateway started from the
    source tree DIR (``PYTHONPATH=DIR``), for example a worktree of the commit before a change
    (``git worktree add /tmp/before main``), so a change's cost is measured against its parent
    in one run, with the same noise.

    ``--requests N`` is the number of measured requests per target and level (default 1000 at
    concurrency 1 and 3000 above). The exit status is 0 when both targets are met, 1 when one
    is missed, 2 when the run could not be made. Every subprocess is stopped on exit, Ctrl-C
    included.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MODEL = "bench-model"
TARGETS = ("direct", "gateway", "proxy-aiohttp", "proxy-httpx", "proxy-httpx-aiohttp")
PROXY_ROLES = ("proxy-aiohttp", "proxy-httpx", "proxy-httpx-aiohttp")

# The targets checked (see the module docstring).
MAX_ADDED_P50_MS_AT_C1 = 1.0
MIN_THROUGHPUT_VS_AIOHTTP_PROXY_AT_C32 = 0.70

CHAT_REPLY: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
MODELS_REPLY: dict[str, Any] = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}],
}
CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
    "temperature": 0,
}


# --- the servers, each run in its own subprocess as `gateway_overhead.py --serve ROLE` -------


def _serve_backend(port: int) -> None:
    """The fake OpenAI-compatible backend: raw aiohttp.web on uvloop, no access log."""
    import uvloop
    from aiohttp import web

    chat = json.dumps(CHAT_REPLY, separators=(",", ":")).encode()
    models = json.dumps(MODELS_REPLY, separators=(",", ":")).encode()

    async def chat_completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=chat, content_type="application/json")

    async def list_models(request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat_completions)
        app.router.add_get("/v1/models", list_models)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(main())


def _proxy_app(role: str, upstream: str) -> Any:
    """A bare pass-through FastAPI app for ``/v1/*`` with one shared client (role picks it)."""
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if role == "proxy-aiohttp":
            import aiohttp

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=512),
                timeout=aiohttp.ClientTimeout(total=30))
            state["session"] = session
            try:
                yield
            finally:
                await session.close()
        else:
            import httpx

            limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
            transport = None
            if role == "proxy-httpx-aiohttp":
                from httpx_aiohttp import AiohttpTransport

                transport = AiohttpTransport(limits=limits)
            client = httpx.AsyncClient(transport=transport, limits=limits,
                                       timeout=httpx.Timeout(30.0))
            state["client"] = client
            try:
                yield
            finally:
                await client.aclose()

    app = FastAPI(lifespan=lifespan)

    if role == "proxy-aiohttp":
        @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
        async def forward_aiohttp(path: str, request: Request) -> Response:
            body = await request.body()
            headers = {"content-type": request.headers.get("content-type", "application/json")}
            async with state["session"].request(request.method, f"{upstream}/{path}",
                                                data=body or None, headers=headers) as reply:
                content = await reply.read()
                return Response(content, status_code=reply.status,
                                media_type=reply.headers.get("content-type"))
    else:
        @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
        async def forward_httpx(path: str, request: Request) -> Response:
            body = await request.body()
            headers = {"content-type": request.headers.get("content-type", "application/json")}
            reply = await state["client"].request(request.method, f"{upstream}/{path}",
                                                  content=body or None, headers=headers)
            return Response(reply.content, status_code=reply.status_code,
                            media_type=reply.headers.get("content-type"))

    return app


def _serve_proxy(role: str, port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.run(_proxy_app(role, upstream.rstrip("/")), host=HOST, port=port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, backlog=1024)


# --- subprocesses --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: str = "/v1/models"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Servers:
    """Starts the subprocesses and always stops them (``stop_all``, also from ``atexit``)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.servers: dict[str, Server] = {}

    def start(self, name: str, argv: list[str], port: int, ready_path: str = "/v1/models",
              extra_env: dict[str, str] | None = None) -> Server:
        log_path = self.log_dir / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = Server(name, port, proc, log_path, ready_path)
        self.servers[name] = server
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():
            if server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for server in self.servers.values():
            try:
                server.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.kill()
                server.proc.wait(5.0)
        self.servers.clear()


async def _wait_ready(server: Server, timeout_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    url = server.base + server.ready_path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with status {server.proc.returncode}:"
                                   f"\n{server.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} not ready within {timeout_s:.0f} s:"
                                   f"\n{server.log_tail()}")
            await asyncio.sleep(0.1)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# --- the load generator --------------------------------------------------------------------


@dataclass
class Sample:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float | None = 0.0


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    rps: float
    cpu_us_per_req: float | None


async def _load(session: Any, url: str, body: bytes, n: int, concurrency: int,
                deadline: float) -> Sample:
    """Send ``n`` POSTs with ``concurrency`` workers (stops at ``deadline``, monotonic)."""
    import aiohttp

    sample = Sample()
    remaining = n
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            ok = False
            try:
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if ok:
                sample.latencies_s.append(time.perf_counter() - started)
            else:
                sample.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall_s = time.perf_counter() - started
    return sample


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (q in [0, 1])."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def _run_level(servers: dict[str, Server], targets: list[str], concurrency: int,
                     n: int, rounds: int, warmup: int, max_seconds: float) -> list[Result]:
    import aiohttp

    body = json.dumps(CHAT_REQUEST).encode()
    merged = {t: Sample(cpu_s=0.0) for t in targets}
    per_round = [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]
    sessions = {
        t: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            timeout=aiohttp.ClientTimeout(total=30))
        for t in targets}
    try:
        for t in targets:  # warm-up: connections opened, code paths and caches hot
            url = servers[t].base + "/v1/chat/completions"
            warm = await _load(sessions[t], url, body, warmup, concurrency,
                               time.monotonic() + max_seconds)
            if not warm.latencies_s:
                raise RuntimeError(f"{t}: every warm-up request failed:\n"
                                   f"{servers[t].log_tail()}")
        for r, count in enumerate(per_round):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                url = servers[t].base + "/v1/chat/completions"
                pid = servers[t].proc.pid
                cpu_before = _cpu_seconds(pid)
                sample = await _load(sessions[t], url, body, count, concurrency,
                                     time.monotonic() + max_seconds / rounds)
                cpu_after = _cpu_seconds(pid)
                into = merged[t]
                into.latencies_s += sample.latencies_s
                into.errors += sample.errors
                into.wall_s += sample.wall_s
                if into.cpu_s is not None and cpu_before is not None and cpu_after is not None:
                    into.cpu_s += cpu_after - cpu_before
                else:
                    into.cpu_s = None
    finally:
        for session in sessions.values():
            await session.close()

    results = []
    for t in targets:
        s = merged[t]
        lat = sorted(s.latencies_s)
        done = len(lat)
        results.append(Result(
            target=t, concurrency=concurrency, requests=done, errors=s.errors,
            p50_ms=_quantile(lat, 0.50) * 1e3, p99_ms=_quantile(lat, 0.99) * 1e3,
            mean_ms=statistics.fmean(lat) * 1e3 if lat else float("nan"),
            rps=done / s.wall_s if s.wall_s > 0 else 0.0,
            cpu_us_per_req=(s.cpu_s / done * 1e6) if (s.cpu_s is not None and done) else None))
    return results


# --- report --------------------------------------------------------------------------------


def _by(results: list[Result], target: str, concurrency: int) -> Result | None:
    for r in results:
        if r.target == target and r.concurrency == concurrency:
            return r
    return None


def _table(results: list[Result]) -> str:
    head = (f"{'target':<20} {'conc':>4} {'reqs':>5} {'err':>3} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'req/s':>7} {'cpu us/req':>10} {'+p50 ms':>8} {'rps/direct':>10} "
            f"{'rps/aiohttp-proxy':>17}")
    lines = [head, "-" * len(head)]
    for r in results:
        direct = _by(results, "direct", r.concurrency)
        proxy = _by(results, "proxy-aiohttp", r.concurrency)
        added = f"{r.p50_ms - direct.p50_ms:+8.2f}" if direct else f"{'-':>8}"
        vs_direct = f"{r.rps / direct.rps:10.2f}" if direct and direct.rps else f"{'-':>10}"
        vs_proxy = f"{r.rps / proxy.rps:17.2f}" if proxy and proxy.rps else f"{'-':>17}"
        cpu = f"{r.cpu_us_per_req:10.0f}" if r.cpu_us_per_req is not None else f"{'-':>10}"
        lines.append(f"{r.target:<20} {r.concurrency:>4} {r.requests:>5} {r.errors:>3} "
                     f"{r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.rps:7.0f} {cpu} {added} "
                     f"{vs_direct} {vs_proxy}")
    return "\n".join(lines)


def _versus_baseline(results: list[Result]) -> str:
    """The gateway against ``gateway-baseline`` at each concurrency, measured in this run."""
    lines = ["gateway vs gateway-baseline (same run):"]
    for r in results:
        base = _by(results, "gateway-baseline", r.concurrency)
        if r.target != "gateway" or base is None:
            continue
        cpu = (f", CPU/request x{r.cpu_us_per_req / base.cpu_us_per_req:.3f}"
               if r.cpu_us_per_req and base.cpu_us_per_req else "")
        lines.append(f"  concurrency {r.concurrency}: p50 {r.p50_ms - base.p50_ms:+.3f} ms, "
                     f"req/s x{r.rps / base.rps:.3f}{cpu}")
    return "\n".join(lines)


def _checks(results: list[Result]) -> list[dict[str, Any]]:
    checks = []
    gw, direct = _by(results, "gateway", 1), _by(results, "direct", 1)
    if gw and direct:
        added = gw.p50_ms - direct.p50_ms
        checks.append({
            "name": "gateway added p50 vs direct at concurrency 1",
            "value": round(added, 3), "unit": "ms", "limit": f"<= {MAX_ADDED_P50_MS_AT_C1}",
            "passed": added <= MAX_ADDED_P50_MS_AT_C1})
    gw, proxy = _by(results, "gateway", 32), _by(results, "proxy-aiohttp", 32)
    if gw and proxy and proxy.rps:
        ratio = gw.rps / proxy.rps
        checks.append({
            "name": "gateway req/s vs bare aiohttp proxy at concurrency 32",
            "value": round(ratio, 3), "unit": "x",
            "limit": f">= {MIN_THROUGHPUT_VS_AIOHTTP_PROXY_AT_C32}",
            "passed": ratio >= MIN_THROUGHPUT_VS_AIOHTTP_PROXY_AT_C32})
    return checks


# --- main ----------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Latency and throughput the gateway adds over a fast fake backend, "
                    "next to bare FastAPI pass-through proxies.")
    p.add_argument("--requests", type=int, default=None, metavar="N",
                   help="measured requests per target and level (default 1000 at "
                        "concurrency 1, 3000 above; --quick: 150 and 400)")
    p.add_argument("--concurrency", default="1,8,32",
                   help="comma-separated concurrency levels (default 1,8,32)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated targets (default {','.join(TARGETS)})")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per level, target order rotated each round (default 5; "
                        "--quick: 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up requests per target and level (default 100 + 4 x concurrency)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="time limit per target and level; unfinished requests are dropped")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run the gateway from the source tree DIR (gateway-baseline)")
    p.add_argument("--quick", action="store_true", help="a short run (a smoke test)")
    p.add_argument("--gateway-bin", default=None,
                   help="the ttc-router executable (default: next to this Python)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the servers' logs (their folder is printed)")
    # Internal: run one server in this process.
    p.add_argument("--serve", choices=("backend", *PROXY_ROLES), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _gateway_bin(given: str | None) -> str:
    if given:
        return given
    beside = Path(sys.executable).parent / "ttc-router"
    if beside.exists():
        return str(beside)
    found = shutil.which("ttc-router")
    if not found:
        raise RuntimeError("ttc-router not found: install the project or pass --gateway-bin")
    return found


async def _bench(args: argparse.Namespace, servers: Servers, targets: list[str],
                 levels: list[int]) -> list[Result]:
    this = str(Path(__file__).resolve())
    py = sys.executable
    port = _free_port()
    backend = servers.start("direct", [py, this, "--serve", "backend", "--port", str(port)],
                            port)
    await _wait_ready(backend, 30)
    upstream = backend.base + "/v1"
    for t in targets:
        if t == "direct":
            continue
        port = _free_port()
        extra_env = None
        if t in ("gateway", "gateway-baseline"):
            argv = [_gateway_bin(args.gateway_bin), "serve", "--upstream", upstream,
                    "--port", str(port), "--log-level", "warning"]
            # A data directory of its own: the default one (~/.local/share/ttc-router) is the
            # user's, holds a request log that grows with every run, and a learned policy
            # another checkout wrote that this one may not read (a field it does not know
            # stopped the gateway at start-up).
            extra_env = {"TTC_DATA_DIR": str(servers.log_dir / f"data-{t}")}
            if t == "gateway-baseline":
                extra_env["PYTHONPATH"] = str(args.baseline.resolve())
        else:
            argv = [py, this, "--serve", t, "--port", str(port), "--upstream", upstream]
        servers.start(t, argv, port, extra_env=extra_env)
    for t in targets:
        await _wait_ready(servers.servers[t], 60)

    results: list[Result] = []
    for c in levels:
        n = args.requests or ((150 if c == 1 else 400) if args.quick
                              else (1000 if c == 1 else 3000))
        rounds = args.rounds or (1 if args.quick else 5)
        warmup = args.warmup if args.warmup is not None else (
            (20 + 2 * c) if args.quick else (100 + 4 * c))
        started = time.perf_counter()
        level = await _run_level(servers.servers, targets, c, n, max(1, rounds), warmup,
                                 args.max_seconds)
        print(f"  concurrency {c}: {n} requests x {len(targets)} targets in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        results += level
    return results


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.serve == "backend":
        _serve_backend(args.port)
        return 0
    if args.serve:
        _serve_proxy(args.serve, args.port, args.upstream)
        return 0

    import uvloop

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not levels or min(levels) < 1:
        print(f"bad --targets {unknown} or --concurrency {args.concurrency!r}", file=sys.stderr)
        return 2
    if "direct" not in targets:
        targets.insert(0, "direct")
    if args.baseline is not None:
        if not (args.baseline / "service" / "__init__.py").is_file():
            print(f"--baseline {args.baseline}: no service/ package there", file=sys.stderr)
            return 2
        targets.insert(targets.index("gateway") + 1 if "gateway" in targets else 1,
                       "gateway-baseline")

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    servers = Servers(log_dir)
    print(f"gateway overhead: targets {', '.join(targets)}; concurrency "
          f"{', '.join(map(str, levels))}; {os.cpu_count()} CPUs; logs in {log_dir}",
          file=sys.stderr, flush=True)
    try:
        results = uvloop.run(_bench(args, servers, targets, levels))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"gateway overhead: {exc}", file=sys.stderr)
        return 2
    finally:
        servers.stop_all()
        if not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)

    print(_table(results))
    if args.baseline is not None:
        print()
        print(_versus_baseline(results))
    checks = _checks(results)
    print()
    for check in checks:
        verdict = "PASS" if check["passed"] else "FAIL"
        print(f"[{verdict}] {check['name']}: {check['value']} {check['unit']} "
              f"(target {check['limit']})")
    if args.json:
        args.json.write_text(json.dumps({
            "meta": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                     "concurrency": levels, "targets": targets, "quick": args.quick,
                     "requests": args.requests, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "results": [asdict(r) for r in results],
            "checks": checks,
        }, indent=2) + "\n")
    errors = sum(r.errors for r in results)
    if errors:
        print(f"warning: {errors} requests failed", file=sys.stderr)
    return 0 if checks and all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
