"""The budget ledger never grants past the budget and notices overruns."""

from __future__ import annotations

import pytest

from service.ledger import BudgetExhausted, BudgetLedger


def test_grants_never_exceed_the_budget_while_calls_are_in_flight():
    ledger = BudgetLedger(100)
    grants = [ledger.reserve(40), ledger.reserve(40), ledger.reserve(40)]
    assert grants == [40, 40, 20]
    with pytest.raises(BudgetExhausted):
        ledger.reserve(1)
    ledger.settle(40, 10)  # a call that stopped early gives back what it did not use
    assert ledger.remaining == 30
    assert not ledger.overrun


def test_a_backend_that_spends_more_than_granted_is_counted_and_marked():
    ledger = BudgetLedger(50)
    grant = ledger.reserve(50)
    ledger.settle(grant, 70)
    assert ledger.spent == 70 and ledger.overrun
    with pytest.raises(BudgetExhausted):
        ledger.reserve(1)


def test_unbounded_ledger_grants_what_is_asked():
    ledger = BudgetLedger(None)
    assert ledger.reserve(4096) == 4096
    assert ledger.remaining is None
