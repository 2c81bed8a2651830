"""The embedded search backend: a tantivy full-text index with BM25 ranking, kept under the
data directory (``<data_dir>/search-index``) and filled by ``ttc-router index add``.

Why tantivy: ``bench/search_engines.py`` measured it against SQLite FTS5 and bm25s on the
HotpotQA corpus (994 documents) and a 100,000-document synthetic one. It had the best
recall@2 and recall@5 on HotpotQA (recall@10 within 0.005 of the best), a query p50 of about
1 ms at 100,000 documents where FTS5 took over 100 ms, and incremental adds in a fraction of
a second where bm25s rebuilds its whole index (15 s at 100,000). README, "Search", has the
figures.

Ranking is tantivy's BM25 (k1 = 1.2, b = 0.75; Robertson & Zaragoza 2009, "The Probabilistic
Relevance Framework: BM25 and Beyond") over ``title`` and ``text`` with English stemming
and accents folded (``ANALYZER``). A query is the words of the text, less Lucene's 33 English
stop words, OR-ed: free text never reaches tantivy's query language, so no query can fail to
parse.

One writer at a time may add to the index (tantivy's lock); readers (the gateway) see each
commit without a restart. This module does not import the web framework: the command line
uses it alone.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import tantivy

from service.search.base import Hit, SearchError
from service.search.documents import Document

INDEX_DIR = "search-index"
# Lucene's English stop words (EnglishAnalyzer's default set), the same list as bm25s's "en".
STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with"))
_WORD = re.compile(r"\w+")
# A query longer than this many words is cut: a model may paste a paragraph as its query.
MAX_QUERY_WORDS = 64
WRITER_HEAP_BYTES = 64_000_000


def index_path(data_dir: Path) -> Path:
    """Where the local index of a data directory lives."""
    return data_dir / INDEX_DIR


# tantivy's ``en_stem`` (words of letters and digits, longer than 40 bytes dropped, lower
# case, English Snowball stems) with ASCII folding before stemming, so that "Zurich" finds
# "Zürich" and "Sao Paulo" "São Paulo", either way round. Indexes built before it (with
# ``en_stem``) keep their own analyzer: tantivy records each field's in the index.
ANALYZER = "en_stem_folded"


def _analyzer() -> tantivy.TextAnalyzer:
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.ascii_fold())
            .filter(tantivy.Filter.stemmer("english"))
            .build())


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True, tokenizer_name=ANALYZER)
    builder.add_text_field("text", stored=True, tokenizer_name=ANALYZER)
    return builder.build()


def query_words(text: str) -> list[str]:
    """The words of a free-text query that are searched: lower-cased ``\\w+`` runs, stop
    words removed, at most ``MAX_QUERY_WORDS``."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS][:MAX_QUERY_WORDS]


@dataclass(frozen=True)
class IndexStats:
    """What ``ttc-router index stats`` prints: the index folder, live documents, segments,
    and bytes on disk."""

    path: Path
    documents: int
    segments: int
    size_bytes: int


