"""``GET /v1/learner``: where this replica's learner stands (an admin surface: once API keys
exist it needs an admin key, checked by ``service.admission``).

Replicas at the same ``cursor`` must report the same ``sha256`` per policy; operators and
``bench/replicas.py`` compare them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from router_models.policies import LearnedPolicy
from service.deps import Gateway, gateway
from service.errors import NotFound

router = APIRouter()


def _total(counts: Any) -> float:
    return sum(_total(c) for c in counts) if isinstance(counts, list) else float(counts)


def feedback_learned(state: dict[str, Any]) -> float:
    """The feedback a learning policy's ``state()`` has learned from: the sum of its outcome
    counts per kind and strategy (``trials``, a nested list; a score counts as one) and of the
    outcomes it left out as repeats of a prompt already counted (``repeated``)."""
    return _total(state.get("trials") or []) + _total(state.get("repeated") or [])


def evidence_counted(state: dict[str, Any]) -> float:
    """The outcomes a learning policy's improvement test counts (``trials``): its feedback
    without the repeats."""
    return _total(state.get("trials") or [])


@router.get("/v1/learner")
async def learner_status(gw: Annotated[Gateway, Depends(gateway)],
                         state: bool = False) -> JSONResponse:
    """``{"cursor": N, "policies": {NAME: {"sha256", "feedback", "evidence", "repeats"[,
    "served"][, "state"]}}}``: the last learning event applied, and per learning policy the
    SHA-256 of its state's JSON (keys sorted), the feedback it has learned from, the part its
    improvement test counts as evidence, the part left out as repeats of a prompt already
    counted (``LearnedPolicy.update``), this replica's own deciding counters (``served``:
    ``decisions``, ``explored``, ``explored_ratio``; the shared state decides nothing, so its
    counters stay 0), and with ``?state=true`` the shared state itself.

    Raises:
        NotFound: this gateway has no learner (404).
    """
    if gw.learner is None:
        raise NotFound("this gateway has no learner")
    learner = gw.learner

    def describe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, policy in learner.policies.items():
            snapshot = policy.state()  # type: ignore[attr-defined]
            text = json.dumps(snapshot, sort_keys=True)
            entry: dict[str, Any] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                     "feedback": feedback_learned(snapshot),
                                     "evidence": evidence_counted(snapshot),
                                     "repeats": _total(snapshot.get("repeated") or [])}
            served = gw.router.policies.get(name) if gw.router is not None else None
            if isinstance(served, LearnedPolicy):
                entry["served"] = {"decisions": served.decisions, "explored": served.explored,
                                   "explored_ratio": served.exploration_share()}
            if state:
                entry["state"] = snapshot
            out[name] = entry
        return out

    async with learner.reading():
        cursor = learner.cursor
        policies = await asyncio.to_thread(describe)
    return JSONResponse({"cursor": cursor, "policies": policies})
