"""The replay backend under the search strategy: a reply cut by its budget is continued from
the same recorded chain for the forced answer, as ``sequential``'s is, and a synthesized search
request is cut by ``max_tokens`` like any reply (``tests/test_bank_replay.py`` holds the
replay's other tests and the fixture)."""

from __future__ import annotations

from pathlib import Path

from service.search import LocalIndex
from service.search.documents import Document
from service.search.local import index_path
from service.strategies.search import FINAL_ANSWER
from service.text_protocol import FINAL_ANSWER_MARK
from tests.conftest import gateway_client, make_settings
from tests.test_bank_replay import CHAIN, HOTPOT, Recording, ask, replay, routed


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


async def test_a_synthesized_search_request_is_cut_by_max_tokens() -> None:
    line = HOTPOT[3].search_turns[0]
    assert line is not None and len(line) > 3
    body = {**ask(HOTPOT[0], temperature=0, max_tokens=3), "messages": [
        {"role": "system", "content": "Reply SEARCH: <query> to search. You may search at "
                                      "most 3 times."},
        {"role": "user", "content": HOTPOT[0].prompt}]}
    reply = (await replay(body)).json()
    assert reply["replay"]["synthesized"] == "search_request"
    assert reply["usage"]["completion_tokens"] == 3
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "".join(line[:3])
    whole = (await replay({**body, "max_tokens": 100})).json()["choices"][0]
    assert whole["finish_reason"] == "stop" and whole["message"]["content"] == "".join(line)


async def test_search_through_the_gateway_never_spends_past_a_small_budget(
        tmp_path: Path) -> None:
    data = tmp_path / "index"
    LocalIndex(index_path(data)).add([
        Document("fd", "Fixture Dreams", "Fixture Dreams is a novel by Marie Exemple.")])
    settings = make_settings(models=("bank-replay",), data_dir=data)
    for budget in (1, 8, 30):
        transport = Recording()
        async with gateway_client(transport, settings) as client:
            reply = await client.post("/v1/chat/completions",
                                      json=routed(HOTPOT[0], "search", budget, temperature=0))
        assert reply.status_code == 200, reply.text
        served = sum(r.json()["usage"]["completion_tokens"] for _, r in transport.calls)
        assert reply.json()["usage"]["completion_tokens"] == served <= budget
        assert reply.json()["router"]["budget_overrun"] is False
        # The cap cuts synthesized request lines (at 8: "SEARCH: In which city was the"); a
        # cut line is no request, so every search after the question's is a whole query.
        queries = reply.json()["router"]["search_queries"]
        assert all(q in HOTPOT[3].queries for q in queries[1:]), queries


async def test_the_forced_answer_is_an_answer_not_another_search_request(tmp_path: Path) -> None:
    # The search strategy's last call asks for the final answer and offers no search; the
    # replay answered it with the schedule's next SEARCH line (at budget 8: "SEARCH: In").
    assert FINAL_ANSWER_MARK in FINAL_ANSWER.format(why="")
    data = tmp_path / "index"
    LocalIndex(index_path(data)).add([
        Document("fd", "Fixture Dreams", "Fixture Dreams is a novel by Marie Exemple.")])
    settings = make_settings(models=("bank-replay",), data_dir=data)
    for budget in (8, 30):
        transport = Recording()
        async with gateway_client(transport, settings) as client:
            reply = await client.post("/v1/chat/completions",
                                      json=routed(HOTPOT[0], "search", budget, temperature=0))
        assert reply.json()["router"]["forced_answer"] is True
        body, last = transport.calls[-1]
        assert FINAL_ANSWER_MARK in body["messages"][-1]["content"]
        assert "synthesized" not in last.json()["replay"]
        assert not reply.json()["choices"][0]["message"]["content"].startswith("SEARCH:")
