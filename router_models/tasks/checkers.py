"""Exact checking of a model's reply against a task's gold answer, per answer kind.

The final answer is read by ``router_models.answers.extract_answer`` (the gateway's own
extraction, so that votes and checks agree) when that module exists, else by a small fallback
here that reads the last "The answer is X". Each kind then compares strictly:

- number: equal as numbers (commas, ``$`` and trailing ``.0`` ignored); when no answer phrase
  is found, the last number in the reply;
- choice: the option letter (``B``, ``(B)``, ``B) bank``);
- yes_no: the first yes/no word;
- node: the node name (graph connectivity);
- text: exact match after SQuAD-style normalisation (lower case, no punctuation, no articles),
  the HotpotQA exact-match metric (Yang et al. 2018).
"""

from __future__ import annotations

import importlib
import re
import string
from typing import Any

from router_models.tasks import TaskItem

_ANSWER = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s*$|\.\s|\n|$)", re.IGNORECASE)
_FRACTION = re.compile(r"^(-?\d+)/([1-9]\d*)$")
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def _answers_module() -> Any:
    try:
        return importlib.import_module("router_models.answers")
    except ImportError:
        return None


def extract(text: str) -> str | None:
    """The reply's final answer as text, or None when it states none."""
    module = _answers_module()
    if module is not None and hasattr(module, "extract_answer"):
        found = module.extract_answer(text)
        return None if found is None else str(found)
    return _fallback_extract(text)


def _fallback_extract(text: str) -> str | None:
    matches = _ANSWER.findall(text or "")
    if not matches:
        return None
    answer = matches[-1].strip().strip("*").strip()
    return answer.rstrip(".").strip() or None


def parse_number(text: str | None) -> float | None:
    """The number ``text`` holds: a fraction ``p/q`` as a whole, else the first number
    (commas and ``$`` dropped); None when there is none."""
    if not text:
        return None
    fraction = _FRACTION.match(text.strip())
    if fraction:  # extract_answer writes non-terminating fractions as p/q
        return int(fraction.group(1)) / int(fraction.group(2))
    found = _NUMBER.search(text)
    if not found:
        return None
    try:
        return float(found.group().replace(",", "").replace("$", ""))
    except ValueError:
        return None


def normalise_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, punctuation and articles removed, spaces
    collapsed."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parsed(item: TaskItem, reply: str) -> str | None:
    """The reply's answer in the item's kind's canonical form (the vote key and the value
    compared with the gold answer), or None when there is none."""
    answer = extract(reply)
    if item.kind == "number":
        number = parse_number(answer)
        if number is None and answer is None:
            numbers = _NUMBER.findall(reply or "")
            number = parse_number(numbers[-1]) if numbers else None
        if number is None:
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    if answer is None:
        return None
    if item.kind == "choice":
        letter = re.match(r"^\W*([A-Fa-f])(?:\W|$)", answer.strip())
        return letter.group(1).upper() if letter else None
    if item.kind == "yes_no":
        word = re.search(r"\b(yes|no)\b", answer.lower())
        return word.group(1) if word else None
    if item.kind == "node":
        node = re.search(r"\w+", answer)
        return node.group() if node else None
    return normalise_text(answer)


def gold(item: TaskItem) -> str:
    """The item's gold answer in the same canonical form as ``parsed``."""
    if item.kind == "number":
        number = parse_number(item.answer)
        if number is None:
            return item.answer
        return str(int(number)) if number.is_integer() else repr(number)
    if item.kind == "choice":
        return item.answer.strip().upper()
    if item.kind == "yes_no":
        return item.answer.strip().lower()
    if item.kind == "node":
        return item.answer.strip()
    return normalise_text(item.answer)


def check(item: TaskItem, reply: str) -> bool:
    """Whether ``reply`` (a model's text) answers ``item`` correctly."""
    answer = parsed(item, reply)
    return answer is not None and is_correct(item, answer)


def is_correct(item: TaskItem, answer: str) -> bool:
    """Whether ``answer``, in ``parsed``'s canonical form, is the gold answer."""
    if item.kind == "number":
        try:
            got, want = float(answer), float(gold(item))
        except ValueError:
            return answer == gold(item)
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    return answer == gold(item)
