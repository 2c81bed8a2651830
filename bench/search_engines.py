"""Which BM25 engine backs the local search index: SQLite FTS5, bm25s or tantivy, measured.

For each engine, on the HotpotQA corpus (994 documents, ../shared/data/hotpotqa) and on a
synthetic corpus (``--synthetic`` documents, 100,000 by default, words drawn with Zipf
frequencies from the HotpotQA vocabulary), it prints:

- recall@k (k = 2, 5, 10) on the 100 HotpotQA questions: the share of each question's
  supporting documents (its ``supporting_facts`` titles) among the top k hits, the question
  text as the query (HotpotQA corpus only: the synthetic one has no relevance labels);
- the build time (seconds, documents per second), and for FTS5 and tantivy the time to add
  1,000 more documents to the built index (bm25s has no incremental add: it rebuilds);
- query latency p50 / p95 in milliseconds over the 100 questions, one query at a time.

All three rank by BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework:
BM25 and Beyond"); each is given the same query (the question's words less Lucene's 33
English stop words, OR-ed) and its own English stemmer (FTS5: porter; bm25s: PyStemmer's
Snowball English; tantivy: en_stem).

Run: ``.venv/bin/python bench/search_engines.py [--synthetic 100000] [--data DIR]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.search.local import query_words  # noqa: E402  (the gateway's own query rule)

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hotpotqa"
WORD = re.compile(r"\w+")

Doc = tuple[str, str, str]  # id, title, text


def query_terms(text: str) -> list[str]:
    return query_words(text)


def load_hotpotqa(folder: Path) -> tuple[list[Doc], list[dict[str, Any]]]:
    corpus = json.loads((folder / "hotpotqa_train_corpus.json").read_text())
    docs = [(title, title, "".join(sentences)) for title, sentences in corpus.items()]
    questions = json.loads((folder / "hotpotqa_train.json").read_text())
    return docs, questions


def synthetic(docs: list[Doc], count: int, seed: int = 0) -> list[Doc]:
    """``count`` documents of 60-140 words drawn with the HotpotQA corpus's word frequencies."""
    rng = random.Random(seed)
    freq = Counter(w for _, _, text in docs for w in WORD.findall(text.lower()))
    words, weights = zip(*freq.most_common(), strict=True)
    cum = list(_cumulative(weights))
    out = []
    for i in range(count):
        body = rng.choices(words, cum_weights=cum, k=rng.randint(60, 140))
        out.append((f"syn-{i}", " ".join(body[:4]).title(), " ".join(body)))
    return out


def _cumulative(weights: Iterable[int]) -> Iterable[int]:
    total = 0
    for w in weights:
        total += w
        yield total


class Fts5:
    name = "sqlite-fts5"

    def __init__(self, folder: Path):
        self.db = sqlite3.connect(folder / "fts.db")
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, title, text, "
                        "tokenize='porter unicode61')")

    def add(self, docs: list[Doc]) -> None:
        with self.db:
            self.db.executemany("INSERT INTO docs VALUES (?, ?, ?)", docs)

    def search(self, query: str, k: int) -> list[str]:
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        rows = self.db.execute("SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) "
                               "LIMIT ?", (match, k)).fetchall()
        return [r[0] for r in rows]


class Bm25s:
    name = "bm25s"

    def __init__(self, folder: Path):
        import Stemmer

        self.stemmer = Stemmer.Stemmer("english")
        self.docs: list[Doc] = []

    def add(self, docs: list[Doc]) -> None:
        import bm25s

        self.docs += docs  # no incremental add: every add re-indexes the whole corpus
        tokens = bm25s.tokenize([f"{t}\n{x}" for _, t, x in self.docs], stopwords="en",
                                stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[str]:
        import bm25s

        q = bm25s.tokenize([" ".join(query_terms(query))], stopwords="en",
                           stemmer=self.stemmer, show_progress=False)
        if not q.vocab:
            return []
        results, _ = self.retriever.retrieve(q, k=min(k, len(self.docs)), show_progress=False)
        return [self.docs[i][0] for i in results[0]]


class Tantivy:
    name = "tantivy"

    def __init__(self, folder: Path):
        import tantivy

        builder = tantivy.SchemaBuilder()
        builder.add_text_field("id", stored=True, tokenizer_name="raw")
        builder.add_text_field("title", stored=True, tokenizer_name="en_stem")
        builder.add_text_field("text", stored=True, tokenizer_name="en_stem")
        self.index = tantivy.Index(builder.build(), path=str(folder))
        self.tantivy = tantivy

    def add(self, docs: list[Doc]) -> None:
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for i, t, x in docs:
            writer.add_document(self.tantivy.Document(id=i, title=t, text=x))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, query: str, k: int) -> list[str]:
        terms = query_terms(query)
        if not terms:
            return []
        q = self.index.parse_query(" ".join(terms), ["title", "text"])
        hits = self.searcher.search(q, k).hits
        return [self.searcher.doc(addr)["id"][0] for _, addr in hits]


