"""The replay backend under the search strategy's forced answer: a reply cut by its budget is
continued from the same recorded chain, as ``sequential``'s is (``tests/test_bank_replay.py``
holds the replay's other tests and the fixture)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import gateway_client, make_settings
from tests.test_bank_replay import CHAIN, Recording, routed


async def test_search_cut_by_its_budget_continues_the_same_chain_for_its_forced_answer(
        tmp_path: Path) -> None:
    # The gateway's own first search puts a "SEARCH: <question>" turn before the model's
    # chain; the forced answer after a cut chain must continue that chain, as sequential's
    # does, not restart a recorded sample from its first token.
    settings = make_settings(models=("bank-replay",), data_dir=tmp_path / "empty")
    transport = Recording()
    async with gateway_client(transport, settings) as client:
        reply = await client.post("/v1/chat/completions",
                                  json=routed(CHAIN, "search", 16, temperature=0))
    assert reply.status_code == 200, reply.text
    assert reply.json()["router"]["forced_answer"] is True
    (first_body, first), (second_body, second) = transport.calls
    cap = first_body["max_tokens"]
    assert first.json()["choices"][0]["message"]["content"] == "".join(CHAIN.greedy.tokens[:cap])
    assert second.json()["replay"]["continued"] is True
    assert second.json()["choices"][0]["message"]["content"] == "".join(
        CHAIN.greedy.tokens[cap:cap + second_body["max_tokens"]])
    served = sum(r.json()["usage"]["completion_tokens"] for _, r in transport.calls)
    assert reply.json()["usage"]["completion_tokens"] == served <= 16
