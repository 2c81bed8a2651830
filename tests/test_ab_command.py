"""``ttc-router ab report`` gives the figures of ``GET /v1/experiments/{name}``;
``ttc-router ab replay`` estimates from the request log and refuses what it cannot support."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.commands.ab import parse_since
from service.settings import load_settings
from tests.conftest import gateway_client
from tests.scripted import ScriptedLLM

CONFIG = {"upstreams": [{"url": "http://backend.test/v1", "name": "fake",
                         "models": ["fake-model"]}],
          "policies": {"cheap": "fixed:direct@256"},
          "experiments": {"exp": {"arms": {
              "control": {"policy": "cheap", "weight": 0.5},
              "treatment": {"policy": "fixed:sequential@512", "weight": 0.5}}}}}


async def _traffic(config: Path, data_dir: Path) -> dict:
    """Thirty experiment requests with feedback (three in four correct); the HTTP report."""
    settings = load_settings(config, data_dir=data_dir, retry_backoff_s=0.0)
    async with gateway_client(ScriptedLLM(lambda i, body: "It is 4.").transport(),
                              settings) as client:
        for i in range(30):
            reply = await client.post("/v1/chat/completions", json={
                "model": "fake-model", "user": f"u{i}", "router": {"experiment": "exp"},
                "messages": [{"role": "user", "content": "What is 2+2?"}]})
            assert reply.status_code == 200, reply.text
            await client.post("/v1/feedback", json={
                "id": reply.json()["router"]["decision_id"], "correct": i % 4 != 0})
        return (await client.get("/v1/experiments/exp")).json()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_ab_report_prints_the_figures_of_the_http_report(tmp_path, config, capsys):
    served = asyncio.run(_traffic(config, tmp_path / "data"))
    assert main(["ab", "report", "exp", "--config", str(config), "--data-dir",
                 str(tmp_path / "data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == served
    assert main(["ab", "report", "exp", "--config", str(config), "--data-dir",
                 str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "treatment - control (accuracy)" in text and "95% Wilson" in text
    assert main(["ab", "report", "nope", "--config", str(config)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_ab_replay_refuses_a_policy_the_log_never_explored(tmp_path, config, capsys):
    served = asyncio.run(_traffic(config, tmp_path / "data"))
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--json"]
    # the log holds two deterministic arms: a third plan was never tried
    assert main(["ab", "replay", "--policy", "fixed:parallel_vote@1024", *args]) == 1
    refused = json.loads(capsys.readouterr().out)
    assert refused["supported"] is False and refused["accuracy"] == {}
    assert "never explored" in refused["reason"]
    # the control arm's plan is supported on every prompt, since any prompt could have
    # been assigned to the control arm; the self-normalised estimate is then the control
    # arm's own accuracy
    assert main(["ab", "replay", "--policy", "cheap", *args, "--since", "1h"]) == 0
    cheap = json.loads(capsys.readouterr().out)
    assert cheap["supported"] is True and cheap["rows"] == 30
    assert cheap["accuracy"]["snips"]["value"] == pytest.approx(
        served["arms"]["control"]["accuracy"])
    assert main(["ab", "replay", "--policy", "cheap", "--config", str(config), "--data-dir",
                 str(tmp_path / "data"), "--since", "2999-01-01"]) == 1
    assert "0 requests" in capsys.readouterr().err


def test_since_takes_seconds_iso_times_and_ages():
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2024-01-01") == 1_704_067_200
    assert parse_since("2024-01-01T01:00:00+01:00") == 1_704_067_200
    assert parse_since("2h", now_s=10_000) == 2_800
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


# A synthetic log with a known answer: two arms of different weights (80% / 20%), fixed
# policies, outcomes drawn with known accuracies, failures among them. Replaying the
# treatment arm's policy must recover the treatment arm's accuracy, failures counted wrong.
SYNTHETIC = {"upstreams": [{"url": "http://backend.test/v1", "name": "fake",
                            "models": ["fake-model"]}],
             "experiments": {"skewed": {"arms": {
                 "control": {"policy": "fixed:direct@256", "weight": 0.8},
                 "treatment": {"policy": "fixed:parallel_vote@512", "weight": 0.2}}}}}
TRUE_ACCURACY = {"control": 0.5, "treatment": 0.9 * 0.8}  # treatment: 10% of calls fail


def _synthetic_log(data_dir: Path, rows: int = 1500, seed: int = 3) -> dict[str, list[float]]:
    """Write the synthetic log; returns each arm's outcomes (1 correct, 0 wrong or failed)."""
    import random
    from dataclasses import asdict

    from router_models.plan import Scores
    from router_models.policies import parse_policy
    from service.store import Record
    from service.store.log import open_request_log

    rng = random.Random(seed)
    shares = {arm: a["weight"] for arm, a in SYNTHETIC["experiments"]["skewed"]["arms"].items()}
    outcomes: dict[str, list[float]] = {"control": [], "treatment": []}

    async def write() -> None:
        log = open_request_log(data_dir, None)
        await log.start()
        for i in range(rows):
            arm = "control" if rng.random() < shares["control"] else "treatment"
            spec = SYNTHETIC["experiments"]["skewed"]["arms"][arm]["policy"]
            scores = Scores(rng.random(), rng.random(), rng.random(), "numeric")
            plan = parse_policy(spec).decide(scores).plan
            failed = arm == "treatment" and rng.random() < 0.1
            correct = not failed and rng.random() < (0.5 if arm == "control" else 0.8)
            outcomes[arm].append(float(correct))
            log.submit(Record(
                decision_id=f"dec_{i:032x}", response_id=None, time_s=1_700_000_000.0 + i,
                endpoint="chat", key_name=None, model="fake-model", strategy=plan.strategy,
                policy=plan.policy, arm=arm, experiment="skewed",
                status="502" if failed else "200", budget_tokens=plan.budget_tokens,
                prompt_tokens=10, completion_tokens=plan.budget_tokens or 0, estimated=False,
                upstream_calls=1, samples=plan.width, search_calls=0, duration_s=0.1,
                wait_s=0.1, stream=False, scores=scores.as_dict(),
                plan={**asdict(plan), "propensity": shares[arm] * plan.probability,
                      "controls": {"strategy": "auto", "budget_tokens": None}},
                feedback_score=None if failed else float(correct)))
        await log.close()

    asyncio.run(write())
    return outcomes


