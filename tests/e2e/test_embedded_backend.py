"""End to end: the official openai SDK -> ``ttc-router serve`` -> llama.cpp on the real model."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import port_answers, start_gateway, stop, wait_until_closed

pytestmark = pytest.mark.e2e

MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as sdk:
        yield sdk


def test_models_list_has_the_local_model_and_auto(client):
    assert [m.id for m in client.models.list()] == ["auto", MODEL]


def test_chat_completion_answers_a_simple_question(client):
    reply = client.chat.completions.create(
        model="auto", temperature=0, max_tokens=16,
        messages=[{"role": "user",
                   "content": "What is the capital of France? Answer with one word."}])
    assert "paris" in reply.choices[0].message.content.lower()
    assert reply.model == MODEL
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert reply.model_extra["router"]["spent_tokens"] == reply.usage.completion_tokens


def test_streamed_completion_ends_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count from 1 to 5, separated by commas."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "1" in text and "2" in text
    assert chunks[-1].choices == []
    assert 0 < chunks[-1].usage.completion_tokens <= 12
    # llama-cpp-python's server may send no usage in streams: then its own tokenizer
    # (POST /extras/tokenize/count) counts the tokens, and the grant is never charged
    assert chunks[-1].model_extra["router"]["usage_source"] in ("backend", "tokenizer")


def test_n_is_honoured_against_llama_cpp(client, gateway):
    reply = client.chat.completions.create(
        model="auto", n=2, max_tokens=4, temperature=0.8,
        messages=[{"role": "user", "content": "Name a colour."}])
    assert [c.index for c in reply.choices] == [0, 1]
    # one call when the server returns n choices, else one single-choice call per choice
    calls = 1 if gateway.backend_honours_n() else 2
    assert reply.model_extra["router"]["upstream_calls"] == calls


def test_errors_arrive_as_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])


def test_sigterm_stops_the_embedded_backend(data_dir, tmp_path):
    running = start_gateway(data_dir, tmp_path / "gateway.log")
    port = running.backend_port()
    assert port_answers(port)
    stop(running.process, signal.SIGTERM)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit is by that signal
    assert running.process.returncode in (0, -signal.SIGTERM)
    assert f"stopped the embedded backend on 127.0.0.1:{port}" in running.log.read_text()
    assert wait_until_closed(port)


def test_the_backend_dies_with_a_killed_gateway(data_dir, tmp_path):
    running = start_gateway(data_dir, tmp_path / "gateway.log")
    port = running.backend_port()
    backend = processes_serving(port)
    assert backend, f"no process found serving port {port}"
    stop(running.process, signal.SIGKILL)
    assert wait_until_closed(port)
    # The process itself, not only its port: a server whose graceful shutdown hangs closes
    # its port and lives on, orphaned.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(pid) for pid in backend):
        time.sleep(0.2)
    assert not [pid for pid in backend if alive(pid)]


def processes_serving(port: int) -> list[int]:
    """Pids whose command line holds ``--port PORT`` (the embedded backend's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in argv and str(port).encode() in argv[argv.index(b"--port") + 1:][:1]:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# A vote needs samples that can finish: before it has learned answer lengths the gateway
# allows 320 tokens a sample, so 960 buys a vote of three, the smallest with a majority (the
# answers themselves are short).
@pytest.mark.parametrize("strategy, budget", [("parallel_vote", 960), ("sequential", 48)])
@pytest.mark.parametrize("stream", [False, True])
def test_each_strategy_through_the_sdk(client, strategy, budget, stream):
    request = dict(model="auto", messages=[{"role": "user", "content": "What is 3 + 4? "
                                            "End with 'The answer is N.'"}],
                   extra_body={"router": {"strategy": strategy, "budget_tokens": budget}})
    if not stream:
        reply = client.chat.completions.create(**request)
        router = reply.model_extra["router"]
        assert router["strategy"] == strategy
        assert 0 < reply.usage.completion_tokens == router["spent_tokens"] <= budget
        assert reply.choices[0].message.content
        return
    chunks = list(client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].model_extra["router"]["strategy"] == strategy
    assert 0 < chunks[-1].usage.completion_tokens <= budget
