"""API keys and per-key limits, with the gateway in process: 401 without or with a wrong key,
keys that take effect without a restart, admin surfaces, 429 with ``Retry-After`` and
``x-ratelimit-*`` over a key's requests or tokens, and a daily token budget that concurrent
requests never overspend."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.keys import (
    KEY_RELOAD_WAIT_S,
    ApiKey,
    KeyExists,
    KeyRing,
    KeyStoreError,
    PostgresKeyStore,
    SqliteKeyStore,
    UnknownKey,
    hash_secret,
    open_key_store,
)
from service.settings import Settings
from tests.conftest import make_settings, metric
from tests.fakes import FakeBackend
from tests.scripted import ScriptedLLM

CHAT = "/v1/chat/completions"
NOON = 1_800_000_000.0 - 1_800_000_000.0 % 86_400 + 43_200.0  # 12:00:00 UTC, a minute's start


def store() -> SqliteKeyStore:
    return SqliteKeyStore(Path(os.environ["TTC_DATA_DIR"]) / "keys.db")


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "q"}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def running(transport: httpx.AsyncBaseTransport, config: Settings | None = None,
                  clock: float | None = NOON) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The gateway in process, its limiter's clock fixed (the middle of a minute) so that no
    window rolls over during a test."""
    app = create_app(config or make_settings(), transport=transport)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.test") as client):
        if clock is not None:
            app.state.gateway.limiter.clock = lambda: clock
        yield app, client


def long_answers() -> ScriptedLLM:
    """A backend whose every answer is long enough to spend its whole grant."""
    return ScriptedLLM(lambda i, body: " ".join(["w"] * 5000) + " 7")


async def test_without_keys_the_gateway_is_open():
    async with running(FakeBackend().transport()) as (_, client):
        assert (await client.post(CHAT, json=ask())).status_code == 200


async def test_missing_or_wrong_key_is_401_in_the_envelope():
    secret = store().create("alice")
    before = metric("ttc_rejected_total", reason="auth")
    backend = FakeBackend()
    async with running(backend.transport()) as (_, client):
        for headers in ({}, bearer("ttc-wrong"), {"authorization": secret}):
            reply = await client.post(CHAT, json=ask(), headers=headers)
            assert reply.status_code == 401
            error = reply.json()["error"]
            assert error["type"] == "authentication_error"
            assert error["code"] == "invalid_api_key"
            assert secret not in reply.text
            assert reply.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 200
        assert (await client.get("/health")).status_code == 200  # not under /v1
    assert metric("ttc_rejected_total", reason="auth") == before + 4
    assert len(backend.requests) == 1  # nothing refused reached the backend


async def test_require_keys_refuses_before_any_key_exists():
    async with running(FakeBackend().transport(), make_settings(require_keys=True)) as (_, c):
        assert (await c.post(CHAT, json=ask())).status_code == 401


async def test_keys_take_effect_and_are_revoked_without_a_restart():
    first = store().create("first")
    async with running(FakeBackend().transport(), make_settings(keys_refresh_s=0.1)) as (_, c):
        assert (await c.post(CHAT, json=ask(), headers=bearer(first))).status_code == 200
        second = store().create("second")  # as `ttc-router keys create` would, meanwhile
        await asyncio.sleep(0.3)
        assert (await c.post(CHAT, json=ask(), headers=bearer(second))).status_code == 200
        store().revoke("first")
        await asyncio.sleep(0.2)
        assert (await c.post(CHAT, json=ask(), headers=bearer(first))).status_code == 401
        assert (await c.post(CHAT, json=ask(), headers=bearer(second))).status_code == 200


