"""SIMULATION support: recognising which known task a prompt asks, so that the simulated
reasoner knows the family, difficulty and gold answer of what it is asked.

A prompt is recognised, in this order:

1. by a marker anywhere in a message, ``[[sim family=NAME difficulty=0.4 answer=42]]``
   (``difficulty`` and ``answer`` optional), for load tests and hand-written prompts;
2. by its question text: every message's text, and each of its blocks split on blank lines
   (optionally after a ``Question:``/``Q:`` label), is looked up, whitespace- and
   case-insensitively, among the registered items (``TaskItem.question``), so a task's prompt
   is recognised also when a strategy adds instructions or retrieved passages around it;
3. otherwise it is unknown.

``searched`` tells whether retrieved facts are present: text in a system, user or tool message,
besides the question and its instruction, that contains the gold answer (any such text for a
yes/no answer).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from router_models.tasks import (
    GENERATED_SUITES,
    INSTRUCTIONS,
    SUITES,
    SuiteUnavailable,
    TaskItem,
    infer_kind,
    load_suite,
)

MARKER = re.compile(r"\[\[sim\s+([^\]]*)\]\]")
# Generated items the simulator knows by default, per generated suite.
GENERATED_KNOWN = 1000
_LABEL = re.compile(r"^(?:question|q)\s*:\s*", re.IGNORECASE)
CONTEXT_ROLES = frozenset({"system", "developer", "user", "tool", "function"})


def question_spans(text: str, most_blocks: int = 8) -> Iterator[str]:
    """Where a question may sit in a message, in the order matching tries them: the whole
    text, each of its blank-line blocks, then each run of 2 to ``most_blocks`` consecutive
    blocks. A question with paragraphs of its own (BIG-bench's shuffled objects: the players,
    a blank line, the swaps) spans several blocks, and a prompt adds its instruction, or
    retrieved passages, as more. Runs longer than ``most_blocks`` blocks are not tried, so a
    message of many paragraphs costs at most ``most_blocks`` lookups per block."""
    yield text
    blocks = re.split(r"\n\s*\n", text)
    yield from blocks
    for size in range(2, min(most_blocks, len(blocks) - 1) + 1):
        for start in range(len(blocks) - size + 1):
            yield "\n\n".join(blocks[start:start + size])


def _key(text: str) -> str:
    return " ".join(_LABEL.sub("", text.strip()).split()).lower()


@dataclass(frozen=True)
class Match:
    """What a prompt was recognised as: the item, how (``marker``, ``registry`` or
    ``unknown``), whether retrieved facts are present, and the completion tokens already
    spent on it by earlier assistant turns after the question (a continued chain)."""

    item: TaskItem
    how: str
    searched: bool
    prior_tokens: int


class TaskRegistry:
    """Known questions, by normalised question text."""

    def __init__(self, items: Iterable[TaskItem] = (), default_family: str = "independent_mc"):
        self._by_key: dict[str, TaskItem] = {}
        self.default_family = default_family
        self.add(items)

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, items: Iterable[TaskItem]) -> None:
        """Register items (a later item with the same question replaces an earlier one)."""
        for item in items:
            self._by_key[_key(item.question)] = item

    @classmethod
    def default(cls, data_dir: Path | None = None, default_family: str = "independent_mc",
                suites: Sequence[str] = SUITES) -> TaskRegistry:
        """Every suite: the first ``GENERATED_KNOWN`` items of each generated suite and all
        items of each data suite found under ``data_dir`` (those absent are skipped)."""
        registry = cls(default_family=default_family)
        for name in suites:
            limit = GENERATED_KNOWN if name in GENERATED_SUITES else None
            try:
                registry.add(load_suite(name, limit=limit, data_dir=data_dir))
            except SuiteUnavailable:
                continue
        return registry

    def lookup(self, text: str) -> TaskItem | None:
        """The registered item whose question is ``text``, one of its blank-line blocks or a
        run of them (``question_spans``)."""
        for span in question_spans(text):
            found = self._by_key.get(_key(span))
            if found is not None:
                return found
        return None

    def identify(self, messages: Sequence[tuple[str, str]]) -> Match:
        """Recognise a conversation given as (role, text) pairs, in order."""
        for _, text in messages:
            marker = MARKER.search(text)
            if marker:
                return Match(_marker_item(marker.group(1), self.default_family), "marker",
                             False, 0)
        for position in range(len(messages) - 1, -1, -1):
            role, text = messages[position]
            if role not in CONTEXT_ROLES:
                continue
            item = self.lookup(text)
            if item is not None:
                return Match(item, "registry", _searched(item, messages),
                             _prior_tokens(messages[position + 1:]))
        joined = "\n".join(text for _, text in messages)
        return Match(TaskItem(
            suite="unknown", item_id=f"unknown-{zlib.crc32(joined.encode()):08x}",
            family=self.default_family, difficulty=0.5, question=joined,
            answer=str(zlib.crc32(joined.encode()) % 100), kind="number"), "unknown", False, 0)


def _marker_item(spec: str, default_family: str) -> TaskItem:
    fields = dict(part.split("=", 1) for part in spec.split() if "=" in part)
    answer = fields.get("answer", "42")
    try:
        difficulty = float(fields.get("difficulty", 0.5))
    except ValueError:
        difficulty = 0.5
    return TaskItem(suite="marker", item_id=f"marker-{zlib.crc32(spec.encode()):08x}",
                    family=fields.get("family", default_family), difficulty=difficulty,
                    question=spec, answer=answer, kind=infer_kind(answer))


def _searched(item: TaskItem, messages: Sequence[tuple[str, str]]) -> bool:
    question = _key(item.question)
    gold = item.answer.lower()
    for role, text in messages:
        if role not in CONTEXT_ROLES:
            continue
        rest = _key(text).replace(question, " ")
        for instruction in INSTRUCTIONS.values():
            rest = rest.replace(_key(instruction), " ")
        if item.kind == "yes_no" and len(rest.split()) > 8:
            return True
        if item.kind != "yes_no" and gold and gold in rest:
            return True
    return False


def _prior_tokens(later: Sequence[tuple[str, str]]) -> int:
    # The simulator writes one word per token, so earlier replies' words are their tokens.
    return sum(len(text.split()) for role, text in later if role == "assistant")
