"""The request log's schema, as ordered migrations, one SQL script per dialect.

A database records the versions applied in ``schema_version``. Opening a log applies every
newer migration, each in its own transaction together with its ``schema_version`` row, under a
lock (``BEGIN IMMEDIATE`` in SQLite, an advisory lock in PostgreSQL) so that several gateways
starting at once migrate once. Never edit a released migration: append a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.store import StoreError

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_s DOUBLE PRECISION"
    " NOT NULL)")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``version`` (1, 2, ...), what it does, and its SQL for each
    dialect (statements separated by ``;``)."""

    version: int
    description: str
    sqlite: str
    postgres: str

    def statements(self, dialect: str) -> list[str]:
        """The SQL statements for ``dialect`` ("sqlite" or "postgres")."""
        script = self.sqlite if dialect == "sqlite" else self.postgres
        return [part.strip() for part in script.split(";") if part.strip()]


_REQUESTS_COLUMNS = """
    decision_id TEXT PRIMARY KEY,
    response_id TEXT,
    time_s DOUBLE PRECISION NOT NULL,
    endpoint TEXT NOT NULL,
    key_name TEXT,
    model TEXT NOT NULL,
    strategy TEXT NOT NULL,
    policy TEXT,
    arm TEXT,
    experiment TEXT,
    status TEXT NOT NULL,
    budget_tokens INTEGER,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    estimated BOOLEAN NOT NULL,
    upstream_calls INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    search_calls INTEGER NOT NULL,
    duration_s DOUBLE PRECISION NOT NULL,
    wait_s DOUBLE PRECISION NOT NULL,
    stream BOOLEAN NOT NULL,
    scores {json},
    plan {json},
    votes {json},
    prompt_text TEXT,
    answer_text TEXT,
    feedback_correct BOOLEAN,
    feedback_score DOUBLE PRECISION,
    feedback_count INTEGER NOT NULL DEFAULT 0,
    feedback_time_s DOUBLE PRECISION
"""

_REQUESTS_INDEXES = """;
CREATE INDEX IF NOT EXISTS requests_response_id ON requests (response_id, time_s);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time_s);
CREATE INDEX IF NOT EXISTS requests_experiment ON requests (experiment, arm)
"""

# ``feedback_events.seq`` is 1, 2, 3, ... with no gap (each is MAX + 1, assigned under the
# feedback lock, see ``service.learning``); one row per decision (its first feedback).
_LEARNING_TABLES = """
CREATE TABLE feedback_events (
    seq BIGINT PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    score {real} NOT NULL,
    time_s {real} NOT NULL
);
CREATE TABLE policy_snapshots (
    policy TEXT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    time_s {real} NOT NULL,
    PRIMARY KEY (policy, position)
)
"""

# Objects made through the forwarded endpoints (``/v1/files``, ``/v1/responses``, ...) and the
# key that made each (``service.ownership``): ``kind`` is the path's collection ("files").
_OBJECTS_TABLE = """
CREATE TABLE proxy_objects (
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    time_s {real} NOT NULL,
    PRIMARY KEY (kind, object_id)
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "the requests table: one row per client request, with its feedback",
        sqlite="CREATE TABLE requests (" + _REQUESTS_COLUMNS.format(json="TEXT") + ")"
               + _REQUESTS_INDEXES,
        postgres="CREATE TABLE requests (" + _REQUESTS_COLUMNS.format(json="JSONB") + ")"
                 + _REQUESTS_INDEXES,
    ),
    Migration(
        2, "learning events: each decision's first feedback in one gapless sequence, and "
           "checkpoints of the learned policies' state at positions of that sequence",
        sqlite=_LEARNING_TABLES.format(real="REAL"),
        postgres=_LEARNING_TABLES.format(real="DOUBLE PRECISION"),
    ),
    Migration(
        3, "the objects made through forwarded endpoints, each with the key that made it",
        sqlite=_OBJECTS_TABLE.format(real="REAL"),
        postgres=_OBJECTS_TABLE.format(real="DOUBLE PRECISION"),
    ),
)


def pending(current: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations to apply to a database at version ``current``, in order.

    Raises:
        StoreError: the versions are not 1, 2, ... in order, or the database is newer than
            every migration known here (a newer gateway wrote it).
    """
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"migration versions must be 1..N in order, got {versions}")
    if current > len(migrations):
        raise StoreError(f"the request log's schema is at version {current}, newer than this "
                         f"gateway knows ({len(migrations)}); upgrade the gateway")
    return list(migrations[current:])