async def test_a_key_store_that_hangs_holds_up_requests_for_half_a_second_at_most():
    # Keys are read again every keys_refresh_s, on a new connection. When new connections
    # hang (PostgreSQL's postmaster stopped while open connections still work, a failover
    # whose address does not answer yet), every keyed request waited for that read, up to
    # the 5 s connect timeout, once a second: on three real replicas answers took 0.5 to 5 s
    # while the request log, on its open connections, was fine. A read that takes longer
    # than KEY_RELOAD_WAIT_S now goes on in the background, and requests are served from the
    # keys last read, as when a read fails.
    secret = "ttc-" + "k" * 43
    known = ApiKey("svc", hash_secret(secret))
    gate = threading.Event()

    class HangingStore:
        calls = 0

        def active(self) -> list[ApiKey]:
            HangingStore.calls += 1
            if HangingStore.calls > 1:
                gate.wait(10)
            return [known]

    ring = KeyRing(HangingStore(), refresh_s=0.05)  # type: ignore[arg-type]
    await ring.reload()
    await asyncio.sleep(0.1)
    try:
        start = time.monotonic()
        assert await asyncio.wait_for(ring.lookup(secret), 3) == known
        first_s = time.monotonic() - start
        start = time.monotonic()
        assert await ring.lookup(secret) == known
        assert await ring.any_keys()
        after_s = time.monotonic() - start
    finally:
        gate.set()
    assert first_s < KEY_RELOAD_WAIT_S + 0.3 and after_s < 0.05
    await asyncio.sleep(0.1)
    assert HangingStore.calls == 2  # one read at a time, however many requests waited


async def test_admin_surfaces_need_an_admin_key():
    user = store().create("user")
    admin = store().create("root", admin=True)
    config = make_settings(protect_metrics=True)
    async with running(FakeBackend().transport(), config) as (_, client):
        refused = await client.get("/v1/experiments/demo", headers=bearer(user))
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
        allowed = await client.get("/v1/experiments/demo", headers=bearer(admin))
        assert allowed.status_code not in (401, 403)
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer(user))).status_code == 401
        scraped = await client.get("/metrics", headers=bearer(admin))
        assert scraped.status_code == 200
        assert "ttc_rejected_total" in scraped.text


async def test_open_metrics_beside_keys_are_named_in_a_warning_at_start(caplog):
    store().create("tenant")
    async with running(FakeBackend().transport()) as (_, client):
        assert (await client.get("/metrics")).status_code == 200  # open, as documented
    assert "/metrics is open" in caplog.text
    caplog.clear()
    async with running(FakeBackend().transport(), make_settings(protect_metrics=True)):
        pass
    assert "/metrics is open" not in caplog.text


async def test_metrics_token_and_admin_key_both_open_a_protected_metrics():
    admin = store().create("root", admin=True)
    config = make_settings(metrics_token="scrape-me")
    async with running(FakeBackend().transport(), config) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer("scrape-me"))).status_code == 200
        assert (await client.get("/metrics", headers=bearer(admin))).status_code == 200


async def test_a_key_limited_to_10_requests_a_minute_gets_429_with_retry_after():
    secret = store().create("tenrpm", rpm=10)
    backend = FakeBackend()
    before = metric("ttc_rejected_total", reason="rate_limit")
    async with running(backend.transport()) as (_, client):
        for left in range(9, -1, -1):
            reply = await client.post(CHAT, json=ask(), headers=bearer(secret))
            assert reply.status_code == 200
            assert reply.headers["x-ratelimit-limit-requests"] == "10"
            assert reply.headers["x-ratelimit-remaining-requests"] == str(left)
        refused = await client.post(CHAT, json=ask(), headers=bearer(secret))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_requests"
        assert refused.headers["retry-after"] == "60"  # the clock is at a minute's start
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(backend.requests) == 10
    assert metric("ttc_rejected_total", reason="rate_limit") == before + 1


async def test_the_request_window_resets_after_a_minute():
    secret = store().create("onerpm", rpm=1)
    async with running(FakeBackend().transport()) as (app, client):
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 200
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 429
        app.state.gateway.limiter.clock = lambda: NOON + 60
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 200


async def test_daily_tokens_are_reserved_settled_and_then_refused():
    secret = store().create("daily", tokens_per_day=100)
    llm = long_answers()
    before = metric("ttc_rejected_total", reason="budget")
    async with running(llm.transport()) as (_, client):
        for _ in range(2):
            reply = await client.post(CHAT, json=ask(max_tokens=40), headers=bearer(secret))
            assert reply.status_code == 200
        assert reply.headers["x-ratelimit-remaining-tokens"] == "20"
        refused = await client.post(CHAT, json=ask(max_tokens=40), headers=bearer(secret))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "daily_budget_exhausted"
        assert int(refused.headers["retry-after"]) == 43_200  # until 00:00 UTC
        assert refused.headers["x-ratelimit-remaining-tokens"] == "20"
        uncapped = await client.post(CHAT, json=ask(), headers=bearer(secret))
        assert uncapped.status_code == 200  # granted what is left: 20 tokens
        assert uncapped.json()["router"]["budget_tokens"] == 20
        assert uncapped.json()["usage"]["completion_tokens"] == 20
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 429
    assert llm.reported_tokens == 100
    assert metric("ttc_rejected_total", reason="budget") == before + 2


