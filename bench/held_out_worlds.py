"""Held-out worlds (a SIMULATION): new traffic, a scripted OpenAI-compatible backend, and `auto`
measured against fixed strategies through real gateway processes.

Written without reading the routing policy, so it was not shaped by it. Four kinds of prompt:

- ``choice``: questions with four lettered options;
- ``word``: arithmetic word problems, a number as the answer;
- ``judge``: yes/no judgements;
- ``lookup``: questions about invented facts, one document each, indexed with
  ``ttc-router index add`` so that the ``search`` strategy can find them.

The backend is a script, not a model. Per item it holds latent facts drawn by the generator and
answers by one of two worlds' rules:

- ``flat``: nothing helps. An item is either known (every call answers right) or not (every call
  gives the same wrong answer), whatever the temperature, ``n``, ``max_tokens`` or documents in
  the prompt. A reply states its answer in its first words, then rambles on to a natural length
  of 60-300 words, so a longer grant only costs tokens.
- ``vote``: votes of short samples win for every kind. Each sampled call (temperature > 0 or
  none given) is right with the item's own probability ``p`` (0.25-0.8), its wrong answers
  spread over the distractors, so a majority of a few samples beats one. A greedy call
  (temperature 0) is one fixed draw with the same chance. A reply reasons for 16-56 words, then
  states its answer and stops: a longer chain buys nothing, a chain cut before its end has no
  answer. Documents in the prompt change nothing.

Tokens are whitespace-separated words, counted by the backend in ``usage``.

Run (about 8-10 minutes on 2 shared cores at the defaults)::

    PYTHONPATH=$PWD .venv/bin/python -m bench.held_out_worlds

The backend alone: ``python -m bench.held_out_worlds backend --world flat --items F --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("choice", "word", "judge", "lookup")
WORLDS = ("flat", "vote")
STRATEGIES = ("direct", "parallel_vote", "sequential", "search")
ANSWER_RE = re.compile(r"answer is \(?([A-Za-z0-9-]+)\)?", re.IGNORECASE)

# Filler the scripted model writes around its answer: no "answer", no SEARCH:, no digits, so
# neither the gateway's answer extraction nor ours can read a vote from it.
_FILLER_TEXT = (
    "Let me go over the question once more and check each part of it carefully. "
    "The wording is plain enough and nothing in it looks like a trick. "
    "I will keep the steps short and make sure each one follows from the last. "
    "Reading it again, the details fit together the way I first thought. "
    "There is no need to bring in anything beyond what the question gives. "
    "Each step checks out when I retrace it from the start."
)
FILLER = _FILLER_TEXT.split()


# ----------------------------------------------------------------------------- items

@dataclass(frozen=True)
class Item:
    """One held-out prompt and the scripted model's latent facts about it.

    ``question`` is the user message as sent; ``answer`` the right answer in lower case;
    ``wrong`` the distractors the model may give; ``known`` (flat world) whether it answers
    right; ``p`` (vote world) the chance that one sample is right and ``u`` the greedy draw
    (right iff ``u < p``); ``length`` the reply's natural length in words (flat: the whole
    ramble, vote: the reasoning before the answer); ``doc`` the lookup's document."""

    id: str
    set: str
    kind: str
    question: str
    answer: str
    wrong: tuple[str, ...]
    known: bool
    p: float
    u: float
    length: int
    doc: dict[str, str] | None = None


NAMES = ("Maya", "Tomas", "Priya", "Jonas", "Aiko", "Farid", "Lena", "Oscar", "Nadia", "Ravi",
         "Greta", "Kwame", "Sofia", "Mateo", "Ines", "Yusuf", "Hana", "Piotr", "Elif", "Bruno")
THINGS = ("apples", "pencils", "stickers", "marbles", "cookies", "postcards", "batteries",
          "candles", "buttons", "seashells")
SYLLABLES = ("ka", "vel", "mor", "tri", "quen", "dra", "lo", "sen", "bar", "thi", "ros", "ul",
             "pen", "gar", "zo", "mir", "tal", "os", "ven", "cor")
EXPORTS = ("saffron", "cobalt", "linen", "amber", "pepper", "timber", "salt", "wool", "tin",
           "coffee", "indigo", "copper")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
GROUPS = {
    "fruit": ("apple", "pear", "plum", "cherry", "mango", "peach"),
    "vegetable": ("carrot", "leek", "onion", "turnip", "celery", "radish"),
    "tool": ("hammer", "wrench", "chisel", "saw", "pliers", "drill"),
    "instrument": ("violin", "trumpet", "flute", "cello", "oboe", "harp"),
}


