"""Choosing the embedded backend: llama-server when built, its flags and ``n`` probe, and the
fallback to llama-cpp-python's server. Both servers are stand-in processes
(``tests/fake_llama_server.py``); the real ones run in tests/e2e and bench/llama_throughput.py.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import embedded
from service.llama_server import LlamaServer, default_slots
from service.local_backend import LocalBackend, LocalBackendError
from service.settings import Settings

FAKE = Path(__file__).with_name("fake_llama_server.py")


def fake_binary(directory: Path, *extra: str) -> Path:
    """An executable named llama-server that runs the stand-in with ``extra`` flags."""
    path = directory / "llama-server"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@" {" ".join(extra)}\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(embedded, "model_path", lambda model, directory: tmp_path / "m.gguf")
    # The fallback runs the stand-in too, answering one choice whatever n is.
    monkeypatch.setattr(LocalBackend, "command", lambda self: [
        sys.executable, str(FAKE), "--port", str(self.port), "--alias", self.alias,
        "--ignore-n"])
    return Settings(data_dir=tmp_path, local_start_timeout_s=20, fanout_concurrency=8)


@pytest.fixture
def started() -> Iterator[list[LocalBackend]]:
    backends: list[LocalBackend] = []
    yield backends
    for backend in backends:
        backend.stop(grace_s=2)


def start(settings: Settings, started: list[LocalBackend]) -> LocalBackend:
    backend = embedded.start_embedded(settings, progress=None)
    started.append(backend)
    return backend


def test_llama_server_is_started_with_slots_and_its_n_support_probed(
        settings, started, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "find_server", lambda: fake_binary(tmp_path))
    monkeypatch.setenv("FAKE_LLAMA_ARGV_FILE", str(tmp_path / "argv.json"))
    settings = settings.model_copy(update={"local_parallel": 6, "local_n_ctx": 2048,
                                           "local_threads": 3})
    backend = start(settings, started)
    assert isinstance(backend, LlamaServer)
    assert backend.supports_n is True
    argv = json.loads((tmp_path / "argv.json").read_text())
    # each of the 6 slots gets the per-slot context: llama-server splits -c between slots
    assert argv[argv.index("--parallel") + 1] == "6"
    assert argv[argv.index("--ctx-size") + 1] == str(6 * 2048)
    assert argv[argv.index("--threads") + 1] == "3"
    assert "--cont-batching" in argv
    assert argv[argv.index("--alias") + 1] == "qwen2.5-coder-0.5b-instruct"


def test_a_server_that_refuses_n_is_probed_as_not_honouring_it(
        settings, started, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "find_server", lambda: fake_binary(tmp_path, "--refuse-n"))
    backend = start(settings, started)
    assert isinstance(backend, LlamaServer)
    assert backend.supports_n is False


def test_a_server_that_counts_one_choice_of_n_is_probed_as_not_honouring_it(
        settings, started, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "find_server", lambda: fake_binary(tmp_path, "--usage-of-one"))
    backend = start(settings, started)
    assert isinstance(backend, LlamaServer)
    assert backend.supports_n is False


def test_a_missing_llama_server_falls_back_to_llama_cpp_python(
        settings, started, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "find_server", lambda: None)
    with caplog.at_level(logging.WARNING, logger="ttc_router"):
        backend = start(settings, started)
    assert type(backend) is LocalBackend
    assert backend.supports_n is False
    assert "llama-server is not built" in caplog.text
    assert "falling back to llama-cpp-python's server" in caplog.text


def test_a_llama_server_that_exits_falls_back_and_names_its_log(
        settings, started, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "find_server", lambda: fake_binary(tmp_path, "--exit-code 3"))
    with caplog.at_level(logging.WARNING, logger="ttc_router"):
        backend = start(settings, started)
    assert type(backend) is LocalBackend
    assert "exited with code 3" in caplog.text
    assert str(tmp_path / "logs" / "llama-server.log") in caplog.text


def test_a_llama_server_that_dies_on_its_first_request_falls_back(
        settings, started, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "find_server",
                        lambda: fake_binary(tmp_path, "--crash-on-chat"))
    with caplog.at_level(logging.WARNING, logger="ttc_router"):
        backend = start(settings, started)
    assert type(backend) is LocalBackend
    assert f"exited with code {-signal.SIGILL} on its first request" in caplog.text


def test_asking_for_llama_server_by_name_does_not_fall_back(settings, started, monkeypatch):
    monkeypatch.setattr(embedded, "find_server", lambda: None)
    settings = settings.model_copy(update={"local_server": "llama-server"})
    with pytest.raises(LocalBackendError, match="make llama-server"):
        start(settings, started)


def test_asking_for_llama_cpp_python_skips_llama_server(
        settings, started, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "find_server", lambda: fake_binary(tmp_path))
    settings = settings.model_copy(update={"local_server": "llama-cpp-python"})
    assert type(start(settings, started)) is LocalBackend


@pytest.mark.parametrize("fanout, cores, slots", [(8, 2, 8), (8, 1, 4), (8, 16, 8), (2, 4, 2),
                                                  (1, 1, 1)])
def test_default_slots_are_four_per_core_up_to_one_votes_fan_out(fanout, cores, slots):
    assert default_slots(fanout, cores) == slots


def test_a_server_that_dies_mid_reply_fails_the_n_probe_instead_of_raising():
    import socket
    import threading

    from service.embedded import probe_n_support

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_half_then_die() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                           b"content-length: 369\r\n\r\n")
        connection.close()

    thread = threading.Thread(target=answer_half_then_die)
    thread.start()
    try:
        port = listener.getsockname()[1]
        assert probe_n_support(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5) is False
    finally:
        thread.join(5)
        listener.close()
