"""Build speed and query latency of the local search index (``service.search.LocalIndex``,
tantivy BM25), on the HotpotQA corpus (994 documents) and a synthetic 100,000-document one.

The synthetic documents have 60-140 words drawn with the HotpotQA corpus's word frequencies
(bench/search_engines.py's ``synthetic``). Queries are the 100 HotpotQA questions, one at a
time, through ``LocalIndex.search`` (what the gateway runs in a worker thread) for the top 3.
Targets (issue 4): p50 under 5 ms on the small corpus, under 50 ms on the large one.

Run: ``.venv/bin/python bench/search_index.py [--synthetic 100000] [--data DIR]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.search_engines import hotpotqa_from_args, synthetic  # noqa: E402
from service.search.documents import Document  # noqa: E402
from service.search.local import LocalIndex  # noqa: E402


def run(name: str, docs: list[Document], queries: list[str], target_ms: float) -> None:
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


def main() -> None:
    args, docs, questions = hotpotqa_from_args(__doc__.split("\n")[0])
    queries = [q["question"] for q in questions]
    print("| corpus | documents | build s | documents/s | index MiB | query p50 ms "
          "| query p99 ms | target p50 ms | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    run("HotpotQA", [Document(*d) for d in docs], queries, 5)
    if args.synthetic:
        run("synthetic", [Document(*d) for d in synthetic(docs, args.synthetic)], queries, 50)


if __name__ == "__main__":
    main()
