"""Whether the operator's own document collection covers a question: the evidence that
``search`` can help, read from the index itself rather than from the prompt alone.

The classifier's ``search`` score says a prompt asks for facts; only the collection can say
the facts are there. With a local index (``ttc-router index add``), the gateway retrieves the
top hits for the question (about a millisecond, BM25) and measures the share of the
question's content words that the best of those hits contains, each word weighed by its
inverse document frequency in the collection (``LocalIndex.idf``): a question about the
collection's subjects shares most of its words, its rare ones above all, with the document
that holds its facts; an arithmetic chain, a general-knowledge multiple-choice question or a
one-liner shares few, or only common ones ("Compose a short song about a football team
winning the season." of a season report).
The share replaces the classifier's ``search`` score for the policy (see
``service.routing``), so ``auto`` searches where the collection can answer, whatever the
classifier was trained on.

A question's subject is its names; the rest of its words are its frame, and users phrase the
frame in their own words ("who established X?" of a document that says "X was founded by",
"X is famous for making what?" of one that says "best known for its"). So the coverage is the
larger of the share of all content words and the share of the question's names (``names``)
that the hits contain, once the question holds a hit's subject (``_holds_subject``): a
question that names what a document is about is covered however it is phrased. A prompt
that carries its own facts is the exception: its names are its characters, not the
collection's subjects. That is a word problem (it states quantities and asks for one
computed from them, ``router_models.quantities.is_word_problem``: its name share is 0 here,
and its word share too unless it holds the whole subject of a hit: ``coverage_shares``) and a
prompt that states its own dependent steps (``prior.read_search``). Measured
with ``bench/coverage_check.py`` on the HotpotQA corpus (whole datasets): before the
word-problem rule a first name alone ("Claire makes a 3 egg omelet every morning...", of the
article "Claire Fryer") made 30 of 1,319 GSM8K and 32 of 1,000 SVAMP prompts search prompts;
after it, 1 and 0, with all 100 HotpotQA questions still covered.

Weighing words (7 Dec 2026, ``bench/coverage_check.py``, before and after): the check's 40
everyday requests read as search prompts went from 9 to 4, StrategyQA's 2,290 questions from
508 to 164, HotpotQA's 100 from 100 to 99 (the one lost misspells a word, which then weighs as
a word no document holds: most). README, "Routing: the classifier and the policies", has
the figures.

The name share matters: measured on ``bench/mixed_traffic.py`` (SIMULATION, 60
paraphrased questions about made-up entities indexed with ``ttc-router index add``): the word
share alone covered 31 of 60, and ``auto`` sent the other 29 to votes that could not know the
fact.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from router_models.quantities import ARITHMETIC_WORDS, is_word_problem
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

    words: float  # of its content words, by stem and weight (0 below MIN_MATCHED_WORDS)
    names: float  # of its names that a hit is about (in its title or first sentence)


# Content word -> weight for each word given: ``LocalIndex.idf``, the collection's inverse
# document frequencies.
Weigh = Callable[[Iterable[str]], Mapping[str, float]]


def coverage(question: str, hits: Sequence[Hit], idf: Weigh | None = None) -> float:
    """How much of ``question`` the ``hits`` (title and text) hold: the larger of the two
    shares of ``coverage_shares``, in [0, 1]."""
    return max(coverage_shares(question, hits, idf))


def coverage_shares(question: str, hits: Sequence[Hit], idf: Weigh | None = None) -> Coverage:
    """How much of ``question`` the ``hits`` (title and text) hold, by stem: the share of its
    content words (0 when fewer than ``MIN_MATCHED_WORDS`` match: two common words are chance)
    and the share of its names (``names``) that a hit is about (in its title or first
    sentence; one such name is not chance: it is the question's subject), 0 unless the
    question holds a hit's subject (``_holds_subject``). Both 0 when the question has no
    content words or there are no hits. A word problem
    (``router_models.quantities.is_word_problem``) has no name share (its names are its
    characters), and its word share, without the words that say what to compute, counts only
    when it holds a hit's whole subject: a calculation may be over figures only the
    collection holds ("the telescopes the Quenmoor observatory had when it opened").

    Args:
        question: the prompt's text.
        hits: the collection's top hits for it, each cut where the model would stop reading.
        idf: the collection's word weights (``LocalIndex.idf``): the word share and the
            subject test weigh each word by how rare it is in the collection, so that a
            hit holding a question's common words ("write", "short", "team", "season")
            and not its rare ones covers little of it. None weighs every word 1.

    Raises:
        SearchError: from ``idf``, when the index cannot be read.
    """
    words = content_words(question)
    word_problem = is_word_problem(question)
    if word_problem:
        # What to compute is not what it is about (``quantities.ARITHMETIC_WORDS``).
        words = [w for w in words if w not in ARITHMETIC_WORDS]
    if not words or not hits:
        return Coverage(0.0, 0.0)
    leads = [_lead(hit.text) for hit in hits]
    headings = [(content_words(hit.title), content_words(_subject(lead)))
                for hit, lead in zip(hits, leads, strict=True)]
    needed = dict.fromkeys(words)
    needed.update((w, None) for pair in headings for part in pair for w in part)
    weight: Mapping[str, float] = idf(needed) if idf is not None else dict.fromkeys(needed, 1.0)
    # The words are counted against one hit at a time, the best: a question about the
    # collection's facts shares most of its words with the document that holds them, while
    # three long documents together hold most common words of any question (on the HotpotQA
    # corpus, the union of the top 3 covered 6-10% of GSM8K, SVAMP, MultiArith and StrategyQA
    # prompts, the best single hit none of them; bench/coverage_check.py).
    word_share = max(_word_share(words, hit, weight) for hit in hits)
    # A name counts where a hit is about it: in its title or its first sentence. A name met in
    # passing ("the offsite was held in France") does not make "What is the capital of
    # France?" a question for the collection, and neither does one in a first sentence about
    # something else ("Joannes van der Brugghen, known in France as ...", the top hits of that
    # question on the HotpotQA corpus), nor one word of a longer subject ("Canada" of "1985
    # United States-Canada tornado outbreak"): the question must hold a hit's subject, its
    # title or its first sentence's subject (``_holds_subject``).
    about = {key for hit, lead in zip(hits, leads, strict=True)
             for w in content_words(f"{hit.title} {lead}") for key in _stems(w)}
    subject = names(question, hits)
    asked = {w[:STEM_CHARS] for w in words}
    named = {w[:STEM_CHARS] for w in subject}
    if word_problem:
        # A word problem's names are its characters ("Claire makes a 3 egg omelet every
        # morning..." is not about the Claire Fryer of an article the top hit is), so they
        # cover nothing by themselves; its words count only when it holds the whole subject
        # of a hit ("the telescopes the Quenmoor observatory had when it opened": a
        # calculation over figures of the collection). A self-contained problem's few words
        # left are common ones a document may hold by chance ("a book has 31 chapters"). On
        # the HotpotQA corpus this reads none of 1,000 GSM8K or SVAMP or 600 MultiArith
        # prompts as covered (``python -m bench.coverage_check --limit 1000``, 7 Dec 2026).
        whole = any(_holds_subject(part, named, asked, weight, share=1.0)
                    for pair in headings for part in pair)
        return Coverage(word_share if whole else 0.0, 0.0)
    held = any(_holds_subject(part, named, asked, weight) for pair in headings for part in pair)
    name_share = (sum(w[:STEM_CHARS] in about for w in subject) / len(subject)
                  if held else 0.0)
    return Coverage(word_share, name_share)


# The weighted share of a hit's subject a question must hold to be about it.
SUBJECT_HELD = 0.5


def _holds_subject(subject: Sequence[str], named: set[str], asked: set[str],
                   weight: Mapping[str, float], share: float = SUBJECT_HELD) -> bool:
    """Whether a question whose names' stems are ``named`` and whose content words' stems
    are ``asked`` (first ``STEM_CHARS`` characters, matched as ``_word_share`` matches) holds
    a hit's ``subject`` (its title's or first sentence's content words): one of its names is
    in it, and it holds at least ``share`` (default ``SUBJECT_HELD``) of the subject's
    weight. "Where was
    Derrickson born?" holds "Scott Derrickson" (the rare surname weighs most); "What is the
    national sport of Canada?" does not hold "1985 United States-Canada tornado outbreak",
    nor "What is the largest ocean on Earth?" "Not If You Were the Last Junkie on Earth"."""
    if not subject or named.isdisjoint(key for w in subject for key in _stems(w)):
        return False
    total = sum(weight[w] for w in subject)
    found = sum(weight[w] for w in subject if not asked.isdisjoint(_stems(w)))
    return total > 0 and found >= share * total


def _word_share(words: Sequence[str], hit: Hit, weight: Mapping[str, float]) -> float:
    """The weighted share of ``words`` whose stem ``hit`` (title and text) holds; 0 below
    ``MIN_MATCHED_WORDS`` matches."""
    found = {key for w in content_words(f"{hit.title} {hit.text}") for key in _stems(w)}
    # A question word matches on its longest key: five characters, or the whole word when
    # shorter.
    matched = [w for w in words if w[:STEM_CHARS] in found]
    if len(matched) < MIN_MATCHED_WORDS:
        return 0.0
    total = sum(weight[w] for w in words)
    return sum(weight[w] for w in matched) / total if total > 0 else 0.0


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
    bracket, spaced dash or verb "is/was/are/were/has/had"; when it has none of them, its
    leading capitalised words ("France hosted the 2023 offsite." is about France: the whole
    sentence is more than its subject, and a question holds a subject, ``_holds_subject``)."""
    parts = _SUBJECT_END.split(sentence, maxsplit=1)
    if len(parts) > 1:
        return parts[0]
    leading = []
    for word in sentence.split():
        if not word[0].isupper():
            break
        leading.append(word)
    return " ".join(leading)
