"""The request log: one durable row per client request, and the feedback that lands on it.

``RequestLog`` (``service.store.log``) takes ``Record`` values off the request path through a
bounded queue and a background writer; the rows live in SQLite (WAL, the default, under the
data directory) or PostgreSQL (``database_url``, for several replicas). The schema is versioned
by ordered migrations (``service.store.migrations``).

    StoreError            the database cannot be opened, migrated or written
    +-- UnknownId         feedback or a look-up named an id that no record has
    +-- AmbiguousId       ... a response id that several records carry

A record is found by its decision id, else by its response id when exactly one record carries
it. Since the gateway mints its own response ids (``service.protocol.new_response_id``) every
new record's is unique; only records logged before then hold a backend's id, which backends
repeat (Ollama draws from 999 values). Feedback by such a shared id is refused rather than
given to the latest record: a guess would teach the learner another decision's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence


class StoreError(Exception):
    """The request log's database cannot be opened, migrated, read or written."""


class UnknownId(StoreError):
    """No record has this decision id or response id."""


class AmbiguousId(StoreError):
    """Several records carry this response id (records logged before the gateway minted its
    own ids), and none has it as decision id: which request it names is unknown."""

    def __init__(self, ident: str):
        super().__init__(f"several requests logged before this gateway minted its own response "
                         f"ids share the response id {ident!r}; send the decision id "
                         "(router.decision_id, header x-ttc-decision-id) instead")
        self.ident = ident


@dataclass(frozen=True)
class Record:
    """One row of the request log: what one client request did and cost.

    Times are seconds (``time_s`` a Unix timestamp), tokens are upstream tokens summed over
    every call. ``prompt_text`` / ``answer_text`` are None unless the operator opted in
    (``log_text``). ``feedback_correct`` / ``feedback_score`` hold the last feedback received
    (a ``correct`` flag is stored as score 1.0 or 0.0; a score counts as correct from 0.5).
    """

    decision_id: str
    response_id: str | None
    time_s: float
    endpoint: str
    key_name: str | None
    model: str
    strategy: str
    policy: str | None
    arm: str | None
    experiment: str | None
    status: str
    budget_tokens: int | None
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    upstream_calls: int
    samples: int
    search_calls: int
    duration_s: float
    wait_s: float
    stream: bool
    scores: dict[str, float] | None = None
    plan: dict[str, Any] | None = None
    votes: dict[str, int] | None = None
    prompt_text: str | None = None
    answer_text: str | None = None
    feedback_correct: bool | None = None
    feedback_score: float | None = None
    feedback_count: int = 0


@dataclass(frozen=True)
class FeedbackApplied:
    """What a feedback update touched: the record's labels, and whether it was the first
    feedback for that record (only the first one is counted in ``ttc_feedback_total``)."""

    decision_id: str
    strategy: str
    policy: str | None
    arm: str | None
    first: bool
    experiment: str | None = None
    completion_tokens: int = 0
    learning_seq: int | None = None  # the learning event this feedback made (first only)


@dataclass(frozen=True)
class LearningEvent:
    """One decision's first feedback (``seq`` in the gapless learning sequence, ``score`` in
    [0, 1]) with what the request log kept of the decision: its classifier ``scores``, its
    ``plan`` (as logged, ``vars(Plan)``) and the completion tokens it really spent."""

    seq: int
    decision_id: str
    score: float
    scores: dict[str, Any] | None
    plan: dict[str, Any] | None
    completion_tokens: int


@dataclass(frozen=True)
class Snapshot:
    """A learning policy's ``state()`` as JSON text, after the learning events up to and
    including ``position`` (0: before any)."""

    policy: str
    position: int
    state: str


@dataclass(frozen=True)
class ArmRow:
    """One arm's totals in the request log (``Backend.arm_totals``): requests, completion
    tokens summed and summed squared over them, and of them those with feedback and those
    whose feedback counts as correct."""

    arm: str
    requests: int
    tokens_sum: float
    tokens_sumsq: float
    feedback: int
    correct: int


# The row's columns, in the order both backends write them.
COLUMNS: tuple[str, ...] = tuple(name for name in Record.__dataclass_fields__)
JSON_COLUMNS = frozenset({"scores", "plan", "votes"})


