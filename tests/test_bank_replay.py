"""The replay backend (``ttc-router sim --bank``) on a small hand-written bank fixture: budgets
cut recorded chains, usage is exact, ``n``/seeds/greedy pick recorded samples, streaming,
continuations, search requests, unknown prompts; and every strategy through the gateway in
process against it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_models.bank import Bank, BankError
from router_models.tasks.registry import TaskRegistry
from service.bank_replay import ReplayConfig, create_replay_app
from service.search import LocalIndex
from service.search.documents import Document
from service.search.local import index_path
from tests.conftest import gateway_client, make_settings
from tests.fakes import completion_choices

FIXTURE = Path(__file__).parent / "bank_fixture"
BANK = Bank.load(FIXTURE)
CHAIN = BANK.runs[0]
MC = BANK.runs[1]
HOTPOT = {run.searches: run for run in BANK.runs[2:]}


class Recording(httpx.AsyncBaseTransport):
    """The replay app behind an ASGI transport that keeps every request body and reply."""

    def __init__(self) -> None:
        self.inner = httpx.ASGITransport(app=create_replay_app(ReplayConfig(bank=BANK)))
        self.calls: list[tuple[dict[str, Any], httpx.Response]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = json.loads(request.content or b"{}")
        content = await response.aread()
        self.calls.append((body, httpx.Response(response.status_code, content=content)))
        return httpx.Response(response.status_code, headers=response.headers, content=content)


async def replay(body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    transport = httpx.ASGITransport(app=create_replay_app(ReplayConfig(bank=BANK)))
    async with httpx.AsyncClient(transport=transport, base_url="http://replay.test") as client:
        return await client.post(path, json=body)


def ask(run: Any = CHAIN, **extra: Any) -> dict[str, Any]:
    return {"model": "bank-replay", "messages": [{"role": "user", "content": run.prompt}],
            **extra}


def test_the_fixture_loads_and_a_bad_bank_is_refused(tmp_path: Path) -> None:
    assert BANK.suites() == {"arithmetic_chain": 1, "hotpotqa": 1, "mmlu": 1}
    assert len(BANK) == 5 and sorted(HOTPOT) == [0, 1, 3]
    with pytest.raises(BankError, match="no outcome bank"):
        Bank.load(tmp_path / "absent")
    (tmp_path / "x-001.jsonl").write_text('{"key": "x"}\n')
    with pytest.raises(BankError, match="x-001.jsonl:1"):
        Bank.load(tmp_path)


def test_a_question_of_several_paragraphs_is_found_inside_its_prompt() -> None:
    # BIG-bench's shuffled objects: the players, a blank line, then the swaps. The prompt adds
    # the instruction as one more block, so neither the whole text nor any one block is the
    # question; the run of blocks that is, is found.
    question = ("Alice, Bob and Claire each hold a ball.\n\nFirst, Alice and Bob swap balls. "
                "At the end, Alice has the\nA) red ball.\nB) blue ball.")
    item = dataclasses.replace(MC.item, item_id="paragraphs", question=question)
    bank = Bank([MC, dataclasses.replace(MC, item=item, key="mmlu/paragraphs/0")])
    assert bank.lookup(item.prompt()) == {MC.searches: bank.runs[1]}
    assert bank.lookup(f"Passages.\n\n{item.prompt()}") == {MC.searches: bank.runs[1]}
    assert bank.lookup(MC.item.prompt()) == {MC.searches: MC}
    assert bank.lookup("Alice, Bob and Claire each hold a ball.") is None
    registry = TaskRegistry([item])
    assert registry.identify([("user", item.prompt())]).item == item


async def test_a_budget_cuts_the_recorded_chain_and_usage_is_exact() -> None:
    reply = (await replay(ask(temperature=0, max_tokens=5))).json()
    choice = reply["choices"][0]
    assert choice["message"]["content"] == "".join(CHAIN.greedy.tokens[:5])
    assert choice["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": CHAIN.prompt_tokens, "completion_tokens": 5,
                              "total_tokens": CHAIN.prompt_tokens + 5}
    assert reply["model"] == "bank-replay" and reply["replay"]["samples"] == ["greedy"]
    assert "prompt_tokens_estimated" not in reply["replay"]
    whole = (await replay(ask(temperature=0, max_tokens=500))).json()["choices"][0]
    assert whole["message"]["content"] == CHAIN.greedy.text and whole["finish_reason"] == "stop"


async def test_n_gives_distinct_samples_a_seed_picks_them_and_repeats() -> None:
    first = (await replay(ask(n=3, seed=1, temperature=0.7))).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [CHAIN.samples[i].text for i in (1, 2, 3)]
    assert first["usage"]["completion_tokens"] == sum(len(CHAIN.samples[i].tokens)
                                                      for i in (1, 2, 3))
    again = (await replay(ask(n=3, seed=1, temperature=0.7))).json()
    assert [c["message"]["content"] for c in again["choices"]] == texts
    wide = (await replay(ask(n=6, seed=0))).json()
    assert wide["replay"]["repeated"] is True and len(wide["choices"]) == 6


async def test_streaming_sends_token_pieces_and_the_usage_chunk() -> None:
    reply = await replay(ask(temperature=0, max_tokens=7, stream=True,
                             stream_options={"include_usage": True}))
    events = [json.loads(line[6:]) for line in reply.text.splitlines()
              if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events
              if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert pieces == list(CHAIN.greedy.tokens[:7])
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 7
    assert reply.text.rstrip().endswith("data: [DONE]")


async def test_a_continuation_replays_the_rest_of_the_same_sample() -> None:
    sample = CHAIN.samples[3]
    body = {"model": "bank-replay", "max_tokens": 4, "messages": [
        {"role": "user", "content": CHAIN.prompt},
        {"role": "assistant", "content": "".join(sample.tokens[:6])},
        {"role": "user", "content": "You are out of thinking budget. State your final answer "
                                    "now, in the form \"The answer is X.\""}]}
    reply = (await replay(body)).json()
    assert reply["choices"][0]["message"]["content"] == "".join(sample.tokens[6:10])
    assert reply["replay"]["continued"] is True and reply["replay"]["samples"] == ["sample:3"]
    assert reply["replay"]["prompt_tokens_estimated"] is True
    assert reply["usage"]["completion_tokens"] == 4
    assert reply["usage"]["prompt_tokens"] > CHAIN.prompt_tokens + 6
    assert "repeated" not in reply["replay"]
    # The bank holds one rest of this prefix, so n choices repeat it, and the reply says so.
    wide = (await replay({**body, "n": 3})).json()
    assert [c["message"]["content"] for c in wide["choices"]] == [
        "".join(sample.tokens[6:10])] * 3
    assert wide["replay"]["repeated"] is True


async def test_a_continuation_with_the_seed_of_the_cut_continues_that_sample() -> None:
    # Samples 0 and 1 of the fixture chain start alike ("5 + 3 ="): cut at 4 pieces, the
    # seed's sample (1) is the one continued, not the first recorded sample with that start.
    assert CHAIN.samples[0].tokens[:4] == CHAIN.samples[1].tokens[:4]
    assert CHAIN.samples[0].tokens[4] != CHAIN.samples[1].tokens[4]
    cut = (await replay(ask(seed=1, temperature=0.7, max_tokens=4))).json()
    assert cut["replay"]["samples"] == ["sample:1"]
    body = ask(seed=1, temperature=0.7, max_tokens=200)
    body["messages"].append({"role": "assistant",
                             "content": cut["choices"][0]["message"]["content"]})
    rest = (await replay(body)).json()
    assert rest["replay"]["samples"] == ["sample:1"]
    assert (cut["choices"][0]["message"]["content"] + rest["choices"][0]["message"]["content"]
            == CHAIN.samples[1].text)


async def test_an_unknown_prompt_on_the_completions_endpoint_names_the_prompt() -> None:
    reply = await replay({"model": "bank-replay", "prompt": "What is love?"}, "/v1/completions")
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "prompt"
    assert reply.json()["error"]["code"] == "bank_item_not_found"


async def test_the_model_is_served_by_id_as_openai_serves_it() -> None:
    transport = httpx.ASGITransport(app=create_replay_app(ReplayConfig(bank=BANK)))
    async with httpx.AsyncClient(transport=transport, base_url="http://replay.test") as client:
        model = await client.get("/v1/models/bank-replay")
        other = await client.get("/v1/models/gpt-4o")
    assert model.status_code == 200 and model.json()["id"] == "bank-replay"
    assert model.json()["object"] == "model"
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


async def test_stop_strings_end_the_choice_as_a_server_ends_it() -> None:
    reply = (await replay(ask(temperature=0, stop=" gives 5"))).json()
    choice = reply["choices"][0]
    # the text ends before the stop string; usage counts the 7 pieces generated through it
    assert choice["message"]["content"] == "Start with 5. Adding 3"
    assert choice["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 7
    # of several, the one completed first wins, wherever it comes in the list
    first = (await replay(ask(temperature=0, stop=["16.", "Adding"]))).json()
    assert first["choices"][0]["message"]["content"] == "Start with 5. "
    assert first["usage"]["completion_tokens"] == 4
    streamed = await replay(ask(temperature=0, stop=["Adding"], stream=True,
                                stream_options={"include_usage": True}))
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e["choices"])
    assert text == "Start with 5. " and events[-1]["usage"]["completion_tokens"] == 4
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    # a stop string the text never holds changes nothing; a bad one is a 400 naming it
    whole = (await replay(ask(temperature=0, stop=["never said"]))).json()
    assert whole["choices"][0]["message"]["content"] == CHAIN.greedy.text
    for bad in (7, [""], [], ["a", "b", "c", "d", "e"]):
        refused = await replay(ask(temperature=0, stop=bad))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop"


async def test_a_stop_strings_pieces_are_counted_but_neither_streamed_nor_in_logprobs() -> None:
    # " gives 5" is the greedy chain's pieces 6 and 7 (" gives", " 5"): generated, counted,
    # dropped, as llama.cpp's server drops a stop word's tokens from its probabilities
    whole = (await replay(ask(temperature=0, stop=" gives 5", logprobs=True))).json()
    tokens = [t["token"] for t in whole["choices"][0]["logprobs"]["content"]]
    assert tokens == ["Start", " with", " 5.", " Adding", " 3"]
    assert whole["usage"]["completion_tokens"] == 7
    streamed = await replay(ask(temperature=0, stop=" gives 5", stream=True, logprobs=True,
                                stream_options={"include_usage": True}))
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    contents = [e["choices"][0]["delta"]["content"] for e in events
                if e["choices"] and e["choices"][0]["delta"].get("content") is not None][1:]
    assert contents == tokens  # after the role chunk's "", no empty chunk for the stop
    assert events[-1]["usage"]["completion_tokens"] == 7
    # a stop string starting inside a piece: that piece is returned cut, the rest withheld
    cut = (await replay(ask(temperature=0, stop="dding 3", logprobs=True))).json()
    assert cut["choices"][0]["message"]["content"] == "Start with 5. A"
    assert [t["token"] for t in cut["choices"][0]["logprobs"]["content"]][-1] == " A"
    assert cut["usage"]["completion_tokens"] == 5


async def test_unknown_prompts_get_a_404_in_openai_envelope_and_bad_input_a_400() -> None:
    reply = await replay({"model": "bank-replay",
                          "messages": [{"role": "user", "content": "What is love?"}]})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "bank_item_not_found"
    bad = await replay({"model": "bank-replay", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


async def test_searched_context_selects_the_run_recorded_with_that_many_searches() -> None:
    three = (await replay(ask(HOTPOT[3], temperature=0))).json()
    assert three["replay"]["key"] == HOTPOT[3].key
    assert three["choices"][0]["message"]["content"] == HOTPOT[3].greedy.text
    assert three["usage"]["prompt_tokens"] == HOTPOT[3].prompt_tokens
    none = (await replay(ask(HOTPOT[0], temperature=0))).json()
    assert none["replay"]["key"] == HOTPOT[0].key


async def test_tokenize_counts_recorded_pieces_exactly_and_other_text_approximately() -> None:
    start = "".join(CHAIN.samples[2].tokens[:4])
    exact = (await replay({"content": start}, "/tokenize")).json()
    assert exact == {"tokens": list(CHAIN.samples[2].tokens[:4]), "exact": True}
    other = (await replay({"content": "8 * 2 = 16 zq"}, "/tokenize")).json()
    assert other["exact"] is False and "".join(other["tokens"]) == "8 * 2 = 16 zq"
    assert (await replay({"content": 5}, "/tokenize")).status_code == 400


async def test_completions_endpoint_replays_too() -> None:
    reply = (await replay({"model": "bank-replay", "prompt": MC.prompt, "temperature": 0,
                           "max_tokens": 3, "logprobs": 1}, "/v1/completions")).json()
    assert reply["choices"][0]["text"] == "".join(MC.greedy.tokens[:3])
    logprobs = reply["choices"][0]["logprobs"]
    assert logprobs["tokens"] == list(MC.greedy.tokens[:3])
    assert logprobs["token_logprobs"] == [v / 100 for v in MC.greedy.lp[:3]]
    chat = (await replay(ask(MC, temperature=0, max_tokens=2, logprobs=True))).json()
    assert [t["logprob"] for t in chat["choices"][0]["logprobs"]["content"]] == [
        v / 100 for v in MC.greedy.lp[:2]]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_completions_batch_replays_each_prompt(stream: bool) -> None:
    # A list of prompts is answered prompt by prompt, prompt i's n choices at i * n ..
    # i * n + n - 1, as OpenAI answers it: the replay joined them into one prompt and
    # answered the first question once.
    body = {"model": "bank-replay", "temperature": 0, "max_tokens": 3, "n": 2}
    alone = [(await replay({**body, "prompt": run.prompt}, "/v1/completions")).json()
             for run in (MC, CHAIN)]
    reply = await replay({**body, "prompt": [MC.prompt, CHAIN.prompt], "stream": stream,
                          "stream_options": {"include_usage": True}}, "/v1/completions")
    assert reply.status_code == 200, reply.text
    texts, usage = completion_choices(reply, stream, 4)
    assert texts == [c["text"] for one in alone for c in one["choices"]]
    assert texts[0] == "".join(MC.greedy.tokens[:3])
    assert texts[2] == "".join(CHAIN.greedy.tokens[:3])
    for kind in ("prompt_tokens", "completion_tokens"):
        assert usage[kind] == sum(one["usage"][kind] for one in alone)
    unknown = await replay({**body, "prompt": [MC.prompt, "What is love?"]},
                           "/v1/completions")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "prompt"


# --- every strategy through the gateway -------------------------------------------------


async def gateway(body: dict[str, Any], transport: Recording,
                  **settings: Any) -> httpx.Response:
    async with gateway_client(transport, make_settings(models=("bank-replay",),
                                                       **settings)) as client:
        return await client.post("/v1/chat/completions", json=body)


def routed(run: Any, strategy: str, budget: int, **extra: Any) -> dict[str, Any]:
    return {**ask(run, **extra), "router": {"strategy": strategy, "budget_tokens": budget}}


async def test_a_greedy_first_vote_replays_the_greedy_chain_then_samples() -> None:
    transport = Recording()
    reply = await gateway(routed(CHAIN, "parallel_vote", 4 * 64, seed=0), transport,
                          vote_width=4, vote_first_wave=4, vote_majority_first=False)
    assert reply.status_code == 200, reply.text
    router = reply.json()["router"]
    assert router["greedy_first"] is True and router["samples"] == 4
    sent = sorted((body["temperature"], body.get("n", 1)) for body, _ in transport.calls)
    assert sent == [(0.0, 1), (0.7, 3)]
    greedy_reply = next(r for body, r in transport.calls if body["temperature"] == 0.0)
    assert greedy_reply.json()["choices"][0]["message"]["content"] == "".join(CHAIN.greedy.tokens)
    # The greedy chain says 16, as the recorded samples' majority does: one more vote for it.
    assert router["winner"] == "16" and router["votes"]["16"] >= 2
    served = sum(r.json()["usage"]["completion_tokens"] for _, r in transport.calls)
    assert reply.json()["usage"]["completion_tokens"] == served


async def test_direct_through_the_gateway_counts_the_replayed_tokens() -> None:
    transport = Recording()
    reply = await gateway(routed(MC, "direct", 64, temperature=0, max_tokens=6), transport)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == "".join(MC.greedy.tokens[:6])
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] == MC.prompt_tokens


async def test_parallel_vote_through_the_gateway_votes_on_recorded_samples() -> None:
    transport = Recording()
    reply = await gateway(routed(CHAIN, "parallel_vote", 4 * 64, seed=0), transport,
                          vote_width=4, vote_first_wave=4,
                          vote_majority_first=False, vote_greedy_first=False)
    assert reply.status_code == 200, reply.text
    router = reply.json()["router"]
    # Samples 0 and 2 say 16, sample 1 says 18, and the cut sample 3 ends on "= 16, so the
    # result is" without stating an answer: cut by its cap, it casts no vote.
    assert router["winner"] == "16" and router["votes"] == {"16": 2, "18": 1}
    assert router["cut_samples"] == 1
    served = sum(r.json()["usage"]["completion_tokens"] for _, r in transport.calls)
    assert reply.json()["usage"]["completion_tokens"] == served
    assert served == sum(len(s.tokens) for s in CHAIN.samples)


async def test_sequential_through_the_gateway_continues_the_cut_chain() -> None:
    transport = Recording()
    reply = await gateway(routed(CHAIN, "sequential", 28, temperature=0), transport)
    assert reply.status_code == 200, reply.text
    assert reply.json()["router"]["continued"] is True
    first, second = (r.json() for _, r in transport.calls)
    cap = transport.calls[0][0]["max_tokens"]
    assert first["choices"][0]["message"]["content"] == "".join(CHAIN.greedy.tokens[:cap])
    assert second["replay"]["continued"] is True
    assert second["choices"][0]["message"]["content"] == "".join(
        CHAIN.greedy.tokens[cap:cap + transport.calls[1][0]["max_tokens"]])
    assert reply.json()["usage"]["completion_tokens"] <= 28


async def test_search_through_the_gateway_follows_the_recorded_schedule(tmp_path: Path) -> None:
    data = tmp_path / "index"
    LocalIndex(index_path(data)).add([
        Document("fd", "Fixture Dreams", "Fixture Dreams is a novel by Marie Exemple."),
        Document("me", "Marie Exemple", "Marie Exemple was a French writer born in Lyon.")])
    settings = make_settings(models=("bank-replay",), data_dir=data)
    transport = Recording()
    async with gateway_client(transport, settings) as client:
        reply = await client.post("/v1/chat/completions",
                                  json=routed(HOTPOT[0], "search", 1024, temperature=0))
    assert reply.status_code == 200, reply.text
    router = reply.json()["router"]
    # The gateway runs the first search itself, with the user's prompt (search_question_first);
    # the replay then asks for the recorded schedule's next queries, and answers as the model
    # did with three searches' results.
    assert router["search_calls"] == 3
    assert router["search_queries"][1:] == list(HOTPOT[3].queries[1:])
    assert reply.json()["choices"][0]["message"]["content"] == HOTPOT[3].greedy.text
    kinds = [r.json()["replay"].get("synthesized") for _, r in transport.calls]
    assert kinds == ["search_request"] * 2 + [None]
    served = sum(r.json()["usage"]["completion_tokens"] for _, r in transport.calls)
    assert reply.json()["usage"]["completion_tokens"] == served


async def test_eval_through_the_gateway_over_the_replay_scores_every_strategy(
        tmp_path: Path) -> None:
    from service.app import create_app
    from service.commands.eval import bank_items
    from service.evaluation import runner
    from service.hotpath import HotPath

    items = bank_items(FIXTURE, ["arithmetic_chain", "mmlu"], None)
    assert [item.family for item in items] == ["arithmetic_chain", "mmlu"]
    app = create_app(make_settings(models=("bank-replay",)), transport=Recording())
    async with app.router.lifespan_context(app):
        options = runner.RunOptions(backend="http://gateway.test/v1",
                                    transport=httpx.ASGITransport(app=HotPath(app)))
        jobs = runner.plan_jobs(items, ("direct", "parallel_vote", "sequential"), [48, 256])
        mode, sent = await runner.run_jobs(jobs, tmp_path, options)
    assert (mode, sent) == ("gateway", len(jobs))
    records = runner.read_records(tmp_path / runner.ITEMS_FILE)
    assert len(records) == len(jobs) and not any(r["error"] for r in records)
    assert all(0 < r["completion_tokens"] <= r["budget_tokens"] for r in records)
    recorded = {r.item.item_id: [s.text for s in (r.greedy, *r.samples)] for r in BANK.runs}
    direct = [r for r in records if r["strategy"] == "direct" and r["budget_tokens"] == 256]
    assert direct and all(any(text.endswith(r["text"]) for text in recorded[r["item_id"]])
                          for r in direct)
