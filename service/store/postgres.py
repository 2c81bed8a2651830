"""The request log in PostgreSQL, chosen by ``database_url``: one log for several replicas.

psycopg 3's native asyncio connections, from a small ``psycopg_pool`` pool, so the writer and
feedback updates run concurrently without a thread per query. Migrations run under a
transaction-scoped advisory lock so replicas starting together migrate once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from service.store import (
    COLUMNS,
    INSERT_LEARNING_EVENT,
    INSERT_SNAPSHOT,
    JSON_COLUMNS,
    LATEST_SNAPSHOTS,
    LEARNING_EVENTS,
    OWN_OBJECT,
    PRUNE_SNAPSHOTS,
    ArmRow,
    FeedbackApplied,
    LearningEvent,
    Record,
    Snapshot,
    StoreError,
    decision_of,
    find_ids,
    is_correct,
    records_query,
)
from service.store.migrations import MIGRATIONS, SCHEMA_VERSION_DDL, Migration, pending

_INSERT = (f"INSERT INTO requests ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('%s' for _ in COLUMNS)}) ON CONFLICT (decision_id) DO NOTHING")
_FIND_IDS = find_ids("%(id)s")
_FIND_OWN_IDS = find_ids("%(id)s", "%(key)s")
_OWNED_IDS = ("SELECT object_id FROM proxy_objects WHERE kind = %s AND key_name = %s "
              "AND object_id = ANY(%s)")
_ARM_TOTALS = (
    "SELECT arm, COUNT(*), COALESCE(SUM(completion_tokens), 0), "
    "COALESCE(SUM(completion_tokens::double precision * completion_tokens), 0), "
    "COUNT(*) FILTER (WHERE feedback_count > 0), "
    "COUNT(*) FILTER (WHERE feedback_count > 0 AND feedback_correct) "
    "FROM requests WHERE experiment = %s AND arm IS NOT NULL GROUP BY arm ORDER BY arm")
_MIGRATION_LOCK = 0x7474635F6C6F67  # "ttc_log": the advisory lock key that serialises migrations
# "ttc_learn": serialises feedback, so each learning event's MAX + 1 is gapless and commits in
# sequence order (a reader never sees seq n + 1 before n).
_FEEDBACK_LOCK = 0x7474635F6C6561
# Every replica waits for that lock, so its holder must not keep it for long: a replica frozen
# inside the transaction (SIGSTOP, a paused VM, a host gone without closing its socket) has
# its session ended by the server after ``FEEDBACK_IDLE_S`` idle in the transaction (the lock
# goes with it; a healthy one runs the three statements back to back), and a waiter gives up
# after ``FEEDBACK_LOCK_WAIT_S`` rather than hold its pool connection, which the durable
# writer needs, indefinitely. Set for the feedback transaction only (``set_config(..., true)``).
FEEDBACK_IDLE_S = 2
FEEDBACK_LOCK_WAIT_S = 10
# A feedback transaction cut by these is tried again (``set_feedback``); a lock wait past
# ``FEEDBACK_LOCK_WAIT_S`` (LockNotAvailable, also an OperationalError) is not.
_CONNECTION_LOST = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)
_FEEDBACK_LIMITS = (
    "SELECT set_config('idle_in_transaction_session_timeout', %s, true), "
    "set_config('lock_timeout', %s, true)")


class PostgresBackend:
    """The request log in the PostgreSQL database at ``url`` (``postgresql://...``), which
    several replicas share (``shared``: a record may be committed by another process).

    Args:
        url: a libpq connection URL.
        migrations: the schema steps (tests pass their own to exercise upgrades).
        max_connections: the pool's size.
        connect_timeout_s: how long opening the pool may take, in seconds.
    """

    shared = True

    def __init__(self, url: str, *, migrations: Sequence[Migration] = MIGRATIONS,
                 max_connections: int = 4, connect_timeout_s: float = 10.0):
        self._migrations = migrations
        self._connect_timeout_s = connect_timeout_s
        # ``check``: a connection is tried (one empty query) as it leaves the pool. A database
        # restart or failover closes every pooled connection; unchecked, feedback, reports and
        # look-ups took a dead one and failed at once (500), while the writer retried. Checked,
        # a dead one is replaced, and the caller waits for the server as answers do.
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=max_connections,
                                         open=False, kwargs={"autocommit": True},
                                         check=AsyncConnectionPool.check_connection)

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout_s)
        except Exception as exc:  # PoolTimeout, OperationalError, bad URLs alike
            raise StoreError(f"cannot connect to the request log database: {exc}") from exc
        try:
            async with self._pool.connection() as db, db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await db.execute(SCHEMA_VERSION_DDL)
                current = await _version(db)
                for step in pending(current, self._migrations):
                    for statement in step.statements("postgres"):
                        await db.execute(statement)  # type: ignore[arg-type]
                    await db.execute("INSERT INTO schema_version VALUES (%s, %s, %s)",
                                     (step.version, step.description, time.time()))
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate the request log database: {exc}") from exc

    async def schema_version(self) -> int:
        try:
            async with self._pool.connection() as db:
                return await _version(db)
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc

    async def write(self, records: Sequence[Record]) -> None:
        rows = [_row(record) for record in records]
        try:
            async with self._pool.connection() as db, db.transaction(), db.cursor() as cur:
                await cur.executemany(_INSERT, rows)
        except psycopg.Error as exc:
            raise StoreError(f"cannot write the request log: {exc}") from exc

    async def set_feedback(self, ident: str, score: float, time_s: float,
                           key_name: str | None = None) -> FeedbackApplied | None:
        for attempt in (1, 2):
            try:
                return await self._set_feedback_once(ident, score, time_s, key_name)
            except _CONNECTION_LOST as exc:
                # Cut mid-transaction (a restart, a failover, or this replica's own session
                # ended after it froze): it committed or it did not, so it is tried once more
                # on a new connection; a decision is learned once either way (its event is
                # unique), and at most the log counts the feedback twice.
                if attempt == 2 or isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise StoreError(f"cannot record feedback: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"cannot record feedback: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _set_feedback_once(self, ident: str, score: float, time_s: float,
                                 key_name: str | None) -> FeedbackApplied | None:
        sql = ("UPDATE requests SET feedback_correct = %(correct)s, feedback_score = %(score)s,"
               " feedback_count = feedback_count + 1, feedback_time_s = %(time)s "
               "WHERE decision_id = %(target)s "
               "RETURNING decision_id, strategy, policy, arm, feedback_count, experiment, "
               "completion_tokens")
        args = {"correct": is_correct(score), "score": score, "time": time_s}
        row = event = None
        async with self._pool.connection() as db, db.transaction():
            await db.execute(_FEEDBACK_LIMITS, (f"{FEEDBACK_IDLE_S}s", f"{FEEDBACK_LOCK_WAIT_S}s"))
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (_FEEDBACK_LOCK,))
            found = await (await db.execute(
                _FIND_IDS if key_name is None else _FIND_OWN_IDS,
                {"id": ident, "key": key_name})).fetchall()
            target = decision_of(ident, found)  # AmbiguousId leaves the transaction
            if target is not None:
                row = await (await db.execute(
                    sql, {**args, "target": target})).fetchone()  # type: ignore[arg-type]
            if row is not None:
                event = await (await db.execute(
                    INSERT_LEARNING_EVENT.format(p="%s"),  # type: ignore[arg-type]
                    (row[0], score, time_s))).fetchone()
        if row is None:
            return None
        return FeedbackApplied(row[0], row[1], row[2], row[3], first=row[4] == 1,
                               experiment=row[5], completion_tokens=row[6],
                               learning_seq=event[0] if event is not None else None)

    async def get(self, ident: str) -> Record | None:
        sql = f"SELECT {', '.join(COLUMNS)} FROM requests WHERE decision_id = %s"
        row = None
        try:
            async with self._pool.connection() as db:
                found = await (await db.execute(_FIND_IDS, {"id": ident})).fetchall()
                target = decision_of(ident, found)
                if target is not None:
                    row = await (await db.execute(sql, (target,))).fetchone()  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return _record(row) if row is not None else None

    async def records(self, *, experiment: str | None = None, with_feedback: bool = False,
                      since_s: float | None = None) -> list[Record]:
        sql, args = records_query("%s", experiment=experiment, with_feedback=with_feedback,
                                  since_s=since_s)
        try:
            async with self._pool.connection() as db:
                rows = await (await db.execute(sql, args)).fetchall()  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return [_record(row) for row in rows]

    async def arm_totals(self, experiment: str) -> list[ArmRow]:
        try:
            async with self._pool.connection() as db:
                rows = await (await db.execute(_ARM_TOTALS, (experiment,))).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return [ArmRow(r[0], int(r[1]), float(r[2]), float(r[3]), int(r[4]), int(r[5]))
                for r in rows]

    async def learning_events(self, after: int, limit: int) -> list[LearningEvent]:
        try:
            async with self._pool.connection() as db:
                rows = await (await db.execute(LEARNING_EVENTS.format(p="%s"),  # type: ignore[arg-type]
                                               (after, limit))).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return [LearningEvent(int(r[0]), r[1], float(r[2]), r[3], r[4], int(r[5])) for r in rows]

    async def latest_snapshots(self) -> list[Snapshot]:
        try:
            async with self._pool.connection() as db:
                rows = await (await db.execute(LATEST_SNAPSHOTS)).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return [Snapshot(r[0], int(r[1]), r[2]) for r in rows]

    async def put_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        now = time.time()
        try:
            async with self._pool.connection() as db, db.transaction():
                for snap in snapshots:
                    await db.execute(INSERT_SNAPSHOT.format(p="%s"),  # type: ignore[arg-type]
                                     (snap.policy, snap.position, snap.state, now))
                    await db.execute(PRUNE_SNAPSHOTS.format(p="%s"),  # type: ignore[arg-type]
                                     (snap.policy, snap.position))
        except psycopg.Error as exc:
            raise StoreError(f"cannot store a policy snapshot: {exc}") from exc

    async def own_objects(self, kind: str, ids: Sequence[str], key_name: str,
                          time_s: float) -> None:
        try:
            async with self._pool.connection() as db, db.transaction(), db.cursor() as cur:
                await cur.executemany(OWN_OBJECT.format(p="%s"),  # type: ignore[arg-type]
                                      [(kind, ident, key_name, time_s) for ident in ids])
        except psycopg.Error as exc:
            raise StoreError(f"cannot record the owner of {kind} objects: {exc}") from exc

    async def owned_ids(self, kind: str, key_name: str, ids: Sequence[str]) -> set[str]:
        try:
            async with self._pool.connection() as db:
                rows = await (await db.execute(_OWNED_IDS, (kind, key_name, list(ids)))
                              ).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"request log: {exc}") from exc
        return {row[0] for row in rows}

    async def close(self) -> None:
        await self._pool.close()


async def _version(db: psycopg.AsyncConnection[Any]) -> int:
    row = await (await db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                 ).fetchone()
    return int(row[0]) if row else 0


def _row(record: Record) -> tuple[Any, ...]:
    return tuple(Jsonb(value) if name in JSON_COLUMNS and value is not None else value
                 for name in COLUMNS for value in (getattr(record, name),))


def _record(row: Sequence[Any]) -> Record:
    return Record(**dict(zip(COLUMNS, row, strict=True)))