class Backend(Protocol):
    """A database behind the request log. Every method raises ``StoreError`` on database
    failure."""

    async def open(self) -> None:
        """Connect and bring the schema to the latest version."""

    async def write(self, records: Sequence[Record]) -> None:
        """Insert ``records`` in one transaction (a decision id already present is kept)."""

    async def set_feedback(self, ident: str, score: float, time_s: float,
                           key_name: str | None = None) -> FeedbackApplied | None:
        """Store feedback on the record with this decision id, else the one record with this
        response id; None when neither exists. With ``key_name``, records logged under another
        key name count as absent (``find_ids``); None: any record.

        Raises:
            AmbiguousId: no decision id matches and several records carry the response id.
        """

    async def get(self, ident: str) -> Record | None:
        """The record with this decision id, else the one with this response id (None when
        neither exists).

        Raises:
            AmbiguousId: as ``set_feedback``.
        """

    async def records(self, *, experiment: str | None = None, with_feedback: bool = False,
                      since_s: float | None = None) -> list[Record]:
        """Every record, oldest first, optionally of one experiment, with feedback only, or
        finished at or after ``since_s`` (Unix seconds)."""

    async def arm_totals(self, experiment: str) -> list[ArmRow]:
        """Per arm of ``experiment``, its totals (arms in name order)."""

    async def schema_version(self) -> int:
        """The schema version the database is at."""

    async def learning_events(self, after: int, limit: int) -> list[LearningEvent]:
        """The learning events with ``seq > after``, in ``seq`` order, at most ``limit``."""

    async def latest_snapshots(self) -> list[Snapshot]:
        """Each policy's snapshot at its highest position."""

    async def put_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        """Store ``snapshots`` in one transaction; a (policy, position) already stored is kept
        (replicas write identical checkpoints), and each policy's older snapshots go."""

    async def own_objects(self, kind: str, ids: Sequence[str], key_name: str,
                          time_s: float) -> None:
        """Record that the key ``key_name`` owns the objects ``ids`` of ``kind`` (a forwarded
        path's collection, ``service.ownership``), in one transaction. An id already recorded
        passes to this key: a backend that hands out an id again has replaced its object."""

    async def owned_ids(self, kind: str, key_name: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` (objects of ``kind``) that ``key_name`` owns."""

    async def close(self) -> None:
        """Release the connection(s)."""


def records_query(placeholder: str, *, experiment: str | None, with_feedback: bool,
                  since_s: float | None) -> tuple[str, list[Any]]:
    """The SELECT of ``Backend.records`` and its arguments, for a dialect whose parameter
    placeholder is ``placeholder`` (``?`` in SQLite, ``%s`` in PostgreSQL)."""
    where = ["1 = 1"]
    args: list[Any] = []
    if experiment is not None:
        where.append(f"experiment = {placeholder}")
        args.append(experiment)
    if with_feedback:
        where.append("feedback_count > 0")
    if since_s is not None:
        where.append(f"time_s >= {placeholder}")
        args.append(since_s)
    return (f"SELECT {', '.join(COLUMNS)} FROM requests WHERE {' AND '.join(where)} "
            "ORDER BY time_s"), args


# The event of a decision's first feedback: the next number of the sequence, or nothing
# when the decision has one already. The caller holds the feedback lock (SQLite's write lock,
# PostgreSQL's advisory lock), so MAX + 1 is gapless and commit order is sequence order.
# (``WHERE 1 = 1`` lets SQLite parse the upsert after a SELECT.)
INSERT_LEARNING_EVENT = (
    "INSERT INTO feedback_events (seq, decision_id, score, time_s) "
    "SELECT COALESCE(MAX(seq), 0) + 1, {p}, {p}, {p} FROM feedback_events WHERE 1 = 1 "
    "ON CONFLICT (decision_id) DO NOTHING RETURNING seq")
LEARNING_EVENTS = (
    "SELECT e.seq, e.decision_id, e.score, r.scores, r.plan, r.completion_tokens "
    "FROM feedback_events e JOIN requests r ON r.decision_id = e.decision_id "
    "WHERE e.seq > {p} ORDER BY e.seq LIMIT {p}")
LATEST_SNAPSHOTS = (
    "SELECT policy, position, state FROM policy_snapshots s WHERE position = "
    "(SELECT MAX(position) FROM policy_snapshots WHERE policy = s.policy) ORDER BY policy")
INSERT_SNAPSHOT = (
    "INSERT INTO policy_snapshots (policy, position, state, time_s) VALUES ({p}, {p}, {p}, {p}) "
    "ON CONFLICT (policy, position) DO NOTHING")
PRUNE_SNAPSHOTS = "DELETE FROM policy_snapshots WHERE policy = {p} AND position < {p}"


# ``Backend.own_objects``: the latest key to be handed an id owns it.
OWN_OBJECT = ("INSERT INTO proxy_objects (kind, object_id, key_name, time_s) "
              "VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (kind, object_id) "
              "DO UPDATE SET key_name = excluded.key_name, time_s = excluded.time_s")


# The records ``ident`` may name: by decision id first, else by response id; two rows are
# read so that a response id several records carry is seen (``AmbiguousId``). A UNION, not
# an OR, so that each half uses its index (the primary key, ``requests_response_id``).
FIND_IDS = ("SELECT decision_id, 0 AS by_response FROM requests WHERE decision_id = {id}{own} "
            "UNION ALL SELECT decision_id, 1 FROM requests WHERE response_id = {id}{own} "
            "ORDER BY by_response LIMIT 2")


def find_ids(id_param: str, key_param: str | None = None) -> str:
    """``FIND_IDS`` in a dialect's named parameters (``:id`` in SQLite, ``%(id)s`` in
    PostgreSQL). With ``key_param``, only the records logged under that key name or under none
    are found: another key's record is then exactly as absent as an unknown id (no 409 for a
    response id it shares, the same wait for a replica's commit), so ids cannot be probed."""
    own = "" if key_param is None else f" AND (key_name IS NULL OR key_name = {key_param})"
    return FIND_IDS.format(id=id_param, own=own)


def decision_of(ident: str, rows: Sequence[Sequence[Any]]) -> str | None:
    """The decision id that ``ident`` names, from the rows ``FIND_IDS`` read.

    Raises:
        AmbiguousId: no decision id matched and several records carry the response id.
    """
    if not rows:
        return None
    if rows[0][1] == 0 or len(rows) == 1:
        return str(rows[0][0])
    raise AmbiguousId(ident)


def is_correct(score: float) -> bool:
    """Whether a feedback score counts as a correct answer (from 0.5 up)."""
    return score >= 0.5
