"""Whether the operator's own document collection covers a question: the evidence that
``search`` can help, read from the index itself rather than from the prompt alone.

The classifier's ``search`` score says a prompt asks for facts; only the collection can say
the facts are there. With a local index (``ttc-router index add``), the gateway retrieves the
top hits for the question (about a millisecond, BM25) and measures the share of the
question's content words that the best of those hits contains: a question about the
collection's subjects shares most of its words with the document that holds its facts; an
arithmetic chain, a general-knowledge multiple-choice question or a one-liner shares few.
The share replaces the classifier's ``search`` score for the policy (see
``service.routing``), so ``auto`` searches where the collection can answer, whatever the
classifier was trained on.

A question's subject is its names; the rest of its words are its frame, and users phrase the
frame in their own words ("who established X?" of a document that says "X was founded by",
"X is famous for making what?" of one that says "best known for its"). So the coverage is the
larger of the share of all content words and the share of the question's names (``names``)
that the hits contain: a question that names what a document is about is covered however it
is phrased. A prompt that carries its own facts is the exception: its names are its
characters, not the collection's subjects. That is a word problem (it states quantities and
asks for one computed from them, ``router_models.quantities.is_word_problem``: both its shares
are 0 here) and a prompt that states its own dependent steps (``prior.read_search``). Measured
with ``bench/coverage_check.py`` on the HotpotQA corpus (whole datasets): before the
word-problem rule a first name alone ("Claire makes a 3 egg omelet every morning...", of the
article "Claire Fryer") made 30 of 1,319 GSM8K and 32 of 1,000 SVAMP prompts search prompts;
after it, 1 and 0, with all 100 HotpotQA questions still covered.

The name share matters: measured on ``bench/mixed_traffic.py`` (SIMULATION, 60
paraphrased questions about made-up entities indexed with ``ttc-router index add``): the word
share alone covered 31 of 60, and ``auto`` sent the other 29 to votes that could not know the
fact.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

from router_models.quantities import is_word_problem
from service.search.base import Hit
from service.search.local import STOP_WORDS

_WORD = re.compile(r"\w+")
# Words share a stem when they agree on this many leading characters ("opened" / "opening";
# shorter words must match whole or as a prefix): a crude stemmer, enough for inflections.
STEM_CHARS = 5
# One or two shared words are chance: "Write a short poem about the sea." shares "short" and
# "poems" with an author's article (2 of its 4 words). A short question about a subject is
# covered by its names instead.
MIN_MATCHED_WORDS = 3


# Words of the question's frame, not its subject (beyond Lucene's stop words).
QUESTION_WORDS = frozenset((
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "many", "much",
    "does", "did", "do", "was", "were", "has", "have", "had", "can", "could", "would",
    "should", "answer", "question", "following", "one", "word", "name", "tell", "me", "please",
    "from", "about", "its", "his", "her", "it", "you", "your", "we", "our", "i"))


_WORD_START = re.compile(r"\b[^\W\d_][\w'-]*")


def _capitalised(text: str) -> list[re.Match[str]]:
    """The words of ``text`` that start with a capital, in any script ("Zürich", "Łódź",
    "Москва"; ``[A-Z]`` missed all but the first)."""
    return [m for m in _WORD_START.finditer(text) if m.group(0)[0].isupper()]


def _fold(text: str) -> str:
    """``text`` in lower case without accents ("Zürich" -> "zurich"), as the local index
    reads words (``service.search.local.ANALYZER``): a question that spells a name without
    its accents is about the same thing."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_SENTENCE_END = re.compile(r"[.!?:;]\s*$|^\s*$")


def names(question: str, hits: Sequence[Hit]) -> list[str]:
    """The question's names, lower-cased without accents (``_fold``), each once: content
    words it capitalises where a sentence does not start (after ``.``, ``!``, ``?``, ``:``,
    ``;`` or a line break), and capitalised sentence-initial words that a hit spells
    capitalised too (in its title, or where its own sentence does not start): "Lourhask is
    famous for making what?" names Lourhask when a document says "Today Lourhask is ...",
    while "Which ..." or "Begin with ..." name nothing. A word that is also a stop word or a
    question word is not a name."""
    hit_names = {_fold(w) for hit in hits for w in _capitalised_inside(hit.text)}
    hit_names |= {_fold(m.group(0)) for hit in hits for m in _capitalised(hit.title)}
    subject = set(content_words(question))
    found: dict[str, None] = {}
    for line in question.splitlines():
        for match in _capitalised(line):
            word = _fold(match.group(0))
            if word not in subject:
                continue
            initial = bool(_SENTENCE_END.search(line[:match.start()]))
            if not initial or word in hit_names:
                found.setdefault(word, None)
    return list(found)


def _capitalised_inside(text: str) -> list[str]:
    """Capitalised words of ``text`` that do not start a sentence or a line."""
    return [m.group(0) for line in text.splitlines() for m in _capitalised(line)
            if not _SENTENCE_END.search(line[:m.start()])]


