"""A/B experiments in the gateway: sticky assignment, the arm in the response, log and
metrics, the report's fields, and the 400s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from statsmodels.stats.proportion import proportion_confint

from router_models.experiments import assign, bucket
from service.experiments import Experiments, identity_of
from service.keys import open_key_store
from service.protocol import parse_request
from service.routing import Router
from service.settings import Settings, SettingsError
from service.store import ArmRow
from service.store.log import open_request_log
from tests.conftest import gateway_client, make_settings, metric
from tests.scripted import ScriptedLLM
from tests.test_store import make_record

ARMS = {"control": {"policy": "fixed:direct@256", "weight": 0.7},
        "treatment": {"policy": "fixed:sequential@512", "weight": 0.3}}


def settings(**extra: Any) -> Settings:
    return make_settings(experiments={"exp": {"arms": ARMS}}, **extra)


def llm() -> ScriptedLLM:
    return ScriptedLLM(lambda i, body: "The answer is 4.")


def chat(router: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model",
                            "messages": [{"role": "user", "content": "What is 2+2?"}], **extra}
    if router is not None:
        body["router"] = router
    return body


@pytest.mark.parametrize("weights", [{"a": 0.7, "b": 0.3}, {"a": 0.5, "b": 0.3, "c": 0.2}])
def test_the_split_over_10k_users_is_within_a_point_of_the_weights(weights):
    policies = {arm: "fixed:direct@256" for arm in weights}
    arms = Counter(assign("split", weights, f"user-{i}", how="user", policies=policies).arm
                   for i in range(10_000))
    for arm, weight in weights.items():
        assert abs(arms[arm] / 10_000 - weight) < 0.01, (arm, arms)


def test_an_identity_keeps_its_bucket_in_another_process_with_another_hash_seed():
    users = [f"user-{i}" for i in range(50)]
    code = ("import sys; from router_models.experiments import bucket; "
            f"print(repr([bucket('exp', u) for u in {users!r}]))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={"PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert outputs == {repr([bucket("exp", u) for u in users]) + "\n"}


def test_the_identity_is_the_user_then_the_session_then_the_key():
    with_user = parse_request("chat", chat(user="alice"))
    without = parse_request("chat", chat())
    assert identity_of(with_user, "s1", "key-a") == ("alice", "user")
    assert identity_of(without, "s1", "key-a") == ("s1", "session")
    assert identity_of(without, None, "key-a") == ("key-a", "key")
    assert identity_of(without, None, None) == (None, "random")


async def test_a_user_lands_in_one_arm_across_two_gateways_sharing_a_config():
    config = settings()
    arms: dict[str, set[str]] = {}
    async with gateway_client(llm().transport(), config) as one, \
            gateway_client(llm().transport(), config) as two:
        for i in range(40):
            for client in (one, two, one):
                reply = await client.post("/v1/chat/completions", json=chat(
                    {"experiment": "exp"}, user=f"user-{i}"))
                assert reply.status_code == 200, reply.text
                arms.setdefault(f"user-{i}", set()).add(reply.json()["router"]["arm"])
    assert all(len(seen) == 1 for seen in arms.values())
    assert {arm for seen in arms.values() for arm in seen} == {"control", "treatment"}


async def test_adaptive_shares_move_users_and_replicas_agree_once_each_has_re_read_the_log(
        tmp_path):
    # The README said a user keeps one arm "across requests, replicas and restarts": true of
    # fixed weights, not of adaptive allocation. A user's bucket maps to the arm that holds
    # it under the current shares, so a user moves when the shares move, and a replica that
    # has not re-read the log yet (experiment_refresh_s) assigns by the old shares meanwhile
    # (17 of 40 users on two real replicas, until the second one refreshed).
    config = make_settings(experiments={"exp": {"arms": ARMS, "adaptive": True,
                                                "min_feedback": 5}},
                           experiment_refresh_s=3600)
    log = open_request_log(tmp_path, None)
    await log.start()
    try:
        one, two = Experiments(config, log), Experiments(config, log)
        users = [f"user-{i}" for i in range(200)]

        async def arms(replica: Experiments) -> list[str]:
            return [(await replica.assign("exp", user, "user")).arm for user in users]

        before = await arms(two)
        assert before == await arms(one)  # both read the log once: no feedback, the weights
        for i in range(40):  # the treatment is always right, the control always wrong
            log.submit(make_record(i, experiment="exp", arm=("control", "treatment")[i % 2],
                                   feedback_correct=bool(i % 2), feedback_score=float(i % 2),
                                   feedback_count=1))
        await log.flush()
        await one.refresh("exp")
        moved = await arms(one)
        assert sum(a != b for a, b in zip(before, moved, strict=True)) > 20
        assert await arms(two) == before  # not re-read yet: the old shares
        await two.refresh("exp")
        assert await arms(two) == moved
    finally:
        await log.close()


async def test_the_arm_plans_and_is_in_the_response_the_log_and_the_metrics():
    before = metric("ttc_experiment_assignments_total", experiment="exp", arm="treatment")
    feedback_before = metric("ttc_experiment_feedback_total", experiment="exp",
                             arm="treatment", outcome="correct")
    async with gateway_client(llm().transport(), settings()) as client:
        user = next(f"u{i}" for i in range(100) if assign(
            "exp", {"control": 0.7, "treatment": 0.3}, f"u{i}", how="user",
            policies={"control": "", "treatment": ""}).arm == "treatment")
        reply = await client.post("/v1/chat/completions", json=chat({"experiment": "exp"},
                                                                    user=user))
        router = reply.json()["router"]
        sent = await client.post("/v1/feedback", json={"id": router["decision_id"],
                                                        "correct": True})
        assert sent.status_code == 200
        report = (await client.get("/v1/experiments/exp")).json()
    assert router["arm"] == "treatment" and router["experiment"] == "exp"
    assert router["assignment"] == "user"
    assert router["policy"] == "fixed:sequential@512" and router["strategy"] == "sequential"
    assert metric("ttc_experiment_assignments_total", experiment="exp",
                  arm="treatment") == before + 1
    assert metric("ttc_requests_total", strategy="sequential", policy="fixed:sequential@512",
                  arm="treatment", model="fake-model", status="200") >= 1
    assert metric("ttc_experiment_feedback_total", experiment="exp", arm="treatment",
                  outcome="correct") == feedback_before + 1
    assert report["arms"]["treatment"]["requests"] == 1
    assert report["arms"]["treatment"]["feedback"] == 1


async def test_a_request_without_identity_is_assigned_at_random_and_marked():
    async with gateway_client(llm().transport(), settings()) as client:
        arms = set()
        for _ in range(30):
            reply = await client.post("/v1/chat/completions", json=chat({"experiment": "exp"}))
            assert reply.json()["router"]["assignment"] == "random"
            arms.add(reply.json()["router"]["arm"])
    assert arms == {"control", "treatment"}


async def test_the_session_header_is_sticky():
    async with gateway_client(llm().transport(), settings()) as client:
        arms = {(await client.post("/v1/chat/completions", json=chat({"experiment": "exp"}),
                                   headers={"x-session-id": "sess-1"})).json()["router"]["arm"]
                for _ in range(10)}
    assert len(arms) == 1


async def test_the_default_experiment_applies_unless_the_request_names_a_policy():
    async with gateway_client(llm().transport(), settings(default_experiment="exp")) as client:
        joined = (await client.post("/v1/chat/completions",
                                    json=chat(user="bob", model="auto"))).json()
        own = (await client.post("/v1/chat/completions",
                                 json=chat({"policy": "rules"}, user="bob"))).json()
    assert joined["router"]["arm"] in ARMS
    assert own["router"]["arm"] is None and own["router"]["policy"] == "rules"


async def test_a_backend_model_without_router_controls_stays_out_of_the_default_experiment():
    # ../shared/INTERFACE.md: a request for a backend model id with no `router` object passes
    # through unchanged (direct, the client's own parameters); existing clients see no change
    # until they opt in. With a default experiment, such a request was planned by an arm's
    # policy instead (a sequential chain under fixed:sequential@512, say).
    async with gateway_client(llm().transport(), settings(default_experiment="exp")) as client:
        plain = (await client.post("/v1/chat/completions",
                                   json=chat(user="bob", temperature=0.3))).json()
        opted_in = (await client.post("/v1/chat/completions", json=chat(
            {"experiment": "exp"}, user="bob"))).json()
        report = (await client.get("/v1/experiments/exp")).json()
    assert plain["router"]["arm"] is None and plain["router"]["strategy"] == "direct"
    assert plain["router"]["policy"] is None
    assert opted_in["router"]["arm"] in ARMS  # naming the experiment still joins it
    assert sum(arm["requests"] for arm in report["arms"].values()) == 1


async def test_a_request_that_names_its_strategy_stays_out_of_the_default_experiment():
    # `ttc-router eval` through a gateway with a default experiment put its 900 forced
    # strategy/budget requests in the arms: the vote arm's mean tokens fell from 572 to 247,
    # though its policy had planned none of them.
    async with gateway_client(llm().transport(), settings(default_experiment="exp")) as client:
        forced = (await client.post("/v1/chat/completions", json=chat(
            {"strategy": "sequential", "budget_tokens": 128}, user="bob"))).json()
        by_header = (await client.post("/v1/chat/completions", json=chat(user="bob"),
                                       headers={"x-ttc-strategy": "direct"})).json()
        capped = (await client.post("/v1/chat/completions", json=chat(
            {"budget_tokens": 128}, user="bob", model="auto"))).json()
        named = (await client.post("/v1/chat/completions", json=chat(
            {"strategy": "direct", "experiment": "exp"}, user="bob"))).json()
        report = (await client.get("/v1/experiments/exp")).json()
    assert forced["router"]["arm"] is None and forced["router"]["strategy"] == "sequential"
    assert by_header["router"]["arm"] is None
    # A cap leaves the strategy to the arm's policy, and naming the experiment joins it.
    assert capped["router"]["arm"] in ARMS and named["router"]["arm"] in ARMS
    assert sum(arm["requests"] for arm in report["arms"].values()) == 2


async def test_unknown_experiments_are_400_in_the_envelope():
    async with gateway_client(llm().transport(), settings()) as client:
        by_body = await client.post("/v1/chat/completions", json=chat({"experiment": "nope"}))
        by_header = await client.post("/v1/chat/completions", json=chat(),
                                      headers={"x-ttc-experiment": "nope"})
        both = await client.post("/v1/chat/completions",
                                 json=chat({"experiment": "exp", "policy": "rules"}))
        report = await client.get("/v1/experiments/nope")
    for reply in (by_body, by_header, both, report):
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"
    for reply in (by_body, by_header, report):
        assert reply.json()["error"]["message"] == "unknown experiment 'nope'"
        assert reply.json()["error"]["code"] == "unknown_experiment"


SECRET_ARMS = {"control": {"policy": "fixed:direct@256", "weight": 0.5},
               "treatment": {"policy": "fixed:sequential@777", "weight": 0.5}}


def configured_privately() -> Settings:
    """Experiments, policies and arm specs that a tenant's errors must not reveal."""
    return make_settings(experiments={"exp": {"arms": ARMS},
                                      "launch-q3-pricing": {"arms": SECRET_ARMS}},
                         policies={"internal-cheap": "fixed:direct@123"})


