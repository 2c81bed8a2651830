"""Final-answer extraction and normalisation, for majority voting and for exact checkers.

Two answers vote together when their normal forms are equal. The normal form is read by a
strict grammar, tried in this order on the answer's span:

- option letters: ``B``, ``(B)``, ``B.``, ``Option B`` -> ``B`` (upper case); when the prompt
  lists lettered options (``options``), also a letter followed by its option's text:
  ``C) 12``, ``(C) 12``, ``C. twelve`` -> ``C``;
- yes/no: ``yes``/``no`` (and ``true``/``false``) as a whole word followed by nothing or by
  punctuation: ``Yes.``, ``No, because ...``; never ``N``, ``No one`` or ``Nothing``;
- numbers: a number that opens the span, with a Unicode minus, thousands separators, a
  currency sign, up to two unit words or ``%`` (``50%`` votes with ``50``), and that ends at
  the end of its sentence (``42. Because 7 is prime`` -> ``42``); compared exactly as
  rationals: integers without ``.0``, terminating decimals in full (``1234567.5`` and
  ``1234568.4`` stay apart), other fractions as ``p/q`` (``1/3``);
- LaTeX (``\\frac``, ``\\sqrt``, ``\\pi``, ``^`` ...): parsed into a SymPy expression by
  latex2sympy2_extended, the LaTeX parser of Hugging Face's Math-Verify; a rational value is
  written as a number above (``\\frac{1}{2}`` -> ``0.5``), any other expression by SymPy's
  printer, after SymPy's automatic canonicalisation (``\\frac{1}{\\sqrt{2}}`` and
  ``\\frac{\\sqrt{2}}{2}`` both -> ``sqrt(2)/2``);
- other text: lower case, articles and surrounding punctuation dropped, spaces collapsed,
  cut at the end of its first sentence.

Where the answer is found, in order: the last ``\\boxed{...}``; the last "the answer is X",
"correct answer is X", "final answer: X", "Answer: X", "the answer to this question is X",
"the answer must be X", ``#### X``; then (unless ``strict``)
the last line: a lone option letter or yes/no, "So, no.", its last number, or the line itself.
The markers follow the conventions of self-consistency evaluation (Wang et al. 2023) and of
GSM8K (``#### X``).

Speed: extraction runs on every vote sample, so the grammar is regular expressions and
``fractions.Fraction``; SymPy is imported and called only for spans that hold LaTeX, and only
for spans it can parse quickly (short, without factorials, sums or large powers, which SymPy
would evaluate exactly and could take unbounded time over). bench/answers.py measures it.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Collection
from fractions import Fraction

# Characters models write for a minus sign, and spaces they write inside numbers.
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-",
                        "\uff0d": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Only where the answer starts matters, so the words before "answer" ("the", "correct",
# "final") are not part of the patterns. Each pattern starts with a literal and is run on the
# lower-cased text: re then scans for the literal, about 20 times faster on a long chain than
# one case-insensitive alternation (bench/answers.py).
_MARKER_TAIL = r"\s*[:：]?[ \t]*"
# "The answer to this question is B) ..." and "the answer must be D) apartment" state the
# answer as plainly as "the answer is B" (seen in the embedded model's CommonsenseQA votes,
# where each became a ballot of its own text).
_MARKERS = tuple(re.compile(pattern + _MARKER_TAIL) for pattern in (
    r"answer\s*(?:is|[:：=])", r"####", r"correct\s+(?:option|choice|letter)\s+is",
    r"right\s+(?:option|choice|letter)\s+is",
    r"answer\s+to\s+(?:this|the|that)\s+(?:question|problem)\s+is",
    r"answer\s+(?:must|would|should|will)\s+be"))
_MARKDOWN = re.compile(r"[*_`]")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_LATEX_INLINE = re.compile(r"^\$+|\$+$|^\\\(|\\\)$|^\\\[|\\\]$")

_LETTER_ALONE = re.compile(
    r"^(?:(?:option|choice|letter)\s+)?\(?([A-Ja-j])\)?\s*[.:;!,]?$", re.IGNORECASE)
_LETTER_WITH_TEXT = re.compile(
    r"^(?:(?:option|choice|letter)\s+)?(?:\(([A-Ja-j])\)|([A-Ja-j])[).:])\s+\S", re.IGNORECASE)
# "B. Because ...": a capital letter whose sentence ends at once, before a new sentence (not an
# initial such as "J. K. Rowling", whose next word is another initial).
_LETTER_THEN_SENTENCE = re.compile(r"^\(?([A-J])\)?\.\s+[A-Z][a-z]+\b")
_YES_NO = re.compile(r"^(yes|no|true|false)(?:\s*[.,;:!?)\u2014-]|$)", re.IGNORECASE)
_SO_YES_NO = re.compile(r"^(?:so|thus|hence|therefore)\s*,?\s*(yes|no)\s*[.!]?$",
                        re.IGNORECASE)
_YES_NO_WORDS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_LEADING_NUMBER = re.compile(
    rf"^([-+]?)\s*(?:[$€£¥]\s?)?([-+]?)({_DIGITS})(?:\s*/\s*({_DIGITS}))?")
_ANY_NUMBER = re.compile(rf"[-+]?(?:[$€£¥]\s?)?[-+]?{_DIGITS}(?:\s*/\s*{_DIGITS})?")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\s*=\s*")
_LATEX_SPACING = re.compile(r"\\[,!;: ]|\{,\}|\^\s*\{?\\circ\}?|\\(?=[%$])")
_SENTENCE_END = re.compile(r"\.(?:\s+|$)|[!?;](?:\s|$)|\n")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "no", "mt",
                            "ft", "inc", "co", "ltd", "e.g", "i.e", "u.s", "u.k", "etc"})
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_UNIT_WORD = re.compile(r"^(?:[^\W\d]+[23]?(?:/[^\W\d]+)?|%|°[CF]?)\.?$")
_OPTIONS_IN_PROMPT = re.compile(r"(?:^|\n)\s*\(?([A-J])[.)]\s+\S|\(([A-J])\)\s*\S")

# What SymPy is given: short spans without constructs it would evaluate at unbounded cost.
_MAX_LATEX_CHARS = 200
_LATEX_HINT = re.compile(r"\\[a-zA-Z]+|\^|\\sqrt|π")
_COSTLY = re.compile(r"!|\\(?:sum|prod|int|lim|binom|choose|infty|begin)|\^\s*\{[^{}]*[\^{]")
_POWER = re.compile(r"\^\s*(\{[^{}]*\}|\S)")
_SMALL_EXPONENT = re.compile(r"^\{?\s*-?\s*(?:\d{1,3}|[a-zA-Z]|\\circ|\\prime)\s*\}?$")


def extract_answer(text: str | None, *, strict: bool = False,
                   options: Collection[str] = ()) -> str | None:
    """The normalised final answer in a model's output, or None when there is none.

    Args:
        text: the completion text.
        strict: only explicit answers count (``\\boxed{}``, "the answer is", "Answer:",
            ``####``); used to decide whether a chain cut by its budget reached an answer.
        options: the option letters the prompt offers (``lettered_options``); with them a
            letter followed by its option's text (``C) 12``) reads as the letter.
    """
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalise(boxed, options=options) or None
    marked = _last_marker(text)
    if marked is not None:
        return normalise(marked, options=options) or None
    if strict:
        return None
    line = _clean(_last_line(text))
    if not line:
        return None
    letter = _letter(line, options)
    if letter is not None:
        return letter
    yes_no = _yes_no(line) or _so_yes_no(line)
    if yes_no is not None:
        return yes_no
    number = _number(line)
    if number is not None:
        return number
    if _LATEX_HINT.search(line) is None:
        found = _ANY_NUMBER.findall(line)
        if found:
            return _number(found[-1]) or normalise(line, options=options) or None
    return normalise(line, options=options) or None


def json_answer(text: str | None) -> str | None:
    """The answer of a structured-output reply (``response_format`` json_object or
    json_schema): the whole JSON value, in one canonical form (keys sorted, no spaces), so
    samples that state the same object vote together however they lay it out. None when the
    text is not one JSON value (a reply cut by its cap), which then does not vote."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def first_answer_end(text: str | None) -> int | None:
    """Where a model's output first states an explicit answer: the index just past the first
    ``\\boxed{...}``, or past the sentence (or line) that the first "the answer is",
    "Answer:" or ``####`` marker opens. None when no explicit answer is stated (what
    ``extract_answer(..., strict=True)`` would find nothing in).

    A sample cut just after this point would already carry its answer, so the tokens before
    it are what the answer needs; what a model writes after (a check of its work) is not
    (``router_models.answer_lengths``)."""
    if not text:
        return None
    ends: list[int] = []
    boxed = _BOXED.search(text)
    if boxed is not None and (close := _closing_brace(text, boxed.end())) is not None:
        ends.append(close + 1)
    lower = _lower_aligned(text)
    for pattern in _MARKERS:
        for match in pattern.finditer(lower):
            line = text[match.end():].split("\n", 1)[0]
            if not line.strip():
                continue
            stop = _SENTENCE_END.search(line, len(line) - len(line.lstrip()) + 1)
            ends.append(match.end() + (stop.start() + 1 if stop else len(line)))
            break  # the pattern's first stated answer
    return min(ends) if ends else None


def normalise(answer: str, *, options: Collection[str] = ()) -> str:
    """The normal form of one answer's span (see the module docstring); "" for no content.

    Args:
        answer: the span that holds the answer (the inside of ``\\boxed{}``, the text after
            "the answer is", or a line).
        options: as for ``extract_answer``.
    """
    span = _clean(answer)
    if not span:
        return ""
    letter = _letter(span, options)
    if letter is not None:
        return letter
    yes_no = _yes_no(span)
    if yes_no is not None:
        return yes_no
    span = _ASSIGNMENT.sub("", span)  # "x = 5" -> "5"
    number = _number(span)
    if number is not None:
        return number
    if "=" in span:  # "5 + 3 = 8": what it equals
        number = _number(span.rsplit("=", 1)[1].strip())
        if number is not None:
            return number
    if _LATEX_HINT.search(span):
        maths = _latex(span)
        if maths is not None:
            return maths
    return _text(_first_sentence(span))


def lettered_options(prompt: str) -> frozenset[str]:
    """The option letters a prompt lists (``A) ...``, ``(B) ...``, ``C. ...`` at a line's
    start), upper case; empty when it lists none. Scans at most the first 8000 characters."""
    found = _OPTIONS_IN_PROMPT.findall(prompt[:8000])
    letters = frozenset(a or b for a, b in found)
    return letters if len(letters) >= 2 else frozenset()


def canonical_number(value: Fraction) -> str:
    """An exact rational's normal form: ``5``, ``-0.25``, ``1234567.5``, or ``p/q`` when its
    decimal expansion does not terminate (``1/3``)."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = value * 10 ** places  # an integer: the denominator divides 10**places
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


# --- the grammar's parts ---------------------------------------------------------------------


def _clean(text: str) -> str:
    """Unicode forms folded (NFKC, minus signs), markdown and LaTeX text wrappers dropped,
    surrounding quotes and trailing punctuation stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_MINUS)
    text = _MARKDOWN.sub("", text)
    text = _LATEX_WRAPPERS.sub(r"\1", text)
    # Thin spaces and escapes inside numbers and units: 1{,}234, 1\,000, 50\%, 30^\circ.
    text = _LATEX_SPACING.sub(lambda m: "," if m.group() == "{,}" else "", text).strip()
    text = _LATEX_INLINE.sub("", text).strip()
    text = text.strip(" \t\"'“”‘’")
    return text.rstrip(",;!? ").strip()


