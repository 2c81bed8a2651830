"""``RequestLog``: records leave the request path through a bounded queue to one writer task.

``submit`` never waits: it puts the record on an ``asyncio.Queue`` (or, when the queue is full,
counts it as dropped, so a slow database cannot slow requests down). The writer takes what has
queued up, up to ``batch_size`` records, and commits them in one transaction; after the first
record of a batch it lingers ``linger_s`` so that a busy gateway commits a few large batches
instead of many small ones (each commit and each hand-over to the database thread costs CPU
on the request path's interpreter). ``close`` (the
app's lifespan, on graceful shutdown) drains the queue before returning, so every accepted
record reaches the database; ``flush`` waits until everything accepted so far is committed.

A durable gateway (``log_durable``, on by default with PostgreSQL) answers a request (a
stream: sends its ``data: [DONE]``) only once its record is committed: ``submit`` returns a
ticket and ``committed(ticket)`` waits for it (without the linger: records queued while one
batch commits form the next batch, a group commit). A replica killed with SIGKILL then loses
no decision a client has seen.

With a shared database (PostgreSQL, a SQLite file named by ``database_url``, or the default
``DATA_DIR/requests.db`` once another gateway on the box has written it), feedback may reach a
replica before
the replica that served the request has committed its record; ``feedback`` then polls for
``SHARED_RECORD_WAIT_S`` before answering that the id is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Final

from service import metrics
from service.store import ArmRow, Backend, FeedbackApplied, Record, StoreError, UnknownId

log = logging.getLogger(__name__)

_STOP: Final = object()
# How long feedback waits for a record that another replica may not have committed yet
# (seconds): a record is committed at most a linger (0.05 s) and one batch's commit after its
# response, so 2 s covers a slow database; an id unknown after that is a 404.
SHARED_RECORD_WAIT_S = 2.0
_SHARED_POLL_S = 0.1


class RequestLog:
    """The request log of one gateway process.

    Args:
        backend: the database (``SqliteBackend`` or ``PostgresBackend``).
        queue_size: the most records waiting for the writer; more are dropped and counted in
            ``ttc_log_records_total{result="dropped"}``.
        batch_size: the most records committed in one transaction.
        linger_s: how long the writer waits for more records after the first of a batch
            (seconds); ``flush`` and ``close`` wait at most this much longer.
        retry_s: the first pause after a failed write, in seconds; doubled per attempt.
        attempts: how many times one batch is tried before it is given up (and counted as
            ``failed``), so a broken database cannot wedge the writer.
    """

    def __init__(self, backend: Backend, *, queue_size: int = 10_000, batch_size: int = 500,
                 retry_s: float = 0.2, attempts: int = 5, linger_s: float = 0.05):
        self.backend = backend
        self._queue: asyncio.Queue[Record | object] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._hurry = asyncio.Event()  # set by flush() and close(): stop lingering now
        self._retry_s = retry_s
        self._attempts = attempts
        self._accepted = 0  # records put on the queue
        self._done = 0  # records the writer has finished with (committed or given up)
        self._progress = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the database (migrating it) and start the writer.

        Raises:
            StoreError: the database cannot be opened or migrated.
        """
        await self.backend.open()
        self._writer = asyncio.create_task(self._write_forever(), name="ttc-request-log")

    def submit(self, record: Record) -> int:
        """Queue ``record`` for writing; returns its ticket for ``committed`` (1, 2, ...), or
        0 (and counted) when the queue is full or the log is closed. Call it from the event
        loop's thread; it never waits."""
        if self._closed:
            metrics.child(metrics.LOG_RECORDS, "dropped").inc()
            log.warning("request log closed: record %s dropped", record.decision_id)
            return 0
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            metrics.child(metrics.LOG_RECORDS, "dropped").inc()
            return 0
        self._accepted += 1
        return self._accepted

    async def committed(self, ticket: int) -> None:
        """Wait until the record ``submit`` gave ``ticket`` is committed (or given up after
        ``attempts``); returns at once for ticket 0 (a dropped record)."""
        if ticket <= 0 or self._done >= ticket:
            return
        if self._writer is None or self._writer.done():
            return
        self._hurry.set()  # someone is waiting: commit now rather than linger
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= ticket)

    async def flush(self) -> None:
        """Wait until every record accepted before this call is committed (or given up)."""
        target = self._accepted
        if self._writer is None or self._writer.done():
            return
        self._hurry.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def feedback(self, ident: str, score: float, *,
                       key_name: str | None = None) -> FeedbackApplied:
        """Store feedback (``score`` in [0, 1]; 1.0 is a correct answer) on the record with
        this decision id or response id. A record still queued is flushed first. With
        ``key_name`` (a key that is not an admin key), only that key's records and those
        logged without a key count: another key's record is an unknown id.

        Raises:
            UnknownId: no record (that ``key_name`` may see) has this id.
            AmbiguousId: several records logged before the gateway minted its own response
                ids carry this one (``service.store``).
            StoreError: the database failed.
        """
        now = time.time()
        applied = await self.backend.set_feedback(ident, score, now, key_name)
        if applied is None:
            await self.flush()
            applied = await self.backend.set_feedback(ident, score, now, key_name)
        if applied is None and getattr(self.backend, "shared", False):
            deadline = time.monotonic() + SHARED_RECORD_WAIT_S
            while applied is None and time.monotonic() < deadline:
                await asyncio.sleep(_SHARED_POLL_S)
                applied = await self.backend.set_feedback(ident, score, now, key_name)
        if applied is None:
            raise UnknownId(f"no request has the id {ident!r}")
        return applied

    async def get(self, ident: str) -> Record:
        """The record with this decision id (else the one with this response id), flushing
        queued records first.

        Raises:
            UnknownId: no record has this id.
            AmbiguousId: several records carry this response id.
            StoreError: the database failed.
        """
        await self.flush()
        record = await self.backend.get(ident)
        if record is None:
            raise UnknownId(f"no request has the id {ident!r}")
        return record

    async def arm_totals(self, experiment: str) -> list[ArmRow]:
        """Per arm of ``experiment``, its totals (``Backend.arm_totals``), flushing queued
        records first.

        Raises:
            StoreError: the database failed.
        """
        await self.flush()
        return await self.backend.arm_totals(experiment)

    async def close(self) -> None:
        """Stop accepting records, write every queued one, and close the database."""
        self._closed = True
        if self._writer is not None and not self._writer.done():
            self._hurry.set()
            await self._queue.put(_STOP)
            await self._writer
        await self.backend.close()

    async def _write_forever(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[Record] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
                if self._linger_s and self._queue.qsize() < self._batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), self._linger_s)
                self._hurry.clear()
            while not stop and len(batch) < self._batch_size and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                await self._write(batch)
                metrics.LOG_QUEUE.set(self._queue.qsize())
            if stop:
                return

    async def _write(self, batch: list[Record]) -> None:
        pause = self._retry_s
        result = "failed"
        for attempt in range(1, self._attempts + 1):
            try:
                await self.backend.write(batch)
                result = "written"
                break
            except StoreError as exc:
                log.warning("request log: writing %d records failed (attempt %d of %d): %s",
                            len(batch), attempt, self._attempts, exc)
            except Exception:  # never let the writer die: the queue would fill up for good
                log.exception("request log: unexpected error writing %d records", len(batch))
            if attempt < self._attempts:
                await asyncio.sleep(pause)
                pause *= 2
        if result == "failed":
            log.error("request log: %d records given up after %d attempts",
                      len(batch), self._attempts)
        metrics.child(metrics.LOG_RECORDS, result).inc(len(batch))
        async with self._progress:
            self._done += len(batch)
            self._progress.notify_all()


