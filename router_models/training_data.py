"""Readers of recorded outcomes into labelled training examples for the classifier.

Every label is a fraction in [0, 1] with a weight (default 1), or ``None`` where the source
says nothing about that score. What each label means, and so what the policy may read from
the score trained on it:

- ``difficulty``: the chance that a cheap attempt fails: a direct answer (no chain, a short
  budget), or the answer of a weak model. Sources: text-davinci-002's direct answer (32
  tokens) was wrong (``zero_shot_cot/log``; a direct reply with no answer in the expected form
  carries no label, since it says nothing about what the model knows); Mixtral-8x7B's answer
  was wrong (RouteLLM: a direct letter on MMLU, its own solution on GSM8K); the share of the
  four recorded GPT-3 solutions (6B/175B) that are wrong (``gsm8k/example_model_solutions``);
  HotpotQA's own level (``hard``: its baseline model failed, 1; ``medium``: it succeeded, 0;
  ``easy`` single-hop questions carry no label).
- ``sequential``: one chain reaches the answer where a vote of short tries does not. Per
  question of ``zero_shot_cot/log``, from the direct answer and the 128-token chain of thought,
  corrected for lucky guesses on multiple-choice and yes/no questions
  (``router_models.outcome_labels``): 1 when the chain is right where the direct answer is
  wrong, 0 when the direct answer is already right, no weight when both are wrong. Which
  datasets reward chains (state tracking, multi-step arithmetic, letter manipulation) and which
  do not (commonsense, judgement, one-step arithmetic) is learnt from these outcomes and the
  prompts' text, never from a dataset's name. MMLU questions without an equals sign get 0:
  across 14 models, chain of thought's gain on MMLU lies almost entirely in questions or
  answers containing "=" (Sprague et al. 2024, "To CoT or not to CoT?", arXiv 2409.12183);
  those with one carry no label.
- ``search``: the answer rests on facts about particular named entities that a document
  collection holds and the model may lack. 1 for HotpotQA (its corpus holds every question's
  supporting paragraphs) and FanOutQA (Wikipedia facts per entity); 0 where the prompt holds
  everything needed (arithmetic, symbolic and state-tracking tasks, generated tasks) or asks for
  commonsense, judgement or exam knowledge (CommonsenseQA, also asked without its options;
  StrategyQA; MMLU), where the product's prior is a vote, not retrieval. These labels follow
  from what each benchmark is built on, not from recorded outcomes: no closed-book vs
  retrieval outcomes are recorded in the shared data.
- Generated tasks (``router_models.generated``), labelled by construction: graph connectivity
  and arithmetic chains of known depth, ``sequential`` 1 from depth 3 on, 0 at depth 1; a graph
  question beyond one cluster is a coin flip without a chain (``difficulty`` 0.5; 0 at depth 1).

Each example's ``family`` is its benchmark (GSM8K's three recordings share the family
``gsm8k``): the unit that leave-one-dataset-out evaluation holds out. New sources plug in
through ``SOURCES`` (a name and a reader) or ``load_examples(extra=...)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from router_models import generated
from router_models.outcome_labels import latent_cells, sequential_label

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

# zero_shot_cot log stem -> (task family, chance of guessing right: 1/options, 0 when open)
LOG_FAMILIES: dict[str, tuple[str, float]] = {
    "addsub": ("addsub", 0.0), "aqua": ("aqua", 1 / 5), "coin_flip": ("coin_flip", 1 / 2),
    "commonsensqa": ("commonsenseqa", 1 / 5),
    "date_understanding": ("date_understanding", 1 / 6), "gsm8k": ("gsm8k", 0.0),
    "last_letters": ("last_letters", 0.0), "multiarith": ("multiarith", 0.0),
    "shuffled_objects": ("object_tracking", 1 / 3), "singleeq": ("singleeq", 0.0),
    "strategyqa": ("strategyqa", 1 / 2), "svamp": ("svamp", 0.0),
}
HOTPOTQA_DIFFICULTY = {"hard": 1.0, "medium": 0.0}

_LOG_BLOCK = re.compile(
    r"\n\d+_th_sampling\nQ: (.*?)\nA:.*?\npred_mode : (.*?)\nGT : (.*?)\n", re.S)


class DataMissingError(FileNotFoundError):
    """The shared benchmark data directory (or a file in it) is absent."""


@dataclass(frozen=True)
class Example:
    """One labelled prompt. Labels are fractions in [0, 1] or None (no information); each
    label's weight (``weight(head)``) scales its pull in training and evaluation."""

    text: str
    dataset: str
    family: str
    difficulty: float | None = None
    sequential: float | None = None
    search: float | None = None
    difficulty_weight: float = 1.0
    sequential_weight: float = 1.0
    search_weight: float = 1.0

    def label(self, head: str) -> float | None:
        """The label for ``head`` (a name in ``classifier.HEADS``); None when unlabelled or
        of weight 0."""
        value = getattr(self, head)
        return None if value is None or self.weight(head) <= 0 else value

    def weight(self, head: str) -> float:
        """The weight of the label for ``head``."""
        return float(getattr(self, f"{head}_weight"))


