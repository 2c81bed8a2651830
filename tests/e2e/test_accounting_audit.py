"""Real processes on 127.0.0.1: every token the simulated backend generates is counted, the
same, in the client's ``usage``, ``ttc_tokens_total`` (and the key's and the prompt
histogram's counters) and the request log, and no budget is exceeded: ``ttc-router serve`` in
front of a counting proxy in front of ``ttc-router sim``, driven by the ``openai`` client
(``bench/accounting_audit.py``, which runs every scenario and prints the figures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.accounting_audit import Audit, Stack, running_stack, scenarios

pytestmark = pytest.mark.e2e

# One of each kind: every strategy JSON and streamed, a budget too small for a vote, the
# client's cap, n > 1, auto, /v1/completions, a total budget, and clients that leave.
CHOSEN = (
    "direct json b=none, max 200", "direct stream no usage asked",
    "parallel_vote json b=1200", "parallel_vote stream budget 10",
    "sequential stream b=1200", "sequential json max_tokens 5",
    "search json b=1200", "search stream max_tokens 5",
    "vote json greedy first b=2000", "vote stream greedy first b=2000",
    "direct stream n=3 b=90", "auto json mc", "auto stream chain max 40",
    "completions direct n=2 max 40", "completions vote stream b=400",
    "completions batch stream max 20", "auto json total 300", "parallel_vote stream total 300",
    "direct stream client leaves", "parallel_vote stream client leaves",
    "completions direct no cap stream leaves", "vote json client leaves",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(Path(tmp_path_factory.mktemp("audit"))) as running:
        yield running


async def test_every_generated_token_is_counted_alike_and_no_budget_is_exceeded(
        stack: Stack) -> None:
    audit = Audit(stack)
    try:
        chosen = [s for s in scenarios(audit) if s.name in CHOSEN]
        assert len(chosen) == len(CHOSEN)
        for scenario in chosen:
            outcome = await audit.run(scenario.name, scenario.budget, scenario.act,
                                      scenario.total_budget)
            assert outcome.calls > 0 and outcome.log is not None, outcome.line()
            flags = set(outcome.flags())
            if scenario.client_leaves:
                # A call given up on is charged its grant, which may be more than the backend
                # generated (documented), never less.
                flags -= {"MISMATCH", "PROMPT"}
                assert outcome.log_status == "499", outcome.line()
            else:
                assert outcome.generated_exact and outcome.log_status == "200", outcome.line()
                # a stream that did not ask for usage gets none (the gateway strips it)
                asked = "no usage asked" not in scenario.name
                assert (outcome.client == outcome.generated) is asked, outcome.line()
            assert not flags, outcome.line()
    finally:
        await audit.aclose()
