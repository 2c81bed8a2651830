"""Final-answer extraction and normalisation for voting."""

from __future__ import annotations

import pytest

from router_models.answer_lengths import observations
from router_models.answers import (
    canonical_number,
    extract_answer,
    first_answer_end,
    lettered_options,
    normalise,
)

SAME = [
    ("The answer is 1,234.", "So the final answer is $1234", "1234"),
    ("\\boxed{\\frac{1}{2}} hmm \\boxed{0.5}", "The answer is 1/2", "0.5"),
    ("The answer is 0.50", "Answer: 1/2", "0.5"),
    ("#### 18", "She earns 18 dollars. The answer is 18 dollars.", "18"),
    ("The answer is (B).", "Answer: b", "B"),
    ("Option C", "The answer is C)", "C"),
    ("Yes.", "The answer is yes", "yes"),
    ("So, no.", "The final answer: No", "no"),
    ("The answer is 5.0", "five... I mean\n5", "5"),
]


@pytest.mark.parametrize(("first", "second", "expected"), SAME)
def test_equivalent_answers_normalise_alike(first, second, expected):
    assert extract_answer(first) == expected
    assert extract_answer(second) == expected


def test_text_answers_lose_articles_and_case():
    assert extract_answer("The answer is The Eiffel Tower.") == "eiffel tower"
    assert normalise("  Paris. ") == "paris"


def test_no_answer():
    assert extract_answer("") is None
    assert extract_answer(None) is None
    assert extract_answer("   \n ") is None


def test_strict_needs_an_explicit_answer():
    cut = "First we add 3 and 4 to get 7, then we multiply by"
    assert extract_answer(cut, strict=True) is None
    assert extract_answer(cut + " 2. The answer is 14.", strict=True) == "14"
    assert extract_answer("so it is \\boxed{14}", strict=True) == "14"


def test_the_last_explicit_answer_wins():
    text = "The answer is 3. Wait, recount: the answer is 4."
    assert extract_answer(text) == "4"


def test_negative_and_decimal_numbers():
    assert extract_answer("The answer is -3") == "-3"
    assert extract_answer("The answer is 2.25") == "2.25"
    assert extract_answer("The answer is 9/4") == "2.25"