def content_words(text: str) -> list[str]:
    """Word runs of ``text``, lower-cased and without accents (``_fold``), without stop
    words, question words or lone digits, in order, each once."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(_fold(text)):
        if (word not in STOP_WORDS and word not in QUESTION_WORDS and not word.isdigit()
                and len(word) > 1):
            seen.setdefault(word, None)
    return list(seen)


def _stems(word: str) -> tuple[str, ...]:
    """The keys a word matches on: its first ``STEM_CHARS`` characters, and its first four
    (so a four-letter word such as "open" matches "opened")."""
    return (word[:STEM_CHARS], word[:4]) if len(word) >= 4 else (word,)


class Coverage(NamedTuple):
    """What the hits hold of a question, each a share in [0, 1] (``coverage_shares``)."""

    words: float  # of its content words, by stem (0 when fewer than MIN_MATCHED_WORDS match)
    names: float  # of its names that a hit is about (in its title or first sentence)


def coverage(question: str, hits: Sequence[Hit]) -> float:
    """How much of ``question`` the ``hits`` (title and text) hold: the larger of the two
    shares of ``coverage_shares``, in [0, 1]."""
    return max(coverage_shares(question, hits))


def coverage_shares(question: str, hits: Sequence[Hit]) -> Coverage:
    """How much of ``question`` the ``hits`` (title and text) hold, by stem: the share of its
    content words (0 when fewer than ``MIN_MATCHED_WORDS`` match: two common words are chance)
    and the share of its names (``names``) that a hit is about (in its title or first
    sentence; one such name is not chance: it is the question's subject), 0 unless one of
    them is a hit's title or its first sentence's subject (``_subject``). Both 0 when the
    question has no content words, when there are no hits, and for a self-contained word
    problem (``router_models.quantities.is_word_problem``), which needs no collection."""
    words = content_words(question)
    # A word problem states every fact its answer is computed from: the collection holds
    # nothing it lacks, and its names are characters ("Claire makes a 3 egg omelet every
    # morning..." is not about the Claire of an article the top hit is).
    if not words or not hits or is_word_problem(question):
        return Coverage(0.0, 0.0)
    # The words are counted against one hit at a time, the best: a question about the
    # collection's facts shares most of its words with the document that holds them, while
    # three long documents together hold most common words of any question (on the HotpotQA
    # corpus, the union of the top 3 covered 6-10% of GSM8K, SVAMP, MultiArith and StrategyQA
    # prompts, the best single hit none of them; bench/coverage_check.py).
    word_share = max(_word_share(words, hit) for hit in hits)
    # A name counts where a hit is about it: in its title or its first sentence. A name met in
    # passing ("the offsite was held in France") does not make "What is the capital of
    # France?" a question for the collection, and neither does one in a first sentence about
    # something else ("Joannes van der Brugghen, known in France as ...", the top hits of that
    # question on the HotpotQA corpus): at least one of the question's names must be what a
    # hit is about, its title or its first sentence's subject (``_subject``).
    about = {key for hit in hits for w in content_words(f"{hit.title} {_lead(hit.text)}")
             for key in _stems(w)}
    subjects = {key for hit in hits
                for w in content_words(f"{hit.title} {_subject(_lead(hit.text))}")
                for key in _stems(w)}
    subject = names(question, hits)
    name_share = (sum(w[:STEM_CHARS] in about for w in subject) / len(subject)
                  if any(w[:STEM_CHARS] in subjects for w in subject) else 0.0)
    return Coverage(word_share, name_share)


def _word_share(words: Sequence[str], hit: Hit) -> float:
    """The share of ``words`` whose stem ``hit`` (title and text) holds; 0 below
    ``MIN_MATCHED_WORDS`` matches."""
    found = {key for w in content_words(f"{hit.title} {hit.text}") for key in _stems(w)}
    # A question word matches on its longest key: five characters, or the whole word when
    # shorter.
    matched = sum(w[:STEM_CHARS] in found for w in words)
    return matched / len(words) if matched >= MIN_MATCHED_WORDS else 0.0


_FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?:\s|$)|\n|$)", re.DOTALL)


def _lead(text: str) -> str:
    """``text``'s first sentence (or line): where a document says what it is about."""
    match = _FIRST_SENTENCE.match(text.lstrip())
    return match.group(0) if match else ""


# Where a first sentence's subject ends: a comma, a bracket, a semicolon, a spaced dash, or its
# verb ("X is ...", "X, known in France as Y, ...", "X (1639 - 1664) was ...").
_SUBJECT_END = re.compile(r"[,;(\[]|\s[-\u2013\u2014]\s|\s(?:is|was|are|were|has|had)\s")


def _subject(sentence: str) -> str:
    """The subject of a document's first sentence: its words before the first comma,
    bracket, spaced dash or verb "is/was/are/were/has/had" (the whole sentence when it has
    none of them)."""
    return _SUBJECT_END.split(sentence, maxsplit=1)[0]
