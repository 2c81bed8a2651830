"""Answer extraction latency: ``router_models.answers.extract_answer`` per vote sample, against
the extraction it replaced (issue 15), measured in the same run.

What it measures
    A corpus of model outputs of the forms votes see (chains of reasoning ending in "The answer
    is X", ``#### X``, a bare last line, option letters, yes/no, text; a long chain of about
    2,000 characters), each extracted ``--repeats`` times after a warm-up pass, every call
    timed with ``time.perf_counter_ns``. Prints p50, p99 and the mean in microseconds for the
    current extraction and for the reference, which is loaded from git (``--reference REV``,
    default the last commit before the rewrite), and their ratio. LaTeX answers
    (``\\boxed{\\frac{..}{..}}``) go through SymPy; they are timed apart, first call (parse)
    and repeated calls (the cache), since they are the rare, slow path.

How to run it (from the repository root)
    .venv/bin/python bench/answers.py [--repeats 200] [--reference 0467bcb]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router_models import answers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ("First, Janet has 16 eggs. She eats 3 for breakfast and bakes muffins with 4, so "
         "she has 16 - 3 - 4 = 9 left. She sells each for $2, so 9 * 2 = 18 dollars. " * 12)
CORPUS = [
    CHAIN + "The answer is 18.",
    CHAIN + "\n#### 18",
    CHAIN + "\nSo she makes 18 dollars.",
    "Let me think. Paris is the capital.\nThe answer is Paris.",
    "Comparing the options, (A) and (C) are wrong.\nThe answer is (B).",
    "Both were born in the US.\nSo, yes.",
    "The final answer: No",
    "The answer is 42. Because 7 is prime, the rest follows.",
    "Answer: C) 12",
    "We add 1,234,567 and 0.5.\nThe answer is 1,234,567.5",
    "The answer is \u22123",
    "I am not sure what the answer could be here, it depends on the reading of the question",
]
LATEX = ["so \\boxed{\\frac{1}{2}}", "thus \\boxed{\\frac{\\sqrt{2}}{2}}",
         "The answer is $\\frac{3}{4}\\pi$"]


def _reference(rev: str) -> ModuleType:
    """``router_models/answers.py`` as it was at ``rev``, loaded as a module."""
    source = subprocess.run(["git", "show", f"{rev}:router_models/answers.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "answers_reference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("answers_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _times_us(extract: Callable[[str], object], texts: list[str], repeats: int) -> list[float]:
    for text in texts:  # warm-up: regex caches, lazy imports
        extract(text)
    out = []
    for _ in range(repeats):
        for text in texts:
            started = time.perf_counter_ns()
            extract(text)
            out.append((time.perf_counter_ns() - started) / 1000.0)
    return out


def _summary(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"p50 {statistics.median(ordered):7.1f} us   p99 {p99:7.1f} us   "
            f"mean {statistics.fmean(ordered):7.1f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--reference", default="0467bcb",
                        help="the git revision whose extraction is the reference")
    args = parser.parse_args(argv)
    reference = _reference(args.reference)
    now = _times_us(answers.extract_answer, CORPUS, args.repeats)
    then = _times_us(reference.extract_answer, CORPUS, args.repeats)
    print(f"{len(CORPUS)} outputs x {args.repeats} repeats")
    print(f"  current    {_summary(now)}")
    print(f"  reference  {_summary(then)}  ({args.reference})")
    print(f"  ratio of means current / reference: "
          f"{statistics.fmean(now) / statistics.fmean(then):.2f}")
    started = time.perf_counter()
    for text in LATEX:
        answers.extract_answer(text)
    first_ms = (time.perf_counter() - started) * 1000.0 / len(LATEX)
    cached = _times_us(answers.extract_answer, LATEX, args.repeats)
    print(f"LaTeX answers (SymPy): first call {first_ms:.1f} ms each (import included); "
          f"cached {_summary(cached)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
