"""The HotpotQA copy in ../shared/data/hotpotqa for the search tests: read in place, never
copied into the repository; tests skip with a message when it is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

DATA = Path(os.environ.get("TTC_BENCH_DATA") or
            Path(__file__).resolve().parents[2] / "shared" / "data") / "hotpotqa"
CORPUS = DATA / "hotpotqa_train_corpus.json"
QUESTIONS = DATA / "hotpotqa_train.json"

needs_hotpotqa = pytest.mark.skipif(
    not CORPUS.exists(), reason=f"HotpotQA not found at {DATA}: set TTC_BENCH_DATA or run next "
                                "to ../shared/data (see ../shared/data/MANIFEST.md)")


def write_corpus_jsonl(path: Path) -> Path:
    """The 994-document corpus as ``ttc-router index add`` takes it: JSONL id,title,text."""
    corpus = json.loads(CORPUS.read_text())
    with path.open("w") as out:
        for title, sentences in corpus.items():
            out.write(json.dumps({"id": title, "title": title, "text": "".join(sentences)}) + "\n")
    return path


def questions() -> list[dict[str, Any]]:
    """The 100 questions, each with ``question``, ``answer`` and ``supporting_facts``."""
    return json.loads(QUESTIONS.read_text())
