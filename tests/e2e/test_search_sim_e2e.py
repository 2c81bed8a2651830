"""Real processes on 127.0.0.1, as a new user runs them: ``ttc-router index add`` (the HotpotQA
corpus, read from ../shared/data), ``ttc-router serve --upstream`` in front of ``ttc-router
sim`` (a SIMULATION of the model; the index, the search strategy, the ledger and the metrics
are real), driven by the official ``openai`` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.obs import Process, start_gateway, start_sim
from tests.hotpotqa import needs_hotpotqa, questions, write_corpus_jsonl

pytestmark = [pytest.mark.e2e, needs_hotpotqa]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_sim(tmp_path_factory.mktemp("sim"))
    yield process
    process.stop()


def _gateway(sim: Process, root: Path, corpus: bool) -> Process:
    data = root / "data"
    if corpus:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
        added = subprocess.run(
            [sys.executable, "-m", "service", "index", "add",
             str(write_corpus_jsonl(root / "hotpot.jsonl")), "--data-dir", str(data)],
            capture_output=True, text=True, env=env, check=False)
        assert added.returncode == 0 and "holds 994 documents" in added.stdout, added.stderr
    return start_gateway(sim.url, data, root)


@pytest.fixture(scope="module")
def indexed(sim: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    gateway = _gateway(sim, tmp_path_factory.mktemp("indexed"), corpus=True)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def empty(sim: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    gateway = _gateway(sim, tmp_path_factory.mktemp("empty"), corpus=False)
    yield gateway
    gateway.stop()


def _tokens(gateway: Process) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[-1]) for line in text.splitlines()
            if line.startswith("ttc_tokens_total{") and 'strategy="search"' in line}


def _ask(gateway: Process, question: str, **router: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    return client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": question}], max_tokens=200,
        extra_body={"router": router})


def test_search_reads_the_question_first_and_counts_every_token(indexed: Process,
                                                               empty: Process) -> None:
    question = questions()[0]["question"]  # "If Gallu is a demon Lilu is what?"
    before = _tokens(indexed)
    reply = _ask(indexed, question, strategy="search", budget_tokens=256)
    info = reply.model_extra["router"]  # type: ignore[index]
    # The first retrieval is the question itself, before any model call.
    assert info["search_queries"][0] == question and info["search_calls"] >= 1
    assert info["search_calls"] <= info["max_search_calls"] == 3
    assert info.get("search_error") is None
    usage = reply.usage
    assert usage is not None and usage.completion_tokens == info["spent_tokens"] <= 256
    after = _tokens(indexed)
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    assert sum(v for k, v in spent.items() if 'kind="completion"' in k) == usage.completion_tokens
    assert sum(v for k, v in spent.items() if 'kind="prompt"' in k) == usage.prompt_tokens
    # No collection: the same request answers without search and says why and what to do.
    bare = _ask(empty, question, strategy="search", budget_tokens=256)
    bare_info = bare.model_extra["router"]  # type: ignore[index]
    assert "index add" in bare_info["search_error"] and bare.choices[0].message.content
    # The hits were in the first call's context: the same protocol, hundreds of tokens more.
    assert bare.usage is not None and usage.prompt_tokens > bare.usage.prompt_tokens + 100


def test_auto_searches_the_collections_questions_and_not_everyday_requests(
        indexed: Process, empty: Process) -> None:
    question = questions()[0]["question"]
    assert _ask(indexed, question).model_extra["router"]["strategy"] == "search"  # type: ignore[index]
    assert _ask(empty, question).model_extra["router"]["strategy"] != "search"  # type: ignore[index]
    info = _ask(indexed, "What is the capital of France?").model_extra["router"]  # type: ignore[index]
    assert info["strategy"] != "search" and info["scores"]["search"] <= 0.3, info
    json.dumps(info)  # the router object is plain JSON
    # Open-ended generation is answered directly, before the collection is read.
    poem = _ask(indexed, "Write a short poem about the sea.").model_extra["router"]  # type: ignore[index]
    assert poem["strategy"] == "direct" and "open-ended generation" in poem["reason"], poem
