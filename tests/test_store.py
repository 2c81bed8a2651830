"""The request log: the same tests against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router_models.plan import Plan
from service.observe import Outcome, record_of
from service.store import AmbiguousId, Record, StoreError, UnknownId
from service.store.log import RequestLog, open_request_log
from service.store.migrations import MIGRATIONS, Migration
from tests.conftest import metric


def make_record(i: int = 0, **changes: Any) -> Record:
    values: dict[str, Any] = dict(
        decision_id=f"dec_{i:032x}", response_id=f"chatcmpl-{i}", time_s=1_700_000_000.0 + i,
        endpoint="chat", key_name="team-a", model="fake-model", strategy="parallel_vote",
        policy="cheap", arm="control", experiment="exp1", status="200", budget_tokens=512,
        prompt_tokens=7, completion_tokens=120 + i, estimated=False, upstream_calls=3, samples=3,
        search_calls=0, duration_s=0.25, wait_s=0.2, stream=False,
        scores={"difficulty": 0.5, "sequential": 0.1, "search": 0.0},
        plan={"strategy": "parallel_vote", "budget_tokens": 512, "width": 3},
        votes={"4": 2, "5": 1})
    values.update(changes)
    return Record(**values)


async def open_log(url: str, **options: Any) -> RequestLog:
    log = open_request_log(Path("/nonexistent"), url, **options)
    await log.start()
    return log


async def test_a_record_reads_back_unchanged_after_reopening(database_url):
    record = make_record(1)
    log = await open_log(database_url)
    assert log.submit(record)
    await log.close()
    log = await open_log(database_url)
    try:
        assert await log.get(record.decision_id) == record
        assert await log.get(record.response_id or "") == record
        assert await log.backend.schema_version() == len(MIGRATIONS)
    finally:
        await log.close()


async def test_feedback_last_value_wins_and_only_the_first_is_marked_first(database_url):
    log = await open_log(database_url)
    try:
        log.submit(make_record(2))
        first = await log.feedback("dec_" + "2".rjust(32, "0"), 1.0)
        again = await log.feedback("chatcmpl-2", 0.0)  # the response id names the same row
        assert (first.first, again.first) == (True, False)
        assert (first.strategy, first.policy, first.arm) == ("parallel_vote", "cheap", "control")
        stored = await log.get(first.decision_id)
        assert (stored.feedback_correct, stored.feedback_score, stored.feedback_count) == \
            (False, 0.0, 2)
    finally:
        await log.close()


async def test_feedback_on_a_record_still_in_the_queue_finds_it(database_url):
    log = await open_log(database_url)
    try:
        record = make_record(3)
        log.submit(record)  # the writer has not run yet: the record is only queued
        applied = await log.feedback(record.decision_id, 0.75)
        assert applied.first and applied.decision_id == record.decision_id
        assert (await log.get(record.decision_id)).feedback_correct is True
    finally:
        await log.close()


async def test_an_unknown_id_is_refused(database_url):
    log = await open_log(database_url)
    try:
        with pytest.raises(UnknownId):
            await log.feedback("dec_missing", 1.0)
        with pytest.raises(UnknownId):
            await log.get("chatcmpl-missing")
    finally:
        await log.close()


async def test_a_response_id_several_records_share_is_ambiguous(database_url):
    # Only records logged before the gateway minted its own ids can share one (a backend's
    # repeated id): which request it names is unknown, so neither gets the feedback.
    log = await open_log(database_url)
    try:
        log.submit(make_record(4, response_id="chatcmpl-same", time_s=10.0))
        log.submit(make_record(5, response_id="chatcmpl-same", time_s=20.0))
        with pytest.raises(AmbiguousId, match="send the decision id"):
            await log.feedback("chatcmpl-same", 1.0)
        with pytest.raises(AmbiguousId):
            await log.get("chatcmpl-same")
        untouched = [await log.get(make_record(i).decision_id) for i in (4, 5)]
        assert [r.feedback_count for r in untouched] == [0, 0]
        applied = await log.feedback(make_record(4).decision_id, 1.0)  # the decision id works
        assert applied.decision_id == make_record(4).decision_id
    finally:
        await log.close()


async def test_a_decision_id_wins_over_a_response_id_equal_to_it(database_url):
    log = await open_log(database_url)
    try:
        named = make_record(6)
        log.submit(named)
        log.submit(make_record(7, response_id=named.decision_id, time_s=30.0))
        assert (await log.feedback(named.decision_id, 1.0)).decision_id == named.decision_id
    finally:
        await log.close()


async def test_close_writes_every_accepted_record(database_url):
    log = await open_log(database_url)
    accepted = sum(bool(log.submit(make_record(i))) for i in range(3000))
    await log.close()
    log = await open_log(database_url)
    try:
        assert accepted == 3000
        assert len(await log.backend.records()) == 3000
    finally:
        await log.close()


async def test_a_full_queue_drops_records_and_counts_them(database_url):
    dropped = metric("ttc_log_records_total", result="dropped")
    log = await open_log(database_url, queue_size=5)
    # the writer cannot run between these submits
    accepted = [bool(log.submit(make_record(i))) for i in range(12)]
    await log.close()
    assert accepted == [True] * 5 + [False] * 7
    assert metric("ttc_log_records_total", result="dropped") - dropped == 7
    log = await open_log(database_url)
    try:
        assert len(await log.backend.records()) == 5
    finally:
        await log.close()


async def test_records_can_be_read_by_experiment_and_feedback(database_url):
    log = await open_log(database_url)
    try:
        log.submit(make_record(6))
        log.submit(make_record(7, experiment=None, arm=None))
        await log.feedback(make_record(6).decision_id, 1.0)
        await log.flush()
        assert [r.decision_id for r in await log.backend.records(experiment="exp1")] == \
            [make_record(6).decision_id]
        assert len(await log.backend.records(with_feedback=True)) == 1
        assert len(await log.backend.records()) == 2
    finally:
        await log.close()


async def test_an_older_schema_is_migrated_and_keeps_its_rows(database_url):
    newer = len(MIGRATIONS) + 1
    second = Migration(newer, "a reviewer column",
                       sqlite="ALTER TABLE requests ADD COLUMN reviewer TEXT",
                       postgres="ALTER TABLE requests ADD COLUMN reviewer TEXT")
    log = open_request_log(Path("/nonexistent"), database_url)
    log.backend._migrations = MIGRATIONS  # type: ignore[attr-defined]
    await log.start()
    log.submit(make_record(8))
    await log.close()

    log = open_request_log(Path("/nonexistent"), database_url)
    log.backend._migrations = (*MIGRATIONS, second)  # type: ignore[attr-defined]
    await log.start()
    try:
        assert await log.backend.schema_version() == newer
        assert (await log.get(make_record(8).decision_id)).completion_tokens == 128
    finally:
        await log.close()

    log = open_request_log(Path("/nonexistent"), database_url)  # one version behind
    with pytest.raises(StoreError, match="newer than this gateway"):
        await log.start()
    await log.close()


async def test_gateways_starting_together_migrate_once(database_url):
    logs = [open_request_log(Path("/nonexistent"), database_url) for _ in range(4)]
    await asyncio.gather(*(log.start() for log in logs))
    try:
        assert {await log.backend.schema_version() for log in logs} == {len(MIGRATIONS)}
    finally:
        for log in logs:
            await log.close()


class FlakyBackend:
    """Wraps a backend; its first ``failures`` writes raise StoreError."""

    def __init__(self, inner: Any, failures: int):
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, records: Sequence[Record]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("scripted failure")
        await self.inner.write(records)


async def test_a_failed_write_is_retried_then_given_up_and_counted(database_url, caplog):
    base = open_request_log(Path("/nonexistent"), database_url)
    written = metric("ttc_log_records_total", result="written")
    failed = metric("ttc_log_records_total", result="failed")

    log = RequestLog(FlakyBackend(base.backend, failures=2), retry_s=0.001, attempts=3)
    await log.start()
    log.submit(make_record(9))
    await log.flush()
    assert metric("ttc_log_records_total", result="written") - written == 1

    log.backend.failures = 3  # type: ignore[attr-defined]
    log.submit(make_record(10))
    await log.flush()
    assert metric("ttc_log_records_total", result="failed") - failed == 1
    assert "given up" in caplog.text
    with pytest.raises(UnknownId):
        await log.get(make_record(10).decision_id)
    await log.close()


def test_a_record_keeps_text_only_when_the_operator_opts_in():
    outcome = Outcome(
        decision_id="dec_x", response_id="r", endpoint="chat", model="m", strategy="direct",
        policy=None, arm=None, status="200", budget_tokens=None, prompt_tokens=1,
        completion_tokens=2, upstream_calls=1, samples=1, duration_s=0.1, wait_s=0.05,
        plan=Plan("direct", 256, policy="cheap"), prompt_text="2+2?", answer_text="4")
    kept = record_of(outcome, time_s=1.0, keep_text=True)
    hidden = record_of(outcome, time_s=1.0, keep_text=False)
    assert (kept.prompt_text, kept.answer_text) == ("2+2?", "4")
    assert (hidden.prompt_text, hidden.answer_text) == (None, None)
    assert hidden.plan is not None and hidden.plan["budget_tokens"] == 256
    assert replace(hidden, prompt_text="2+2?", answer_text="4") == kept


def test_a_database_url_of_another_kind_is_refused():
    with pytest.raises(StoreError, match="postgresql://"):
        open_request_log(Path("/tmp"), "mysql://x")


def test_connections_switching_one_file_to_wal_together_all_succeed(tmp_path: Path) -> None:
    # Plain "PRAGMA journal_mode=WAL" failed with "database is locked" in 6 of 200 such trials,
    # busy timeout or not (gateways on one SQLite file starting together).
    import sqlite3
    import threading

    from service.store.sqlite import enable_wal

    errors: list[str] = []
    for trial in range(200):
        path = tmp_path / f"r{trial}.db"
        ready = threading.Barrier(6)

        def switch(path: Path = path, ready: threading.Barrier = ready) -> None:
            db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            ready.wait()
            try:
                enable_wal(db, 5.0)
                mode = db.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    errors.append(f"journal mode {mode}")
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))
            finally:
                db.close()

        threads = [threading.Thread(target=switch) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


async def test_feedback_waits_for_a_row_another_gateway_on_the_same_data_dir_commits(
        tmp_path: Path) -> None:
    # Two gateways on one box share DATA_DIR/requests.db (no database_url): feedback posted
    # to the one that did not answer, before the other's writer commits the row, was a 404
    # (2 of 100 such posts against two `ttc-router serve` processes).
    from service.store.sqlite import SqliteBackend

    answering = RequestLog(SqliteBackend(tmp_path / "requests.db"), linger_s=0.5)
    other = open_request_log(tmp_path, None)
    await answering.start()
    await other.start()
    lone = open_request_log(tmp_path / "alone", None)
    await lone.start()
    try:
        answering.submit(make_record(20))
        await answering.flush()  # the answering gateway has served before
        late = make_record(21)
        answering.submit(late)  # answered; its row lingers 0.5 s before the commit
        applied = await other.feedback(late.decision_id, 1.0)
        assert applied.first and applied.decision_id == late.decision_id
        # A gateway alone on its file does not wait for rows nobody else can write.
        started = asyncio.get_running_loop().time()
        with pytest.raises(UnknownId):
            await lone.feedback("dec_missing", 1.0)
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        for log in (answering, other, lone):
            await log.close()


async def test_feedback_after_the_database_restarted_is_recorded_not_a_500(postgres_url):
    # A PostgreSQL restart (or failover) closes every connection the pool holds. The request
    # writer retries, but feedback, reports and look-ups took a dead connection from the pool
    # and failed at once ("terminating connection due to administrator command"): feedback
    # posted during or just after a restart was a 500 and lost, although the database was
    # back (or about to be) and answers were only delayed.
    import psycopg

    log = await open_log(postgres_url)
    try:
        for i in range(3):
            log.submit(make_record(40 + i))
        await log.flush()
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres",
                             autocommit=True) as admin:
            killed = admin.execute(
                "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                "pg_stat_activity WHERE datname = %s", (database,)).fetchone()
        assert killed is not None and killed[0] >= 1
        applied = await log.feedback("chatcmpl-40", 1.0)
        assert applied.first and applied.learning_seq == 1
        assert (await log.get("chatcmpl-41")).decision_id == make_record(41).decision_id
        assert [row.requests for row in await log.arm_totals("exp1")] == [3]
    finally:
        await log.close()


async def test_a_replica_frozen_inside_a_feedback_holds_up_the_others_for_seconds_only(
        postgres_url, monkeypatch):
    # Feedback takes one advisory lock shared by every replica. A replica frozen while it
    # holds it (SIGSTOP, a paused VM or container, a host gone without closing its socket)
    # stopped feedback on every other replica for as long as it stayed frozen, and with it
    # their answers: the waiting feedbacks held each pool's connections, so the durable
    # writer could not commit (on three real replicas: no answer on another replica for 8 s,
    # until the frozen one was resumed). Here the frozen replica is a backend whose event
    # loop blocks in its own thread right after it has taken the lock.
    import threading

    from service.store import postgres

    frozen_thread, resume = "frozen-replica", threading.Event()
    real_decision_of = postgres.decision_of

    def decision_of(ident: str, rows: Sequence[Any]) -> str | None:
        if threading.current_thread().name == frozen_thread:
            resume.wait(30)  # the whole replica stops here, inside the transaction
        return real_decision_of(ident, rows)

    monkeypatch.setattr(postgres, "decision_of", decision_of)
    log = await open_log(postgres_url)
    outcome: list[BaseException | None] = []

    def frozen_replica() -> None:
        async def run() -> None:
            other = await open_log(postgres_url)
            try:
                await other.feedback("chatcmpl-50", 1.0)
                outcome.append(None)
            except StoreError as exc:
                outcome.append(exc)
            finally:
                await other.close()
        asyncio.run(run())

    try:
        log.submit(make_record(50))
        log.submit(make_record(51))
        await log.flush()
        thread = threading.Thread(target=frozen_replica, name=frozen_thread)
        thread.start()
        await asyncio.sleep(1.0)  # it holds the lock now
        applied = await asyncio.wait_for(log.feedback("chatcmpl-51", 1.0), 8)
        assert applied.first and applied.learning_seq == 1
        resume.set()
        await asyncio.to_thread(thread.join, 30)
        # The frozen replica's transaction was ended for it; resumed, it tried its feedback
        # again on a new connection, and it was learned once, after the other one.
        assert outcome == [None]
        assert [e.decision_id for e in await log.backend.learning_events(0, 10)] == [
            applied.decision_id, make_record(50).decision_id]
    finally:
        resume.set()
        await log.close()


async def test_a_feedback_whose_connection_dies_mid_transaction_is_tried_again(
        postgres_url, monkeypatch):
    # A database restart under load cut the feedback transactions in flight: 5 of 494
    # feedbacks on three real replicas were 500s although the server was back within 3 s.
    # The transaction either committed or not, so it is tried again once on a new
    # connection: at most the log counts the feedback twice, and it is learned once.
    import psycopg

    from service.store import postgres

    log = await open_log(postgres_url)
    real_decision_of = postgres.decision_of
    cut: list[int] = []

    def decision_of(ident: str, rows: Sequence[Any]) -> str | None:
        if not cut:  # the first transaction loses its connection after taking the lock
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                ).fetchone()
                assert row is not None
                admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                cut.append(row[0])
        return real_decision_of(ident, rows)

    monkeypatch.setattr(postgres, "decision_of", decision_of)
    try:
        log.submit(make_record(60))
        await log.flush()
        applied = await log.feedback("chatcmpl-60", 0.0)
        assert cut and applied.first and applied.learning_seq == 1
        assert len(await log.backend.learning_events(0, 10)) == 1
    finally:
        await log.close()
