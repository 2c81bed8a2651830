"""Sticky A/B assignment: a stable hash of (experiment, identity) picks an arm by weight.

The hash is BLAKE2b (``hashlib``), never Python's ``hash()``, which is salted per process: the
same identity lands in the same arm in every process, replica and restart that shares the
configuration. Arms take consecutive slices of [0, 1) in the order they are configured, each
as wide as its share, so when shares move (adaptive allocation) only the identities between
the old and the new boundaries change arm.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

# How an arm was chosen: by the request's ``user``, its ``x-session-id``, its API key's name,
# or at random (no identity: such requests are not sticky).
HOW = ("user", "session", "key", "random")


@dataclass(frozen=True)
class Assignment:
    """One request's place in an experiment.

    Args:
        experiment: the experiment's name.
        arm: the arm's name.
        policy: the arm's policy (a name from the config or a spec).
        probability: the share of traffic the arm had when the request was assigned (the
            assignment propensity), in (0, 1].
        how: one of ``HOW``; ``random`` marks a request that had no identity.
    """

    experiment: str
    arm: str
    policy: str
    probability: float
    how: str


def bucket(experiment: str, identity: str) -> float:
    """The identity's fixed point in [0, 1) for this experiment: the first 8 bytes of
    BLAKE2b over ``experiment NUL identity``, as a fraction of 2**64. Uniform over identities,
    and independent between experiments."""
    digest = hashlib.blake2b(f"{experiment}\0{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def pick(shares: Mapping[str, float], point: float) -> str:
    """The arm whose slice of [0, 1) holds ``point``; slices follow the mapping's order and
    have the shares' widths (normalised to sum to 1).

    Raises:
        ValueError: no arms, a negative share, or shares summing to 0.
    """
    if not shares or any(s < 0 for s in shares.values()):
        raise ValueError("shares must be non-negative, for at least one arm")
    total = float(sum(shares.values()))
    if total <= 0:
        raise ValueError("shares must not all be 0")
    edge = 0.0
    last = ""
    for arm, share in shares.items():
        if share <= 0:
            continue
        edge += share / total
        last = arm
        if point < edge:
            return arm
    return last  # rounding left the point at the very top


def assign(experiment: str, shares: Mapping[str, float], identity: str | None, *,
           how: str, policies: Mapping[str, str],
           rng: random.Random | None = None) -> Assignment:
    """Assign one request: by ``bucket(experiment, identity)`` when it has an identity, else
    uniformly at random (``how`` becomes ``random``).

    Args:
        shares: arm -> share of traffic (any positive scale).
        identity: the request's ``user``, session id or key name, or None.
        how: which of those ``identity`` is (``user``, ``session`` or ``key``).
        policies: arm -> its policy.
        rng: the random source for requests without an identity.

    Raises:
        ValueError: as ``pick``.
    """
    if identity is None:
        point, how = (rng or random).random(), "random"
    else:
        point = bucket(experiment, identity)
    arm = pick(shares, point)
    total = float(sum(shares.values()))
    return Assignment(experiment, arm, policies[arm], shares[arm] / total, how)