def tells_nothing_configured(reply: Any) -> bool:
    return not any(secret in reply.text for secret in (
        "launch-q3-pricing", "internal-cheap", "@777", "@123", "learned", "known:"))


async def test_an_unknown_experiment_does_not_tell_the_configured_ones():
    # The 400 listed every configured experiment ("known: exp, launch-q3-pricing") to any
    # caller: the operator's configuration, which a tenant has no business reading.
    async with gateway_client(llm().transport(), configured_privately()) as client:
        replies = [await client.post("/v1/chat/completions", json=chat({"experiment": "x"})),
                   await client.post("/v1/chat/completions", json=chat(),
                                     headers={"x-ttc-experiment": "x"}),
                   await client.get("/v1/experiments/x")]
    for reply in replies:
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["message"] == "unknown experiment 'x'"
        assert tells_nothing_configured(reply), reply.text


async def test_an_unknown_policy_does_not_tell_the_configured_ones():
    # The unknown-policy 400 listed every policy, each experiment's arm specs among them
    # ("fixed:sequential@777"): the same leak of the operator's configuration.
    async with gateway_client(llm().transport(), configured_privately()) as client:
        replies = [await client.post("/v1/chat/completions", json=chat({"policy": "x"})),
                   await client.post("/v1/chat/completions", json=chat(),
                                     headers={"x-ttc-policy": "x"})]
    for reply in replies:
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["message"] == "unknown policy 'x'"
        assert reply.json()["error"]["param"] == "router.policy"
        assert tells_nothing_configured(reply), reply.text


