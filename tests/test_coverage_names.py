"""A question that names what a document is about is covered, however it is phrased
(``service.coverage.names``); a question that names nothing the collection holds is not, nor
a self-contained word problem (``router_models.quantities``)."""

from __future__ import annotations

import pytest

from router_models.plan import Scores
from router_models.policies.prior import COVERED, read_search
from router_models.quantities import is_word_problem, stated_quantities
from router_models.steps import state_steps
from router_models.tasks import SuiteUnavailable, load_suite
from service.coverage import coverage, coverage_shares, names
from service.routing import COVERAGE_HITS
from service.search import LocalIndex
from service.search.base import Hit
from service.search.local import index_path
from tests.hotpotqa import needs_hotpotqa, questions

KAEXTARR = Hit("fact-0", "Kaextarr", (
    "Kaextarr is a brewery in the Broskthil valley. It was founded in 1484 by Broth "
    "Thousknaer. Today Kaextarr is best known for its terr ink, which traders carry down the "
    "valley every autumn."), 3.1)


def test_paraphrased_questions_about_a_named_entity_are_covered():
    # The word share misses these: their frames ("established", "famous for making") are
    # not the document's words, and only one word, the name, is shared.
    for question in ("According to the records, who established Kaextarr?",
                     "Kaextarr is famous for making what?",
                     "In which year was Kaextarr established?"):
        assert names(question, [KAEXTARR]) == ["kaextarr"]
        assert coverage(question, [KAEXTARR]) == 1.0


def test_words_that_start_a_sentence_are_names_only_when_the_hits_spell_them_so():
    assert names("Which valley is the brewery in? Begin with the name.", [KAEXTARR]) == []
    # "Today" starts a sentence in the question and in the hit: not a name
    assert names("Today, what does it make?", [KAEXTARR]) == []


def test_names_the_collection_does_not_hold_leave_the_question_uncovered():
    question = "Which of these rivers is the longest? (A) Nile (B) Danube (C) Rhine"
    assert names(question, [KAEXTARR]) == ["nile", "danube", "rhine"]
    assert coverage(question, [KAEXTARR]) == 0.0
    assert coverage("Who founded the Vantor shipyard?", [KAEXTARR]) == 0.0
    # one of four options named in the collection is not its subject
    assert coverage("Which is oldest? (A) Kaextarr (B) Quenmoor (C) Vantor (D) Lind",
                    [KAEXTARR]) == 0.25


def test_a_name_met_in_passing_is_not_the_subject():
    passing = Hit("d1", "Travel notes",
                  "Our team met in Lyon for the offsite. It was held in France in 2023.", 1.0)
    assert coverage("What is the capital of France?", [passing]) == 0.0
    # Where the document is about it (title or first sentence), the name is its subject.
    about = Hit("d2", "Notes", "France hosted the 2023 offsite of the team.", 1.0)
    assert coverage("What is the capital of France?", [about]) == 1.0


NATALIA = Hit("wiki-1", "Natalia Oreiro", (
    "Natalia Oreiro is a Uruguayan singer and actress. She starred in the telenovela Muneca "
    "Brava and released several albums."), 9.0)


def test_a_word_problems_characters_are_not_the_collections_subjects():
    # A word problem whose only name is what the top hit is about; none of its other words are.
    problem = ("Natalia sold clips to 48 of her friends, and then she sold half as many "
               "clips to her neighbours. How many clips did Natalia sell altogether?")
    assert names(problem, [NATALIA]) == ["natalia"]
    assert coverage_shares(problem, [NATALIA]) == (0.0, 0.0)  # a word problem
    # A prompt that states its dependent steps carries its own facts too, word problem or
    # not: its names alone do not cover it (``read_search``).
    story = ("A coin is heads up. Natalia flips the coin. Then Natalia turns it over. Is the "
             "coin still heads up?")
    shares = coverage_shares(story, [NATALIA])
    assert shares.names == 1.0 and shares.words < 0.5
    steps = state_steps(story)
    assert steps >= 2
    read = read_search(Scores(0.5, 0.9, 0.1, steps=steps), shares.words, shares.names)
    assert read.search <= 0.3  # not a search prompt: it carries its own facts
    # A question about her, with no steps of its own, is the collection's.
    question = "Which telenovela made Natalia famous?"
    shares = coverage_shares(question, [NATALIA])
    read = read_search(Scores(0.5, 0.1, 0.1, steps=state_steps(question)), shares.words,
                       shares.names)
    assert read.search >= 0.5


CLAIRE = Hit("Claire Fryer", "Claire Fryer", (
    "Claire Fryer is an English cook and food writer. She wrote books on eggs, omelets and "
    "family breakfasts for every morning of the week."), 9.0)
CLAIRE_PROBLEM = ("Claire makes a 3 egg omelet every morning for her family. How many dozens of "
                  "eggs will she eat in 4 weeks?")


def test_a_word_problem_is_self_contained_whatever_names_it_shares_with_the_collection():
    # One dependent step only (the question is not a step), so the steps rule does not apply:
    # the word problem's own shape must.
    assert state_steps(CLAIRE_PROBLEM) < 2
    assert names(CLAIRE_PROBLEM, [CLAIRE]) == ["claire"]
    assert coverage_shares(CLAIRE_PROBLEM, [CLAIRE]) == (0.0, 0.0)
    read = read_search(Scores(0.5, 0.5, 0.6, steps=state_steps(CLAIRE_PROBLEM)), 0.0, 0.0)
    assert read.search <= 0.3
    # A question about her asks for a fact of the collection, not a computed quantity.
    question = "What did Claire Fryer write books about?"
    assert coverage_shares(question, [CLAIRE]).names == 1.0


