"""The budget ledger: one request's token budgets across all its upstream calls.

``budget_tokens`` bounds the *completion* tokens of all calls together. Every call reserves
its ``max_tokens`` before it is sent and settles with the tokens it cost afterwards (the
backend's usage, else the backend's tokenizer's count, else the whole grant: see
``service.strategies.metered``), so that calls in flight together can never be granted more
than the budget. A backend that returns more tokens than it was granted is counted in full
(the spend is real), the ledger is marked ``overrun``, and strategies stop issuing calls. That
call cannot be undone, but it is the last: the backend is noted as ignoring ``max_tokens``, and
its later calls are streamed and closed at their grants (``service.strategies.capped``).

``total_budget_tokens`` (optional, the ``router.budget_total_tokens`` control) bounds prompt
and completion tokens together: fan-out and search resend the prompt with every call, so a
call is granted only what is left after its prompt (``prompt_tokens``, the most it may cost,
reserved with the call and settled with the reported count).
"""

from __future__ import annotations

from dataclasses import dataclass


class BudgetExhausted(Exception):
    """No tokens are left to grant."""


@dataclass
class BudgetLedger:
    """Tokens of one request.

    Args:
        budget_tokens: the most completion tokens all calls may spend together; None means
            unbounded (``direct`` with the client's own caps).
        total_budget_tokens: the most prompt plus completion tokens all calls may spend
            together; None means no such limit.
    """

    budget_tokens: int | None
    total_budget_tokens: int | None = None
    spent: int = 0  # completion tokens
    reserved: int = 0  # completion tokens granted to calls in flight
    prompt_spent: int = 0
    prompt_reserved: int = 0
    overrun: bool = False

    @property
    def remaining(self) -> int | None:
        """Completion tokens that can still be granted (None when unbounded)."""
        left = None
        if self.budget_tokens is not None:
            left = max(0, self.budget_tokens - self.spent - self.reserved)
        if self.total_budget_tokens is not None:
            total_left = max(0, self.total_budget_tokens - self.spent - self.reserved
                             - self.prompt_spent - self.prompt_reserved)
            left = total_left if left is None else min(left, total_left)
        return left

    def reserve(self, tokens: int, prompt_tokens: int = 0) -> int:
        """Grant up to ``tokens`` (>= 1) completion tokens for one call whose prompt costs at
        most ``prompt_tokens``; returns the grant.

        Raises:
            BudgetExhausted: nothing is left (or the ledger overran).
        """
        if self.overrun:
            raise BudgetExhausted("the budget was overrun by a backend")
        self.prompt_reserved += prompt_tokens
        left = self.remaining
        grant = tokens if left is None else min(tokens, left)
        if grant < 1:
            self.prompt_reserved -= prompt_tokens
            raise BudgetExhausted("the token budget is spent")
        self.reserved += grant
        return grant

    def charge(self, spent: int, prompt_tokens: int = 0) -> None:
        """Record tokens spent by a call made without a grant."""
        self.spent += spent
        self.prompt_spent += prompt_tokens
        self._check()

    def settle(self, granted: int, spent: int, *, prompt_reserved: int = 0,
               prompt_spent: int = 0) -> None:
        """Release a grant (and its prompt reservation) and record what the call cost
        (completion and prompt tokens)."""
        self.reserved = max(0, self.reserved - granted)
        self.prompt_reserved = max(0, self.prompt_reserved - prompt_reserved)
        self.spent += spent
        self.prompt_spent += prompt_spent
        if spent > granted:
            self.overrun = True
        self._check()

    def _check(self) -> None:
        if self.budget_tokens is not None and self.spent > self.budget_tokens:
            self.overrun = True
        if (self.total_budget_tokens is not None
                and self.spent + self.prompt_spent > self.total_budget_tokens):
            self.overrun = True
