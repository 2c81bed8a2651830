"""The request log in SQLite (WAL mode): the default, one file under the data directory.

The standard library's ``sqlite3`` runs on one dedicated thread, so the connection never
changes threads and the event loop never blocks on the disk. WAL with ``synchronous=NORMAL``
keeps every committed transaction across a crash of the process (only a power loss can undo
the last ones), and lets CLI commands read while the gateway writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from service.store import (
    COLUMNS,
    INSERT_LEARNING_EVENT,
    INSERT_SNAPSHOT,
    JSON_COLUMNS,
    LATEST_SNAPSHOTS,
    LEARNING_EVENTS,
    OWN_OBJECT,
    PRUNE_SNAPSHOTS,
    AmbiguousId,
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

T = TypeVar("T")

_ROW_PLACEHOLDERS = f"({', '.join('?' for _ in COLUMNS)})"
# Rows per INSERT statement, under SQLite's limit of 32,766 bound variables (3.32 and later).
_ROWS_PER_INSERT = 32_766 // len(COLUMNS)
_FIND_IDS = find_ids(":id")
_FIND_OWN_IDS = find_ids(":id", ":key")
# The ids come as one JSON array, so that a list of any length is one bound parameter.
_OWNED_IDS = ("SELECT object_id FROM proxy_objects WHERE kind = ? AND key_name = ? "
              "AND object_id IN (SELECT value FROM json_each(?))")


_ARM_TOTALS = (
    "SELECT arm, COUNT(*), COALESCE(SUM(completion_tokens), 0), "
    "COALESCE(SUM(CAST(completion_tokens AS REAL) * completion_tokens), 0), "
    "SUM(feedback_count > 0), SUM(feedback_count > 0 AND feedback_correct) "
    "FROM requests WHERE experiment = ? AND arm IS NOT NULL GROUP BY arm ORDER BY arm")


def create_private(path: Path) -> None:
    """Make the database file ``path`` (and its folder, the data directory) readable by this
    user only, when they do not exist yet: the request log keeps prompts and answers, the key
    store every tenant's name and limits, and under the usual umask (022) both were readable
    by every local user. SQLite gives the ``-wal`` and ``-shm`` files the database file's
    mode. An existing file or folder keeps its mode: the operator may have chosen it.

    Raises:
        OSError: the folder or the file cannot be made (or the file opened).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))


