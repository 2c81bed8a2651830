"""``ttc-router ab report NAME`` and ``ttc-router ab replay --policy SPEC [--since T]``: an A/B
experiment's report from the request log (the figures of ``GET /v1/experiments/{name}``), and
an off-policy estimate of another policy's accuracy and tokens from logged decisions. The
statistics live in ``router_models.experiments``; this module reads the log and prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.settings import Settings, SettingsError, load_settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subcommands: Any) -> None:
    ab = subcommands.add_parser(
        "ab", help="A/B experiment reports and off-policy replay of logged decisions",
        description="Read the gateway's request log: an experiment's per-arm accuracy, tokens "
                    "and comparison (report), or what another policy would have scored on "
                    "the logged traffic (replay).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML config file (also TTC_CONFIG): the "
                                                    "experiments, policies, data_dir, "
                                                    "database_url")
    common.add_argument("--data-dir", type=Path, help="state directory (request log, models)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    actions = ab.add_subparsers(dest="action", metavar="ACTION", required=True)

    report = actions.add_parser(
        "report", parents=[common], help="an experiment's report",
        description="Per arm: requests, feedback, accuracy with its 95% Wilson interval, "
                    "mean completion tokens with its 95% interval, correct answers per 1000 "
                    "tokens; the difference between the arms with its interval and p-value; "
                    "and whether the always-valid stopping rule lets the experiment stop.")
    report.add_argument("name", help="the experiment's name in the config")
    report.set_defaults(run=_report)

    replay = actions.add_parser(
        "replay", parents=[common], help="estimate a policy's accuracy and tokens from the log",
        description="Off-policy evaluation: inverse propensity scoring (IPS), self-normalised "
                    "IPS and doubly robust estimates, with 95% intervals and the effective "
                    "sample size, of the accuracy and mean completion tokens SPEC would have "
                    "had on the logged requests. Refuses when the log never explored the "
                    "plans SPEC picks.")
    replay.add_argument("--policy", required=True, metavar="SPEC",
                        help="a policy name from the config, rules, learned, or a spec such "
                             "as fixed:sequential@1024")
    replay.add_argument("--since", metavar="T",
                        help="only requests from T on: Unix seconds, an ISO 8601 time "
                             "(2025-01-31 or 2025-01-31T12:00Z), or an age such as 24h, 7d")
    replay.add_argument("--max-unsupported", type=share, default=0.05, metavar="SHARE",
                        help="the most of the policy's choices allowed on plans the log "
                             "never explored (default 0.05)")
    replay.set_defaults(run=_replay)


def parse_since(text: str, now_s: float | None = None) -> float:
    """``--since`` as Unix seconds: a number, an ISO 8601 date or time (UTC when it names no
    zone), or an age ``N[smhd]`` before now.

    Raises:
        ValueError: none of those.
    """
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return (time.time() if now_s is None else now_s) - float(match[1]) * _UNIT_S[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: expected Unix seconds, an ISO 8601 time or an "
                         "age such as 24h") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def share(text: str) -> float:
    """``text`` as a share from 0 to 1. Raises ``argparse.ArgumentTypeError`` (argparse reports
    it and exits with status 2) otherwise: a share of 2 would call every estimate supported
    however little of the log backs it, and NaN compares false with everything."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1 expected, not {text!r}")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir)


def _fail(message: str, status: int = 1) -> int:
    print(f"ttc-router ab: {message}", file=sys.stderr)
    return status


async def _read(settings: Settings, what: str, **kwargs: Any) -> Any:
    from service.store.log import missing_request_log, open_request_log

    url = settings.database_url.get_secret_value() if settings.database_url else None
    missing = missing_request_log(settings.data_dir, url)
    if missing is not None:  # opening it would create it: read nothing, create nothing
        print(f"ttc-router ab: {missing}", file=sys.stderr)
        return []
    log = open_request_log(settings.data_dir, url)
    await log.backend.open()
    try:
        if what == "totals":
            return await log.backend.arm_totals(kwargs["experiment"])
        return await log.backend.records(since_s=kwargs.get("since_s"))
    finally:
        await log.backend.close()


