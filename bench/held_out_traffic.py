"""Held-out traffic: `model: "auto"` tried as a new user would, on a world this project never saw.

A SIMULATION. The backend below is a scripted model (FastAPI served by uvicorn in a
subprocess), written without reading the router's policy, and imports nothing from
`router_models` or `service`. No token is generated: replies are built from whitespace words, and
a token is a whitespace word (usage counts them exactly; a reply cut at `max_tokens` has
`finish_reason: "length"`; `n` is honoured).

The world (part 1, "normal"):

- `guess`: knowledge multiple choice. Each sample draws an option from the item's own
  distribution (the right option has probability 0.25-0.95, mean about 0.6), so a vote elects
  the modal option and one chain is one draw. The model reasons 40-90 tokens, writes "The answer
  is (X).", then keeps writing a verification paragraph of 100-300 tokens ("thinks past its
  answer"); half of those paragraphs end with a usual confirmation ("So the answer is indeed
  (B).", "Yes, the answer is correct."). A reply is graded on the line the model committed to
  ("The answer is X." at the start of a line), not on its later checking.
- `chain`: word problems with first names ("Natalia", "James", "Maria"), 3-7 dependent steps of
  60-90 tokens each; each step is right with probability 0.96; the answer is right only when
  the reasoning is finished (a chain cut mid-way, or asked to answer at once, answers with the
  last intermediate value it reached). Also followed by 100-300 tokens of verification.
- `fact`: paraphrased questions about 330 short encyclopedic documents on made-up and
  ordinary-named people and places (indexed with `ttc-router index add`; several titles share
  first names with the word problems: "Natalia Vescu", "James Orrin"). The model knows a fact
  only when the document's sentence stating it is in its messages; else it guesses a wrong value.
- `easy`: one-line easy questions, right 97% of the time in one short line.

The reversed world (part 2) turns the usual winners round: a `guess` is right only after a
long deliberation (450-650 tokens, same result for every sample: a vote is pure waste); a
`chain` is answered in 30-50 tokens and right 45% of the time with scattered wrong answers
(a vote of short samples wins, one long chain does not help); a `fact` is known to the model
(85%) but the indexed documents are stale, so an answer read from them is wrong (search
loses); an `easy` question's outcome is fixed per item whatever is spent (nothing helps).

Run: `.venv/bin/python bench/held_out_traffic.py` (about 20-40 minutes; `--per-kind 10
--bisect-steps 2 --round-size 10` for a quick look).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handler's string annotation

KINDS = ("guess", "chain", "fact", "easy")
# The model commits to its answer on a line of its own; graders read that line.
_COMMITTED = re.compile(r"^The answer is\s+(.+?)\s*$", re.MULTILINE)
# How a verification paragraph may end (half of them do): a reasoning model's usual
# confirmations, restating or merely endorsing the answer it committed to.
CONFIRMATIONS = ["So the answer is indeed {a}.", "This confirms that the answer is {a}.",
                 "Yes, the answer is correct.", "Everything checks out, so I keep {a}.",
                 "The answer is {a}, which matches the question."]
STRATEGIES = ("direct", "parallel_vote", "sequential", "search")

# --------------------------------------------------------------------------------------------
# The world: documents and prompts
# --------------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Natalia", "James", "Maria", "Tom", "Sarah", "Ahmed", "Liu", "Priya", "Carlos", "Emma",
    "Omar", "Grace", "Daniel", "Elena", "Kofi", "Hannah", "Mateo", "Aisha", "Lucas", "Yuki",
]
SHE = {"Natalia", "Maria", "Sarah", "Priya", "Emma", "Grace", "Elena", "Hannah", "Aisha", "Yuki"}
SURNAMES = [
    "Vescu", "Orrin", "Talbrook", "Quenby", "Halvorsen", "Marchetti", "Lindqvist", "Brandt",
    "Ferreira", "Novak", "Castell", "Dunmore", "Pellow", "Ashgrove", "Smith", "Johnson", "Brown",
    "Garcia", "Miller", "Davis", "Wilson", "Moore", "Taylor", "Clark", "Okafor", "Haldane",
    "Verlaine", "Tremont", "Kasprzak", "Mbeki",
]
TOWN_HEADS = ["Kel", "Dun", "Ost", "Harrow", "Marl", "Pen", "Ash", "Wick", "Thorn", "Bram",
              "Cal", "Fen", "Glen", "Hal", "Lor", "Mor", "Quen", "Ros", "Sel", "Tarn"]
TOWN_TAILS = ["vale", "mere", "ford", "gate", "wick", "holm", "by", "stead", "brook", "moor"]
ORDINARY_TOWNS = ["Springfield", "Georgetown", "Riverside", "Fairview", "Milton", "Lakeview",
                  "Ashland", "Franklin", "Greenville", "Salem", "Clinton", "Madison", "Bristol",
                  "Newport", "Oxford", "Victoria", "Kingston", "Hamilton", "Richmond", "Paris"]
RIVERS = ["Tamsin", "Orle", "Vessa", "Brennock", "Ilse", "Marrow", "Quill", "Sable", "Tarrow",
          "Wend", "Calder", "Dovey", "Lune", "Nidd", "Perrin"]
PROFESSIONS = ["glass sculptor", "cartographer", "composer", "botanist", "bridge engineer",
               "novelist", "clockmaker", "photographer", "astronomer", "textile designer"]
WORKS = ["the Glass Orchard", "the Salt Atlas", "the Winter Cantata", "the Fern Register",
         "the Harbour Span", "the Quiet Ledger", "the Lantern Clock", "the Tide Portraits",
         "the Northern Catalogue", "the Indigo Loom", "the Copper Psalter", "the Rain Almanac",
         "the Amber Gate", "the Ninth Orrery", "the Paper Lighthouse"]
AWARDS = ["Halvard Medal", "Orrin Prize", "Silver Compass", "Vessa Award", "Greywater Medal"]
INDUSTRIES = ["shipbuilding", "cheese making", "paper milling", "slate quarrying", "wool weaving",
              "clock making", "salt panning", "glass blowing", "brewing", "rope making"]

# Knowledge tables for multiple choice (the simulated model's accuracy does not depend on them).
CAPITALS = [
    ("France", "Paris"), ("Guyana", "Georgetown"), ("Australia", "Canberra"), ("Canada", "Ottawa"),
    ("Brazil", "Brasilia"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Chile", "Santiago"), ("Turkey", "Ankara"),
    ("Vietnam", "Hanoi"), ("Morocco", "Rabat"), ("Poland", "Warsaw"), ("Jamaica", "Kingston"),
    ("Nigeria", "Abuja"), ("Pakistan", "Islamabad"), ("Switzerland", "Bern"),
    ("New Zealand", "Wellington"), ("Portugal", "Lisbon"), ("Hungary", "Budapest"),
    ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"), ("Ghana", "Accra"),
    ("Finland", "Helsinki"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Greece", "Athens"),
    ("Mexico", "Mexico City"), ("Sweden", "Stockholm"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Colombia", "Bogota"), ("Ethiopia", "Addis Ababa"),
    ("South Korea", "Seoul"), ("Bolivia", "Sucre"), ("Malta", "Valletta"),
    ("Barbados", "Bridgetown"), ("Saint Vincent", "Kingstown"),
]
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("lead", "Pb"), ("sodium", "Na"),
    ("potassium", "K"), ("tin", "Sn"), ("mercury", "Hg"), ("copper", "Cu"), ("tungsten", "W"),
    ("antimony", "Sb"), ("helium", "He"), ("neon", "Ne"), ("zinc", "Zn"), ("nickel", "Ni"),
    ("calcium", "Ca"), ("chlorine", "Cl"), ("sulfur", "S"), ("uranium", "U"), ("iodine", "I"),
    ("platinum", "Pt"), ("magnesium", "Mg"), ("argon", "Ar"), ("cobalt", "Co"),
    ("manganese", "Mn"), ("titanium", "Ti"), ("bismuth", "Bi"), ("arsenic", "As"),
]
BOOKS = [
    ("Pride and Prejudice", "Jane Austen"), ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"),
    ("Middlemarch", "George Eliot"), ("The Trial", "Franz Kafka"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"), ("Ulysses", "James Joyce"),
    ("Things Fall Apart", "Chinua Achebe"), ("Beloved", "Toni Morrison"),
    ("The Stranger", "Albert Camus"), ("Frankenstein", "Mary Shelley"),
    ("Great Expectations", "Charles Dickens"), ("The Odyssey", "Homer"),
    ("Hamlet", "William Shakespeare"), ("Madame Bovary", "Gustave Flaubert"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("Dracula", "Bram Stoker"),
    ("Jane Eyre", "Charlotte Bronte"), ("The Tale of Genji", "Murasaki Shikibu"),
]
ANIMALS = {
    "mammal": ["whale", "bat", "otter", "dolphin", "hedgehog", "platypus", "walrus", "lemur"],
    "bird": ["penguin", "ostrich", "kiwi", "heron", "puffin", "emu", "falcon", "toucan"],
    "reptile": ["gecko", "tortoise", "iguana", "cobra", "alligator", "chameleon"],
    "fish": ["trout", "seahorse", "eel", "salmon", "tuna", "pufferfish"],
    "amphibian": ["frog", "newt", "salamander", "axolotl", "toad"],
}
THINGS = ["clips", "marbles", "stickers", "apples", "books", "cookies", "stamps", "shells",
          "pencils", "cards"]
FILLER = [
    "so", "we", "keep", "track", "of", "the", "count", "and", "check", "that", "each", "quantity",
    "follows", "from", "the", "one", "before", "it", "while", "reading", "the", "problem",
    "again", "carefully", "to", "be", "sure", "nothing", "is", "missed", "and", "the", "units",
    "stay", "the", "same", "through", "every", "line", "of", "the", "work"
]
VERIFY = [
    "let", "me", "verify", "this", "by", "going", "back", "over", "each", "part", "once", "more",
    "and", "checking", "the", "reasoning", "against", "the", "question", "in", "case",
    "something", "was", "misread", "or", "an", "option", "was", "overlooked", "and", "the",
    "other", "readings", "do", "not", "fit", "as", "well", "as", "this", "one", "does"
]


@dataclass
class Item:
    """One prompt of the world: its kind, text, gold answers and the backend's hidden state."""

    id: str
    kind: str
    prompt: str
    gold: str
    gold_reversed: str
    state: dict[str, Any] = field(default_factory=dict)


