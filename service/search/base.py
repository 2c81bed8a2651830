"""What every search backend shares: the ``Hit`` it returns, the ``SearchBackend`` protocol,
and the one error it raises.

Backends translate their own failures (a refused connection, a timeout, a non-2xx status, a
body that is not the JSON they promise, a missing local index) into ``SearchError`` at their
boundary, ``from`` the original exception, so the ``search`` strategy handles one type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class Hit:
    """One retrieved document.

    ``id`` is the backend's identifier (the document id given to ``ttc-router index add``,
    a URL for SearxNG, ``_id`` for Elasticsearch), ``title`` and ``text`` its content as the
    backend returned it, ``score`` the backend's relevance score (BM25 for the local index and
    Elasticsearch; higher is better; only comparable within one backend's answer).
    """

    id: str
    title: str
    text: str
    score: float


class SearchError(Exception):
    """A search backend could not answer.

    ``reason`` is a short fixed word for logs and the ``router.search_error`` field:
    ``unavailable`` (refused, unreachable, index missing), ``timeout``, ``status`` (a non-2xx
    answer), ``malformed`` (a body that is not what the backend's API promises) or ``busy``
    (the local index is locked by another writer).
    """

    def __init__(self, message: str, *, reason: str = "unavailable"):
        super().__init__(message)
        self.reason = reason


class SearchBackend(Protocol):
    """A place to search. ``name`` is the ``backend`` label of ``ttc_search_calls_total``
    (``local``, ``searxng``, ``elasticsearch``).

    ``search(query, k)`` returns at most ``k`` hits, best first; an empty list when nothing
    matches. Raises ``SearchError`` on any failure, never another exception type.
    """

    name: ClassVar[str]

    async def search(self, query: str, k: int) -> list[Hit]: ...
