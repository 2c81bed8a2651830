"""One learner for every replica: the learned policies' state as a pure function of the feedback
in the request log (event sourcing), so replicas that read the same log hold the same state.

**Events.** A decision's *first* feedback is a learning event (``feedback_events``): its
score, joined at read time with what the request log kept of the decision (the classifier's
scores, the plan, the completion tokens really spent). Events are numbered 1, 2, 3, ... with no
gap: each takes MAX + 1 under the feedback lock (SQLite's write lock, a PostgreSQL advisory
lock) in the same transaction as the feedback, so they commit in sequence order and a reader
never sees event n + 1 before event n. Later feedback on the same decision updates the logged
outcome (reports and ``train --from-log`` read the last one) but is not learned again: the
learner counts each decision once, however often its feedback is posted.

**State.** For each learning policy (one whose class overrides ``Policy.update``):

    S(0) = the first snapshot written to the database (by the first replica to start on it:
           its policy as loaded, from DATA_DIR/models or the shipped artifact)
    S(n) = S(n - 1).update(event n)           events apply in sequence order
    at every multiple c of ``checkpoint_every``:
    S(c) = from_state(json(state(S(c))))      the checkpoint's round trip is part of S

``update`` is deterministic (it counts and tests; no random draw: checked by
``tests/test_learning.py``), so every replica at the same cursor holds the same canonical state
bit for bit, whether it applied every event since S(0) or loaded the checkpoint at c and
replayed the rest (``GET /v1/learner`` shows the cursor and the state's SHA-256).
Checkpoints go into ``policy_snapshots`` (one transaction; a position already stored is kept,
since replicas compute identical checkpoints). A new replica loads the latest checkpoint
and replays the events after it.

**Serving.** Requests are decided by the router's own policy objects, which receive the same
events through ``update`` in the same order, so what they learn from feedback equals the
canonical state's; the canonical copy never decides. Deciding and usage also change a served
``LearnedPolicy`` locally (its exploration counters, the prompts it sizes budgets over, the
answer lengths it observes, its votes' agreement with their first samples): that part is each
replica's own, starts from the checkpoint at
start-up, and is saved atomically (temporary file, fsync, rename) to
``DATA_DIR/models/learned.json`` at checkpoints and at shutdown.

**Staleness.** The replica that receives feedback applies it before answering; every other
replica reads new events every ``learn_interval_s`` (1 s), so a feedback reaches every
replica's decisions within about that interval plus one query. This is safe because a decision
only reads the state: a replica a second behind makes the decision that one replica would have
made a second earlier, and no event is lost or applied twice (the cursor only moves past
events applied in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from router_models.plan import Plan, Scores
from router_models.policies import Policy
from service.routing import LEARNED_STATE, Router
from service.store import Backend, LearningEvent, Snapshot, StoreError

log = logging.getLogger(__name__)

_PLAN_FIELDS = frozenset(field.name for field in dataclasses.fields(Plan))
# The policy that learns from decisions made by policies that do not learn.
OWN_LEARNER = "learned"
# Events read per query; a replica far behind catches up in several.
_BATCH = 500


def learns(policy: Policy) -> bool:
    """Whether ``policy`` learns from feedback and can be snapshotted (it overrides
    ``Policy.update`` and has ``state()`` / ``from_state()``)."""
    return (type(policy).update is not Policy.update and hasattr(policy, "state")
            and hasattr(type(policy), "from_state"))


def save_atomically(policy: Any, path: Path) -> None:
    """Write ``policy.save`` to ``path`` through a temporary file in the same directory,
    fsynced, then renamed over ``path``: a crash leaves the old file or the new one, never a
    torn one.

    Raises:
        OSError: the directory cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        policy.save(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class Learner:
    """The event-sourced state of the router's learning policies (module docstring).

    Args:
        router: whose learning policies are served and updated; their start-up state is
            S(0) when the database holds no snapshot yet.
        backend: the request log's database.
        interval_s: how often the background task reads new events (seconds).
        checkpoint_every: events between checkpoints.
        models_dir: where the served ``learned`` policy is saved as ``learned.json`` at
            checkpoints and at ``close`` (None: not saved).
    """

    def __init__(self, router: Router, backend: Backend, *, interval_s: float = 1.0,
                 checkpoint_every: int = 100, models_dir: Path | None = None):
        self._router = router
        self._backend = backend
        self._interval_s = interval_s
        self._checkpoint_every = checkpoint_every
        self._models_dir = models_dir
        self._canonical: dict[str, Policy] = {}
        self._base: dict[str, int] = {}  # each policy's loaded checkpoint position
        self.cursor = 0  # the last event applied
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def policies(self) -> dict[str, Policy]:
        """The canonical state of each learning policy (read-only for callers; hold
        ``reading()`` to read it together with ``cursor``)."""
        return self._canonical

    def reading(self) -> asyncio.Lock:
        """A lock to hold while reading ``policies`` and ``cursor`` together (no event is
        applied meanwhile)."""
        return self._lock

    async def start(self) -> None:
        """Load each learning policy's latest checkpoint (writing S(0) when there is none)
        into both the canonical copy and the served policy, replay the events after it, and
        start reading new events every ``interval_s``. Call it before serving requests.

        Raises:
            StoreError: the database failed.
        """
        names = [name for name, policy in self._router.policies.items() if learns(policy)]
        latest = {snap.policy: snap for snap in await self._backend.latest_snapshots()}
        missing = [name for name in names if name not in latest]
        if missing:
            states = await asyncio.to_thread(
                lambda: [_dumps(self._router.policies[name]) for name in missing])
            await self._backend.put_snapshots(
                [Snapshot(name, 0, text) for name, text in zip(missing, states, strict=True)])
            # Another replica may have written S(0) first: everyone uses the stored one.
            latest = {snap.policy: snap for snap in await self._backend.latest_snapshots()}
        for name in names:
            snap = latest[name]
            state = json.loads(snap.state)
            self._canonical[name] = self._router.restore(name, state)
            self._router.policies[name] = self._router.restore(name, state)
            self._base[name] = snap.position
        self.cursor = min(self._base.values(), default=0)
        await self.sync()
        self._task = asyncio.create_task(self._poll_forever(), name="ttc-learner")

    async def sync(self) -> int:
        """Apply every event not applied yet, in order; returns how many were read.

        Raises:
            StoreError: the database failed (the events stay for the next call).
        """
        if not self._canonical:
            return 0
        async with self._lock:
            read = 0
            checkpoint: int | None = None
            while True:
                events = await self._backend.learning_events(self.cursor, _BATCH)
                for event in events:
                    self._apply(event)
                    if event.seq // self._checkpoint_every > self.cursor // self._checkpoint_every:
                        checkpoint = event.seq
                        await self._checkpoint(event.seq)
                    self.cursor = event.seq
                    if event.seq % 64 == 0:
                        await asyncio.sleep(0)  # a replica catching up still serves
                read += len(events)
                if len(events) < _BATCH:
                    break
            if checkpoint is not None:
                await asyncio.to_thread(self._save_file)
            return read

    async def close(self) -> None:
        """Stop the background task, apply what is pending, and save ``learned.json``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.sync()
        except StoreError as exc:
            log.warning("learner: the last feedback could not be read at shutdown: %s", exc)
        async with self._lock:
            await asyncio.to_thread(self._save_file)

    # -- internals --------------------------------------------------------------------------

    def _apply(self, event: LearningEvent) -> None:
        if event.plan is None or event.scores is None:
            return  # a request no policy decided: nothing to learn
        name = event.plan.get("policy")
        if not isinstance(name, str) or name not in self._canonical:
            # Decided by a policy that does not learn (rules, fixed, an A/B arm, a forced
            # strategy): a strategy's outcome on a kind of prompt does not depend on who chose
            # it, so it teaches the gateway's own learned policy.
            if OWN_LEARNER not in self._canonical:
                return
            name = OWN_LEARNER
        canonical = self._canonical[name]
        if event.seq <= self._base[name]:
            return
        try:
            plan = Plan(**{k: v for k, v in event.plan.items() if k in _PLAN_FIELDS})
            scores = Scores.from_dict(event.scores)
            key = event.plan.get("prompt_key")  # absent from rows logged before it existed
            for policy in (canonical, self._router.policies[name]):
                policy.update(scores, plan, event.score, spent_tokens=event.completion_tokens,
                              prompt_key=key if isinstance(key, str) else None)
        except (KeyError, TypeError, ValueError) as exc:
            # Every replica skips the same malformed row, so the states still agree.
            log.warning("learner: event %d (%s) skipped: %s", event.seq, event.decision_id, exc)

    async def _checkpoint(self, position: int) -> None:
        """The checkpoint at ``position``: each canonical state through its JSON round trip,
        stored unless another replica stored it first (the same bytes). A policy loaded from
        a later checkpoint (the log is replayed from an earlier one for a policy added since)
        is past ``position``: it is left alone, or its state would be stored as this
        position's and the events after it applied again."""
        texts = {name: _dumps(policy) for name, policy in self._canonical.items()
                 if self._base[name] < position}
        for name, text in texts.items():
            self._canonical[name] = self._router.restore(name, json.loads(text))
            self._base[name] = position
        try:
            await self._backend.put_snapshots(
                [Snapshot(name, position, text) for name, text in texts.items()])
        except StoreError as exc:  # another replica will store the same checkpoint
            log.warning("learner: checkpoint %d not stored: %s", position, exc)

    def _save_file(self) -> None:
        learned = self._router.policies.get("learned")
        if learned is None or self._models_dir is None or not learns(learned):
            return
        try:
            save_atomically(learned, self._models_dir / LEARNED_STATE)
        except OSError as exc:
            log.warning("could not save the learned policy's state: %s", exc)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sync()
            except StoreError as exc:
                log.warning("learner: reading feedback failed, retrying: %s", exc)
            except Exception:  # never let the task die: learning would stop for good
                log.exception("learner: unexpected error")


def _dumps(policy: Policy) -> str:
    return json.dumps(policy.state(), sort_keys=True)  # type: ignore[attr-defined]