def test_an_arm_with_an_unknown_policy_fails_at_start():
    bad = make_settings(experiments={"exp": {"arms": {"a": {"policy": "nope"}}}})
    with pytest.raises(SettingsError, match="experiments.exp.arms.a.policy"):
        Router(bad)
    with pytest.raises(ValueError, match="default_experiment"):
        make_settings(default_experiment="missing")


async def test_the_report_has_the_interface_fields_and_wilson_intervals():
    async with gateway_client(llm().transport(), settings()) as client:
        outcomes: dict[str, list[bool]] = {"control": [], "treatment": []}
        for i in range(60):
            reply = (await client.post("/v1/chat/completions", json=chat(
                {"experiment": "exp"}, user=f"r{i}"))).json()["router"]
            correct = i % 3 != 0
            outcomes[reply["arm"]].append(correct)
            await client.post("/v1/feedback", json={"id": reply["decision_id"],
                                                    "correct": correct})
        # a request without feedback counts in requests and tokens, not in accuracy
        extra = (await client.post("/v1/chat/completions", json=chat(
            {"experiment": "exp"}, user="r0"))).json()["router"]
        report = (await client.get("/v1/experiments/exp")).json()
    assert set(report) >= {"name", "arms", "comparison"}
    assert set(report["comparison"]) >= {"metric", "difference", "ci95", "p_value"}
    for arm, seen in outcomes.items():
        row = report["arms"][arm]
        assert set(row) >= {"requests", "feedback", "accuracy", "accuracy_ci95", "mean_tokens",
                            "mean_tokens_ci95", "correct_per_1k_tokens"}
        assert row["feedback"] == len(seen)
        assert row["requests"] == len(seen) + (arm == extra["arm"])
        assert row["accuracy"] == pytest.approx(sum(seen) / len(seen))
        expected = proportion_confint(sum(seen), len(seen), method="wilson")
        assert row["accuracy_ci95"] == pytest.approx(list(expected))
        assert row["mean_tokens"] == 4.0  # "The answer is 4." is four tokens, every time
        assert row["correct_per_1k_tokens"] == pytest.approx(row["accuracy"] / 4 * 1000)
    comparison = report["comparison"]
    assert comparison["metric"] == "accuracy"
    assert comparison["difference"] == pytest.approx(
        report["arms"]["treatment"]["accuracy"] - report["arms"]["control"]["accuracy"])
    low, high = comparison["ci95"]
    assert low <= comparison["difference"] <= high and 0 < comparison["p_value"] <= 1
    assert report["sequential"]["can_stop"] is False  # 60 requests: far too few to stop


