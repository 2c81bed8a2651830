"""Open-ended generation: requests whose answer is text to read, not an answer to count.

Self-consistency elects the most frequent *answer* among sampled reasoning paths (Wang et al.
2023, arXiv 2203.11171), so it needs answers that can be compared: a letter, a number, yes or
no, a short name. "Write a haiku about autumn", "Translate this email into French", "Explain
how a transistor works" or "Refactor this function" have none: two good samples are different
texts, a majority vote cannot form, and aggregating free text takes another model call
(Universal Self-Consistency, Chen et al. 2023, arXiv 2311.17311). A vote there buys nothing
but its samples' tokens, and a budget sized for short answers cuts the text the user asked
for. Such a request is answered directly, with room for a long text
(``service.routing.Router.plan``).

So is a question whose answer is an explanation: "Why is the sky blue?", "How does
photosynthesis work?", "How do I make pancakes?" (``asks_explanation``).

``open_generation`` reads it off the request's text (``conversation_generation`` also reads a
short follow-up by the turn it follows): the instruction opens with a generation
verb (``GENERATION_VERBS``, after politeness such as "Please" or "Can you"), and nothing asks
for an answer to count: no answer cue ("the answer", "answer with", ...), no lettered
options, and, unless it transforms a text it carries (``TRANSFORM_VERBS``: translate,
summarize, rewrite, ...), no dependent steps stated (``router_models.steps``: "Explain how
many apples are left if ..." is a word problem with an answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from router_models.prompt import content_text
from router_models.steps import state_steps

# Imperatives whose object is a text the request carries, to be changed: the material may hold
# numbers and events (an article, a story, code), so its steps say nothing about the request.
TRANSFORM_VERBS = frozenset([
    "translate", "summarize", "summarise", "paraphrase", "rephrase", "reword", "rewrite",
    "proofread", "edit", "polish", "refactor", "shorten", "continue", "expand",
])
# Imperatives whose object is a text to produce or change. Verbs that as often open a question
# with one answer ("give", "name", "list", "tell", "find", "compute") are left out.
GENERATION_VERBS = TRANSFORM_VERBS | frozenset([
    "write", "draft", "compose", "create", "generate", "explain", "describe", "outline",
    "brainstorm", "suggest", "implement", "elaborate",
])
# Where a transforming request states its instruction; the material follows.
INSTRUCTION_CHARS = 200
# Openings that only ask politely: "Please", "Can you", "Could you please", "Help me",
# "I'd like you to", "Now". Read off repeatedly, so "Please, can you help me" reaches the verb.
_POLITE = re.compile(
    r"^(?:please|pls|kindly|now|ok(?:ay)?|hey|hi|hello|so|also|and|then|"
    r"(?:can|could|would|will)\s+you(?:\s+please)?|help\s+me(?:\s+to)?|"
    r"i(?:'d|\s+would)\s+like\s+you\s+to|i\s+(?:want|need)\s+you\s+to)\b[\s,.!:;-]*",
    re.IGNORECASE)
# Asks for an answer that can be counted (the task's format instruction, or options).
_ANSWER_CUE = re.compile(
    r"\b(?:the|your|final|correct|short|one[- ]word)\s+answer\b|\banswer\s+(?:with|in|as|is)\b"
    r"|\bwhich\s+of\s+the\s+following\b|\btrue\s+or\s+false\b|\byes\s+or\s+no\b",
    re.IGNORECASE)
_OPTIONS = re.compile(r"(?:^|\s)\(?[A-E][.)]\s", re.MULTILINE)
_WORD = re.compile(r"[a-z]+")
# Questions whose answer is an explanation, not a value: why something is, how something works
# or is done, how two things differ. "How many ...", "How would a typical person answer: ...?"
# and "What is X?" are left out: they as often have one short answer.
EXPLANATION = re.compile(
    r"(?:why\b|how\s+to\b|how\s+(?:do|does|did|can|could|should)\s+(?:i|we|you|one)\b"
    r"|how\s+(?:does|do|did)\b[^?]{0,80}\b(?:work|happen|function)s?\b"
    r"|what(?:'s|\s+is|\s+are)\s+the\s+differences?\s+between\b"
    r"|tell\s+me\s+(?:about|a\s+(?:story|joke|poem))\b)", re.IGNORECASE)
# A question word after the opening asks for a fact ("How to Eat, released in which year,
# ..." is a HotpotQA question about a book).
_FACT_WORD = re.compile(r"\b(?:which|who|whom|whose|when|where|what\s+year)\b", re.IGNORECASE)
# A user turn this short after an answer refers back to it ("and in French?", "shorter,
# please", "make it rhyme"): it asks for more of what the turn before asked for.
FOLLOW_UP_WORDS = 8


def instruction(text: str) -> str:
    """``text`` from its instruction on: polite openings ("Please", "Can you", "Help me")
    read off."""
    rest = text.strip()
    for _ in range(4):  # "Hi! Please, could you help me ..." peels one opening at a time
        peeled = _POLITE.sub("", rest, count=1).lstrip(" ,.!:;-\n\t")
        if peeled == rest:
            break
        rest = peeled
    return rest


def opening_verb(text: str) -> str:
    """The first word of ``text``'s instruction (``instruction``), lower case; "" for text
    without words."""
    word = _WORD.match(instruction(text).lower())
    return word.group(0) if word else ""


def asks_explanation(text: str) -> bool:
    """True when ``text``'s instruction is a question whose answer is an explanation
    (``EXPLANATION``: "Why ...", "How does X work?", "How do I ...", "What is the difference
    between ...", "Tell me about ...") and asks for no answer that can be counted."""
    asked = instruction(text)
    if not EXPLANATION.match(asked) or _FACT_WORD.search(asked[3:]):
        return False
    return (not _ANSWER_CUE.search(text) and len(_OPTIONS.findall(text)) < 2
            and state_steps(text) < 2)


def open_generation(text: str) -> bool:
    """True when ``text`` (the last user turn) asks for open-ended text: an instruction to
    write or change a text (``requests_text``), or a question answered by an explanation
    (``asks_explanation``)."""
    return requests_text(text) or asks_explanation(text)


def requests_text(text: str) -> bool:
    """True when ``text`` opens with one of ``GENERATION_VERBS`` and asks for no answer that
    can be counted: the imperative half of ``open_generation``.

    A request to transform the text it carries (``TRANSFORM_VERBS``) is read on its first
    ``INSTRUCTION_CHARS`` characters only, and its answer cues up to its first colon, where
    the material starts: the material's numbers, options or "the answer" belong to the text to
    translate or summarize ("Translate into French: The answer is no."). Lettered options
    still count on those characters: "Rewrite the expression ... What is q/p?" followed by
    options A) to D) is a question (MMLU)."""
    verb = opening_verb(text)
    if verb not in GENERATION_VERBS:
        return False
    transforms = verb in TRANSFORM_VERBS
    head = text[:INSTRUCTION_CHARS] if transforms else text
    asked = head.split(":", 1)[0] if transforms else text
    if _ANSWER_CUE.search(asked) or len(_OPTIONS.findall(head)) >= 2:
        return False
    return transforms or state_steps(text) < 2


def conversation_generation(messages: Sequence[Any]) -> bool:
    """True when a chat's last user turn asks for open-ended text (``open_generation``), or is
    a short follow-up (at most ``FOLLOW_UP_WORDS`` words, after an assistant turn) to a user
    turn that asked for a text (``requests_text``; a short follow-up to "Why?" is a question
    of its own): "and in French?" after a translation, "make it rhyme" after a poem. A run of
    short follow-ups reads back to the turn it began with ("make it rhyme" after "and in
    French?" after a poem), since each refers to the text before it; the run ends at a long
    turn or one no answer followed. Messages that are not objects are skipped."""
    turns = [m for m in messages if isinstance(m, dict)]
    users = [i for i, m in enumerate(turns) if m.get("role") == "user"]
    if not users:
        return False
    last = content_text(turns[users[-1]].get("content"))
    if open_generation(last):
        return True
    for before, after in zip(reversed(users[:-1]), reversed(users[1:]), strict=True):
        follow_up = content_text(turns[after].get("content"))
        answered = any(m.get("role") == "assistant" for m in turns[before:after])
        if not answered or len(follow_up.split()) > FOLLOW_UP_WORDS:
            return False
        if requests_text(content_text(turns[before].get("content"))):
            return True
    return False
