"""Final-answer extraction and normalisation for voting."""

from __future__ import annotations

import pytest

from router_models.answers import extract_answer, normalise

SAME = [
    ("The answer is 1,234.", "So the final answer is $1234", "1234"),
    ("\\boxed{\\frac{1}{2}} hmm \\boxed{0.5}", "The answer is 1/2", "0.5"),
    ("The answer is 0.50", "Answer: 1/2", "0.5"),
    ("#### 18", "She earns 18 dollars. The answer is 18 dollars.", "18"),
    ("The answer is (B).", "Answer: b", "b"),
    ("Option C", "The answer is C)", "c"),
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
