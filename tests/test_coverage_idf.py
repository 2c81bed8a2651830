"""Coverage weighs a question's words by how rare they are in the collection
(``LocalIndex.idf``): a hit that holds a question's common words ("write", "team", "season")
and not its rare ones covers little of it, and a question holds a hit's subject only when it
holds the subject's rare words, not one common word of a longer title."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from bench.coverage_check import GENERIC_PROMPTS
from router_models.policies.prior import COVERED
from service.coverage import coverage, coverage_shares
from service.protocol import parse_request
from service.routing import Router
from service.search import LocalIndex
from service.search.base import Hit
from service.search.documents import Document
from service.search.local import index_path
from tests.conftest import make_settings
from tests.hotpotqa import needs_hotpotqa


def gateway_reading(data_dir: Path) -> Callable[[str], float]:
    """The ``search`` score ``auto``'s policy sees for a chat prompt: the classifier's
    scores read against the data directory's index (``Router.search_evidence``)."""
    router = Router(make_settings(data_dir=data_dir))

    def read(prompt: str) -> float:
        routed = parse_request("chat", {"model": "auto", "messages": [
            {"role": "user", "content": prompt}]})
        return router.search_evidence(routed, router.score(routed)).search

    return read


def weights(table: dict[str, float]) -> Callable[[Iterable[str]], dict[str, float]]:
    """An ``idf`` for ``coverage_shares`` from a table; words not in it weigh 1."""
    return lambda words: {w: table.get(w, 1.0) for w in words}


def test_a_word_weighs_by_how_few_documents_hold_it(tmp_path):
    index = LocalIndex(tmp_path / "idx")
    index.add([Document(str(i), f"Harbour {i}", "The harbour team won the season."
                        + (" Ada Lind founded the club." if i == 0 else ""))
               for i in range(10)])
    found = index.idf(["harbour", "Lind", "Founded", "zzyzx"])
    # BM25's idf with N = 10 documents: ln(1 + (N - df + 0.5) / (df + 0.5))
    assert found["harbour"] == pytest.approx(math.log(1 + 0.5 / 10.5))
    assert found["Lind"] == pytest.approx(math.log(1 + 9.5 / 1.5))
    # read with the index's analyzer: "Founded" is the stem of "founded"
    assert found["Founded"] == pytest.approx(math.log(1 + 9.5 / 1.5))
    assert found["zzyzx"] == pytest.approx(math.log(1 + 10.5 / 0.5))


def test_documents_added_again_do_not_count_twice(tmp_path):
    # tantivy counts a replaced document's old copy until its segment is merged: the word
    # would be in 3 of 2 live documents, and ln(1 + (N - df + 0.5) / (df + 0.5)) is then
    # the logarithm of a negative number.
    index = LocalIndex(tmp_path / "idx")
    index.add([Document("a", "Alpha", "ships at sea"), Document("b", "Beta", "sea salt")])
    index.add([Document("a", "Alpha", "ships at sea")])
    assert index.idf(["sea"])["sea"] == pytest.approx(math.log(1 + 0.5 / 2.5))


def test_a_hit_holding_a_questions_common_words_and_not_its_rare_one_covers_little():
    # The top hit on the HotpotQA corpus holds "band", "released" and "album": 3 of 5 words,
    # a search prompt, though no article mentions Abbey Road. Weighed by the corpus's own
    # idf (its figures), the three are 36% of the question.
    hit = Hit("XM (album)", "XM (album)", "XM is the third album the band released, in 2003.", 9.0)
    question = "Which band released the album Abbey Road?"
    assert coverage_shares(question, [hit]).words == pytest.approx(3 / 5)
    idf = weights({"band": 2.48, "released": 1.88, "album": 2.22, "abbey": 7.6, "road": 4.04})
    assert coverage_shares(question, [hit], idf).words == pytest.approx(6.58 / 18.22)
    assert coverage(question, [hit], idf) < COVERED


def test_one_word_of_a_longer_subject_does_not_make_a_hit_the_questions_subject():
    # Titles of top hits on the HotpotQA corpus: the question's one name is a word of them,
    # and it read as covered (its names' share, 1 of 1).
    outbreak = Hit("o", "1985 United States–Canada tornado outbreak", (
        "The 1985 United States–Canada tornado outbreak was a severe weather event."), 9.0)
    assert coverage("What is the national sport of Canada?", [outbreak]) == 0.0
    song = Hit("s", "Not If You Were the Last Junkie on Earth", (
        '"Not If You Were the Last Junkie on Earth" is a song by The Dandy Warhols.'), 9.0)
    assert coverage("What is the largest ocean on Earth?", [song]) == 0.0
    # Weighed by rarity, a surname holds its subject and a common first name does not.
    director = Hit("d", "Scott Derrickson", (
        "Scott Derrickson (born July 16, 1966) is an American director."), 9.0)
    idf = weights({"scott": 3.0, "derrickson": 6.5})
    assert coverage("Where was Derrickson born?", [director], idf) == 1.0
    assert coverage("Where was Scott born?", [director], idf) == 0.0
    assert coverage("Where was Scott born?", [director]) == 1.0  # 1 of 2 words, unweighed


def test_auto_reads_a_request_made_of_the_collections_common_words_as_no_search(tmp_path):
    # Ten season reports: every one holds "football", "team", "winning" and "season", so
    # they say nothing about a request for a song; the name only one of them holds does.
    LocalIndex(index_path(tmp_path)).add([
        Document(str(year), f"{year} Harbour Rovers season", (
            f"The {year} Harbour Rovers season was the football team's winning season"
            + (", coached by Ada Lind." if year == 1872 else "."))) for year in range(1870, 1880)])
    read = gateway_reading(tmp_path)
    song = "Compose a short song about a football team winning the season."
    hits = LocalIndex(index_path(tmp_path)).search(song, 3)
    assert coverage_shares(song, hits).words == pytest.approx(4 / 7)  # unweighed: covered
    assert read(song) <= 0.3
    assert read("Which football team did Ada Lind coach?") >= COVERED


@needs_hotpotqa
def test_everyday_requests_are_not_questions_for_the_hotpotqa_collection(hotpot_dir):
    """``bench/coverage_check.py``'s everyday requests, as the gateway reads them against the
    HotpotQA corpus: 9 of 40 read as search prompts before the words were weighed, 4 after."""
    read = gateway_reading(hotpot_dir)
    for prompt in (
            # one name, a word of a longer title ("List of stop motion films", "...Junkie on
            # Earth", "1985 United States–Canada tornado outbreak")
            "List the planets of the solar system.",
            "What is the largest ocean on Earth?",
            "What is the national sport of Canada?",
            # common words held, the rare ones in no article ("abbey", "recommend")
            "Which band released the album Abbey Road?",
            "Recommend a good science fiction novel."):
        assert read(prompt) < COVERED, prompt
    searched = {p for p in GENERIC_PROMPTS if read(p) >= COVERED}
    # What is left: hits that hold the request's rare words too ("Bear games" were held in
    # the Roman Empire; "Irwin Shaw" served in World War II). Words cannot tell these from a
    # question the article answers.
    assert searched <= {
        "What year did World War II end?",
        "Compose a short song about a football team winning the season.",
        "Tell me about the history of the Roman Empire.",
        "Name a famous film director from Italy."}
