"""``ttc-router train``: re-fit the classifier and the learned policy, and print held-out
metrics; ``--from-log`` re-fits the learned policy to the gateway's own decisions with
feedback. The fitting itself lives in ``router_models.train``; this module parses flags,
reads the request log (a thin adapter over ``service.store``) and prints."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router_models.classifier import DEFAULT_ARTIFACT_DIR, ArtifactError, Classifier
from router_models.plan import Plan, Scores
from router_models.policies import LearnedPolicy, PolicyError, parse_policy
from service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:  # router_models.train imports scikit-learn's solvers: only when training
    from router_models.train import FeedbackRecord


def register(subcommands: Any) -> None:
    train = subcommands.add_parser(
        "train", help="re-fit the classifier and policies; print held-out metrics",
        description="Fit the prompt classifier on the shared benchmark data (zero_shot_cot "
                    "logs, routellm, GSM8K solutions, task families, generated tasks), print "
                    "per-score AUC and Brier score by dataset and the strategy each policy "
                    "picks per task family, and write the artifacts. The same data and seed "
                    "give the same bytes. With --from-log, replay the gateway's logged "
                    "decisions with feedback into the learned policy instead.")
    train.add_argument("--data", type=Path, default=None, metavar="DIR",
                       help="the shared benchmark data (default: ../shared/data next to "
                            "the source tree)")
    train.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="where to write classifier.npz and classifier.json (and, "
                            "with --from-log, learned.json) (default: DATA_DIR/models; pass "
                            "router_models/artifacts to rebuild the shipped default)")
    train.add_argument("--seed", type=int, default=0, help="split and sampling seed")
    train.add_argument("--limit", type=int, default=None, metavar="N",
                       help="keep only the first N examples of each dataset (quick runs)")
    train.add_argument("--generated", type=int, default=1500, metavar="N",
                       help="generated tasks of each family (graph connectivity, arithmetic "
                            "chains)")
    train.add_argument("--target-tokens", type=float,
                       default=float(Settings.model_fields["learned_target_tokens"].default),
                       help="the learned policy's mean budget per request in the strategy "
                            "table (tokens; default: the gateway's learned_target_tokens)")
    train.add_argument("--bank", type=Path, default=None, metavar="DIR",
                       help="also learn from an outcome bank recorded from the local model "
                            "(a folder of JSONL shards, e.g. router_models/data/bank): "
                            "short votes, chains and searches per question")
    train.add_argument("--bank-until", type=utc_time, default=None, metavar="TIME",
                       help="with --bank, only the runs recorded at or before this time "
                            "(ISO 8601, e.g. 2026-12-06T19:30:00Z; UTC unless it gives an "
                            "offset): a growing bank's snapshot, "
                            "so the same bytes can be rebuilt later (the shipped artifact's "
                            "is in classifier.json, under bank)")
    train.add_argument("--report", action="store_true",
                       help="also evaluate leave-one-dataset-out (fit on every benchmark "
                            "family but one, score that one, for each family) and print AUC "
                            "and Brier score per score and held-out dataset as a Markdown "
                            "table (several minutes)")
    train.add_argument("--from-log", action="store_true",
                       help="replay the request log's decisions with feedback into the "
                            "learned policy (no benchmark data needed)")
    train.add_argument("--config", type=Path, help="YAML config file (for data_dir and "
                                                   "database_url)")
    train.add_argument("--data-dir", type=Path, help="state directory (request log, models)")
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"ttc-router: {exc}", file=sys.stderr)
        return 2
    if args.bank_until is not None and args.bank is None:
        print("ttc-router train: --bank-until needs --bank (the outcome bank to take a "
              "snapshot of)", file=sys.stderr)
        return 2
    if args.from_log and args.bank is not None:
        print("ttc-router train: --from-log replays the request log into the learned policy; "
              "--bank trains the classifier: run them separately", file=sys.stderr)
        return 2
    # Checked before any work: --limit 0 used to fail deep in the fit with a numpy traceback.
    for flag, value, least in (("--limit", args.limit, 1), ("--generated", args.generated, 0)):
        if value is not None and value < least:
            print(f"ttc-router train: {flag}: at least {least} expected, not {value}",
                  file=sys.stderr)
            return 2
    out = args.out or settings.data_dir / "models"
    try:
        # Made now, so a bad --out is said before minutes of training, not as a traceback.
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"ttc-router train: --out {out}: cannot create the output folder "
              f"({exc.strerror or exc})", file=sys.stderr)
        return 2
    if args.from_log:
        url = settings.database_url.get_secret_value() if settings.database_url else None
        return _from_log(settings.data_dir, url, out)
    return _from_data(args, out)


def _from_data(args: argparse.Namespace, out: Path) -> int:
    from router_models import train as training
    from router_models.training_data import DEFAULT_DATA_DIR, DataMissingError

    data = args.data or DEFAULT_DATA_DIR
    print(f"training on {data} (seed {args.seed}"
          + (f", first {args.limit} per dataset" if args.limit else "") + ") ...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        extra, provenance = [], {}
        if args.bank:
            examples, provenance["bank"] = _bank_examples(args.bank, args.bank_until)
            extra.append(examples)
        result = training.train(data, out, seed=args.seed, limit_per_dataset=args.limit,
                                n_generated=args.generated, target_tokens=args.target_tokens,
                                extra=extra, provenance=provenance,
                                progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (DataMissingError, ValueError, ImportError) as exc:
        # ValueError covers the bank reader's BankError (a missing or malformed bank).
        print(f"ttc-router train: {exc}", file=sys.stderr)
        return 1
    print(training.summary(result))
    print(f"\nwrote {out} in {time.perf_counter() - started:.1f} s:")
    for name in ("classifier.npz", "classifier.json"):
        digest = training.file_digest(out / name)
        shipped = DEFAULT_ARTIFACT_DIR / name
        same = ""
        if shipped.exists() and shipped.resolve() != (out / name).resolve():
            same = ("  (identical to the shipped artifact)"
                    if training.file_digest(shipped) == digest else
                    "  (differs from the shipped artifact)")
        print(f"  {name:16} sha256 {digest}{same}")
    if args.report:
        _report(result, args.seed)
    return 0


def utc_time(text: str) -> datetime:
    """``text``, an ISO 8601 date and time, as an aware UTC ``datetime``: ``Z`` or an offset
    (``+01:00``) is honoured, a time without one is read as UTC, fractions of a second are
    kept. Raises ``argparse.ArgumentTypeError`` (argparse reports it and exits with status 2)
    when it does not parse or gives no time of day, since "by 2026-12-06" could mean either
    end of that day."""
    stripped = text.strip()
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        moment = None
    if moment is None or not any(sep in stripped.upper() for sep in ("T", " ")):
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date and time: {text!r} (e.g. 2026-12-06T19:30:00Z)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _bank_examples(path: Path, until: datetime | None) -> tuple[list[Any], dict[str, Any]]:
    """The bank's training examples (the runs recorded at or before ``until``, when given) and
    what identifies that snapshot: runs, items per suite, the last run's time and the SHA-256
    of the sorted run keys. Times are compared as instants, not as text. A run with no
    recorded time predates the field, so it counts as recorded before any ``until``. Raises
    ValueError when no run is left or a run's time does not parse."""
    from router_models import bank as outcome_bank
    from router_models.bank_labels import bank_examples

    bank = outcome_bank.Bank.load(path)
    if until is not None:
        bank = outcome_bank.Bank([r for r in bank.runs if _recorded_at(r) <= until],
                                 bank.meta, bank.path)
        if not bank.runs:
            raise ValueError(f"no run of the outcome bank {path} was recorded by "
                             f"{until.isoformat().replace('+00:00', 'Z')}")
    examples = list(bank_examples(bank.runs))
    keys = "\n".join(sorted(run.key for run in bank.runs)).encode()
    provenance = {"runs": len(bank.runs), "suites": bank.suites(),
                  "recorded_until": max(run.recorded for run in bank.runs),
                  "keys_sha256": hashlib.sha256(keys).hexdigest()}
    print(f"outcome bank {path}: {len(bank.runs)} runs recorded by "
          f"{provenance['recorded_until']}, {len(examples)} questions "
          f"({', '.join(f'{k} {v}' for k, v in bank.suites().items())})",
          file=sys.stderr, flush=True)
    return examples, provenance


