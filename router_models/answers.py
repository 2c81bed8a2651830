"""Final-answer extraction and normalisation, for majority voting and for exact checkers.

Two answers vote together when their normal forms are equal:

- numbers: thousands separators, currency signs and trailing units dropped, fractions and
  decimals compared by value (``1/2`` == ``0.5`` == ``0.50``), integers without ``.0``;
- multiple-choice letters: ``(B)``, ``B)``, ``b.``, ``Option B`` -> ``b``;
- yes/no: ``Yes.``, ``true`` -> ``yes``; ``No``, ``false`` -> ``no``;
- other text: lower case, articles and surrounding punctuation dropped, spaces collapsed.

Where the answer is found, in order: the last ``\\boxed{...}``; the last "the answer is X" /
"final answer: X" / "Answer: X"; then (unless ``strict``) the last line's last number, a lone
choice letter or yes/no, or the last line itself. The markers follow the conventions of
self-consistency evaluation (Wang et al. 2023) and of GSM8K (``#### X``).
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\boxed\s*\{")
_MARKERS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?\s*[:：]?|answer\s*[:：]|####)"
    r"\s*[:：]?[ \t]*",
    re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_CHOICE = re.compile(r"^\(?(?:option\s+|choice\s+)?([a-j])[\).:]?$", re.IGNORECASE)
_YES = frozenset({"yes", "true", "correct", "y"})
_NO = frozenset({"no", "false", "incorrect", "n"})
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_MARKDOWN = re.compile(r"[*_`]")


def extract_answer(text: str | None, *, strict: bool = False) -> str | None:
    """The normalised final answer in a model's output, or None when there is none.

    Args:
        text: the completion text.
        strict: only explicit answers count (``\\boxed{}``, "the answer is", "Answer:",
            ``####``); used to decide whether a chain cut by its budget reached an answer.
    """
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalise(boxed)
    marked = _last_marker(text)
    if marked is not None:
        return normalise(marked)
    if strict:
        return None
    last_line = _last_line(text)
    cleaned = _clean(last_line)
    if _CHOICE.match(cleaned) or cleaned in _YES or cleaned in _NO:
        return normalise(cleaned)
    words = cleaned.replace(",", " ").split()
    if 0 < len(words) <= 3 and (words[-1] in _YES or words[-1] in _NO):  # "So, no."
        return normalise(words[-1])
    numbers = _NUMBER.findall(last_line)
    if numbers:
        return normalise(numbers[-1])
    return normalise(last_line) or None


def normalise(answer: str) -> str:
    """The normal form of an answer string (see the module docstring); "" for no content."""
    cleaned = _clean(answer)
    if not cleaned:
        return ""
    choice = _CHOICE.match(cleaned)
    if choice:
        return choice.group(1).lower()
    first_word = cleaned.split(" ", 1)[0].strip(".,;:!")
    if first_word in _YES:
        return "yes"
    if first_word in _NO:
        return "no"
    number = _as_number(cleaned)
    if number is not None:
        return number
    text = _ARTICLES.sub(" ", cleaned)
    return " ".join(text.replace(",", " ").split()).strip(" .;:!?\"'")


def _clean(text: str) -> str:
    text = _MARKDOWN.sub("", text).strip()
    text = text.strip(" \t\"'`")
    text = text.rstrip(".;:!?,")
    return text.strip().lower()


def _as_number(text: str) -> str | None:
    """A number's canonical form when ``text`` is one number with optional units/currency."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    rest = (text[:match.start()] + text[match.end():]).strip()
    # Allow units and currency around the number ("18 dollars", "$18", "18%"), not prose.
    if len(rest.split()) > 2 or any(ch.isdigit() for ch in rest):
        return None
    raw = match.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in raw:
            numerator, denominator = raw.split("/")
            value = Fraction(int(numerator), int(denominator))
        else:
            value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _last_marker(text: str) -> str | None:
    matches = list(_MARKERS.finditer(text))
    if not matches:
        return None
    value = text[matches[-1].end():].strip()
    # The answer ends at the sentence end: "The answer is 42. Because ..." -> "42"
    value = re.split(r"(?<=[^\d])\.(?:\s|$)|\n", value, maxsplit=1)[0]
    return value.strip() or None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
