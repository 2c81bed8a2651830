"""An Elasticsearch or OpenSearch index as the search backend, through the ``_search`` API.

``POST {url}/{index}/_search`` with a ``multi_match`` query over the ``title`` and ``text``
fields (both products rank it by BM25 by default) and ``size: k``; hits come back as
``{"hits": {"hits": [{"_id", "_score", "_source": {"title", "text"}}]}}``. The request body
and the response shape are common to Elasticsearch 7-8 and OpenSearch 1-2. An API key, when
set, is sent as ``Authorization: ApiKey KEY`` (Elasticsearch); basic credentials can be
given in the URL (``https://user:pass@host:9200``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from service.search.base import Hit
from service.search.http import malformed, request_json


class ElasticsearchSearch:
    """``SearchBackend`` over one Elasticsearch/OpenSearch index.

    Args:
        url: the cluster's base URL (``http://127.0.0.1:9200``).
        index: the index (or alias, or comma-separated indices) to search.
        api_key: sent as ``Authorization: ApiKey ...`` when given.
        timeout_s: the most seconds one search may take.
        client: the app's search client (``http.open_client``); None: a short-lived one
            per search.
        transport: an httpx transport for those short-lived clients (tests).
    """

    name: ClassVar[str] = "elasticsearch"

    def __init__(self, url: str, index: str, *, api_key: str | None = None,
                 timeout_s: float = 5.0, client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = url.rstrip("/")
        self.index = index
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.client = client
        self.transport = transport

    def query_body(self, query: str, k: int) -> dict[str, Any]:
        """The ``_search`` request body for ``query`` and ``k`` hits."""
        return {"size": k, "_source": ["title", "text"],
                "query": {"multi_match": {"query": query, "fields": ["title", "text"]}}}

    async def search(self, query: str, k: int) -> list[Hit]:
        headers = {"Authorization": f"ApiKey {self.api_key}"} if self.api_key else None
        body = await request_json("POST", f"{self.url}/{self.index}/_search",
                                  backend=self.name, timeout_s=self.timeout_s,
                                  client=self.client, transport=self.transport,
                                  json=self.query_body(query, k),
                                  headers=headers)
        hits = body.get("hits") if isinstance(body, dict) else None
        rows = hits.get("hits") if isinstance(hits, dict) else None
        if not isinstance(rows, list):
            raise malformed(self.name, 'a "hits.hits" list')
        return [_hit(row) for row in rows if isinstance(row, dict)][:k]


def _hit(row: dict[str, Any]) -> Hit:
    source = row.get("_source")
    if not isinstance(source, dict):
        source = {}
    score = row.get("_score")
    return Hit(id=str(row.get("_id", "")), title=str(source.get("title") or ""),
               text=str(source.get("text") or ""),
               score=float(score) if isinstance(score, (int, float)) else 0.0)