# Issue 15: each answer form a review found misread, with the reading a person would give.
PROMPT_WITH_OPTIONS = "What is 3 * 4?\nA) 10\nB) 11\nC) 12\nD) 13"
READINGS = [
    ("The answer is \u22123", "-3"),                   # a Unicode minus sign
    ("The answer is \u2013 3", "-3"),                  # an en dash written as a minus
    ("Correct answer is B", "B"),                      # not "yes" (from "correct")
    ("The correct option is D.", "D"),
    ("N", "n"),                                        # a letter, not "no"
    ("No one", "no one"),                              # not "no"
    ("Nothing.", "nothing"),
    ("No, it is not.", "no"),
    ("Yes, both are American.", "yes"),
    ("The answer is 42. Because 7 is prime", "42"),    # the answer ends at its sentence
    ("The answer is B. Because the rest are wrong", "B"),
    ("The answer is J. K. Rowling.", "j. k. rowling"),  # initials do not end the sentence
    ("\\boxed{\\frac{1}{2}}", "0.5"),                 # LaTeX fractions are numbers
    ("The answer is \\(\\dfrac{3}{4}\\)", "0.75"),
    ("\\boxed{x = \\frac{1}{2}}", "0.5"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("The answer is 1{,}234", "1234"),
    ("\\boxed{50\\%}", "50"),
    ("The answer is 1234567.5", "1234567.5"),
    ("The answer is 1/3", "1/3"),
    ("5 + 3 = 8", "8"),
    ("The answer is 12 km/h.", "12"),
]


@pytest.mark.parametrize(("text", "reading"), READINGS)
def test_answer_forms_are_read_as_a_person_reads_them(text, reading):
    assert extract_answer(text) == reading


def test_close_large_numbers_do_not_vote_together():
    assert extract_answer("The answer is 1234567.5") != extract_answer("The answer is 1234568.4")
    assert extract_answer("1234568.4") == "1234568.4"


def test_boxed_fraction_votes_with_its_decimal():
    assert extract_answer("so \\boxed{\\frac{1}{2}}") == extract_answer("The answer is 0.5")


def test_equivalent_latex_expressions_vote_together():
    first = extract_answer("\\boxed{\\frac{1}{\\sqrt{2}}}")
    assert first == extract_answer("\\boxed{\\frac{\\sqrt{2}}{2}}")
    assert first == "sqrt(2)/2"
    assert extract_answer("\\boxed{2\\pi}") != extract_answer("\\boxed{\\pi}")


def test_a_letter_with_its_option_text_reads_as_the_letter_when_options_exist():
    options = lettered_options(PROMPT_WITH_OPTIONS)
    assert options == frozenset("ABCD")
    assert extract_answer("Answer: C) 12", options=options) == "C"
    assert extract_answer("The answer is (B) 11", options=options) == "B"
    # Without options in the prompt, "C) 12" is not an option letter.
    assert extract_answer("Answer: C) 12") != "C"
    # A letter the prompt does not offer is not an option.
    assert extract_answer("Answer: F) 12", options=options) != "F"


def test_prompts_without_lettered_options_have_none():
    assert lettered_options("What is 3 * 4? Answer with a number.") == frozenset()
    assert lettered_options("Choose:\n(A) red (B) blue") == frozenset("AB")


def test_latex_that_sympy_would_evaluate_at_length_is_kept_as_text():
    # A power tower or a huge factorial would take SymPy unbounded time: never parsed.
    assert extract_answer("\\boxed{9^{9^{9^{9}}}}") == "9^{9^{9^{9}}}"
    assert extract_answer("\\boxed{100000000!}") is not None


@pytest.mark.parametrize(("value", "text"), [
    ((5, 1), "5"), ((-1, 4), "-0.25"), ((2469135, 2), "1234567.5"), ((1, 3), "1/3"),
    ((1, 8), "0.125"), ((-7, 3), "-7/3"), ((3, 50), "0.06")])
def test_canonical_numbers_are_exact(value, text):
    from fractions import Fraction

    assert canonical_number(Fraction(*value)) == text


@pytest.mark.parametrize(("text", "stated"), [
    ("5 + 3 = 8.\nThe answer is 8. Let me check: 8 - 3 = 5.", "5 + 3 = 8.\nThe answer is 8."),
    ("The answer is 3.5 dollars. To check, 7 / 2 = 3.5.", "The answer is 3.5 dollars."),
    ("so \\boxed{\\frac{1}{2}} and then \\boxed{3}", "so \\boxed{\\frac{1}{2}}"),
    ("Reasoning...\nAnswer: B\nBecause B is larger.", "Reasoning...\nAnswer: B"),
    ("#### 18\nThe answer is 18.", "#### 18"),
])
def test_first_answer_end_is_where_the_first_explicit_answer_is_stated(text, stated):
    end = first_answer_end(text)
    assert end is not None and text[:end] == stated
    # Whatever follows, a sample cut there already carries the answer.
    assert extract_answer(text[:end], strict=True) == extract_answer(stated, strict=True)


@pytest.mark.parametrize("text", ["", "4 + 4 is 8", "The answer is:\n\n8", None])
def test_no_explicit_answer_has_no_answer_end(text):
    assert first_answer_end(text) is None


def test_observations_split_a_calls_usage_and_stop_at_the_answer():
    answered = "x" * 50 + " The answer is 7. " + "y" * 132  # 200 characters, answer at 67
    found = observations([
        (answered, "stop", 300),           # finished, checked its work after answering
        ("z" * 200, "stop", 300),          # finished, no explicit answer: all of it counts
        ("w" * 40, "length", 300),         # cut at its cap before any answer: censored
        ("", "stop", 300),                 # nothing generated: no observation
    ], completion_tokens=300 + 400)
    # The cut sample spent its cap (300); the other two share 400 by their characters.
    assert found == [(round(200 * 67 / 200), True), (200, True), (300, False)]


def test_a_sample_the_backend_stopped_before_its_cap_counts_what_it_spent():
    # A backend that ends a sample at its context's end (or a replay of a sample recorded with
    # a smaller cap) says "length" below the cap: the sample spent the call's 512 tokens, not
    # its cap of 2,000, and it is censored there.
    assert observations([("x " * 300, "length", 2000)], completion_tokens=512) == [(512, False)]


def test_a_sample_that_answers_only_where_its_cap_ends_is_read_as_cut():
    # A backend that writes until the cap and states its answer there (budget forcing, the
    # plain simulator on a prompt it does not know) says nothing about how long answers are:
    # read as answered at its cap, each next sample got 1.25x more, request after request.
    at_the_end = "x" * 280 + " The answer is 7."
    assert observations([(at_the_end, "stop", 300)], completion_tokens=300) == [(300, False)]
    # Without an explicit answer, a sample that spent its whole cap is cut, whatever it says.
    assert observations([("x" * 300, "stop", 300)], completion_tokens=300) == [(300, False)]
    # The same sample with room to spare, or one that answered early and then checked its work
    # to the cap, did answer where it says.
    assert observations([(at_the_end, "stop", 400)], completion_tokens=300) == [(300, True)]
    early = "x" * 50 + " The answer is 7. " + "y" * 232
    assert observations([(early, "length", 300)], completion_tokens=300) == [
        (round(300 * 67 / 300), True)]


def test_the_filled_share_is_one_over_the_samples_headroom():
    # An answer read past 1 / HEADROOM of a filled sample would raise the estimate, and the
    # next sample's cap, each request (bench/spend_bounds.py's answers_late backend).
    from router_models.answer_lengths import FILLED_ANSWER_SHARE
    from router_models.policies.prior import HEADROOM

    assert abs(FILLED_ANSWER_SHARE * HEADROOM - 1) < 1e-9


def test_a_sample_cut_inside_hidden_reasoning_is_a_cut():
    # A reasoning model cut before it wrote any content spent its cap on reasoning_content:
    # a censored observation, so its kind's samples get more room next time.
    assert observations([("", "length", 300), ("The answer is 7.", "stop", 300)],
                        completion_tokens=300 + 180) == [(300, False), (180, True)]
    assert observations([("", "stop", 300)], completion_tokens=0) == []



@pytest.mark.parametrize(("text", "reading"), [
    ("The answer to this question is B) learn from each other.", "B"),
    ("Given the context we can conclude that the answer must be D) apartment.", "D"),
    ("The answer to the problem is 12", "12"),
])
def test_an_answer_stated_without_is_is_read(text, reading):
    # Each of these voted as a text of its own on the embedded model (CommonsenseQA).
    options = lettered_options("Where?\nA) bank\nB) learn\nC) mall\nD) apartment\nE) home")
    assert extract_answer(text, options=options) == reading
    assert extract_answer(text, options=options, strict=True) == reading  # explicit answers
