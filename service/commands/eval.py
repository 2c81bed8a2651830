"""``ttc-router eval``: run task suites through strategies and budgets against an
OpenAI-compatible URL and report which strategy wins at equal tokens."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from router_models.plan import STRATEGIES

DEFAULT_STRATEGIES = "direct,parallel_vote,sequential"
DEFAULT_BUDGETS = "128,512,2048"
BANK_DEFAULT = Path("-")  # --bank with no PATH: the shipped outcome bank


def register(subcommands: Any) -> None:
    ev = subcommands.add_parser(
        "eval", help="evaluate strategies and budgets on task suites",
        description="Send every item of the suites, under every strategy and budget, to an "
                    "OpenAI-compatible URL (the gateway, or a backend directly), then write "
                    "items.jsonl, summary.json, PNG plots and report.md to --out. A stopped "
                    "run continues where it was when run again with the same --out.")
    ev.add_argument("--backend", required=True,
                    help="base URL ending in /v1 (the gateway, or a backend)")
    ev.add_argument("--suite", default="",
                    help="comma-separated suites: graph_connectivity, arithmetic_chain, "
                         "mc_guess, gsm8k, svamp, multiarith, commonsenseqa, strategyqa, "
                         "mmlu or mmlu:SUBJECT, hotpotqa")
    ev.add_argument("--tasks", type=Path,
                    help="your own tasks: JSONL with question, answer and optional family")
    ev.add_argument("--bank", type=Path, nargs="?", const=BANK_DEFAULT, default=None,
                    metavar="PATH",
                    help="the items of an outcome bank (default: the shipped one), for a "
                         "backend that replays it (ttc-router sim --bank); --suite then "
                         "filters the bank's suites, and each suite is its own family")
    ev.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                    help=f"comma-separated, from {', '.join(STRATEGIES)} "
                         f"(default {DEFAULT_STRATEGIES})")
    ev.add_argument("--budgets", default=DEFAULT_BUDGETS,
                    help=f"comma-separated budget_tokens (default {DEFAULT_BUDGETS})")
    ev.add_argument("--policies", default="",
                    help="comma-separated policy names to add as points (gateway only; "
                         "`auto` is the gateway's own routing)")
    ev.add_argument("--limit", type=int, help="items per suite (default: the whole suite)")
    ev.add_argument("--out", type=Path, default=Path("eval-out"),
                    help="output folder (default ./eval-out)")
    ev.add_argument("--model", default="auto",
                    help="the model field sent (default auto; in client mode, auto is the "
                         "backend's first listed model)")
    ev.add_argument("--mode", choices=("auto", "gateway", "client"), default="auto",
                    help="gateway: send router controls; client: approximate the strategies "
                         "with n and max_tokens on a plain backend; auto: gateway when the "
                         "URL lists the model `auto`")
    ev.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ev.add_argument("--timeout-s", type=float, default=600.0, help="per-request timeout")
    ev.add_argument("--vote-depth-tokens", type=int, default=128,
                    help="client mode: tokens per parallel_vote sample (default 128)")
    ev.add_argument("--data", type=Path,
                    help="benchmark data folder (default $TTC_BENCH_DATA, else ../shared/data)")
    ev.add_argument("--api-key", help="bearer token for the URL, if it needs one")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(run=run)


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--{name}: comma-separated integers expected") from exc
    if not values or min(values) < 1:
        raise ValueError(f"--{name}: at least one positive integer expected")
    return list(dict.fromkeys(values))  # a repeat would send every request again


def run(args: argparse.Namespace) -> int:
    from router_models.tasks import SuiteUnavailable, TaskItem, load_suite, load_tasks_file
    from service.evaluation import report, runner

    try:
        # 0 and negatives mean nothing here (--limit 0 used to run every item of the suites).
        for name, value in (("limit", args.limit), ("concurrency", args.concurrency)):
            if value is not None and value < 1:
                raise ValueError(f"--{name}: a positive integer expected, not {value}")
        if not args.timeout_s > 0:
            raise ValueError(f"--timeout-s: a positive number of seconds expected, not "
                             f"{args.timeout_s}")
        budgets = _ints(args.budgets, "budgets")
        # Repeats dropped, order kept: a repeated one would send every request again.
        strategies = list(dict.fromkeys(s.strip() for s in args.strategies.split(",")
                                        if s.strip()))
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise ValueError(f"--strategies: unknown {', '.join(unknown) or '(none)'}; "
                             f"known: {', '.join(STRATEGIES)}")
        suites = list(dict.fromkeys(s.strip() for s in args.suite.split(",") if s.strip()))
        if not suites and args.tasks is None and args.bank is None:
            raise ValueError("give --suite, --tasks, --bank or several")
        items: list[TaskItem] = []
        if args.bank is not None:
            items += bank_items(args.bank, suites, args.limit)
        else:
            for name in suites:
                items += load_suite(name, limit=args.limit, data_dir=args.data)
        if args.tasks is not None:
            # A task without a family is reported under its file's name, not under a family
            # of the simulator's that says what kind of task it is.
            tasks = load_tasks_file(args.tasks, default_family=args.tasks.stem)
            if not tasks:
                # Else the run measures nothing yet writes a report and exits 0.
                raise ValueError(f"--tasks {args.tasks}: no tasks in it (one JSON object a "
                                 "line with question and answer)")
            items += tasks[:args.limit]
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {args.out}: cannot create the output folder "
                             f"({exc.strerror or exc})") from exc
    except (ValueError, OSError, SuiteUnavailable) as exc:
        print(f"ttc-router eval: {exc}", file=sys.stderr)
        return 2
    policies = list(dict.fromkeys(p.strip() for p in args.policies.split(",") if p.strip()))
    jobs = runner.plan_jobs(items, strategies, budgets, policies)
    options = runner.RunOptions(backend=args.backend, model=args.model, mode=args.mode,
                                concurrency=args.concurrency, timeout_s=args.timeout_s,
                                vote_depth_tokens=args.vote_depth_tokens, api_key=args.api_key)

    def progress(done: int, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, initial=done, unit="req", desc="eval",
                    disable=args.no_progress, file=sys.stderr)

    started = time.perf_counter()
    try:
        mode, sent = asyncio.run(runner.run_jobs(jobs, args.out, options, progress))
    except runner.EvalError as exc:
        print(f"ttc-router eval: {exc}", file=sys.stderr)
        return 1
    skipped = sorted({j.strategy for j in jobs if runner.needs_gateway(j)}) \
        if mode == "client" else []
    if skipped:
        # Said aloud: the user asked for these points, and the report will not have them.
        print(f"ttc-router eval: {args.backend} is a plain backend (client mode): "
              f"{', '.join(skipped)} need the gateway and were skipped", file=sys.stderr)
        if all(runner.needs_gateway(j) for j in jobs):
            return 2
    records = runner.read_records(args.out / runner.ITEMS_FILE)
    # The model sent, which differs from --model when client mode took the backend's own.
    model = json.loads((args.out / runner.RUN_FILE).read_text()).get("model", args.model)
    meta = {"backend": args.backend, "mode": mode, "model": model,
            "suites": suites + (["tasks"] if args.tasks else []) + (["bank"] if args.bank else []),
            "strategies": strategies,
            "budgets": budgets, "policies": policies, "limit": args.limit,
            "wall_s": round(time.perf_counter() - started, 2), "sent": sent,
            "latency_sum_s": round(sum(r.get("latency_s", 0) for r in records), 2),
            "command": "ttc-router " + shlex.join(sys.argv[1:])}
    summary = report.write_report(args.out, records, meta)
    print(f"{summary['records']} records ({summary['errors']} errors), {sent} sent now, mode "
          f"{mode}: {args.out / report.REPORT_FILE}", file=sys.stderr)
    if records and summary["errors"] == summary["records"]:
        # Nothing was measured: the report's tables are empty, so the exit status must say so.
        print(f"ttc-router eval: every request failed; the first: {records[0]['error']} "
              f"(the rest are in {args.out / runner.ITEMS_FILE})", file=sys.stderr)
        return 1
    for point, error in failed_points(records):
        # A misspelt --policies name is a 400 on each of its requests; the report's row of
        # zeros, with its errors column, is easy to read as a measurement.
        print(f"ttc-router eval: every request of {point} failed; the first: {error}",
              file=sys.stderr)
    return 0


def failed_points(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(point, first error) for each strategy at a budget, or policy, whose every record
    is an error: ``"sequential @128"``, ``"policy:rules"``."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        budget = record.get("budget_tokens")
        point = record["strategy"] + (f" @{budget}" if budget is not None else "")
        by_point.setdefault(point, []).append(record)
    return [(point, str(rows[0]["error"])[:300]) for point, rows in by_point.items()
            if all(row.get("error") for row in rows)]


def bank_items(path: Path, suites: list[str], limit: int | None) -> list[Any]:
    """The items of an outcome bank, the first ``limit`` of each of ``suites`` (all suites
    when empty), each with its suite as its family so the report compares suites.

    Raises:
        router_models.bank.BankError (a ValueError): the bank cannot be read.
    """
    import dataclasses

    from router_models.bank import Bank

    bank = Bank.load(None if path == BANK_DEFAULT else path)
    counts: dict[str, int] = {}
    items = []
    for item in bank.items():
        suite = item.suite.partition(":")[0]
        if (suites and suite not in suites) or (limit and counts.get(suite, 0) >= limit):
            continue
        counts[suite] = counts.get(suite, 0) + 1
        items.append(dataclasses.replace(item, family=suite))
    if not items:
        raise ValueError(f"the bank at {bank.path} has no items of {', '.join(suites)}")
    return items