def _report(args: argparse.Namespace) -> int:
    from service.experiments import build_report

    try:
        settings = _settings(args)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    config = settings.experiments.get(args.name)
    if config is None:
        # The experiments live in the gateway's config file: without it none are known.
        known = ", ".join(sorted(settings.experiments)) or (
            "none configured (pass the gateway's config file: --config FILE or TTC_CONFIG)")
        return _fail(f"unknown experiment {args.name!r}; known: {known}", 2)
    try:
        rows = asyncio.run(_read(settings, "totals", experiment=args.name))
    except Exception as exc:  # the store's errors: report them, do not trace back
        return _fail(f"cannot read the request log: {exc}")
    report = build_report(args.name, config, rows)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _interval(pair: list[float] | None, spec: str = ".3f") -> str:
    return "-" if pair is None else f"[{pair[0]:{spec}}, {pair[1]:{spec}}]"


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table and a few lines of verdict."""
    lines = [f"experiment {report['name']}",
             f"{'arm':14} {'share':>6} {'requests':>9} {'feedback':>9} {'accuracy':>9} "
             f"{'95% Wilson':>17} {'tokens':>8} {'95% CI':>17} {'correct/1k':>10}"]
    for arm, row in report["arms"].items():
        lines.append(
            f"{arm:14} {row['share']:>6.3f} {row['requests']:>9} {row['feedback']:>9} "
            f"{_num(row['accuracy']):>9} {_interval(row['accuracy_ci95']):>17} "
            f"{_num(row['mean_tokens'], '.1f'):>8} "
            f"{_interval(row['mean_tokens_ci95'], '.1f'):>17} "
            f"{_num(row['correct_per_1k_tokens'], '.2f'):>10}")
    c = report["comparison"]
    lines.append(f"\n{c['treatment']} - {c['control']} ({c['metric']}): difference "
                 f"{_num(c['difference'], '+.3f')}, 95% CI {_interval(c['ci95'], '+.3f')}, "
                 f"p = {_num(c['p_value'], '.4f')} (one look)")
    s = report["sequential"]
    verdict = (f"can stop: {s['winner']} is better" if s["can_stop"]
               else "keep running: no arm is better yet at every look")
    lines.append(f"always-valid 95% interval {_interval(s['ci95'], '+.3f')}: {verdict}")
    allocation = report["allocation"]
    if allocation["adaptive"]:
        lines.append("allocation: Thompson sampling on " + allocation["objective"] + (
            " (in force)" if allocation["in_force"] else
            f" (waiting for {allocation['min_feedback']} feedback per arm)"))
    lines.append("ahead on the estimates (not a verdict: see the intervals): "
                 f"{report['leader'] or '-'}")
    return "\n".join(lines)


def _replay(args: argparse.Namespace) -> int:
    from router_models.experiments.replay import replay
    from router_models.policies import PolicyError
    from service.experiments import logged_decisions

    try:
        settings = _settings(args)
        since_s = parse_since(args.since) if args.since else None
    except (SettingsError, ValueError) as exc:
        return _fail(str(exc), 2)
    try:
        policies = logging_policies(settings)
        policy = _policy(settings, args.policy, policies)
    except PolicyError as exc:
        return _fail(str(exc), 2)
    try:
        records = asyncio.run(_read(settings, "records", since_s=since_s))
    except Exception as exc:  # the store's errors: report them, do not trace back
        return _fail(f"cannot read the request log: {exc}")
    print(f"request log: {len(records)} requests" + (f" since {args.since}" if args.since
                                                      else ""), file=sys.stderr)
    decisions = logged_decisions(records, experiments=settings.experiments, policies=policies)
    result = replay(decisions, policy, max_unsupported=args.max_unsupported)
    if args.json:
        print(json.dumps(_replay_json(result), indent=2))
    else:
        print(format_replay(result))
    return 0 if result.supported else 1


def logging_policies(settings: Settings) -> dict[str, Any]:
    """Frozen copies of every policy that may have decided a logged request, by the name or
    spec the log and the config use: ``rules``, ``learned`` (its saved state), the
    configured policies and the experiments' arm specs.

    Raises:
        PolicyError: a configured spec is malformed.
    """
    from router_models import load_default
    from router_models.experiments.replay import freeze
    from router_models.policies import parse_policy

    _, builtins = load_default(settings.data_dir / "models")
    out: dict[str, Any] = dict(builtins)
    for name, spec in settings.policies.items():
        out[name] = out[spec] if spec in out else parse_policy(spec)
    for config in settings.experiments.values():
        for arm in config.arms.values():
            if arm.policy not in out:
                out[arm.policy] = parse_policy(arm.policy)
    return {name: freeze(policy) for name, policy in out.items()}


def _policy(settings: Settings, name: str, policies: dict[str, Any]) -> Any:
    """The target policy ``name`` (a configured name, a built-in, or a spec), a frozen copy.

    Raises:
        PolicyError: an unknown name or a malformed spec.
    """
    from router_models.experiments.replay import freeze
    from router_models.policies import parse_policy

    spec = settings.policies.get(name, name)
    policy = freeze(policies[spec] if spec in policies else parse_policy(spec))
    policy.name = name
    return policy


def _replay_json(result: Any) -> dict[str, Any]:
    def estimates(values: dict[str, Any]) -> dict[str, Any]:
        return {k: {"value": e.value, "ci95": list(e.ci95)} for k, e in values.items()}

    return {"policy": result.policy, "rows": result.rows, "feedback": result.feedback,
            "supported": result.supported, "unsupported_share": result.unsupported,
            "effective_sample_size": result.ess, "accuracy": estimates(result.accuracy),
            "mean_tokens": estimates(result.mean_tokens), "unexplored": result.unexplored,
            "target_plans": result.target_plans, "reason": result.reason}


def format_replay(result: Any) -> str:
    """A replay as text: one line per estimator, then the diagnostics."""
    lines = [f"off-policy estimate for {result.policy} over {result.rows} logged decisions "
             f"({result.feedback} with feedback)"]
    names = {"ips": "IPS", "snips": "self-normalised IPS", "dr": "doubly robust"}
    for key, label in names.items():
        acc = result.accuracy.get(key)
        tok = result.mean_tokens.get(key)
        if acc is None and tok is None:
            continue
        lines.append(f"  {label:20} accuracy "
                     + (f"{acc.value:.3f} [{acc.ci95[0]:.3f}, {acc.ci95[1]:.3f}]"
                        if acc else "-")
                     + "   mean tokens "
                     + (f"{tok.value:.1f} [{tok.ci95[0]:.1f}, {tok.ci95[1]:.1f}]"
                        if tok else "-"))
    lines.append(f"  effective sample size {result.ess:.1f}; target's choices on unexplored "
                 f"plans {result.unsupported:.1%}")
    plans = ", ".join(f"{k} {v:.0%}" for k, v in list(result.target_plans.items())[:5])
    if plans:
        lines.append(f"  the policy's plans: {plans}")
    if result.reason:
        lines.append(f"  {result.reason}")
    return "\n".join(lines)
