"""`auto` after feedback, on outcome-bank items its training never saw (issues 13 and 14).

Real-model outcomes, replayed: ``ttc-router sim --bank`` serves the outcome bank recorded from
the embedded model, and a real gateway (``ttc-router serve --upstream``) runs every strategy
and the served ``learned`` policy in front of it. The bank's items are split into ``--folds``
folds (within each suite, in the order of a hash of the item, so every fold holds each suite
alike). For each fold in turn:

1. **Out of the box.** A gateway on a fresh data directory answers the held-out fold with
   ``model: auto`` and no feedback, then every fixed strategy at each ``--budgets`` budget
   (``ttc-router eval``'s runner: same seeds, same scoring), and the strategies that run one
   chain again at temperature 0 (``direct t0 @B``, ...: greedy, as ``auto``'s chains are
   decoded; ``chain_temperature``); and, for each ``--targets``
   mean, another fresh gateway with ``TTC_LEARNED_TARGET_TOKENS`` at that mean answers with
   ``model: auto`` (``auto``'s own trade-off of tokens for accuracy).
2. **Training.** A second fresh gateway answers the other folds' items ``--rounds`` times
   each (round ``r`` sends seed ``r``, so the replay serves other recorded samples) and
   posts each answer's correctness to ``POST /v1/feedback``, as a user's application would.
3. **After feedback.** That gateway answers the held-out fold with ``model: auto``, the same
   requests as step 1 (same seeds), and ``GET /v1/learner?state=true`` says what it learnt.

Every item is held out once, so the pooled table covers the whole bank, each answer made by a
gateway that never received feedback on that item. A second table sets each ``auto`` arm
against the most accurate fixed arm that spends at most 1.1x its mean tokens, paired on the
same items (issue 13's criterion: more accurate at no more than 1.1x the tokens); a third
chooses that arm on the other folds' items and scores it on each fold's own (cross-fitting),
since the best of 16 fixed arms picked on the items it is scored on is ahead by chance alone.

The gateways of a fold score prompts with a classifier fitted on the shared data and the
training fold's bank runs only (``--classifier fold``, the default; ``ttc-router train
--bank``), since the shipped classifier learnt from the whole shipped bank. They hold the
HotpotQA corpus, indexed once per run (``ttc-router index add``), so ``auto`` can read
coverage, as a deployment with a document collection would. Intervals are Wilson 95%; pairs are
compared by McNemar's exact test (``service.evaluation.analysis``).

What the replay cannot show: a repeated request replays one of 8 recorded samples, so the
training rounds of one item are 8 draws at most, not fresh model calls; and greedy requests
(temperature 0) repeat exactly.

Usage (from the repository root; minutes on 2 cores, no model)::

    .venv/bin/python -m bench.bank_feedback [--bank PATH] [--folds 2] [--rounds 4]
        [--budgets 256,512,1024,2048] [--targets 256,1024] [--exploration 0.05]
        [--classifier fold|shipped] [--train-limit N] [--limit N]
        [--out bench/results/bank-feedback]

The work folder (gateways' data, logs, the indexed corpus: megabytes per run) is removed after
a run that finishes, and kept, with its path printed, after one that fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.mixed_traffic import clean_env, free_port, stop, wait_http
from bench.options import (
    at_least_two,
    non_negative_int,
    positive_int,
    share,
    token_budgets,
    token_list,
)
from router_models.bank import DEFAULT_BANK, LONG_CHAINS, Bank
from router_models.tasks import TaskItem, default_data_dir
from router_models.tasks.checkers import check
from service.commands.eval import BANK_DEFAULT, bank_items
from service.evaluation.analysis import paired_difference, wilson
from service.evaluation.runner import RunOptions, plan_jobs, read_records, run_jobs
from service.local_backend import QWEN_CODER_05B
from service.search.local import index_path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("direct", "parallel_vote", "sequential", "search")
GREEDY_STRATEGIES = ("direct", "sequential", "search")  # the ones that run one chain


# ----------------------------------------------------------------------------- the folds

def item_key(item: TaskItem) -> str:
    """The stable name of an item: ``suite/item_id``."""
    return f"{item.suite}/{item.item_id}"


def make_folds(items: Sequence[TaskItem], count: int) -> list[list[TaskItem]]:
    """``count`` folds: within each family, items in the order of the CRC-32 of their key,
    dealt round-robin, so each fold holds every family alike and the split does not depend on
    the bank's recording order.

    Raises:
        ValueError: fewer than 2 folds, or fewer items than folds.
    """
    if count < 2 or len(items) < count:
        raise ValueError(f"need at least 2 folds and as many items ({len(items)} items)")
    folds: list[list[TaskItem]] = [[] for _ in range(count)]
    by_family: dict[str, list[TaskItem]] = defaultdict(list)
    for item in items:
        by_family[item.family].append(item)
    dealt = 0
    for family in sorted(by_family):
        for item in sorted(by_family[family], key=lambda i: zlib.crc32(item_key(i).encode())):
            folds[dealt % count].append(item)
            dealt += 1
    return folds


# ----------------------------------------------------------------------------- the stack

class Stack:
    """The replay and the gateways in front of it, as subprocesses; ``close`` stops them."""

    def __init__(self, bank: Path | None, work: Path, exploration: float | None,
                 vote_stopping: tuple[int, float] | None = None):
        self.work = work
        self.exploration = exploration
        self.vote_stopping = vote_stopping
        self.processes: list[subprocess.Popen[bytes]] = []
        port = free_port()
        log = work / "replay.log"
        command = [sys.executable, "-m", "service", "sim", "--port", str(port), "--bank"]
        if bank is not None:
            command.append(str(bank))
        with log.open("wb") as out:
            replay = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                      env=clean_env(), cwd=ROOT)
        self.processes.append(replay)
        self.replay_url = f"http://127.0.0.1:{port}/v1"
        wait_http(self.replay_url + "/models", replay, log)
        self.corpus = hotpot_corpus(work)

    def gateway(self, name: str, classifier: Path | None = None,
                target_tokens: int | None = None) -> str:
        """A gateway on a fresh data directory (the HotpotQA corpus indexed), scoring with the
        classifier in the folder ``classifier`` (default: the shipped one), its learned
        policy's mean at ``target_tokens`` (default: the gateway's); its base URL."""
        data_dir = self.work / name
        if classifier is not None:
            (data_dir / "models").mkdir(parents=True, exist_ok=True)
            for artifact in ("classifier.npz", "classifier.json"):
                shutil.copyfile(classifier / artifact, data_dir / "models" / artifact)
        if self.corpus is not None:
            # Indexed once (``ttc-router index add``), then copied: each gateway gets the same
            # collection without indexing it again.
            indexed = self.work / "indexed"
            if not indexed.is_dir():
                done = subprocess.run(
                    [sys.executable, "-m", "service", "index", "add", str(self.corpus),
                     "--data-dir", str(indexed)],
                    capture_output=True, text=True, env=clean_env(), cwd=ROOT)
                if done.returncode != 0:
                    raise RuntimeError(f"ttc-router index add failed:\n{done.stderr[-2000:]}")
            shutil.copytree(index_path(indexed), index_path(data_dir))
        env = clean_env()
        if self.exploration is not None:
            env["TTC_LEARNED_EXPLORATION"] = str(self.exploration)
        if target_tokens is not None:
            env["TTC_LEARNED_TARGET_TOKENS"] = str(target_tokens)
        if self.vote_stopping is not None:
            # The replayed bank is the embedded model's: its gateway stops votes by that
            # model's own rule (``LocalModel.vote_stopping``), as ``ttc-router serve`` does.
            env["TTC_VOTE_FIRST_WAVE"] = str(self.vote_stopping[0])
            env["TTC_VOTE_STOP_THRESHOLD"] = str(self.vote_stopping[1])
        port = free_port()
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--upstream", self.replay_url,
                 "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", gateway, log)
        return url + "/v1"

    def close(self) -> None:
        """Stop every process, gateways first."""
        for process in reversed(self.processes):
            stop(process)


def hotpot_corpus(work: Path) -> Path | None:
    """The shared HotpotQA corpus as ``ttc-router index add`` JSONL (``id``, ``title``,
    ``text``) in ``work``; None when the benchmark data is absent (``auto`` then reads no
    coverage, as a deployment without a collection)."""
    data = default_data_dir()
    source = data / "hotpotqa" / "hotpotqa_train_corpus.json" if data else None
    if source is None or not source.is_file():
        print("HotpotQA corpus not found: gateways run without a document collection",
              file=sys.stderr)
        return None
    out = work / "hotpot.jsonl"
    docs = json.loads(source.read_text())
    with out.open("w") as handle:
        for title, sentences in docs.items():
            handle.write(json.dumps({"id": title, "title": title,
                                     "text": "".join(sentences)}) + "\n")
    return out


# ----------------------------------------------------------------------------- the classifier

def bank_subset(bank: Path, keep: set[str], out: Path) -> Path:
    """A copy of the bank folder ``bank`` holding only the runs of the items in ``keep``
    (``item_key`` names) and their long chains, with its ``bank.json``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = bank / "bank.json"
    if meta.is_file():
        shutil.copyfile(meta, out / "bank.json")
    files = sorted(bank.glob("*.jsonl"))
    kept_runs: set[str] = set()
    # Run shards first: a long chain (``bench.long_chains``) goes with its run.
    for shard in sorted(files, key=lambda f: f.name.startswith(LONG_CHAINS)):
        long_chains = shard.name.startswith(LONG_CHAINS)
        kept = []
        for line in shard.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line being appended by the recorder right now
            row = json.loads(line)
            if long_chains:
                wanted = row["key"] in kept_runs
            else:
                wanted = f"{row.get('item_suite') or row['suite']}/{row['item_id']}" in keep
                if wanted:
                    kept_runs.add(row["key"])
            if wanted:
                kept.append(line)
        (out / shard.name).write_text("".join(kept), encoding="utf-8")
    return out


