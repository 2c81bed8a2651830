"""API keys: the ones ``ttc-router keys`` creates, stored as hashes, and the gateway's view.

A key is ``ttc-`` and 43 URL-safe characters (256 random bits) shown once at creation; only its
SHA-256 is stored. A fast hash is enough because the secret is random, not a password a person
chose: nobody can search 2^256 candidates, so a slow hash (bcrypt, argon2) would only slow every
request down. Keys live in SQLite at ``DATA_DIR/keys.db`` or, when the request log uses
PostgreSQL (``database_url``), in the table ``ttc_api_keys`` of that database, so that every
replica sees the same keys.

The gateway reads the keys through a ``KeyRing``: a snapshot reloaded at most every
``refresh_s`` seconds, and sooner (at most every ``MISS_RELOAD_S``) when a request presents a
key it does not know, so a key created while the gateway runs works from its first use (a
quarter second after its creation at most) and a revoked one stops within ``refresh_s``.

    KeyStoreError      the key database cannot be read or written
    +-- KeyExists      an active key already has this name
    +-- UnknownKey     no active key has this name
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.store.sqlite import create_private

log = logging.getLogger(__name__)

KEY_PREFIX = "ttc-"
# Key names become metric label values and Redis key parts: a short, plain alphabet.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A request with an unknown key reloads the keys, but not more often than this (seconds), so
# a client trying wrong keys cannot turn every request into a database read.
MISS_RELOAD_S = 0.25
# How long a request waits for the keys to be read again (seconds). A read that takes longer
# (new connections to the database hang while open ones work: a stopped postmaster, a failover
# whose address does not answer yet) goes on in the background, and requests are served from
# the keys last read, as when a read fails, rather than each waiting out the connect timeout.
KEY_RELOAD_WAIT_S = 0.5


class KeyStoreError(Exception):
    """The key database cannot be opened, read or written."""


class KeyExists(KeyStoreError):
    """An active key already has this name (revoke it first)."""


class UnknownKey(KeyStoreError):
    """No active key has this name."""


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored: never the secret, only its SHA-256 (hex).

    Limits are None when unlimited: ``rpm`` requests per minute, ``tpm`` completion tokens per
    minute, ``tokens_per_day`` completion tokens per UTC day, ``prompt_tpm`` prompt tokens per
    minute (minutes are any 60 seconds, ``service.limits``). ``admin`` keys may also use the
    admin surfaces (experiments, the learner, a protected ``/metrics``). Times are Unix seconds.
    """

    name: str
    key_hash: str
    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    admin: bool = False
    created_s: float = 0.0
    revoked_s: float | None = None
    prompt_tpm: int | None = None

    @property
    def limits_tokens(self) -> bool:
        """Whether the key has a token limit (so requests must reserve tokens)."""
        return self.tpm is not None or self.tokens_per_day is not None