def _coin(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _options(rng: random.Random, right: str, wrong: Sequence[str]) -> tuple[list[str], str,
                                                                           tuple[str, ...]]:
    values = [right, *wrong[:3]]
    rng.shuffle(values)
    letters = "ABCD"
    return values, letters[values.index(right)].lower(), tuple(
        letters[i].lower() for i, v in enumerate(values) if v != right)


def _choice(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    style = rng.randrange(4)
    if style == 0:
        k = rng.choice((3, 4, 6, 7, 9, 11))
        right = str(k * rng.randint(5, 40))
        wrong: list[str] = []
        while len(wrong) < 3:
            v = rng.randint(20, 400)
            if v % k and str(v) not in wrong:
                wrong.append(str(v))
        values, ans, bad = _options(rng, right, wrong)
        text = (f"Which of the following numbers is divisible by {k}?\n"
                + "\n".join(f"({'ABCD'[i]}) {v}" for i, v in enumerate(values)))
    elif style == 1:
        name = rng.choice(NAMES)
        r = rng.randint(4, 30)
        right = str(r * r)
        wrong = []
        while len(wrong) < 3:
            v = rng.randint(15, 900)
            if int(v ** 0.5) ** 2 != v and str(v) not in wrong:
                wrong.append(str(v))
        values, ans, bad = _options(rng, right, wrong)
        text = (f"{name} needs a number that is a perfect square for a puzzle. The choices are "
                + ", ".join(f"{'ABCD'[i]}) {v}" for i, v in enumerate(values))
                + ". Which one should they pick?")
    elif style == 2:
        group, odd_group = rng.sample(sorted(GROUPS), 2)
        members = rng.sample(GROUPS[group], 3)
        odd = rng.choice(GROUPS[odd_group])
        values, ans, bad = _options(rng, odd, members)
        text = ("Pick the odd one out: "
                + "; ".join(f"({'ABCD'[i]}) {v}" for i, v in enumerate(values)) + ".")
    else:
        base = rng.randint(10, 60)
        right = str(base + rng.randint(30, 90))
        wrong = [str(base + d) for d in rng.sample(range(0, 29), 3)]
        values, ans, bad = _options(rng, right, wrong)
        name = rng.choice(NAMES)
        text = (f"{name} wrote down four scores and wants to circle the highest one. "
                + " ".join(f"Option {'ABCD'[i]}: {v}." for i, v in enumerate(values))
                + " Which option is the highest score?")
    return text, ans, bad


def _near(rng: random.Random, right: int, candidates: Iterable[int]) -> tuple[str, ...]:
    wrong = [c for c in dict.fromkeys(candidates) if c != right and c >= 0]
    while len(wrong) < 3:
        c = right + rng.choice((-3, -2, -1, 1, 2, 5, 10))
        if c != right and c >= 0 and c not in wrong:
            wrong.append(c)
    return tuple(str(c) for c in wrong[:3])


def _word(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    style = rng.randrange(4)
    name = rng.choice(NAMES)
    if style == 0:
        a, b, c = rng.randint(3, 9), rng.randint(4, 12), rng.randint(1, 15)
        thing = rng.choice(THINGS)
        right = a * b - c
        text = (f"{name} buys {a} packs of {thing} with {b} in each pack, then gives {c} of them "
                f"to a neighbour. How many {thing} does {name} have left?")
        wrong = _near(rng, right, (a * b, a * b + c, a + b - c))
    elif style == 1:
        s, h = rng.randint(40, 120), rng.randint(2, 7)
        extra = rng.randint(5, 60)
        right = s * h + extra
        text = (f"A train runs at {s} km per hour for {h} hours and then another {extra} km "
                f"to the depot. How many kilometres does it cover in all?")
        wrong = _near(rng, right, (s * h, s + h + extra, s * (h + 1)))
    elif style == 2:
        a, b, c = rng.randint(20, 90), rng.randint(5, 19), rng.randint(5, 40)
        right = a - b + c
        text = (f"{name} had {a} dollars, spent {b} on lunch and later earned {c} for mowing a "
                f"lawn. How many dollars does {name} have now?")
        wrong = _near(rng, right, (a - b - c, a + b + c, a - b))
    else:
        r, k, t = rng.randint(3, 12), rng.randint(4, 15), rng.randint(1, 20)
        right = r * k - t
        text = (f"A hall has {r} rows of {k} chairs and {t} chairs are already taken. How many "
                f"chairs are still free?")
        wrong = _near(rng, right, (r * k, r * k + t, r + k - t))
    return text, str(right), wrong


def _judge(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    style = rng.randrange(4)
    if style == 0:
        a, b = rng.sample(range(100, 9999), 2)
        text = f"Is {a} greater than {b}? Please answer yes or no."
        right = a > b
    elif style == 1:
        name = rng.choice(NAMES)
        n = rng.randint(11, 999)
        text = f"{name} claims that {n} is an even number. Is {name} right?"
        right = n % 2 == 0
    elif style == 2:
        d = rng.randrange(7)
        k = rng.randint(2, 30)
        guess = rng.choice(((d + k) % 7, rng.randrange(7)))
        text = (f"If today is {DAYS[d]}, will it be a {DAYS[guess]} {k} days from now? "
                f"Yes or no?")
        right = (d + k) % 7 == guess
    else:
        word = _coin(rng).lower() + rng.choice(("ton", "wick", "mere", "ford"))
        letter = rng.choice("aeiourstnl")
        text = f"Does the word \"{word}\" contain the letter '{letter}'? Answer yes or no."
        right = letter in word
    answer = "yes" if right else "no"
    return text, answer, ("no" if right else "yes",)


def _lookup(rng: random.Random) -> tuple[str, str, tuple[str, ...], dict[str, str]]:
    style = rng.randrange(4)
    place = _coin(rng)
    if style == 0:
        year = rng.randint(1620, 1960)
        wrong = tuple(str(year + d) for d in rng.sample((-40, -12, -3, 7, 19, 33), 3))
        title = f"{place} Observatory"
        text = (f"The {place} Observatory stands on a ridge above the valley. It was founded in "
                f"{year} by a society of lens grinders and still opens to visitors at night.")
        question = rng.choice((f"In what year was the {place} Observatory founded?",
                               f"When was the {place} Observatory established? Give the year."))
        answer = str(year)
    elif style == 1:
        person = _coin(rng)
        wrong = tuple(_coin(rng) for _ in range(3))
        title = f"{place} Bridge"
        text = (f"The {place} Bridge crosses the river in three stone arches. It was designed by "
                f"the engineer {person}, whose plans survive in the town archive.")
        question = rng.choice((f"Who designed the {place} Bridge? Give the surname.",
                               f"Which engineer drew up the plans for the {place} Bridge?"))
        answer = person
    elif style == 2:
        export = rng.choice(EXPORTS)
        wrong = tuple(rng.sample([e for e in EXPORTS if e != export], 3))
        title = f"Island of {place}"
        text = (f"The island of {place} lies off the western cape. Its chief export is {export}, "
                f"shipped from the harbour each spring.")
        question = rng.choice((f"What is the chief export of the island of {place}?",
                               f"Traders visit {place} island for one product above all. "
                               f"Which one?"))
        answer = export
    else:
        river = _coin(rng)
        wrong = tuple(_coin(rng) for _ in range(3))
        title = f"{place} (town)"
        text = (f"{place} is a market town of some four thousand people. The river {river} "
                f"flows through its centre and once powered its mills.")
        question = rng.choice((f"Which river flows through the town of {place}?",
                               f"Name the river that runs through the centre of {place}."))
        answer = river
    return question, answer.lower(), tuple(w.lower() for w in wrong), {"title": title,
                                                                        "text": text}


# The worlds' latent parameters per kind: the flat world's chance that an item is known, and
# the vote world's range of per-sample accuracy (the yes/no kind's range sits above one half,
# since with two answers a vote only helps items the model leans right on).
FLAT_KNOWN = {"choice": 0.6, "word": 0.45, "judge": 0.7, "lookup": 0.35}
VOTE_P = {"choice": (0.3, 0.7), "word": (0.25, 0.65), "judge": (0.5, 0.8), "lookup": (0.3, 0.6)}
# Reasoning lengths stay under 59 words, so that a sample of 64 tokens (the narrowest a vote
# draws) states its answer: the winning axis is votes of *short* samples.
VOTE_LENGTH = {"choice": (24, 50), "word": (30, 56), "judge": (16, 36), "lookup": (20, 44)}


def generate(world: str, sets: Sequence[str], per_kind: int, seed: int) -> list[Item]:
    """``per_kind`` fresh items of every kind for each named set, all prompts distinct.

    Returns a list of ``len(sets) * 4 * per_kind`` items; raises ValueError for an unknown
    world."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; one of {WORLDS}")
    rng = random.Random(f"{seed}:{world}")
    seen: set[str] = set()
    items: list[Item] = []
    makers = {"choice": _choice, "word": _word, "judge": _judge}
    for set_name in sets:
        for kind in KINDS:
            made = 0
            while made < per_kind:
                doc = None
                if kind == "lookup":
                    question, answer, wrong, doc = _lookup(rng)
                else:
                    question, answer, wrong = makers[kind](rng)
                if question in seen or any(question in s or s in question for s in seen):
                    continue
                seen.add(question)
                lo, hi = VOTE_P[kind]
                length = (rng.randint(60, 300) if world == "flat"
                          else rng.randint(*VOTE_LENGTH[kind]))
                item_id = f"{world}-{set_name}-{kind}-{made:03d}"
                items.append(Item(item_id, set_name, kind, question, answer, wrong,
                                  rng.random() < FLAT_KNOWN[kind], round(rng.uniform(lo, hi), 3),
                                  round(rng.random(), 3), length,
                                  None if doc is None else {"id": item_id, **doc}))
                made += 1
    return items


def write_items(items: Sequence[Item], path: Path) -> None:
    """One JSON object per item, as the backend reads them."""
    path.write_text("".join(json.dumps(asdict(i)) + "\n" for i in items))


def read_items(path: Path) -> list[Item]:
    """The items ``write_items`` wrote."""
    out = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        raw["wrong"] = tuple(raw["wrong"])
        out.append(Item(**raw))
    return out


# ----------------------------------------------------------------------------- the backend

def _display(item: Item, value: str) -> str:
    return f"({value.upper()})" if item.kind == "choice" else value


def _words(n: int, start: int = 0) -> list[str]:
    return [FILLER[(start + i) % len(FILLER)] for i in range(n)]


@dataclass
class Script:
    """The scripted model of one world over a fixed set of items (thread-safe)."""

    world: str
    items: list[Item]
    seed: int = 0
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for name in ("calls", "unmatched", "lookup_with_document", "lookup_without_document"):
            self.stats[name] += 0
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        # longest question first, so that a question containing another is found as itself
        self._by_length = sorted(self.items, key=lambda i: -len(i.question))

    def find(self, text: str) -> Item | None:
        """The item whose question appears in ``text``, or None."""
        for item in self._by_length:
            if item.question in text:
                return item
        return None

    def _value(self, item: Item, sampled: bool) -> str:
        if self.world == "flat":
            return item.answer if item.known else item.wrong[0]
        if not sampled:
            return item.answer if item.u < item.p else item.wrong[0]
        with self._lock:
            draw = self._rng.random()
            wrong = self._rng.choice(item.wrong)
        return item.answer if draw < item.p else wrong

    def reply(self, text: str, temperature: float | None, cap: int | None) -> tuple[str, int, str]:
        """One choice for a prompt whose messages read ``text``: (content, completion tokens,
        finish_reason). ``cap`` is the call's max_tokens (None: no cap)."""
        item = self.find(text)
        with self._lock:
            self.stats["calls"] += 1
            if item is None:
                self.stats["unmatched"] += 1
            elif item.doc is not None and item.doc["text"] in text:
                self.stats["lookup_with_document"] += 1
            elif item.doc is not None:
                self.stats["lookup_without_document"] += 1
        if item is None:
            words = ["I", "cannot", "tell", "what", "is", "being", "asked."]
        else:
            value = _display(item, self._value(item, temperature is None or temperature > 0))
            stated = f"The answer is {value}.".split()
            if self.world == "flat":
                words = stated + _words(max(0, item.length - len(stated)))
            else:
                words = _words(item.length) + ["So"] + [w.lower() if i == 0 else w
                                                        for i, w in enumerate(stated)]
        if cap is not None and len(words) > cap:
            return " ".join(words[:cap]), cap, "length"
        return " ".join(words), len(words), "stop"


def _message_text(body: dict[str, Any]) -> str:
    if "messages" not in body:
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def make_handler(script: Script, model: str) -> type[BaseHTTPRequestHandler]:
    """An http.server handler serving ``script`` as ``model`` on /v1."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

        def _json(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "script"}]})
            elif self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/stats":
                self._json(200, dict(script.stats))
            else:
                self._json(404, {"error": {"message": "not found", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "bad json", "type": "invalid_request"}})
                return
            chat = self.path.rstrip("/").endswith("/chat/completions")
            if not chat and not self.path.rstrip("/").endswith("/completions"):
                self._json(404, {"error": {"message": "not found", "type": "not_found"}})
                return
            caps = [body[k] for k in ("max_tokens", "max_completion_tokens")
                    if isinstance(body.get(k), int)]
            cap = min(caps) if caps else None
            temperature = body.get("temperature")
            text = _message_text(body)
            n = int(body.get("n") or 1)
            choices = [script.reply(text, temperature, cap) for _ in range(n)]
            usage = {"prompt_tokens": len(text.split()) * n,
                     "completion_tokens": sum(c[1] for c in choices)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            rid = f"{'chatcmpl' if chat else 'cmpl'}-script"
            kind = "chat.completion" if chat else "text_completion"
            if body.get("stream"):
                self._stream(body, rid, kind, chat, choices, usage)
                return
            self._json(200, {"id": rid, "object": kind, "created": int(time.time()),
                             "model": model, "usage": usage, "choices": [
                {"index": i, "finish_reason": fr, "logprobs": None,
                 **({"message": {"role": "assistant", "content": content}} if chat
                    else {"text": content})}
                for i, (content, _, fr) in enumerate(choices)]})

        def _stream(self, body: dict[str, Any], rid: str, kind: str, chat: bool,
                    choices: list[tuple[str, int, str]], usage: dict[str, int]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            base = {"id": rid, "object": kind + ".chunk", "created": int(time.time()),
                    "model": model}
            events = []
            for i, (content, _, fr) in enumerate(choices):
                piece: dict[str, Any] = {"delta": {"role": "assistant", "content": content}} \
                    if chat else {"text": content}
                events.append({**base, "choices": [{"index": i, **piece, "finish_reason": None}]})
                done: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
                events.append({**base, "choices": [{"index": i, **done, "finish_reason": fr}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": usage})
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def serve_backend(world: str, items_path: Path, port: int, seed: int) -> None:
    """Serve the scripted model on 127.0.0.1:``port`` until SIGTERM."""
    script = Script(world, read_items(items_path), seed)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(script, f"script-{world}"))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A started child process and its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; reaps the child."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **(extra or {})}


def _start(args: list[str], log: Path, url: str, ready_path: str,
           env: dict[str, str] | None = None, timeout_s: float = 90) -> Proc:
    import httpx

    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=_env(env))
    proc = Proc(process, url, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[2:5]} exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url.removesuffix("/v1") + ready_path, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"{args[2:5]} not ready in {timeout_s}s:\n{log.read_text(errors='replace')}")


def start_backend(world: str, items_path: Path, workdir: Path, seed: int) -> Proc:
    """This module's backend for ``world`` in a subprocess; its URL ends in /v1."""
    port = free_port()
    return _start([sys.executable, "-m", "bench.held_out_worlds", "backend", "--world", world,
                   "--items", str(items_path), "--port", str(port), "--seed", str(seed)],
                  workdir / f"backend-{world}.log", f"http://127.0.0.1:{port}/v1", "/health")


def start_gateway(upstream: str, data_dir: Path, docs: Path, log: Path) -> Proc:
    """``ttc-router index add DOCS`` then ``ttc-router serve --upstream UPSTREAM``, both with a
    fresh data directory, default settings otherwise (log level warning)."""
    data_dir.mkdir(parents=True)
    env = {"TTC_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-m", "service", "index", "add", str(docs)], cwd=ROOT,
                   env=_env(env), check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    return _start([sys.executable, "-m", "service", "serve", "--upstream", upstream,
                   "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"],
                  log, f"http://127.0.0.1:{port}", "/ready", env)


# ----------------------------------------------------------------------------- traffic

@dataclass(frozen=True)
class Result:
    """One reply: which item, config and repeat, whether its answer was right, what it cost."""

    item: str
    kind: str
    config: str
    rep: int
    correct: bool
    tokens: int
    strategy: str
    budget: int | None
    error: str | None = None
    router: dict[str, Any] | None = None


def extract(content: str) -> str | None:
    """The last 'answer is X' in a reply, lower case, or None."""
    found = ANSWER_RE.findall(content or "")
    return found[-1].lower() if found else None


async def send_all(url: str, jobs: Sequence[tuple[Item, str, int]], concurrency: int,
                   feedback: bool = False) -> list[Result]:
    """Send each (item, config, repeat) to the gateway at ``url`` with ``concurrency`` in
    flight; config is ``auto`` or ``STRATEGY@BUDGET``. With ``feedback``, post the outcome of
    every reply to /v1/feedback. Returns one Result per job, in order."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one(item: Item, config: str, rep: int) -> Result:
            body: dict[str, Any] = {"model": "auto",
                                    "messages": [{"role": "user", "content": item.question}]}
            if config != "auto":
                strategy, budget = config.split("@")
                body["router"] = {"strategy": strategy, "budget_tokens": int(budget)}
            async with gate:
                try:
                    reply = await client.post("/v1/chat/completions", json=body)
                    reply.raise_for_status()
                except httpx.HTTPError as exc:
                    return Result(item.id, item.kind, config, rep, False, 0, "error", None,
                                  f"{type(exc).__name__}: {exc}"[:200])
                data = reply.json()
                router = data.get("router") or {}
                content = data["choices"][0]["message"].get("content") or ""
                correct = extract(content) == item.answer
                if feedback:
                    (await client.post("/v1/feedback", json={
                        "id": router["decision_id"], "correct": correct})).raise_for_status()
            return Result(item.id, item.kind, config, rep, correct,
                          int(data["usage"]["completion_tokens"]), str(router.get("strategy")),
                          router.get("budget_tokens"), router=router)

        return list(await asyncio.gather(*(one(*job) for job in jobs)))


# ----------------------------------------------------------------------------- statistics

def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of k successes in n (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Paired McNemar test (exact binomial, statsmodels) of two equally long outcome lists:
    (only a right, only b right, p-value)."""
    from statsmodels.stats.contingency_tables import mcnemar

    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    both = sum(x and y for x, y in zip(a, b, strict=True))
    neither = len(a) - only_a - only_b - both
    return only_a, only_b, float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)


def _acc(rows: Sequence[Result]) -> float:
    return sum(r.correct for r in rows) / len(rows) if rows else float("nan")


def _tok(rows: Sequence[Result]) -> float:
    return sum(r.tokens for r in rows) / len(rows) if rows else float("nan")


def _ci(rows: Sequence[Result]) -> str:
    lo, hi = wilson(sum(r.correct for r in rows), len(rows))
    return f"{_acc(rows):.3f} [{lo:.3f}, {hi:.3f}]"


def interpolate(fixed: dict[str, list[Result]], strategy: str, tokens: float,
                kind: str | None = None) -> tuple[float, str]:
    """One strategy's accuracy at ``tokens`` mean completion tokens, read off its curve over
    budgets (configs whose mean spends lie within 1 token of each other are pooled; linear
    between neighbours; the end's value outside the curve). Restricted to ``kind`` when given.

    Returns (accuracy, how: "a@x-b@y" or "clipped at a")."""
    points: list[tuple[float, list[Result]]] = []
    for config in sorted(c for c in fixed if c.startswith(strategy + "@")):
        rows = [r for r in fixed[config] if kind is None or r.kind == kind]
        spend = _tok(rows)
        for i, (other, pooled) in enumerate(points):
            if abs(other - spend) <= 1:
                points[i] = (other, pooled + rows)
                break
        else:
            points.append((spend, list(rows)))
    curve = sorted((spend, _acc(rows)) for spend, rows in points)
    if tokens <= curve[0][0]:
        return curve[0][1], f"clipped at {curve[0][0]:.0f}"
    if tokens >= curve[-1][0]:
        return curve[-1][1], f"clipped at {curve[-1][0]:.0f}"
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= tokens <= x1:
            return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), f"{x0:.0f}-{x1:.0f}"
    raise AssertionError("unreachable: tokens lies inside the curve")


def _label(config: str, rows: Sequence[Result]) -> str:
    """``config`` as a table names it: with "(ran as S n, ...)" when some of its replies ran
    another strategy than the one forced (the gateway runs a vote whose budget cannot buy 3
    samples long enough to finish as one chain, ``sequential``)."""
    forced = config.split("@")[0]
    ran = collections.Counter(r.strategy for r in rows if r.error is None)
    if set(ran) <= {forced}:
        return config
    return f"{config} (ran as {', '.join(f'{s} {n}' for s, n in ran.most_common())})"


def _mix(rows: Sequence[Result]) -> str:
    by: dict[str, list[int]] = {}
    for r in rows:
        by.setdefault(r.strategy, []).append(r.budget or 0)
    return ", ".join(f"{s} {len(b)} (budget ~{sum(b) / len(b):.0f})"
                     for s, b in sorted(by.items(), key=lambda kv: -len(kv[1])))


def compare(auto: Sequence[Result], fixed: dict[str, list[Result]], title: str) -> list[str]:
    """Markdown: auto against each fixed strategy at the budget whose mean spend is closest to
    auto's and interpolated at auto's spend; the best of those tested pairwise (McNemar); per
    kind, auto's strategies and the best fixed strategy interpolated at auto's spend there."""
    out = [f"#### {title}", ""]
    auto_tokens = _tok(auto)
    key = {(r.item, r.rep): r for r in auto}
    out += ["| config | n | accuracy [95% Wilson] | mean completion tokens |",
            "| --- | --- | --- | --- |",
            f"| **auto** | {len(auto)} | {_ci(auto)} | {auto_tokens:.1f} |"]
    nearest: dict[str, str] = {}
    for strategy in STRATEGIES:
        configs = [c for c in fixed if c.startswith(strategy + "@")]
        if configs:
            nearest[strategy] = min(configs, key=lambda c: abs(_tok(fixed[c]) - auto_tokens))
    for near in nearest.values():
        rows = fixed[near]
        out.append(f"| {_label(near, rows)} (closest spend) | {len(rows)} | {_ci(rows)} "
                   f"| {_tok(rows):.1f} |")
    best = max(nearest.values(), key=lambda c: _acc(fixed[c]))
    under = [c for c in fixed if _tok(fixed[c]) <= auto_tokens * 1.05]
    best_under = max(under, key=lambda c: (_acc(fixed[c]), -_tok(fixed[c]))) if under else None
    cheapest = min(fixed, key=lambda c: _tok(fixed[c]))
    out.append("")
    picks: list[tuple[str, str | None]] = [
        ("best fixed at the closest spend", best),
        ("best fixed spending at most auto's mean (+5%)", best_under),
        ("cheapest fixed", cheapest)]
    for label, config in picks:
        if config is None:
            out.append(f"- {label}: none")
            continue
        paired = [(key[(r.item, r.rep)].correct, r.correct) for r in fixed[config]
                  if (r.item, r.rep) in key]
        only_auto, only_fixed, p = mcnemar_p([a for a, _ in paired], [b for _, b in paired])
        diff = (_acc(auto) - _acc(fixed[config])) * 100
        out.append(f"- {label}: `{config}`, {_acc(fixed[config]):.3f} at "
                   f"{_tok(fixed[config]):.1f} tokens; auto minus it {diff:+.1f} points, "
                   f"auto at {auto_tokens / _tok(fixed[config]):.2f}x its tokens; McNemar "
                   f"(exact) over {len(paired)} pairs: auto alone right {only_auto}, it alone "
                   f"right {only_fixed}, p = {p:.3g}")
    curves = {s: interpolate(fixed, s, auto_tokens) for s in nearest}
    top = max(curves, key=lambda s: curves[s][0])
    out.append(f"- interpolated at auto's {auto_tokens:.1f} tokens: "
               + "; ".join(f"{s} {a:.3f} ({how})" for s, (a, how) in curves.items())
               + f"; auto minus the best ({top}) {(_acc(auto) - curves[top][0]) * 100:+.1f} "
               "points (no paired test: an interpolated arm has no replies)")
    out += ["", "| kind | auto accuracy | auto tokens | auto's strategies | best fixed "
            "interpolated at auto's spend | auto minus it, points |",
            "| --- | --- | --- | --- | --- | --- |"]
    for kind in KINDS:
        rows = [r for r in auto if r.kind == kind]
        spend = _tok(rows)
        at = {s: interpolate(fixed, s, spend, kind) for s in nearest}
        win = max(at, key=lambda s: at[s][0])
        out.append(f"| {kind} | {_ci(rows)} | {spend:.1f} | {_mix(rows)} | {win} "
                   f"{at[win][0]:.3f} ({at[win][1]}) | {(_acc(rows) - at[win][0]) * 100:+.1f} |")
    out.append("")
    return out


def all_configs(fixed: dict[str, list[Result]]) -> list[str]:
    """Markdown: every fixed config's accuracy and mean tokens, per kind too; a config whose
    replies ran another strategy than the one forced says what they ran (``_label``)."""
    out = ["| config | accuracy [95% Wilson] | tokens |"
           + "".join(f" {k} acc / tokens |" for k in KINDS),
           "| --- | --- | --- |" + " --- |" * len(KINDS)]
    for config, rows in fixed.items():
        cells = "".join(f" {_acc([r for r in rows if r.kind == k]):.3f} / "
                        f"{_tok([r for r in rows if r.kind == k]):.0f} |" for k in KINDS)
        out.append(f"| {_label(config, rows)} | {_ci(rows)} | {_tok(rows):.1f} |{cells}")
    return out + [""]


# ----------------------------------------------------------------------------- the run

@dataclass
class WorldRun:
    """What one world's run recorded."""

    world: str
    auto: list[Result]
    fixed: dict[str, list[Result]]
    rounds: list[list[Result]]
    after: list[Result]
    backend_stats: dict[str, int]
    seconds: float
    learner: dict[str, Any] = field(default_factory=dict)


def run_world(world: str, args: argparse.Namespace, workdir: Path) -> WorldRun:
    """Phase 1 (auto, then every fixed config, on a fresh gateway) and phase 2 (feedback
    rounds, then the held-out set again without feedback, on another fresh gateway)."""
    import httpx

    started = time.monotonic()
    rounds = [f"round{i + 1}" for i in range(args.rounds)]
    items = generate(world, ["heldout", *rounds], args.per_kind, args.seed)
    items_path = workdir / f"items-{world}.jsonl"
    write_items(items, items_path)
    docs = workdir / f"docs-{world}.jsonl"
    docs.write_text("".join(json.dumps(i.doc) + "\n" for i in items if i.doc))
    heldout = [i for i in items if i.set == "heldout"]
    backend = start_backend(world, items_path, workdir, args.seed)
    try:
        gateway = start_gateway(backend.url, workdir / f"data-{world}-1", docs,
                                workdir / f"gateway-{world}-1.log")
        try:
            jobs = [(i, "auto", r) for r in range(args.repeats) for i in heldout]
            auto = asyncio.run(send_all(gateway.url, jobs, args.concurrency))
            _progress(world, "auto", auto, started)
            fixed: dict[str, list[Result]] = {}
            for strategy in STRATEGIES:
                for budget in args.budgets:
                    config = f"{strategy}@{budget}"
                    jobs = [(i, config, r) for r in range(args.repeats) for i in heldout]
                    fixed[config] = asyncio.run(send_all(gateway.url, jobs, args.concurrency))
                    _progress(world, config, fixed[config], started)
        finally:
            gateway.stop()
        gateway = start_gateway(backend.url, workdir / f"data-{world}-2", docs,
                                workdir / f"gateway-{world}-2.log")
        try:
            done_rounds = []
            for name in rounds:
                jobs = [(i, "auto", 0) for i in items if i.set == name]
                done_rounds.append(asyncio.run(send_all(gateway.url, jobs, args.concurrency,
                                                        feedback=True)))
                _progress(world, f"{name} + feedback", done_rounds[-1], started)
            jobs = [(i, "auto", r) for r in range(args.repeats) for i in heldout]
            after = asyncio.run(send_all(gateway.url, jobs, args.concurrency))
            _progress(world, "auto after feedback", after, started)
            # the documented read-only view of what feedback taught (no keys: open to us)
            learner = httpx.get(gateway.url + "/v1/learner", params={"state": "true"},
                                timeout=30).json()
        finally:
            gateway.stop()
        stats = httpx.get(backend.url.removesuffix("/v1") + "/stats", timeout=5).json()
    finally:
        backend.stop()
    return WorldRun(world, auto, fixed, done_rounds, after, stats, time.monotonic() - started,
                    learner)


def _progress(world: str, what: str, rows: Sequence[Result], started: float) -> None:
    errors = sum(r.error is not None for r in rows)
    print(f"[{time.monotonic() - started:6.1f}s] {world}: {what}: accuracy {_acc(rows):.3f}, "
          f"tokens {_tok(rows):.1f}" + (f", {errors} errors" if errors else ""),
          file=sys.stderr, flush=True)


def learner_summary(learner: dict[str, Any]) -> list[str]:
    """Markdown: per kind of the gateway's classifier, the learned policy's outcomes counted
    per strategy (right / counted), its strategy now, its exploring share and switches."""
    out = []
    for name, entry in (learner.get("policies") or {}).items():
        state = entry.get("state") or {}
        current = state.get("current") or {}
        trials, successes = state.get("trials") or [], state.get("successes") or []
        # The learner's own copy makes no decisions, so its explored/decisions counters stay
        # 0: the outcomes of strategies other than a kind's current one are its explorations.
        out.append(f"Learner `{name}` after the feedback rounds (outcomes it counted; those of "
                   f"strategies other than a kind's current one were explored); switches: "
                   f"{json.dumps(state.get('switches') or [])}.")
        out += ["", "| classifier kind | strategy now | "
                + " | ".join(f"{s} right/counted" for s in STRATEGIES) + " |",
                "| --- | --- |" + " --- |" * len(STRATEGIES)]
        for k, (kind, strategy) in enumerate(current.items()):
            if k < len(trials) and sum(trials[k]):
                cells = " | ".join(f"{successes[k][i]:.0f}/{trials[k][i]:.0f}"
                                   for i in range(len(STRATEGIES)))
                out.append(f"| {kind} | {strategy} | {cells} |")
        out.append("")
    return out


def _wrong_examples(rows: Sequence[Result], limit: int) -> list[str]:
    keep = ("strategy", "policy", "budget_tokens", "spent_tokens", "upstream_calls", "samples",
            "votes", "winner", "search_calls", "reason", "early_stop", "chain_after_cut",
            "no_answer", "continued", "temperature", "scores")
    out = []
    for r in [r for r in rows if not r.correct and r.router][:limit]:
        brief = {k: r.router[k] for k in keep if r.router and k in r.router}
        out.append(f"- `{r.item}` ({r.kind}): `{json.dumps(brief, sort_keys=True)}`")
    return out


def report(runs: Sequence[WorldRun], command: str, args: argparse.Namespace) -> str:
    """The markdown report of every world's run."""
    lines = ["# Held-out worlds: `auto` against fixed strategies (SIMULATION)", "",
             "SIMULATION: a scripted backend (bench/held_out_worlds.py), not a model. New "
             "traffic written without reading the routing policy; four kinds (choice: four "
             "lettered options; word: arithmetic word problems; judge: yes/no; lookup: invented "
             "facts, one indexed document each).", "",
             f"Command: `{command}`", "",
             f"Sizes: {args.per_kind} held-out prompts per kind, each sent {args.repeats} times; "
             f"budgets {', '.join(map(str, args.budgets))}; {args.rounds} feedback rounds of "
             f"{args.per_kind} fresh prompts per kind; concurrency {args.concurrency}; seed "
             f"{args.seed}. `auto` is sent with no budget and no max_tokens. The held-out round "
             "after feedback is phase 1's held-out set (no feedback was ever posted on it), so "
             "phase 1's fixed-strategy replies pair with it.", ""]
    for run in runs:
        axis = ("nothing helps: every strategy has the same accuracy per kind at any budget"
                if run.world == "flat" else
                "UNIFORM world, winning axis: votes of short samples (every kind)")
        stats = run.backend_stats
        errors = sum(r.error is not None
                     for rows in (run.auto, run.after, *run.rounds, *run.fixed.values())
                     for r in rows)
        lines += [f"## World `{run.world}`: {axis}", "",
                  f"Run time {run.seconds:.0f} s. Backend calls {stats['calls']}, unmatched "
                  f"prompts {stats['unmatched']}, lookup calls with the document in the prompt "
                  f"{stats['lookup_with_document']}, without {stats['lookup_without_document']}. "
                  f"Errors: {errors}.",
                  "", "### Every fixed config (phase 1)", ""]
        lines += all_configs(run.fixed)
        lines += compare(run.auto, run.fixed, "Phase 1: auto, fresh gateway, no feedback")
        lines += ["Feedback rounds (auto, feedback posted on every reply): "
                  + "; ".join(f"round {i + 1}: {_acc(r):.3f} at {_tok(r):.1f} tokens"
                              for i, r in enumerate(run.rounds)), ""]
        lines += compare(run.after, run.fixed,
                         "Phase 2: auto on the held-out set after the feedback rounds")
        lines += learner_summary(run.learner)
        lines += ["A few wrong replies of auto after feedback (their `router` objects):", ""]
        lines += _wrong_examples(run.after, 4) + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``backend`` serves the scripted model; with no subcommand, runs every
    world and prints (and writes) the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "backend"))
    parser.add_argument("--world", default=",".join(WORLDS),
                        help="world(s), comma-separated: flat, vote")
    parser.add_argument("--items", type=Path, help="backend: the items file")
    parser.add_argument("--port", type=int, default=0, help="backend: port")
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default="64,128,256,512,1024,2048")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/held_out_worlds.md")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp)")
    args = parser.parse_args(argv)
    if args.mode == "backend":
        serve_backend(args.world, args.items, args.port, args.seed)
        return 0
    args.budgets = [int(b) for b in str(args.budgets).split(",")]
    worlds = [w for w in args.world.split(",") if w]
    command = "PYTHONPATH=$PWD .venv/bin/python -m bench.held_out_worlds " + " ".join(
        argv if argv is not None else sys.argv[1:])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="held-out-worlds-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        runs = [run_world(world, args, workdir) for world in worlds]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(runs, command.strip(), args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
