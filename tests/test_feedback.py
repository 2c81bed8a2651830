"""``POST /v1/feedback`` and the request log behind the gateway in process (SQLite and the real
PostgreSQL), whose keys may post only on their own requests, and ``/metrics`` behind its bearer
token."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from service.keys import open_key_store
from tests.conftest import gateway_client, make_settings, metric
from tests.fakes import FakeBackend

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}],
        "router": {"budget_tokens": 64}}


def feedback_count(outcome: str) -> float:
    return metric("ttc_feedback_total", strategy="direct", policy="none", arm="none",
                  outcome=outcome)


async def ask(client: httpx.AsyncClient, **changes: Any) -> httpx.Response:
    reply = await client.post("/v1/chat/completions", json={**CHAT, **changes})
    assert reply.status_code == 200, reply.text
    return reply


async def test_feedback_is_stored_once_counted_and_the_last_value_wins(database_url):
    settings = make_settings(database_url=database_url)
    correct, incorrect = feedback_count("correct"), feedback_count("incorrect")
    async with gateway_client(FakeBackend().transport(), settings) as client:
        reply = await ask(client)
        decision_id = reply.headers["x-ttc-decision-id"]
        first = await client.post("/v1/feedback", json={"id": decision_id, "correct": True})
        assert first.status_code == 200, first.text
        assert first.json() == {"object": "feedback", "id": decision_id,
                                "decision_id": decision_id, "correct": True, "score": 1.0}
        again = await client.post("/v1/feedback", json={"id": decision_id, "correct": True})
        changed = await client.post("/v1/feedback", json={"id": decision_id, "score": 0.2})
        assert (again.status_code, changed.status_code) == (200, 200)
        assert changed.json()["correct"] is False
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        stored = await log.get(decision_id)
    assert feedback_count("correct") - correct == 1  # counted once, at the first feedback
    assert feedback_count("incorrect") - incorrect == 0
    assert (stored.feedback_score, stored.feedback_correct, stored.feedback_count) == \
        (0.2, False, 3)
    assert (stored.strategy, stored.model, stored.status, stored.budget_tokens) == \
        ("direct", "fake-model", "200", 64)
    assert (stored.prompt_tokens, stored.completion_tokens) == \
        (reply.json()["usage"]["prompt_tokens"], reply.json()["usage"]["completion_tokens"])
    assert stored.prompt_text is None  # text is kept only when the operator opts in


async def test_the_response_id_names_the_request_too(database_url):
    settings = make_settings(database_url=database_url)
    async with gateway_client(FakeBackend().transport(), settings) as client:
        reply = await ask(client)
        answer = await client.post("/v1/feedback",
                                   json={"id": reply.json()["id"], "correct": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision_id"] == reply.headers["x-ttc-decision-id"]


async def test_an_unknown_id_is_a_404_in_the_error_envelope():
    # Seen on /metrics: feedback on an unknown id was counted as
    # ttc_rejected_total{reason="invalid"}, with the malformed bodies, so a client posting
    # stale or another tenant's ids could not be told from one posting broken JSON.
    before = {reason: metric("ttc_rejected_total", reason=reason)
              for reason in ("invalid", "unknown_id")}
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post("/v1/feedback", json={"id": "dec_nope", "correct": True})
    assert metric("ttc_rejected_total", reason="unknown_id") == before["unknown_id"] + 1
    assert metric("ttc_rejected_total", reason="invalid") == before["invalid"]
    assert reply.status_code == 404
    assert reply.json() == {"error": {"message": "no request has the id 'dec_nope'",
                                      "type": "invalid_request_error", "param": "id",
                                      "code": "unknown_id"}}


def unknown_id(ident: str) -> dict[str, Any]:
    """The 404 envelope of feedback on an id no request has."""
    return {"error": {"message": f"no request has the id {ident!r}",
                      "type": "invalid_request_error", "param": "id", "code": "unknown_id"}}


async def test_a_key_posts_feedback_only_on_its_own_requests_on_every_replica(database_url):
    # Two replicas share the log: the one receiving the feedback never saw the request, so it
    # can only know the request's key from the stored row.
    settings = make_settings(database_url=database_url)
    keys = open_key_store(settings.data_dir, database_url)
    alice, bob, ops = keys.create("alice"), keys.create("bob"), keys.create("ops", admin=True)
    async with (gateway_client(FakeBackend().transport(), settings) as one,
                gateway_client(FakeBackend().transport(), settings) as two):
        reply = await one.post("/v1/chat/completions", json=CHAT,
                               headers={"authorization": f"Bearer {alice}"})
        assert reply.status_code == 200, reply.text
        decision_id = reply.headers["x-ttc-decision-id"]
        for ident in (decision_id, reply.json()["id"]):  # another key's id: as if unknown
            refused = await two.post("/v1/feedback", json={"id": ident, "correct": False},
                                     headers={"authorization": f"Bearer {bob}"})
            assert (refused.status_code, refused.json()) == (404, unknown_id(ident))
        log = two._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        assert (await log.get(decision_id)).feedback_count == 0
        assert await log.backend.learning_events(0, 10) == []  # nothing taught to `auto`
        own = await two.post("/v1/feedback", json={"id": reply.json()["id"], "correct": True},
                             headers={"authorization": f"Bearer {alice}"})
        admin = await two.post("/v1/feedback", json={"id": decision_id, "score": 0.25},
                               headers={"authorization": f"Bearer {ops}"})
        assert (own.status_code, admin.status_code) == (200, 200), (own.text, admin.text)
        stored = await log.get(decision_id)
    assert (stored.key_name, stored.feedback_count, stored.feedback_score) == ("alice", 2, 0.25)


async def test_a_request_made_before_any_key_existed_takes_feedback_from_any_key():
    settings = make_settings(keys_refresh_s=0.1)
    async with gateway_client(FakeBackend().transport(), settings) as client:
        decision_id = (await ask(client)).headers["x-ttc-decision-id"]  # an open gateway
        secret = open_key_store(settings.data_dir, None).create("alice")
        await asyncio.sleep(0.3)  # the gateway has seen the key: it is closed now
        assert (await client.post("/v1/feedback", json={"id": decision_id, "correct": True})
                ).status_code == 401
        answer = await client.post("/v1/feedback", json={"id": decision_id, "correct": True},
                                   headers={"authorization": f"Bearer {secret}"})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("body", [
    {"id": "dec_x"},
    {"id": "dec_x", "correct": True, "score": 1.0},
    {"id": "dec_x", "score": 1.5},
    {"id": "dec_x", "correct": "maybe"},
    {"id": "", "correct": True},
    {"correct": True},
    # wrong types are refused, not coerced: a 1, "yes" or "0.5" is not an outcome
    {"id": "dec_x", "correct": 1},
    {"id": "dec_x", "correct": "yes"},
    {"id": "dec_x", "correct": "true"},
    {"id": "dec_x", "correct": 0.0},
    {"id": "dec_x", "score": "0.5"},
    {"id": "dec_x", "score": True},
])
async def test_a_malformed_feedback_is_a_422(body):
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post("/v1/feedback", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_a_feedback_with_no_outcome_says_what_to_give():
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post("/v1/feedback", json={"id": "dec_x"})
    assert reply.status_code == 422
    assert reply.json()["error"]["message"] == \
        "give exactly one of correct (a boolean) or score (0.0 to 1.0)"


async def test_a_whole_number_score_is_a_score():
    async with gateway_client(FakeBackend().transport()) as client:
        decision_id = (await ask(client)).headers["x-ttc-decision-id"]
        answer = await client.post("/v1/feedback", json={"id": decision_id, "score": 1})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["score"], answer.json()["correct"]) == (1.0, True)


@pytest.mark.parametrize("raw", [b"not json", b'{"id": "dec_x", "correct": tru', b""])
async def test_a_feedback_body_that_is_not_json_is_a_400(raw):
    async with gateway_client(FakeBackend().transport()) as client:
        reply = await client.post("/v1/feedback", content=raw,
                                  headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("the request body is not valid JSON")


async def test_streamed_and_failed_requests_are_logged_with_their_status(database_url):
    # A 500 may come after the backend generated its grant: the failed call is charged the
    # grant (64), so the request's budget pays for no retry.
    backend = FakeBackend(failures=[500])
    settings = make_settings(database_url=database_url)
    async with gateway_client(backend.transport(), settings) as client:
        failed = await client.post("/v1/chat/completions", json=CHAT)
        assert failed.status_code == 502
        async with client.stream("POST", "/v1/chat/completions",
                                 json={**CHAT, "stream": True}) as streamed:
            assert streamed.status_code == 200
            body = await streamed.aread()
        assert body.endswith(b"data: [DONE]\n\n")
        log = client._transport.app.state.gateway.request_log  # type: ignore[attr-defined]
        await log.flush()
        failed_row, streamed_row = await log.backend.records()  # oldest first
    assert streamed_row.decision_id == streamed.headers["x-ttc-decision-id"]
    assert (failed_row.status, failed_row.upstream_calls, failed_row.completion_tokens) == \
        ("502", 1, 64)
    assert failed_row.estimated is True
    assert streamed_row.stream is True and streamed_row.status == "200"
    assert streamed_row.completion_tokens == 4


async def test_metrics_need_the_bearer_token_when_one_is_set():
    settings = make_settings(metrics_token="s3cret")
    async with gateway_client(FakeBackend().transport(), settings) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
        right = await client.get("/metrics", headers={"authorization": "Bearer s3cret"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "ttc_requests_total" in right.text


async def test_metrics_are_open_without_a_token():
    async with gateway_client(FakeBackend().transport()) as client:
        assert (await client.get("/metrics")).status_code == 200
