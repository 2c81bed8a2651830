"""The request log across a crash: ``ttc-router serve`` (SQLite, the default log) killed under
load. SIGKILL loses no record acknowledged as flushed: one whose feedback was answered 200 (the
feedback update needs the committed row), nor any of the records the writer had reported
written in ``ttc_log_records_total``. SIGTERM loses none at all: every answered request is in
the log after the gateway exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.obs import Process, start_fake_backend, start_gateway

pytestmark = pytest.mark.e2e

WORKERS = 16
ENOUGH_ANSWERED = 120  # requests answered before the signal, at least
MAX_EXTRA_LOAD_S = 30.0
LOAD_S = 1.5


@dataclass
class Load:
    """What the clients saw: decision ids answered 200, and those whose feedback was accepted
    (decision id -> the ``correct`` value sent)."""

    answered: set[str] = field(default_factory=set)
    acknowledged: dict[str, bool] = field(default_factory=dict)


async def worker(client: httpx.AsyncClient, load: Load, index: int) -> None:
    """Send requests, and feedback on every third answer, until the gateway stops answering."""
    sent = 0
    while True:
        try:
            reply = await client.post("/v1/chat/completions", json={
                "model": "fake-model", "router": {"budget_tokens": 64},
                "messages": [{"role": "user", "content": f"What is {index}+{sent}?"}]})
        except httpx.HTTPError:
            return
        if reply.status_code != 200:
            continue
        decision_id = reply.headers["x-ttc-decision-id"]
        load.answered.add(decision_id)
        sent += 1
        if sent % 3 == 0:
            correct = sent % 2 == 0
            try:
                feedback = await client.post("/v1/feedback",
                                             json={"id": decision_id, "correct": correct})
            except httpx.HTTPError:
                return
            if feedback.status_code == 200:
                load.acknowledged[decision_id] = correct


async def run_load_then(gateway: Process, sig: int) -> tuple[Load, float]:
    """Load the gateway for LOAD_S seconds, read how many records it has written, send
    ``sig``, and let the clients run until the gateway stops answering."""
    load = Load()
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client, load, i)) for i in range(WORKERS)]
        await asyncio.sleep(LOAD_S)
        # On a busy machine LOAD_S may answer too few requests to prove anything: load on
        # until enough are answered (bounded, so a stuck gateway still fails the test).
        deadline = time.monotonic() + MAX_EXTRA_LOAD_S
        while ((len(load.answered) <= ENOUGH_ANSWERED or len(load.acknowledged) <= 30)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.25)
        exposition = (await client.get("/metrics")).text
        gateway.process.send_signal(sig)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    found = re.search(r'^ttc_log_records_total\{result="written"\} (\S+)$', exposition, re.M)
    return load, float(found.group(1)) if found else 0.0


def logged(data_dir: Path) -> dict[str, tuple[int, bool | None]]:
    """decision id -> (feedback count, feedback correct) for every row of the SQLite log."""
    with sqlite3.connect(data_dir / "requests.db") as db:
        rows = db.execute("SELECT decision_id, feedback_count, feedback_correct FROM requests")
        return {row[0]: (row[1], None if row[2] is None else bool(row[2])) for row in rows}


@pytest.fixture
def backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = start_fake_backend(tmp_path, delay_ms=2)
    yield process
    process.stop()


async def test_sigkill_under_load_loses_no_record_acknowledged_as_flushed(backend, tmp_path):
    gateway = start_gateway(backend.url, tmp_path / "data", tmp_path)
    try:
        load, written = await run_load_then(gateway, signal.SIGKILL)
    finally:
        gateway.stop(signal.SIGKILL)
    assert gateway.process.returncode == -signal.SIGKILL
    rows = logged(tmp_path / "data")
    assert len(load.answered) > 100 and len(load.acknowledged) > 20, "too little load"
    assert written > 0 and len(rows) >= written
    lost = {i for i in load.acknowledged if i not in rows}
    assert not lost, f"{len(lost)} acknowledged records lost"
    assert all(rows[i][1] is correct and rows[i][0] == 1
               for i, correct in load.acknowledged.items())


async def test_sigterm_under_load_loses_no_record(backend, tmp_path):
    gateway = start_gateway(backend.url, tmp_path / "data", tmp_path)
    try:
        load, _ = await run_load_then(gateway, signal.SIGTERM)
        gateway.process.wait(60)
    finally:
        gateway.stop(signal.SIGKILL)
    rows = logged(tmp_path / "data")
    assert len(load.answered) > 100, "too little load"
    lost = load.answered - rows.keys()
    assert not lost, f"{len(lost)} of {len(load.answered)} answered requests are not logged"
    assert all(rows[i][1] is correct for i, correct in load.acknowledged.items())
    assert os.path.getsize(tmp_path / "data" / "requests.db") > 0
