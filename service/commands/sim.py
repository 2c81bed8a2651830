"""``ttc-router sim``: serve the simulated reasoner (SIMULATION) over the OpenAI API, or, with
``--bank``, replay a real model's recorded outcomes (``service.bank_replay``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

BANK_DEFAULT = Path("-")  # --bank with no PATH: the shipped bank


def register(subcommands: Any) -> None:
    sim = subcommands.add_parser(
        "sim", help="serve the simulated reasoner (a SIMULATION backend)",
        description="Serve a simulated reasoner over the OpenAI API, for evaluations, load and "
                    "fault tests. Its per-family behaviour is set in YAML (--world); it "
                    "recognises known benchmark and generated questions, or a marker "
                    "[[sim family=NAME difficulty=0.4 answer=42]] in the prompt. Every reply "
                    "is labelled as a simulation (model sim-reasoner, system_fingerprint "
                    "simulation). With --bank it instead replays a real model's outcomes "
                    "recorded by bench/outcome_bank.py (model bank-replay).")
    sim.add_argument("--bank", type=Path, nargs="?", const=BANK_DEFAULT, default=None,
                     metavar="PATH",
                     help="replay this outcome bank folder instead of simulating; with no "
                          "PATH, the bank the project ships (router_models/data/bank)")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=port, default=8100, help="port to listen on (default 8100)")
    sim.add_argument("--world", type=Path,
                     help="world YAML (default: the shipped router_models/data/sim_world.yaml)")
    sim.add_argument("--world-seed", type=int, metavar="N",
                     help="serve randomized world N instead (router_models.worlds; a "
                          "SIMULATION): it recognises that world's prompts")
    sim.add_argument("--world-tasks", type=Path, metavar="FILE",
                     help="with --world-seed: also write the world's held-out prompts to FILE "
                          "(JSONL for `ttc-router eval --tasks`)")
    sim.add_argument("--tasks", type=Path, action="append", default=[],
                     help="also recognise these tasks (JSONL: question, answer, family); "
                          "repeatable")
    sim.add_argument("--data", type=Path,
                     help="benchmark data folder whose questions it recognises (default "
                          "$TTC_BENCH_DATA, else ../shared/data when present)")
    sim.add_argument("--latency-ms-per-token", type=float, default=None,
                     help="decode time per token, milliseconds (default 0.5; 0 with --bank)")
    sim.add_argument("--ttft-ms", type=float, default=None,
                     help="time to the first token, milliseconds (default 10; 0 with --bank)")
    sim.add_argument("--log-level", default="warning", help="uvicorn log level")
    sim.set_defaults(run=run)


def port(text: str) -> int:
    """``text`` as a TCP port, 1-65535. Raises ``argparse.ArgumentTypeError`` (argparse reports
    it and exits with status 2) otherwise: the socket layer takes a port modulo 65536, so 99999
    would be announced while 34463 was bound."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port from 1 to 65535 expected, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.bank is not None:
        return run_bank(args)
    args.latency_ms_per_token = 0.5 if args.latency_ms_per_token is None \
        else args.latency_ms_per_token
    args.ttft_ms = 10.0 if args.ttft_ms is None else args.ttft_ms

    from router_models.simulation import World, WorldError
    from router_models.tasks import load_tasks_file
    from router_models.tasks.registry import TaskRegistry
    from service.sim import SimConfig, create_sim_app

    if args.latency_ms_per_token < 0 or args.ttft_ms < 0:
        print("ttc-router sim: latencies must be >= 0", file=sys.stderr)
        return 2
    if args.world_seed is not None and args.world is not None:
        print("ttc-router sim: give --world or --world-seed, not both", file=sys.stderr)
        return 2
    if args.world_tasks is not None and args.world_seed is None:
        print("ttc-router sim: --world-tasks needs --world-seed", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.world_seed is not None:
        try:
            world, registry, world_name = _randomized(args.world_seed, args.world_tasks)
        except OSError as exc:
            print(f"ttc-router sim: --world-tasks {args.world_tasks}: cannot write it "
                  f"({exc.strerror or exc})", file=sys.stderr)
            return 2
    else:
        try:
            world = World.load(args.world)
        except WorldError as exc:
            print(f"ttc-router sim: {exc}", file=sys.stderr)
            return 2
        registry = TaskRegistry.default(args.data, default_family=world.default_family)
        world_name = str(args.world) if args.world else "sim_world.yaml"
    try:
        for path in args.tasks:
            registry.add(load_tasks_file(path, world.default_family))
    except (OSError, ValueError) as exc:
        print(f"ttc-router sim: {exc}", file=sys.stderr)
        return 2
    print(f"SIMULATION: sim-reasoner on http://{args.host}:{args.port}/v1, "
          f"{len(world.families())} families, {len(registry)} known questions "
          f"(loaded in {time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    config = SimConfig(world=world, registry=registry,
                       latency_per_token_s=args.latency_ms_per_token / 1000,
                       ttft_s=args.ttft_ms / 1000,
                       world_name=world_name)
    uvicorn.run(create_sim_app(config), host=args.host, port=args.port,
                log_level=args.log_level, access_log=False)
    return 0


def run_bank(args: argparse.Namespace) -> int:
    """Serve an outcome bank (``--bank``); 2 when it cannot be read, or when an option of the
    simulator (``--world``, ``--world-seed``, ``--world-tasks``, ``--tasks``, ``--data``) is
    given with it."""
    import uvicorn

    from router_models.bank import Bank, BankError
    from service.bank_replay import ReplayConfig, create_replay_app

    # The simulator's own options say which world or questions to simulate; a replay answers
    # only the bank's questions with their recorded outcomes, so they would be ignored.
    given = [flag for flag, value in (("--world", args.world), ("--world-seed", args.world_seed),
                                      ("--world-tasks", args.world_tasks),
                                      ("--tasks", args.tasks), ("--data", args.data))
             if value not in (None, [])]
    if given:
        print(f"ttc-router sim: {', '.join(given)} set up the simulator; --bank replays the "
              "outcome bank's questions only", file=sys.stderr)
        return 2
    latency = args.latency_ms_per_token or 0.0
    ttft = args.ttft_ms or 0.0
    if latency < 0 or ttft < 0:
        print("ttc-router sim: latencies must be >= 0", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        bank = Bank.load(None if args.bank == BANK_DEFAULT else args.bank)
    except (BankError, OSError) as exc:
        print(f"ttc-router sim: {exc}", file=sys.stderr)
        return 2
    suites = ", ".join(f"{name} {count}" for name, count in bank.suites().items())
    print(f"BANK REPLAY: bank-replay of {bank.meta.get('model_file', 'an unnamed model')} on "
          f"http://{args.host}:{args.port}/v1, {len(bank)} runs from {bank.path} ({suites}; "
          f"loaded in {time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    config = ReplayConfig(bank=bank, latency_per_token_s=latency / 1000, ttft_s=ttft / 1000)
    uvicorn.run(create_replay_app(config), host=args.host, port=args.port,
                log_level=args.log_level, access_log=False)
    return 0


def _randomized(seed: int, tasks_out: Path | None) -> tuple[Any, Any, str]:
    """World ``seed`` of the randomized family, a registry of its prompts, and its label;
    writes its held-out prompts to ``tasks_out`` when given. Raises OSError when that file
    cannot be written."""
    import json

    from router_models.tasks.registry import TaskRegistry
    from router_models.world_backend import WorldReasoner

    world = WorldReasoner(seed)
    registry = TaskRegistry(world.items, default_family=world.default_family)
    if tasks_out is not None:
        rows = [{"id": item.item_id, "question": item.question, "answer": item.answer,
                 "family": item.family, "difficulty": item.difficulty}
                for item in world.items if item.item_id.startswith("eval-")]
        tasks_out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    label = f"randomized world {seed} ({world.world.world_type})"
    return world, registry, label
