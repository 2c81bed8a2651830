"""A question that names what a document is about is covered, however it is phrased
(``service.coverage.names``); a question that names nothing the collection holds is not."""

from __future__ import annotations

from router_models.plan import Scores
from router_models.policies.prior import read_search
from router_models.steps import state_steps
from service.coverage import coverage, coverage_shares, names
from service.search.base import Hit

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
    shares = coverage_shares(problem, [NATALIA])
    assert shares.names == 1.0 and shares.words < 0.5
    steps = state_steps(problem)
    assert steps >= 2
    read = read_search(Scores(0.5, 0.9, 0.1, steps=steps), shares.words, shares.names)
    assert read.search <= 0.3  # not a search prompt: it carries its own facts
    # A question about her, with no steps of its own, is the collection's.
    question = "Which telenovela made Natalia famous?"
    shares = coverage_shares(question, [NATALIA])
    read = read_search(Scores(0.5, 0.1, 0.1, steps=state_steps(question)), shares.words,
                       shares.names)
    assert read.search >= 0.5