async def test_a_request_with_only_an_api_key_is_assigned_by_the_keys_name():
    key = open_key_store(Path(os.environ["TTC_DATA_DIR"]), None).create("team-a")
    expected = assign("exp", {"control": 0.7, "treatment": 0.3}, "team-a", how="key",
                      policies={"control": "", "treatment": ""}).arm
    async with gateway_client(llm().transport(), settings()) as client:
        routers = [(await client.post("/v1/chat/completions", json=chat({"experiment": "exp"}),
                                      headers={"authorization": f"Bearer {key}"})
                    ).json()["router"] for _ in range(5)]
    assert {(r["arm"], r["assignment"]) for r in routers} == {(expected, "key")}


async def test_a_streamed_answer_carries_the_arm_and_is_logged_with_it():
    async with gateway_client(llm().transport(), settings()) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat(
                {"experiment": "exp"}, user="streamer", stream=True,
                stream_options={"include_usage": True})) as reply:
            events = [line for line in [line async for line in reply.aiter_lines()]
                      if line.startswith("data: {")]
        routers = [json.loads(e.removeprefix("data: ")).get("router") for e in events]
        report = (await client.get("/v1/experiments/exp")).json()
    arm = next(r["arm"] for r in routers if r)
    assert arm in ARMS and report["arms"][arm]["requests"] == 1


