"""Benchmark suites read from the data folder (see ../shared/data/MANIFEST.md for sources and
licences). Each loader takes (limit, folder) and returns items in file order.

Difficulty, in [0, 1], comes from the data where the data says something:

- GSM8K, SVAMP, MultiArith, AddSub: the number of arithmetic operations in the reference solution
  (GSM8K's ``<<...>>`` annotations, the others' equations), 1 -> 0 and 8 or more -> 1.
- MMLU: RouteLLM's recorded correctness of Mixtral-8x7B and GPT-4 on the same question
  (both right 0.1, one 0.5, neither 0.9), 0.5 when that file is absent.
- CommonsenseQA, StrategyQA: text-davinci-002 zero-shot-CoT's greedy outcome in Kojima et al.
  2022's logs (right 0.25, wrong 0.75), 0.5 when the question is not in the log.
- HotpotQA: its ``level`` field (easy 0.2, medium 0.5, hard 0.8).
- Object tracking, coin flip, last letters, date understanding, AQuA: as CommonsenseQA
  (text-davinci-002's logged outcome). AddSub, SingleEq: as MultiArith.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

from router_models.tasks import SuiteUnavailable, TaskItem, infer_kind

LETTERS = ("A", "B", "C", "D", "E", "F")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise SuiteUnavailable(f"benchmark file not found: {path}")
    return path


def _ops_difficulty(ops: int) -> float:
    return round(min(1.0, max(0.0, (ops - 1) / 7)), 4)


def _number(value: float | str) -> str:
    number = float(str(value).replace(",", ""))
    return str(int(number)) if number.is_integer() else repr(number)


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()[:160]


def gsm8k(limit: int | None, folder: Path) -> list[TaskItem]:
    """GSM8K test (1,319): the answer after ``####``; family word_math."""
    items: list[TaskItem] = []
    with _need(folder / "gsm8k" / "test.jsonl").open() as lines:
        for index, line in enumerate(lines):
            if limit is not None and len(items) >= limit:
                break
            row = json.loads(line)
            solution = row["answer"]
            items.append(TaskItem(
                suite="gsm8k", item_id=f"gsm8k-{index:05d}", family="word_math",
                difficulty=_ops_difficulty(solution.count("<<")), question=row["question"],
                answer=_number(solution.rsplit("####", 1)[1].strip()), kind="number"))
    return items


def svamp(limit: int | None, folder: Path) -> list[TaskItem]:
    """SVAMP (1,000) from the zero-shot-CoT copy: body + question; family word_math."""
    rows = json.loads(_need(folder / "zero_shot_cot" / "dataset" / "SVAMP" / "SVAMP.json")
                      .read_text())
    items = []
    for row in rows[:limit]:
        ops = len(re.findall(r"[-+*/]", row["Equation"]))
        question = f"{row['Body'].strip()} {row['Question'].strip()}"
        items.append(TaskItem(
            suite="svamp", item_id=str(row["ID"]), family="word_math",
            difficulty=_ops_difficulty(ops), question=question, answer=_number(row["Answer"]),
            kind="number"))
    return items


def _equation_problems(suite: str, path: Path, limit: int | None) -> list[TaskItem]:
    """Word problems of the zero-shot-CoT copy's equation format (``sQuestion``,
    ``lEquations``, ``lSolutions``, ``iIndex``: MultiArith, AddSub, SingleEq), difficulty
    from their equations' operations; family word_math."""
    items = []
    for row in json.loads(_need(path).read_text())[:limit]:
        ops = sum(len(re.findall(r"[-+*/]", eq.split("=", 1)[-1])) for eq in row["lEquations"])
        items.append(TaskItem(
            suite=suite, item_id=f"{suite}-{row['iIndex']}", family="word_math",
            difficulty=_ops_difficulty(ops), question=row["sQuestion"].strip(),
            answer=_number(row["lSolutions"][0]), kind="number"))
    return items


def _equation_file(folder: Path, name: str) -> Path:
    return folder / "zero_shot_cot" / "dataset" / name / f"{name}.json"