async def test_unspent_tokens_are_given_back():
    secret = store().create("refund", tpm=50)
    backend = FakeBackend()  # answers 4 tokens whatever it is granted
    async with running(backend.transport()) as (_, client):
        # Each request reserves 40 of the minute's 50 and gives back the 36 it did not spend,
        # so three fit where reservations alone would let one through.
        for left in (10, 6, 2):
            reply = await client.post(CHAT, json=ask(max_tokens=40), headers=bearer(secret))
            assert reply.status_code == 200
            assert reply.headers["x-ratelimit-remaining-tokens"] == str(left)
        refused = await client.post(CHAT, json=ask(max_tokens=40), headers=bearer(secret))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_tokens"
        assert refused.headers["x-ratelimit-remaining-tokens"] == "38"


async def test_a_request_bigger_than_a_whole_window_is_a_400():
    secret = store().create("small", tpm=100)
    async with running(FakeBackend().transport()) as (_, client):
        reply = await client.post(CHAT, json=ask(max_tokens=500), headers=bearer(secret))
        assert reply.status_code == 400
        assert reply.json()["error"]["code"] == "over_key_limit"


@pytest.mark.parametrize(("cap", "param"), [
    ({"max_tokens": 500}, "max_tokens"),
    ({"max_completion_tokens": 500}, "max_completion_tokens"),
    ({"router": {"budget_tokens": 500}}, "router.budget_tokens"),
    ({"max_tokens": 50, "router": {"strategy": "parallel_vote", "budget_tokens": 500}},
     "router.budget_tokens")])
async def test_a_cap_over_a_keys_window_names_the_field_the_client_set(cap, param):
    # Seen through the gateway (--tpm 100, max_tokens 200, a chain): the 400 named
    # router.budget_tokens, which the client never sent, because a chain's budget is taken
    # from max_tokens when none is given.
    secret = store().create("capped", tpm=100)
    body = ask(**cap)
    body["router"] = {"strategy": "sequential", **body.get("router", {})}
    async with running(FakeBackend().transport()) as (_, client):
        reply = await client.post(CHAT, json=body, headers=bearer(secret))
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "over_key_limit"
    assert reply.json()["error"]["param"] == param


async def test_a_request_over_a_keys_window_is_rejected_once_as_budget():
    # Seen through the gateway: one such 400 moved ttc_rejected_total{reason="budget"} and
    # {reason="invalid"} both, so ttc:rejected_ratio:rate5m counted the request twice.
    secret = store().create("once", tpm=100)
    before = {reason: metric("ttc_rejected_total", reason=reason)
              for reason in ("budget", "invalid")}
    async with running(FakeBackend().transport()) as (_, client):
        reply = await client.post(CHAT, json=ask(max_tokens=500), headers=bearer(secret))
        assert reply.json()["error"]["code"] == "over_key_limit"
    assert metric("ttc_rejected_total", reason="budget") == before["budget"] + 1
    assert metric("ttc_rejected_total", reason="invalid") == before["invalid"]


