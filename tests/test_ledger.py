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


def test_a_total_budget_counts_the_prompt_of_every_call():
    ledger = BudgetLedger(1000, total_budget_tokens=300)
    first = ledger.reserve(200, prompt_tokens=120)  # prompt + completion within 300
    assert first == 180
    with pytest.raises(BudgetExhausted):
        ledger.reserve(10, prompt_tokens=120)  # the prompt alone would not fit again
    assert ledger.prompt_reserved == 120  # a refused reservation leaves nothing behind
    ledger.settle(first, 50, prompt_reserved=120, prompt_spent=100)
    assert ledger.remaining == 150 and not ledger.overrun
    ledger.charge(0, prompt_tokens=200)  # a prompt larger than its bound: the limit is passed
    assert ledger.overrun


def test_a_charged_grant_is_spent_not_an_overrun():
    ledger = BudgetLedger(100)
    grant = ledger.reserve(60)
    ledger.settle(grant, grant)  # a failed call charged its whole grant
    assert ledger.spent == 60 and ledger.remaining == 40 and not ledger.overrun
