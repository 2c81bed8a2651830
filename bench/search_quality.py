"""``search`` vs ``sequential`` vs ``parallel_vote`` at equal token budgets on HotpotQA, with a
SIMULATED backend, and the local index's recall@k.

SIMULATION. The backend is a scripted reader, not a language model. It can answer a HotpotQA
question only when every one of its supporting paragraphs (the ``supporting_facts`` titles)
is in its context; then it writes "The answer is <gold answer>.". Otherwise:

- offered search (the ``search`` strategy's instructions are in its context), it asks for one:
  first the question itself; later, a supporting title that a paragraph already in its context
  names (it follows the bridge entity it read, as a multi-hop reader does), else the question
  without the words of the titles it has already seen;
- not offered search, or told to answer now, it guesses a wrong answer.

Every turn begins with ``THINK_TOKENS`` tokens of reasoning; a chain (``sequential``,
``parallel_vote`` samples) reasons for up to ``CHAIN_TOKENS`` before its guess. One word is one
token, and ``max_tokens`` cuts the text (``finish_reason: length``), as in tests/scripted.py.

The requests go through the real gateway in process: the real strategies, ledger, and the real
local index (tantivy BM25) built from the 994-document HotpotQA corpus. So the figures measure
the loop and the index (how often the search calls bring the supporting paragraphs into the
context within the budget) and the token cost of each strategy; the closed-book strategies are
at 0 by construction of the simulation. Nothing here measures a real model's reading.

The gateway runs a forced ``parallel_vote`` as one chain when its budget cannot buy 3 samples
long enough to finish (``router_models.policies.prior.fit_vote``: before usage has shown this
model's answer lengths, 3 x 320 tokens); the column "ran as" says what each row really ran
(``router.strategy`` per question) and "mean samples" how many samples it drew. Below 960
tokens the ``parallel_vote`` row is one chain; 1024 is among the default budgets so that one
row is a real vote.

Run: ``.venv/bin/python bench/search_quality.py [--budgets 128,256,512,1024] [--calls 1,2,3]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.search_engines import DEFAULT_DATA, load_hotpotqa  # noqa: E402
from service.app import create_app  # noqa: E402
from service.search.documents import Document  # noqa: E402
from service.search.local import LocalIndex, index_path  # noqa: E402
from service.settings import Settings, UpstreamSettings  # noqa: E402

THINK_TOKENS = 16
CHAIN_TOKENS = 200
WORD = re.compile(r"\w+")
DEFAULT_BUDGETS = (128, 256, 512, 1024)


class SimReader:
    """The simulated backend (see the module docstring); ``by_question`` maps a question's
    text to its HotpotQA item, ``texts`` a title to its paragraph."""

    def __init__(self, items: list[dict[str, Any]], texts: dict[str, str]):
        self.by_question = {item["question"]: item for item in items}
        self.texts = texts

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "sim-reader"}]})
        body = json.loads(request.content)
        text = self.reply(body["messages"])
        words = text.split(" ")
        cap = body.get("max_tokens") or len(words)
        finish = "stop"
        if len(words) > cap:
            words, finish = words[:cap], "length"
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": 10, "completion_tokens": len(words) * n,
                 "total_tokens": 10 + len(words) * n}
        return httpx.Response(200, json={
            "id": "sim", "object": "chat.completion", "created": 1, "model": "sim-reader",
            "system_fingerprint": "simulation", "usage": usage,
            "choices": [{"index": i, "finish_reason": finish,
                         "message": {"role": "assistant", "content": " ".join(words)}}
                        for i in range(n)]})

    def reply(self, messages: list[dict[str, Any]]) -> str:
        question = next(m["content"] for m in messages if m["role"] == "user")
        question = question.split("\n\n")[0]
        item = self.by_question[question]
        context = "\n".join(str(m.get("content") or "") for m in messages)
        gold = [title for title in dict.fromkeys(t for t, _ in item["supporting_facts"])]
        think = " ".join(["hmm"] * THINK_TOKENS)
        if all(self.texts[t][:80] in context for t in gold):
            return f"{think} The answer is {item['answer']}."
        offered = "SEARCH: <query>" in context
        told_to_answer = "final answer now" in messages[-1]["content"]
        if not offered or told_to_answer:
            chain = " ".join(["hmm"] * (CHAIN_TOKENS if not offered else THINK_TOKENS))
            return f"{chain} The answer is not-{item['answer']}."
        return f"{think}\nSEARCH: {self.next_query(item, gold, context)}"

    def next_query(self, item: dict[str, Any], gold: list[str], context: str) -> str:
        seen = re.findall(r"^> \[\d+\] (.+)$", context, re.M)
        if not seen:
            return item["question"]
        read = "\n".join(line for line in context.splitlines() if line.startswith("> "))
        for title in gold:
            if title not in seen and title.split(" (")[0] in read:
                return title
        seen_words = {w for title in seen for w in WORD.findall(title.lower())}
        rest = [w for w in WORD.findall(item["question"]) if w.lower() not in seen_words]
        return " ".join(rest) or item["question"]


async def evaluate(items: list[dict[str, Any]], texts: dict[str, str], data_dir: Path,
                   strategy: str, budget: int, calls: int) -> dict[str, Any]:
    """Accuracy, mean tokens, mean search calls and mean samples of ``strategy`` at ``budget``
    over ``items``, and ``ran``: how many questions each strategy really answered (the
    gateway's ``router.strategy``; a vote it cannot afford runs as ``sequential``).

    Raises:
        SystemExit: the gateway refused a request.
    """
    settings = Settings(
        upstreams=[UpstreamSettings(url="http://sim.test/v1", name="sim",
                                    models=["sim-reader"], supports_n=True)],
        data_dir=data_dir, search_max_calls=calls, retry_backoff_s=0.0)
    app = create_app(settings, transport=SimReader(items, texts).transport())
    correct, tokens, searches, samples = [], [], [], []
    ran: collections.Counter[str] = collections.Counter()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for item in items:
            reply = await client.post("/v1/chat/completions", json={
                "model": "sim-reader",
                "messages": [{"role": "user", "content": item["question"]}],
                "router": {"strategy": strategy, "budget_tokens": budget}})
            body = reply.json()
            if reply.status_code != 200:
                raise SystemExit(f"{strategy}@{budget}: {reply.status_code} {body}")
            answer = body["choices"][0]["message"]["content"]
            correct.append(answer.endswith(f"The answer is {item['answer']}."))
            tokens.append(body["router"]["spent_tokens"])
            searches.append(body["router"]["search_calls"])
            samples.append(body["router"]["samples"])
            ran[body["router"]["strategy"]] += 1
            assert body["router"]["spent_tokens"] <= budget
    return {"accuracy": statistics.mean(correct), "tokens": statistics.mean(tokens),
            "searches": statistics.mean(searches), "samples": statistics.mean(samples),
            "ran": dict(ran)}


def recall_at_k(index: LocalIndex, items: list[dict[str, Any]], ks: tuple[int, ...]) -> str:
    cells = []
    for k in ks:
        values = []
        for item in items:
            gold = {t for t, _ in item["supporting_facts"]}
            top = {hit.id for hit in index.search(item["question"], k)}
            values.append(len(gold & top) / len(gold))
        cells.append(f"recall@{k} {statistics.mean(values):.3f}")
    return ", ".join(cells)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)))
    parser.add_argument("--calls", default="1,2,3", help="search_max_calls values to run")
    args = parser.parse_args()
    if not (args.data / "hotpotqa_train_corpus.json").exists():
        raise SystemExit(f"HotpotQA not found at {args.data} (see ../shared/data/MANIFEST.md)")
    docs, items = load_hotpotqa(args.data)
    texts = {title: text for _, title, text in docs}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        index = LocalIndex(index_path(data_dir))
        index.add(Document(*d) for d in docs)
        print(f"SIMULATION. HotpotQA, {len(items)} questions, {len(docs)} documents; index "
              f"(question as the query): {recall_at_k(index, items, (1, 2, 3, 5, 10))}\n")
        print("| budget tokens | strategy | ran as | search calls allowed | accuracy "
              "| mean tokens | mean search calls | mean samples |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for budget in (int(b) for b in args.budgets.split(",")):
            runs = [("sequential", 0), ("parallel_vote", 0)]
            runs += [("search", int(c)) for c in args.calls.split(",")]
            for strategy, calls in runs:
                r = await evaluate(items, texts, data_dir, strategy, budget, calls)
                ran = ", ".join(f"{s} {n}" for s, n in sorted(r["ran"].items()))
                print(f"| {budget} | {strategy} | {ran} "
                      f"| {calls if strategy == 'search' else '-'} "
                      f"| {r['accuracy']:.2f} | {r['tokens']:.1f} | {r['searches']:.2f} "
                      f"| {r['samples']:.1f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
