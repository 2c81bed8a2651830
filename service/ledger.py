"""The budget ledger: one request's completion-token budget across all its upstream calls.

Every call reserves its ``max_tokens`` before it is sent and settles with the tokens the
backend reported afterwards, so that calls in flight together can never be granted more than
the budget. A backend that returns more tokens than it was granted is counted in full (the
spend is real), the ledger is marked ``overrun``, and strategies stop issuing calls.
"""

from __future__ import annotations

from dataclasses import dataclass


class BudgetExhausted(Exception):
    """No tokens are left to grant."""


@dataclass
class BudgetLedger:
    """Completion tokens of one request.

    Args:
        budget_tokens: the most completion tokens all calls may spend together; None means
            unbounded (``direct`` with the client's own caps).
    """

    budget_tokens: int | None
    spent: int = 0
    reserved: int = 0
    overrun: bool = False

    @property
    def remaining(self) -> int | None:
        """Tokens that can still be granted (None when unbounded)."""
        if self.budget_tokens is None:
            return None
        return max(0, self.budget_tokens - self.spent - self.reserved)

    def reserve(self, tokens: int) -> int:
        """Grant up to ``tokens`` (>= 1) for one call; returns the grant.

        Raises:
            BudgetExhausted: nothing is left (or the ledger overran).
        """
        if self.overrun:
            raise BudgetExhausted("the budget was overrun by a backend")
        left = self.remaining
        grant = tokens if left is None else min(tokens, left)
        if grant < 1:
            raise BudgetExhausted("the token budget is spent")
        self.reserved += grant
        return grant

    def charge(self, spent: int) -> None:
        """Record tokens spent by a call made without a grant (``direct``'s own caps)."""
        self.spent += spent
        if self.budget_tokens is not None and self.spent > self.budget_tokens:
            self.overrun = True

    def settle(self, granted: int, spent: int) -> None:
        """Release a grant and record what the call really spent (tokens)."""
        self.reserved = max(0, self.reserved - granted)
        self.spent += spent
        if spent > granted or (self.budget_tokens is not None and self.spent > self.budget_tokens):
            self.overrun = True
