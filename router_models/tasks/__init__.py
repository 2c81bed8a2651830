"""Task suites with exact answers: the items, the prompt each is sent as, and the registry of
suites by name. Pure: the only I/O is reading benchmark files at a path it is given.

Suites (``SUITES``): generated ones need nothing (``graph_connectivity``,
``arithmetic_chain``, ``mc_guess``); data ones read the benchmark copies under a data folder
(``gsm8k``, ``svamp``, ``multiarith``, ``commonsenseqa``, ``strategyqa``, ``mmlu`` or
``mmlu:SUBJECT``, ``hotpotqa``) and raise ``SuiteUnavailable`` when it is absent. The user's own
tasks come from a JSONL file (``load_tasks_file``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# How each kind of answer is asked for; the simulator and the checkers read "The answer is X."
ANSWER_KINDS = ("number", "choice", "yes_no", "text", "node")
INSTRUCTIONS = {
    "number": 'Think step by step, then end with "The answer is N." where N is a number.',
    "choice": 'Think step by step, then end with "The answer is X." where X is the letter of '
              "one choice.",
    "yes_no": 'Think step by step, then end with "The answer is yes." or "The answer is no."',
    "text": 'Think step by step, then end with "The answer is X." where X is a short phrase.',
    "node": 'Think step by step, then end with "The answer is X." where X is the name of the '
            "target node.",
}
DATA_ENV = "TTC_BENCH_DATA"


class SuiteUnavailable(LookupError):
    """A suite that is unknown, or whose benchmark data is not at the data folder."""


@dataclass(frozen=True)
class TaskItem:
    """One question with an exact answer.

    Args:
        suite: the suite name (``gsm8k``, ``graph_connectivity``, ...).
        item_id: unique within the suite, stable across runs.
        family: the simulation family that models it (``router_models/data/sim_world.yaml``).
        difficulty: in [0, 1]; how it is derived is documented per suite.
        question: the full question as shown to the model (choices included).
        answer: the gold answer: a number as text, a choice letter, ``yes``/``no``, a phrase
            or a node name.
        kind: one of ``ANSWER_KINDS``; picks the checker.
        choices: the options a guess is drawn from (letters, nodes), or empty.
    """

    suite: str
    item_id: str
    family: str
    difficulty: float
    question: str
    answer: str
    kind: str
    choices: tuple[str, ...] = ()

    def prompt(self) -> str:
        """The user message sent for this item: the question, a blank line, the instruction."""
        return f"{self.question}\n\n{INSTRUCTIONS[self.kind]}"


def default_data_dir() -> Path | None:
    """Where the benchmark copies live: ``$TTC_BENCH_DATA``, else ``../shared/data`` from the
    working directory, else ``shared/data`` next to the source tree (where ``ttc-router
    train`` looks: commands run from another folder find the same data), else None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for guess in (Path.cwd().parent / "shared" / "data",
                  Path(__file__).resolve().parents[3] / "shared" / "data"):
        if guess.is_dir():
            return guess
    return None


SUITES = ("graph_connectivity", "arithmetic_chain", "mc_guess", "gsm8k", "svamp",
          "multiarith", "commonsenseqa", "strategyqa", "mmlu", "hotpotqa", "object_tracking",
          "coin_flip", "last_letters", "addsub", "singleeq", "date_understanding", "aqua")
GENERATED_SUITES = SUITES[:3]


def _generated(name: str) -> Callable[[int | None], list[TaskItem]]:
    from router_models.tasks import generated

    loaders: dict[str, Callable[[int | None], list[TaskItem]]] = {
        "graph_connectivity": generated.graph_connectivity,
        "arithmetic_chain": generated.arithmetic_chain, "mc_guess": generated.mc_guess}
    return loaders[name]


def _data(name: str) -> Callable[[int | None, Path], list[TaskItem]]:
    from router_models.tasks import datasets

    loaders: dict[str, Callable[[int | None, Path], list[TaskItem]]] = {
        "gsm8k": datasets.gsm8k, "svamp": datasets.svamp, "multiarith": datasets.multiarith,
        "commonsenseqa": datasets.commonsenseqa, "strategyqa": datasets.strategyqa,
        "mmlu": datasets.mmlu, "hotpotqa": datasets.hotpotqa,
        "object_tracking": datasets.object_tracking, "coin_flip": datasets.coin_flip,
        "last_letters": datasets.last_letters, "addsub": datasets.addsub,
        "singleeq": datasets.singleeq, "date_understanding": datasets.date_understanding,
        "aqua": datasets.aqua}
    return loaders[name]


def load_suite(name: str, limit: int | None = None,
               data_dir: Path | None = None) -> list[TaskItem]:
    """The first ``limit`` items (all when None) of suite ``name``; ``mmlu:SUBJECT`` picks one
    MMLU subject. Deterministic: the same call gives the same items.

    Raises:
        SuiteUnavailable: unknown suite, or its data is not under ``data_dir`` (default
            ``default_data_dir()``).
    """
    base, _, subject = name.partition(":")
    if base not in SUITES:
        raise SuiteUnavailable(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    if base in GENERATED_SUITES:
        return _generated(base)(limit)
    folder = data_dir or default_data_dir()
    if folder is None or not folder.is_dir():
        raise SuiteUnavailable(
            f"suite {name!r} needs the benchmark data folder (give --data DIR, set "
            f"{DATA_ENV}, or run from a checkout next to ../shared/data)")
    if base == "mmlu" and subject:
        from router_models.tasks.datasets import mmlu

        return mmlu(limit, folder, subject=subject)
    return _data(base)(limit, folder)


def load_tasks_file(path: Path, default_family: str = "independent_mc") -> list[TaskItem]:
    """The user's own tasks: JSONL with ``question``, ``answer`` and optional ``family``,
    ``difficulty``, ``id`` per line. The answer's kind is inferred (a number, a single
    letter A-F, yes/no, else a phrase); a JSON boolean answer is yes or no.

    Raises:
        ValueError: a line that is not a JSON object whose question and answer are strings,
            numbers or (the answer) booleans.
        OSError: the file cannot be read.
    """
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answer = _scalar(row["question"]), row["answer"]
            # str(True) is "True", a text no reply states: a yes/no item scored wrong always.
            answer = ("yes" if answer else "no") if isinstance(answer, bool) \
                else _scalar(answer).strip()
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected {{question, answer}}: {exc}") from exc
        kind = infer_kind(answer)
        items.append(TaskItem(
            suite="tasks", item_id=str(row.get("id", number)),
            family=str(row.get("family") or default_family),
            difficulty=float(row.get("difficulty", 0.5)), question=question,
            answer=answer.lower() if kind == "yes_no" else answer, kind=kind))
    return items


def _scalar(value: object) -> str:
    """A task field as text: a string, or a number as written.

    Raises:
        TypeError: null, a list or an object (``str`` would make "None" or "['a']" the
            gold answer).
    """
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a string or a number expected, not {json.dumps(value)}")


def infer_kind(answer: str) -> str:
    """The answer kind of a bare gold answer: number, choice (one letter A-F), yes_no, text."""
    text = answer.strip()
    if re.fullmatch(r"[-+]?\$?[\d,]*\.?\d+", text):
        return "number"
    if re.fullmatch(r"[A-Fa-f]", text):
        return "choice"
    if text.lower() in ("yes", "no"):
        return "yes_no"
    return "text"
