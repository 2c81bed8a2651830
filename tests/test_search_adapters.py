"""The SearxNG and Elasticsearch/OpenSearch adapters against fake servers (Starlette apps in
process) for their wire format, and against real sockets on 127.0.0.1 for a service that is
down or silent."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.search import (
    ElasticsearchSearch,
    Hit,
    LocalSearch,
    SearchError,
    SearxngSearch,
    open_backend,
)
from service.settings import SettingsError, load_settings
from tests.search_fakes import closed_port, silent_server

# What SearxNG's /search?format=json answers (fields trimmed to those the adapter reads, plus
# a few it must ignore).
SEARXNG_REPLY = {
    "query": "owls", "number_of_results": 0,
    "results": [
        {"url": "https://en.wikipedia.org/wiki/Owl", "title": "Owl - Wikipedia",
         "content": "Owls are birds from the order Strigiformes.", "engine": "wikipedia",
         "score": 2.5, "category": "general"},
        {"url": "https://example.org/owls", "title": "Owls", "content": "Nocturnal.",
         "engine": "duckduckgo", "score": 1.0},
        {"title": "no url: skipped"},
    ],
    "answers": [], "suggestions": [], "unresponsive_engines": [],
}
# What Elasticsearch 8 / OpenSearch 2 answer to _search.
ES_REPLY = {
    "took": 3, "timed_out": False, "_shards": {"total": 1, "successful": 1},
    "hits": {"total": {"value": 2, "relation": "eq"}, "max_score": 7.1, "hits": [
        {"_index": "docs", "_id": "owl-1", "_score": 7.1,
         "_source": {"title": "Owl", "text": "Owls hunt at night."}},
        {"_index": "docs", "_id": "owl-2", "_score": 3.2, "_source": {"title": "Barn owl"}},
    ]},
}


@dataclass
class FakeSearch:
    """A fake SearxNG and Elasticsearch in one Starlette app; ``body`` replaces the reply
    (bytes are sent as they are), ``status`` its status. ``seen``: (method, path, query
    params, headers, JSON body) of every request."""

    body: Any = None
    status: int = 200
    seen: list[dict[str, Any]] = field(default_factory=list)

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=Starlette(routes=[
            Route("/search", self._searxng),
            Route("/{index}/_search", self._es, methods=["POST"]),
        ]))

    async def _note(self, request: Request) -> None:
        raw = await request.body()
        self.seen.append({"method": request.method, "path": request.url.path,
                          "params": dict(request.query_params), "headers": request.headers,
                          "json": json.loads(raw) if raw else None})

    def _reply(self, default: Any) -> Response:
        if isinstance(self.body, bytes):
            return Response(self.body, status_code=self.status, media_type="text/html")
        return JSONResponse(default if self.body is None else self.body,
                            status_code=self.status)

    async def _searxng(self, request: Request) -> Response:
        await self._note(request)
        return self._reply(SEARXNG_REPLY)

    async def _es(self, request: Request) -> Response:
        await self._note(request)
        return self._reply(ES_REPLY)


async def test_searxng_sends_its_json_api_query_and_reads_the_results():
    fake = FakeSearch()
    hits = await SearxngSearch("http://searx.test/", transport=fake.transport()).search(
        "owls at night", 5)
    assert fake.seen[0]["method"] == "GET" and fake.seen[0]["path"] == "/search"
    assert fake.seen[0]["params"] == {"q": "owls at night", "format": "json"}
    assert hits == [
        Hit("https://en.wikipedia.org/wiki/Owl", "Owl - Wikipedia",
            "Owls are birds from the order Strigiformes.", 2.5),
        Hit("https://example.org/owls", "Owls", "Nocturnal.", 1.0)]
    one = await SearxngSearch("http://searx.test", transport=fake.transport()).search("o", 1)
    assert len(one) == 1


async def test_elasticsearch_sends_a_bm25_multi_match_and_reads_the_hits():
    fake = FakeSearch()
    backend = ElasticsearchSearch("http://es.test:9200", "docs", api_key="k3y",
                                  transport=fake.transport())
    hits = await backend.search("owls", 2)
    request = fake.seen[0]
    assert request["method"] == "POST" and request["path"] == "/docs/_search"
    assert request["json"] == {"size": 2, "_source": ["title", "text"], "query": {
        "multi_match": {"query": "owls", "fields": ["title", "text"]}}}
    assert request["headers"]["authorization"] == "ApiKey k3y"
    assert request["headers"]["content-type"] == "application/json"
    assert hits == [Hit("owl-1", "Owl", "Owls hunt at night.", 7.1),
                    Hit("owl-2", "Barn owl", "", 3.2)]


async def test_elasticsearch_without_a_key_sends_no_authorization():
    fake = FakeSearch()
    await ElasticsearchSearch("http://es.test", "docs", transport=fake.transport()).search("x", 1)
    assert "authorization" not in fake.seen[0]["headers"]


@pytest.mark.parametrize("make", [
    lambda t: SearxngSearch("http://s.test", transport=t),
    lambda t: ElasticsearchSearch("http://s.test", "docs", transport=t),
], ids=["searxng", "elasticsearch"])
@pytest.mark.parametrize("body, status, reason", [
    (b"<html>not json</html>", 200, "malformed"),
    ({"unexpected": True}, 200, "malformed"),
    (["a", "list"], 200, "malformed"),
    ({"error": "json format is disabled"}, 403, "status"),
    ({"error": "boom"}, 500, "status"),
])
async def test_bad_answers_become_search_errors(make, body, status, reason):
    backend = make(FakeSearch(body=body, status=status).transport())
    with pytest.raises(SearchError) as error:
        await backend.search("owls", 3)
    assert error.value.reason == reason


async def test_a_search_service_that_is_down_is_unavailable():
    with pytest.raises(SearchError, match="unreachable") as error:
        await SearxngSearch(f"http://127.0.0.1:{closed_port()}").search("owls", 3)
    assert error.value.reason == "unavailable"


async def test_a_silent_search_service_times_out():
    started = asyncio.get_running_loop().time()
    async with silent_server() as url:
        with pytest.raises(SearchError) as error:
            await ElasticsearchSearch(url, "docs", timeout_s=0.2).search("owls", 3)
    assert error.value.reason == "timeout"
    assert asyncio.get_running_loop().time() - started < 2


def test_settings_choose_the_backend(tmp_path):
    assert isinstance(open_backend(load_settings(data_dir=tmp_path)), LocalSearch)
    es = open_backend(load_settings(search_backend="elasticsearch", search_url="http://e:9200/",
                                    search_index="kb", search_timeout_s=2.0))
    assert isinstance(es, ElasticsearchSearch)
    assert (es.url, es.index, es.timeout_s) == ("http://e:9200", "kb", 2.0)
    assert isinstance(open_backend(load_settings(search_backend="searxng",
                                                 search_url="http://s:8888")), SearxngSearch)


def test_an_http_search_backend_without_a_url_stops_the_start():
    with pytest.raises(SettingsError, match="search_backend searxng needs search_url"):
        load_settings(search_backend="searxng")
    with pytest.raises(SettingsError, match="search_url"):
        load_settings(search_backend="searxng", search_url="searx:8888")


async def test_the_app_owns_one_search_client_shared_by_every_search(tmp_path):
    from service.app import create_app
    from tests.conftest import make_settings
    from tests.fakes import FakeBackend

    settings = make_settings(search_backend="searxng", search_url="http://searx.test",
                             data_dir=tmp_path)
    fake = FakeSearch()
    app = create_app(settings, transport=FakeBackend().transport(),
                     search_transport=fake.transport())
    async with app.router.lifespan_context(app):
        backend = app.state.gateway.search
        assert isinstance(backend, SearxngSearch)
        client = backend.client
        assert isinstance(client, httpx.AsyncClient) and not client.is_closed
        await backend.search("owls", 2)
        await backend.search("cats", 2)
        assert [s["params"]["q"] for s in fake.seen] == ["owls", "cats"]
    assert client.is_closed  # closed with the app