def _letter(span: str, options: Collection[str]) -> str | None:
    alone = _LETTER_ALONE.match(span) or _LETTER_THEN_SENTENCE.match(span)
    if alone is not None:
        letter = alone.group(1)
        # A lone lower-case "a" is the article unless the prompt offers an option a.
        if letter == "a" and options and "A" not in options:
            return None
        return letter.upper()
    if options:
        with_text = _LETTER_WITH_TEXT.match(span)
        if with_text is not None:
            letter = (with_text.group(1) or with_text.group(2)).upper()
            if letter in options:
                return letter
    return None


def _yes_no(span: str) -> str | None:
    match = _YES_NO.match(span)
    return None if match is None else _YES_NO_WORDS[match.group(1).lower()]


def _so_yes_no(span: str) -> str | None:
    match = _SO_YES_NO.match(span)
    return None if match is None else match.group(1).lower()


def _number(span: str) -> str | None:
    """The span's number when a number opens it and nothing but a unit, ``%`` or the end of
    the sentence follows; None otherwise."""
    match = _LEADING_NUMBER.match(span)
    if match is None:
        return None
    rest = span[match.end():].strip()
    end = _SENTENCE_END.search(rest)
    sentence = (rest[:end.start()] if end else rest).strip().rstrip(".")
    if sentence:
        words = sentence.split()
        if len(words) > 2 or not all(_UNIT_WORD.match(word) for word in words):
            return None
    sign = -1 if (match.group(1) + match.group(2)).count("-") % 2 else 1
    try:
        value = Fraction(match.group(3).replace(",", ""))
        if match.group(4) is not None:
            value /= Fraction(match.group(4).replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return canonical_number(sign * value)


def _first_sentence(span: str) -> str:
    """The span up to the end of its first sentence, not cut after an abbreviation or an
    initial (``Dr. Smith``, ``J. K. Rowling``)."""
    for end in _SENTENCE_END.finditer(span):
        if span[end.start()] == ".":
            before = span[:end.start()].rsplit(None, 1)
            word = before[-1].lower() if before else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        return span[:end.start()]
    return span


def _text(span: str) -> str:
    text = _ARTICLES.sub(" ", span.lower())
    return " ".join(text.replace(",", " ").split()).strip(" .;:!?\"'")


def _latex(span: str) -> str | None:
    """The normal form of a LaTeX span through SymPy, or None when it cannot be parsed
    cheaply or at all."""
    if len(span) > _MAX_LATEX_CHARS or _COSTLY.search(span):
        return None
    if not all(_SMALL_EXPONENT.match(p) for p in _POWER.findall(span)):
        return None
    return _parsed_latex(span)


def load_latex_parser() -> None:
    """Import SymPy and the LaTeX parser now (about 1.7 s on this project's 2-core machine),
    so that the first LaTeX answer a vote reads does not pay for it. The gateway calls it in
    a thread at start-up."""
    import latex2sympy2_extended  # noqa: F401


@functools.lru_cache(maxsize=4096)
def _parsed_latex(span: str) -> str | None:
    # Imported here: SymPy and the parser take about a second to import, and most answers
    # never need them.
    from latex2sympy2_extended import latex2sympy
    from sympy import Basic, Rational

    try:
        expr = latex2sympy(span)
        if not isinstance(expr, Basic):
            return None
        # The parser builds unevaluated products and powers; evaluating them lets SymPy's
        # automatic canonicalisation make 1/sqrt(2) and sqrt(2)/2 one expression.
        expr = expr.doit()
    except Exception:  # the parser raises many kinds of errors on text it cannot read
        return None
    if isinstance(expr, Rational):
        return canonical_number(Fraction(int(expr.p), int(expr.q)))
    if expr.is_number and expr.is_rational and expr.is_finite:
        value = Rational(expr)
        return canonical_number(Fraction(int(value.p), int(value.q)))
    return str(expr).replace(" ", "")


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    close = _closing_brace(text, starts[-1])
    return None if close is None else text[starts[-1]:close]


def _closing_brace(text: str, start: int) -> int | None:
    """The index of the ``}`` that closes a brace opened just before ``start``, or None."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _lower_aligned(text: str) -> str:
    """``text`` lower-cased with its indices kept (a few characters lower-case to two)."""
    lower = text.lower()
    if len(lower) != len(text):
        lower = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    return lower


def _last_marker(text: str) -> str | None:
    lower = _lower_aligned(text)
    end = -1
    for pattern in _MARKERS:
        for match in pattern.finditer(lower):
            end = max(end, match.end())
    if end < 0:
        return None
    value = text[end:].split("\n", 1)[0]
    return value.strip() or None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    return lines[-1] if lines else ""