def new_secret() -> str:
    """A fresh API key: ``ttc-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The SHA-256 (hex) under which a key is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    """``name`` if it is a valid key name.

    Raises:
        ValueError: not 1-64 letters, digits, ``_``, ``.`` or ``-`` starting with a letter or
            digit.
    """
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid key name {name!r}: use 1-64 letters, digits, '_', '.' or "
                         "'-', starting with a letter or digit")
    return name


class KeyStore(Protocol):
    """Where keys are kept. Methods are blocking (the gateway calls them in a thread)."""

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               tokens_per_day: int | None = None, admin: bool = False,
               prompt_tpm: int | None = None) -> str: ...

    def revoke(self, name: str) -> None: ...

    def all(self) -> list[ApiKey]: ...

    def active(self) -> list[ApiKey]: ...


_COLUMNS = "name, key_hash, rpm, tpm, tokens_per_day, admin, created_s, revoked_s, prompt_tpm"


class _SqlKeyStore:
    """The SQL both databases share; subclasses open connections and set the placeholder."""

    placeholder = "%s"
    schema = ""

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _sql(self, statement: str) -> str:
        return statement.replace("%s", self.placeholder)

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               tokens_per_day: int | None = None, admin: bool = False,
               prompt_tpm: int | None = None) -> str:
        """Store a new key named ``name`` and return its secret (shown once, never stored).

        A revoked key's name may be reused; its old secret stays refused.

        Raises:
            ValueError: a bad name, or a limit below 1.
            KeyExists: an active key has this name.
            KeyStoreError: the database failed.
        """
        check_name(name)
        for label, value in (("rpm", rpm), ("tpm", tpm), ("tokens_per_day", tokens_per_day),
                             ("prompt_tpm", prompt_tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1, got {value}")
        secret = new_secret()
        with self._connect() as db:
            row = db.execute(self._sql("SELECT revoked_s FROM ttc_api_keys WHERE name = %s"),
                             (name,)).fetchone()
            if row is not None and row[0] is None:
                raise KeyExists(f"an active key is already named {name!r}; revoke it first")
            if row is not None:
                db.execute(self._sql("DELETE FROM ttc_api_keys WHERE name = %s"), (name,))
            db.execute(self._sql(f"INSERT INTO ttc_api_keys ({_COLUMNS}) "
                                 "VALUES (%s, %s, %s, %s, %s, %s, %s, NULL, %s)"),
                       (name, hash_secret(secret), rpm, tpm, tokens_per_day, bool(admin),
                        time.time(), prompt_tpm))
        return secret

    def revoke(self, name: str) -> None:
        """Revoke the active key named ``name`` (the row stays, marked revoked).

        Raises:
            UnknownKey: no active key has this name.
            KeyStoreError: the database failed.
        """
        with self._connect() as db:
            cursor = db.execute(self._sql(
                "UPDATE ttc_api_keys SET revoked_s = %s WHERE name = %s AND revoked_s IS NULL"),
                (time.time(), name))
            if cursor.rowcount == 0:
                raise UnknownKey(f"no active key is named {name!r}")

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, by name.

        Raises:
            KeyStoreError: the database failed.
        """
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM ttc_api_keys ORDER BY name").fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], r[4], bool(r[5]), float(r[6]),
                       None if r[7] is None else float(r[7]), r[8]) for r in rows]

    def active(self) -> list[ApiKey]:
        """The keys that are not revoked.

        Raises:
            KeyStoreError: the database failed.
        """
        return [key for key in self.all() if key.revoked_s is None]


class SqliteKeyStore(_SqlKeyStore):
    """Keys in a SQLite file (WAL, so ``keys create`` never blocks the gateway's reads).

    Raises ``KeyStoreError`` from every method when the file cannot be used.
    """

    placeholder = "?"

    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            create_private(self.path)
            db = sqlite3.connect(self.path, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open the key database {self.path}: {exc}") from exc
        try:
            with db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA.format(real="REAL"))
                columns = {row[1] for row in db.execute("PRAGMA table_info(ttc_api_keys)")}
                if "prompt_tpm" not in columns:  # a key database from before the column
                    db.execute("ALTER TABLE ttc_api_keys ADD COLUMN prompt_tpm INTEGER")
                yield db
        except sqlite3.Error as exc:
            raise KeyStoreError(f"the key database {self.path} failed: {exc}") from exc
        finally:
            db.close()


class PostgresKeyStore(_SqlKeyStore):
    """Keys in the PostgreSQL database of the request log (``database_url``), shared by every
    replica. Raises ``KeyStoreError`` from every method when the database cannot be used."""

    def __init__(self, url: str):
        self._url = url
        self._schema_ready = False  # the table is made once per store, not at every reload

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        import psycopg

        try:
            with psycopg.connect(self._url, connect_timeout=5) as db:
                if not self._schema_ready:
                    self._ensure_schema(db)
                yield db
        except psycopg.Error as exc:
            # psycopg's messages can carry the connection string; name the table instead.
            raise KeyStoreError(
                f"the key table ttc_api_keys failed: {type(exc).__name__}") from exc

    def _ensure_schema(self, db: Any) -> None:
        # Under an advisory lock: CREATE TABLE IF NOT EXISTS is not safe against a concurrent
        # one (the loser hits a unique violation in pg_type), and replicas starting together
        # on a fresh database, or ``keys create`` beside them, all run it.
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            db.execute(_SCHEMA.format(real="DOUBLE PRECISION"))
            if db.execute("SELECT 1 FROM information_schema.columns WHERE table_name = "
                          "'ttc_api_keys' AND column_name = 'prompt_tpm'").fetchone() is None:
                # A key table from before the column (ALTER only then: it locks the table).
                db.execute("ALTER TABLE ttc_api_keys ADD COLUMN IF NOT EXISTS prompt_tpm BIGINT")
        self._schema_ready = True


