"""Readers of the shared benchmark data into labelled training examples for the classifier.

Every label is a fraction in [0, 1] (the share of recorded attempts that fit it) or ``None``
where the source says nothing about that score. Where each label comes from:

- ``zero_shot_cot/log`` (Kojima et al. 2022, text-davinci-002, greedy): ``difficulty`` = the
  direct answer (at most 32 tokens) was wrong; ``sequential`` = the 128-token chain of thought
  was right where the direct answer was wrong (1), or the direct answer was already right (0);
  questions both got wrong carry no ``sequential`` label (neither budget tells whether a chain
  helps).
- ``routellm`` (Ong et al. 2024): ``difficulty`` = Mixtral-8x7B's answer was wrong.
- ``gsm8k/example_model_solutions.jsonl`` (Cobbe et al. 2021): ``difficulty`` = share of the
  four recorded GPT-3 solutions that are wrong.
- Known task structure: GSM8K train (chains: ``sequential`` 1), CommonsenseQA train and
  non-mathematical MMLU subjects (knowledge, independent guesses: ``sequential`` 0), HotpotQA
  and FanOutQA (``search`` 1); arithmetic, symbolic, commonsense, StrategyQA,
  multiple-choice and generated tasks are answered from the prompt or common knowledge
  (``search`` 0).
- ``router_models.generated``: graph connectivity and arithmetic chains of known depth:
  ``sequential`` 1 from depth 3 on, 0 at depth 1; a graph question beyond one cluster is a
  coin flip without a chain, so its ``difficulty`` is 0.5 (0 at depth 1).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_models import generated

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

# zero_shot_cot log stem -> task family
LOG_FAMILIES = {
    "addsub": "addsub", "aqua": "aqua", "coin_flip": "coin_flip",
    "commonsensqa": "commonsenseqa", "date_understanding": "date_understanding",
    "gsm8k": "gsm8k", "last_letters": "last_letters", "multiarith": "multiarith",
    "shuffled_objects": "object_tracking", "singleeq": "singleeq", "strategyqa": "strategyqa",
    "svamp": "svamp",
}
# Families that need outside facts (search 1); every other family is labelled search 0
# (StrategyQA counts as knowledge with independent guesses, as the issue groups it).
SEARCH_FAMILIES = frozenset({"hotpotqa", "fanoutqa"})
# MMLU subjects where a worked chain plausibly helps: no known-structure sequential label.
_MMLU_QUANTITATIVE = re.compile(r"math|algebra|statistics|physics|chemistry|accounting|"
                                r"econometrics|computer_science|machine_learning|logic")

_LOG_BLOCK = re.compile(
    r"\n\d+_th_sampling\nQ: (.*?)\nA:.*?\npred_mode : (.*?)\nGT : (.*?)\n", re.S)


class DataMissingError(FileNotFoundError):
    """The shared benchmark data directory (or a file in it) is absent."""


@dataclass(frozen=True)
class Example:
    """One labelled prompt. Labels are fractions in [0, 1] or None (no information)."""

    text: str
    dataset: str
    family: str
    difficulty: float | None = None
    sequential: float | None = None
    search: float | None = None


def _same_answer(pred: str, gold: str) -> bool:
    pred, gold = pred.strip().lower(), gold.strip().lower()
    try:
        return float(pred.replace(",", "")) == float(gold.replace(",", ""))
    except ValueError:
        return pred == gold and pred != ""


def read_log(path: Path) -> list[tuple[str, bool]]:
    """(question, correct) per question of one zero_shot_cot log, in the log's order."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(q.strip(), _same_answer(pred, gold))
            for q, pred, gold in _LOG_BLOCK.findall(text)]


def zero_shot_cot(data_dir: Path) -> Iterator[Example]:
    """Direct vs chain-of-thought outcomes of text-davinci-002 on 12 datasets."""
    log_dir = data_dir / "zero_shot_cot" / "log"
    for stem, family in LOG_FAMILIES.items():
        direct = read_log(log_dir / f"{stem}_zero_shot.log")
        cot = read_log(log_dir / f"{stem}_zero_shot_cot.log")
        if len(direct) != len(cot):
            raise ValueError(f"{stem}: {len(direct)} direct vs {len(cot)} chain answers")
        for (question, d_ok), (question_cot, c_ok) in zip(direct, cot, strict=True):
            if question != question_cot:
                raise ValueError(f"{stem}: logs are not aligned at {question[:60]!r}")
            sequential = 0.0 if d_ok else (1.0 if c_ok else None)
            search = 1.0 if family in SEARCH_FAMILIES else 0.0
            yield Example(question, f"zero_shot_cot/{family}", family,
                          difficulty=0.0 if d_ok else 1.0, sequential=sequential,
                          search=search)