def _town_names(rng: random.Random, count: int) -> list[str]:
    made_up = sorted({h + t for h in TOWN_HEADS for t in TOWN_TAILS})
    rng.shuffle(made_up)
    return made_up[: count - len(ORDINARY_TOWNS)] + list(ORDINARY_TOWNS)


def build_documents(rng: random.Random, people: int = 200, places: int = 130) -> list[dict]:
    """The indexed collection: `people` person documents and `places` place documents.

    Each document is a dict with `id`, `title`, `text` (what `ttc-router index add` reads) and
    `facts`: attribute -> (value, the sentence stating it, a stale value for the reversed world).
    """
    towns = _town_names(rng, places)
    docs: list[dict] = []
    used: set[str] = set()
    while len(docs) < people:
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        name = f"{first} {last}"
        if name in used:
            continue
        used.add(name)
        pron, obj = ("She", "her") if first in SHE else ("He", "him")
        born, home = rng.randint(1820, 1985), rng.choice(towns)
        work, award, settled = rng.choice(WORKS), rng.choice(AWARDS), rng.choice(towns)
        award_year = born + rng.randint(30, 60)
        prof = rng.choice(PROFESSIONS)
        s_born = f"{name} was born in {born} in {home}."
        s_work = f"{pron} is best known for {work}, which took {obj} {rng.randint(3, 12)} years."
        s_award = f"In {award_year} {name.split()[1]} received the {award}."
        s_settled = f"{pron} later settled in {settled}, where {pron.lower()} taught apprentices."
        text = f"{name} is a {prof}. {s_born} {s_work} {s_award} {s_settled}"
        docs.append({
            "id": f"p{len(docs)}", "title": name, "text": text, "name": name, "type": "person",
            "facts": {
                "born": (str(born), s_born, str(born + rng.choice([-3, -2, 2, 4]))),
                "home": (home, s_born, rng.choice([t for t in towns if t != home])),
                "work": (work, s_work, rng.choice([w for w in WORKS if w != work])),
                "award_year": (str(award_year), s_award, str(award_year + rng.choice([-2, 1, 3]))),
                "settled": (settled, s_settled, rng.choice([t for t in towns if t != settled])),
            },
        })
    for town in towns:
        region = rng.choice(["Vessa", "Upper Calder", "North Marrow", "Brennock", "Lune"])
        river, founded = rng.choice(RIVERS), rng.randint(1120, 1890)
        founder = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
        industry = rng.choice(INDUSTRIES)
        s_river = f"{town} lies on the {river} river in the {region} region."
        s_founded = f"It was founded in {founded} by {founder}."
        s_industry = f"The main industry of {town} is {industry}."
        title = town if town not in ORDINARY_TOWNS else f"{town} ({region})"
        text = (f"{s_river} {s_founded} {s_industry} The town has about "
                f"{rng.randint(2, 90) * 100} inhabitants.")
        docs.append({
            "id": f"t{len(docs)}", "title": title, "text": text, "name": town, "type": "place",
            "facts": {
                "river": (river, s_river, rng.choice([r for r in RIVERS if r != river])),
                "founded": (str(founded), s_founded, str(founded + rng.choice([-40, -7, 12, 55]))),
                "founder": (founder, s_founded,
                            f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"),
                "industry": (industry, s_industry,
                             rng.choice([i for i in INDUSTRIES if i != industry])),
            },
        })
    return docs


FACT_QUESTIONS = {
    "born": ["In what year did {name} come into the world?", "What is {name}'s year of birth?",
             "When was {surname} born?"],
    "home": ["Which town does {name} originally come from?", "What is {name}'s home town?"],
    "work": ["What creation is {name} chiefly remembered for?",
             "Which piece made {surname} famous?"],
    "award_year": ["In which year was {name} given an award?",
                   "When did {surname} win a prize?"],
    "settled": ["Where did {name} eventually make a home and teach?",
                "In which town did {name} end up living?"],
    "river": ["Which river flows through {name}?", "{name} sits on the banks of which river?"],
    "founded": ["When was the settlement of {name} established?",
                "In what year did {name} come into being?"],
    "founder": ["Who established {name}?", "Whom is the founding of {name} credited to?"],
    "industry": ["What is the chief trade of {name}?", "What do most people in {name} work in?"],
}


def _fact_items(rng: random.Random, docs: list[dict], count: int) -> list[Item]:
    pool = [(d, a, q) for d in docs for a in d["facts"] for q in FACT_QUESTIONS[a]]
    rng.shuffle(pool)
    items, seen = [], set()
    for doc, attr, template in pool:
        if len(items) == count:
            break
        if (doc["id"], attr) in seen:
            continue
        seen.add((doc["id"], attr))
        value, sentence, stale = doc["facts"][attr]
        surname = doc["name"].split()[-1]
        prompt = template.format(name=doc["name"], surname=surname)
        prompt = prompt[0].upper() + prompt[1:]
        items.append(Item(f"fact{len(items)}", "fact", prompt, gold=value, gold_reversed=stale,
                          state={"sentence": sentence, "doc_value": value,
                                 "known": rng.random() < 0.85}))
    return items


def _mc_questions(rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(question, right option, three wrong options) triples, shuffled."""
    out = []
    cities = [c for _, c in CAPITALS]
    for country, city in CAPITALS:
        wrong = rng.sample([c for c in cities if c != city], 3)
        out.append((f"What is the capital of {country}?", city, wrong))
        out.append((f"Which city is the seat of government of {country}?", city,
                    rng.sample([c for c in cities if c != city], 3)))
        countries = [c for c, _ in CAPITALS if c != country]
        out.append((f"{city} is the capital of which country?", country,
                    rng.sample(countries, 3)))
    symbols = [s for _, s in ELEMENTS]
    for element, symbol in ELEMENTS:
        out.append((f"What is the chemical symbol for {element}?", symbol,
                    rng.sample([s for s in symbols if s != symbol], 3)))
        names = [e for e, _ in ELEMENTS if e != element]
        out.append((f"Which element has the chemical symbol {symbol}?", element,
                    rng.sample(names, 3)))
    authors = [a for _, a in BOOKS]
    for book, author in BOOKS:
        wrong = rng.sample([a for a in authors if a != author], 3)
        out.append((f"Who wrote {book}?", author, wrong))
    for klass, members in ANIMALS.items():
        others = [a for k, m in ANIMALS.items() if k != klass for a in m]
        for animal in members:
            out.append((f"Which of these animals is a {klass}?", animal, rng.sample(others, 3)))
            out.append((f"Which one of these is a {klass}?", animal, rng.sample(others, 3)))
    rng.shuffle(out)
    return out


def _guess_items(rng: random.Random, count: int) -> list[Item]:
    items = []
    for question, right, wrong in _mc_questions(rng)[:count]:
        options = [right, *wrong]
        rng.shuffle(options)
        letters = "ABCD"
        gold = letters[options.index(right)]
        p_right = rng.uniform(0.25, 0.95)
        rest = [rng.random() + 0.05 for _ in range(3)]
        wrong_letters = [x for x in letters if x != gold]
        probs = {gold: p_right}
        for letter, share in zip(wrong_letters, rest, strict=True):
            probs[letter] = (1 - p_right) * share / sum(rest)
        lines = "\n".join(f"({letter}) {opt}" for letter, opt in zip(letters, options, strict=True))
        prompt = f"{question}\n{lines}\nAnswer with the letter of the right option."
        items.append(Item(f"guess{len(items)}", "guess", prompt, gold, gold, state={
            "probs": probs, "reason_words": rng.randint(40, 90),
            "deliberation_words": rng.randint(450, 650), "long_right": rng.random() < 0.85,
            "trap": rng.choice(wrong_letters)}))
    return items


def _chain_items(rng: random.Random, count: int) -> list[Item]:
    items = []
    while len(items) < count:
        a, b = rng.sample(FIRST_NAMES, 2)
        things = rng.choice(THINGS)
        value = rng.randint(6, 60)
        sentences = [f"{a} has {value} {things}."]
        values = []
        for _ in range(rng.randint(3, 7)):
            op = rng.choice(["buy", "give", "double", "half", "get", "lose", "triple"])
            if op == "half" and value % 2:
                op = "buy"
            if op in ("give", "lose") and value < 10:
                op = "get"
            if op in ("double", "triple") and value > 400:
                op = "give"
            k = rng.randint(2, min(30, max(2, value - 1)))
            if op == "buy":
                value += k
                sentences.append(f"Then {a} buys {k} more {things}.")
            elif op == "give":
                value -= k
                sentences.append(f"After that {a} gives {k} {things} to {b}.")
            elif op == "double":
                value *= 2
                sentences.append(f"Next, {b} doubles what {a} has.")
            elif op == "triple":
                value *= 3
                sentences.append(f"Then {a} trades them so that {a} has three times as many.")
            elif op == "half":
                value //= 2
                sentences.append(f"{a} sells half of the {things}.")
            elif op == "get":
                value += k
                sentences.append(f"{b} gives {a} {k} {things} as a present.")
            else:
                value -= k
                sentences.append(f"On the way home {a} loses {k} {things}.")
            values.append(value)
        prompt = " ".join(sentences) + f" How many {things} does {a} have at the end?"
        items.append(Item(f"chain{len(items)}", "chain", prompt, str(value), str(value), state={
            "values": values, "step_words": [rng.randint(60, 90) for _ in values],
            "name": a, "things": things}))
    return items


def _easy_items(rng: random.Random, count: int) -> list[Item]:
    items, seen = [], set()
    fixed = [("How many days are in a week?", "7"), ("What color do you get by mixing blue and "
             "yellow?", "green"), ("What is the opposite of hot?", "cold"),
             ("How many legs does a spider have?", "8"), ("What is the first letter of the "
             "alphabet?", "A")]
    for question, answer in fixed:
        items.append((question, answer))
    while len(items) < count:
        x, y = rng.randint(2, 19), rng.randint(2, 19)
        op = rng.choice(["+", "-", "times"])
        answer = x + y if op == "+" else x - y if op == "-" else x * y
        question = f"What is {x} {op} {y}?"
        if question not in seen:
            seen.add(question)
            items.append((question, str(answer)))
    rng.shuffle(items)
    return [Item(f"easy{i}", "easy", q, a, a, state={"reversed_right": rng.random() < 0.7})
            for i, (q, a) in enumerate(items[:count])]


def build_world(seed: int, per_kind: int) -> tuple[list[dict], dict[str, list[Item]]]:
    """Documents and `per_kind` items of each kind, drawn from `seed`."""
    rng = random.Random(seed)
    docs = build_documents(rng)
    items = {"guess": _guess_items(rng, per_kind), "chain": _chain_items(rng, per_kind),
             "fact": _fact_items(rng, docs, per_kind), "easy": _easy_items(rng, per_kind)}
    for kind, kind_items in items.items():
        if len(kind_items) < per_kind:
            raise SystemExit(f"the world holds only {len(kind_items)} {kind} items")
    return docs, items


# --------------------------------------------------------------------------------------------
# The backend: a scripted model behind an OpenAI-compatible API (run as a subprocess)
# --------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.replace(">", " ").split()).lower()


def _content(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _filler(rng: random.Random, words: int, source: list[str]) -> list[str]:
    start = rng.randrange(len(source))
    return [source[(start + i) % len(source)] for i in range(words)]


class Model:
    """The scripted model: turns a chat request into lines of words, per the world's rules."""

    OPENING = "Let me work through this."

    def __init__(self, items: list[dict], mode: str) -> None:
        self.items = {it["prompt"]: it for it in items}
        self.mode = mode
        self.counter = 0
        self.stats: collections.Counter[str] = collections.Counter()

    def find_item(self, messages: list[dict]) -> dict | None:
        for message in messages:
            if message.get("role") == "user":
                item = self.items.get(_content(message).strip())
                if item:
                    return item
        joined = "\n".join(_content(m) for m in messages if m.get("role") == "user")
        for prompt, item in self.items.items():
            if prompt in joined:
                return item
        return None

    def sample(self, messages: list[dict], temperature: float, seed: int | None,
               index: int) -> list[str]:
        """One choice's full text (before any cut), as lines."""
        item = self.find_item(messages)
        if item is None:
            self.stats["unknown_prompt"] += 1
            return ["I am not sure what is being asked."]
        self.counter += 1
        if temperature == 0:
            rng = random.Random(f"{item['id']}|greedy")
        elif seed is not None:
            rng = random.Random(f"{item['id']}|{seed}|{index}")
        else:
            rng = random.Random(f"{item['id']}|{self.counter}|{index}|{time.time_ns()}")
        earlier = [_content(m) for m in messages if m.get("role") == "assistant"
                   and _content(m).startswith(self.OPENING)]
        progress = sum(len(t.split()) for t in earlier)
        rushed = bool(earlier) and messages[-1].get("role") == "user"
        if self.mode == "reversed":
            return getattr(self, f"_reversed_{item['kind']}")(item, messages, rng, progress, rushed)
        return getattr(self, f"_{item['kind']}")(item, messages, rng, progress, rushed)

    # normal world --------------------------------------------------------------------------

    def _guess(self, item, messages, rng, progress, rushed):
        st = item["state"]
        letters, weights = zip(*st["probs"].items(), strict=True)
        answer = rng.choices(letters, weights)[0]
        if rushed:
            return [f"The answer is ({answer})."]
        words = max(5, st["reason_words"] + rng.randint(-8, 8))
        reasoning = [self.OPENING, " ".join(_filler(rng, words - 5, FILLER))]
        return [*reasoning, f"The answer is ({answer}).", _verification(rng, f"({answer})")]

    def _chain_lines(self, item, rng, per_step_right: float) -> tuple[list[str], list[int]]:
        st = item["state"]
        values, shown, offset = st["values"], [], 0
        lines = [self.OPENING]
        for i, (value, words) in enumerate(zip(values, st["step_words"], strict=True)):
            if offset == 0 and rng.random() > per_step_right:
                offset = rng.choice([-1, 1]) * rng.randint(1, 9)
            shown.append(value + offset)
            head = f"Step {i + 1}: {st['name']} now has {value + offset} {st['things']}."
            lines.append(head + " " + " ".join(_filler(rng, words - len(head.split()), FILLER)))
        return lines, shown

    def _chain(self, item, messages, rng, progress, rushed):
        if rushed:
            # Asked to answer now: the last value its earlier text reached (the sample's final
            # value only if every step was written).
            earlier = "\n".join(_content(m) for m in messages if m.get("role") == "assistant")
            stated = _COMMITTED.findall(earlier)
            reached = re.findall(r"Step \d+: \S+ now has (-?\d+)", earlier)
            answer = (stated[-1].rstrip(".") if stated else reached[-1] if reached
                      else str(item["state"]["values"][0] // 2))
            return [f"The answer is {answer}."]
        lines, shown = self._chain_lines(item, rng, 0.96)
        return [*lines, f"The answer is {shown[-1]}.", _verification(rng, str(shown[-1]))]

    def _fact(self, item, messages, rng, progress, rushed):
        st = item["state"]
        seen = [_content(m) for m in messages if _content(m).strip() != item["prompt"]]
        visible = _norm(st["sentence"]) in _norm("\n".join(seen))
        self.stats["fact_visible" if visible else "fact_not_visible"] += 1
        if visible:
            answer = st["doc_value"]
            lines = ["According to the passage, " + " ".join(_filler(rng, rng.randint(15, 30),
                                                                     FILLER))]
        else:
            answer = item["gold_reversed"]  # a plausible value of the same type, not the fact
            lines = ["I recall that " + " ".join(_filler(rng, rng.randint(15, 30), FILLER))]
        return [*lines, f"The answer is {answer}."]

    def _easy(self, item, messages, rng, progress, rushed):
        right = rng.random() < 0.97
        answer = item["gold"] if right else _wrong(item["gold"], rng)
        return [f"The answer is {answer}."]

    # reversed world ------------------------------------------------------------------------

    def _reversed_guess(self, item, messages, rng, progress, rushed):
        st = item["state"]
        if rushed:
            hasty = st["trap"] if rng.random() < 0.7 else item["gold"]
            return [f"The answer is ({hasty})."]
        final = item["gold"] if st["long_right"] else st["trap"]
        words = st["deliberation_words"] + rng.randint(-10, 10)
        return [self.OPENING, " ".join(_filler(rng, words, FILLER)), f"The answer is ({final})."]

    def _reversed_chain(self, item, messages, rng, progress, rushed):
        gold = int(item["gold"])
        answer = gold if rng.random() < 0.45 else gold + rng.choice([-1, 1]) * rng.randint(1, 40)
        words = rng.randint(30, 50)
        return [self.OPENING, " ".join(_filler(rng, words, FILLER)), f"The answer is {answer}."]

    def _reversed_fact(self, item, messages, rng, progress, rushed):
        st = item["state"]
        seen = [_content(m) for m in messages if _content(m).strip() != item["prompt"]]
        visible = _norm(st["sentence"]) in _norm("\n".join(seen))
        self.stats["fact_visible" if visible else "fact_not_visible"] += 1
        if visible:
            answer = st["doc_value"]  # stale: the reversed world's gold is another value
        else:
            answer = item["gold_reversed"] if st["known"] else _wrong(item["gold_reversed"], rng)
        return ["I recall that " + " ".join(_filler(rng, rng.randint(15, 30), FILLER)),
                f"The answer is {answer}."]

    def _reversed_easy(self, item, messages, rng, progress, rushed):
        answer = item["gold"] if item["state"]["reversed_right"] else _wrong(item["gold"], None)
        return [f"The answer is {answer}."]


def _verification(rng: random.Random, answer: str) -> str:
    """100-300 words of checking written after the answer; half end with a confirmation."""
    words = rng.randint(100, 300)
    if rng.random() < 0.5:
        closing = rng.choice(CONFIRMATIONS).format(a=answer)
        return " ".join(_filler(rng, words - len(closing.split()), VERIFY) + [closing])
    return " ".join(_filler(rng, words, VERIFY))


def _wrong(gold: str, rng: random.Random | None) -> str:
    if gold.lstrip("-").isdigit():
        return str(int(gold) + (rng.randint(1, 5) if rng else 1))
    return "unknown" if rng is None else rng.choice(["unknown", "blue", "none"])


def _cut(lines: list[str], max_tokens: int | None) -> tuple[str, int, str]:
    """Text, completion tokens (whitespace words) and finish reason under `max_tokens`."""
    out, used = [], 0
    for line in lines:
        words = line.split()
        if max_tokens is not None and used + len(words) > max_tokens:
            keep = max_tokens - used
            if keep > 0:
                out.append(" ".join(words[:keep]))
            return "\n".join(out), max_tokens, "length"
        out.append(line)
        used += len(words)
    return "\n".join(out), used, "stop"


def create_backend(items: list[dict], mode: str):
    """The scripted model's OpenAI-compatible app (model `held-out-sim`) over `items` (dicts of
    `Item` fields) in `mode` ("normal" or "reversed"); `GET /stats` counts what it saw."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    model = Model(items, mode)
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "held-out-sim", "object": "model",
                                            "created": 0, "owned_by": "simulation"}]}

    @app.get("/stats")
    async def stats() -> dict:
        return dict(model.stats)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = body.get("messages") or []
        caps = [body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
        max_tokens = min(caps) if caps else None
        n = int(body.get("n") or 1)
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        choices, completion = [], 0
        for i in range(n):
            lines = model.sample(messages, temperature, body.get("seed"), i)
            text, used, finish = _cut(lines, max_tokens)
            model.stats[f"finish_{finish}"] += 1
            completion += used
            choices.append({"index": i, "finish_reason": finish, "logprobs": None,
                            "message": {"role": "assistant", "content": text}})
        prompt = sum(len(_content(m).split()) for m in messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        rid = f"chatcmpl-sim{model.counter}"
        if not body.get("stream"):
            return JSONResponse({"id": rid, "object": "chat.completion",
                                 "created": int(time.time()),
                                 "model": "held-out-sim", "system_fingerprint": "simulation",
                                 "choices": choices, "usage": usage})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events():
            base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": "held-out-sim"}
            for c in choices:
                for j, piece in enumerate(c["message"]["content"].split(" ")):
                    delta = {"content": piece if j == 0 else " " + piece}
                    yield "data: " + json.dumps({**base, "choices": [
                        {"index": c["index"], "delta": delta, "finish_reason": None}]}) + "\n\n"
                end = {"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}
                yield "data: " + json.dumps({**base, "choices": [end]}) + "\n\n"
            if with_usage:
                yield "data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve_backend(world_file: str, mode: str, port: int) -> None:
    """Run the scripted model at http://127.0.0.1:`port`/v1 (uvicorn, one process)."""
    import uvicorn

    app = create_backend(json.loads(Path(world_file).read_text()), mode)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------
# The harness: processes, traffic, grading
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout_s} s")


def _ttc_router() -> list[str]:
    exe = Path(sys.executable).with_name("ttc-router")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ttc-router")
    if not found:
        raise SystemExit("ttc-router is not installed next to this Python or on PATH")
    return [found]


class World:
    """A backend subprocess in one mode and a gateway subprocess in front of it (own data dir)."""

    def __init__(self, items: list[Item], docs: list[dict], mode: str, workdir: Path) -> None:
        self.dir = workdir / mode
        self.dir.mkdir(parents=True)
        world_file = self.dir / "world.json"
        world_file.write_text(json.dumps([it.__dict__ for it in items]))
        docs_file = self.dir / "docs.jsonl"
        docs_file.write_text("".join(json.dumps({k: d[k] for k in ("id", "title", "text")}) + "\n"
                                     for d in docs))
        data_dir = self.dir / "data"
        env = {**os.environ, "TTC_DATA_DIR": str(data_dir)}
        subprocess.run([*_ttc_router(), "index", "add", str(docs_file), "--data-dir",
                        str(data_dir), "--no-progress"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        bport, gport = _free_port(), _free_port()
        self.backend_url = f"http://127.0.0.1:{bport}"
        self.backend = subprocess.Popen(
            [sys.executable, __file__, "--serve-backend", str(world_file), "--mode", mode,
             "--port", str(bport)], stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "backend.log", "w"))  # noqa: SIM115 (closed with the process)
        _wait(f"{self.backend_url}/v1/models", 30, self.backend)
        self.gateway = subprocess.Popen(
            [*_ttc_router(), "serve", "--upstream", f"{self.backend_url}/v1", "--port", str(gport),
             "--data-dir", str(data_dir), "--log-level", "warning"], env=env,
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "gateway.log", "w"))  # noqa: SIM115
        self.url = f"http://127.0.0.1:{gport}"
        _wait(f"{self.url}/ready", 120, self.gateway)

    def backend_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.backend_url}/stats", timeout=5) as r:
            return json.loads(r.read())

    def close(self) -> None:
        for proc in (self.gateway, self.backend):
            proc.terminate()
        for proc in (self.gateway, self.backend):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def grade(text: str, gold: str) -> bool:
    """True when the first line of `text` that starts "The answer is" (the answer the model
    committed to, not its later checking) states `gold` (case, parentheses and a final full
    stop ignored)."""
    found = _COMMITTED.search(text or "")
    if found is None:
        return False
    return found.group(1).strip().rstrip(".").strip("()").lower() == gold.lower()


@dataclass
class Result:
    """One reply: its item, whether it was right, completion tokens and the router object."""

    item: Item
    correct: bool
    tokens: int
    router: dict
    prompt_tokens: int = 0


def send(client, item: Item, router: dict | None, gold: str, feedback_url: str | None,
         system: str | None) -> Result:
    """One chat request through the gateway (official SDK), after an optional system message;
    optionally posts its feedback."""
    messages = [{"role": "user", "content": item.prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    kwargs: dict[str, Any] = {"model": "auto", "messages": messages}
    if router:
        kwargs["extra_body"] = {"router": router}
    for attempt in range(3):
        try:
            reply = client.chat.completions.create(**kwargs)
            break
        except Exception as exc:  # noqa: BLE001 (reported, then counted wrong)
            if attempt == 2:
                print(f"  request failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                return Result(item, False, 0, {"error": str(exc)[:200]})
            time.sleep(1)
    text = reply.choices[0].message.content or ""
    correct = grade(text, gold)
    meta = (reply.model_extra or {}).get("router") or {}
    if feedback_url:
        req = urllib.request.Request(
            feedback_url, data=json.dumps({"id": meta["decision_id"], "correct": correct}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30):
            pass
    usage = reply.usage
    return Result(item, correct, usage.completion_tokens if usage else 0, meta,
                  usage.prompt_tokens if usage else 0)


def run(world: World, items: list[Item], router: dict | None, *, mode: str, concurrency: int,
        feedback: bool = False, system: str | None = None) -> list[Result]:
    """Send `items` in order through the gateway, `concurrency` at a time."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{world.url}/v1", api_key="unused", timeout=300, max_retries=0)
    feedback_url = f"{world.url}/v1/feedback" if feedback else None
    golds = [it.gold_reversed if mode == "reversed" else it.gold for it in items]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(
            lambda pair: send(client, pair[0], router, pair[1], feedback_url, system),
            zip(items, golds, strict=True)))


def summary(results: list[Result]) -> tuple[float, float, dict[str, float]]:
    """Accuracy, mean completion tokens and accuracy per kind."""
    per_kind = {k: [r.correct for r in results if r.item.kind == k] for k in KINDS}
    return (sum(r.correct for r in results) / len(results),
            sum(r.tokens for r in results) / len(results),
            {k: sum(v) / len(v) for k, v in per_kind.items() if v})


def matched_budget(world: World, items: list[Item], strategy: str, target: float, *, mode: str,
                   steps: int, concurrency: int,
                   system: str | None) -> tuple[int, list[Result], list[tuple]]:
    """Bisection (geometric) on `budget_tokens` so that `strategy` spends `target` mean tokens.

    Returns the budget whose mean spend came closest to `target`, its results and every
    (budget, mean tokens, accuracy) tried.
    """
    lo, hi, budget = None, None, max(16, int(target))
    tried: list[tuple] = []
    best = None
    for _ in range(steps):
        results = run(world, items, {"strategy": strategy, "budget_tokens": budget}, mode=mode,
                      concurrency=concurrency, system=system)
        acc, spend, _ = summary(results)
        tried.append((budget, spend, acc))
        print(f"    {strategy} @ {budget}: {spend:.0f} tokens, accuracy {acc:.3f}", flush=True)
        if best is None or abs(spend - target) < abs(best[1] - target):
            best = (budget, spend, results)
        if abs(spend - target) <= 0.03 * target:
            break
        if spend < target:
            lo = budget
            new = budget * 2 if hi is None else int(math.sqrt(lo * hi))
        else:
            hi = budget
            new = max(8, budget // 2) if lo is None else int(math.sqrt(lo * hi))
        if new in (lo, hi, budget) or new > 32768:
            break
        budget = new
    return best[0], best[2], tried


def _pct(x: float) -> str:
    return f"{x:.2f}"


def print_table(rows: list[tuple[str, str, list[Result]]]) -> None:
    """Accuracy (Wilson 95% interval), mean completion and prompt tokens, and per kind
    "accuracy / mean completion tokens"."""
    from statsmodels.stats.proportion import proportion_confint

    print("| policy | budget_tokens | accuracy [95% CI] | mean completion tokens | "
          "mean prompt tokens | " + " | ".join(KINDS) + " |")
    print("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " |")
    for name, budget, results in rows:
        acc, tokens, per_kind = summary(results)
        lo, hi = proportion_confint(sum(r.correct for r in results), len(results),
                                    method="wilson")
        prompt = sum(r.prompt_tokens for r in results) / len(results)
        kind_tokens = per_kind_tokens(results)
        cells = [f"{_pct(per_kind[k])} / {kind_tokens[k]:.0f}" for k in KINDS if k in per_kind]
        print(f"| {name} | {budget} | {_pct(acc)} [{_pct(lo)}, {_pct(hi)}] | {tokens:.0f} | "
              f"{prompt:.0f} | " + " | ".join(cells) + " |")


def per_kind_tokens(results: list[Result]) -> dict[str, float]:
    out = {}
    for k in KINDS:
        ts = [r.tokens for r in results if r.item.kind == k]
        if ts:
            out[k] = sum(ts) / len(ts)
    return out


def best_per_kind(fixed: dict[str, list[Result]]) -> tuple[dict[str, str], float, float]:
    """Per kind, the fixed strategy with the highest accuracy (fewer tokens break ties)."""
    choice, correct, tokens, count = {}, 0, 0, 0
    for k in KINDS:
        def key(s: str, k: str = k) -> tuple[float, float]:
            rs = [r for r in fixed[s] if r.item.kind == k]
            return (sum(r.correct for r in rs) / len(rs), -sum(r.tokens for r in rs) / len(rs))
        best = max(fixed, key=key)
        choice[k] = best
        rs = [r for r in fixed[best] if r.item.kind == k]
        correct += sum(r.correct for r in rs)
        tokens += sum(r.tokens for r in rs)
        count += len(rs)
    return choice, correct / count, tokens / count


def compare_paired(auto: list[Result], fixed: dict[str, list[Result]],
                   best: dict[str, str]) -> str:
    """Auto minus the best fixed strategy per kind on the same prompts (the runs send the same
    list in the same order), with McNemar's exact test (statsmodels)."""
    other = [fixed[best[r.item.kind]][i] for i, r in enumerate(auto)]
    return "auto minus best fixed per kind: " + _paired(auto, other)


def compare_cross_fitted(auto: list[Result], fixed: dict[str, list[Result]], sends: int
                         ) -> str | None:
    """Auto minus the best fixed strategy per kind, the best chosen on the *other* sends of
    the same prompts (cross-fitting): choosing the best of four noisy arms per kind on the
    replies it is then scored on favours it by about one standard error (the winner's curse),
    so ``compare_paired`` leans against auto. The traffic is the item list repeated ``sends``
    times, so reply i belongs to send ``i // (len(auto) // sends)``. None with one send."""
    if sends < 2 or len(auto) % sends:
        return None
    per_send = len(auto) // sends
    other: list[Result] = []
    for send in range(sends):
        best, _, _ = best_per_kind({s: [r for i, r in enumerate(rs) if i // per_send != send]
                                    for s, rs in fixed.items()})
        other += [fixed[best[auto[i].item.kind]][i]
                  for i in range(send * per_send, (send + 1) * per_send)]
    return ("auto minus the best fixed strategy per kind chosen on the other sends "
            "(cross-fitted): " + _paired(auto, other))


def _paired(auto: list[Result], other: list[Result]) -> str:
    """The paired difference of ``auto`` and ``other`` (the same prompts in the same order):
    accuracy, McNemar's exact p (statsmodels), the discordant pairs and the token ratio."""
    from statsmodels.stats.contingency_tables import mcnemar

    assert all(a.item.id == b.item.id for a, b in zip(auto, other, strict=True))
    table = [[0, 0], [0, 0]]
    for a, b in zip(auto, other, strict=True):
        table[int(not a.correct)][int(not b.correct)] += 1
    diff = (table[0][1] - table[1][0]) / len(auto)
    p = mcnemar(table, exact=True).pvalue
    tokens = sum(r.tokens for r in auto) / max(1, sum(r.tokens for r in other))
    return (f"{diff:+.3f} accuracy (McNemar exact p = {p:.3g}; auto only right {table[0][1]}, "
            f"fixed only right {table[1][0]}), at {tokens:.2f}x its completion tokens")


def strategy_counts(results: list[Result]) -> str:
    """"strategy count, ..." over `results`, with how many of them were explorations."""
    counts = collections.Counter(r.router.get("strategy") for r in results)
    explored = sum("exploring" in (r.router.get("reason") or "") for r in results)
    return ", ".join(f"{s} {c}" for s, c in counts.most_common()) + f" ({explored} explored)"


def print_choices(results: list[Result]) -> None:
    """The strategies auto chose per kind, with their mean budget and accuracy."""
    print("| kind | strategy auto chose | replies | accuracy | mean budget_tokens | "
          "mean completion tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in KINDS:
        groups: dict[str, list[Result]] = collections.defaultdict(list)
        for r in results:
            if r.item.kind == k:
                groups[r.router.get("strategy", "error")].append(r)
        for s, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            budgets = [r.router.get("budget_tokens") or 0 for r in rs]
            print(f"| {k} | {s} | {len(rs)} | {sum(r.correct for r in rs) / len(rs):.2f} | "
                  f"{sum(budgets) / len(rs):.0f} | {sum(r.tokens for r in rs) / len(rs):.0f} |")


def print_bad_examples(results: list[Result], best: dict[str, str], per_kind_max: int = 2) -> None:
    """Wrong `auto` replies whose strategy was not the kind's best fixed strategy."""
    for k in KINDS:
        shown = 0
        for r in results:
            if r.item.kind != k or r.correct or r.router.get("strategy") == best[k]:
                continue
            fields = {f: r.router.get(f) for f in ("strategy", "budget_tokens", "spent_tokens",
                                                    "samples", "votes", "search_calls",
                                                    "continued", "reason", "scores")}
            print(f"- {k} (best fixed: {best[k]}): {r.item.prompt[:90]!r}")
            print(f"  {json.dumps(fields)[:900]}")
            shown += 1
            if shown == per_kind_max:
                break


def print_other_choices(results: list[Result], best: dict[str, str]) -> None:
    """One example per kind and strategy auto chose that is not the kind's best fixed one,
    right or wrong: what the router said when it left the best strategy."""
    seen = set()
    for r in results:
        s = r.router.get("strategy")
        if s == best[r.item.kind] or (r.item.kind, s) in seen:
            continue
        seen.add((r.item.kind, s))
        fields = {f: r.router.get(f) for f in ("strategy", "budget_tokens", "spent_tokens",
                                                "samples", "search_calls", "reason", "scores")}
        print(f"- {r.item.kind} -> {s} ({'right' if r.correct else 'wrong'}, "
              f"{r.tokens} completion + {r.prompt_tokens} prompt tokens): "
              f"{r.item.prompt[:80]!r}")
        print(f"  {json.dumps(fields)[:700]}")


def part_one(args, docs, items_by_kind, workdir: Path) -> None:
    items = [it for k in KINDS for it in items_by_kind[k][: args.per_kind]]
    random.Random(args.seed + 1).shuffle(items)
    traffic = items * args.repeats
    print(f"\n## Part 1: the normal world, no feedback (SIMULATION; {len(items)} prompts, each "
          f"sent {args.repeats} times; {len(docs)} documents indexed)\n", flush=True)
    world = World(items, docs, "normal", workdir)
    try:
        auto, fixed, budgets, stats = auto_against_fixed(world, traffic, "normal", args, "auto")
    finally:
        world.close()
    report(auto, fixed, budgets, stats, args.repeats)


def auto_against_fixed(world: World, traffic: list, mode: str, args, label: str
                       ) -> tuple[list[Result], dict, dict, dict]:
    """``auto`` on ``traffic`` (no feedback), then every fixed strategy at the budget that
    makes it spend what ``auto`` spent (``matched_budget``); returns auto's results, the fixed
    strategies' results and budgets, and the backend's counts."""
    t0 = time.monotonic()
    auto = run(world, traffic, None, mode=mode, concurrency=args.concurrency,
               system=args.system)
    acc, target, _ = summary(auto)
    print(f"  {label}: accuracy {acc:.3f}, {target:.0f} mean tokens "
          f"({time.monotonic() - t0:.0f} s)", flush=True)
    fixed, budgets = {}, {}
    for s in STRATEGIES:
        budgets[s], fixed[s], _ = matched_budget(world, traffic, s, target, mode=mode,
                                                 steps=args.bisect_steps,
                                                 concurrency=args.concurrency,
                                                 system=args.system)
    return auto, fixed, budgets, world.backend_stats()


def report(auto: list[Result], fixed: dict, budgets: dict, stats: dict, sends: int = 1
           ) -> None:
    print("\nSIMULATION (scripted backend, tokens are whitespace words). Fixed strategies at the "
          "budget_tokens whose mean spend came closest to auto's:\n")
    rows = [("auto (no budget, no max_tokens)", "-", auto)]
    rows += [(s, str(budgets[s]), fixed[s]) for s in STRATEGIES]
    print_table(rows)
    best, best_acc, best_tokens = best_per_kind(fixed)
    print(f"\nBest fixed strategy per kind (highest accuracy, fewer tokens break ties): {best}: "
          f"accuracy {best_acc:.2f}, {best_tokens:.0f} mean completion tokens")
    print(compare_paired(auto, fixed, best))
    crossed = compare_cross_fitted(auto, fixed, sends)
    if crossed:
        print(crossed)
    print("\nMean upstream samples per reply (router.samples) and the strategy that ran, per kind "
          "(a forced vote whose budget buys one complete sample runs one chain):\n")
    print("| policy | " + " | ".join(KINDS) + " |")
    print("| --- | " + " | ".join("---" for _ in KINDS) + " |")
    for name, results in [("auto", auto), *fixed.items()]:
        cells = []
        for k in KINDS:
            rs = [r for r in results if r.item.kind == k]
            ran = collections.Counter(r.router.get("strategy") for r in rs).most_common(2)
            samples = sum(r.router.get("samples") or 0 for r in rs) / max(1, len(rs))
            cells.append(f"{samples:.1f}; " + ", ".join(f"{s} {c}" for s, c in ran))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nWhat auto chose:\n")
    print_choices(auto)
    print(f"\nBackend counts: {json.dumps(stats, sort_keys=True)}")
    print("\nWrong auto replies whose strategy was not the kind's best fixed one:\n")
    print_bad_examples(auto, best)
    print("\nOne reply per kind and strategy auto chose other than the kind's best fixed one:\n")
    print_other_choices(auto, best)


def learner_summary(url: str) -> str:
    """What the gateway's learning policy holds, read from its public ``/v1/learner``: per
    kind of prompt its current strategy and, per strategy with outcomes, successes/trials;
    then the switches made. A JSON line; the state's shape is the gateway's, read by key
    only (this harness imports nothing of the router)."""
    with urllib.request.urlopen(f"{url}/v1/learner?state=true", timeout=30) as reply:
        policies = json.load(reply)["policies"]
    out: dict[str, Any] = {}
    for name, entry in policies.items():
        state = entry.get("state") or {}
        # Rows of trials and successes follow the order of ``current``'s kinds, columns the
        # OpenAI-facing strategy names in the gateway's order (the same as STRATEGIES here).
        current = state.get("current") or {}
        trials, successes = state.get("trials") or [], state.get("successes") or []
        per_kind = {}
        for i, (kind, now) in enumerate(current.items()):
            cells = {s: f"{successes[i][j]:g}/{trials[i][j]:g}"
                     for j, s in enumerate(STRATEGIES) if i < len(trials) and trials[i][j]}
            if cells:
                per_kind[kind] = {"current": now, **cells}
        out[name] = {"kinds": per_kind, "switches": [
            f"{s.get('kind')}: {s.get('from')} -> {s.get('to')}"
            for s in state.get("switches") or []]}
    return json.dumps(out)


def part_two(args, docs, items_by_kind, workdir: Path) -> None:
    size, rounds = args.round_size, args.rounds
    per_round = []
    rng = random.Random(args.seed + 2)
    for r in range(rounds + 1):
        chunk = [it for k in KINDS for it in items_by_kind[k][r * size:(r + 1) * size]]
        rng.shuffle(chunk)
        per_round.append(chunk)
    every = [it for chunk in per_round for it in chunk]
    print(f"\n## Part 2: the reversed world, {rounds} rounds of {size} prompts per kind with "
          f"feedback, then a held-out round of {size} per kind without (SIMULATION)\n", flush=True)
    world = World(every, docs, "reversed", workdir)
    try:
        training = []
        for r in range(rounds):
            results = run(world, per_round[r], None, mode="reversed",
                          concurrency=args.concurrency, feedback=True, system=args.system)
            training.append(results)
            acc, tokens, per_kind = summary(results)
            print(f"  round {r + 1}: accuracy {acc:.3f}, {tokens:.0f} mean tokens, "
                  + json.dumps({k: round(v, 2) for k, v in per_kind.items()}), flush=True)
            print("    strategies per kind (explored decisions): " + json.dumps(
                {k: strategy_counts([x for x in results if x.item.kind == k]) for k in KINDS}),
                flush=True)
            print("    the gateway's learner (GET /v1/learner?state=true): "
                  + learner_summary(world.url), flush=True)
        auto, fixed, budgets, stats = auto_against_fixed(world, per_round[rounds], "reversed",
                                                         args, "held-out auto")
    finally:
        world.close()
    print("\nSIMULATION, reversed world. Training rounds (auto, feedback posted for every "
          "reply):\n")
    print_table([(f"auto, round {i + 1}", "-", res) for i, res in enumerate(training)])
    print("\nWhat auto chose in the last training round:\n")
    print_choices(training[-1])
    print("\nHeld-out round (no feedback):")
    report(auto, fixed, budgets, stats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=60, help="part 1 prompts per kind")
    parser.add_argument("--repeats", type=int, default=2, help="times each part 1 prompt is sent")
    parser.add_argument("--rounds", type=int, default=3, help="part 2 rounds with feedback")
    parser.add_argument("--round-size", type=int, default=60,
                        help="part 2 prompts per kind and round")
    parser.add_argument("--bisect-steps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--system", default="You are a helpful assistant.",
                        help="system message sent before every prompt ('' for none)")
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    parser.add_argument("--serve-backend", metavar="WORLD_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="normal", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_backend:
        serve_backend(args.serve_backend, args.mode, args.port)
        return
    need = max(args.per_kind, args.round_size * (args.rounds + 1))
    docs, items_by_kind = build_world(args.seed, need)
    print("# Held-out traffic: `auto` against fixed strategies (SIMULATION: a scripted backend "
          "this project's policy never saw)")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="held-out-") as tmp:
        if args.part in ("1", "both"):
            part_one(args, docs, items_by_kind, Path(tmp))
        if args.part in ("2", "both"):
            part_two(args, docs, items_by_kind, Path(tmp))


if __name__ == "__main__":
    main()