def fold_classifier(bank: Path, training: Sequence[TaskItem], out: Path,
                    limit: int | None = None) -> Path:
    """Fit the classifier as ``ttc-router train --bank`` does, on the shared data and the bank
    runs of ``training`` only, so the held-out fold's outcomes never reach the classifier
    either (the shipped one learnt from the whole bank). Returns its folder.

    Raises:
        RuntimeError: training failed (for example without the shared data).
    """
    subset = bank_subset(bank, {item_key(i) for i in training}, out / "bank")
    command = [sys.executable, "-m", "service", "train", "--bank", str(subset),
               "--out", str(out / "classifier")]
    if limit is not None:
        command += ["--limit", str(limit), "--generated", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"ttc-router train failed:\n{done.stderr[-2000:]}")
    return out / "classifier"


# ----------------------------------------------------------------------------- the phases

CLASSIFIER_NOTE = {
    "fold": "fitted per fold on the shared data and the training fold's bank runs",
    "shipped": "the shipped one (it learnt from the bank it is tested on)"}


def classifier_note(results: dict[str, Any]) -> str:
    """What the report says of the classifier used: ``CLASSIFIER_NOTE``, and for the shipped
    one the outcome bank snapshot it learnt from (``results["classifier_bank"]``, the
    ``bank`` entry of its metadata), since the bank tested on need not be that one."""
    mode = results.get("classifier", "shipped")
    snapshot = results.get("classifier_bank")
    if mode != "shipped" or not snapshot:
        return CLASSIFIER_NOTE[mode]
    return (f"the shipped one (it learnt from the shipped bank's {snapshot['runs']} runs "
            f"recorded by {snapshot['recorded_until']}; held-out items among them are not "
            "unseen by it)")
