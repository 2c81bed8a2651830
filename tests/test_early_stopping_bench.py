"""bench/early_stopping.py runs through the real gateway (SIMULATION backend): its arms are
what they say. It had broken silently twice: forced votes of 32-token samples became one chain
once votes' samples had to be able to finish (a KeyError on the missing winner), and the
"fixed" vote stopped early once a vote drew a strict majority first."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import early_stopping  # noqa: E402


def test_the_fixed_arm_draws_every_sample_and_the_beta_rule_stops_settled_votes():
    prompts = early_stopping.make_prompts(12, random.Random(0))
    width = early_stopping.WIDTH
    fixed = asyncio.run(early_stopping.run_arm(prompts, 0, first_wave=width, wave=width,
                                               majority_first=False))
    adaptive = asyncio.run(early_stopping.run_arm(prompts, 0, first_wave=3, wave=1,
                                                  threshold=0.9))
    for kind in ("settled", "contested"):
        assert fixed[kind]["prompts"] == 6
        assert fixed[kind]["samples"] == 6 * width  # a vote, never one chain, never stopped
    # Unanimous samples settle at 3 (Beta(4, 1) > 0.9); contested votes read more.
    assert adaptive["settled"]["samples"] <= 6 * 4 < adaptive["contested"]["samples"]
    assert fixed["settled"]["correct"] == adaptive["settled"]["correct"] == 6