def multiarith(limit: int | None, folder: Path) -> list[TaskItem]:
    """MultiArith (600) from the zero-shot-CoT copy; family word_math."""
    return _equation_problems("multiarith", _equation_file(folder, "MultiArith"), limit)


def addsub(limit: int | None, folder: Path) -> list[TaskItem]:
    """AddSub (395) from the zero-shot-CoT copy: one- and two-step addition and subtraction
    word problems; family word_math."""
    return _equation_problems("addsub", _equation_file(folder, "AddSub"), limit)


def singleeq(limit: int | None, folder: Path) -> list[TaskItem]:
    """SingleEq (508) from the zero-shot-CoT copy: word problems of one equation; family
    word_math."""
    path = folder / "zero_shot_cot" / "dataset" / "SingleEq" / "questions.json"
    return _equation_problems("singleeq", path, limit)


def date_understanding(limit: int | None, folder: Path) -> list[TaskItem]:
    """BIG-bench date understanding (369, Kojima et al. 2022's copy): a date in MM/DD/YYYY
    after a stated shift from a stated date, five or six lettered choices; family
    arithmetic_chain (each shift builds on the date before it). Difficulty from
    text-davinci-002's logged outcome. The file lists the right option first in 364 of 369
    items, so the options are shuffled, the same way every time (seeded by the item)."""
    path = folder / "zero_shot_cot" / "dataset" / "Bigbench_Date" / "task.json"
    return _bigbench_choices("date_understanding", path, "date_understanding", limit, folder,
                             shuffle=True)


def aqua(limit: int | None, folder: Path) -> list[TaskItem]:
    """AQuA-RAT test (254, Ling et al. 2017; Kojima et al. 2022's copy): algebra word problems
    with five lettered choices; family word_math. Difficulty from text-davinci-002's logged
    outcome."""
    path = folder / "zero_shot_cot" / "dataset" / "AQuA" / "test.json"
    outcomes = _davinci_outcomes(folder, "aqua")
    items: list[TaskItem] = []
    with _need(path).open() as lines:
        for index, line in enumerate(lines):
            if limit is not None and len(items) >= limit:
                break
            row = json.loads(line)
            question = row["question"].strip()
            # Options come lettered ("A)5(...)"); a space after the letter reads as the rest.
            options = [re.sub(r"^([A-E])\)\s*", r"\1) ", o) for o in row["options"]]
            items.append(TaskItem(
                suite="aqua", item_id=f"aqua-{index:05d}", family="word_math",
                difficulty=_outcome_difficulty(outcomes, question),
                question=question + "\n" + "\n".join(options), answer=row["correct"],
                kind="choice", choices=LETTERS[:len(options)]))
    return items


def last_letters(limit: int | None, folder: Path) -> list[TaskItem]:
    """Last letter concatenation (500, Kojima et al. 2022): the last letters of four names,
    joined; a short text answer; family arithmetic_chain (each letter is appended to the
    last result). Difficulty from text-davinci-002's logged outcome."""
    path = folder / "zero_shot_cot" / "dataset" / "last_letters" / "last_letters.json"
    outcomes = _davinci_outcomes(folder, "last_letters")
    items = []
    for index, row in enumerate(json.loads(_need(path).read_text())["examples"][:limit]):
        items.append(TaskItem(
            suite="last_letters", item_id=f"last_letters-{index:05d}",
            family="arithmetic_chain",
            difficulty=_outcome_difficulty(outcomes, row["question"]),
            question=row["question"], answer=row["answer"].strip().lower(), kind="text"))
    return items


def _davinci_outcomes(folder: Path, name: str) -> dict[str, bool]:
    """Question -> whether text-davinci-002 zero-shot-CoT got it right (Kojima et al. 2022)."""
    path = folder / "zero_shot_cot" / "log" / f"{name}_zero_shot_cot.log"
    if not path.is_file():
        return {}
    outcomes: dict[str, bool] = {}
    question = pred = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Q: "):
            question = line[3:].split(" Answer Choices:", 1)[0]
        elif line.startswith("pred_mode : "):
            pred = line[len("pred_mode : "):].strip().lower()
        elif line.startswith("GT : ") and question is not None:
            outcomes[_key(question)] = pred == line[5:].strip().lower()
            question = pred = None
    return outcomes