class LocalIndex:
    """A tantivy index in ``path`` (a folder), created on the first ``add``.

    Args:
        path: the index folder (``index_path(settings.data_dir)``).

    Methods raise ``SearchError``: ``unavailable`` when the folder holds no index (or one that
    cannot be opened), ``busy`` when another process is writing to it.
    """

    def __init__(self, path: Path):
        self.path = path
        self._index: tantivy.Index | None = None
        self._terms: tantivy.TextAnalyzer | None = None

    def exists(self) -> bool:
        """Whether the folder holds an index (documents were added at least once)."""
        return self.path.is_dir() and tantivy.Index.exists(str(self.path))

    def _open(self, create: bool = False) -> tantivy.Index:
        if self._index is not None:
            return self._index
        if not self.exists():
            if not create:
                raise SearchError(f"the local search index at {self.path} is empty: add "
                                  "documents with `ttc-router index add PATH...`")
            # The data directory private to this user when made here, as the request log's.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            # An existing index is opened with the schema it was built with (its analyzers).
            index = (tantivy.Index.open(str(self.path)) if self.exists() else
                     tantivy.Index(_schema(), path=str(self.path)))
            index.register_tokenizer(ANALYZER, _analyzer())
            self._index = index
        except (OSError, ValueError) as exc:
            # A damaged index, or one another tantivy version or schema wrote: nothing but
            # rebuilding it from the documents can fix that, so say so.
            raise SearchError(f"cannot open the local search index at {self.path}: {exc} "
                              f"(remove {self.path} and add the documents again)") from exc
        return self._index

    def add(self, documents: Iterable[Document], *, batch: int = 50_000) -> int:
        """Add documents, replacing any with the same id; returns how many were added.

        Documents are committed every ``batch`` documents and at the end, so that an
        interrupted add of a large input keeps what it committed. Blocking (seconds for
        large inputs): call it from a thread in async code.

        Raises:
            SearchError: ``busy`` when another writer holds the index.
        """
        index = self._open(create=True)
        try:
            writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        except ValueError as exc:
            raise SearchError(f"the local search index at {self.path} is being written by "
                              f"another process: {exc}", reason="busy") from exc
        added = 0
        try:
            for doc in documents:
                writer.delete_documents_by_term("id", doc.id)
                writer.add_document(tantivy.Document(id=doc.id, title=doc.title, text=doc.text))
                added += 1
                if added % batch == 0:
                    writer.commit()
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise
        index.reload()
        return added

    def holds(self, doc_id: str) -> bool:
        """Whether a document with this id is in the index (False when there is no index)."""
        if not self.exists():
            return False
        query = tantivy.Query.term_query(_schema(), "id", doc_id)
        return bool(self._open().searcher().search(query, 1).hits)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove the documents with these ids (those absent are ignored); returns how many
        ids were given. Raises ``SearchError`` as ``add`` does."""
        ids = list(ids)
        if not ids or not self.exists():
            return 0
        index = self._open()
        try:
            writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        except ValueError as exc:
            raise SearchError(f"the local search index at {self.path} is being written by "
                              f"another process: {exc}", reason="busy") from exc
        for doc_id in ids:
            writer.delete_documents_by_term("id", doc_id)
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        return len(ids)

    def search(self, query: str, k: int) -> list[Hit]:
        """The top ``k`` documents for ``query`` by BM25, best first (blocking: about a
        millisecond at 100,000 documents, see the module docstring).

        Raises:
            SearchError: the index does not exist or cannot be read.
        """
        words = query_words(query)
        if not words or k < 1:
            return []
        index = self._open()
        try:
            parsed = index.parse_query(" ".join(words), ["title", "text"])
            searcher = index.searcher()
            hits = searcher.search(parsed, k).hits
            return [_hit(searcher.doc(address), score) for score, address in hits]
        except ValueError as exc:
            raise SearchError(f"the local search index failed: {exc}") from exc

    def idf(self, words: Iterable[str]) -> dict[str, float]:
        """Each word's inverse document frequency in the index, as BM25 weighs it (tantivy's
        and Lucene's ``ln(1 + (N - df + 0.5) / (df + 0.5))``, N the live documents): about
        0.1 for a word in nearly every document, ``ln(1 + 2N)`` (7.6 at 994 documents) for
        one in none. Blocking, microseconds a word (one term lookup per field and segment).

        Args:
            words: words as a user writes them; each is read with the index's own analyzer
                (lower case, accents folded, English stem), so "Founded" weighs as "found".

        Returns:
            word -> weight, for every word given (a word the analyzer drops, such as one over
            40 bytes, weighs as one found in no document; so does an accented word in an
            index built before ``ANALYZER`` folded accents).

        Raises:
            SearchError: the index does not exist or cannot be read.
        """
        index = self._open()
        if self._terms is None:
            self._terms = _analyzer()
        try:
            searcher = index.searcher()
            documents = searcher.num_docs
            weights: dict[str, float] = {}
            for word in words:
                # tantivy has no per-document frequency across fields: the larger of the
                # two fields' is the closest from below (a title's words are mostly in its
                # text too). Deleted documents still count until their segment is merged,
                # so a frequency may exceed the live documents: capped.
                found = min(documents, max(
                    (searcher.doc_freq(field, term) for term in self._terms.analyze(word)
                     for field in ("title", "text")), default=0))
                weights[word] = math.log(1 + (documents - found + 0.5) / (found + 0.5))
        except ValueError as exc:
            raise SearchError(f"the local search index failed: {exc}") from exc
        return weights

    def stats(self) -> IndexStats:
        """Live documents, segments and size of the index (zeros when it does not exist).

        Raises:
            SearchError: the index cannot be opened (damaged, or from another version).
        """
        if not self.exists():
            return IndexStats(self.path, 0, 0, 0)
        searcher = self._open().searcher()
        size = sum(p.stat().st_size for p in _files(self.path))
        return IndexStats(self.path, searcher.num_docs, searcher.num_segments, size)

    def clear(self) -> None:
        """Delete the index folder and everything in it."""
        self._index = None
        shutil.rmtree(self.path, ignore_errors=True)


def _files(path: Path) -> Iterator[Path]:
    return (p for p in path.rglob("*") if p.is_file())


def _hit(doc: Any, score: float) -> Hit:
    def first(field: str) -> str:
        values = doc[field]
        return str(values[0]) if values else ""

    return Hit(id=first("id"), title=first("title"), text=first("text"), score=float(score))


class LocalSearch:
    """``SearchBackend`` over a ``LocalIndex``: each query runs in a worker thread so the
    event loop never waits on the index."""

    name: ClassVar[str] = "local"

    def __init__(self, index: LocalIndex):
        self.index = index

    async def search(self, query: str, k: int) -> list[Hit]:
        return await asyncio.to_thread(self.index.search, query, k)
