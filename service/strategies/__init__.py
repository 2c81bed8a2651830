"""Execution strategies, found by name: the same name as in the API, metrics and logs."""

from __future__ import annotations

from service.strategies.base import Call, Strategy
from service.strategies.direct import Direct
from service.strategies.parallel_vote import ParallelVote
from service.strategies.search import Search
from service.strategies.sequential import Sequential

REGISTRY: dict[str, Strategy] = {s.name: s for s in (Direct(), ParallelVote(), Sequential(),
                                                     Search())}

__all__ = ["REGISTRY", "Call", "Strategy"]