def enable_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """Put ``db``'s file in write-ahead-log mode, retrying for up to ``timeout_s`` seconds.

    The switch needs the file's exclusive lock, and while another connection makes the same
    switch SQLite can answer "database is locked" at once, without waiting out the busy
    timeout: 6 of 200 trials of six connections switching a fresh file together failed so
    (gateways on one file starting together; ``tests/test_store.py``).

    Raises:
        sqlite3.OperationalError: still locked after ``timeout_s``, or another error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


class SqliteBackend:
    """The request log in the SQLite file ``path`` (created with its directory).

    Args:
        path: the database file.
        migrations: the schema steps (tests pass their own to exercise upgrades).
        busy_timeout_s: how long a write waits for another process's lock, in seconds.
        shared: other gateways write the same file (a ``sqlite:///`` ``database_url``).
            Without it the file still counts as shared once another connection has
            committed to it (``shared``).
    """

    def __init__(self, path: Path, *, migrations: Sequence[Migration] = MIGRATIONS,
                 busy_timeout_s: float = 5.0, shared: bool = False):
        self.path = path
        self._declared_shared = shared
        self._others_write = False  # another connection has committed since open
        self._data_version = 0  # PRAGMA data_version at open
        self._migrations = migrations
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttc-sqlite")
        self._db: sqlite3.Connection | None = None

    @property
    def shared(self) -> bool:
        """Whether other gateways write this file, so a record may be committed by another
        process: declared (``sqlite:///`` ``database_url``), or seen. Several gateways on one
        box share ``DATA_DIR/requests.db`` without saying so; ``PRAGMA data_version`` changes
        only when another connection commits, so once it has, this file is shared."""
        return self._declared_shared or self._others_write

    def _note_other_writers(self, db: sqlite3.Connection) -> None:
        if not self.shared:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            self._others_write = version != self._data_version

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise StoreError("the request log is not open")
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                raise StoreError(f"request log ({self.path}): {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            try:
                create_private(self.path)
                db = sqlite3.connect(self.path, isolation_level=None,
                                     timeout=self._busy_timeout_s)
                enable_wal(db, self._busy_timeout_s)
                db.execute("PRAGMA synchronous=NORMAL")
                self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the request log {self.path}: {exc}") from exc
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        await self._run(self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute(SCHEMA_VERSION_DDL)
        db.execute("BEGIN IMMEDIATE")  # one migrating process at a time
        try:
            for step in pending(_version(db), self._migrations):
                for statement in step.statements("sqlite"):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                           (step.version, step.description, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def schema_version(self) -> int:
        return await self._run(_version)

    async def write(self, records: Sequence[Record]) -> None:
        rows = [_row(record) for record in records]

        # One multi-row INSERT per chunk, not executemany: executemany takes the GIL back
        # for every row, and each hand-over with the event loop's thread cost the gateway
        # about 100 microseconds of CPU per request under load (bench/gateway_overhead.py).
        def insert(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start:start + _ROWS_PER_INSERT]
                db.execute(f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) VALUES "
                           + ", ".join([_ROW_PLACEHOLDERS] * len(chunk)),
                           [value for row in chunk for value in row])
            db.execute("COMMIT")

        await self._run(insert)

    async def set_feedback(self, ident: str, score: float, time_s: float,
                           key_name: str | None = None) -> FeedbackApplied | None:
        find = _FIND_IDS if key_name is None else _FIND_OWN_IDS

        def update(db: sqlite3.Connection) -> FeedbackApplied | None:
            # BEGIN IMMEDIATE takes the database's write lock first: the learning event's
            # MAX + 1 is then gapless across every process sharing the file.
            db.execute("BEGIN IMMEDIATE")
            try:
                target = decision_of(ident, db.execute(
                    find, {"id": ident, "key": key_name}).fetchall())
            except AmbiguousId:
                db.execute("COMMIT")
                raise
            row = None if target is None else db.execute(
                "UPDATE requests SET feedback_correct = ?, feedback_score = ?, "
                "feedback_count = feedback_count + 1, feedback_time_s = ? "
                "WHERE decision_id = ? "
                "RETURNING decision_id, strategy, policy, arm, feedback_count, experiment, "
                "completion_tokens",
                (is_correct(score), score, time_s, target)).fetchone()
            if row is None:
                db.execute("COMMIT")
                self._note_other_writers(db)  # then the caller waits for their commit
                return None
            event = db.execute(INSERT_LEARNING_EVENT.format(p="?"),
                               (row[0], score, time_s)).fetchone()
            db.execute("COMMIT")
            return FeedbackApplied(row[0], row[1], row[2], row[3], first=row[4] == 1,
                                   experiment=row[5], completion_tokens=row[6],
                                   learning_seq=event[0] if event is not None else None)

        return await self._run(update)

    async def get(self, ident: str) -> Record | None:
        def find(db: sqlite3.Connection) -> Record | None:
            target = decision_of(ident, db.execute(_FIND_IDS, {"id": ident}).fetchall())
            if target is None:
                return None
            row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM requests WHERE decision_id = ?",
                             (target,)).fetchone()
            return _record(row) if row is not None else None

        return await self._run(find)

    async def records(self, *, experiment: str | None = None, with_feedback: bool = False,
                      since_s: float | None = None) -> list[Record]:
        sql, args = records_query("?", experiment=experiment, with_feedback=with_feedback,
                                  since_s=since_s)
        return await self._run(lambda db: [_record(r) for r in db.execute(sql, args)])

    async def arm_totals(self, experiment: str) -> list[ArmRow]:
        return await self._run(lambda db: [ArmRow(*r) for r in db.execute(_ARM_TOTALS,
                                                                           (experiment,))])

    async def learning_events(self, after: int, limit: int) -> list[LearningEvent]:
        def read(db: sqlite3.Connection) -> list[LearningEvent]:
            rows = db.execute(LEARNING_EVENTS.format(p="?"), (after, limit)).fetchall()
            return [LearningEvent(int(r[0]), r[1], float(r[2]),
                                  json.loads(r[3]) if r[3] is not None else None,
                                  json.loads(r[4]) if r[4] is not None else None, int(r[5]))
                    for r in rows]

        return await self._run(read)

    async def latest_snapshots(self) -> list[Snapshot]:
        return await self._run(lambda db: [Snapshot(r[0], int(r[1]), r[2])
                                           for r in db.execute(LATEST_SNAPSHOTS)])

    async def put_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        now = time.time()

        def put(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            for snap in snapshots:
                db.execute(INSERT_SNAPSHOT.format(p="?"),
                           (snap.policy, snap.position, snap.state, now))
                db.execute(PRUNE_SNAPSHOTS.format(p="?"), (snap.policy, snap.position))
            db.execute("COMMIT")

        await self._run(put)

    async def own_objects(self, kind: str, ids: Sequence[str], key_name: str,
                          time_s: float) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            for ident in ids:
                db.execute(OWN_OBJECT.format(p="?"), (kind, ident, key_name, time_s))
            db.execute("COMMIT")

        await self._run(insert)

    async def owned_ids(self, kind: str, key_name: str, ids: Sequence[str]) -> set[str]:
        args = (kind, key_name, orjson.dumps(list(ids)).decode())
        return await self._run(lambda db: {r[0] for r in db.execute(_OWNED_IDS, args)})

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def _version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def _row(record: Record) -> tuple[Any, ...]:
    values = []
    for name in COLUMNS:
        value = getattr(record, name)
        if name in JSON_COLUMNS and value is not None:
            value = orjson.dumps(value).decode()
        values.append(value)
    return tuple(values)


_BOOL_COLUMNS = frozenset({"estimated", "stream", "feedback_correct"})


def _record(row: Sequence[Any]) -> Record:
    values: dict[str, Any] = {}
    for name, value in zip(COLUMNS, row, strict=True):
        if value is not None and name in JSON_COLUMNS:
            value = json.loads(value)
        elif value is not None and name in _BOOL_COLUMNS:
            value = bool(value)
        values[name] = value
    return Record(**values)
