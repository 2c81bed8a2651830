"""The outcome bank: a real model's recorded answers to the task suites (``bench/outcome_bank.py``
records it), read for replay (``ttc-router sim --bank``) and evaluation.

A bank is a folder of JSONL shards (one line per run: an item, and for HotpotQA a number of
searches fed into its prompt) and ``bank.json`` (the model, quantization, server, sampling
settings and prompt format it was recorded with). Each run holds one greedy chain and several
seeded samples; each sample is its completion split into token pieces, so that a budget of
``b`` tokens replays as exactly the first ``b`` pieces. The project ships its bank in
``router_models/data/bank``.

Long chains (``bench/long_chains.py``) are greedy chains recorded again with more room, for the
runs whose greedy chain the recording's cap cut: files ``long-chains-NNN.jsonl`` beside the
shards, one line per run (``key``, ``max_tokens``, ``greedy``). Loading puts each in place of
its run's greedy chain, whose first tokens it repeats (temperature 0), so a budget within the
old cap replays as before and a larger one reads on where the cap used to cut.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from router_models.tasks import TaskItem
from router_models.tasks.registry import question_spans

DEFAULT_BANK = Path(__file__).resolve().parent / "data" / "bank"
LONG_CHAINS = "long-chains-"  # the prefix of the files of greedy chains recorded with more room
T = TypeVar("T")
_LABEL = re.compile(r"^(?:question|q)\s*:\s*", re.IGNORECASE)


class BankError(ValueError):
    """A bank folder that is missing, empty or holds a line that is not a run."""


def question_key(text: str) -> str:
    """The normal form questions are matched on: a leading ``Question:``/``Q:`` label
    dropped, whitespace collapsed, lower case (as ``router_models.tasks.registry``)."""
    return " ".join(_LABEL.sub("", text.strip()).split()).lower()


@dataclass(frozen=True)
class BankSample:
    """One recorded completion.

    Args:
        tokens: the completion's token pieces; ``"".join(tokens)`` is its text.
        lp: each token's log-probability in centi-nats (``round(100 * logprob)``).
        finish_reason: ``stop`` or ``length`` (cut by the recording's max_tokens).
        seed: the sampling seed, None for the greedy chain.
        temperature: 0.0 for the greedy chain.
        answer, correct: the extracted answer (checker's canonical form) and whether it is
            the gold answer, for the whole completion.
        lp_mean, conf_min, conf_bottom10, conf_mean: the mean token log-probability (nats)
            and DeepConf's confidences (Fu et al. 2025) of the whole completion.
    """

    tokens: tuple[str, ...]
    lp: tuple[int, ...]
    finish_reason: str
    seed: int | None
    temperature: float
    answer: str | None
    correct: bool
    lp_mean: float
    conf_min: float
    conf_bottom10: float
    conf_mean: float

    @property
    def text(self) -> str:
        """The whole completion."""
        return "".join(self.tokens)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> BankSample:
        """From a shard's sample object. Raises KeyError/TypeError on a malformed one."""
        tokens = tuple(str(t) for t in row["tokens"])
        return cls(tokens=tokens, lp=tuple(int(v) for v in row.get("lp") or [0] * len(tokens)),
                   finish_reason=str(row.get("finish_reason") or "stop"),
                   seed=row.get("seed"), temperature=float(row.get("temperature", 0.0)),
                   answer=row.get("answer"), correct=bool(row.get("correct")),
                   lp_mean=float(row.get("lp_mean", 0.0)),
                   conf_min=float(row.get("conf_min", 0.0)),
                   conf_bottom10=float(row.get("conf_bottom10", 0.0)),
                   conf_mean=float(row.get("conf_mean", 0.0)))


@dataclass(frozen=True)
class BankRun:
    """One recorded run: an item, the prompt it was sent as (with ``searches`` searches' hits
    before the question, HotpotQA only), its prompt tokens, the greedy chain and the samples.
    ``search_turns`` are the token pieces of the line ``SEARCH: <query>`` for each recorded
    query (None where the server could not tokenize)."""

    key: str
    item: TaskItem
    searches: int
    prompt: str
    prompt_tokens: int
    greedy: BankSample
    samples: tuple[BankSample, ...]
    queries: tuple[str, ...] = ()
    docs: tuple[str, ...] = ()
    search_turns: tuple[tuple[str, ...] | None, ...] = ()
    recorded: str = ""  # when it was recorded, ISO 8601 UTC ("2026-12-06T08:54:28Z")

    @property
    def suite(self) -> str:
        """The bank's suite name (``mmlu`` for every MMLU subject)."""
        return self.key.split("/", 1)[0]

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> BankRun:
        """From one shard line. Raises KeyError/TypeError/ValueError on a malformed one."""
        item = TaskItem(
            suite=str(row.get("item_suite") or row["suite"]), item_id=str(row["item_id"]),
            family=str(row.get("family", "")), difficulty=float(row.get("difficulty", 0.5)),
            question=str(row["question"]), answer=str(row["answer"]), kind=str(row["kind"]),
            choices=tuple(str(c) for c in row.get("choices") or ()))
        return cls(key=str(row["key"]), item=item, searches=int(row.get("searches", 0)),
                   prompt=str(row["prompt"]), prompt_tokens=int(row.get("prompt_tokens", 0)),
                   greedy=BankSample.from_json(row["greedy"]),
                   samples=tuple(BankSample.from_json(s) for s in row["samples"]),
                   queries=tuple(row.get("queries") or ()), docs=tuple(row.get("docs") or ()),
                   search_turns=tuple(None if t is None else tuple(t)
                                      for t in row.get("search_turns") or ()),
                   recorded=str(row.get("recorded") or ""))


class Bank:
    """The runs of a bank folder, indexed by normalised question.

    Args:
        runs: the runs (a later run with the same key replaces an earlier one).
        meta: ``bank.json``'s content (model, server, sampling settings), or {}.
        path: where it was read from, or None.
    """

    def __init__(self, runs: Iterable[BankRun], meta: dict[str, Any] | None = None,
                 path: Path | None = None):
        self.meta = meta or {}
        self.path = path
        by_key: dict[str, BankRun] = {run.key: run for run in runs}
        self.runs: list[BankRun] = list(by_key.values())
        self._by_question: dict[str, dict[int, BankRun]] = {}
        for run in self.runs:
            self._by_question.setdefault(question_key(run.item.question), {})[
                run.searches] = run

    def __len__(self) -> int:
        return len(self.runs)

    @classmethod
    def load(cls, path: Path | None = None, long_chains: bool = True) -> Bank:
        """Read a bank folder (default: the shipped ``router_models/data/bank``); with
        ``long_chains`` False, each run keeps the greedy chain it was recorded with.

        Raises:
            BankError: the folder does not exist, holds no runs, its ``bank.json`` is not a
                JSON object, or a line is not a run (the message names the file and line).
        """
        folder = path or DEFAULT_BANK
        if not folder.is_dir():
            raise BankError(f"no outcome bank at {folder}")
        meta = _read_meta(folder / "bank.json")
        files = sorted(folder.glob("*.jsonl"))
        shards = [f for f in files if not f.name.startswith(LONG_CHAINS)]
        longer = _read_long_chains([f for f in files if f.name.startswith(LONG_CHAINS)]
                                   if long_chains else [])
        runs = (dataclasses.replace(run, greedy=longer[run.key]) if run.key in longer else run
                for run in _read_runs(shards))
        bank = cls(runs, meta, folder)
        if not bank.runs:
            raise BankError(f"the outcome bank at {folder} holds no runs")
        return bank

    def suites(self) -> dict[str, int]:
        """Items per suite (an item with several search counts counts once)."""
        counts: dict[str, set[str]] = {}
        for run in self.runs:
            counts.setdefault(run.suite, set()).add(run.item.item_id)
        return {suite: len(ids) for suite, ids in sorted(counts.items())}

    def lookup(self, text: str) -> dict[int, BankRun] | None:
        """The runs (by number of searches) whose question is ``text``, one of its
        blank-line blocks or a run of them (``registry.question_spans``), or, for a recorded
        prompt, the whole prompt; None when none."""
        for span in question_spans(text):
            found = self._by_question.get(question_key(span))
            if found is not None:
                return found
        return None

    def items(self) -> list[TaskItem]:
        """Every item once, in bank order."""
        seen: dict[tuple[str, str], TaskItem] = {}
        for run in self.runs:
            seen.setdefault((run.item.suite, run.item.item_id), run.item)
        return list(seen.values())


def _read_meta(path: Path) -> dict[str, Any]:
    """``bank.json``'s object, {} when the file is absent. Raises BankError naming the file
    when it is not a JSON object."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BankError(f"{path}: not a JSON object")
    return meta


def _read_long_chains(files: Sequence[Path]) -> dict[str, BankSample]:
    """The long greedy chains by run key (a later line for a key replaces an earlier one).

    Raises:
        BankError: a line is not a long chain (the message names the file and line).
    """
    return dict(_json_lines(files, "a long chain", lambda row: (
        str(row["key"]), BankSample.from_json(row["greedy"]))))


def _read_runs(shards: Sequence[Path]) -> Iterator[BankRun]:
    return _json_lines(shards, "a bank run", BankRun.from_json)


def _json_lines(files: Sequence[Path], what: str, read: Callable[[dict[str, Any]], T]
                ) -> Iterator[T]:
    """``read`` of each JSON object line of ``files``, in order. A last line without its
    newline is one being appended right now (by the recorder) and is skipped. ``read`` raising
    KeyError, TypeError, ValueError or AttributeError (a field of the wrong shape) marks a
    line that is not ``what``.

    Raises:
        BankError: a line is not ``what`` (the message names the file and line).
    """
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise TypeError(f"a JSON object expected, not {type(row).__name__}")
                    value = read(row)
                except json.JSONDecodeError as exc:
                    if not line.endswith("\n"):
                        break
                    raise BankError(f"{path}:{number}: not {what}: {exc}") from exc
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise BankError(f"{path}:{number}: not {what}: {exc}") from exc
                yield value
