"""A/B experiments over routing policies, as pure values and statistics: sticky assignment
(``assignment``), per-arm intervals, the comparison, the always-valid stopping rule and
Thompson-sampling allocation (``stats``), and off-policy replay of logged decisions
(``replay``). The gateway's wiring lives in ``service.experiments``."""

from __future__ import annotations

from router_models.experiments.assignment import Assignment, assign, bucket, pick
from router_models.experiments.stats import (
    OBJECTIVES,
    ArmTotals,
    Comparison,
    Sequential,
    compare_accuracy,
    difference_sequence,
    mean_interval,
    mean_sequence,
    thompson_shares,
    wilson_interval,
)

__all__ = ["OBJECTIVES", "ArmTotals", "Assignment", "Comparison", "Sequential", "assign",
           "bucket", "compare_accuracy", "difference_sequence", "mean_interval",
           "mean_sequence", "pick", "thompson_shares", "wilson_interval"]
