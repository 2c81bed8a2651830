"""Open-ended generation read off a request's text (router_models/generation.py)."""

from __future__ import annotations

import pytest

from router_models.generation import conversation_generation, open_generation, opening_verb

ARTICLE = ("The company sold 300 cars in 2020. Then it bought a factory. Sales doubled to 600. "
           "It paid 2 million in fines. ") * 3 + "Asked why, the CEO said the answer is growth."


@pytest.mark.parametrize("text", [
    "Write a haiku about autumn.", "Translate 'good morning' into French.",
    "Explain how a transistor works.", "Write a Python function that reverses a string.",
    "Can you help me write an email to my boss asking for a day off?",
    "Hi! Could you please summarise this article for me?",
    "Write a 500-word essay on climate change.",  # a number, no answer asked for
    "Continue the story: Once upon a time, a fox lived in the woods.",
    "Please summarize this article for me: " + ARTICLE,  # the material's steps and answer
    # The material after the instruction's colon is the text to change, however short: its
    # "the answer" or "yes or no" ask the model for nothing.
    "Translate into French: The answer is no.",
    "Summarize:\nThe survey asked yes or no questions; the answer was mostly yes.",
])
def test_requests_for_text_to_read_are_generation(text: str) -> None:
    assert open_generation(text)


@pytest.mark.parametrize("text", [
    "What is the capital of France?", "Compute 3+4.", "and in French?",
    "Give me three ideas for a birthday party.",  # "give" opens questions as often
    "Explain your reasoning, then give the answer. What is 3 + 4?",  # an answer cue
    "Describe the capital of France. A) Paris B) Rome",  # options to choose from
    "Explain how many apples are left if Tom has 12 apples, gives 5 to Ann and then buys 3.",
    "Explain " + ARTICLE,  # not a transforming verb: the stated steps make a word problem
    "Translate and give the answer in French: is 7 a prime number?",  # asked before the colon
    # Options still make a question (MMLU, high-school mathematics).
    "Rewrite the expression $6j^2 - 4j + 12$ in the form $c(j + p)^2 + q$. What is $q/p$?\n"
    "A) 3\nB) -34\nC) -38\nD) -1",
    "", "   ", "42",
])
def test_questions_with_an_answer_to_count_are_not(text: str) -> None:
    assert not open_generation(text)


@pytest.mark.parametrize("text, expected", [
    ("How does photosynthesis work?", True), ("Why is the sky blue?", True),
    ("Please, how do I make pancakes?", True), ("How to make pancakes?", True),
    ("What is the difference between a list and a tuple?", True),
    ("Tell me about the Roman Empire.", True),
    ("How many legs does a spider have?", False),  # a value
    ("How would a typical person answer: did John cause it?", False),  # a judgement
    ("Why would someone go to the store?\nA) buy food\nB) sleep\nC) run", False),  # options
    ("How to Eat, released in which year, is a book by Nigella Lawson?", False),  # a fact
    ("What is Python?", False),  # as often one short answer
])
def test_questions_answered_by_an_explanation_are_generation(text: str, expected: bool) -> None:
    # On the embedded model "How does photosynthesis work?" got a vote of 3 samples cut at
    # 157 tokens each, no answer to count, and the reply cut there.
    assert open_generation(text) is expected


def test_polite_openings_are_read_past_one_at_a_time() -> None:
    assert opening_verb("Hi! Please, could you help me to draft a memo") == "draft"
    assert opening_verb("I'd like you to rewrite this") == "rewrite"
    assert opening_verb("Canyon walls are steep") == "canyon"  # "can" only as a word
    assert opening_verb("!!!") == ""


def _chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in turns]


def test_a_short_follow_up_to_a_generation_request_is_generation_too() -> None:
    poem = ("user", "Write a haiku about autumn.")
    answer = ("assistant", "Leaves fall, slow and red...")
    assert conversation_generation(_chat(poem, answer, ("user", "and in French?")))
    assert conversation_generation(_chat(("system", "Be brief."), poem, answer,
                                         ("user", "Make it rhyme, please.")))
    # A follow-up to a question, a long new turn, or no answer in between: read on its own.
    question = ("user", "What is 17 * 23?")
    assert not conversation_generation(_chat(question, ("assistant", "391"),
                                             ("user", "and 18 * 23?")))
    # "Why?" asks for an explanation itself, but a follow-up to it is a question of its own.
    assert conversation_generation(_chat(question, ("assistant", "391"), ("user", "Why?")))
    assert not conversation_generation(_chat(
        poem, answer, ("user", "Now tell me which of these two numbers is larger: 17 or 23?")))
    assert not conversation_generation(_chat(poem, ("user", "and in French?")))
    assert not conversation_generation(_chat(("system", "Write poems.")))
    assert not conversation_generation(["not a message", 3])


def test_a_run_of_short_follow_ups_keeps_reading_back_to_the_generation_request() -> None:
    # Seen on the embedded model: "make it rhyme" after "and in French?" after a poem got a
    # vote of 8 samples cut at 39 tokens each, none with an answer to count.
    poem = ("user", "Write a short poem about the sea.")
    answer = ("assistant", "Waves roll in...")
    follow_ups = [("user", "and in French?"), answer, ("user", "make it rhyme"), answer]
    assert conversation_generation(_chat(poem, answer, *follow_ups, ("user", "another one")))
    assert conversation_generation(_chat(
        ("user", "Explain recursion to a beginner."), answer,
        ("user", "Can you give an example?"), answer, ("user", "shorter please"), answer,
        ("user", "Why?")))
    # The run ends at the first long turn, and a run that began with a question is not one.
    question = ("user", "What is 17 * 23?")
    assert not conversation_generation(_chat(question, ("assistant", "391"), ("user", "Why?"),
                                             answer, ("user", "and 18 * 23?")))
    assert not conversation_generation(_chat(
        poem, answer, ("user", "Now tell me which of these two numbers is larger: 17 or 23?"),
        answer, ("user", "Why?"), answer, ("user", "and 19?")))
    # A turn with no answer after it breaks the run, as it does for one follow-up.
    assert not conversation_generation(_chat(poem, ("user", "and in French?"),
                                             ("user", "make it rhyme")))