def routellm(data_dir: Path) -> Iterator[Example]:
    """Mixtral-8x7B correctness on GSM8K and MMLU (RouteLLM's recorded responses)."""
    root = data_dir / "routellm"
    mixtral = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    with (root / "gsm8k" / "gsm8k_responses.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield Example(row["prompt"].strip(), "routellm/gsm8k", "gsm8k",
                          difficulty=0.0 if row[mixtral] == "True" else 1.0, search=0.0)
    for path in sorted((root / "mmlu" / "responses").glob("*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        sequential = None if _MMLU_QUANTITATIVE.search(subject) else 0.0
        with path.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield Example(row["prompt"].strip(), "routellm/mmlu", "mmlu",
                              difficulty=0.0 if row[mixtral] == "True" else 1.0,
                              sequential=sequential, search=0.0)


def gsm8k_solutions(data_dir: Path) -> Iterator[Example]:
    """Share of the four recorded GPT-3 solutions per GSM8K test question that are wrong."""
    path = data_dir / "gsm8k" / "example_model_solutions.jsonl"
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            runs = [v for v in row.values() if isinstance(v, dict) and "is_correct" in v]
            wrong = sum(not r["is_correct"] for r in runs) / len(runs)
            yield Example(row["question"].strip(), "gsm8k/example_model_solutions", "gsm8k",
                          difficulty=wrong, search=0.0)


def known_structure(data_dir: Path, seed: int, per_source: int) -> Iterator[Example]:
    """Task families whose structure is known: chains, knowledge, and search questions."""
    rng = np.random.default_rng(seed)

    def sample(items: list[str]) -> list[str]:
        if len(items) <= per_source:
            return items
        return [items[int(i)] for i in np.sort(rng.choice(len(items), per_source, False))]

    with (data_dir / "gsm8k" / "train.jsonl").open(encoding="utf-8") as f:
        train = [json.loads(line)["question"].strip() for line in f]
    for q in sample(train):
        yield Example(q, "gsm8k/train", "gsm8k", sequential=1.0, search=0.0)
    csqa = data_dir / "zero_shot_cot" / "dataset" / "CommonsenseQA" / "train_rand_split.jsonl"
    with csqa.open(encoding="utf-8") as f:
        rows = [json.loads(line)["question"] for line in f]
    for q in sample([_csqa_prompt(r) for r in rows]):
        yield Example(q, "commonsenseqa/train", "commonsenseqa", sequential=0.0, search=0.0)
    hotpot = json.loads((data_dir / "hotpotqa" / "hotpotqa_train.json").read_text("utf-8"))
    for row in hotpot:
        yield Example(row["question"].strip(), "hotpotqa/train", "hotpotqa", search=1.0)
    for split in ("dev", "test"):
        path = data_dir / "fanoutqa" / f"fanout-final-{split}.json"
        for row in json.loads(path.read_text("utf-8")):
            yield Example(row["question"].strip(), f"fanoutqa/{split}", "fanoutqa", search=1.0)


def _csqa_prompt(question: dict) -> str:
    # The same shape as the zero_shot_cot logs: stem, then "Answer Choices: (A) ...".
    choices = " ".join(f"({c['label']}) {c['text']}" for c in question["choices"])
    return f"{question['stem'].strip()} Answer Choices: {choices}"


def generated_tasks(seed: int, n_each: int) -> Iterator[Example]:
    """Graph connectivity and arithmetic chains of known depth (``router_models.generated``)."""
    for task in generated.generate(seed, n_graph=n_each, n_chain=n_each):
        sequential = 1.0 if task.depth >= 3 else (0.0 if task.depth == 1 else None)
        difficulty = None
        if task.family == "graph_connectivity":
            difficulty = 0.0 if task.depth == 1 else 0.5
        yield Example(task.question, f"generated/{task.family}", task.family,
                      difficulty=difficulty, sequential=sequential, search=0.0)


def load_examples(data_dir: Path = DEFAULT_DATA_DIR, *, seed: int = 0,
                  per_source: int = 2000, n_generated: int = 1500,
                  limit_per_dataset: int | None = None) -> list[Example]:
    """Every training example, in a fixed order.

    Args:
        data_dir: the shared data directory (``../shared/data``).
        seed: seeds the subsampling of large known-structure sources and the generators.
        per_source: the most examples taken from each known-structure source.
        n_generated: examples of each generated family.
        limit_per_dataset: keep only the first N examples of each ``dataset`` (small runs).

    Raises:
        DataMissingError: when ``data_dir`` or a file in it is missing.
    """
    if not data_dir.is_dir():
        raise DataMissingError(
            f"shared benchmark data not found at {data_dir}: training needs "
            "../shared/data (see ../shared/data/MANIFEST.md), or pass --data-dir")
    try:
        sources: Iterable[Example] = [
            *zero_shot_cot(data_dir), *routellm(data_dir), *gsm8k_solutions(data_dir),
            *known_structure(data_dir, seed, per_source), *generated_tasks(seed, n_generated)]
    except FileNotFoundError as exc:
        raise DataMissingError(f"shared benchmark data incomplete: {exc}") from exc
    examples = [e for e in sources if e.text]
    if limit_per_dataset is not None:
        seen: dict[str, int] = {}
        kept = []
        for e in examples:
            seen[e.dataset] = seen.get(e.dataset, 0) + 1
            if seen[e.dataset] <= limit_per_dataset:
                kept.append(e)
        examples = kept
    return examples


def data_hash(examples: Iterable[Example]) -> str:
    """SHA-256 over the examples (text, dataset, family, labels) in order: the training-data
    fingerprint stored with the artifact."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.text, e.dataset, e.family, e.difficulty, e.sequential,
                                  e.search]).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def split_of(text: str, seed: int, test_share: float = 0.2, calibration_share: float = 0.15
             ) -> str:
    """``train``, ``calibration`` or ``test``, from a seeded hash of the normalised text, so
    the same question from several sources always lands in the same split (no leakage)."""
    key = f"{seed}:{' '.join(text.lower().split())}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2 ** 64
    if u < test_share:
        return "test"
    if u < test_share + calibration_share:
        return "calibration"
    return "train"
