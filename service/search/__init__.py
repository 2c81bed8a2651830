"""Search backends for the ``search`` strategy: the protocol, three implementations, and the
one backend each gateway uses.

- ``local``: the embedded tantivy index under the data directory (``service.search.local``);
- ``searxng``: a SearxNG instance's JSON API (``service.search.searxng``);
- ``elasticsearch``: an Elasticsearch or OpenSearch index (``service.search.elasticsearch``).

The app opens the configured backend once at start-up (``open_backend``), with the one search
HTTP client it owns (``open_client``), and hands it to every request (``Call.search``).
"""

from __future__ import annotations

import httpx

from service.search.base import Hit, SearchBackend, SearchError
from service.search.elasticsearch import ElasticsearchSearch
from service.search.http import open_client
from service.search.local import LocalIndex, LocalSearch, index_path
from service.search.searxng import SearxngSearch
from service.settings import Settings


def open_backend(settings: Settings, client: httpx.AsyncClient | None = None) -> SearchBackend:
    """The search backend ``settings`` configure (``search_backend``, ``search_url``, ...),
    its HTTP calls made on ``client`` (the app's; None: a short-lived client per search).

    Opening does no I/O: a missing local index or an unreachable service shows up as a
    ``SearchError`` from the first search.
    """
    if settings.search_backend == "searxng":
        assert settings.search_url is not None  # checked by Settings
        return SearxngSearch(settings.search_url, timeout_s=settings.search_timeout_s,
                             client=client)
    if settings.search_backend == "elasticsearch":
        assert settings.search_url is not None
        key = settings.search_api_key.get_secret_value() if settings.search_api_key else None
        return ElasticsearchSearch(settings.search_url, settings.search_index, api_key=key,
                                   timeout_s=settings.search_timeout_s, client=client)
    return LocalSearch(LocalIndex(index_path(settings.data_dir)))


__all__ = ["ElasticsearchSearch", "Hit", "LocalIndex", "LocalSearch", "SearchBackend",
           "SearchError", "SearxngSearch", "open_backend", "open_client"]