ROUTER_KEPT = ("strategy", "budget_tokens", "spent_tokens", "reason")


def evaluate(url: str, items: Sequence[TaskItem], out: Path, *, policies: Sequence[str] = (),
             strategies: Sequence[str] = (), budgets: Sequence[int] = (),
             temperature: float | None = None) -> list[dict]:
    """``ttc-router eval``'s runner over ``items``; its records (one per item and arm),
    without the reply's text and with only ``ROUTER_KEPT`` of its ``router`` object, so the
    results file stays small. With ``temperature``, every request sends it, and each
    record's strategy is named ``<strategy> t<temperature>`` (a fixed arm of its own)."""
    jobs = plan_jobs(items, strategies, budgets, policies)
    asyncio.run(run_jobs(jobs, out, RunOptions(backend=url, concurrency=4,
                                               temperature=temperature)))
    records = read_records(out / "items.jsonl")
    for record in records:
        record.pop("text", None)
        if temperature is not None:
            record["strategy"] = f"{record['strategy']} t{temperature:g}"
        router = record.get("router") or {}
        record["router"] = {k: router.get(k) for k in ROUTER_KEPT} if router else None
    return records


def train(url: str, items: Sequence[TaskItem], rounds: int, seed: int) -> list[dict[str, Any]]:
    """Send every item ``rounds`` times to ``model: auto`` (each round in its own shuffled
    order, seed = round), grade each answer and post it to ``/v1/feedback``; one record per
    request.

    Raises:
        RuntimeError: a request or a feedback post failed (training would be incomplete).
    """
    client = httpx.Client(base_url=url, timeout=120)

    def one(round_: int, item: TaskItem) -> dict[str, Any]:
        reply = client.post("/chat/completions", json={
            "model": "auto", "seed": round_,
            "messages": [{"role": "user", "content": item.prompt()}]})
        if reply.status_code != 200:
            raise RuntimeError(f"{item_key(item)}: HTTP {reply.status_code}: {reply.text[:300]}")
        body = reply.json()
        text = body["choices"][0]["message"].get("content") or ""
        correct = check(item, text)
        router = body.get("router") or {}
        posted = client.post("/feedback", json={"id": router["decision_id"],
                                                "correct": correct})
        if posted.status_code != 200:
            raise RuntimeError(f"feedback: HTTP {posted.status_code}: {posted.text[:300]}")
        return {"round": round_, "item": item_key(item), "family": item.family,
                "correct": correct, "tokens": body["usage"]["completion_tokens"],
                "strategy": router.get("strategy"), "reason": router.get("reason")}

    records: list[dict[str, Any]] = []
    try:
        with ThreadPoolExecutor(4) as pool:
            for round_ in range(rounds):
                order = list(items)
                random.Random(f"{seed}:{round_}").shuffle(order)
                records += list(pool.map(lambda item, r=round_: one(r, item), order))
    finally:
        client.close()
    return records