def _outcome_difficulty(outcomes: dict[str, bool], question: str) -> float:
    known = outcomes.get(_key(question))
    return 0.5 if known is None else (0.25 if known else 0.75)


def commonsenseqa(limit: int | None, folder: Path) -> list[TaskItem]:
    """CommonsenseQA dev (1,221), five lettered choices; family commonsense_mc."""
    path = folder / "zero_shot_cot" / "dataset" / "CommonsenseQA" / "dev_rand_split.jsonl"
    outcomes = _davinci_outcomes(folder, "commonsensqa")
    items: list[TaskItem] = []
    with _need(path).open() as lines:
        for line in lines:
            if limit is not None and len(items) >= limit:
                break
            row = json.loads(line)
            stem = row["question"]["stem"]
            choices = [f"{c['label']}) {c['text']}" for c in row["question"]["choices"]]
            items.append(TaskItem(
                suite="commonsenseqa", item_id=row["id"], family="commonsense_mc",
                difficulty=_outcome_difficulty(outcomes, stem),
                question=stem + "\n" + "\n".join(choices), answer=row["answerKey"],
                kind="choice", choices=tuple(c["label"] for c in row["question"]["choices"])))
    return items


def object_tracking(limit: int | None, folder: Path) -> list[TaskItem]:
    """BIG-bench tracking shuffled objects, three objects (750, Kojima et al. 2022's copy):
    who holds what after three swaps, three lettered choices; family arithmetic_chain (each
    swap builds on the last: state tracking). Difficulty from text-davinci-002's logged
    outcome, matched on the question's first 160 characters, which several items share (the
    last of them counts)."""
    path = folder / "zero_shot_cot" / "dataset" / "Bigbench_object_tracking" / "task.json"
    return _bigbench_choices("object_tracking", path, "shuffled_objects", limit, folder)


def _bigbench_choices(suite: str, path: Path, log_name: str, limit: int | None,
                      folder: Path, shuffle: bool = False) -> list[TaskItem]:
    """A BIG-bench multiple-choice task (``examples`` with ``input`` and ``target_scores``)
    as lettered choices, family arithmetic_chain, difficulty from text-davinci-002's log
    ``log_name``; with ``shuffle`` the options are shuffled per item (seeded by suite and
    index, so the same every time)."""
    outcomes = _davinci_outcomes(folder, log_name)
    items = []
    for index, row in enumerate(json.loads(_need(path).read_text())["examples"][:limit]):
        question = row["input"].strip()
        options = list(row["target_scores"])
        if shuffle:
            random.Random(f"{suite}-{index}").shuffle(options)
        letters = LETTERS[:len(options)]
        answer = letters[[row["target_scores"][o] for o in options].index(1)]
        items.append(TaskItem(
            suite=suite, item_id=f"{suite}-{index:05d}", family="arithmetic_chain",
            difficulty=_outcome_difficulty(outcomes, question),
            question=question + "\n" + "\n".join(
                f"{letter}) {option}" for letter, option in zip(letters, options, strict=True)),
            answer=answer, kind="choice", choices=letters))
    return items


def coin_flip(limit: int | None, folder: Path) -> list[TaskItem]:
    """Coin flip (500, Kojima et al. 2022): is a coin still heads up after people flip it or
    not, yes/no; family arithmetic_chain (each flip builds on the last: state tracking)."""
    path = folder / "zero_shot_cot" / "dataset" / "coin_flip" / "coin_flip.json"
    outcomes = _davinci_outcomes(folder, "coin_flip")
    items = []
    for index, row in enumerate(json.loads(_need(path).read_text())["examples"][:limit]):
        items.append(TaskItem(
            suite="coin_flip", item_id=f"coin_flip-{index:05d}", family="arithmetic_chain",
            difficulty=_outcome_difficulty(outcomes, row["question"]),
            question=row["question"], answer=row["answer"].strip().lower(), kind="yes_no",
            choices=("yes", "no")))
    return items


