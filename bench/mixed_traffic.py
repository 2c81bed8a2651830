"""SIMULATION: mixed traffic through the real gateway, on a backend none of the project's code
models (issue 13's held-out check, played as a new user would).

Everything the backend answers is SIMULATED. It is written here from scratch, as a tiny
OpenAI-compatible server (FastAPI, run by uvicorn in a subprocess), and imports nothing from
``router_models`` or ``service``: it does not share the project's world model
(``router_models.worlds``, ``world_backend``, ``simulation``, ``service.sim``), its prompt
templates or its answer lengths. What runs for real: ``ttc-router index add`` (the local
tantivy index), ``ttc-router serve`` (the classifier, the policies, every strategy, the
ledger) and the official ``openai`` client.

The traffic: four kinds of prompt, ``--per-kind`` (60) of each, every prompt sent twice:

- ``guess``: knowledge multiple choice and numeric estimates. Each sample is an independent
  guess, right with probability 0.6, else one of three wrong answers (weights 0.5/0.3/0.2 of
  the rest), so a majority vote of finished samples helps (self-consistency, Wang et al. 2023).
  A sample takes 40-80 tokens to reach its answer.
- ``chain``: multi-step arithmetic (3 to 7 steps, each needs the last). A chain spends 32-48
  tokens per step and states its answer only when all steps are done (then right with
  probability 0.92: an arithmetic slip otherwise). Cut before that, it states nothing; asked
  for a final answer after a cut, it states the value it had reached, which is wrong. So one
  long chain pays and short vote samples fail (Mirtaheri et al. 2025's compositional tasks).
- ``easy``: one-line easy questions, answered in 8-24 tokens, right with probability 0.95.
- ``fact``: questions about made-up entities whose facts exist only in the document collection
  the bench indexes with ``ttc-router index add``. Right with probability 0.92 when the
  entity's document text is in the request's messages (its name and the answer, as a search
  puts them there), else 0.15 (a guess among four). This model never asks for a search.

Tokens are whitespace-separated words: ``usage.completion_tokens`` is exactly the words
emitted, a reply cut by ``max_tokens`` ends with ``finish_reason: "length"``, ``n`` is
honoured, streams send one chunk per token and their usage at the end. Every answer ends with
"The answer is X." Randomness is a function of (``--seed``, prompt, k), k counting the samples
drawn for that prompt since the last ``POST /reset`` (temperature 0: always k = 0), so the
backend is deterministic given the seed and the order of calls per prompt. The gateway's own
exploration draws and the order of concurrent requests make repeated runs differ a little
(seed 13, three runs: ``auto`` 0.894, 0.894 and 0.896).

The bench: starts that backend, writes the fact documents (JSONL, plus a Markdown file of
distractors) to a temporary folder and indexes them into a temporary data directory, starts
``python -m service serve --upstream`` on it, sends every prompt twice with ``model: "auto"``
(no budget, no ``max_tokens``: the product decides; no feedback: out of the box), then with
``router: {"policy": "rules"}`` (``--policies``), then each fixed strategy through
``router: {"strategy": S, "budget_tokens": B}`` with B found by bisection (on log B, on the
first pass) so that its mean completion tokens match ``auto``'s. A strategy whose answers end
on their own below that mean (a direct answer, one chain, a search) cannot spend more: its
bisection stops where a larger budget buys nothing, and the table shows what it spent. It
prints accuracy, mean completion tokens and correct answers per 1,000 tokens per policy,
per-kind accuracy, the best fixed strategy per kind, what each fixed strategy really ran per
kind (``router.strategy`` and mean samples: at ``auto``'s mean tokens a forced vote rarely buys
3 samples long enough to finish, and the gateway then runs it as one chain, ``sequential``),
and what ``auto`` chose per kind with the classifier's scores read from the ``router`` objects
(``--json`` keeps every reply).

Run (from the repository root; about 30 s of CPU for the bench, its backend and the gateway
together):

    .venv/bin/python bench/mixed_traffic.py [--seed 13] [--per-kind 60] [--passes 2]
        [--strategies direct,parallel_vote,sequential,search] [--policies rules]
        [--system TEXT] [--max-tokens N] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("guess", "chain", "easy", "fact")
MODEL = "mixed-sim"
ROOT = Path(__file__).resolve().parents[1]

# The backend's behaviour (module docstring). Probabilities per finished sample.
GUESS_RIGHT = 0.6
GUESS_WRONG_WEIGHTS = (0.5, 0.3, 0.2)
GUESS_TOKENS = (40, 80)
CHAIN_STEP_TOKENS = (32, 48)
CHAIN_RIGHT = 0.92
EASY_TOKENS = (8, 24)
EASY_RIGHT = 0.95
FACT_TOKENS = (20, 40)
FACT_RIGHT_WITH_DOC = 0.92
FACT_RIGHT_WITHOUT_DOC = 0.15

FILLER = ("first", "consider", "what", "we", "know", "here", "this", "suggests", "that",
          "compare", "carefully", "likely", "reason", "check", "again", "so", "then", "it",
          "follows", "recall", "note", "looking", "at", "each", "part", "one", "more", "time",
          "seems", "plausible", "given", "clue", "think", "about", "case", "alternatives",
          "weigh", "evidence", "quickly", "now")


# ---------------------------------------------------------------- the prompts (own templates)

@dataclass
class Item:
    """One prompt of the mixed traffic and what the simulated model knows about it.

    ``gold``: the right answer as the model would state it; ``wrong``: the wrong answers a
    sample may give instead; ``values``: a chain's running values (start, after step 1, ...);
    ``entity`` and ``doc``: a fact question's entity and the document that holds its answer."""

    id: str
    kind: str
    question: str
    gold: str
    wrong: list[str] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    entity: str = ""
    doc: dict[str, str] | None = None


