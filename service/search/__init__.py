"""Search backends for the ``search`` strategy: the protocol, three implementations, and the
one backend each gateway uses.

- ``local``: the embedded tantivy index under the data directory (``service.search.local``);
- ``searxng``: a SearxNG instance's JSON API (``service.search.searxng``);
- ``elasticsearch``: an Elasticsearch or OpenSearch index (``service.search.elasticsearch``).

``BACKENDS.get(settings)`` opens the configured backend once per ``Settings`` object (the
gateway builds one at start-up) and keeps it while that object lives; ``BACKENDS.set`` lets
an embedding program, or a test, supply its own for a ``Settings`` object.
"""

from __future__ import annotations

import weakref

from service.search.base import Hit, SearchBackend, SearchError
from service.search.elasticsearch import ElasticsearchSearch
from service.search.local import LocalIndex, LocalSearch, index_path
from service.search.searxng import SearxngSearch
from service.settings import Settings


def open_backend(settings: Settings) -> SearchBackend:
    """The search backend ``settings`` configure (``search_backend``, ``search_url``, ...).

    Opening does no I/O: a missing local index or an unreachable service shows up as a
    ``SearchError`` from the first search.
    """
    if settings.search_backend == "searxng":
        assert settings.search_url is not None  # checked by Settings
        return SearxngSearch(settings.search_url, timeout_s=settings.search_timeout_s)
    if settings.search_backend == "elasticsearch":
        assert settings.search_url is not None
        key = settings.search_api_key.get_secret_value() if settings.search_api_key else None
        return ElasticsearchSearch(settings.search_url, settings.search_index, api_key=key,
                                   timeout_s=settings.search_timeout_s)
    return LocalSearch(LocalIndex(index_path(settings.data_dir)))


class SearchBackends:
    """One search backend per live ``Settings`` object, opened on first use."""

    def __init__(self) -> None:
        self._by_settings: dict[int, SearchBackend] = {}

    def get(self, settings: Settings) -> SearchBackend:
        """The backend of ``settings`` (opened by ``open_backend`` the first time)."""
        backend = self._by_settings.get(id(settings))
        if backend is None:
            backend = open_backend(settings)
            self.set(settings, backend)
        return backend

    def set(self, settings: Settings, backend: SearchBackend) -> None:
        """Use ``backend`` for every search made under ``settings``."""
        key = id(settings)
        if key not in self._by_settings:
            weakref.finalize(settings, self._by_settings.pop, key, None)
        self._by_settings[key] = backend


BACKENDS = SearchBackends()

__all__ = ["BACKENDS", "ElasticsearchSearch", "Hit", "LocalIndex", "LocalSearch",
           "SearchBackend", "SearchBackends", "SearchError", "SearxngSearch", "open_backend"]