@dataclass(frozen=True)
class SourceOptions:
    """What readers may need besides the data directory: the seed, the number of
    generated tasks of each family, and of open CommonsenseQA questions."""

    seed: int = 0
    n_generated: int = 1500
    open_questions: int = 1000


def answer_matches(pred: str, gold: str) -> bool:
    """The zero_shot_cot scorer: numbers compare as numbers, anything else as lower-cased
    text; an empty prediction is never right."""
    pred, gold = pred.strip().lower(), gold.strip().lower()
    try:
        return float(pred.replace(",", "")) == float(gold.replace(",", ""))
    except ValueError:
        return pred == gold and pred != ""


def read_log(path: Path) -> list[tuple[str, bool | None]]:
    """(question, correct) per question of one zero_shot_cot log, in the log's order;
    correct is None when the reply held no answer in the expected form."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(q.strip(), answer_matches(pred, gold) if pred.strip() else None)
            for q, pred, gold in _LOG_BLOCK.findall(text)]


def zero_shot_cot(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """text-davinci-002, direct vs chain of thought, on 12 datasets: ``difficulty`` and
    ``sequential`` per question (module docstring)."""
    log_dir = data_dir / "zero_shot_cot" / "log"
    for stem, (family, guess) in LOG_FAMILIES.items():
        direct = read_log(log_dir / f"{stem}_zero_shot.log")
        cot = read_log(log_dir / f"{stem}_zero_shot_cot.log")
        if len(direct) != len(cot):
            raise ValueError(f"{stem}: {len(direct)} direct vs {len(cot)} chain answers")
        pairs = []
        for (question, d_ok), (question_cot, c_ok) in zip(direct, cot, strict=True):
            if question != question_cot:
                raise ValueError(f"{stem}: logs are not aligned at {question[:60]!r}")
            pairs.append((question, d_ok, bool(c_ok)))
        cells = latent_cells([(d, c) for _, d, c in pairs], guess)
        for question, d_ok, c_ok in pairs:
            seq, seq_weight = sequential_label(d_ok, c_ok, cells)
            yield Example(question, f"zero_shot_cot/{family}", family,
                          difficulty=None if d_ok is None else float(not d_ok),
                          sequential=seq, sequential_weight=seq_weight, search=0.0)


def routellm(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """Mixtral-8x7B's correctness on GSM8K and MMLU (RouteLLM's recorded responses):
    ``difficulty``."""
    root = data_dir / "routellm"
    mixtral = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    with (root / "gsm8k" / "gsm8k_responses.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield Example(row["prompt"].strip(), "routellm/gsm8k", "gsm8k",
                          difficulty=0.0 if row[mixtral] == "True" else 1.0, search=0.0)
    for path in sorted((root / "mmlu" / "responses").glob("*.csv")):
        with path.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                prompt = row["prompt"].strip()
                yield Example(prompt, "routellm/mmlu", "mmlu",
                              difficulty=0.0 if row[mixtral] == "True" else 1.0,
                              sequential=None if "=" in prompt else 0.0, search=0.0)


def gsm8k_solutions(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """Share of the four recorded GPT-3 solutions per GSM8K test question that are wrong:
    ``difficulty``."""
    path = data_dir / "gsm8k" / "example_model_solutions.jsonl"
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            runs = [v for v in row.values() if isinstance(v, dict) and "is_correct" in v]
            wrong = sum(not r["is_correct"] for r in runs) / len(runs)
            yield Example(row["question"].strip(), "gsm8k/example_model_solutions", "gsm8k",
                          difficulty=wrong, search=0.0)


def hotpotqa(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """HotpotQA questions whose supporting paragraphs the local corpus holds: ``search`` 1,
    ``difficulty`` from HotpotQA's level."""
    rows = json.loads((data_dir / "hotpotqa" / "hotpotqa_train.json").read_text("utf-8"))
    for row in rows:
        yield Example(row["question"].strip(), "hotpotqa/train", "hotpotqa",
                      difficulty=HOTPOTQA_DIFFICULTY.get(row.get("level", "")), search=1.0)