def test_ab_replay_recovers_a_known_policy_value_from_two_arms_of_different_weights(
        tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(SYNTHETIC))
    outcomes = _synthetic_log(tmp_path / "data")
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--json"]
    for arm, spec in (("treatment", "fixed:parallel_vote@512"), ("control", "fixed:direct@256")):
        assert main(["ab", "replay", "--policy", spec, *args]) == 0
        result = json.loads(capsys.readouterr().out)
        # Every prompt could have gone to either arm: the other arm's plan is supported.
        assert result["supported"] is True and result["unsupported_share"] == 0.0
        # Failed requests are in the log and count as wrong.
        assert result["feedback"] == 1500
        observed = sum(outcomes[arm]) / len(outcomes[arm])
        # Self-normalised IPS is the arm's own accuracy, failures included, exactly ...
        assert result["accuracy"]["snips"]["value"] == pytest.approx(observed)
        # ... and IPS, weighted by 1 / (share x probability), finds the true value: with the
        # policy's probability alone (1.0) it would be the share times it (0.144, 0.4).
        ips = result["accuracy"]["ips"]
        assert ips["ci95"][0] <= TRUE_ACCURACY[arm] <= ips["ci95"][1]
        assert ips["value"] == pytest.approx(TRUE_ACCURACY[arm], abs=0.12)  # 3 s.e.
        dr = result["accuracy"]["dr"]
        assert dr["ci95"][0] <= TRUE_ACCURACY[arm] <= dr["ci95"][1]
    # A plan neither arm could pick for these prompts is refused, per prompt.
    assert main(["ab", "replay", "--policy", "fixed:sequential@1024", *args]) == 1
    assert json.loads(capsys.readouterr().out)["unsupported_share"] == 1.0


@pytest.mark.parametrize("share", ["2", "-0.1", "nan", "five"])
def test_max_unsupported_outside_0_to_1_exits_2(share, tmp_path, capsys):
    # A share of 2 used to be taken as given: every estimate "supported", however unexplored.
    with pytest.raises(SystemExit) as exited:
        main(["ab", "replay", "--policy", "fixed:direct@256", "--data-dir", str(tmp_path),
              "--max-unsupported", share])
    assert exited.value.code == 2
    assert "--max-unsupported" in capsys.readouterr().err