def _recorded_at(run: Any) -> datetime:
    """When the bank run ``run`` was recorded, as an aware UTC time (the earliest one for a
    run without a time). Raises ValueError naming the run when its time does not parse."""
    if not run.recorded:
        return datetime.min.replace(tzinfo=UTC)
    try:
        return utc_time(run.recorded)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"outcome bank run {run.key}: recorded {exc}") from None


def _report(result: Any, seed: int) -> None:
    from router_models import lodo

    print("\nleave-one-dataset-out evaluation ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    c_grid = {head: (c,) for head, c in
              result.classifier.metadata["regularisation_c"].items()}
    report = lodo.leave_one_dataset_out(
        result.examples, result.features, seed, c_grid,
        progress=lambda line: print(line, file=sys.stderr, flush=True))
    print("\nleave-one-dataset-out: AUC and Brier score per held-out dataset (* below the "
          "0.8 target; one class: the label is constant there, AUC undefined; no label: "
          "the dataset says nothing about that score; pooled: all held-out predictions "
          "ranked together)\n")
    print(lodo.format_markdown(report))
    print("\nmean label / mean score per held-out dataset:")
    print(lodo.format_calibration(report))
    missed = lodo.unmet(report)
    print(f"\ntarget AUC >= 0.8 not met or undefined in {len(missed)} cells"
          + (": " + "; ".join(missed) if missed else ""))
    print(f"({time.perf_counter() - started:.0f} s)")