def test_what_makes_a_word_problem():
    problems = (
        CLAIRE_PROBLEM,
        # number words and multiplicative relations are quantities
        "Jan has three times the number of pets as Marcia. Marcia has two more pets than "
        "Cindy. If Cindy has four pets, how many total pets do the three have?",
        "There are twice as many boys as girls at Dr. Wertz's school. If there are 60 girls "
        "and 5 students to every teacher, how many teachers are there?",
        "Sid traveled 110 miles in 2 hours, then 140 miles in 3 hours. What's his average "
        "speed?",
    )
    for text in problems:
        assert is_word_problem(text), text
    facts = (
        "Which magazine was started first, Arthur's Magazine or First for Women?",
        "Were Scott Derrickson and Ed Wood of the same nationality?",
        # numbers, even a quantity asked for, but no premise states the operands
        "What is the batting hand of each of the first five picks in the 1998 MLB draft?",
        "How many people lived in the city where the 2 founders were born as of 2010?",
        # a premise with a quantity, but no quantity asked for
        "The band released 3 albums in 12 years. Who was its lead singer?",
    )
    for text in facts:
        assert not is_word_problem(text), text
    assert stated_quantities("In 1998 she bought 2 cars, half as many as in 2004.") == 2


@needs_hotpotqa
def test_on_the_hotpotqa_collection_word_problems_stay_off_search_and_its_questions_on(
        hotpot_dir):
    """The rule on whole datasets, as ``Router.search_evidence`` reads them (the figures of
    ``bench/coverage_check.py``): every HotpotQA question but a misspelled one is still a
    search prompt, the first 200 GSM8K prompts none (4 of them were before, by a first name
    alone)."""
    index = LocalIndex(index_path(hotpot_dir))

    def read(text: str) -> float:
        shares = coverage_shares(text, index.search(text, COVERAGE_HITS), index.idf)
        return read_search(Scores(0.5, 0.5, 0.0, steps=state_steps(text)), shares.words,
                           shares.names).search

    assert "Claire Fryer" in {h.id for h in index.search(CLAIRE_PROBLEM, COVERAGE_HITS)}
    assert read(CLAIRE_PROBLEM) < COVERED
    # The README's example: France is only in a painter's first sentence ("known in France").
    assert read("What is the capital of France?") < COVERED
    # Its one word that no article holds is a misspelling ("paly"), and a word in no
    # document weighs most (``LocalIndex.idf``): 48% of the question (50% unweighed).
    assert [item["question"] for item in questions() if read(item["question"]) < COVERED] == [
        "What position does the footballer who plays for the capital and the largest city of "
        "Portugal paly?"]
    try:
        gsm8k = [item.prompt() for item in load_suite("gsm8k", limit=200)]
    except SuiteUnavailable as exc:
        pytest.skip(f"GSM8K not found: {exc}")
    assert [p for p in gsm8k if read(p) >= COVERED] == []


def test_a_name_in_a_first_sentence_about_something_else_is_not_the_subject():
    # The top hits of "What is the capital of France?" on the HotpotQA corpus: France is in
    # the first sentence, but the sentence is about a painter.
    painter = Hit("Joannes van der Brugghen", "Joannes van der Brugghen", (
        "Joannes van der Brugghen, known in France as Jean vander Bruggen, (1639 - c. 1714) "
        "was a Flemish engraver and print publisher."), 9.0)
    assert coverage("What is the capital of France?", [painter]) == 0.0
    # A character's name in the first sentence of a document about a game is not its subject.
    game = Hit("Demon Dice", "Demon Dice", (
        "Demon Dice, originally published as Chaos Progenitus, is a collectible dice game "
        "created by Lester Smith and Tim Brown."), 9.0)
    assert coverage("Lester wants to share his sweets with Tim. Who gets more?", [game]) == 0.0
    # Once a name is what a hit is about, the others count where its first sentence has them.
    assert coverage("Did Lester Smith create Demon Dice?", [game]) == 1.0
    assert coverage("Who created Demon Dice?", [game]) == 1.0


def test_two_common_words_of_a_short_prompt_are_chance():
    # A creative request shares "short" and "poems" with an author's article: 2 of its 4
    # content words, which made it a search prompt (half covered).
    author = Hit("Richard Wright (author)", "Richard Wright (author)", (
        "Richard Nathaniel Wright (September 4, 1908 - November 28, 1960) was an American "
        "author of sometimes controversial novels, short stories, poems, and non-fiction."),
        9.0)
    assert coverage("Write a short poem about the sea.", [author]) == 0.0
    assert coverage("Which novels and short poems did Richard Wright write?", [author]) > 0.5


def test_names_that_start_with_a_capital_outside_ascii_are_names():
    # "Östergötland", "Łódź", "Москва": the names rule read only A-Z as capitals, so a short
    # question about them (two content words: below the words rule's three) was uncovered.
    hits = [Hit("m", "Москва", "Москва — столица России и крупнейший город страны.", 2.0),
            Hit("l", "Łódź", "Łódź is the third-largest city in Poland.", 2.0)]
    assert names("Где находится Москва?", hits) == ["москва"]
    assert coverage("Где находится Москва?", hits) == 1.0
    assert coverage("Where is Łódź?", hits) == 1.0
    assert names("где находится москва?", hits) == []  # lower case: not a name


def test_accents_do_not_have_to_be_typed_for_coverage_either():
    hits = [Hit("z", "Zürich", "Zürich is the largest city in Switzerland.", 2.0)]
    assert coverage("How large is Zurich?", hits) == 1.0
    hits = [Hit("s", "Sao Paulo", "Sao Paulo is the largest city in Brazil.", 2.0)]
    assert coverage("How large is São Paulo?", hits) == 1.0
