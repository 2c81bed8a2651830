"""A real ``ttc-router sim --bank`` process on 127.0.0.1 serving the fixture bank, driven by the
official ``openai`` SDK: a cut chain, exact usage, streaming, and a bank that cannot be read."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router_models.bank import Bank
from service.local_backend import free_port
from tests.e2e.conftest import stop

pytestmark = pytest.mark.e2e
FIXTURE = Path(__file__).resolve().parents[1] / "bank_fixture"


@pytest.fixture(scope="module")
def replay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("bank") / "sim.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "sim", "--bank", str(FIXTURE), "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT)
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
            assert time.monotonic() < deadline, "ttc-router sim --bank did not start"
            time.sleep(0.2)
        assert "BANK REPLAY" in log.read_text() and "5 runs" in log.read_text()
        yield url + "/v1"
    finally:
        stop(process)


def test_sdk_gets_a_cut_recorded_chain_with_exact_usage_streamed_or_not(replay_url: str) -> None:
    run = Bank.load(FIXTURE).runs[0]
    client = openai.OpenAI(base_url=replay_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["bank-replay"]
    ask = {"model": "bank-replay", "messages": [{"role": "user", "content": run.prompt}],
           "max_tokens": 6, "temperature": 0}
    reply = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "".join(run.greedy.tokens[:6])
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage and reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens == run.prompt_tokens
    chunks = list(client.chat.completions.create(  # type: ignore[call-overload]
        **ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 6


def test_an_unreadable_bank_stops_the_command_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "service", "sim", "--bank",
                           str(tmp_path / "absent")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no outcome bank" in done.stderr
