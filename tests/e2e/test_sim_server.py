"""Real processes on 127.0.0.1: ``ttc-router sim`` driven by the official ``openai`` SDK, and
``ttc-router eval`` run against it end to end, then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router_models.tasks import load_suite
from service.local_backend import free_port
from tests.e2e.conftest import stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "sim", "--port", str(port),
             "--latency-ms-per-token", "0.01", "--ttft-ms", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ttc-router sim did not start"
            time.sleep(0.2)
        assert "SIMULATION" in log.read_text()
        yield url + "/v1"
    finally:
        stop(process)


def test_sdk_chat_with_n_seed_logprobs_and_labels(sim_url: str) -> None:
    client = openai.OpenAI(base_url=sim_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["sim-reasoner"]
    item = load_suite("graph_connectivity", 9)[8]  # depth 24
    ask = {"model": "sim-reasoner", "messages": [{"role": "user", "content": item.prompt()}],
           "n": 4, "max_tokens": 2000, "seed": 3, "logprobs": True, "top_logprobs": 2}
    reply = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert reply.model == "sim-reasoner" and reply.system_fingerprint == "simulation"
    assert reply.model_extra and reply.model_extra["simulation"]["match"] == "registry"
    assert len(reply.choices) == 4
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4 * 2000
    content = reply.choices[0].message.content or ""
    assert content.rstrip().endswith(".") and "The answer is" in content
    logprob = reply.choices[0].logprobs.content[0]  # type: ignore[union-attr,index]
    assert logprob.logprob <= 0 and len(logprob.top_logprobs) == 2
    again = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert [c.message.content for c in again.choices] == [c.message.content
                                                          for c in reply.choices]
    # Too short for 24 bridges: a guess, and each choice within its cap.
    short = client.chat.completions.create(
        model="sim-reasoner", messages=ask["messages"], n=8, max_completion_tokens=64)
    assert short.usage is not None and short.usage.completion_tokens <= 8 * 64


def test_sdk_stream_reports_usage_once(sim_url: str) -> None:
    client = openai.OpenAI(base_url=sim_url, api_key="unused")
    stream = client.chat.completions.create(
        model="sim-reasoner", stream=True, stream_options={"include_usage": True}, n=2,
        max_tokens=40, messages=[{"role": "user", "content": "[[sim family=yes_no answer=yes]]"}])
    texts = ["", ""]
    usage = []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        if chunk.usage is not None:
            usage.append(chunk.usage)
    assert len(usage) == 1 and usage[0].completion_tokens == 80
    assert all("The answer is" in t for t in texts)


def test_bad_requests_use_the_error_envelope(sim_url: str) -> None:
    client = openai.OpenAI(base_url=sim_url, api_key="unused")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="sim-reasoner", n=0,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "n"  # type: ignore[index]


def test_eval_end_to_end_writes_every_output_and_resumes(sim_url: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"question": "What is 6 * 7?", "answer": "42",
                                 "family": "arithmetic_chain"}) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "service", "eval", "--backend", sim_url,
               "--suite", "graph_connectivity,mc_guess", "--tasks", str(tasks),
               "--limit", "4", "--budgets", "128,1024", "--out", str(out)]
    env = {**os.environ, "TTC_BENCH_DATA": str(tmp_path / "no-data")}
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    assert "eval: 100%" in first.stderr  # the progress bar
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(records) == (4 + 4 + 1) * 3 * 2
    assert not any(r["error"] for r in records)
    names = {p.name for p in out.iterdir()}
    assert {"items.jsonl", "summary.json", "report.md",
            "accuracy_vs_tokens_graph_connectivity.png", "accuracy_vs_tokens_all.png"} <= names
    report = (out / "report.md").read_text()
    assert "| family | budget | winner |" in report.split("##")[1]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "0 sent now" in again.stderr
    assert len((out / "items.jsonl").read_text().splitlines()) == len(records)
