"""Whether a prompt is a self-contained arithmetic word problem: it states the quantities its
answer is computed from and asks for a quantity.

"Claire makes a 3 egg omelet every morning. How many dozens of eggs will she eat in 4 weeks?"
carries every fact its answer needs; its names are characters, not subjects of facts held
anywhere else. A question for a document collection asks about its subject ("Were Scott
Derrickson and Ed Wood of the same nationality?", "What is the batting hand of each of the
first five picks in the 1998 MLB draft?"): it may mention a number or two, but it does not
state premises with quantities and ask for a quantity computed from them. So a word problem is
read as one that

- states at least ``MIN_QUANTITIES`` quantities (numerals, number words such as "three" or
  "dozen", multiplicative relations such as "twice" or "half") outside its option lines, since
  an arithmetic relation needs two operands;
- states at least one of them in a premise, a clause that is not itself a question
  ("Claire makes a 3 egg omelet every morning", "If there are 60 girls"); and
- asks for a quantity ("how many", "how much", "how long", "what is the total",
  "calculate", "find the difference").

A year is a date, not an operand ("in 1998"): four-digit numbers from 1000 to 2099 written
without a separator do not count. The rule reads structure, not the words of one benchmark;
``bench/coverage_check.py`` measures it on whole public datasets.
"""

from __future__ import annotations

import re

MIN_QUANTITIES = 2  # an arithmetic relation needs two operands

# Options are not premises: "A) 52%" lines, or several "(A) ... (B) ..." on one line.
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ha-h][.)]\s")
_OPTION_MARK = re.compile(r"(?:^|\s)\(?[A-H][.)](?=\s)")
# Clauses, as ``router_models.steps`` splits them: sentences, lines, ", then", ", and", and the
# question that follows a premise in the same sentence ("If 2 broke, how many are left?").
_CLAUSE = re.compile(r"(?<=[.!?;:])\s+|\n+|,\s*(?:and\s+)?then\s+|,\s+and\s+|\s+and\s+then\s+"
                     r"|(?:,\s*|\s+)(?=(?:how|what|which|who|when|where)\s)", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"(?:how|what|which|who|whom|whose|when|where|why|is|are|was|were|do|does|did|can|could"
    r"|would|will|should)\b", re.IGNORECASE)
# A numeral; an exponent ("cm^3") is part of a unit, not a quantity.
_NUMBER = re.compile(r"(?<![\d^])\d+(?:[.,]\d+)*")
_YEAR = re.compile(r"(?:1\d|20)\d\d")
_WORD = re.compile(r"[a-z]+")
# Number words and multiplicative relations. "one" is left out: "which one", "one of them".
_NUMBER_WORDS = frozenset((
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    "hundred", "hundreds", "thousand", "thousands", "million", "millions", "dozen", "dozens",
    "half", "twice", "thrice", "double", "triple", "quadruple", "quarter", "percent",
))
# A request for a quantity: how many/much/long/..., a computation verb, or "what is the
# total/difference/..." of something ("what's the average speed", "what was his final score").
_ASKS_QUANTITY = re.compile(
    r"\bhow\s+(?:many|much|long|far|old|fast|often|tall|heavy|high|big)\b"
    r"|\b(?:calculate|compute|determine|work\s+out)\b"
    r"|\bfind\s+(?:the\s+)?(?:total|sum|difference|product|number|amount|value|average|cost)\b"
    r"|\bwhat(?:'s|\s+is|\s+was|\s+will\s+be|\s+are|\s+were)\s+"
    r"(?:(?:the|his|her|their|its|my|our|your)\s+)?(?:\w+\s+)?(?:total|sum|difference|product|"
    r"average|mean|cost|price|value|percentage|ratio|area|perimeter|speed|rate|remainder|"
    r"number|amount|score|distance|length|width|height|weight|age|profit|salary|income)\b"
    r"|\bwhat\s+(?:percentage|percent|fraction)\b",
    re.IGNORECASE)


# Words that state an arithmetic operation or ask for its result ("add 3 for each decade",
# "then double it", "how many are left altogether"): they say what to compute, not what about,
# so a document about the subject of a calculation does not hold them
# (``service.coverage.coverage_shares`` leaves them out of a word problem's words).
ARITHMETIC_WORDS = frozenset((
    "add", "added", "adds", "adding", "subtract", "subtracted", "subtracts", "minus", "plus",
    "multiply", "multiplied", "multiplies", "divide", "divided", "divides", "double",
    "doubled", "doubles", "triple", "tripled", "half", "halved", "twice", "thrice", "times",
    "total", "sum", "difference", "product", "quotient", "remainder", "result", "answer",
    "each", "every", "per", "number", "numbers", "amount", "many", "much", "more", "less",
    "fewer", "left", "remain", "remains", "remaining", "altogether", "combined", "take",
    "takes", "took", "then", "since", "now", "after", "before", "calculate", "compute",
    "find", "work", "out", "increase", "increased", "decrease", "decreased", "percent",
    "percentage", "average", "ratio",
))


def numerals(text: str) -> int:
    """The numerals in ``text`` that are not years (module docstring). A count >= 0."""
    return sum(not _YEAR.fullmatch(m.group(0)) for m in _NUMBER.finditer(text))


def stated_quantities(text: str) -> int:
    """The quantities ``text`` states outside its option lines: numerals that are not years,
    and number words (module docstring). A count >= 0."""
    body = _without_options(text)
    return numerals(body) + sum(w in _NUMBER_WORDS for w in _WORD.findall(body.lower()))


def premise_quantities(text: str) -> int:
    """The quantities ``text`` states in its premises: clauses outside its option lines that
    are not questions (they neither start with a question word nor end with ``?``)."""
    clauses = (c.strip() for c in _CLAUSE.split(_without_options(text)))
    return sum(stated_quantities(c) for c in clauses
               if c and not c.endswith("?") and not _QUESTION_START.match(c))


def asks_quantity(text: str) -> bool:
    """Whether ``text`` asks for a quantity (module docstring)."""
    return _ASKS_QUANTITY.search(text) is not None


def is_word_problem(text: str) -> bool:
    """Whether ``text`` is a self-contained arithmetic word problem (module docstring): it
    asks for a quantity, states at least ``MIN_QUANTITIES`` quantities, and at least one of
    them in a premise."""
    return (asks_quantity(text) and stated_quantities(text) >= MIN_QUANTITIES
            and premise_quantities(text) >= 1)


def _without_options(text: str) -> str:
    return "\n".join(line for line in text.splitlines()
                     if len(_OPTION_MARK.findall(line)) < 2 and not _OPTION_LINE.match(line))
