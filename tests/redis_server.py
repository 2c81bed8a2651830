"""A real Redis for tests, started from the installed binary (Debian package ``redis-server``)
on a free loopback port, without persistence, and stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from service.local_backend import free_port, stop_process


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """Start ``redis-server`` on a free loopback port, without persistence; returns the
    process and its ``redis://`` URL (stop it with ``stop_process``).

    Raises:
        FileNotFoundError: redis-server is not installed.
        RuntimeError: it did not start within 10 s.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a Redis server running for the test session."""
    try:
        process, url = start_redis()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        stop_process(process)
