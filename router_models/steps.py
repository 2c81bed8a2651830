"""How many dependent steps a prompt states: its dependency structure read off its text.

A prompt whose answer builds on intermediate results states the steps that build it: a
quantity and what happens to it ("Tom has 12 apples. He gives 5 to Ann. Then he buys 3 more."),
moves ("Take 3 steps. Turn left."), swaps ("First, Alice and Bob swap balls."), flips, or an
expression with several operators. Each try at such a prompt has to get every step right, so a
vote over short tries compounds their errors, and one chain with room for the steps wins
(Mirtaheri et al. 2025, "Let Me Think!"). A knowledge question, an estimate or a judgement
states at most a premise or two: every try is an independent guess.

``state_steps`` counts clauses outside the question that carry a step: a number (not a year:
"The 2006 edition was held in Germany." dates a fact, it states no quantity), a
state-changing verb, or a sequence connective ("then", "next", "finally"); plus the operators
of an arithmetic expression beyond the first. It reads structure, not words of one benchmark,
so it holds for phrasing the classifier never saw. Options lines ("A) ..."), the question
itself and instructions ("Think step by step.") are not steps.
"""

from __future__ import annotations

import re

from router_models.quantities import numerals

# Clauses: sentences, lines, and the parts of a sentence joined by "; ", ", then", ", and".
# The premise of a question is a clause of its own: "If 2 of them broke, how many are left?".
_CLAUSE = re.compile(r"(?<=[.!?;:])\s+|\n+|,\s*(?:and\s+)?then\s+|,\s+and\s+|\s+and\s+then\s+"
                     r"|(?:,\s*|\s+)(?=(?:how|what|which|who|when|where)\s)", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ha-h][.)]\s")
# An option named in words: "Option A: 41.", "Choice B)" (``features`` counts them too).
NAMED_OPTION = r"\b(?:[Oo]ption|[Cc]hoice)\s+[A-H]\b(?=\s*[:.)])"
# A line listing options side by side: "A) 20 B) 200 C) 2000", "(A) cat (B) dog",
# "Option A: 41. Option B: 45.".
_OPTION_MARK = re.compile(r"(?:^|\s)\(?[A-H][.)](?=\s)|" + NAMED_OPTION)
_WORD = re.compile(r"[a-z]+")
# An arithmetic operator between two operands: "3 + 4", "(2 * 5)", "12/4".
_EXPRESSION_OPERATOR = re.compile(r"(?<=[\d)])\s*[-+*/×÷^]\s*(?=[\d(])")
_CONNECTIVES = frozenset([
    "then", "next", "finally", "afterwards", "afterward", "later", "subsequently", "first",
    "second", "third",
])
# Verbs that change a state: quantities, positions, possession, order.
_STATE_VERBS = frozenset([
    "add", "adds", "added", "subtract", "subtracts", "subtracted", "multiply", "multiplies",
    "multiplied", "divide", "divides", "divided", "double", "doubles", "doubled", "triple",
    "triples", "tripled", "halve", "halves", "halved", "increase", "increases", "increased",
    "decrease", "decreases", "decreased", "give", "gives", "gave", "receive", "receives",
    "received", "buy", "buys", "bought", "sell", "sells", "sold", "spend", "spends", "spent",
    "earn", "earns", "earned", "lose", "loses", "lost", "find", "finds", "found", "collect",
    "collects", "collected", "eat", "eats", "ate", "pay", "pays", "paid", "save", "saves",
    "saved", "borrow", "borrows", "borrowed", "return", "returns", "returned", "take", "takes",
    "took", "put", "puts", "move", "moves", "moved", "turn", "turns", "turned", "walk", "walks",
    "walked", "step", "steps", "swap", "swaps", "swapped", "switch", "switches", "switched",
    "trade", "trades", "traded", "exchange", "exchanges", "exchanged", "flip", "flips",
    "flipped", "remove", "removes", "removed", "replace", "replaces", "replaced",
])
_INSTRUCTION_WORDS = frozenset(
    ["answer", "explain", "respond", "reply", "think", "show", "reason", "write", "give", "end"])


def state_steps(text: str) -> int:
    """The number of dependent steps ``text`` states (module docstring); 0 for a bare question.

    Args:
        text: the prompt being asked now (plain text; a few thousand characters at most are
            read, as ``features._scan`` bounds).

    Returns:
        A count >= 0.
    """
    steps = 0
    text = "\n".join(line for line in text.splitlines()
                     if len(_OPTION_MARK.findall(line)) < 2 and not _OPTION_LINE.match(line))
    for clause in _CLAUSE.split(text):
        clause = clause.strip()
        if not clause or clause.endswith("?"):
            continue
        words = _WORD.findall(clause.lower())
        # A year ("in 1998") dates a clause; it states no quantity a step works on.
        quantity = numerals(clause) > 0
        if not words and not quantity:
            continue
        if words and words[0] in _INSTRUCTION_WORDS and not quantity:
            continue  # "Think step by step.", "Answer with the letter."
        if (quantity or _CONNECTIVES.intersection(words[:2])
                or _STATE_VERBS.intersection(words)):
            steps += 1
    operators = len(_EXPRESSION_OPERATOR.findall(text))
    return steps + max(0, operators - 1)