async def test_a_budget_the_gateway_sized_fits_what_the_key_has_left():
    # Seen on the embedded model: a key with --tpm 600 got a 400 "lower max_tokens or
    # router.budget_tokens" for "Write a haiku" (auto's 4,096 tokens of room for generation)
    # and for a word problem (a 1,086-token plan), though the client had set neither.
    secret = store().create("modest", tpm=600)
    config = make_settings(policies={"votes": "fixed:parallel_vote@1024"})
    haiku = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku."}]}
    async with running(long_answers().transport(), config) as (_, client):
        first = await client.post(CHAT, json=haiku, headers=bearer(secret))
        assert first.status_code == 200, first.json()
        assert first.json()["router"]["budget_tokens"] == 600  # all the minute holds
        assert first.json()["usage"]["completion_tokens"] == 600
    secrets = [store().create(f"modest-{n}", tpm=600) for n in range(2)]
    async with running(long_answers().transport(), config) as (_, client):
        # A named strategy's default budget (1,024) and a policy's vote of 1,024 tokens, with
        # 150 of the key's minute left.
        for secret, controls in zip(secrets, ({"strategy": "sequential"}, {"policy": "votes"}),
                                    strict=True):
            spent = await client.post(CHAT, json=ask(max_tokens=450), headers=bearer(secret))
            assert spent.headers["x-ratelimit-remaining-tokens"] == "150"
            reply = await client.post(CHAT, json={**haiku, "messages": [
                {"role": "user", "content": "What is 3 + 4?"}], "router": controls},
                headers=bearer(secret))
            assert reply.status_code == 200, reply.json()
            router = reply.json()["router"]
            assert 0 < router["budget_tokens"] <= 150 and router["spent_tokens"] <= 150
            assert reply.headers["x-ratelimit-remaining-tokens"] == str(
                150 - router["spent_tokens"])
        # A cap the client set is its own: over a whole window it is still refused.
        over = await client.post(CHAT, json={**haiku, "max_tokens": 700},
                                 headers=bearer(secret))
        assert over.status_code == 400 and over.json()["error"]["code"] == "over_key_limit"


async def test_key_tokens_reach_the_metric_and_the_request_log():
    secret = store().create("metered")
    before = metric("ttc_key_tokens_total", key_name="metered", kind="completion")
    async with running(FakeBackend().transport()) as (app, client):
        reply = await client.post(CHAT, json=ask(), headers=bearer(secret))
        decision = reply.headers["x-ttc-decision-id"]
        record = await app.state.gateway.request_log.get(decision)
    assert record.key_name == "metered"
    assert metric("ttc_key_tokens_total", key_name="metered", kind="completion") == before + 4


async def test_a_key_out_of_tokens_cannot_spend_them_through_other_endpoints():
    from tests.test_direct import responses_backend

    secret = store().create("responder", tokens_per_day=100)
    before = metric("ttc_key_tokens_total", key_name="responder", kind="completion")
    async with running(responses_backend(80)) as (_, client):
        first = await client.post("/v1/responses", json={"model": "auto", "input": "hi"},
                                  headers=bearer(secret))
        assert first.status_code == 200
        # 80 of the day's 100 spent; the next 80 would overspend it: refused like a chat call
        refused = await client.post(CHAT, json=ask(max_tokens=80), headers=bearer(secret))
        assert refused.status_code == 429
        first = await client.post("/v1/responses", json={"model": "auto", "input": "hi",
                                                         "stream": True},
                                  headers=bearer(secret))
        assert first.status_code == 200  # granted the 20 left: it spent 80, counted in full
        again = await client.post("/v1/responses", json={"model": "auto", "input": "hi"},
                                  headers=bearer(secret))
        assert again.status_code == 429
        assert again.json()["error"]["code"] == "daily_budget_exhausted"
    assert metric("ttc_key_tokens_total", key_name="responder", kind="completion") == (
        before + 160)


async def test_a_forwarded_response_without_a_cap_is_capped_at_what_the_key_has_left():
    from tests.test_direct import responses_backend

    inner = responses_backend(30)
    caps: list[object] = []

    def handle(request: httpx.Request) -> httpx.Response:
        caps.append(json.loads(request.content).get("max_output_tokens", "absent"))
        return inner.handler(request)  # type: ignore[attr-defined]

    secret = store().create("capped", tokens_per_day=100)
    async with running(httpx.MockTransport(handle)) as (_, client):
        for body in ({"input": "hi"}, {"input": "hi"}, {"input": "hi", "max_output_tokens": 7}):
            reply = await client.post("/v1/responses", json={"model": "auto", **body},
                                      headers=bearer(secret))
            assert reply.status_code == 200
    # The day's 100, then the 70 left after 30 were spent; a cap of the client's own is kept.
    assert caps == [100, 70, 7]