def strategyqa(limit: int | None, folder: Path) -> list[TaskItem]:
    """StrategyQA (2,290, BIG-bench copy), yes/no; family yes_no."""
    data = json.loads(_need(folder / "strategyqa" / "task.json").read_text())
    outcomes = _davinci_outcomes(folder, "strategyqa")
    items = []
    for index, row in enumerate(data["examples"][:limit]):
        answer = "yes" if row["target_scores"].get("Yes") == 1 else "no"
        items.append(TaskItem(
            suite="strategyqa", item_id=f"strategyqa-{index:05d}", family="yes_no",
            difficulty=_outcome_difficulty(outcomes, row["input"]), question=row["input"],
            answer=answer, kind="yes_no", choices=("yes", "no")))
    return items


def _mmlu_subject(folder: Path, subject: str) -> list[TaskItem]:
    path = _need(folder / "mmlu" / "test" / f"{subject}_test.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    outcomes: list[list[str]] = []
    recorded = folder / "routellm" / "mmlu" / "responses" / f"mmlu_{subject}.csv"
    if recorded.is_file():
        with recorded.open(newline="") as handle:
            outcomes = [row[1:3] for row in list(csv.reader(handle))[1:]]
    items = []
    for index, row in enumerate(rows):
        difficulty = 0.5
        if len(outcomes) == len(rows):
            right = sum(value == "True" for value in outcomes[index])
            difficulty = (0.9, 0.5, 0.1)[right]
        choices = [f"{LETTERS[i]}) {row[f'choice{i}']}" for i in range(4)]
        items.append(TaskItem(
            suite=f"mmlu:{subject}", item_id=f"{subject}-{index:04d}", family="knowledge_mc",
            difficulty=difficulty, question=row["question"].strip() + "\n" + "\n".join(choices),
            answer=LETTERS[int(row["answer"])], kind="choice", choices=LETTERS[:4]))
    return items


def mmlu(limit: int | None, folder: Path, subject: str | None = None) -> list[TaskItem]:
    """MMLU test (14,042 over 57 subjects), four lettered choices; family knowledge_mc.
    With ``subject``, that subject; without, subjects interleaved (item 0 of each, then item 1
    of each, ...) so that a small ``limit`` still spans subjects.

    Raises:
        SuiteUnavailable: no such subject file.
    """
    if subject:
        return _mmlu_subject(folder, subject)[:limit]
    subjects = sorted(p.name[:-len("_test.csv")] for p in (folder / "mmlu" / "test").glob(
        "*_test.csv"))
    if not subjects:
        raise SuiteUnavailable(f"no MMLU subjects under {folder / 'mmlu' / 'test'}")
    per_subject = [_mmlu_subject(folder, s) for s in subjects]
    items: list[TaskItem] = []
    for rank in range(max(len(s) for s in per_subject)):
        for subject_items in per_subject:
            if rank < len(subject_items):
                items.append(subject_items[rank])
                if limit is not None and len(items) >= limit:
                    return items
    return items


def hotpotqa(limit: int | None, folder: Path) -> list[TaskItem]:
    """HotpotQA (100 multi-hop questions from HippoRAG's copy); family multihop_qa. Only the
    question is sent: the facts are for the search strategy to retrieve."""
    data = json.loads(_need(folder / "hotpotqa" / "hotpotqa_train.json").read_text())
    level = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
    items = []
    for row in data[:limit]:
        kind = infer_kind(row["answer"])
        answer = row["answer"].strip()
        items.append(TaskItem(
            suite="hotpotqa", item_id=row["_id"], family="multihop_qa",
            difficulty=level.get(row.get("level", ""), 0.5), question=row["question"],
            answer=answer.lower() if kind == "yes_no" else answer, kind=kind))
    return items
