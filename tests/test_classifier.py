"""The shipped classifier: probabilities in [0, 1], a safe and small artifact, round trips."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import router_models
from router_models.classifier import (
    DEFAULT_ARTIFACT_DIR,
    HEADS,
    ArtifactError,
    Classifier,
    StaleFeaturesError,
)
from router_models.features import FEATURE_NAMES, FORMS, fingerprint
from router_models.plan import Scores
from tests.test_features import MESSAGE_SHAPES


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


@pytest.mark.parametrize("messages", MESSAGE_SHAPES)
def test_scores_are_probabilities_for_every_message_shape(classifier, messages):
    scores = classifier.score(messages)
    assert isinstance(scores, Scores)
    assert all(0.0 <= v <= 1.0 for v in (scores.difficulty, scores.sequential, scores.search))
    assert scores.form in FORMS
    assert Scores.from_dict(scores.as_dict()) == scores


def test_shipped_artifact_is_small_safe_and_carries_its_provenance():
    npz = DEFAULT_ARTIFACT_DIR / "classifier.npz"
    size = sum(p.stat().st_size for p in DEFAULT_ARTIFACT_DIR.iterdir())
    assert size < 2_000_000
    with zipfile.ZipFile(npz) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())
    with np.load(npz, allow_pickle=False) as arrays:  # raises if anything needs unpickling
        assert {f"{h}.w_hash" for h in HEADS} <= set(arrays.files)
    meta = json.loads((DEFAULT_ARTIFACT_DIR / "classifier.json").read_text())
    assert len(meta["data_hash"]) == 64 and meta["version"] == meta["artifact_version"]
    for head in HEADS:
        overall = meta["metrics"][head]["overall"]
        assert 0.5 < overall["auc"] <= 1.0
        assert overall["brier"] < overall["brier_constant"]  # better than the base rate


def test_the_shipped_weights_were_fitted_on_the_features_computed_now():
    # A change to feature extraction (a cue counted otherwise) must come with a refit, or the
    # shipped weights read cues they were not fitted on. Refit with README's command
    # (`ttc-router train --bank router_models/data/bank --bank-until ... --out
    # router_models/artifacts`).
    meta = json.loads((DEFAULT_ARTIFACT_DIR / "classifier.json").read_text())
    assert meta.get("features_fingerprint") == fingerprint(), (
        "feature extraction changed since the shipped classifier was fitted: retrain it")


def test_round_trip_gives_the_same_scores_and_the_same_bytes(classifier, tmp_path):
    classifier.save(tmp_path / "a")
    again = Classifier.load(tmp_path / "a")
    again.save(tmp_path / "b")
    for name in ("classifier.npz", "classifier.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    prompt = "Take the last letters of each word in 'Ada Lovelace Byron' and concatenate them."
    assert again.score(prompt) == classifier.score(prompt)


def test_loading_another_version_or_a_missing_artifact_fails_clearly(classifier, tmp_path):
    with pytest.raises(ArtifactError, match="cannot read"):
        Classifier.load(tmp_path / "absent")
    classifier.save(tmp_path)
    meta = json.loads((tmp_path / "classifier.json").read_text())
    meta["artifact_version"] = 999
    (tmp_path / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="version 999"):
        Classifier.load(tmp_path)


def test_scores_separate_the_kinds_of_prompt(classifier):
    graph = classifier.score("Here is an undirected graph given by its edge list: 11-12, "
                             "12-13, 13-21, 21-22, 22-23, 23-31, 41-42, 42-43, 43-51. Is node "
                             "11 connected to node 31 (t1) or to node 51 (t2)?")
    recall = classifier.score("Which of the following is the body cavity that contains the "
                              "pituitary gland?\nA. Abdominal\nB. Cranial\nC. Pleural\n"
                              "D. Spinal\nAnswer:")
    multihop = classifier.score("What is the nationality of the director of the film that "
                                "won the Palme d'Or in 1994?")
    assert graph.sequential > recall.sequential
    assert multihop.search > max(graph.search, recall.search)


def test_load_default_gives_the_classifier_and_the_named_policies(tmp_path):
    classifier, policies = router_models.load_default(tmp_path)  # empty dir: shipped files
    assert set(policies) == {"rules", "learned"}
    decision = policies["learned"].decide(classifier.score("What is 17 * 3?"))
    assert decision.plan.policy == "learned" and 0 < decision.plan.probability <= 1


def test_an_older_versions_classifier_falls_back_to_the_shipped_one(tmp_path, caplog):
    # What `train --from-log` copied under an older version: readable, other features.
    Classifier.load().save(tmp_path)
    meta = json.loads((tmp_path / "classifier.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    (tmp_path / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(StaleFeaturesError):
        Classifier.load(tmp_path)
    classifier, _ = router_models.load_default(tmp_path)
    assert classifier.score("What is 17 * 3?") == Classifier.load().score("What is 17 * 3?")
    assert "shipped classifier" in caplog.text


def test_cues_constant_in_training_carry_no_weight(classifier):
    # The benchmarks are bare questions: one turn, no system prompt. Standardising such a
    # column once divided by a rounding-level spread and gave it a weight of 1e13.
    for name in ("has_system", "log_turns"):
        column = FEATURE_NAMES.index(name)
        assert all(head.w_dense[column] == 0.0 for head in classifier.heads.values())
    question = "What is 17 * 3?"
    alone = classifier.score(question)
    chat = classifier.score([{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "Hello! How can I help?"},
                             {"role": "user", "content": question}])
    for head in HEADS:
        assert abs(getattr(chat, head) - getattr(alone, head)) < 0.2, head


def test_standardisation_flags_columns_constant_up_to_rounding():
    from router_models.train import standardisation

    dense = np.column_stack([np.full(1001, np.log1p(1.0)), np.arange(1001.0)])
    _, scale, constant = standardisation(dense)
    assert constant.tolist() == [True, False] and scale[0] == 1.0


def test_a_chinese_prompt_is_not_read_off_the_scale(classifier):
    # Split on whitespace, GSM8K's first item in Chinese was a single 74-character word, and
    # its length features put it beyond every training prompt: difficulty 0.0 (an "easy"
    # prompt for a direct answer), search 1.0; "2+2等于几？" read sequential 0.999, search 1.0.
    # The heads' cue words are English, so a translation does not read as its original does
    # (sequential stays low); it reads as a prompt of its length, not as an outlier.
    problem = classifier.score(
        "珍妮特的鸭子每天下16个蛋。她每天早上吃三个，每天用四个给朋友烤松饼。她每天在农贸市场"
        "以每个2美元的价格出售剩余的鸭蛋。她每天在农贸市场赚多少美元？")
    assert problem.difficulty > 0.1 and problem.search < 0.5, problem
    sum_zh, sum_en = classifier.score("2+2等于几？"), classifier.score("What is 2+2?")
    assert abs(sum_zh.difficulty - sum_en.difficulty) < 0.1, (sum_zh, sum_en)
    assert sum_zh.sequential < 0.5 and sum_zh.search < 0.5, sum_zh
