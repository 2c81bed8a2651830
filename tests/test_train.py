"""Training on the shared data: log parsing against the published figures, byte-for-byte
reproducibility on a small subset, the command, and re-fitting from feedback records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from router_models import lodo
from router_models import train as training
from router_models.classifier import Classifier
from router_models.features import extract
from router_models.plan import Plan, Scores
from router_models.policies import LearnedPolicy
from router_models.training_data import (
    DEFAULT_DATA_DIR,
    DataMissingError,
    Example,
    load_examples,
    normalised,
    read_log,
    split_of,
)
from service.cli import main
from service.commands.train import feedback_records

needs_data = pytest.mark.skipif(
    not DEFAULT_DATA_DIR.is_dir(),
    reason=f"shared benchmark data not found at {DEFAULT_DATA_DIR} (see MANIFEST.md)")


@needs_data
@pytest.mark.parametrize("stem, direct, cot", [
    # Kojima et al. 2022, Table 1 (text-davinci-002, zero-shot vs zero-shot-CoT).
    ("multiarith", 17.7, 78.7), ("coin_flip", 12.8, 91.4), ("last_letters", 0.2, 57.6),
    ("commonsensqa", 68.8, 64.6), ("strategyqa", 12.7, 54.8)])
def test_log_parsing_reproduces_the_published_accuracies(stem, direct, cot):
    log = DEFAULT_DATA_DIR / "zero_shot_cot" / "log"
    for suffix, expected in (("zero_shot", direct), ("zero_shot_cot", cot)):
        outcomes = read_log(log / f"{stem}_{suffix}.log")  # no answer (None) counts as wrong
        assert 100 * sum(bool(ok) for _, ok in outcomes) / len(outcomes) == pytest.approx(
            expected, abs=0.06)


@needs_data
def test_the_same_question_from_two_sources_lands_in_one_split():
    examples = load_examples(limit_per_dataset=None, n_generated=0)
    by_text: dict[str, set[str]] = {}
    for e in examples:
        by_text.setdefault(" ".join(e.text.lower().split()), set()).add(split_of(e.text, 0))
    shared = [s for s in by_text.values() if len(s) > 1]
    assert not shared


@needs_data
def test_labels_are_per_question_outcomes_not_dataset_constants():
    examples = load_examples(n_generated=0)
    by_dataset: dict[str, list[Example]] = {}
    for e in examples:
        by_dataset.setdefault(e.dataset, []).append(e)
    # No source labels a whole dataset at once any more (GSM8K train as all-chain,
    # CommonsenseQA train as all-vote).
    assert "gsm8k/train" not in by_dataset and "commonsenseqa/train" not in by_dataset
    for dataset in ("zero_shot_cot/gsm8k", "zero_shot_cot/multiarith",
                    "zero_shot_cot/commonsenseqa", "zero_shot_cot/svamp"):
        labels = {e.sequential for e in by_dataset[dataset] if e.label("sequential") is not None}
        assert 0.0 in labels and 1.0 in labels, dataset
    # MMLU: no chain where no equation (Sprague et al. 2024), no label where there is one.
    assert all((e.label("sequential") is None) == ("=" in e.text)
               for e in by_dataset["routellm/mmlu"])


@needs_data
def test_chains_pay_on_state_tracking_and_arithmetic_and_not_on_commonsense():
    examples = load_examples(n_generated=0, sources=["zero_shot_cot"])

    def mean_sequential(family: str) -> float:
        rows = [(e.sequential, e.weight("sequential")) for e in examples
                if e.family == family and e.label("sequential") is not None]
        return sum(s * w for s, w in rows) / sum(w for _, w in rows)

    for family in ("coin_flip", "object_tracking", "last_letters", "multiarith", "gsm8k"):
        assert mean_sequential(family) > 0.7, family
    for family in ("commonsenseqa", "strategyqa", "singleeq", "addsub"):
        assert mean_sequential(family) < 0.25, family


def test_lodo_folds_hold_out_each_family_and_its_duplicates():
    examples = [Example("Q one", "a/x", "a", 1.0, 1.0, 0.0),
                Example("q  ONE", "b/y", "b", 0.0, 0.0, 0.0),  # the same question, recorded twice
                Example("Q two", "b/y", "b", 0.0, 0.0, 0.0),
                Example("Q three", "c/z", "c", 1.0, None, 1.0)]
    folds = list(lodo.folds(examples, seed=0))
    assert [f.family for f in folds] == ["a", "b", "c"]
    for fold in folds:
        held_texts = {normalised(examples[i].text) for i in fold.held}
        assert {examples[i].family for i in fold.held} == {fold.family}
        train = fold.fit + fold.calibration
        assert sorted(fold.held + train) == sorted(set(fold.held + train))
        assert all(examples[i].family != fold.family for i in train)
        assert not held_texts & {normalised(examples[i].text) for i in train}
    assert sorted(folds[0].fit + folds[0].calibration) == [2, 3]  # "q  ONE" left out


@needs_data
def test_lodo_report_has_a_row_per_held_out_family_and_the_pooled_row():
    examples = load_examples(limit_per_dataset=60, n_generated=60)
    features = [extract(e.text) for e in examples]
    grid = {"difficulty": (1.0,), "sequential": (1.0,), "search": (1.0,)}
    result = lodo.leave_one_dataset_out(examples, features, seed=0, c_grid=grid)
    assert result.families == list(dict.fromkeys(e.family for e in examples))
    table = lodo.format_markdown(result)
    for family in result.families:
        assert f"| {family} |" in table
    assert "| **pooled** |" in table
    # Every prompt is scored once, by the fold that held its family out.
    assert result.pooled["search"]["n"] == sum(e.label("search") is not None for e in examples)
    assert result.by_family["search"]["hotpotqa"]["auc"] is None  # all positive: one class
    assert "search on hotpotqa (one class)" in lodo.unmet(result)
    assert 0.5 < result.pooled["search"]["auc"] <= 1.0


@needs_data
def test_train_reproduces_its_artifact_byte_for_byte_on_a_small_subset(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    result = training.train(DEFAULT_DATA_DIR, first, seed=3, limit_per_dataset=40,
                            n_generated=60)
    code = main(["train", "--data", str(DEFAULT_DATA_DIR), "--out", str(second), "--seed",
                 "3", "--limit", "40", "--generated", "60", "--data-dir", str(tmp_path / "state"),
                 "--report"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "Brier" in printed and "chosen strategy by task family" in printed
    assert "leave-one-dataset-out" in printed and "| **pooled** |" in printed
    assert not (first / "learned.json").exists()  # the learned policy is the prior
    for name in ("classifier.npz", "classifier.json"):
        assert (first / name).read_bytes() != b""
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    meta = result.classifier.metadata
    assert meta["seed"] == 3 and len(meta["data_hash"]) == 64
    assert set(meta["metrics"]) == {"difficulty", "sequential", "search"}
    assert Classifier.load(first).score("What is 2 + 2?") == \
        result.classifier.score("What is 2 + 2?")


def test_missing_data_is_reported_by_name(tmp_path, capsys):
    with pytest.raises(DataMissingError, match="shared benchmark data not found"):
        load_examples(tmp_path / "nowhere")
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path)])
    assert code == 1
    assert "shared benchmark data not found" in capsys.readouterr().err


def test_records_with_feedback_refit_the_learned_policy(tmp_path):
    classifier = Classifier.load()
    policy = LearnedPolicy(exploration=0.0)
    chain = "Start with 5. Add 3, then double it, then subtract 4, then triple it. Result?"
    vote = Plan("parallel_vote", 768, width=3, depth_tokens=256)
    records = [training.FeedbackRecord([{"role": "user", "content": chain}], vote, True)
               for _ in range(30)]
    records += [training.FeedbackRecord("", Plan("sequential", 1024, depth_tokens=1024), 0.0,
                                        Scores(0.9, 0.9, 0.0)) for _ in range(30)]
    counts = training.train_from_records(records, classifier, policy, tmp_path)
    assert counts == {"records": 60, "correct": 30.0,
                      "by_strategy": {"parallel_vote": 30, "sequential": 30}, "repeats": 0}
    assert sum(row["feedback"] for row in policy.budgets().values()) == 60
    assert LearnedPolicy.load(tmp_path / "learned.json").state() == policy.state()


def test_request_log_rows_become_feedback_records():
    def row(**kw):
        base = dict(feedback_score=1.0, scores={"difficulty": 0.2, "sequential": 0.7,
                                                "search": 0.1},
                    prompt_text=None, strategy="sequential", budget_tokens=512,
                    completion_tokens=300,
                    plan={"strategy": "sequential", "budget_tokens": 512, "width": 1,
                          "depth_tokens": 512, "search_calls": 0, "policy": "learned",
                          "probability": 0.9, "reason": "x"})
        return SimpleNamespace(**{**base, **kw})
    rows = [row(), row(scores=None), row(scores=None, prompt_text="Who wrote Dune?"),
            row(feedback_score=None), row(plan=None)]
    records = list(feedback_records(rows))
    assert len(records) == 3
    assert records[0].scores == Scores(0.2, 0.7, 0.1) and records[0].plan.probability == 0.9
    assert records[0].spent_tokens == 300
    assert records[0].prompt_key is None  # logged before prompts were keyed
    keyed = row(plan={"strategy": "direct", "budget_tokens": 64, "prompt_key": "0123456789ab"})
    assert next(feedback_records([keyed])).prompt_key == "0123456789ab"
    assert records[1].scores is None and records[1].messages == "Who wrote Dune?"
    assert records[2].plan == Plan("sequential", 512)


def test_from_log_replays_the_sqlite_request_log_into_the_learned_policy(tmp_path, capsys):
    import asyncio

    from service.store import Record
    from service.store.sqlite import SqliteBackend

    async def write() -> None:
        backend = SqliteBackend(tmp_path / "requests.db")
        await backend.open()
        rows = []
        for i in range(6):
            rows.append(Record(
                decision_id=f"dec_{i}", response_id=None, time_s=1.0 + i, endpoint="chat",
                key_name=None, model="m", strategy="sequential", policy="learned", arm=None,
                experiment=None, status="200", budget_tokens=1024, prompt_tokens=9,
                completion_tokens=400, estimated=False, upstream_calls=1, samples=1,
                search_calls=0, duration_s=0.1, wait_s=0.1, stream=False,
                scores={"difficulty": 0.8, "sequential": 0.9, "search": 0.0},
                plan={"strategy": "sequential", "budget_tokens": 1024, "width": 1,
                      "depth_tokens": 1024, "search_calls": 0,
                      "prompt_key": f"key{i % 3}"}))  # dec_3 asks dec_0's prompt again
        await backend.write(rows)
        for i in range(4):  # two decisions get no feedback
            await backend.set_feedback(f"dec_{i}", float(i % 2), 10.0)
        await backend.close()

    asyncio.run(write())
    out = tmp_path / "models"
    assert main(["train", "--from-log", "--data-dir", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "4 decisions with feedback" in printed.err
    assert "replayed 4 outcomes (2 correct)" in printed.out
    assert "1 outcomes were of a prompt already counted" in printed.out
    state = LearnedPolicy.load(out / "learned.json")
    assert sum(row["feedback"] for row in state.budgets().values()) == 4
    assert sum(row["evidence"] for row in state.budgets().values()) == 3
    assert state.repeats == 1
    # Run again over the state it wrote: the log's outcomes are not counted twice.
    assert main(["train", "--from-log", "--data-dir", str(tmp_path), "--out", str(out)]) == 0
    again = LearnedPolicy.load(out / "learned.json")
    assert sum(row["feedback"] for row in again.budgets().values()) == 4
    assert again.repeats == 1


def test_a_missing_outcome_bank_is_reported_not_traced(tmp_path, capsys):
    code = main(["train", "--bank", str(tmp_path / "no-bank"), "--out", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path)])
    assert code == 1
    assert "bank" in capsys.readouterr().err


@needs_data
def test_train_learns_from_an_outcome_bank_as_well(tmp_path, capsys):
    fixture = Path(__file__).resolve().parent / "bank_fixture"
    code = main(["train", "--bank", str(fixture), "--limit", "30", "--generated", "30",
                 "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert code == 0
    assert "outcome bank" in capsys.readouterr().err
    from router_models.bank import Bank
    from router_models.bank_labels import bank_examples

    result = training.train(DEFAULT_DATA_DIR, tmp_path / "p", limit_per_dataset=30,
                            n_generated=30, extra=[bank_examples(Bank.load(fixture).runs)])
    assert {"bank/arithmetic_chain", "bank/hotpotqa", "bank/mmlu"} <= \
        {e.dataset for e in result.examples}


@needs_data
def test_bank_until_trains_on_a_snapshot_of_a_growing_bank_and_records_it(tmp_path, capsys):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(Path(__file__).resolve().parent / "bank_fixture", bank)
    shard = bank / "fixture-001.jsonl"
    shard.write_text("".join(  # the MMLU run recorded a day after the others
        line.replace('"2026-12-06T00:00:00Z"', '"2026-12-07T00:00:00Z"')
        if '"suite":"mmlu"' in line else line
        for line in shard.read_text().splitlines(keepends=True)))
    out = tmp_path / "o"
    args = ["train", "--bank", str(bank), "--limit", "20", "--generated", "20",
            "--out", str(out), "--data-dir", str(tmp_path)]
    assert main([*args, "--bank-until", "2026-12-06T12:00:00Z"]) == 0
    snapshot = Classifier.load(out).metadata["bank"]
    assert snapshot["runs"] == 4 and "mmlu" not in snapshot["suites"]
    assert snapshot["recorded_until"] == "2026-12-06T00:00:00Z"
    assert len(snapshot["keys_sha256"]) == 64
    capsys.readouterr()
    assert main(args) == 0  # no snapshot: every run
    assert Classifier.load(out).metadata["bank"]["runs"] == 5
    # The fit takes tens of seconds on the full data: each stage says so as it starts.
    stages = capsys.readouterr().err
    assert "prompts loaded" in stages and "head 3/3: search" in stages
    assert main([*args, "--bank-until", "2026-12-05T00:00:00Z"]) == 1
    assert "no run of the outcome bank" in capsys.readouterr().err


@pytest.mark.parametrize("until", ["yesterday", "2026-12-06", "19:23:54"])
def test_bank_until_that_is_not_a_date_and_time_exits_2_before_training(until, tmp_path,
                                                                         capsys):
    fixture = Path(__file__).resolve().parent / "bank_fixture"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--bank", str(fixture), "--bank-until", until,
              "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--bank-until" in err and "not an ISO 8601 date and time" in err
    assert "outcome bank" not in err and not (tmp_path / "o").exists()


def test_bank_until_without_bank_exits_2(tmp_path, capsys):
    code = main(["train", "--bank-until", "2026-12-06T19:23:54Z",
                 "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert code == 2
    assert "--bank-until needs --bank" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("until", "runs"), [
    ("2026-12-06T00:00:00Z", 5),
    ("2026-12-06T01:00:00+01:00", 5),   # the same instant, written with an offset
    ("2026-12-06T00:00:00", 5),         # no offset: UTC (as text it sorts before "...Z")
    ("2026-12-06T00:00:00.000Z", 5),    # fractions (as text "." sorts before "Z")
    ("2026-12-05T23:59:59.999Z", 0),
    ("2026-12-06T00:59:59+01:00", 0),   # before, though "00:59" sorts after "00:00" as text
])
def test_bank_until_compares_instants_not_text(until, runs):
    from service.commands.train import _bank_examples, utc_time

    fixture = Path(__file__).resolve().parent / "bank_fixture"  # 5 runs at 2026-12-06T00:00:00Z
    if runs:
        assert _bank_examples(fixture, utc_time(until))[1]["runs"] == runs
    else:
        with pytest.raises(ValueError, match="no run of the outcome bank .* recorded by 2026-12-0"):
            _bank_examples(fixture, utc_time(until))


def test_from_log_refuses_a_bank_it_would_ignore(tmp_path, capsys):
    fixture = Path(__file__).resolve().parent / "bank_fixture"
    assert main(["train", "--from-log", "--bank", str(fixture), "--data-dir",
                 str(tmp_path)]) == 2
    assert "run them separately" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "-3"],
                                    ["--generated", "-1"]])
def test_train_refuses_sizes_that_cannot_mean_anything(option, tmp_path, capsys):
    # --limit 0 used to end in a numpy TypeError traceback; --generated -1 trained silently.
    code = main(["train", *option, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", [[], ["--from-log"]])
def test_train_names_an_out_that_cannot_be_a_folder(mode, tmp_path, capsys):
    # It used to end in a FileExistsError traceback, after training when not --from-log.
    taken = tmp_path / "a-file"
    taken.write_text("")
    code = main(["train", *mode, "--data-dir", str(tmp_path), "--out", str(taken)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


def test_from_log_on_an_empty_log_prints_no_nan(tmp_path, capsys):
    import asyncio

    from service.store.sqlite import SqliteBackend

    async def create_empty_log() -> None:  # what a gateway that served nothing leaves
        backend = SqliteBackend(tmp_path / "requests.db")
        await backend.open()
        await backend.close()

    asyncio.run(create_empty_log())
    # Kinds of prompt with no reference prompt printed "mean budget nan tokens".
    assert main(["train", "--from-log", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "0 outcomes" in printed
    assert "nan" not in printed


def test_commands_that_read_a_data_dir_do_not_create_one(tmp_path, capsys):
    # A mistyped --data-dir made an empty request log (and key store) there and read it
    # silently as "no requests" (helper 48). A data dir never served is read as empty, as
    # before, but nothing is created there and the command says where it looked.
    missing = tmp_path / "typo"
    for command, code in ((["train", "--from-log", "--out", str(tmp_path / "o")], 0),
                          (["ab", "replay", "--policy", "fixed:direct@256"], 1),
                          (["keys", "list"], 0), (["keys", "revoke", "alice"], 1)):
        assert main([*command, "--data-dir", str(missing)]) == code, command
        captured = capsys.readouterr()
        assert str(missing) in captured.err and "Traceback" not in captured.err, command
        if command[0] == "train":
            assert "0 decisions with feedback" in captured.err
        if command[:2] == ["keys", "list"]:
            assert captured.out.split() == ["NAME", "ADMIN", "RPM", "TPM", "TOKENS/DAY",
                                            "PROMPT", "TPM", "CREATED", "(UTC)", "STATUS"]
    assert not missing.exists()


def test_train_reports_the_learned_policy_at_the_gateways_mean_budget():
    # train's strategy table shows `auto` as shipped: at the gateway's default mean budget,
    # from the library and from the command alike (it said 1,024 while the gateway used 512).
    from service.cli import build_parser
    from service.settings import Settings

    shipped = Settings.model_fields["learned_target_tokens"].default
    assert shipped == training.TARGET_TOKENS
    assert build_parser().parse_args(["train"]).target_tokens == shipped


def test_the_auc_ceiling_is_what_the_labels_themselves_reach() -> None:
    from router_models.reliability import metrics

    # Hard labels: a perfect score reaches 1. Soft labels that overlap cap every score below.
    assert metrics([0.0, 1.0, 1.0], [0.2, 0.1, 0.9])["auc_ceiling"] == 1.0
    soft = [0.4, 0.5, 0.6, 0.5]
    best = metrics(soft, soft)
    assert best["auc"] == best["auc_ceiling"] < 0.8
    for scores in ([0.6, 0.5, 0.4, 0.5], [0.9, 0.1, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4]):
        assert metrics(soft, scores)["auc"] <= best["auc_ceiling"]
    assert metrics([1.0, 1.0], [0.3, 0.7])["auc_ceiling"] is None  # one class


def test_the_lodo_table_marks_cells_no_score_could_meet() -> None:
    soft = {"n": 4.0, "auc": 0.55, "auc_ceiling": 0.6, "brier": 0.25}
    hard = {"n": 4.0, "auc": 0.55, "auc_ceiling": 1.0, "brier": 0.25}
    result = lodo.LodoResult(["coins", "sums"])
    result.by_family = {"difficulty": {"coins": hard, "sums": hard},
                        "sequential": {"coins": soft, "sums": hard},
                        "search": {"coins": None, "sums": None}}
    result.pooled = result.pooled_balanced = {"difficulty": hard, "sequential": hard,
                                              "search": hard}
    table = lodo.format_markdown(result)
    coins = next(line for line in table.splitlines() if line.startswith("| coins |"))
    assert "0.550*\u2020" in coins and coins.count("\u2020") == 1
    assert "\u2020" not in next(line for line in table.splitlines()
                                if line.startswith("| sums |"))
    missed = lodo.unmet(result)
    assert "sequential on coins (AUC 0.550; no score can reach 0.8 here: ceiling 0.600)" in missed
    assert "sequential on sums (AUC 0.550)" in missed