def _syllable_name(rng: random.Random, parts: int = 2) -> str:
    onsets = ("br", "k", "t", "v", "m", "d", "fl", "gr", "s", "th", "l", "z", "qu", "h", "n")
    vowels = ("a", "e", "i", "o", "u", "ae", "ou", "y")
    codas = ("n", "r", "l", "m", "sk", "th", "nd", "x", "", "rr")
    return "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                   for _ in range(parts)).capitalize()


MC_TOPICS = [
    ("Which of these metals has the highest melting point?",
     ["tungsten", "iron", "copper", "tin", "lead", "zinc"]),
    ("Which planet has the longest day?", ["Venus", "Mars", "Jupiter", "Mercury", "Earth"]),
    ("Which of these animals sleeps the most hours a day?",
     ["koala", "horse", "giraffe", "dolphin", "elephant", "cat"]),
    ("Which instrument usually has the widest pitch range?",
     ["piano", "flute", "violin", "trumpet", "oboe"]),
    ("Which gas makes up the largest share of the air we breathe?",
     ["nitrogen", "oxygen", "argon", "carbon dioxide"]),
    ("Which of these rivers is the longest?", ["Nile", "Danube", "Rhine", "Thames", "Seine"]),
    ("Which organ of the human body uses the most energy at rest?",
     ["brain", "heart", "kidneys", "skin", "stomach"]),
    ("Which of these materials conducts heat best?",
     ["silver", "glass", "wood", "rubber", "granite"]),
    ("Which of these languages has the most native speakers?",
     ["Spanish", "French", "German", "Italian", "Dutch"]),
    ("Which of these trees lives longest?",
     ["bristlecone pine", "birch", "poplar", "willow", "apple"]),
    ("Which of these bones is the longest in the human body?",
     ["femur", "tibia", "humerus", "radius", "ulna"]),
    ("Which of these deserts is the coldest?",
     ["Gobi", "Sahara", "Kalahari", "Sonoran", "Thar"]),
    ("Which of these birds can fly fastest in a dive?",
     ["peregrine falcon", "pigeon", "sparrow", "crow", "duck"]),
    ("Which of these oceans is the deepest on average?",
     ["Pacific", "Atlantic", "Indian", "Arctic"]),
    ("Which of these vitamins is made by the skin in sunlight?",
     ["vitamin D", "vitamin C", "vitamin A", "vitamin K", "vitamin B12"]),
]
MC_FRAMES = [
    "{q}\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}",
    "Pick one. {q} A) {a} B) {b} C) {c} D) {d}",
    "Quiz question: {q}\nOptions:\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nReply with the letter.",
    "{q} Choose from: (A) {a}, (B) {b}, (C) {c} or (D) {d}.",
]
ESTIMATES = [
    ("How many piano tuners would you guess work in a city of {n} million people?", 60),
    ("Roughly how many litres of water does a person drink in {n} years?", 730),
    ("Estimate how many books fit on {n} metres of shelf.", 35),
    ("About how many heartbeats does an adult have in {n} hours?", 4300),
    ("Give a rough estimate: how many grains of rice are in {n} kilograms?", 50000),
    ("How many footballs, roughly, would fit inside {n} city buses?", 25000),
]
ESTIMATE_FRAMES = [
    "{q} A single number is enough.",
    "Fermi estimate, please. {q}",
    "{q} Give your best guess as a whole number.",
]


def _guess_items(rng: random.Random, count: int) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    letters = "ABCD"
    for number in range(count):
        item = _guess_item(rng, number, letters)
        while item.question in seen:  # a question asked twice would share its samples
            item = _guess_item(rng, number, letters)
        seen.add(item.question)
        items.append(item)
    return items


