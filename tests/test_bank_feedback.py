"""bench/bank_feedback.py: the folds, and one whole run on the bank fixture through a real
replay and real gateways."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest

from bench.bank_feedback import bank_subset, fold_classifier, item_key, main, make_folds
from router_models.bank import Bank
from router_models.classifier import Classifier
from router_models.tasks import TaskItem
from router_models.training_data import DEFAULT_DATA_DIR

FIXTURE = Path(__file__).parent / "bank_fixture"


def _items(per_family: dict[str, int]) -> list[TaskItem]:
    return [TaskItem(suite=family, item_id=f"{family}-{i}", family=family, difficulty=0.5,
                     question=f"q {family} {i}", answer="1", kind="number")
            for family, count in per_family.items() for i in range(count)]


def test_folds_hold_every_item_once_and_each_family_alike() -> None:
    items = _items({"gsm8k": 10, "mmlu": 7, "hotpotqa": 3})
    folds = make_folds(items, 2)
    keys = [item_key(i) for fold in folds for i in fold]
    assert sorted(keys) == sorted(item_key(i) for i in items)
    for family, count in {"gsm8k": 10, "mmlu": 7, "hotpotqa": 3}.items():
        sizes = [sum(i.family == family for i in fold) for fold in folds]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == count


def test_folds_do_not_depend_on_the_recording_order() -> None:
    items = _items({"gsm8k": 9, "svamp": 5})
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    assert ([[item_key(i) for i in f] for f in make_folds(items, 3)]
            == [[item_key(i) for i in f] for f in make_folds(shuffled, 3)])


def test_folds_refuse_too_few() -> None:
    with pytest.raises(ValueError):
        make_folds(_items({"gsm8k": 3}), 1)
    with pytest.raises(ValueError):
        make_folds(_items({"gsm8k": 1}), 2)


@pytest.mark.e2e
def test_a_whole_run_on_the_fixture_bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    scratch = tmp_path / "scratch"  # where the run's work folder goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    assert main(["--bank", str(FIXTURE), "--folds", "2", "--rounds", "2", "--budgets", "64",
                 "--targets", "128", "--classifier", "shipped", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    items = results["items"]
    assert items == 3
    for fold in results["folds"]:
        # Every held-out item answered by auto before and after, and by each fixed arm.
        assert len(fold["before"]) == len(fold["after"])
        # Every fixed strategy, and the three that run one chain again at temperature 0.
        assert len(fold["fixed"]) == (4 + 3) * len(fold["before"])
        assert {r["strategy"] for r in fold["fixed"]} == {
            "direct", "parallel_vote", "sequential", "search",
            "direct t0", "sequential t0", "search t0"}
        # ... and by auto out of the box at the other mean asked for.
        assert [r["item_id"] for r in fold["targets"]] == [r["item_id"] for r in fold["before"]]
        assert {r["strategy"] for r in fold["targets"]} == {"policy:auto @mean 128"}
        assert not any(r["error"] for r in fold["before"] + fold["after"] + fold["fixed"]
                       + fold["targets"])
        # Each training request's feedback reached the learner once; a round's repeat of an
        # item with the strategy it had is feedback received, not new evidence.
        training_items = items - len(fold["before"])
        assert len(fold["training"]) == 2 * training_items
        learner = fold["learner"]
        assert sum(map(sum, learner["trials"])) + sum(map(sum, learner["repeated"])) \
            == 2 * training_items
        assert training_items <= sum(map(sum, learner["trials"])) <= 2 * training_items
    text = (out / "report.md").read_text()
    assert "| policy:auto after feedback |" in text and "| policy:auto |" in text
    # The replayed bank is the embedded model's, so its gateways stop votes by that model's
    # rule, and the report says which.
    assert results["vote_stopping"] == [2, 0.6]
    assert "votes stopped by the embedded model's rule (first wave 2, Beta 0.6)" in text
    # Each auto arm has its row of the equal-token comparison, against a fixed arm or none.
    equal = text.split("At equal tokens")[1].split("Per family")[0]
    for arm in ("policy:auto", "policy:auto after feedback", "policy:auto @mean 128"):
        row = next(line for line in equal.splitlines() if line.startswith(f"| {arm} |"))
        assert "@64" in row or "none spends so little" in row
    # the shipped classifier's own snapshot is named, not the fixture bank tested on
    shipped = Classifier.load().metadata["bank"]
    assert (f"the shipped bank's {shipped['runs']} runs recorded by "
            f"{shipped['recorded_until']}") in text
    assert list(scratch.iterdir()) == []  # the work folder is gone after a finished run


def test_train_limit_without_a_fold_classifier_is_refused(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--bank", str(FIXTURE), "--classifier", "shipped", "--train-limit", "30"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--train-limit" in err and "needs --classifier fold" in err


def test_a_fold_classifier_without_the_shared_data_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from router_models import training_data

    monkeypatch.setattr(training_data, "DEFAULT_DATA_DIR", tmp_path / "no-data")
    with pytest.raises(SystemExit) as exit_info:
        main(["--bank", str(FIXTURE), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"not found at {tmp_path / 'no-data'}" in err and "--classifier shipped" in err
    assert not (tmp_path / "out").exists()


def test_a_bank_subset_keeps_only_the_named_items_runs(tmp_path: Path) -> None:
    whole = Bank.load(FIXTURE)
    hotpot = {item_key(r.item) for r in whole.runs if r.suite == "hotpotqa"}
    subset = Bank.load(bank_subset(FIXTURE, hotpot, tmp_path / "subset"))
    # every search count of the kept item, nothing of the others, and the bank's metadata
    assert sorted(r.searches for r in subset.runs) == [0, 1, 3]
    assert {item_key(r.item) for r in subset.runs} == hotpot
    assert subset.meta == whole.meta


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="needs ../shared/data")
def test_a_fold_classifier_learns_from_the_training_folds_runs_only(tmp_path: Path) -> None:
    whole = Bank.load(FIXTURE)
    training = [r.item for r in whole.runs if r.suite != "mmlu"]
    folder = fold_classifier(FIXTURE, training, tmp_path, limit=20)
    bank = Classifier.load(folder).metadata["bank"]
    # the held-out MMLU item's run is not among those it learnt from
    assert bank["runs"] == len(whole) - 1 and "mmlu" not in bank["suites"]


def test_a_bank_subset_keeps_the_long_chains_of_its_runs_only(tmp_path: Path) -> None:
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(FIXTURE, bank)
    whole = Bank.load(bank)
    first, other = whole.runs[0], next(r for r in whole.runs if r.suite != whole.runs[0].suite)
    longer = dict(json.loads((FIXTURE / "fixture-001.jsonl").read_text().splitlines()[0])[
        "greedy"], tokens=["A", " long", " chain."])
    (bank / "long-chains-001.jsonl").write_text("".join(
        json.dumps({"key": run.key, "greedy": longer}) + "\n" for run in (first, other)))
    subset = Bank.load(bank_subset(bank, {item_key(first.item)}, tmp_path / "subset"))
    kept = next(r for r in subset.runs if r.key == first.key)
    assert kept.greedy.tokens == ("A", " long", " chain.")
    lines = (tmp_path / "subset" / "long-chains-001.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [first.key]


def test_cross_fitting_chooses_each_folds_fixed_arm_on_the_other_folds_items() -> None:
    from bench.bank_feedback import cross_fitted_rows

    def arm(right: list[bool], tokens: int = 100) -> dict[str, dict]:
        return {f"s/{i}": {"correct": r, "completion_tokens": tokens}
                for i, r in enumerate(right)}

    # Items 0-3 are fold 0, items 4-7 fold 1. "lucky" is right on fold 0's items only,
    # "steady" on half of each fold; each fold's arm is chosen on the other fold's items.
    arms = {"policy:auto": arm([True, False, True, False, True, False, True, False], 100),
            "lucky @64": arm([True] * 4 + [False] * 4, 90),
            "steady @64": arm([True, True, False, False, True, True, False, False], 90),
            "costly @64": arm([True] * 8, 500)}
    fold_of = {f"s/{i}": 0 if i < 4 else 1 for i in range(8)}
    (row,) = cross_fitted_rows(arms, fold_of)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Fold 0's arm is chosen on fold 1 (lucky 0/4, steady 2/4: steady); fold 1's on fold 0
    # (lucky 4/4: lucky, which then scores 0/4 on fold 1). Costly spends over 1.1x.
    assert cells[3] == "steady @64 / lucky @64"
    assert cells[4] == "25.0"  # steady 2/4 on fold 0, lucky 0/4 on fold 1
    assert cells[1] == "50.0" and cells[2] == "100"


def test_the_arm_table_says_when_a_forced_vote_ran_as_one_chain() -> None:
    # At 256 tokens a forced vote cannot buy 3 samples long enough to finish: the gateway ran
    # one chain, and the row "parallel_vote @256" had said nothing of it.
    from bench.bank_feedback import arm_rows, by_arm

    def record(strategy: str, ran: str, item: str, correct: bool) -> dict[str, object]:
        return {"suite": "mmlu", "item_id": item, "strategy": strategy, "budget_tokens": 256,
                "correct": correct, "completion_tokens": 9, "router": {"strategy": ran}}

    records = [record("direct", "direct", "a", True), record("direct", "direct", "b", False),
               record("parallel_vote", "sequential", "a", True),
               record("parallel_vote", "parallel_vote", "b", True)]
    rows = arm_rows(by_arm(records), "direct @256")
    assert rows[0].startswith("| direct @256 |")
    assert rows[1].startswith("| parallel_vote @256 (ran as sequential 1 of 2) |")
