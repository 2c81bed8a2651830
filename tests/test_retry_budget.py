"""The retry budget: retries bounded by a share of the calls over a sliding window."""

from __future__ import annotations

from service.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(budget: RetryBudget) -> int:
    """Retries taken until the budget refuses."""
    taken = 0
    while budget.can_withdraw():
        budget.withdraw()
        taken += 1
    return taken


def test_retries_are_a_share_of_the_calls_plus_a_floor():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=1, window_s=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert spend(budget) == 10 + 20  # the floor (1 per second over 10 s) and 20% of 100 calls
    assert budget.available() == 0


def test_the_window_slides_and_old_calls_and_retries_expire():
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_s=0, window_s=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert spend(budget) == 5
    clock.now += 5
    budget.deposit()
    budget.deposit()
    assert spend(budget) == 1  # 12 calls in the window allow 6; 5 were taken
    clock.now += 6  # the first second's 10 calls and 5 retries have left the window
    assert budget.available() == 0  # 2 calls allow 1, and 1 retry was taken since
    for _ in range(4):
        budget.deposit()
    assert spend(budget) == 2


def test_without_traffic_only_the_floor_allows_retries():
    budget = RetryBudget(ratio=0.2, min_per_s=0, window_s=10, clock=Clock())
    assert not budget.can_withdraw()
