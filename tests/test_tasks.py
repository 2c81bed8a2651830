"""Task suites: generated answers re-derived independently, data loaders, checkers, the
simulator's registry of known questions."""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from pathlib import Path

import pytest

from router_models.tasks import (
    SuiteUnavailable,
    TaskItem,
    default_data_dir,
    load_suite,
    load_tasks_file,
)
from router_models.tasks.checkers import check, gold, parsed
from router_models.tasks.generated import GRAPH_DEPTHS, is_prime
from router_models.tasks.registry import TaskRegistry

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    DATA is None or not (DATA / "gsm8k").is_dir(),
    reason="benchmark data not found: set TTC_BENCH_DATA or run next to ../shared/data")


def _graph(question: str) -> tuple[dict[str, list[str]], str, tuple[str, str]]:
    edges = re.search(r"edges: (.*?)\. Exactly", question).group(1)  # type: ignore[union-attr]
    neighbours: dict[str, list[str]] = {}
    for edge in edges.split(", "):
        a, b = edge.split("-")
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    found = re.search(r"node (\d+) and node (\d+) is connected to node (\d+)", question)
    assert found
    return neighbours, found.group(3), (found.group(1), found.group(2))


def _distances(neighbours: dict[str, list[str]], source: str) -> dict[str, int]:
    distance, queue = {source: 0}, deque([source])
    while queue:
        node = queue.popleft()
        for nxt in neighbours[node]:
            if nxt not in distance:
                distance[nxt] = distance[node] + 1
                queue.append(nxt)
    return distance


def test_graph_answers_are_verified_by_bfs_from_the_question_text() -> None:
    items = load_suite("graph_connectivity", limit=2 * len(GRAPH_DEPTHS))
    for index, item in enumerate(items):
        neighbours, source, (first, second) = _graph(item.question)
        distance = _distances(neighbours, source)
        assert (first in distance) != (second in distance)  # exactly one is connected
        assert item.answer == (first if first in distance else second)
        assert set(item.choices) == {first, second}
        # Depth is the difficulty knob: the path crosses at least that many bridges.
        depth = GRAPH_DEPTHS[index % len(GRAPH_DEPTHS)]
        assert distance[item.answer] >= depth
        assert item.difficulty == pytest.approx((depth - 2) / 22, abs=1e-3)


def test_arithmetic_chain_answers_recompute_from_the_text() -> None:
    for item in load_suite("arithmetic_chain", limit=24):
        value = int(re.match(r"Start with (\d+)\.", item.question).group(1))  # type: ignore[union-attr]
        for op, amount in re.findall(r"(Add|Subtract|Multiply by) (\d+)\.", item.question):
            value = {"Add": value + int(amount), "Subtract": value - int(amount),
                     "Multiply by": value * int(amount)}[op]
        assert str(value) == item.answer
        assert 0 <= value < 1000


def test_multiple_choice_items_have_exactly_one_prime() -> None:
    for item in load_suite("mc_guess", limit=20):
        options = dict(re.findall(r"^([A-D])\) (\d+)$", item.question, re.MULTILINE))
        primes = [letter for letter, n in options.items() if is_prime(int(n))]
        assert primes == [item.answer]


def test_generated_suites_are_deterministic_prefixes() -> None:
    assert load_suite("graph_connectivity", 5) == load_suite("graph_connectivity", 12)[:5]


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def _item(kind: str, answer: str, choices: tuple[str, ...] = ()) -> TaskItem:
    return TaskItem("t", "1", "independent_mc", 0.5, "q", answer, kind, choices)


@pytest.mark.parametrize("reply, right", [
    ("so 1,234 in all. The answer is $1,234.", True),
    ("The answer is 1234.0", True),
    ("The answer is 1235.", False),
    ("12 + 22 = 1234", True),  # no answer phrase: the last number
    ("I do not know.", False),
])
def test_number_checker(reply: str, right: bool) -> None:
    assert check(_item("number", "1234"), reply) is right


def test_number_checker_compares_decimals_by_value() -> None:
    assert check(_item("number", "3.5"), "The answer is 3.50.")
    assert gold(_item("number", "18.0")) == "18"


@pytest.mark.parametrize("reply, right", [
    ("The answer is B.", True), ("The answer is (B).", True), ("The answer is B) bank.", True),
    ("The answer is b.", True), ("The answer is C.", False), ("no idea", False),
])
def test_choice_checker(reply: str, right: bool) -> None:
    assert check(_item("choice", "B", ("A", "B", "C", "D")), reply) is right