def learner_state(url: str) -> dict[str, Any]:
    """The served ``learned`` policy's state (``GET /v1/learner?state=true``)."""
    reply = httpx.get(url + "/learner", params={"state": "true"}, timeout=30)
    reply.raise_for_status()
    return reply.json()["policies"]["learned"]["state"]


# ----------------------------------------------------------------------------- the report

def arm_name(record: dict[str, Any]) -> str:
    """``strategy @budget`` or ``policy:NAME``."""
    if record["strategy"].startswith("policy:"):
        return record["strategy"]
    return f"{record['strategy']} @{record['budget_tokens']}"


def ran_as(arm: str, records: Sequence[dict[str, Any]]) -> str:
    """``arm``, with "(ran as S n of N)" when some of its replies ran another strategy than the
    one forced: the gateway runs a vote whose budget cannot buy 3 samples long enough to finish
    as one chain (``sequential``; at 256 and 512 tokens for this model's answers)."""
    if arm.startswith("policy:"):
        return arm
    forced = arm.split(" ")[0]
    other = Counter(str((r.get("router") or {}).get("strategy")) for r in records
                    if not r.get("error") and (r.get("router") or {}).get("strategy")
                    not in (None, forced))
    if not other:
        return arm
    ran = ", ".join(f"{s} {n} of {len(records)}" for s, n in other.most_common())
    return f"{arm} (ran as {ran})"