ENGINES: list[Callable[[Path], Any]] = [Fts5, Bm25s, Tantivy]


def measure(engine_cls: Callable[[Path], Any], docs: list[Doc], extra: list[Doc],
            questions: list[dict[str, Any]], labelled: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_cls(Path(tmp))
        t0 = time.perf_counter()
        engine.add(docs)
        build_s = time.perf_counter() - t0
        latencies = []
        recall = {2: [], 5: [], 10: []}
        for q in questions:
            t0 = time.perf_counter()
            top = engine.search(q["question"], 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            if labelled:
                gold = {title for title, _ in q["supporting_facts"]}
                for k in recall:
                    recall[k].append(len(gold & set(top[:k])) / len(gold))
        latencies.sort()
        t0 = time.perf_counter()
        engine.add(extra)
        add_s = time.perf_counter() - t0
        return {"engine": engine.name, "docs": len(docs), "build_s": build_s,
                "add_1000_s": add_s,
                "p50_ms": statistics.median(latencies),
                "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
                **({f"recall@{k}": statistics.mean(v) for k, v in recall.items()}
                   if labelled else {})}


def hotpotqa_from_args(description: str
                       ) -> tuple[argparse.Namespace, list[Doc], list[dict[str, Any]]]:
    """The search benches' shared command line (``--data``, ``--synthetic``) and the
    HotpotQA corpus and questions it names.

    Raises:
        SystemExit: the corpus is not there.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--synthetic", type=int, default=100_000)
    args = parser.parse_args()
    if not (args.data / "hotpotqa_train_corpus.json").exists():
        raise SystemExit(f"HotpotQA not found at {args.data} (see ../shared/data/MANIFEST.md)")
    docs, questions = load_hotpotqa(args.data)
    return args, docs, questions


def main() -> None:
    args, docs, questions = hotpotqa_from_args(__doc__.split("\n")[0])
    extra = synthetic(docs, 1000, seed=1)
    big = synthetic(docs, args.synthetic) if args.synthetic else []
    print("| engine | corpus | build s | docs/s | add 1,000 s | p50 ms | p95 ms "
          "| recall@2 | recall@5 | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for corpus, labelled in ((docs, True), (big, False)):
        if not corpus:
            continue
        for engine in ENGINES:
            try:
                r = measure(engine, corpus, extra, questions, labelled)
            except ImportError as exc:
                # bm25s and PyStemmer come with the `bench` extra, which an environment
                # installed for the gateway lacks: say so and measure the other engines.
                name = getattr(engine, "name", str(engine))
                print(f"| {name} | {'hotpotqa' if labelled else 'synthetic'} "
                      f"{len(corpus):,} | not installed ({exc.name}: pip install -e "
                      "'.[bench]') |" + " - |" * 7, flush=True)
                continue
            rec = " | ".join(f"{r[f'recall@{k}']:.3f}" if labelled else "-" for k in (2, 5, 10))
            print(f"| {r['engine']} | {'hotpotqa' if labelled else 'synthetic'} {r['docs']:,} "
                  f"| {r['build_s']:.2f} | {r['docs'] / r['build_s']:,.0f} "
                  f"| {r['add_1000_s']:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {rec} |",
                  flush=True)


if __name__ == "__main__":
    main()