def _sqlite_path(data_dir: Path, database_url: str | None) -> Path | None:
    """The SQLite file of the request log the settings name (``open_request_log``), or None
    when it is not SQLite."""
    if database_url is None:
        return data_dir / "requests.db"
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///")).expanduser()
    return None


def missing_request_log(data_dir: Path, database_url: str | None) -> str | None:
    """What a command that only reads the log (``ab``, ``train --from-log``) says when the
    SQLite file the settings name does not exist yet, else None (it exists, or the log is
    PostgreSQL). Such a command reads the log as empty rather than opening it, which would
    create the file and its directory: a mistyped ``--data-dir`` must leave nothing behind."""
    path = _sqlite_path(data_dir, database_url)
    if path is None or path.is_file():
        return None
    return (f"no request log at {path} yet: read as empty (the gateway writes it there once it "
            "serves with that data directory; check --data-dir, TTC_DATA_DIR or database_url)")


def open_request_log(data_dir: Path, database_url: str | None, *,
                     queue_size: int = 10_000) -> RequestLog:
    """The request log the settings ask for: PostgreSQL when ``database_url`` starts with
    ``postgresql://`` or ``postgres://``, SQLite at ``sqlite:///PATH`` or, by default, at
    ``DATA_DIR/requests.db``. Call ``start()`` on it before use.

    Raises:
        StoreError: ``database_url`` has a scheme other than these.
    """
    path = _sqlite_path(data_dir, database_url)
    if path is not None:
        from service.store.sqlite import SqliteBackend

        # A log named by URL may be shared with other gateways; DATA_DIR's is this one's.
        return RequestLog(SqliteBackend(path, shared=database_url is not None),
                          queue_size=queue_size)
    if database_url is not None and database_url.startswith(("postgresql://", "postgres://")):
        from service.store.postgres import PostgresBackend

        return RequestLog(PostgresBackend(database_url), queue_size=queue_size)
    raise StoreError("database_url must start with postgresql://, postgres:// or sqlite:///")
