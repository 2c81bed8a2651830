"""Build speed and query latency of the local search index (``service.search.LocalIndex``,
tantivy BM25), on the HotpotQA corpus (994 documents) and a synthetic 100,000-document one.

The synthetic documents have 60-140 words drawn with the HotpotQA corpus's word frequencies
(bench/search_engines.py's ``synthetic``). Queries are the 100 HotpotQA questions, one at a
time, through ``LocalIndex.search`` (what the gateway runs in a worker thread) for the top 3.
Targets (issue 4): p50 under 5 ms on the small corpus, under 50 ms on the large one.

A second table times the coverage check the gateway runs on every ``auto`` request with a
local index (``Router.search_evidence``: the top 3 hits, cut to ``search_result_chars``, read
by ``service.coverage.coverage_shares``), with the words weighed by the index's inverse
document frequencies (``LocalIndex.idf``, as the gateway does) and unweighted (as before
7 Dec 2026), alternating per query in the same passes so that both see the same load.

Run: ``.venv/bin/python bench/search_index.py [--synthetic 100000] [--data DIR]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.search_engines import hotpotqa_from_args, synthetic  # noqa: E402
from service.coverage import coverage_shares  # noqa: E402
from service.search.base import question_query  # noqa: E402
from service.search.documents import Document  # noqa: E402
from service.search.local import LocalIndex  # noqa: E402
from service.settings import Settings  # noqa: E402

SHOWN = Settings.model_fields["search_result_chars"].default


def run(name: str, docs: list[Document], queries: list[str], target_ms: float) -> str:
    """Print the row of the index table for one corpus; return the coverage table's row."""
    with tempfile.TemporaryDirectory() as tmp:
        index = LocalIndex(Path(tmp) / "idx")
        started = time.perf_counter()
        index.add(docs)
        build_s = time.perf_counter() - started
        for query in queries[:10]:  # warm the page cache and the searcher
            index.search(query, 3)
        latencies = []
        for _ in range(3):
            for query in queries:
                started = time.perf_counter()
                index.search(query, 3)
                latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        stats = index.stats()
        print(f"| {name} | {len(docs):,} | {build_s:.2f} | {len(docs) / build_s:,.0f} "
              f"| {stats.size_bytes / 2**20:.1f} | {p50:.2f} | {p99:.2f} | {target_ms:g} "
              f"| {'met' if p50 < target_ms else 'MISSED'} |", flush=True)
        return coverage_row(name, index, queries)


def coverage_row(name: str, index: LocalIndex, queries: list[str]) -> str:
    """The coverage check's p50 and p99 in ms, unweighted and weighted, and their ratios."""
    def check(question: str, weighted: bool) -> float:
        started = time.perf_counter()
        hits = [replace(h, text=h.text[:SHOWN])
                for h in index.search(question_query(question), 3)]
        coverage_shares(question, hits, index.idf if weighted else None)
        return (time.perf_counter() - started) * 1000

    plain: list[float] = []
    weighted: list[float] = []
    for question in queries[:10]:
        check(question, True)
    for _ in range(3):
        for question in queries:
            plain.append(check(question, False))
            weighted.append(check(question, True))
    cells = []
    for times in (plain, weighted):
        times.sort()
        cells.append((statistics.median(times), times[int(0.99 * (len(times) - 1))]))
    (p50, p99), (w50, w99) = cells
    return (f"| {name} | {p50:.2f} | {p99:.2f} | {w50:.2f} | {w99:.2f} | {w50 / p50:.2f} "
            f"| {w99 / p99:.2f} |")


def main() -> None:
    args, docs, questions = hotpotqa_from_args(__doc__.split("\n")[0])
    queries = [q["question"] for q in questions]
    print("| corpus | documents | build s | documents/s | index MiB | query p50 ms "
          "| query p99 ms | target p50 ms | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [run("HotpotQA", [Document(*d) for d in docs], queries, 5)]
    if args.synthetic:
        rows.append(run("synthetic", [Document(*d) for d in synthetic(docs, args.synthetic)],
                        queries, 50))
    print("\n| corpus | coverage check p50 ms | p99 ms | IDF-weighted p50 ms | p99 ms "
          "| p50 ratio | p99 ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
