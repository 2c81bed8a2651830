"""Shared fixtures: the gateway in process in front of a fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from service.app import create_app
from service.settings import Settings, UpstreamSettings
from tests.pg import database_url, postgres_server, postgres_url  # noqa: F401  (fixtures)

BACKEND_URL = "http://backend.test/v1"


def make_settings(models: tuple[str, ...] | None = ("fake-model",), **overrides: Any) -> Settings:
    """Settings for one fake upstream; retries without backoff so tests stay fast."""
    upstream: dict[str, Any] = {"url": BACKEND_URL, "name": "fake"}
    if models is not None:
        upstream["models"] = list(models)
    if "supports_n" in overrides:
        upstream["supports_n"] = overrides.pop("supports_n")
    # The fake backends answer in a few tokens: assume answers of 48 tokens (samples of 60)
    # where a real deployment assumes 256 until usage tells, so small test budgets still vote.
    values: dict[str, Any] = {"upstreams": [UpstreamSettings(**upstream)],
                              "retry_backoff_s": 0.0, "max_retries": 2,
                              "default_answer_tokens": 48}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def gateway_client(transport: httpx.AsyncBaseTransport,
                         settings: Settings | None = None,
                         search_backend: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the gateway app in process, its lifespan running (with
    ``search_backend`` as the search strategy's backend when given)."""
    app = create_app(settings or make_settings(), transport=transport,
                     search_backend=search_backend)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        yield client


def metric(name: str, **labels: str) -> float:
    """The current value of one Prometheus sample (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's gateway keeps its state (the request log) in its own temporary directory,
    never under the user's home."""
    monkeypatch.setenv("TTC_DATA_DIR", str(tmp_path / "ttc-data"))


@pytest.fixture
def chat_body() -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture(scope="module")
def hotpot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose search index holds the 994 HotpotQA documents, added by
    ``ttc-router index add`` (tests using it are marked ``needs_hotpotqa``)."""
    from service.cli import main
    from tests.hotpotqa import write_corpus_jsonl

    folder = tmp_path_factory.mktemp("hotpot")
    corpus = write_corpus_jsonl(folder / "corpus.jsonl")
    assert main(["index", "add", str(corpus), "--data-dir", str(folder / "data")]) == 0
    return folder / "data"


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[Any, Any]]:
    """The official ``openai`` client and the ``FakeBackend`` behind the gateway in process
    (lifespan running): ``(client, backend)``."""
    import openai

    from tests.fakes import FakeBackend

    backend = FakeBackend(models=("fake-model",))
    app = create_app(make_settings(), transport=backend.transport())
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        client = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="unused",
                                    http_client=http, max_retries=0)
        yield client, backend
        await client.close()
