"""One learner for every replica: feedback learned once, from the durable log, the same way on
every gateway that shares the database (``service.learning``)."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_models.plan import Plan, Scores
from router_models.policies import LearnedPolicy
from service.learning import Learner, save_atomically
from tests.conftest import gateway_client, make_settings
from tests.scripted import ScriptedLLM

PROMPTS = [
    "Edges: a-b, b-c, c-d, x-y. Is node a connected to node d? Think step by step.",
    "What is 17 * 23?",
    "Which is larger, 2^10 or 10^3?",
    "Who wrote the novel Middlemarch?",
    "A) 3 B) 4 C) 5. How many sides has a square?",
    "Tom has 3 apples and buys 4 bags of 6. How many apples has he now?",
]


def llm() -> ScriptedLLM:
    return ScriptedLLM(lambda i, body: "Let me see. The answer is 4.")


def gateway_of(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.gateway  # type: ignore[attr-defined]


async def decide(client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    reply = await client.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": prompt}]})
    assert reply.status_code == 200, reply.text
    return reply.json()


def learned_state(client: httpx.AsyncClient) -> dict[str, Any]:
    return gateway_of(client).learner.policies["learned"].state()


def feedback_seen(policy: Any) -> float:
    """The feedback a learned policy has counted, summed over its kinds of prompt."""
    return sum(row["feedback"] for row in policy.budgets().values())


def shared(entry: dict[str, Any]) -> dict[str, Any]:
    """A policy's ``GET /v1/learner`` entry without ``served``, the replica's own counters."""
    return {key: value for key, value in entry.items() if key != "served"}


def greedy(state: dict[str, Any], scores: Scores) -> Plan:
    """The plan a state makes for ``scores`` without exploring."""
    return LearnedPolicy.from_state(state, exploration=0.0).decide(scores).plan


async def test_repeated_feedback_moves_the_learner_once_with_the_true_spend(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await decide(client, PROMPTS[0])
        canonical = gateway_of(client).learner.policies["learned"]
        seen: list[tuple[Plan, float, int | None]] = []
        original = canonical.update

        def spy(scores: Scores, plan: Plan, correct: float, features: Any = None,
                spent_tokens: int | None = None, prompt_key: str | None = None) -> None:
            seen.append((plan, correct, spent_tokens))
            original(scores, plan, correct, features=features, spent_tokens=spent_tokens,
                     prompt_key=prompt_key)

        canonical.update = spy  # type: ignore[method-assign]
        before = LearnedPolicy.from_state(learned_state(client))
        decision = reply["router"]["decision_id"]
        for correct in (True, True, False):  # posted three times, the last one different
            answer = await client.post("/v1/feedback", json={"id": decision, "correct": correct})
            assert answer.status_code == 200
        await gateway_of(client).learner.sync()
        after = learned_state(client)
        served = gateway_of(client).router.policies["learned"]
        assert served is not canonical  # the canonical copy never decides
        assert feedback_seen(served) == feedback_seen(canonical) == feedback_seen(before) + 1
    assert len(seen) == 1  # learned once, from the first feedback
    plan, correct, spent = seen[0]
    assert correct == 1.0 and plan.strategy == reply["router"]["strategy"]
    assert spent == reply["router"]["spent_tokens"] == reply["usage"]["completion_tokens"]
    assert after != before.state()
    # The served policy is saved at shutdown, atomically.
    saved = LearnedPolicy.load(tmp_path / "models" / "learned.json")
    assert feedback_seen(saved) == feedback_seen(before) + 1


async def test_the_learner_endpoint_counts_a_decision_once_across_posts_and_a_restart(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        start = (await client.get("/v1/learner")).json()["policies"]["learned"]
        reply = await decide(client, PROMPTS[1])
        decision = reply["router"]["decision_id"]
        posts = [client.post("/v1/feedback", json={"id": key, "correct": index % 2 == 0})
                 for index, key in enumerate([decision, reply["id"]] * 5)]
        assert {answer.status_code for answer in await asyncio.gather(*posts)} == {200}
        after = (await client.get("/v1/learner")).json()["policies"]["learned"]
        assert after["feedback"] == start["feedback"] + 1 == \
            feedback_seen(gateway_of(client).learner.policies["learned"])
        assert after["sha256"] != start["sha256"]
    async with gateway_client(llm().transport(), make_settings(data_dir=tmp_path)) as client:
        answer = await client.post("/v1/feedback", json={"id": decision, "correct": False})
        assert answer.status_code == 200
        restarted = (await client.get("/v1/learner")).json()["policies"]["learned"]
    # The same state: the decision's feedback was learned already (the deciding counters are
    # the replica's own, and the restarted one has decided nothing yet).
    assert shared(restarted) == shared(after) and restarted["served"]["decisions"] == 0


async def test_a_prompt_asked_again_is_learned_once_per_strategy(tmp_path):
    """Two decisions on one prompt, each with its own feedback: the second is a repeat of a
    prompt the learner already counted for that strategy, not a new draw; the key rides in
    the logged plan, so every replica and ``train --from-log`` read the same."""
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        start = (await client.get("/v1/learner")).json()["policies"]["learned"]
        first = await decide(client, PROMPTS[4])
        again = await decide(client, PROMPTS[4])
        other = await decide(client, PROMPTS[5])
        strategy = first["router"]["strategy"]
        assert again["router"]["strategy"] == strategy  # no feedback yet: no exploring
        for reply in (first, again, other):
            answer = await client.post("/v1/feedback", json={
                "id": reply["router"]["decision_id"], "correct": True})
            assert answer.status_code == 200
        after = (await client.get("/v1/learner")).json()["policies"]["learned"]
        rows = [await gateway_of(client).request_log.get(r["router"]["decision_id"])
                for r in (first, again, other)]
        scraped = (await client.get("/metrics")).text
    keys = [row.plan["prompt_key"] for row in rows]
    assert keys[0] == keys[1] != keys[2]
    assert after["feedback"] == start["feedback"] + 3  # every decision's feedback is learned
    # This replica's deciding counters (the shared state decides nothing: its stay 0).
    assert after["served"]["decisions"] == start["served"]["decisions"] + 3
    assert after["served"]["explored"] <= after["served"]["decisions"]
    assert after["evidence"] == start["evidence"] + 2  # and the repeat is not evidence
    assert after["repeats"] == start["repeats"] + 1
    assert f'ttc_policy_repeated_feedback{{policy="learned"}} {float(after["repeats"])}' in scraped


async def test_one_question_about_two_pictures_is_two_prompts(tmp_path):
    """The same text with a different image is a different prompt: each picture's outcome is
    counted, and only the same picture asked again is a repeat."""
    def ask(url: str) -> dict[str, Any]:
        return {"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": PROMPTS[1]},
            {"type": "image_url", "image_url": {"url": url}}]}]}

    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        start = (await client.get("/v1/learner")).json()["policies"]["learned"]
        replies = []
        for url in ("https://example.com/a.png", "https://example.com/b.png",
                    "https://example.com/a.png"):
            reply = await client.post("/v1/chat/completions", json=ask(url))
            assert reply.status_code == 200, reply.text
            replies.append(reply.json())
        assert len({r["router"]["strategy"] for r in replies}) == 1
        for reply in replies:
            answer = await client.post("/v1/feedback", json={
                "id": reply["router"]["decision_id"], "correct": True})
            assert answer.status_code == 200
        after = (await client.get("/v1/learner")).json()["policies"]["learned"]
        rows = [await gateway_of(client).request_log.get(r["router"]["decision_id"])
                for r in replies]
    keys = [row.plan["prompt_key"] for row in rows]
    assert keys[0] == keys[2] != keys[1]
    assert after["feedback"] == start["feedback"] + 3
    assert after["evidence"] == start["evidence"] + 2  # each picture once
    assert after["repeats"] == start["repeats"] + 1  # the first picture asked again


async def test_gateways_sharing_a_database_converge_to_the_same_state(database_url, tmp_path):
    """Two gateways on one database: decisions on both, each one's feedback posted to the
    *other*, and the state of both equals the initial state updated with every first
    feedback in sequence order (what one gateway alone computes from the same feedback)."""
    settings = [make_settings(data_dir=tmp_path / name, database_url=database_url,
                              learn_interval_s=60.0, learn_checkpoint_every=5)
                for name in ("a", "b")]
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(gateway_client(llm().transport(), settings[0]))
        b = await stack.enter_async_context(gateway_client(llm().transport(), settings[1]))
        initial = learned_state(a)
        assert learned_state(b) == initial  # both start from the one stored S(0)
        replies = [await decide(a if i % 2 else b, prompt)
                   for i, prompt in enumerate(PROMPTS * 2)]
        outcomes = []
        for i, reply in enumerate(replies):
            other = b if i % 2 else a  # feedback reaches the replica that did not decide
            correct = (i % 3) != 0
            answer = await other.post("/v1/feedback", json={
                "id": reply["router"]["decision_id"], "correct": correct})
            assert answer.status_code == 200, answer.text
            outcomes.append((reply, correct))
        for client in (a, b):
            await gateway_of(client).learner.sync()
        assert gateway_of(a).learner.cursor == gateway_of(b).learner.cursor == len(replies)
        assert learned_state(a) == learned_state(b)
        served = [gateway_of(c).router.policies["learned"] for c in (a, b)]
        assert feedback_seen(served[0]) == feedback_seen(served[1]) == \
            feedback_seen(LearnedPolicy.from_state(initial)) + len(replies)
        # The same decisions.
        probes = [Scores(d, s, r, form) for d in (0.2, 0.8) for s in (0.2, 0.8)
                  for r in (0.1, 0.8) for form in ("numeric", "choice")]
        assert [greedy(learned_state(a), p) for p in probes] == \
            [greedy(learned_state(b), p) for p in probes]
        # A third gateway started later loads the checkpoint and replays the tail.
        c = await stack.enter_async_context(gateway_client(llm().transport(), make_settings(
            data_dir=tmp_path / "c", database_url=database_url, learn_checkpoint_every=5)))
        assert learned_state(c) == learned_state(a)
        # One learner given the same feedback, in the same order, from the same start, with
        # the decisions' plans and spend as logged.
        alone = gateway_of(a).router.restore("learned", json.loads(json.dumps(initial)))
        for n, (reply, correct) in enumerate(outcomes, start=1):
            row = await gateway_of(a).request_log.get(reply["router"]["decision_id"])
            assert row.completion_tokens == reply["router"]["spent_tokens"]
            plan = Plan(**{k: v for k, v in row.plan.items() if k in Plan.__dataclass_fields__})
            alone.update(Scores.from_dict(row.scores), plan, float(correct),
                         spent_tokens=row.completion_tokens,
                         prompt_key=row.plan["prompt_key"])
            if n % 5 == 0:  # the checkpoints' round trip
                alone = gateway_of(a).router.restore(
                    "learned", json.loads(json.dumps(alone.state(), sort_keys=True)))
        assert alone.state() == learned_state(a)


async def test_feedback_posted_again_to_another_replica_is_learned_there_before_it_answers(
        database_url, tmp_path):
    # A client that posts a feedback again on another replica (its first reply was lost,
    # and the load balancer sent the retry elsewhere) gets a 200 there: that replica must
    # then decide with it, as the README promises of the replica that received a feedback.
    # It answered before learning it (the decision had its event already, so it did not
    # read the log) and decided without it until its next poll: 10 of 10 on two real
    # replicas.
    settings = [make_settings(data_dir=tmp_path / name, database_url=database_url,
                              learn_interval_s=3600.0) for name in ("a", "b")]
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(gateway_client(llm().transport(), settings[0]))
        b = await stack.enter_async_context(gateway_client(llm().transport(), settings[1]))
        reply = await decide(a, PROMPTS[1])
        for client in (a, b):
            answer = await client.post("/v1/feedback", json={"id": reply["id"], "correct": True})
            assert answer.status_code == 200, answer.text
        status = [(await client.get("/v1/learner")).json() for client in (a, b)]
        assert [s["cursor"] for s in status] == [1, 1]
        assert [shared(s["policies"]["learned"]) for s in status] == \
            [shared(status[0]["policies"]["learned"])] * 2


def test_an_atomic_save_never_leaves_a_torn_file(tmp_path):
    class Exploding:
        def save(self, path: Path) -> None:
            path.write_text('{"half": ')
            raise OSError("disk full")

    target = tmp_path / "learned.json"
    target.write_text('{"whole": true}\n')
    with pytest.raises(OSError):
        save_atomically(Exploding(), target)
    assert json.loads(target.read_text()) == {"whole": True}
    assert [p.name for p in tmp_path.iterdir()] == ["learned.json"]


def test_learner_only_takes_policies_that_learn():
    from router_models.policies import parse_policy
    from service.learning import learns

    assert learns(parse_policy("learned"))
    assert not learns(parse_policy("rules"))
    assert not learns(parse_policy("fixed:direct@256"))
    assert Learner  # the class the app starts


async def test_outcomes_of_policies_that_do_not_learn_teach_the_learned_policy(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": PROMPTS[3]}],
            "router": {"policy": "rules"}})
        assert reply.status_code == 200 and reply.json()["router"]["policy"] == "rules"
        learner = gateway_of(client).learner
        before = feedback_seen(learner.policies["learned"])
        answer = await client.post("/v1/feedback", json={
            "id": reply.json()["router"]["decision_id"], "correct": True})
        assert answer.status_code == 200
        await learner.sync()
        assert feedback_seen(learner.policies["learned"]) == before + 1
        assert feedback_seen(gateway_of(client).router.policies["learned"]) == before + 1


async def test_a_strategy_forced_without_a_policy_teaches_only_as_the_readme_says(tmp_path):
    """README ("Outcomes teach the policy whoever chose the plan"): a strategy forced under a
    ``router.policy`` is scored and teaches the learned policy; one forced with no policy is
    planned without the classifier and teaches nothing (the README said every forced
    strategy taught it)."""
    settings = make_settings(data_dir=tmp_path)
    async with gateway_client(llm().transport(), settings) as client:
        learner = gateway_of(client).learner
        taught = []
        for i, controls in enumerate(({"strategy": "sequential"},
                                      {"strategy": "sequential", "policy": "learned"})):
            reply = await client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": PROMPTS[i + 1]}],
                "router": controls})
            assert reply.status_code == 200, reply.text
            assert reply.json()["router"]["strategy"] == "sequential"
            before = feedback_seen(learner.policies["learned"])
            answer = await client.post("/v1/feedback", json={
                "id": reply.json()["router"]["decision_id"], "correct": True})
            assert answer.status_code == 200
            await learner.sync()
            taught.append(feedback_seen(learner.policies["learned"]) - before)
    assert taught == [0, 1]


async def test_a_learning_policy_added_later_leaves_the_checkpointed_ones_as_they_were(tmp_path):
    """A restart that adds a learning policy (``policies: {mine: learned}``, or an A/B arm
    ``learned:PATH``) replays the log from 0 for it; the policies already checkpointed past
    those events must not take them again (events 3 and 4 were learned twice, and this
    replica's state no longer matched its peers')."""
    first = make_settings(data_dir=tmp_path, learn_checkpoint_every=2)
    async with gateway_client(llm().transport(), first) as client:
        for prompt in PROMPTS[:4]:
            reply = await decide(client, prompt)
            answer = await client.post("/v1/feedback", json={
                "id": reply["router"]["decision_id"], "correct": True})
            assert answer.status_code == 200
        learned = learned_state(client)
        assert gateway_of(client).learner.cursor == 4
    again = make_settings(data_dir=tmp_path, learn_checkpoint_every=2,
                          policies={"mine": "learned"})
    async with gateway_client(llm().transport(), again) as client:
        learner = gateway_of(client).learner
        assert learner.cursor == 4 and set(learner.policies) == {"learned", "mine"}
        assert learned_state(client) == learned
        served = gateway_of(client).router.policies["learned"]
        assert feedback_seen(served) == feedback_seen(LearnedPolicy.from_state(learned))
    async with gateway_client(llm().transport(), again) as client:  # and from its checkpoints
        assert learned_state(client) == learned
