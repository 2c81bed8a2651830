"""A SearxNG instance as the search backend, through its JSON API.

``GET {url}/search?q=QUERY&format=json`` answers ``{"results": [{"url", "title", "content",
"score", ...}, ...]}`` (SearxNG's "Search API" documentation). The instance must list
``json`` under ``search.formats`` in its settings.yml; otherwise it answers 403, reported as
such. Hits are the results in SearxNG's order: ``id`` is the result URL, ``text`` its
``content`` snippet.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from service.search.base import Hit
from service.search.http import malformed, request_json


class SearxngSearch:
    """``SearchBackend`` over a SearxNG base URL (``http://127.0.0.1:8888``).

    Args:
        url: the instance's base URL; ``/search`` is appended.
        timeout_s: the most seconds one search may take.
        client: the app's search client (``http.open_client``); None: a short-lived one
            per search.
        transport: an httpx transport for those short-lived clients (tests).
    """

    name: ClassVar[str] = "searxng"

    def __init__(self, url: str, *, timeout_s: float = 5.0,
                 client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.client = client
        self.transport = transport

    async def search(self, query: str, k: int) -> list[Hit]:
        body = await request_json("GET", f"{self.url}/search", backend=self.name,
                                  timeout_s=self.timeout_s, client=self.client,
                                  transport=self.transport,
                                  params={"q": query, "format": "json"})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise malformed(self.name, 'a "results" list')
        hits = [_hit(r) for r in results if isinstance(r, dict)]
        return [h for h in hits if h is not None][:k]


def _hit(result: dict[str, Any]) -> Hit | None:
    url = result.get("url")
    if not isinstance(url, str):
        return None
    score = result.get("score")
    return Hit(id=url, title=str(result.get("title") or ""),
               text=str(result.get("content") or ""),
               score=float(score) if isinstance(score, (int, float)) else 0.0)
