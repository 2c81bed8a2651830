"""``ttc-router index add PATH...`` and ``ttc-router index stats``: the local search index
under the data directory, used by the ``search`` strategy."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Inputs at least this large (bytes, all files together) show a progress bar.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def register(subcommands: Any) -> None:
    index = subcommands.add_parser(
        "index", help="the local search index of the search strategy",
        description="Add documents to, or describe, the local full-text index (BM25, tantivy) "
                    "that the search strategy searches when search_backend is local. It lives "
                    "under the data directory (TTC_DATA_DIR), so the gateway run by the same "
                    "user sees what you add, without a restart.")
    actions = index.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="add documents (JSONL id,title,text per line; .txt; .md)",
        description="Add documents: JSONL files with one {\"id\", \"title\", \"text\"} object "
                    "a line (a document with an id already indexed replaces it), and .txt/.md "
                    "files (split into passages of about 1,000 characters, at blank lines where "
                    "they are). Directories are read recursively for those three types. Shows "
                    "progress on large inputs.")
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument("--config", type=Path, help="YAML config file whose data_dir to use "
                                                 "(also TTC_CONFIG)")
    add.add_argument("--data-dir", type=Path, help="the data directory (default TTC_DATA_DIR, "
                                                   "else the config file's, else "
                                                   "~/.local/share/ttc-router)")
    add.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help=f"show a progress bar (default: for inputs over "
                          f"{PROGRESS_MIN_BYTES // 2**20} MiB)")
    add.set_defaults(run=run_add)
    stats = actions.add_parser("stats", help="documents, segments and size of the index")
    stats.add_argument("--config", type=Path, help="YAML config file whose data_dir to use "
                                                   "(also TTC_CONFIG)")
    stats.add_argument("--data-dir", type=Path, help="the data directory (default "
                                                     "TTC_DATA_DIR)")
    stats.set_defaults(run=run_stats)


def _data_dir(args: argparse.Namespace) -> Path:
    """The data directory: ``--data-dir``, then ``TTC_DATA_DIR``, then ``--config``'s file
    (as ``serve``, ``keys`` and ``ab`` read it, so they all see one index). Raises SystemExit
    with a message when the settings are invalid."""
    from service.settings import SettingsError, load_settings

    try:
        return load_settings(args.config, data_dir=args.data_dir).data_dir
    except SettingsError as exc:
        raise SystemExit(f"ttc-router index: {exc}") from exc


def run_add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.search.base import SearchError
    from service.search.documents import (
        Document,
        DocumentError,
        input_files,
        passage_id,
        read_documents,
    )
    from service.search.local import LocalIndex, index_path

    try:
        files = input_files(args.paths)
    except DocumentError as exc:
        print(f"ttc-router index add: {exc}", file=sys.stderr)
        return 2
    total = sum(f.stat().st_size for f in files)
    show = args.progress if args.progress is not None else total >= PROGRESS_MIN_BYTES
    index = LocalIndex(index_path(_data_dir(args)))
    started = time.perf_counter()
    with tqdm(total=total, unit="B", unit_scale=True, desc="indexing", disable=not show,
              file=sys.stderr) as bar:

        # Passages are numbered from 1 in each file: those a file held before past its new
        # count are what an edit removed, and go (else they stayed searchable for ever).
        before: dict[Path, int] = {}
        after: dict[Path, int] = {}

        def documents() -> Iterator[Document]:
            for path in files:
                seen = 0
                for doc, done in read_documents(path):
                    bar.update(done - seen)
                    seen = done
                    after[path] = after.get(path, 0) + 1
                    yield doc
                bar.update(path.stat().st_size - seen)

        try:
            for path in files:
                if path.suffix.lower() != ".jsonl":
                    before[path] = _passages_held(index, path)
            added = index.add(documents())
            index.delete(passage_id(path, number) for path, count in before.items()
                         for number in range(after.get(path, 0) + 1, count + 1))
        except (DocumentError, SearchError) as exc:
            print(f"ttc-router index add: {exc} (nothing from this run after the last commit "
                  "was kept)", file=sys.stderr)
            return 2
    stats = index.stats()
    print(f"added {added} documents from {len(files)} files in "
          f"{time.perf_counter() - started:.2f} s; the index at {stats.path} holds "
          f"{stats.documents} documents")
    return 0


def _passages_held(index: Any, path: Path) -> int:
    """How many passages of the text file ``path`` the index holds (they are numbered from 1
    with no gaps: ``documents.passage_id``)."""
    from service.search.documents import passage_id

    count = 0
    while index.holds(passage_id(path, count + 1)):
        count += 1
    return count


def run_stats(args: argparse.Namespace) -> int:
    from service.search.base import SearchError
    from service.search.local import LocalIndex, index_path

    try:
        stats = LocalIndex(index_path(_data_dir(args))).stats()
    except SearchError as exc:  # a damaged index, or one from another version
        print(f"ttc-router index stats: {exc}", file=sys.stderr)
        return 2
    print(f"path       {stats.path}")
    print(f"documents  {stats.documents}")
    print(f"segments   {stats.segments}")
    print(f"size       {stats.size_bytes / 2**20:.2f} MiB")
    return 0