def fanoutqa(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """FanOutQA's multi-entity fact questions: ``search`` 1."""
    for split in ("dev", "test"):
        path = data_dir / "fanoutqa" / f"fanout-final-{split}.json"
        if split == "test" and not path.exists():
            continue  # the manifest promises the dev split only
        for row in json.loads(path.read_text("utf-8")):
            yield Example(row["question"].strip(), f"fanoutqa/{split}", "fanoutqa", search=1.0)


def commonsense_open(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """CommonsenseQA train questions asked without their options, ``open_questions`` of
    them (a seeded sample): ``search`` 0. Short open questions whose answer is commonsense
    the model has, the contrast to HotpotQA's short questions about particular entities that
    no other source offers."""
    path = data_dir / "zero_shot_cot" / "dataset" / "CommonsenseQA" / "train_rand_split.jsonl"
    with path.open(encoding="utf-8") as f:
        stems = [json.loads(line)["question"]["stem"].strip() for line in f]
    rng = random.Random(options.seed)
    for stem in sorted(rng.sample(stems, min(options.open_questions, len(stems)))):
        yield Example(stem, "commonsenseqa/train_open", "commonsenseqa", search=0.0)


def generated_tasks(data_dir: Path, options: SourceOptions) -> Iterator[Example]:
    """Graph connectivity and arithmetic chains of known depth (``router_models.generated``),
    labelled by construction."""
    n = options.n_generated
    for task in generated.generate(options.seed, n_graph=n, n_chain=n):
        sequential = 1.0 if task.depth >= 3 else (0.0 if task.depth == 1 else None)
        difficulty = None
        if task.family == "graph_connectivity":
            difficulty = 0.0 if task.depth == 1 else 0.5
        yield Example(task.question, f"generated/{task.family}", task.family,
                      difficulty=difficulty, sequential=sequential, search=0.0)


Reader = Callable[[Path, SourceOptions], Iterable[Example]]
# name -> reader, in the order examples are loaded (the order fixes the training-data hash).
SOURCES: dict[str, Reader] = {
    "zero_shot_cot": zero_shot_cot, "routellm": routellm, "gsm8k_solutions": gsm8k_solutions,
    "hotpotqa": hotpotqa, "fanoutqa": fanoutqa, "commonsense_open": commonsense_open,
    "generated": generated_tasks,
}


def load_examples(data_dir: Path = DEFAULT_DATA_DIR, *, seed: int = 0,
                  n_generated: int = 1500, limit_per_dataset: int | None = None,
                  sources: Iterable[str] | None = None,
                  extra: Iterable[Iterable[Example]] = ()) -> list[Example]:
    """Every training example, in a fixed order.

    Args:
        data_dir: the shared data directory (``../shared/data``).
        seed: seeds the generators.
        n_generated: examples of each generated family.
        limit_per_dataset: keep only the first N examples of each ``dataset`` (small runs).
        sources: names in ``SOURCES`` to read (default: all, in ``SOURCES`` order).
        extra: further examples appended after the named sources (for example an outcome
            bank recorded from the local model).

    Raises:
        DataMissingError: when ``data_dir`` or a file in it is missing.
        KeyError: an unknown source name.
    """
    if not data_dir.is_dir():
        raise DataMissingError(
            f"shared benchmark data not found at {data_dir}: training needs "
            "../shared/data (see ../shared/data/MANIFEST.md), or pass --data")
    names = list(SOURCES) if sources is None else list(sources)
    options = SourceOptions(seed=seed, n_generated=n_generated)
    read: list[Example] = []
    try:
        for name in names:
            read.extend(SOURCES[name](data_dir, options))
    except FileNotFoundError as exc:
        raise DataMissingError(f"shared benchmark data incomplete: {exc}") from exc
    for more in extra:
        read.extend(more)
    examples = [e for e in read if e.text]
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
    """SHA-256 over the examples (text, dataset, family, labels and weights) in order: the
    training-data fingerprint stored with the artifact."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.text, e.dataset, e.family, e.difficulty, e.sequential,
                                  e.search, e.difficulty_weight, e.sequential_weight,
                                  e.search_weight]).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def normalised(text: str) -> str:
    """The text as splits and hold-outs compare it: lower case, single spaces."""
    return " ".join(text.lower().split())


def split_of(text: str, seed: int, test_share: float = 0.2, calibration_share: float = 0.15
             ) -> str:
    """``train``, ``calibration`` or ``test``, from a seeded hash of the normalised text, so
    the same question from several sources always lands in the same split (no leakage)."""
    key = f"{seed}:{normalised(text)}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2 ** 64
    if u < test_share:
        return "test"
    if u < test_share + calibration_share:
        return "calibration"
    return "train"