def _from_log(data_dir: Path, database_url: str | None, out: Path) -> int:
    from router_models import train as training

    try:
        classifier = Classifier.load()
        base = out / "learned.json"
        learned = LearnedPolicy.load(base) if base.exists() else parse_policy("learned")
    except (ArtifactError, PolicyError) as exc:
        print(f"ttc-router train: {exc}", file=sys.stderr)
        return 1
    assert isinstance(learned, LearnedPolicy)
    # The saved state may already hold the log's feedback (learned online): replay it all
    # from the prior, or every outcome would count twice.
    learned.forget_feedback()
    try:
        rows = asyncio.run(_read_feedback(data_dir, database_url))
    except Exception as exc:  # the store's errors: report them, do not trace back
        print(f"ttc-router train: cannot read the request log: {exc}", file=sys.stderr)
        return 1
    records = list(feedback_records(rows))
    skipped = len(rows) - len(records)
    print(f"request log: {len(rows)} decisions with feedback"
          + (f", {skipped} skipped (no scores and no prompt text)" if skipped else ""),
          file=sys.stderr)
    counts = training.train_from_records(records, classifier, learned, out)
    print(f"replayed {counts['records']} outcomes ({counts['correct']:.0f} correct) into the "
          f"learned policy; by strategy: {counts['by_strategy']}")
    if counts["repeats"]:
        print(f"{counts['repeats']} outcomes were of a prompt already counted for its kind and "
              "strategy: learnt as feedback, left out of the evidence (each prompt is one unit "
              "of evidence)")
    print("current budgets by kind of prompt:")
    for kind, row in learned.budgets().items():
        # NaN when no reference prompt is of this kind: nothing to average, so say so.
        mean = row["mean_expected_tokens"]
        budget = "-" if math.isnan(mean) else f"{mean:.0f} tokens"
        print(f"  {kind:18} feedback {row['feedback']:>7.0f}  strategy {row['strategy']:13} "
              f"answers ~{row['answer_tokens']} tokens  mean budget {budget}")
    print(f"wrote {out / 'learned.json'}")
    return 0


async def _read_feedback(data_dir: Path, database_url: str | None) -> list[Any]:
    from service.store.log import missing_request_log, open_request_log

    missing = missing_request_log(data_dir, database_url)
    if missing is not None:  # opening it would create it: read nothing, create nothing
        print(f"ttc-router train: {missing}", file=sys.stderr)
        return []
    log = open_request_log(data_dir, database_url)
    await log.backend.open()
    try:
        return list(await log.backend.records(with_feedback=True))
    finally:
        await log.backend.close()


def feedback_records(rows: list[Any]) -> Iterator[FeedbackRecord]:
    """``router_models.train.FeedbackRecord`` values from request-log rows
    (``service.store.Record``): the logged scores (or the prompt text, when kept), the plan
    that ran, the feedback score and the completion tokens spent. Rows with neither scores
    nor text are skipped."""
    from router_models.train import FeedbackRecord

    plan_fields = set(Plan.__dataclass_fields__)
    for row in rows:
        if row.feedback_score is None:
            continue
        scores = None
        if row.scores:
            try:
                scores = Scores.from_dict(row.scores)
            except (KeyError, TypeError, ValueError):
                scores = None
        if scores is None and not row.prompt_text:
            continue
        try:
            plan = Plan(**{k: v for k, v in (row.plan or {}).items() if k in plan_fields}) \
                if row.plan else Plan(row.strategy, row.budget_tokens)
        except (TypeError, ValueError):
            continue
        key = (row.plan or {}).get("prompt_key")
        yield FeedbackRecord(row.prompt_text or "", plan, float(row.feedback_score), scores,
                             row.completion_tokens, key if isinstance(key, str) else None)