# "ttc_keys": the advisory lock key that serialises creating (or upgrading) the key table.
_SCHEMA_LOCK = 0x7474635F6B6579

_SCHEMA = """CREATE TABLE IF NOT EXISTS ttc_api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    rpm INTEGER,
    tpm INTEGER,
    tokens_per_day BIGINT,
    admin BOOLEAN NOT NULL,
    created_s {real} NOT NULL,
    revoked_s {real},
    prompt_tpm BIGINT
)"""


def open_key_store(data_dir: Path, database_url: str | None) -> KeyStore:
    """The key store the settings ask for: PostgreSQL when the request log's ``database_url``
    is a PostgreSQL URL, else SQLite at ``DATA_DIR/keys.db``."""
    if database_url is not None and database_url.startswith(("postgresql://", "postgres://")):
        return PostgresKeyStore(database_url)
    return SqliteKeyStore(data_dir / "keys.db")


class KeyRing:
    """The gateway's snapshot of the active keys.

    Args:
        store: where the keys are kept.
        refresh_s: the snapshot's most age (seconds) before a request reloads it.

    A reload that fails keeps the previous snapshot (and logs a warning), so a database hiccup
    neither opens a closed gateway nor locks every client out; one that takes longer than
    ``KEY_RELOAD_WAIT_S`` finishes in the background while requests use the previous snapshot.
    """

    def __init__(self, store: KeyStore, refresh_s: float = 1.0):
        self._store = store
        self._refresh_s = refresh_s
        self._by_hash: dict[str, ApiKey] = {}
        self._loaded_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None  # the read in progress, one at a time
        self._reading_since = 0.0

    async def reload(self) -> None:
        """Read the active keys now.

        Raises:
            KeyStoreError: the store failed (the previous snapshot is kept).
        """
        keys = await asyncio.to_thread(self._store.active)
        self._by_hash = {key.key_hash: key for key in keys}
        self._loaded_at = time.monotonic()

    async def _fresh(self, max_age_s: float) -> None:
        """Read the keys again when the snapshot is older than ``max_age_s``, waiting for the
        read at most ``KEY_RELOAD_WAIT_S`` from its start (requests that come during a slow
        read share it and do not wait past that)."""
        if time.monotonic() - self._loaded_at <= max_age_s:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_keeping(), name="ttc-keys-reload")
            self._reading_since = time.monotonic()
        left_s = self._reading_since + KEY_RELOAD_WAIT_S - time.monotonic()
        if left_s > 0:  # asyncio.wait leaves the read running for the others at its timeout
            await asyncio.wait({self._reading}, timeout=left_s)

    async def _read_keeping(self) -> None:
        try:
            await self.reload()
        except KeyStoreError as exc:
            self._loaded_at = time.monotonic()  # retry after refresh_s, not every request
            log.warning("could not reload the API keys, keeping the previous ones: %s", exc)
        except Exception:  # a background read: never lose its error silently
            self._loaded_at = time.monotonic()
            log.exception("could not reload the API keys, keeping the previous ones")

    def limited(self) -> list[str]:
        """The names of the active keys (as last loaded) that have a limit, sorted."""
        return sorted(key.name for key in self._by_hash.values()
                      if (key.rpm, key.tpm, key.tokens_per_day, key.prompt_tpm)
                      != (None, None, None, None))

    async def any_keys(self) -> bool:
        """Whether any active key exists (with none, the gateway is open)."""
        await self._fresh(self._refresh_s)
        return bool(self._by_hash)

    async def lookup(self, secret: str) -> ApiKey | None:
        """The active key whose secret is ``secret``, or None."""
        await self._fresh(self._refresh_s)
        digest = hash_secret(secret)
        found = self._by_hash.get(digest)
        if found is None:
            await self._fresh(MISS_RELOAD_S)
            found = self._by_hash.get(digest)
        return found
