"""Whether the operator's own document collection covers a question: the evidence that
``search`` can help, read from the index itself rather than from the prompt alone.

The classifier's ``search`` score says a prompt asks for facts; only the collection can say
the facts are there. With a local index (``ttc-router index add``), the gateway retrieves the
top hits for the question (about a millisecond, BM25) and measures the share of the
question's content words that those hits contain: a question about the collection's subjects
shares most of its rare words with some document; an arithmetic chain, a general-knowledge
multiple-choice question or a one-liner shares few. The share replaces the classifier's
``search`` score for the policy (see ``service.routing``), so ``auto`` searches where the
collection can answer, whatever the classifier was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.search.base import Hit
from service.search.local import STOP_WORDS

_WORD = re.compile(r"\w+")
# Words share a stem when they agree on this many leading characters ("opened" / "opening";
# shorter words must match whole or as a prefix): a crude stemmer, enough for inflections.
STEM_CHARS = 5
MIN_MATCHED_WORDS = 2  # one shared word is chance; a question's subject names two or more


# Words of the question's frame, not its subject (beyond Lucene's stop words).
QUESTION_WORDS = frozenset((
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "many", "much",
    "does", "did", "do", "was", "were", "has", "have", "had", "can", "could", "would",
    "should", "answer", "question", "following", "one", "word", "name", "tell", "me", "please",
    "from", "about", "its", "his", "her", "it", "you", "your", "we", "our", "i"))


def content_words(text: str) -> list[str]:
    """Lower-cased word runs of ``text`` without stop words, question words or lone digits,
    in order, each once."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if (word not in STOP_WORDS and word not in QUESTION_WORDS and not word.isdigit()
                and len(word) > 1):
            seen.setdefault(word, None)
    return list(seen)


def _stems(word: str) -> tuple[str, ...]:
    """The keys a word matches on: its first ``STEM_CHARS`` characters, and its first four
    (so a four-letter word such as "open" matches "opened")."""
    return (word[:STEM_CHARS], word[:4]) if len(word) >= 4 else (word,)


def coverage(question: str, hits: Sequence[Hit]) -> float:
    """The share of ``question``'s content words found in ``hits`` (title and text), by stem;
    0 when fewer than ``MIN_MATCHED_WORDS`` match or the question has no content words.

    Returns:
        A share in [0, 1].
    """
    words = content_words(question)
    if not words or not hits:
        return 0.0
    found = {key for hit in hits for w in content_words(f"{hit.title} {hit.text}")
             for key in _stems(w)}
    # A question word matches on its longest key: five characters, or the whole word when
    # shorter.
    matched = sum(w[:STEM_CHARS] in found for w in words)
    if matched < MIN_MATCHED_WORDS:
        return 0.0
    return matched / len(words)
