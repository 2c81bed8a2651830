"""Real processes on 127.0.0.1: every token the simulated backend generates is counted, the
same, in the client's ``usage``, ``ttc_tokens_total`` (and the key's and the prompt
histogram's counters) and the request log, and no budget is exceeded: ``ttc-router serve`` in
front of a counting proxy in front of ``ttc-router sim`` (and ``ttc-router sim --bank`` on the
fixture bank: recorded pieces, waves of votes, search requests), driven by the ``openai``
client (``bench/accounting_audit.py``, which runs every scenario and prints the figures)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.accounting_audit import Audit, Stack, bank_scenarios, running_stack, scenarios

pytestmark = pytest.mark.e2e

FIXTURE_BANK = Path(__file__).resolve().parents[1] / "bank_fixture"

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


# On the fixture bank (whose chains are a few dozen tokens): votes of several waves, search
# turns that request a search, n > 1, auto, a total budget.
CHOSEN_ON_BANK = (
    "bank vote json gsm8k b=1500", "bank vote stream graph cut b=1500",
    "bank search json hotpot b=600", "bank search stream hotpot b=600",
    "bank search json hotpot max 20", "bank direct stream n=3 b=120", "bank auto json hotpot",
    "bank auto json mmlu b=300", "bank completions vote b=1500", "bank vote total 700",
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
            if scenario.client_leaves and outcome.log_status != "200":
                # A call given up on is charged its grant, which may be more than the backend
                # generated (documented), never less. (A request that ended before its client
                # left, on a loaded machine, is checked as any other.)
                flags -= {"MISMATCH", "PROMPT"}
                assert outcome.log_status == "499", outcome.line()
            elif scenario.client_leaves:
                assert outcome.generated_exact and not flags, outcome.line()
            else:
                assert outcome.generated_exact and outcome.log_status == "200", outcome.line()
                # a stream that did not ask for usage gets none (the gateway strips it)
                asked = "no usage asked" not in scenario.name
                assert (outcome.client == outcome.generated) is asked, outcome.line()
            assert not flags, outcome.line()
    finally:
        await audit.aclose()


async def test_on_a_recorded_bank_every_token_is_counted_alike_within_budget(
        tmp_path: Path) -> None:
    with running_stack(tmp_path, bank=FIXTURE_BANK) as bank_stack:
        audit = Audit(bank_stack)
        try:
            chosen = [s for s in bank_scenarios(audit, FIXTURE_BANK)
                      if s.name in CHOSEN_ON_BANK]
            assert len(chosen) == len(CHOSEN_ON_BANK)
            for scenario in chosen:
                outcome = await audit.run(scenario.name, scenario.budget, scenario.act,
                                          scenario.total_budget)
                assert outcome.calls > 0 and outcome.generated_exact, outcome.line()
                assert outcome.log_status == "200", outcome.line()
                assert outcome.client == outcome.generated, outcome.line()
                assert not outcome.flags(), outcome.line()
        finally:
            await audit.aclose()
