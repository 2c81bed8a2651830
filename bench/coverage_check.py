"""How often the gateway reads a public dataset's prompts as questions for a real document
collection: the HotpotQA corpus (994 Wikipedia articles) indexed as ``ttc-router index add``
does, each prompt's top 3 hits read by ``service.coverage`` and ``prior.read_search``, as
``Router.search_evidence`` does. Word problems are self-contained, so every one read as a
search prompt is a misreading; HotpotQA's own questions should be read as search prompts,
and none of ``GENERIC_PROMPTS`` (everyday requests) should be.

Prints, per dataset, how many prompts read as search (and their share) by the word share
alone, by the word or name share (``coverage_shares``: a word problem,
``router_models.quantities``, has no name share, and a word share only when it holds a hit's
whole subject), and by the gateway's reading (a prompt that states
two or more dependent steps is not covered by its names alone either). Words weigh by their
inverse document frequency in the index (``LocalIndex.idf``), as the gateway weighs them;
``--unweighted`` weighs every word 1, as before 7 Dec 2026 (the rest of the rule as now).

Usage: ``python -m bench.coverage_check [--limit 200] [--unweighted]``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench.outcome_bank import Retriever
from bench.steps_check import prompts
from router_models.plan import Scores
from router_models.policies.prior import COVERED, read_search
from router_models.steps import state_steps
from router_models.tasks import default_data_dir, load_suite
from service.coverage import coverage_shares
from service.routing import COVERAGE_HITS
from service.search.base import question_query
from service.settings import Settings

# A hit is read as far as the model is shown it (``Router.search_evidence``).
SHOWN = Settings.model_fields["search_result_chars"].default

# Everyday requests a new user sends (written for this check, 7 Dec 2026): the HotpotQA
# articles hold none of their answers, so each one read as a search prompt is a misreading.
GENERIC_PROMPTS = (
    'What is the capital of France?',
    'Write a short poem about the sea.',
    'Write a haiku about autumn leaves.',
    "Translate 'good morning' into Spanish.",
    'Summarize the plot of Hamlet in two sentences.',
    'Give me three tips for a job interview.',
    'What is the boiling point of water in Fahrenheit?',
    'Explain recursion to a five year old.',
    'Write a Python function that reverses a string.',
    'What does HTTP stand for?',
    'Who wrote Pride and Prejudice?',
    'How do I make pancakes?',
    'What is the speed of light?',
    'Tell me a fun fact about octopuses.',
    'Suggest a name for a black cat.',
    'What is the difference between weather and climate?',
    'Write an email asking my manager for a day off.',
    'List the planets of the solar system.',
    'What year did World War II end?',
    'Explain what a neural network is.',
    'Recommend a good science fiction novel.',
    'How many legs does a spider have?',
    'What is the largest ocean on Earth?',
    'Describe the color blue to someone who cannot see.',
    'Write a limerick about a cat who plays the piano.',
    'What is the tallest mountain in Africa?',
    'Compose a short song about a football team winning the season.',
    'Which band released the album Abbey Road?',
    'How does a railway signal work?',
    'Write a story about a village church.',
    'What is the population of Tokyo?',
    'Who painted the Mona Lisa?',
    'Give me a recipe for a vegetarian lasagna.',
    'How do airplanes stay in the air?',
    'What is the meaning of life?',
    'Tell me about the history of the Roman Empire.',
    'Write a cover letter for a software engineer position.',
    'Name a famous film director from Italy.',
    'What is the national sport of Canada?',
    'Why is the sky blue?',
)


def hotpotqa_corpus() -> Path:
    """The HotpotQA corpus file in ../shared/data."""
    data = default_data_dir()
    path = data / "hotpotqa" / "hotpotqa_train_corpus.json" if data else None
    if path is None or not path.is_file():
        raise SystemExit("HotpotQA corpus not found: see ../shared/data/MANIFEST.md")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--unweighted", action="store_true",
                        help="weigh every word 1, not by its inverse document frequency")
    args = parser.parse_args(argv)
    # The outcome bank's retriever indexes the corpus as `ttc-router index add` does (kept
    # referenced: its index lives in its temporary folder).
    retriever = Retriever(hotpotqa_corpus())
    datasets = prompts(args.limit)
    # HotpotQA's bare questions, as a user would ask them (the suite's prompt adds an
    # instruction line).
    datasets["hotpotqa"] = [item.question for item in load_suite("hotpotqa", limit=args.limit)]
    datasets["generic"] = list(GENERIC_PROMPTS)
    idf = None if args.unweighted else retriever.index.idf
    print("| dataset | n | search by words | by words or names | gateway (steps before names) |")
    print("|---|---:|---:|---:|---:|")
    for name, texts in datasets.items():
        words = either = read = 0
        for text in texts:
            hits = retriever.index.search(question_query(text), COVERAGE_HITS)
            shares = coverage_shares(text, [replace(h, text=h.text[:SHOWN]) for h in hits],
                                     idf)
            scores = Scores(0.5, 0.5, 0.0, steps=state_steps(text))
            words += shares.words >= COVERED
            either += max(shares) >= COVERED
            read += read_search(scores, shares.words, shares.names).search >= COVERED
        n = len(texts)
        print(f"| {name} | {n} | {words} ({words / n:.0%}) | {either} ({either / n:.0%}) "
              f"| {read} ({read / n:.0%}) |")


if __name__ == "__main__":
    main()