# The A/B of the README: a vote against a chain at 1,024 tokens. The vote's policy decides
# four samples of 256 tokens; the gateway runs the samples its answer lengths say can finish
# (three of 320 before usage has taught them) and logs what it ran.
VOTE_VS_CHAIN = {"upstreams": [{"url": "http://backend.test/v1", "name": "fake",
                                "models": ["fake-model"]}],
                 "experiments": {"chain-vs-vote": {"arms": {
                     "control": {"policy": "fixed:parallel_vote@1024", "weight": 0.7},
                     "treatment": {"policy": "fixed:sequential@1024", "weight": 0.3}}}}}


def test_replaying_an_arms_own_policy_recovers_that_arms_accuracy(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(VOTE_VS_CHAIN))
    data_dir = tmp_path / "data"

    async def traffic() -> dict:
        settings = load_settings(config, data_dir=data_dir, retry_backoff_s=0.0)
        # Answers of 280 tokens: once usage has taught that, the vote's samples need more
        # room than 256 tokens, and some votes run as one chain.
        answer = "step " * 276 + "The answer is 4."
        async with gateway_client(ScriptedLLM(lambda i, body: answer).transport(),
                                  settings) as client:
            for i in range(40):
                reply = await client.post("/v1/chat/completions", json={
                    "model": "fake-model", "user": f"u{i}",
                    "router": {"experiment": "chain-vs-vote"},
                    "messages": [{"role": "user", "content": "What is 2+2?"}]})
                assert reply.status_code == 200, reply.text
                await client.post("/v1/feedback", json={
                    "id": reply.json()["router"]["decision_id"], "correct": i % 4 != 0})
            return (await client.get("/v1/experiments/chain-vs-vote")).json()

    served = asyncio.run(traffic())
    control = served["arms"]["control"]
    assert control["feedback"] >= 10
    assert main(["ab", "replay", "--policy", "fixed:parallel_vote@1024", "--config",
                 str(config), "--data-dir", str(data_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Every control row is the policy's own choice: all of them weigh in, not the one whose
    # executed width happened to equal the decided one.
    assert result["effective_sample_size"] == pytest.approx(control["feedback"])
    assert result["accuracy"]["snips"]["value"] == pytest.approx(control["accuracy"])
    ips = result["accuracy"]["ips"]
    assert ips["ci95"][0] <= control["accuracy"] <= ips["ci95"][1]


def test_ab_report_without_the_gateways_config_says_to_pass_it(tmp_path, capsys, monkeypatch):
    # The README's `ttc-router ab report chain-vs-vote` answered only "known: none
    # configured": the experiments are in the gateway's config file, which the command
    # needs too.
    monkeypatch.delenv("TTC_CONFIG", raising=False)
    assert main(["ab", "report", "chain-vs-vote", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'chain-vs-vote'" in err
    assert "--config" in err and "TTC_CONFIG" in err


def test_a_tie_has_no_leader_and_the_text_does_not_read_as_a_verdict():
    from service.experiments import build_report
    from service.settings import Settings
    from service.store import ArmRow

    config = Settings(experiments=VOTE_VS_CHAIN["experiments"]).experiments["chain-vs-vote"]

    def rows(control: int, treatment: int) -> list[ArmRow]:
        return [ArmRow("control", requests=1, feedback=1, correct=control, tokens_sum=600.0,
                       tokens_sumsq=360000.0),
                ArmRow("treatment", requests=1, feedback=1, correct=treatment,
                       tokens_sum=700.0, tokens_sumsq=490000.0)]

    # One right answer in each arm named "control" the leader: the first of equals.
    tied = build_report("chain-vs-vote", config, rows(1, 1))
    assert tied["leader"] is None
    ahead = build_report("chain-vs-vote", config, rows(0, 1))
    assert ahead["leader"] == "treatment" and ahead["sequential"]["winner"] is None
    from service.commands.ab import format_report
    text = format_report(ahead)
    assert "leader on the objective: treatment" not in text
    assert "ahead on the estimates (not a verdict: see the intervals): treatment" in text