async def test_the_store_sums_arms_and_reads_since_a_time(database_url):
    log = open_request_log(Path("/nonexistent"), database_url)
    await log.start()
    try:
        for i, (arm, tokens, score) in enumerate([("a", 10, 1.0), ("a", 30, 0.0), ("b", 20, None),
                                                   ("b", 40, 0.9), ("b", 60, 0.2)]):
            log.submit(make_record(i, arm=arm, experiment="exp", completion_tokens=tokens))
            await log.flush()
            if score is not None:
                await log.feedback(make_record(i).decision_id, score)
        log.submit(make_record(9, arm="a", experiment="other"))
        rows = {row.arm: row for row in await log.arm_totals("exp")}
        since = await log.backend.records(since_s=make_record(3).time_s)
    finally:
        await log.close()
    assert rows["a"] == ArmRow("a", 2, 40.0, 1000.0, 2, 1)
    assert rows["b"] == ArmRow("b", 3, 120.0, 5600.0, 2, 1)
    assert [r.decision_id for r in since] == [make_record(i).decision_id for i in (3, 4, 9)]


async def test_a_request_refused_after_its_assignment_is_not_counted_as_assigned():
    # A key's token limits are checked after the arm is drawn: a 429 there (which the OpenAI
    # SDK retries twice) or, as here, a 400 for more tokens than the key's window. The
    # request never ran: counting it made ttc_experiment_assignments_total (the dashboard's
    # shares and mean tokens per request) disagree with the report's requests.
    secret = open_key_store(Path(os.environ["TTC_DATA_DIR"]), None).create("small", tpm=100)
    async with gateway_client(llm().transport(), settings()) as client:
        before = {arm: metric("ttc_experiment_assignments_total", experiment="exp", arm=arm)
                  for arm in ARMS}
        key = {"authorization": f"Bearer {secret}"}
        refused = [await client.post("/v1/chat/completions", headers=key, json=chat(
            {"experiment": "exp"}, user="u1", max_tokens=400)) for _ in range(3)]
        ran = await client.post("/v1/chat/completions", headers=key, json=chat(
            {"experiment": "exp"}, user="u1", max_tokens=16))
    assert [r.status_code for r in refused] == [400, 400, 400]
    assert ran.status_code == 200
    arm = ran.json()["router"]["arm"]
    after = {arm: metric("ttc_experiment_assignments_total", experiment="exp", arm=arm)
             for arm in ARMS}
    assert sum(after.values()) - sum(before.values()) == 1
    assert after[arm] - before[arm] == 1