async def test_a_prompt_token_limit_holds_for_other_endpoints_too():
    from tests.test_direct import responses_backend

    secret = store().create("reader", prompt_tpm=20)  # each call reads 11 prompt tokens
    async with running(responses_backend(5)) as (_, client):
        codes = [(await client.post("/v1/responses", json={"model": "auto", "input": "hi"},
                                    headers=bearer(secret))).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_operator_caps_are_clear_400s():
    config = make_settings(max_n=4, max_budget_tokens=1000, max_samples=8, vote_width=16,
                           vote_min_depth_tokens=1)
    async with running(FakeBackend().transport(), config) as (_, client):
        too_many = await client.post(CHAT, json=ask(n=5))
        assert too_many.status_code == 400
        assert too_many.json()["error"]["param"] == "n"
        too_big = await client.post(CHAT, json=ask(router={"budget_tokens": 1001}))
        assert too_big.status_code == 400
        assert too_big.json()["error"]["param"] == "router.budget_tokens"
        # A forced strategy's budget set by max_tokens names the field the client sent.
        for field in ("max_tokens", "max_completion_tokens"):
            capped = await client.post(CHAT, json=ask(router={"strategy": "sequential"},
                                                      **{field: 1001}))
            assert capped.status_code == 400
            assert capped.json()["error"]["param"] == field
        wide = await client.post(CHAT, json=ask(router={"strategy": "parallel_vote",
                                                       "budget_tokens": 900}))
        assert wide.status_code == 400
        assert "samples" in wide.json()["error"]["message"]
        assert (await client.post(CHAT, json=ask(n=4))).status_code == 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(day=st.integers(50, 2000),
       requests=st.lists(st.tuples(st.sampled_from(["direct", "parallel_vote", "sequential",
                                                    "uncapped"]),
                                   st.integers(1, 600), st.booleans()),
                         min_size=1, max_size=24))
def test_concurrent_requests_never_spend_past_a_daily_budget(tmp_path_factory, day, requests):
    data_dir = tmp_path_factory.mktemp("keys")
    secret = SqliteKeyStore(data_dir / "keys.db").create("budgeted", tokens_per_day=day)
    llm = long_answers()

    def body(strategy: str, tokens: int, stream: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {"stream": True} if stream else {}
        if strategy == "uncapped":
            return ask(**extra)
        if strategy == "direct":
            return ask(max_tokens=tokens, **extra)
        return ask(router={"strategy": strategy, "budget_tokens": tokens}, **extra)

    async def run() -> list[httpx.Response]:
        config = make_settings(data_dir=data_dir, vote_min_depth_tokens=8,
                               default_budget_tokens=300, answer_reserve_tokens=8)
        async with running(llm.transport(), config) as (_, client):
            return await asyncio.gather(*(
                client.post(CHAT, json=body(*r), headers=bearer(secret)) for r in requests))

    replies = asyncio.run(run())
    assert llm.reported_tokens <= day
    assert all(r.status_code in (200, 400, 429) for r in replies), [r.text for r in replies]


@pytest.mark.parametrize("name", ["", "has space", "-dash-first", "x" * 65])
def test_bad_key_names_are_refused(name):
    with pytest.raises(ValueError):
        store().create(name)


def test_key_store_create_list_revoke(database_url, tmp_path):
    keys = open_key_store(tmp_path, database_url)
    assert isinstance(keys, PostgresKeyStore) == database_url.startswith("postgresql")
    secret = keys.create("svc", rpm=5, tpm=100, tokens_per_day=1000, admin=True)
    assert secret.startswith("ttc-") and len(secret) == 47
    with pytest.raises(KeyExists):
        keys.create("svc")
    [stored] = keys.active()
    assert (stored.name, stored.rpm, stored.tpm, stored.tokens_per_day, stored.admin) == (
        "svc", 5, 100, 1000, True)
    assert stored.key_hash == hash_secret(secret) and secret not in repr(stored)
    keys.revoke("svc")
    assert keys.active() == []
    with pytest.raises(UnknownKey):
        keys.revoke("svc")
    again = keys.create("svc")  # a revoked name can be reused; the old secret stays refused
    assert [k.key_hash for k in keys.active()] == [hash_secret(again)]


def test_replicas_starting_together_on_a_fresh_database_all_read_the_keys(postgres_server):
    # Replicas started together (a Deployment's pods, a rolling start) each read the keys of
    # a database that has no key table yet: CREATE TABLE IF NOT EXISTS is not safe against a
    # concurrent one in PostgreSQL (a unique violation in pg_type), and a replica that lost
    # the race failed to start.
    failures = []
    for _ in range(3):
        url = postgres_server.new_database()
        start = threading.Barrier(6)

        def replica(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                PostgresKeyStore(url).active()
            except KeyStoreError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=replica) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


async def test_with_postgresql_the_gateway_reads_keys_from_the_database(postgres_url):
    secret = PostgresKeyStore(postgres_url).create("pg-client")
    config = make_settings(database_url=postgres_url)
    async with running(FakeBackend().transport(), config) as (_, client):
        assert (await client.post(CHAT, json=ask())).status_code == 401
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 200


async def test_a_prompt_token_limit_reserves_the_estimate_and_settles_the_true_count():
    from tests.fakes import PROMPT_TOKENS

    secret = store().create("prompts", prompt_tpm=4 * PROMPT_TOKENS)
    long_prompt = {"model": "fake-model", "max_tokens": 4,
                   "messages": [{"role": "user", "content": "x" * 400}]}  # ~100 tokens
    async with running(FakeBackend().transport()) as (_, client):
        too_long = await client.post(CHAT, json=long_prompt, headers=bearer(secret))
        assert too_long.status_code == 400  # more than a whole minute's prompt tokens
        assert too_long.json()["error"]["code"] == "over_key_limit"
        assert too_long.json()["error"]["param"] == "messages"
        # On /v1/completions the prompt is in "prompt", which the refusal names.
        too_long = await client.post("/v1/completions", json={
            "model": "fake-model", "max_tokens": 4, "prompt": "x" * 400}, headers=bearer(secret))
        assert too_long.status_code == 400
        assert too_long.json()["error"]["param"] == "prompt"
        # A short prompt is estimated at 2 tokens and charged the backend's count on settling,
        # so four requests use the minute up and the fifth waits for the oldest to leave.
        for _ in range(4):
            reply = await client.post(CHAT, json=ask(max_tokens=4), headers=bearer(secret))
            assert reply.status_code == 200, reply.text
        refused = await client.post(CHAT, json=ask(max_tokens=4), headers=bearer(secret))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_prompt_tokens"
        assert refused.headers["retry-after"] == "60"


async def test_shared_keys_with_limits_and_no_redis_warn_that_each_replica_counts_alone(
        postgres_url, caplog):
    # Replicas on one PostgreSQL share the keys but, without redis_url, count each key's
    # limits in their own memory: 2 replicas let a --rpm 10 key make 20 requests a minute.
    PostgresKeyStore(postgres_url).create("capped", rpm=10)
    PostgresKeyStore(postgres_url).create("open")
    async with running(FakeBackend().transport(), make_settings(database_url=postgres_url)):
        pass
    warnings = [r.getMessage() for r in caplog.records if "redis_url" in r.getMessage()]
    assert len(warnings) == 1 and "capped" in warnings[0] and "'open'" not in warnings[0]
    caplog.clear()
    async with running(FakeBackend().transport(), make_settings()):  # one box, keys.db
        pass
    assert not [r for r in caplog.records if "redis_url" in r.getMessage()]


async def test_feedback_has_its_own_window_and_leaves_the_request_limit_to_answers():
    # --rpm 4: four answers and a feedback on each fit in one minute; feedback spends no
    # tokens, so it does not take an answer's place, but it is still limited (its own window
    # of rpm), so a key cannot write to the log without bound.
    secret = store().create("fourrpm", rpm=4)
    async with running(FakeBackend().transport()) as (_, client):
        for left in range(3, -1, -1):
            reply = await client.post(CHAT, json=ask(), headers=bearer(secret))
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-ratelimit-remaining-requests"] == str(left)
            fed = await client.post("/v1/feedback", headers=bearer(secret), json={
                "id": reply.headers["x-ttc-decision-id"], "correct": True})
            assert fed.status_code == 200, fed.text
            assert fed.headers["x-ratelimit-limit-feedback"] == "4"
            assert fed.headers["x-ratelimit-remaining-feedback"] == str(left)
            assert "x-ratelimit-remaining-requests" not in fed.headers
        assert (await client.post(CHAT, json=ask(), headers=bearer(secret))).status_code == 429
        refused = await client.post("/v1/feedback", headers=bearer(secret), json={
            "id": reply.headers["x-ttc-decision-id"], "correct": False})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_feedback"
        assert refused.headers["retry-after"] == "60"


def rate_headers(reply: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.startswith("x-ratelimit-")}


LIMIT_HEADERS = {f"x-ratelimit-{part}-{what}" for part in ("limit", "remaining", "reset")
                 for what in ("requests", "tokens", "prompt-tokens")}


@pytest.mark.parametrize("limits, refusal", [
    ({"rpm": 1, "tpm": 1000, "prompt_tpm": 1000}, "rate_limit_requests"),
    ({"rpm": 100, "tpm": 50, "prompt_tpm": 1000}, "rate_limit_tokens"),
    ({"rpm": 100, "tpm": 1000, "prompt_tpm": 28}, "rate_limit_prompt_tokens"),
])
async def test_every_429_of_a_key_carries_retry_after_and_every_limits_headers(limits, refusal):
    # Seen through the gateway: a key's requests-per-minute refusal carried only the
    # x-ratelimit-*-requests headers, though the same key's answers and its token refusals
    # carry x-ratelimit-*-tokens as OpenAI sends them; a prompt-token refusal had no
    # x-ratelimit-reset-prompt-tokens and no completion-token headers; and no answer carried
    # the prompt-token limit at all. A client that backs off on the headers could not.
    from tests.fakes import PROMPT_TOKENS

    secret = store().create(refusal.replace("_", ""), **limits)
    answers = []
    async with running(FakeBackend().transport()) as (_, client):
        while True:  # each answer spends 4 completion and 7 prompt tokens
            reply = await client.post(CHAT, json=ask(max_tokens=48), headers=bearer(secret))
            if reply.status_code != 200:
                break
            answers.append(reply)
    assert reply.status_code == 429 and reply.json()["error"]["code"] == refusal
    assert reply.headers["retry-after"] == "60"  # the oldest answer leaves the window at 60 s
    assert set(rate_headers(reply)) == LIMIT_HEADERS
    assert all(set(rate_headers(answer)) == LIMIT_HEADERS for answer in answers)
    spent = len(answers)
    assert rate_headers(reply) == {
        "x-ratelimit-limit-requests": str(limits["rpm"]),
        "x-ratelimit-remaining-requests": str(limits["rpm"] - spent - 1 if refusal !=
                                              "rate_limit_requests" else 0),
        "x-ratelimit-reset-requests": "60s",
        "x-ratelimit-limit-tokens": str(limits["tpm"]),
        "x-ratelimit-remaining-tokens": str(limits["tpm"] - 4 * spent),
        "x-ratelimit-reset-tokens": "60s",
        "x-ratelimit-limit-prompt-tokens": str(limits["prompt_tpm"]),
        "x-ratelimit-remaining-prompt-tokens": str(limits["prompt_tpm"] - PROMPT_TOKENS * spent),
        "x-ratelimit-reset-prompt-tokens": "60s",
    }


async def test_a_backends_429_reaches_the_client_with_a_retry_after():
    # A backend that refuses with 429 and no Retry-After (llama.cpp's server when its slots
    # are full behind a proxy, many OpenAI-compatible proxies): the gateway's 429 had no
    # Retry-After either, the one 429 of the gateway without it.
    from tests.fakes import scripted_transport

    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"message": "slow down"}})

    def busy_for_a_while(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "7.2"},
                              json={"error": {"message": "slow down"}})

    config = make_settings(max_retries=0)
    for backend, expected in ((busy, "1"), (busy_for_a_while, "8")):
        async with running(scripted_transport(backend), config) as (_, client):
            reply = await client.post(CHAT, json=ask())
            forwarded = await client.post("/v1/embeddings",
                                          json={"model": "fake-model", "input": "x"})
        for refused in (reply, forwarded):
            assert refused.status_code == 429
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.headers["retry-after"] == expected  # whole seconds, rounded up


async def test_a_key_reserves_every_best_of_candidate():
    # max_tokens 10 with best_of 5 costs up to 50 tokens: the key reserved 10, so the call
    # was squeezed to 2 tokens a candidate (the client's max_tokens silently cut to 2).
    from tests.test_accounting import best_of_backend

    secret = store().create("bestof", tpm=100)
    seen: list[dict[str, Any]] = []
    async with running(best_of_backend(seen)) as (_, client):
        reply = await client.post("/v1/completions", headers=bearer(secret), json={
            "model": "fake-model", "prompt": "Once", "best_of": 5, "max_tokens": 10})
    assert reply.status_code == 200, reply.text
    assert seen[0]["max_tokens"] == 10
    assert reply.json()["usage"]["completion_tokens"] == 50
    assert reply.headers["x-ratelimit-remaining-tokens"] == "50"