def by_arm(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """arm -> item key -> record."""
    arms: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        arms[arm_name(record)][f"{record['suite']}/{record['item_id']}"] = record
    return arms


def arm_rows(arms: dict[str, dict[str, dict[str, Any]]], reference: str) -> list[str]:
    """Markdown rows: accuracy [Wilson 95%], mean completion tokens, errors, and the pairing
    with ``reference`` (items only it / only the arm got right, McNemar exact p)."""
    base = arms[reference]
    rows = []
    order = sorted(arms, key=lambda a: (a != reference, -sum(
        r["correct"] for r in arms[a].values()) / max(1, len(arms[a]))))
    for arm in order:
        records = arms[arm]
        keys = sorted(set(records) & set(base))
        correct = sum(r["correct"] for r in records.values())
        n = len(records)
        low, high = wilson(correct, n)
        tokens = sum(r["completion_tokens"] for r in records.values()) / max(1, n)
        errors = sum(bool(r.get("error")) for r in records.values())
        pairing = "- | -"
        if arm != reference and keys:
            a = [base[k]["correct"] for k in keys]
            b = [records[k]["correct"] for k in keys]
            _, _, p = paired_difference(a, b)
            only_ref = sum(x and not y for x, y in zip(a, b, strict=True))
            only_arm = sum(y and not x for x, y in zip(a, b, strict=True))
            pairing = f"{only_ref} / {only_arm} | {p:.2g}"
        rows.append(f"| {ran_as(arm, list(records.values()))} | "
                    f"{100 * correct / max(1, n):.1f} [{100 * low:.1f}, "
                    f"{100 * high:.1f}] | {tokens:.0f} | {pairing} | {errors} | {n} |")
    return rows


def equal_token_rows(arms: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown rows: per ``policy:`` arm, the fixed arm of highest accuracy among those whose
    mean completion tokens are at most 1.1x the policy's, and the paired difference."""

    def accuracy(records: dict[str, dict[str, Any]]) -> float:
        return sum(r["correct"] for r in records.values()) / max(1, len(records))

    def tokens(records: dict[str, dict[str, Any]]) -> float:
        return sum(r["completion_tokens"] for r in records.values()) / max(1, len(records))

    rows = []
    fixed = [a for a in arms if not a.startswith("policy:")]
    for arm in sorted((a for a in arms if a.startswith("policy:")),
                      key=lambda a: tokens(arms[a])):
        mine = arms[arm]
        within = [a for a in fixed if tokens(arms[a]) <= 1.1 * tokens(mine)]
        if not within:
            rows.append(f"| {arm} | {100 * accuracy(mine):.1f} | {tokens(mine):.0f} | none "
                        "spends so little | - | - | - | - |")
            continue
        best = max(within, key=lambda a: (accuracy(arms[a]), -tokens(arms[a])))
        keys = sorted(set(mine) & set(arms[best]))
        difference, (low, high), p = paired_difference(
            [mine[k]["correct"] for k in keys], [arms[best][k]["correct"] for k in keys])
        rows.append(f"| {arm} | {100 * accuracy(mine):.1f} | {tokens(mine):.0f} | {best} | "
                    f"{100 * accuracy(arms[best]):.1f} | {tokens(arms[best]):.0f} | "
                    f"{100 * difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {p:.2g} |")
    return rows


def cross_fitted_rows(arms: dict[str, dict[str, dict[str, Any]]],
                      fold_of: dict[str, int]) -> list[str]:
    """Markdown rows: per ``policy:`` arm, the comparison of ``equal_token_rows`` with the
    fixed arm chosen on the other folds' items and scored on the fold's own, every fold in
    turn, then pooled. Choosing the best of many fixed arms on the items it is scored on
    favours it by chance alone (the winner's curse); cross-fitting removes that."""

    def accuracy(records: dict[str, dict[str, Any]], keys: Sequence[str]) -> float:
        return sum(records[k]["correct"] for k in keys) / max(1, len(keys))

    def tokens(records: dict[str, dict[str, Any]], keys: Sequence[str]) -> float:
        return sum(records[k]["completion_tokens"] for k in keys) / max(1, len(keys))

    rows = []
    fixed = [a for a in arms if not a.startswith("policy:")]
    folds = sorted(set(fold_of.values()))
    for arm in sorted((a for a in arms if a.startswith("policy:")),
                      key=lambda a: tokens(arms[a], list(arms[a]))):
        mine = arms[arm]
        ours: list[bool] = []
        theirs: list[bool] = []
        spent: list[int] = []
        chosen = []
        for fold in folds:
            other = [k for k in mine if fold_of.get(k, fold) != fold]
            own = [k for k in mine if fold_of.get(k) == fold]
            within = [a for a in fixed if set(other) <= set(arms[a])
                      and tokens(arms[a], other) <= 1.1 * tokens(mine, other)]
            if not within or not own:
                continue
            best = max(within, key=lambda a: (accuracy(arms[a], other), -tokens(arms[a], other)))
            chosen.append(best)
            keys = [k for k in own if k in arms[best]]
            ours += [mine[k]["correct"] for k in keys]
            theirs += [arms[best][k]["correct"] for k in keys]
            spent += [arms[best][k]["completion_tokens"] for k in keys]
        if not ours:
            rows.append(f"| {arm} | - | - | none spends so little | - | - | - | - |")
            continue
        difference, (low, high), p = paired_difference(ours, theirs)
        rows.append(f"| {arm} | {100 * sum(ours) / len(ours):.1f} | "
                    f"{tokens(mine, list(mine)):.0f} | {' / '.join(chosen)} | "
                    f"{100 * sum(theirs) / len(theirs):.1f} | {sum(spent) / len(spent):.0f} | "
                    f"{100 * difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {p:.2g} |")
    return rows


def family_rows(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                ) -> list[str]:
    """Per family: ``auto`` before and after feedback, with the strategies it chose."""
    rows = []
    families = sorted({r["family"] for r in before.values()})
    for family in families:
        keys = [k for k, r in before.items() if r["family"] == family and k in after]
        cells = []
        for side in (before, after):
            correct = sum(side[k]["correct"] for k in keys)
            tokens = sum(side[k]["completion_tokens"] for k in keys) / max(1, len(keys))
            chosen = Counter((side[k].get("router") or {}).get("strategy") for k in keys)
            mix = ", ".join(f"{s} {c}" for s, c in chosen.most_common())
            cells.append(f"{100 * correct / max(1, len(keys)):.1f} | {tokens:.0f} | {mix}")
        rows.append(f"| {family} | {len(keys)} | {cells[0]} | {cells[1]} |")
    return rows


def report(results: dict[str, Any]) -> str:
    """The markdown report of a finished run."""
    records = [r for fold in results["folds"]
               for r in fold["before"] + fold["fixed"] + fold.get("targets", [])]
    after = [dict(r, strategy="policy:auto after feedback")
             for fold in results["folds"] for r in fold["after"]]
    arms = by_arm(records + after)
    fold_of = {f"{r['suite']}/{r['item_id']}": number
               for number, fold in enumerate(results["folds"]) for r in fold["before"]}
    reference = "policy:auto after feedback"
    lines = [
        "# `auto` after feedback on the outcome bank (real-model outcomes, replayed)", "",
        f"Command: `{results['command']}`, {results['started']}; bank: {results['runs']} runs, "
        f"{results['items']} items; {results['folds_count']} folds, {results['rounds']} training "
        f"rounds per training item; exploration "
        f"{results['exploration'] if results['exploration'] is not None else 'default'}; "
        f"votes stopped by {stopping_note(results.get('vote_stopping'))}; "
        f"classifier: {classifier_note(results)}; "
        f"{results['elapsed_s']:.0f} s.", "",
        "Every item held out once: each answer below is made by a gateway that received no "
        "feedback on that item. Pairs are against `auto` after feedback.", "",
        "| arm | accuracy % [Wilson 95%] | mean completion tokens | only `auto` after / only "
        "the arm right | McNemar exact p | errors | n |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
        *arm_rows(arms, reference), "",
        "At equal tokens: each `auto` arm against the most accurate fixed arm that spends at "
        "most 1.1x its mean completion tokens (the issue's criterion), paired on the same "
        "items:", "",
        "| `auto` arm | accuracy % | tokens | best fixed arm within 1.1x its tokens | accuracy % "
        "| tokens | difference, points [paired bootstrap 95%] | McNemar exact p |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        *equal_token_rows(arms), "",
        "The same, with the fixed arm chosen on the other folds' items (cross-fitted; one arm "
        "per fold, in fold order) and scored on each fold's own:", "",
        "| `auto` arm | accuracy % | tokens | fixed arm chosen per fold | accuracy % | tokens "
        "| difference, points [paired bootstrap 95%] | McNemar exact p |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        *cross_fitted_rows(arms, fold_of), "",
        "Per family, `auto` before / after feedback (accuracy %, mean tokens, strategies):", "",
        "| family | n | before % | tokens | strategies | after % | tokens | strategies |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
        *family_rows(arms["policy:auto"], arms[reference]), "",
        "What training taught, per fold:", ""]
    for number, fold in enumerate(results["folds"]):
        train_rounds = defaultdict(list)
        for record in fold["training"]:
            train_rounds[record["round"]].append(record["correct"])
        accuracy = ", ".join(f"{100 * sum(v) / len(v):.1f}" for _, v in sorted(
            train_rounds.items()))
        state = fold["learner"]
        explored = sum("exploring" in (r["reason"] or "") for r in fold["training"])
        # The improvement test's evidence: each item's first outcome per strategy (a round's
        # repeat of an item with the same strategy is feedback received, not new evidence).
        feedback = {k: int(sum(row)) for k, row in zip(state["current"], state["trials"],
                                                       strict=True) if sum(row)}
        lines += [f"- fold {number}: {len(fold['training'])} training requests with feedback; "
                  f"training accuracy by round: {accuracy}; {explored} of them explored; "
                  f"evidence per kind (items per strategy, repeats left out) {feedback}; "
                  f"switches: "
                  f"{state['switches'] or 'none'}; strategies now "
                  f"{ {k: v for k, v in state['current'].items() if k in feedback} }"]
    return "\n".join(lines) + "\n"


def stopping_note(stopping: Sequence[float] | None) -> str:
    """How the report names the votes' early-stopping rule (``--vote-stopping``)."""
    if not stopping:
        return "the gateway-wide default rule"
    return (f"the embedded model's rule (first wave {int(stopping[0])}, Beta "
            f"{stopping[1]:g})")


# ----------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    parser.add_argument("--folds", type=at_least_two, default=2,
                        help="folds of the bank's items, each held out once (default 2)")
    parser.add_argument("--rounds", type=non_negative_int, default=4,
                        help="training requests per training item (seeds 0..rounds-1)")
    parser.add_argument("--budgets", type=token_budgets, default=[256, 512, 1024, 2048],
                        help="budgets of the fixed strategies, tokens (a vote needs about "
                             "three complete samples: 2048 for this model's long answers)")
    parser.add_argument("--targets", type=token_list, default=[256, 1024],
                        help="other mean budgets (TTC_LEARNED_TARGET_TOKENS) at which `auto` "
                             "also answers out of the box, besides the gateway's default; "
                             "empty for none")
    parser.add_argument("--exploration", type=share, default=None,
                        help="the learned policy's exploration share (default: the gateway's)")
    parser.add_argument("--vote-stopping", choices=("embedded", "default"),
                        default="embedded",
                        help="embedded (default): votes stop by the embedded model's own rule, "
                             "as `ttc-router serve` runs that model (the bank's); default: "
                             "the gateway-wide rule every other upstream gets")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="items per suite (a quick run)")
    parser.add_argument("--classifier", choices=("fold", "shipped"), default="fold",
                        help="fold (default): per fold, fit the classifier on the shared data "
                             "and the training fold's bank runs (needs ../shared/data); "
                             "shipped: the shipped classifier, which learnt from the whole "
                             "shipped bank, so held-out items are not unseen by it")
    parser.add_argument("--train-limit", type=positive_int, default=None, metavar="N",
                        help="with --classifier fold: train on the first N examples of each "
                             "dataset (a quick run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bank-feedback"),
                        help="folder for results.json and report.md "
                             "(default bench/results/bank-feedback)")
    args = parser.parse_args(argv)
    if args.train_limit is not None and args.classifier != "fold":
        parser.error("--train-limit limits the per-fold classifier's training: it needs "
                     "--classifier fold")
    from router_models import training_data  # read at call time: tests move it

    if args.classifier == "fold" and not training_data.DEFAULT_DATA_DIR.is_dir():
        parser.error(f"--classifier fold (the default) trains on the shared benchmark data, "
                     f"not found at {training_data.DEFAULT_DATA_DIR}; pass --classifier "
                     "shipped to score with the shipped classifier instead")
    # The bank is read, and the folds dealt, before any gateway starts: a folder that is not
    # a bank, or too few items for the folds, ends here with the reason.
    try:
        args.items = bank_items(args.bank or BANK_DEFAULT, [], args.limit)
        args.folds_of_items = make_folds(args.items, args.folds)
        args.runs = len(Bank.load(args.bank))
    except ValueError as exc:  # router_models.bank.BankError is one
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    items, folds, runs = args.items, args.folds_of_items, args.runs
    budgets, targets = args.budgets, args.targets
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": "python -m bench.bank_feedback " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs,
        "items": len(items), "folds_count": args.folds, "rounds": args.rounds,
        "exploration": args.exploration, "classifier": args.classifier, "targets": targets,
        "folds": []}
    if args.classifier == "shipped":
        from router_models.classifier import Classifier
        results["classifier_bank"] = Classifier.load().metadata.get("bank")
    work = Path(tempfile.mkdtemp(prefix="bank-feedback-"))
    finished = False
    stopping = QWEN_CODER_05B.vote_stopping if args.vote_stopping == "embedded" else None
    results["vote_stopping"] = stopping
    stack = Stack(args.bank, work, args.exploration, stopping)
    try:
        for number, held_out in enumerate(folds):
            training = [i for k, fold in enumerate(folds) if k != number for i in fold]
            fold_dir = work / f"fold-{number}"
            print(f"fold {number}: {len(held_out)} held out, {len(training)} for training",
                  flush=True)
            classifier = None
            if args.classifier == "fold":
                classifier = fold_classifier(args.bank or DEFAULT_BANK, training, fold_dir,
                                             args.train_limit)
            fresh = stack.gateway(f"fold-{number}-fresh", classifier)
            before = evaluate(fresh, held_out, fold_dir / "before", policies=["auto"])
            fixed = evaluate(fresh, held_out, fold_dir / "fixed", strategies=STRATEGIES,
                             budgets=budgets)
            # One chain decoded greedily, as `auto`'s are (chain_temperature): a fixed
            # strategy a client could ask for with temperature 0.
            fixed += evaluate(fresh, held_out, fold_dir / "fixed-greedy",
                              strategies=GREEDY_STRATEGIES, budgets=budgets, temperature=0.0)
            at_targets: list[dict[str, Any]] = []
            for target in targets:  # out of the box at other means: auto's own trade-off
                other = stack.gateway(f"fold-{number}-target-{target}", classifier, target)
                at_targets += [dict(r, strategy=f"policy:auto @mean {target}") for r in evaluate(
                    other, held_out, fold_dir / f"target-{target}", policies=["auto"])]
            learner = stack.gateway(f"fold-{number}-learner", classifier)
            trained = train(learner, training, args.rounds, seed=number)
            after = evaluate(learner, held_out, fold_dir / "after", policies=["auto"])
            results["folds"].append({"before": before, "fixed": fixed, "targets": at_targets,
                                     "after": after,
                                     "training": trained, "learner": learner_state(learner)})
        finished = True
    finally:
        stack.close()
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bank_feedback: the gateways' logs and data are kept in {work}",
                  file=sys.stderr)
    results["elapsed_s"] = time.monotonic() - started
    (args.out / "results.json").write_text(json.dumps(results) + "\n")
    text = report(results)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
