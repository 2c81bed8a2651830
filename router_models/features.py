"""Prompt features for the classifier: hand-made cues plus hashed word n-grams.

Scoring is on the request path, so extraction is a few compiled regular expressions and one
hash per token (tens of microseconds for a typical prompt). The n-grams are hashed exactly as
scikit-learn's ``HashingVectorizer(ngram_range=(1, 2), alternate_sign=False, norm="l2")`` does
(signed 32-bit MurmurHash3, index = |h| mod n_features), so there is no vocabulary file, and a
test checks the two agree; it is reimplemented here only because the vectorizer costs about
0.3 ms per single document in input validation alone.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils import murmurhash3_32

from router_models.prompt import content_text, prompt_text
from router_models.steps import NAMED_OPTION, state_steps

# 2**14 buckets: collisions cost little for a linear model of three heads, and the shipped
# weights stay small (3 x 16384 float32 = 192 KiB).
N_HASH = 2 ** 14
# Very long prompts are read from both ends only, which bounds the cost of scoring; the length
# features still count the whole text.
MAX_SCAN_CHARS = 4000

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # HashingVectorizer's default token_pattern
_SENTENCE = re.compile(r"[.!?](?:\s|$)|[。！？]")  # CJK full stops need no space after
# Scripts that put no spaces between words (Han, Hiragana, Katakana): each character counts as
# a word, as BERT's basic tokenizer splits them (Devlin et al. 2019). No training prompt has
# any, so this moves no shipped weight; without it a Chinese word problem was one long "word"
# and read as no prompt the classifier was trained on (difficulty 0.0, search 1.0).
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
_NUMBER = re.compile(r"\d[\d,.]*")
_OPERATOR = re.compile(r"[+\-*/×÷^=<>]")
_EQUATION = re.compile(r"\d\s*[-+*/×÷^]\s*\d|=\s*\d|\d\s*=")
_FRACTION = re.compile(r"\d\s*/\s*\d|\d\.\d")
_EDGE = re.compile(r"\b(?:\d+|[A-Za-z])\s*(?:--?>?|<->|—)\s*(?:\d+|[A-Za-z])\b"
                   r"|\(\s*\w+\s*,\s*\w+\s*\)")
# An option's letter: "(A)" anywhere, "A." or "A)" opening a line.
_OPTION = re.compile(r"\([A-Ha-h]\)|(?:^|\n)\s*[A-H][.)]\s")
# Options inside a line: "The choices are A) 148, B) 441, ...", "Option A: 41. Option B: 45.".
# One such mark alone ("Plan A) fails.") is no list of options, so they count from two on
# (``_option_marks``). They change the count of 18 of the 31,000 training prompts, all
# read as choices already, so they move no shipped weight; without them such questions read
# as numeric word problems, and "Option A: 41." as a step (held-out worlds of helper 49).
_INLINE_OPTION = re.compile(r"(?<=[\s,;:])[A-H]\)(?=\s)|" + NAMED_OPTION)
_YEAR = re.compile(r"\b(?:1[5-9]\d\d|20\d\d)\b")
_QUOTE = re.compile(r"\"[^\"]{2,}\"|“[^”]{2,}”")
_MONEY_CHARS = ("$", "€", "£", "%")
_CODE_MARKS = ("```", "def ", "class ", "return", "{", "}", "import ", "function", "=>",
               "print(", ";\n")
_CHOICE_CUES = ("answer choices", "which of the following", "choose", "options:")


def _option_marks(text: str) -> int:
    """Options' letters in ``text``: ``_OPTION``'s, and ``_INLINE_OPTION``'s when there are
    two or more of them, each letter once."""
    spans = [m.span() for m in _OPTION.finditer(text)]
    inline = [m.start() for m in _INLINE_OPTION.finditer(text)]
    if len(inline) < 2:
        return len(spans)
    # A line-opening "A)" is both (the newline before it is the inline mark's space): it is
    # one option, already counted, though it still shows the marks are a list.
    return len(spans) + sum(1 for at in inline if not any(a <= at < b for a, b in spans))


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Word cues are counted on the same lower-cased tokens the n-grams use (a set lookup per token
# is several times cheaper than a case-insensitive regular expression).
_STEP_WORDS = _words(
    "then after afterwards before first second next finally each every per total remaining "
    "left times twice half step later again now more less")
_SEQUENCE_WORDS = _words(
    "flip flips flipped reverse reversed swap swaps switch switches trade trades concatenate "
    "last letters letter order sequence iterate repeat recursively")
_GRAPH_WORDS = _words(
    "graph node nodes edge edges vertex vertices connected path neighbor neighbors neighbour "
    "neighbours adjacent reachable")
_FACT_WORDS = _words(
    "who whom whose when where born founded capital president director author released "
    "located nationality population headquarters headquartered album film band singer "
    "country city company team")
_MONEY_WORDS = _words("dollars dollar percent cents cent price cost costs")
_HOW_BIGRAMS = frozenset({"how many", "how much", "how long", "how far", "how old"})
_FANOUT_BIGRAMS = frozenset({"each of", "all of", "for each", "list all", "list the"})
# Comparison questions name two things and ask what they share ("Are X and Y both ...?"),
# HotpotQA's comparison type (Yang et al. 2018): two look-ups, then one step.
_COMPARISON_WORDS = _words("both either neither")
_COMPARISON_BIGRAMS = frozenset({"the same", "in common"})
_YES_NO_WORDS = _words(
    "is are does do can could would was were did has have will should")

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_sentences", "log_lines", "questions",
    "log_numbers", "number_density", "log_operators", "equation", "money_or_percent",
    "log_fractions",
    "log_step_cues", "how_many", "log_sequence_cues",
    "log_edges", "log_graph_words",
    "log_options", "choice_cue",
    "log_capitalised", "capitalised_ratio", "log_years", "log_quotes", "log_fact_cues",
    "fanout_cue", "comparison_cue", "yes_no_question",
    "log_code_cues",
    "has_system", "log_turns", "log_context_chars", "mean_word_chars", "digit_ratio",
)
N_DENSE = len(FEATURE_NAMES)

# The prompt's form: the structural cue that most often decides which axis pays (an edge list
# rewards a long chain, options a vote, a bare fact question search). See prompt_form.
FORMS: tuple[str, ...] = ("choice", "graph", "comparison", "yes_no", "numeric", "open")
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class Features:
    """One prompt's features.

    ``dense``: float64 array of shape (N_DENSE,), named by ``FEATURE_NAMES``.
    ``hash_indices`` (int64) and ``hash_values`` (float64), both of shape (n_nonzero,): the
    l2-normalised counts of word unigrams and bigrams in ``N_HASH`` hashed buckets.
    ``steps``: the dependent steps the prompt states (``router_models.steps.state_steps``);
    read by the policies, not by the classifier's heads.
    """

    dense: np.ndarray
    hash_indices: np.ndarray
    hash_values: np.ndarray
    steps: int = 0

    def as_dict(self) -> dict[str, float]:
        """The dense features by name (for logs and decisions)."""
        return {name: float(v) for name, v in zip(FEATURE_NAMES, self.dense, strict=True)}


_TWO_EDGES = math.log1p(2) - 1e-9  # the log_edges feature of two edges


def prompt_form(f: Features) -> str:
    """The prompt's form, one of ``FORMS``, the first that holds: choice (lettered options
    or a choice cue; first, because a multiple-choice question may mention a path or a pair
    of coordinates), graph (two or more edges, or graph words), comparison (a comparison cue and no
    numbers: word problems say "both" too), yes_no (opens with an auxiliary verb), numeric
    (has numbers), else open."""
    d = f.dense
    if d[_COLUMN["log_options"]] > 0 or d[_COLUMN["choice_cue"]] > 0:
        return "choice"
    # One "13 - 16" is a subtraction or a range, not a graph: a graph lists its edges, or
    # names itself (node, edge, connected, path).
    if d[_COLUMN["log_edges"]] >= _TWO_EDGES or d[_COLUMN["log_graph_words"]] > 0:
        return "graph"
    has_numbers = d[_COLUMN["log_numbers"]] > 0
    if d[_COLUMN["comparison_cue"]] > 0 and not has_numbers:
        return "comparison"
    if d[_COLUMN["yes_no_question"]] > 0:
        return "yes_no"
    return "numeric" if has_numbers else "open"


def hashed_ngrams(text: str, n_features: int = N_HASH) -> tuple[np.ndarray, np.ndarray]:
    """Word unigrams and bigrams of ``text`` hashed into ``n_features`` buckets.

    Returns (indices, values): sorted unique bucket indices (int64) and their l2-normalised
    counts (float64); both empty for a text without tokens. Same output as scikit-learn's
    ``HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
    norm="l2")``.
    """
    tokens = _TOKEN.findall(text.lower())
    bigrams = [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    return _hash_tokens(tokens, bigrams, n_features)


@functools.lru_cache(maxsize=1 << 17)
def _bucket(token: str, n_features: int) -> int:
    # scikit-learn's _hashing_fast: |h| mod n, with its special case for h = -2**31.
    h = murmurhash3_32(token, seed=0)
    if h == -2147483648:
        return (2147483647 - (n_features - 1)) % n_features
    return abs(h) % n_features


def _hash_tokens(tokens: list[str], bigrams: list[str], n_features: int = N_HASH
                 ) -> tuple[np.ndarray, np.ndarray]:
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    counts: dict[int, int] = {}
    for token in tokens + bigrams:
        index = _bucket(token, n_features)
        counts[index] = counts.get(index, 0) + 1
    indices = np.fromiter(sorted(counts), np.int64, len(counts))
    values = np.array([counts[i] for i in indices.tolist()], np.float64)
    values /= math.sqrt(float(values @ values))
    return indices, values


def _scan(text: str) -> str:
    if len(text) <= MAX_SCAN_CHARS:
        return text
    half = MAX_SCAN_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def extract(messages: Sequence[Any] | str) -> Features:
    """Features of the prompt being asked now.

    Args:
        messages: OpenAI chat messages of any shape (content as a string, a list of parts,
            ``None``; system-only or empty lists are fine), or a bare prompt string.

    Returns:
        ``Features`` of the text with surrounding whitespace removed; a prompt with no user
        text (or only whitespace) gives all-zero text features. Never raises on
        malformed messages (they are skipped, as ``router_models.prompt`` does).
    """
    # Whitespace around a text is not read: no training prompt has any, and a client's
    # trailing newline (or a whitespace-only turn) would otherwise move the length features.
    if isinstance(messages, str):
        text = messages.strip()
        has_system, turns, context_chars = 0.0, 1, len(text)
    else:
        text = prompt_text(messages).strip()
        dicts = [m for m in messages if isinstance(m, dict)]
        has_system = float(any(m.get("role") in ("system", "developer") for m in dicts))
        turns = sum(1 for m in dicts if m.get("role") in ("user", "assistant"))
        context_chars = sum(len(content_text(m.get("content")).strip()) for m in dicts)
    full_chars = len(text)
    text = _scan(text)
    lower = text.lower()
    spaced = _CJK.sub(r" \1 ", text) if _CJK.search(text) else text
    words = spaced.split()
    n_words = len(words)
    tokens = _TOKEN.findall(spaced.lower())
    bigrams = [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    numbers = len(_NUMBER.findall(text))
    # Capitalised words that do not open a sentence: names, places, titles. Quoted material
    # is data the prompt supplies ("the last letters of "Jeff Jen Giselle""), not an entity
    # to look up, so it does not count.
    unquoted = _QUOTE.sub(" ", spaced).split() if '"' in text or "“" in text else words
    capitalised = sum(1 for prev, w in zip(unquoted, unquoted[1:], strict=False)
                      if w[:1].isupper() and w[1:2].islower() and prev[-1:] not in ".!?:")
    digits = sum(c.isdigit() for c in text)
    log = math.log1p
    has_edges = "-" in text or "(" in text or "—" in text
    dense = np.array([
        log(full_chars), log(n_words), log(len(_SENTENCE.findall(text))),
        log(text.count("\n")), min(text.count("?") + text.count("？"), 5) / 5.0,
        log(numbers), numbers / n_words if n_words else 0.0,
        log(len(_OPERATOR.findall(text))), float(bool(_EQUATION.search(text))),
        float(any(c in text for c in _MONEY_CHARS)
              or any(t in _MONEY_WORDS for t in tokens)),
        log(len(_FRACTION.findall(text))),
        log(sum(1 for t in tokens if t in _STEP_WORDS)),
        float(any(b in _HOW_BIGRAMS for b in bigrams)),
        log(sum(1 for t in tokens if t in _SEQUENCE_WORDS)),
        log(len(_EDGE.findall(text))) if has_edges else 0.0,
        log(sum(1 for t in tokens if t in _GRAPH_WORDS)),
        log(_option_marks(text)), float(any(c in lower for c in _CHOICE_CUES)),
        log(capitalised), capitalised / n_words if n_words else 0.0,
        log(len(_YEAR.findall(text))), log(len(_QUOTE.findall(text))),
        log(sum(1 for t in tokens if t in _FACT_WORDS)),
        float(any(b in _FANOUT_BIGRAMS for b in bigrams)),
        float(any(t in _COMPARISON_WORDS for t in tokens)
              or any(b in _COMPARISON_BIGRAMS for b in bigrams)),
        float(bool(tokens) and tokens[0] in _YES_NO_WORDS),
        log(sum(lower.count(m) for m in _CODE_MARKS)),
        has_system, log(turns), log(context_chars),
        (sum(len(w) for w in words) / n_words / 10.0) if n_words else 0.0,
        digits / len(text) if text else 0.0,
    ], np.float64)
    indices, values = _hash_tokens(tokens, bigrams)
    return Features(dense, indices, values, state_steps(text))


# Prompts that exercise every cue (options on lines and inline, steps, dates, graphs, money,
# code, Chinese text, a conversation): their features fingerprint the extraction code
# (``fingerprint``).
PROBE_PROMPTS: tuple[Any, ...] = (
    "What is the capital of France?",
    "Tom has 3 apples and buys 2 bags of 6. He gives half to Ann. How many apples has he now?",
    "Which of the following is a prime number?\n(A) 21\n(B) 23\n(C) 25\n(D) 27",
    "The choices are A) 148, B) 441, C) 12. Option D: 41. Which is right?",
    "Yesterday was April 30, 2021. What is the date today in MM/DD/YYYY?\nA) 05/01/2021\n"
    "B) 04/29/2021",
    "Edges: 1 -> 2, 2 -> 3, 4 -> 5. Is node 3 reachable from node 1? Answer yes or no.",
    "Alice has a red ball and Bob a blue ball. First they swap. Then Bob swaps with Claire. "
    "What does Alice hold at the end?",
    'Who directed the film "Moonlight" released in 2016, and in which city was he born?',
    "A shirt costs $20 and is 15% off. What is the price in dollars?",
    "def f(x):\n    return x * 2\n\nWhat does f(21) return?",
    "小明有3个苹果，又买了5个。他现在有几个苹果？",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
     {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Is 91 divisible by 7? Explain step by step."}],
)


def fingerprint() -> str:
    """SHA-256 (hex) of what the classifier's heads read of ``PROBE_PROMPTS``: dense cues
    rounded to 9 places, hashed n-gram indices and values (not ``steps``, which only the
    policies read, each time). A classifier records it when fitted (``router_models.train``):
    features computed otherwise than at training time change it, and the shipped weights
    would then be read against cues they were not fitted on."""
    digest = hashlib.sha256()
    for prompt in PROBE_PROMPTS:
        features = extract(prompt)
        digest.update(np.round(features.dense, 9).tobytes())
        digest.update(features.hash_indices.astype(np.int64).tobytes())
        digest.update(np.round(features.hash_values, 9).tobytes())
    return digest.hexdigest()
