"""Prompt features: every message shape, the cues, and agreement with scikit-learn's hashing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from router_models.features import (
    FEATURE_NAMES,
    FORMS,
    N_DENSE,
    N_HASH,
    extract,
    hashed_ngrams,
    prompt_form,
)

MESSAGE_SHAPES = [
    [],
    [{"role": "system", "content": "You are terse."}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"},
                                  {"type": "image_url", "image_url": {"url": "data:,"}}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
    [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}],
    ["not a message", 3, None, {"role": "user", "content": "hi"}],
    [{"role": "user"}],
    "a bare prompt string",
]


@pytest.mark.parametrize("messages", MESSAGE_SHAPES)
def test_messages_of_every_shape_give_finite_features(messages):
    f = extract(messages)
    assert f.dense.shape == (N_DENSE,) and np.isfinite(f.dense).all()
    assert len(f.hash_indices) == len(f.hash_values)
    assert ((f.hash_indices >= 0) & (f.hash_indices < N_HASH)).all()
    assert set(f.as_dict()) == set(FEATURE_NAMES)


def test_system_only_has_no_prompt_text_but_notes_the_system_turn():
    f = extract([{"role": "system", "content": "Be brief."}])
    assert f.as_dict()["has_system"] == 1.0
    assert f.as_dict()["log_chars"] == 0.0 and len(f.hash_indices) == 0


def test_the_last_user_turn_is_what_is_scored():
    early = {"role": "user", "content": "Here is an edge list: 1-2, 2-3, 3-4."}
    late = {"role": "user", "content": "Who directed the film Alien?"}
    f = extract([early, {"role": "assistant", "content": "ok"}, late])
    assert f.as_dict()["log_edges"] == 0.0
    assert f.as_dict()["log_fact_cues"] > 0
    assert f.as_dict()["log_turns"] == pytest.approx(math.log1p(3))


@pytest.mark.parametrize("text", [
    "Janet's ducks lay 16 eggs per day. How much in dollars does she make?",
    "Is node 12 connected to node 40 (t1) or to node 77 (t2)? Edges: 12-13, 13-40, 77-78.",
    "",
    "Ünïcödé wörds and emoji 🙂 mixed with code: def f(x): return x",
])
def test_hashing_matches_scikit_learns_hashing_vectorizer(text):
    vectorizer = HashingVectorizer(n_features=N_HASH, ngram_range=(1, 2),
                                   alternate_sign=False, norm="l2")
    expected = vectorizer.transform([text]).toarray()[0]
    indices, values = hashed_ngrams(text)
    got = np.zeros(N_HASH)
    got[indices] = values
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_cues_fire_on_their_kind_of_prompt():
    graph = extract("Undirected graph with edges 3-7, 7-9, 9-12, 4-5. Is node 3 connected "
                    "to node 12 or node 5?").as_dict()
    choice = extract("Which is a mammal? Answer Choices: (A) trout (B) whale (C) eel "
                     "(D) newt").as_dict()
    code = extract("```python\ndef f(x):\n    return x + 1\n```\nWhat does f(2) return?")
    fact = extract("Who was the president of the country where the director of Alien "
                   "was born in 1937?").as_dict()
    assert graph["log_edges"] >= math.log1p(3) and graph["log_graph_words"] > 0
    assert choice["log_options"] == pytest.approx(math.log1p(4)) and choice["choice_cue"] == 1
    assert code.as_dict()["log_code_cues"] > 0
    assert fact["log_fact_cues"] > 0 and fact["log_years"] > 0
    plain = extract("hello there").as_dict()
    assert plain["log_edges"] == plain["log_options"] == plain["log_fact_cues"] == 0


@pytest.mark.parametrize("letters", [
    "Which is a mammal?\nA) trout\nB) whale\nC) eel\nD) newt",
    "Which is a mammal?\n  A) trout\n  B) whale\n  C) eel\n  D) newt",
    "Which is a mammal? The choices are A) trout, B) whale, C) eel, D) newt",
    "Which is a mammal?\nA) trout B) whale\nC) eel D) newt",
])
def test_each_option_counts_once_however_it_is_written(letters):
    """Four options are four, whether each opens its line or they share one: a line-opening
    "A)" is an option line and, preceded by its newline, also looked like an option inside a
    line, so lettered lines with ")" counted twice (log_options log1p(8) for four options,
    where "A." lines gave log1p(4))."""
    assert extract(letters).as_dict()["log_options"] == pytest.approx(math.log1p(4))


@pytest.mark.parametrize(("text", "form"), [
    ("Which is a mammal?\nA) trout\nB) whale\nC) eel", "choice"),
    # Options inside a line, as letters or as "Option X:"; one such mark alone is no list.
    ("Maya needs a perfect square. The choices are A) 148, B) 441, C) 393. Which one?",
     "choice"),
    ("Ravi wrote down scores. Option A: 41. Option B: 45. Which option is the highest?",
     "choice"),
    ("Plan A) is to walk 3 km. How far is it?", "numeric"),
    # Options win over the coordinates and the path a multiple-choice question mentions.
    ("Reflect the path through (1, 2) and (3, 4). Which of the following is it? (A) x (B) y",
     "choice"),
    ("Edges: 1-2, 2-3, 5-6. Is node 1 connected to node 3?", "graph"),
    ("Roads: a-b, b-c. Can I drive from a to c?", "graph"),  # an edge list, no graph word
    # One subtraction or range is arithmetic, not an edge list.
    ("What is 13 - 16?", "numeric"),
    ("Lunch is served from 12-2. How long is it?", "numeric"),
    ("Are Christopher Nolan and Sathish Kalathil both film directors?", "comparison"),
    ("Do Medici and Senet have the same number of players?", "comparison"),
    ("Tom and Ann both have 3 apples. How many apples do they have?", "numeric"),
    ("Is it common to see frost during some college commencements?", "yes_no"),
    ("A pack costs 76 dollars. How much for 3 packs?", "numeric"),
    ("If Gallu is a demon Lilu is what?", "open"),
    ("", "open"),
])
def test_prompt_form_reads_the_structure_first_match_wins(text, form):
    assert prompt_form(extract(text)) == form and form in FORMS


def test_a_huge_prompt_is_read_from_both_ends_but_its_length_counts_in_full():
    text = "word " * 200_000 + "Who founded Rome?"
    f = extract(text).as_dict()
    assert f["log_chars"] == pytest.approx(math.log1p(len(text)))
    assert f["log_fact_cues"] > 0  # the end of the prompt is still read


@pytest.mark.parametrize("padded, bare", [
    ("  What is 2+2?\n\n", "What is 2+2?"),
    ("\n\tHow many days are in a week? ", "How many days are in a week?"),
    ("   \n\t ", ""),
])
def test_whitespace_around_the_prompt_is_not_read(padded, bare):
    # No training prompt has whitespace around it (checked over load_examples: 0 of 31,521),
    # so a client's trailing newline, or a whitespace-only turn, must not move the features:
    # "   \n\t " read as 7 characters with no words scored difficulty 0.77 and got a vote.
    for messages in (padded, [{"role": "user", "content": padded}]):
        got, want = extract(messages), extract(bare if isinstance(messages, str)
                                               else [{"role": "user", "content": bare}])
        assert np.array_equal(got.dense, want.dense)
        assert np.array_equal(got.hash_indices, want.hash_indices)


def test_scripts_without_spaces_count_a_word_per_character():
    # Chinese and Japanese do not put spaces between words: split on whitespace, a whole
    # word problem was one "word" of 74 characters, and its length features left the range of
    # every training prompt (mean_word_chars 7.4 where English reads about 0.45).
    # Each CJK character counts as a word, as BERT's tokenizer splits them (Devlin et al. 2019).
    f = extract("她每天早上吃三个。她卖了2个？")
    d = f.as_dict()
    assert d["log_words"] == pytest.approx(math.log1p(15))  # 13 characters, "2", "？"... see
    assert d["mean_word_chars"] == pytest.approx(1 / 10.0)  # ... every word one character
    assert d["log_sentences"] == pytest.approx(math.log1p(2))  # "。" and "？" end sentences
    assert d["questions"] == pytest.approx(1 / 5)
    assert d["log_chars"] == pytest.approx(math.log1p(15))