def _guess_item(rng: random.Random, number: int, letters: str) -> Item:
    """One knowledge question: multiple choice (even numbers) or a numeric estimate."""
    if number % 2 == 0:
        question, pool = MC_TOPICS[(number // 2) % len(MC_TOPICS)]
        options = rng.sample(pool, 4)
        frame = MC_FRAMES[(number // 2) % len(MC_FRAMES)]
        text = frame.format(q=question, a=options[0], b=options[1], c=options[2],
                            d=options[3])
        gold_index = rng.randrange(4)
        gold = f"({letters[gold_index]})"
        wrong = [f"({letters[i]})" for i in rng.sample([i for i in range(4)
                                                         if i != gold_index], 3)]
    else:
        template, per_unit = ESTIMATES[(number // 2) % len(ESTIMATES)]
        scale = rng.randint(1, 12)
        frame = ESTIMATE_FRAMES[(number // 2) % len(ESTIMATE_FRAMES)]
        text = frame.format(q=template.format(n=scale))
        value = per_unit * scale
        gold = str(value)
        wrong = [str(max(1, round(value * f))) for f in rng.sample((0.1, 0.5, 2, 3, 10), 3)]
    return Item(f"guess-{number}", "guess", text, gold, wrong)


def _chain_items(rng: random.Random, count: int) -> list[Item]:
    items = []
    for number in range(count):
        steps = 3 + number % 5
        start = rng.randint(5, 40)
        values = [start]
        phrases = []
        style = number % 3
        for _ in range(steps):
            current = values[-1]
            op = rng.choice(("add", "sub", "mul", "half") if current % 2 == 0
                            else ("add", "sub", "mul"))
            if op == "add":
                k = rng.randint(3, 30)
                values.append(current + k)
                phrases.append((f"add {k}", f"{k} more are put in", f"plus {k}"))
            elif op == "sub":
                k = rng.randint(1, max(1, min(current - 1, 25)))
                values.append(current - k)
                phrases.append((f"subtract {k}", f"{k} are taken out", f"minus {k}"))
            elif op == "mul":
                k = rng.randint(2, 4)
                values.append(current * k)
                phrases.append((f"multiply by {k}", f"the count is multiplied by {k}",
                                f"times {k}"))
            else:
                values.append(current // 2)
                phrases.append(("halve it", "half of them are taken out", "divided by 2"))
        if style == 0:
            text = (f"Begin with {start}. Then " + ", then ".join(p[0] for p in phrases)
                    + ". What number do you end up with?")
        elif style == 1:
            text = (f"A crate holds {start} jars. "
                    + " ".join(f"Next, {p[1]}." for p in phrases)
                    + " How many jars are in the crate at the end?")
        else:
            text = (f"Work it out step by step: {start} " + " ".join(p[2] for p in phrases)
                    + ", applying each operation to the result so far, left to right. "
                      "What is the result?")
        items.append(Item(f"chain-{number}", "chain", text, str(values[-1]), values=values))
    return items


EASY_WORDS = [("hot", "cold"), ("up", "down"), ("big", "small"), ("open", "closed"),
              ("early", "late"), ("full", "empty"), ("light", "dark"), ("fast", "slow")]
EASY_COLOURS = [("a ripe banana", "yellow"), ("fresh grass", "green"), ("snow", "white"),
                ("a clear daytime sky", "blue"), ("coal", "black"), ("a ripe tomato", "red")]
EASY_COUNTS = [("days are in a week", 7), ("legs does a spider have", 8),
               ("months are in a year", 12), ("sides does a triangle have", 3),
               ("minutes are in an hour", 60), ("wheels does a bicycle have", 2)]


def _easy_items(rng: random.Random, count: int) -> list[Item]:
    items = []
    for number in range(count):
        style = number % 5
        if style == 0:
            a, b = rng.randint(2, 20), rng.randint(2, 20)
            text, gold = f"What is {a} + {b}?", str(a + b)
            wrong = [str(a + b + 1), str(a + b - 1), str(a * b)]
        elif style == 1:
            word, opposite = EASY_WORDS[(number // 5) % len(EASY_WORDS)]
            text, gold = f"Give the opposite of the word '{word}'.", opposite
            wrong = [word, "warm", "none"]
        elif style == 2:
            thing, colour = EASY_COLOURS[(number // 5) % len(EASY_COLOURS)]
            text, gold = f"What colour is {thing}?", colour
            wrong = [c for _, c in EASY_COLOURS if c != colour][:3]
        elif style == 3:
            what, value = EASY_COUNTS[(number // 5) % len(EASY_COUNTS)]
            text, gold = f"How many {what}?", str(value)
            wrong = [str(value + 1), str(value - 1), str(value * 2)]
        else:
            a, b = rng.sample(range(10, 99), 2)
            text, gold = f"Which number is larger, {a} or {b}?", str(max(a, b))
            wrong = [str(min(a, b)), str(a + b), str(abs(a - b))]
        # the same question twice would share its sample counter: make each one unique
        if any(item.question == text for item in items):
            text = f"{text} ({number})"
        items.append(Item(f"easy-{number}", "easy", text, gold, wrong))
    return items


PLACE_TYPES = ("village", "guild", "observatory", "ferry company", "brewery", "lighthouse")
FACT_ASKS = [
    ("founder", "Who founded the {type} of {name}?",
     "According to the records, who established {name}?"),
    ("year", "In which year was {name} established?",
     "When was the {type} {name} founded? Give the year."),
    ("product", "What is {name} best known for producing?",
     "{name} is famous for making what?"),
]


def _fact_doc(rng: random.Random, name: str, kind: str, founder: str, year: int,
              product: str) -> str:
    region = _syllable_name(rng)
    return (f"{name} is a {kind} in the {region} valley. It was founded in {year} by "
            f"{founder}. Today {name} is best known for its {product}, which traders carry "
            f"down the valley every autumn.")


def _fact_items(rng: random.Random, count: int) -> tuple[list[Item], list[dict[str, str]],
                                                          list[str]]:
    items: list[Item] = []
    docs: list[dict[str, str]] = []
    used: set[str] = set()

    def fresh_name(parts: int = 2) -> str:
        while True:
            name = _syllable_name(rng, parts)
            if name not in used:
                used.add(name)
                return name

    products = [f"{_syllable_name(rng, 1).lower()} {noun}" for noun in
                ("cheese", "rope", "glass", "cider", "cloth", "maps", "bells", "ink")
                for _ in range(3)]
    for number in range(count):
        name = fresh_name()
        place = rng.choice(PLACE_TYPES)
        founder = f"{fresh_name(1)} {fresh_name(2)}"
        year = rng.randint(1400, 1950)
        product = rng.choice(products)
        text = _fact_doc(rng, name, place, founder, year, product)
        doc = {"id": f"fact-{number}", "title": name, "text": text}
        docs.append(doc)
        attribute, *frames = FACT_ASKS[number % len(FACT_ASKS)]
        question = frames[(number // len(FACT_ASKS)) % 2].format(type=place, name=name)
        if attribute == "founder":
            gold = founder
            wrong = [f"{fresh_name(1)} {fresh_name(2)}" for _ in range(3)]
        elif attribute == "year":
            gold = str(year)
            wrong = [str(year + d) for d in rng.sample((-120, -37, -9, 14, 52, 101), 3)]
        else:
            gold = product
            wrong = rng.sample([p for p in products if p != product], 3)
        items.append(Item(f"fact-{number}", "fact", question, gold, wrong, entity=name,
                          doc=doc))
    # distractors: entities nobody asks about, in the same style (a Markdown file)
    distractors = []
    for _ in range(count):
        name = fresh_name()
        founder = f"{fresh_name(1)} {fresh_name(2)}"
        distractors.append(f"# {name}\n\n" + _fact_doc(rng, name, rng.choice(PLACE_TYPES),
                                                       founder, rng.randint(1400, 1950),
                                                       rng.choice(products)))
    return items, docs, distractors


def make_traffic(seed: int, per_kind: int) -> tuple[list[Item], list[dict[str, str]],
                                                    list[str]]:
    """The prompts (``per_kind`` of each kind), the fact documents and the distractor
    passages, all a function of ``seed``."""
    rng = random.Random(f"mixed-traffic:{seed}")
    facts, docs, distractors = _fact_items(rng, per_kind)
    items = (_guess_items(rng, per_kind) + _chain_items(rng, per_kind)
             + _easy_items(rng, per_kind) + facts)
    return items, docs, distractors


# ------------------------------------------------------------------ the simulated model

def _normal(text: str) -> str:
    return " ".join(text.split())


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class SimulatedModel:
    """The backend's model: recognises its own prompts and writes reasoning whose length and
    correctness depend on ``max_tokens`` and the sample (module docstring)."""

    def __init__(self, seed: int, per_kind: int):
        self.seed = seed
        items, _, _ = make_traffic(seed, per_kind)
        self.items = {_normal(item.question): item for item in items}
        self.counters: Counter[str] = Counter()

    def reset(self) -> None:
        """Start every prompt's sample counter again at 0 (a run is then reproducible)."""
        self.counters.clear()

    def find(self, messages: Sequence[dict[str, Any]]) -> tuple[Item | None, int]:
        """The known prompt of the conversation and its message's index (None, -1: none)."""
        for index, message in enumerate(messages):
            if message.get("role") != "user":
                continue
            text = _normal(_content(message))
            item = self.items.get(text)
            if item is not None:
                return item, index
            for question, candidate in self.items.items():
                if question in text:
                    return candidate, index
        return None, -1

    def generate(self, messages: Sequence[dict[str, Any]], max_tokens: int | None,
                 temperature: float) -> tuple[str, str]:
        """One sample: (text, finish_reason); the text's tokens are its words."""
        item, at = self.find(messages)
        if item is None:
            return self._emit(["I", "do", "not", "know", "this", "one."], [], max_tokens)
        if temperature == 0:
            k = 0
        else:
            k = self.counters[item.id]
            self.counters[item.id] += 1
        rng = random.Random(f"{self.seed}:{item.id}:{k}")
        later = [m for m in messages[at + 1:]]
        if item.kind == "chain":
            return self._chain(item, rng, later, max_tokens)
        if item.kind == "guess":
            length = rng.randint(*GUESS_TOKENS)
            right = rng.random() < GUESS_RIGHT
        elif item.kind == "easy":
            length = rng.randint(*EASY_TOKENS)
            right = rng.random() < EASY_RIGHT
        else:
            length = rng.randint(*FACT_TOKENS)
            # the document's text anywhere else in the conversation (search quotes each
            # line of a hit after "> ")
            others = " ".join(re.sub(r"(?m)^> ?", "", _content(m))
                              for i, m in enumerate(messages) if i != at)
            seen = item.doc is not None and _normal(item.doc["text"]) in _normal(others)
            right = rng.random() < (FACT_RIGHT_WITH_DOC if seen else FACT_RIGHT_WITHOUT_DOC)
        answer = item.gold if right else rng.choices(item.wrong, GUESS_WRONG_WEIGHTS)[0]
        tail = ["The", "answer", "is", *f"{answer}.".split()]
        return self._emit(_filler(rng, max(1, length - len(tail))), tail, max_tokens)

    def _chain(self, item: Item, rng: random.Random, later: Sequence[dict[str, Any]],
               max_tokens: int | None) -> tuple[str, str]:
        steps = len(item.values) - 1
        earlier = [_content(m) for m in later if m.get("role") == "assistant"]
        if any(text.startswith("Step 1:") for text in earlier):
            # a continuation of its own cut chain, asked for the answer: it states the value
            # it had reached (the start when no step was complete), wrong unless all were done
            done = re.findall(r"Step \d+: [^.]*? so the value is (-?\d+)\.", " ".join(earlier))
            value = int(done[-1]) if done else item.values[0]
            return self._emit([], ["The", "answer", "is", f"{value}."], max_tokens)
        delta = 0 if rng.random() < CHAIN_RIGHT else rng.choice((-3, -2, -1, 1, 2, 3))
        slip = rng.randint(1, steps) if delta else steps + 1  # an arithmetic slip, carried on
        words: list[str] = []
        value = item.values[0]
        for step in range(1, steps + 1):
            value = item.values[step] + (delta if step >= slip else 0)
            size = rng.randint(*CHAIN_STEP_TOKENS)
            words += ["Step", f"{step}:", *_filler(rng, size - 7), "so", "the", "value",
                      "is", f"{value}."]
        return self._emit(words, ["The", "answer", "is", f"{value}."], max_tokens)

    @staticmethod
    def _emit(body: list[str], tail: list[str], max_tokens: int | None) -> tuple[str, str]:
        words = body + tail
        if max_tokens is not None and len(words) > max_tokens:
            return " ".join(words[:max_tokens]), "length"
        return " ".join(words), "stop"


def _filler(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(max(0, count))]


def serve_backend(port: int, seed: int, per_kind: int) -> None:
    """Run the simulated backend on 127.0.0.1:``port`` until killed (OpenAI's chat
    completions, streamed or not, ``n``, ``max_tokens`` / ``max_completion_tokens``, exact
    ``usage``; ``GET /v1/models``; ``POST /reset`` restarts the sample counters)."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    model = SimulatedModel(seed, per_kind)
    app = FastAPI()
    serial = iter(range(1, 1 << 62))

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                            "owned_by": "simulation"}]}

    @app.post("/reset")
    def reset() -> dict[str, bool]:
        model.reset()
        return {"ok": True}

    async def chat(request: Request) -> Any:
        body = await request.json()
        messages = body.get("messages") or []
        caps = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens"))
                if isinstance(v, int)]
        cap = min(caps) if caps else None
        temperature = float(body.get("temperature", 1.0) if body.get("temperature")
                            is not None else 1.0)
        n = int(body.get("n") or 1)
        samples = [model.generate(messages, cap, temperature) for _ in range(n)]
        prompt_tokens = sum(len(_content(m).split()) for m in messages)
        completion = sum(len(text.split()) for text, _ in samples)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        reply_id = f"chatcmpl-mixed-{next(serial)}"
        head = {"id": reply_id, "created": int(time.time()), "model": MODEL,
                "system_fingerprint": "simulation"}
        if not body.get("stream"):
            return JSONResponse({**head, "object": "chat.completion", "usage": usage,
                                 "choices": [{"index": i, "finish_reason": reason,
                                              "message": {"role": "assistant",
                                                          "content": text}}
                                             for i, (text, reason) in enumerate(samples)]})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events() -> Iterator[bytes]:
            chunk = {**head, "object": "chat.completion.chunk"}
            for i, (text, reason) in enumerate(samples):
                yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                        "content": ""},
                                                  "finish_reason": None}]})
                for number, word in enumerate(text.split()):
                    piece = word if number == 0 else " " + word
                    yield _sse({**chunk, "choices": [{"index": i, "delta": {"content": piece},
                                                      "finish_reason": None}]})
                yield _sse({**chunk, "choices": [{"index": i, "delta": {},
                                                  "finish_reason": reason}]})
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # the annotations are strings (PEP 563) that FastAPI would resolve in this module's
    # globals, where Request is not imported: give it the class itself
    chat.__annotations__["request"] = Request
    app.post("/v1/chat/completions")(chat)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


# ------------------------------------------------------------------------------ grading

ANSWER = re.compile(r"the answer is\s+(.+?)(?:\.(?=\s|$)|$)", re.IGNORECASE | re.MULTILINE)


def extract(text: str) -> str | None:
    """The last "The answer is X." of a reply, normalised (lower case, no brackets or
    trailing full stop); None when there is none."""
    found = ANSWER.findall(text or "")
    return _norm_answer(found[-1]) if found else None


def _norm_answer(text: str) -> str:
    return text.strip().strip(".").strip("()").strip().lower().replace(",", "")


def grade(item: Item, text: str) -> bool:
    """Whether the reply's final answer is the item's gold answer."""
    return extract(text) == _norm_answer(item.gold)


# ---------------------------------------------------------------------- the processes

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path,
              timeout_s: float = 120) -> None:
    """Wait until ``url`` answers 200; raises RuntimeError if the process exits first or
    ``timeout_s`` seconds pass."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited early:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def clean_env() -> dict[str, str]:
    """This environment without any ``TTC_*`` setting (the bench sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}


# ----------------------------------------------------------------------------- the runs

@dataclass
class Reply:
    """One request's outcome."""

    item: str
    kind: str
    correct: bool
    tokens: int
    router: dict[str, Any]
    error: str | None = None


class Client:
    """Sends the traffic through the gateway with the official ``openai`` client."""

    def __init__(self, gateway: str, backend: str, items: list[Item], concurrency: int,
                 seed: int, system: str | None = None, max_tokens: int | None = None):
        import openai
        self.client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused",
                                    max_retries=0, timeout=120)
        self.backend = backend
        self.items = items
        self.concurrency = concurrency
        self.seed = seed
        self.system = system  # a system turn before every question, as many clients send
        self.max_tokens = max_tokens  # the client's own cap on every request

    def run(self, router: dict[str, Any] | None, passes: int) -> list[Reply]:
        """Every prompt ``passes`` times (pass after pass, each in its own shuffled order),
        with the backend's sample counters reset first."""
        import httpx
        httpx.post(self.backend + "/reset", timeout=10).raise_for_status()
        replies: list[Reply] = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for number in range(passes):
                order = list(self.items)
                random.Random(f"{self.seed}:order:{number}").shuffle(order)
                replies += list(pool.map(lambda item: self.send(item, router), order))
        return replies

    def send(self, item: Item, router: dict[str, Any] | None) -> Reply:
        import openai
        extra = {"router": router} if router else None
        messages = [{"role": "user", "content": item.question}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        cap = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        try:
            reply = self.client.chat.completions.create(
                model="auto", messages=messages, extra_body=extra, **cap)
        except openai.APIError as exc:
            return Reply(item.id, item.kind, False, 0, {}, error=str(exc)[:200])
        info = (reply.model_extra or {}).get("router") or {}
        text = reply.choices[0].message.content or ""
        return Reply(item.id, item.kind, grade(item, text), reply.usage.completion_tokens,
                     info)


def summary(replies: Sequence[Reply]) -> dict[str, Any]:
    """Accuracy, mean completion tokens, mean samples (``router.samples``) and the strategies
    the gateway ran (``ran``: ``router.strategy`` -> replies; a forced vote it cannot afford
    runs as ``sequential``), overall and per kind."""
    def stats(rows: Sequence[Reply]) -> dict[str, Any]:
        answered = [r for r in rows if r.error is None]
        ran = collections.Counter(str(r.router.get("strategy")) for r in answered)
        return {"accuracy": sum(r.correct for r in rows) / len(rows) if rows else math.nan,
                "mean_tokens": sum(r.tokens for r in rows) / len(rows) if rows else math.nan,
                "samples": (sum(r.router.get("samples") or 0 for r in answered) / len(answered)
                            if answered else math.nan),
                "ran": dict(ran.most_common()),
                "requests": len(rows), "errors": sum(r.error is not None for r in rows)}
    return {"all": stats(replies),
            **{kind: stats([r for r in replies if r.kind == kind]) for kind in KINDS}}


def match_budget(evaluate: Callable[[int], float], target: float, low: int = 8,
                 high: int = 4096, tolerance: float = 0.03, steps: int = 7
                 ) -> tuple[int, list[tuple[int, float]]]:
    """The budget whose mean tokens are nearest ``target``: bisection on log budget (mean
    tokens do not decrease with the budget), stopping within ``tolerance`` (relative), or
    when a larger budget spent exactly what a smaller one did (the strategy's answers end on
    their own below the target: it cannot spend more). Returns (budget, [(budget, mean
    tokens) tried]); of budgets equally near, the smallest."""
    tried: list[tuple[int, float]] = []

    def measure(budget: int) -> float:
        spent = evaluate(budget)
        tried.append((budget, spent))
        return spent

    lo, hi = math.log(low), math.log(high)
    budget = max(low, min(high, round(target)))
    for _ in range(steps):
        spent = measure(budget)
        if abs(spent - target) <= tolerance * target:
            break
        if spent < target and any(b < budget and abs(t - spent) < 1e-9 for b, t in tried):
            break  # saturated: a larger budget buys nothing more (answers end on their own)
        if spent < target:
            lo = math.log(budget)
        else:
            hi = math.log(budget)
        following = round(math.exp(0.5 * (lo + hi)))
        if following == budget or hi - lo < 0.02:
            break
        budget = following
    nearest = min(abs(t - target) for _, t in tried)
    best = min(b for b, t in tried if abs(t - target) == nearest)  # the cheapest such budget
    return best, tried


def _check_errors(name: str, replies: Sequence[Reply]) -> None:
    """Say how many requests failed, with the first error; raise when most did (a broken
    set-up, not a figure)."""
    failed = [r for r in replies if r.error is not None]
    if failed:
        print(f"{name}: {len(failed)} of {len(replies)} requests failed; first: "
              f"{failed[0].error}", flush=True)
    if len(failed) > len(replies) // 2:
        raise RuntimeError(f"{name}: most requests failed")


def describe_auto(replies: Sequence[Reply]) -> list[str]:
    """Per kind: the strategies ``auto`` chose, their budgets, the classifier's scores and
    the reasons it gave (from the ``router`` objects)."""
    lines = []
    for kind in KINDS:
        rows = [r for r in replies if r.kind == kind and r.router]
        if not rows:
            continue
        chosen = Counter(r.router.get("strategy") for r in rows)
        right = {s: sum(r.correct for r in rows if r.router.get("strategy") == s)
                 for s in chosen}
        scores = [r.router.get("scores") or {} for r in rows]

        def mean(key: str, values: list[dict[str, Any]] = scores) -> float:
            found = [float(s[key]) for s in values if s.get(key) is not None]
            return sum(found) / len(found) if found else math.nan

        budgets = [r.router.get("budget_tokens") or 0 for r in rows]
        forms = Counter(s.get("form") for s in scores)
        steps = Counter(s.get("steps") for s in scores)
        lines.append(f"- {kind}: " + ", ".join(
            f"{s} {c} ({right[s]}/{c} right)" for s, c in chosen.most_common())
            + f"; budget mean {sum(budgets) / len(budgets):.0f}; scores mean difficulty "
              f"{mean('difficulty'):.2f}, sequential {mean('sequential'):.2f}, search "
              f"{mean('search'):.2f}; forms {dict(forms.most_common(3))}; steps "
              f"{dict(sorted(steps.items(), key=lambda kv: str(kv[0])))}")
        reasons = Counter(_reason_shape(r.router.get("reason") or "") for r in rows)
        for reason, count in reasons.most_common(3):
            if reason:
                lines.append(f"    reason x{count}: {reason[:160]}")
    return lines


def _reason_shape(reason: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", reason)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run ``auto`` and the fixed strategies, print the tables."""
    started_cpu = _cpu_s()
    started = time.monotonic()
    items, docs, distractors = make_traffic(args.seed, args.per_kind)
    work = Path(tempfile.mkdtemp(prefix="mixed-traffic-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        backend_port, gateway_port = free_port(), free_port()
        backend_log, gateway_log = work / "backend.log", work / "gateway.log"
        with backend_log.open("wb") as out:
            backend = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-backend",
                 "--port", str(backend_port), "--seed", str(args.seed),
                 "--per-kind", str(args.per_kind)],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        processes.append(backend)
        backend_url = f"http://127.0.0.1:{backend_port}"
        wait_http(backend_url + "/v1/models", backend, backend_log)

        data_dir = work / "data"
        corpus = work / "corpus"
        corpus.mkdir()
        (corpus / "facts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (corpus / "more-places.md").write_text("\n\n".join(distractors) + "\n")
        indexed = subprocess.run(
            [sys.executable, "-m", "service", "index", "add", str(corpus / "facts.jsonl"),
             str(corpus / "more-places.md"), "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=clean_env(), cwd=ROOT)
        if indexed.returncode != 0:
            raise RuntimeError(f"ttc-router index add failed:\n{indexed.stderr[-2000:]}")
        stats = subprocess.run(
            [sys.executable, "-m", "service", "index", "stats", "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=clean_env(), cwd=ROOT)
        print(f"index: {' '.join(stats.stdout.split())}", flush=True)

        with gateway_log.open("wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--upstream", backend_url + "/v1",
                 "--port", str(gateway_port), "--data-dir", str(data_dir),
                 "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)
        processes.append(gateway)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_http(gateway_url + "/ready", gateway, gateway_log)
        client = Client(gateway_url, backend_url, items, args.concurrency, args.seed,
                        args.system, args.max_tokens)

        results: dict[str, Any] = {"seed": args.seed, "per_kind": args.per_kind,
                                   "passes": args.passes, "system": args.system,
                                   "max_tokens": args.max_tokens, "policies": {}}
        auto = client.run(None, args.passes)
        _check_errors("auto", auto)
        auto_summary = summary(auto)
        target = auto_summary["all"]["mean_tokens"]
        results["policies"]["auto"] = {"summary": auto_summary, "budget": None}
        print(f"auto: accuracy {auto_summary['all']['accuracy']:.3f}, mean tokens "
              f"{target:.1f} ({_elapsed(started)})", flush=True)

        others: dict[str, list[Reply]] = {}
        for policy in args.policies:  # the same traffic planned by another named policy
            others[policy] = client.run({"policy": policy}, args.passes)
            _check_errors(f"auto:{policy}", others[policy])
            results["policies"][f"auto:{policy}"] = {"summary": summary(others[policy]),
                                                     "budget": None}

        fixed: dict[str, list[Reply]] = {}
        for strategy in args.strategies:
            cache: dict[int, list[Reply]] = {}

            def evaluate(budget: int, strategy: str = strategy,
                         cache: dict[int, list[Reply]] = cache) -> float:
                cache[budget] = client.run({"strategy": strategy, "budget_tokens": budget}, 1)
                return summary(cache[budget])["all"]["mean_tokens"]

            budget, tried = match_budget(evaluate, target)
            replies = client.run({"strategy": strategy, "budget_tokens": budget}, args.passes)
            _check_errors(strategy, replies)
            fixed[strategy] = replies
            results["policies"][strategy] = {"summary": summary(replies), "budget": budget,
                                             "bisection": tried}
            print(f"{strategy}: budget {budget} (tried {tried}) "
                  f"({_elapsed(started)})", flush=True)

        results["auto_choices"] = describe_auto(auto)
        results["other_choices"] = {p: describe_auto(rows) for p, rows in others.items()}
        results["auto_replies"] = [asdict(r) for r in auto]
        results["other_replies"] = {p: [asdict(r) for r in rows] for p, rows in others.items()}
        results["fixed_replies"] = {s: [asdict(r) for r in rows] for s, rows in fixed.items()}
    finally:
        for process in reversed(processes):
            stop(process)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    # after the backend and the gateway were reaped: their CPU time is counted
    results["cpu_s"] = _cpu_s() - started_cpu
    results["wall_s"] = time.monotonic() - started
    print_tables(results)
    return results


def print_tables(results: dict[str, Any]) -> None:
    """The issue's table, per-kind accuracy, the best fixed strategy per kind and
    ``auto``'s choices."""
    policies = results["policies"]
    print(f"\nSIMULATION: mixed traffic, seed {results['seed']}, {results['per_kind']} prompts "
          f"per kind, each sent {results['passes']} times; backend bench/mixed_traffic.py"
          + (f"; system turn {results['system']!r}" if results.get("system") else "")
          + (f"; max_tokens {results['max_tokens']} on every request"
             if results.get("max_tokens") else "") + "\n")
    print("| policy | budget_tokens | accuracy | mean completion tokens | correct per 1k tokens "
          "| errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in policies.items():
        label = ("`auto` (`learned`, out of the box)" if name == "auto" else
                 f"`auto`, `router.policy: {name[5:]}`" if name.startswith("auto:")
                 else f"`{name}`")
        budget = "-" if row["budget"] is None else str(row["budget"])
        s = row["summary"]["all"]
        print(f"| {label} | {budget} | {s['accuracy']:.3f} | {s['mean_tokens']:.1f} | "
              f"{1000 * s['accuracy'] / s['mean_tokens']:.2f} | {s['errors']} |")
    fixed = {k: v for k, v in policies.items() if not k.startswith("auto")}
    if fixed:
        # ties go to the cheaper strategy
        best = {kind: max(fixed, key=lambda s: (fixed[s]["summary"][kind]["accuracy"],
                                                -fixed[s]["summary"][kind]["mean_tokens"]))
                for kind in KINDS}
        accuracy = sum(fixed[best[k]]["summary"][k]["accuracy"] for k in KINDS) / len(KINDS)
        tokens = sum(fixed[best[k]]["summary"][k]["mean_tokens"] for k in KINDS) / len(KINDS)
        print(f"| best fixed strategy per kind ({', '.join(f'{k}: {best[k]}' for k in KINDS)})"
              f" | - | {accuracy:.3f} | {tokens:.1f} | {1000 * accuracy / tokens:.2f} | - |")
    print("\nper kind: accuracy / mean completion tokens\n")
    print("| policy | " + " | ".join(KINDS) + " |")
    print("| --- |" + " --- |" * len(KINDS))
    for name, row in policies.items():
        cells = [f"{row['summary'][k]['accuracy']:.2f} / {row['summary'][k]['mean_tokens']:.0f}"
                 for k in KINDS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if fixed:
        print("\nwhat each fixed strategy ran per kind (router.strategy; mean samples): a forced "
              "vote whose budget cannot buy 3 samples long enough to finish runs one chain\n")
        print("| policy | " + " | ".join(KINDS) + " |")
        print("| --- |" + " --- |" * len(KINDS))
        for name, row in fixed.items():
            cells = []
            for kind in KINDS:
                stats = row["summary"][kind]
                ran = ", ".join(f"{s} {n}" for s, n in stats.get("ran", {}).items())
                cells.append(f"{ran}; {stats.get('samples', math.nan):.1f} samples")
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nwhat `auto` chose per kind (router objects):")
    for line in results["auto_choices"]:
        print(line)
    for policy, lines in results.get("other_choices", {}).items():
        print(f"\nwhat `router.policy: {policy}` chose per kind:")
        for line in lines:
            print(line)
    print(f"\nCPU {results['cpu_s']:.0f} s (the bench, its backend and gateway), wall "
          f"{results['wall_s']:.0f} s")


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.0f} s wall"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--per-kind", type=int, default=60)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--strategies", default="direct,parallel_vote,sequential,search",
                        type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--policies", default="rules",
                        type=lambda s: [x for x in s.split(",") if x],
                        help="other named policies to run `auto` with (router.policy); '' "
                             "for none")
    parser.add_argument("--system", help="a system turn sent before every question")
    parser.add_argument("--max-tokens", type=int,
                        help="the client's max_tokens on every request (default: none)")
    parser.add_argument("--json", type=Path, help="write every figure and reply here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--serve-backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_backend:
        serve_backend(args.port, args.seed, args.per_kind)
        return 0
    results = run_bench(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