@pytest.mark.parametrize("reply, right", [
    ("The answer is yes.", True), ("The answer is Yes, it is.", True),
    ("The answer is no.", False),
])
def test_yes_no_checker(reply: str, right: bool) -> None:
    assert check(_item("yes_no", "yes"), reply) is right


def test_node_and_text_checkers() -> None:
    assert check(_item("node", "178", ("178", "82")), "The answer is 178.")
    assert not check(_item("node", "178", ("178", "82")), "The answer is 82.")
    assert check(_item("text", "The Exies"), "The answer is the Exies.")
    assert not check(_item("text", "The Exies"), "The answer is Exies Band.")
    assert parsed(_item("text", "x"), "nothing stated here at all") != "x"


def test_user_tasks_file_infers_kinds(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    rows = [{"question": "2+2?", "answer": 4}, {"question": "Pick", "answer": "C"},
            {"question": "Sky blue?", "answer": "Yes", "family": "yes_no"},
            {"question": "Capital of France?", "answer": "Paris"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_tasks_file(path)
    assert [i.kind for i in items] == ["number", "choice", "yes_no", "text"]
    assert items[2].family == "yes_no" and items[2].answer == "yes"
    path.write_text('{"question": "no answer"}\n')
    with pytest.raises(ValueError, match=":1:"):
        load_tasks_file(path)


def test_unknown_suite_and_missing_data_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SuiteUnavailable, match="unknown suite"):
        load_suite("nope")
    with pytest.raises(SuiteUnavailable, match="not found"):
        load_suite("gsm8k", limit=1, data_dir=tmp_path)


@needs_data
def test_data_suites_load_with_gold_answers() -> None:
    gsm = load_suite("gsm8k", limit=3, data_dir=DATA)
    assert gsm[0].answer == "18" and gsm[0].family == "word_math" and gsm[0].kind == "number"
    assert 0 <= gsm[0].difficulty <= 1
    for name, kind in [("svamp", "number"), ("multiarith", "number"),
                       ("commonsenseqa", "choice"), ("strategyqa", "yes_no"),
                       ("mmlu", "choice")]:
        items = load_suite(name, limit=5, data_dir=DATA)
        assert len(items) == 5 and all(i.kind == kind for i in items), name
    mmlu = load_suite("mmlu", limit=5, data_dir=DATA)
    assert len({i.item_id.rsplit("-", 1)[0] for i in mmlu}) == 5  # interleaved subjects
    assert len(load_suite("mmlu:virology", limit=None, data_dir=DATA)) > 100
    hotpot = load_suite("hotpotqa", limit=None, data_dir=DATA)
    assert len(hotpot) == 100 and hotpot[0].answer == "a spirit"
    assert {i.kind for i in hotpot} >= {"text", "yes_no"}


@needs_data
def test_state_tracking_suites_load_with_their_gold_answers() -> None:
    # Two BIG-bench-style families the bank records as held out from the policy's tuning.
    objects = load_suite("object_tracking", limit=3, data_dir=DATA)
    first = objects[0]
    assert (first.kind, first.family, first.choices, first.answer) == (
        "choice", "arithmetic_chain", ("A", "B", "C"), "C")
    assert first.question.endswith("A) orange ball.\nB) white ball.\nC) blue ball.")
    assert check(first, "Alice ends with the blue ball. The answer is C.")
    assert not check(first, "The answer is A.")
    assert len(load_suite("object_tracking", limit=None, data_dir=DATA)) == 750
    flips = load_suite("coin_flip", limit=None, data_dir=DATA)
    assert len(flips) == 500 and {i.answer for i in flips} == {"yes", "no"}
    assert flips[0].answer == "yes" and flips[0].question.startswith("A coin is heads up.")
    assert check(flips[0], "Two flips leave it heads up. The answer is yes.")
    assert 0 <= min(i.difficulty for i in flips) < max(i.difficulty for i in flips) <= 1


@needs_data
def test_last_letters_and_addsub_load_with_their_gold_answers() -> None:
    letters = load_suite("last_letters", limit=None, data_dir=DATA)
    assert len(letters) == 500 and letters[0].answer == "yajo" and letters[0].kind == "text"
    assert check(letters[0], 'The answer is "yajo".')
    assert not check(letters[0], "The answer is yaj.")
    sums = load_suite("addsub", limit=None, data_dir=DATA)
    assert len(sums) == 395 and sums[0].answer == "43" and sums[0].family == "word_math"
    assert check(sums[0], "70 - 27 = 43. The answer is 43.")


def test_registry_recognises_a_question_inside_a_wider_prompt() -> None:
    item = load_suite("arithmetic_chain", limit=1)[0]
    registry = TaskRegistry([item])
    wrapped = f"Some passage.\n\n{item.prompt()}"
    match = registry.identify([("system", "Be brief."), ("user", wrapped)])
    assert match.how == "registry" and match.item == item
    # A continued chain: the question is in an earlier turn; its tokens count as prior.
    match = registry.identify([("user", item.prompt()), ("assistant", "one two three"),
                               ("user", "State your final answer now.")])
    assert match.item == item and match.prior_tokens == 3


def test_registry_marker_and_unknown_prompts() -> None:
    registry = TaskRegistry()
    match = registry.identify([("user", "Hi [[sim family=yes_no difficulty=0.2 answer=no]]")])
    assert (match.how, match.item.family, match.item.difficulty, match.item.answer,
            match.item.kind) == ("marker", "yes_no", 0.2, "no", "yes_no")
    assert registry.identify([("user", "hello")]).how == "unknown"


def test_registry_sees_retrieved_facts() -> None:
    item = TaskItem("hotpotqa", "h1", "multihop_qa", 0.5, "Who founded X?", "Jane Doe", "text")
    registry = TaskRegistry([item])
    assert not registry.identify([("user", item.prompt())]).searched
    passages = "Doc 1: X was founded in 1990 by Jane Doe."
    assert registry.identify([("system", passages), ("user", item.prompt())]).searched


def test_default_data_dir_outside_the_checkout_finds_the_data_next_to_the_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from another folder, `eval --suite gsm8k` said the data was missing and `sim` knew
    # 2,989 questions instead of 23,435, while `train` found the data next to the source tree.
    source_sibling = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not source_sibling.is_dir():
        pytest.skip(f"no benchmark data next to the source tree ({source_sibling})")
    monkeypatch.delenv("TTC_BENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == source_sibling


def test_missing_data_names_the_flag_that_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("router_models.tasks.default_data_dir", lambda: None)
    with pytest.raises(SuiteUnavailable, match="--data"):
        load_suite("gsm8k", limit=1)


def test_a_json_boolean_answer_is_yes_or_no_and_a_null_one_is_refused(tmp_path: Path) -> None:
    # `"answer": true` was read as the text "True": a yes/no question whose model said
    # "Yes" was scored wrong every time. `"answer": null` became the gold text "None".
    path = tmp_path / "tasks.jsonl"
    rows = [{"question": "Is water wet? Answer yes or no.", "answer": True},
            {"question": "Is fire cold? Answer yes or no.", "answer": False}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_tasks_file(path)
    assert [(i.kind, i.answer) for i in items] == [("yes_no", "yes"), ("yes_no", "no")]
    assert check(items[0], "Water is wet. The answer is yes.")
    assert check(items[1], "The answer is no.")
    for bad in ('{"question": "x", "answer": null}', '{"question": null, "answer": "x"}',
                '{"question": "x", "answer": ["a"]}'):
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=":1:"):
            load_tasks_file(path)


@needs_data
def test_singleeq_date_and_aqua_load_with_their_gold_answers() -> None:
    single = load_suite("singleeq", limit=None, data_dir=DATA)
    assert len(single) == 508 and single[0].answer == "43" and single[0].kind == "number"
    dates = load_suite("date_understanding", limit=None, data_dir=DATA)
    assert len(dates) == 369 and {i.family for i in dates} == {"arithmetic_chain"}
    first = dates[0]
    assert first.question.startswith("Yesterday was April 30, 2021.")
    gold_line = next(line for line in first.question.splitlines()
                     if line.startswith(f"{first.answer})"))
    assert gold_line.endswith("05/01/2021")  # the day after April 30
    # The file lists the right option first almost always; the suite must not.
    assert max(Counter(i.answer for i in dates).values()) < 0.3 * len(dates)
    assert any(i.answer == "F" for i in dates) and check(
        next(i for i in dates if i.answer == "F"), "Counting the days, the answer is F.")
    assert load_suite("date_understanding", limit=3, data_dir=DATA) == dates[:3]
    aqua = load_suite("aqua", limit=None, data_dir=DATA)
    assert len(aqua) == 254 and aqua[0].answer == "A"
    assert aqua[0].choices == ("A", "B", "C", "D", "E")
    assert aqua[0].question.splitlines()[-5:][0] == "A) 5(\u221a3 + 1)"
    assert check(aqua[0], "So it takes 5(\u221a3 + 1) minutes. The answer is A.")
    assert not check(aqua[0], "The answer is E.")
