"""Assistants API runs forwarded with an API key: a run names no model (its assistant's is
used), yet it generates, so it reserves from its key's token limits like any call that may
generate, is refused with a 429 when the key has no room, and is charged the usage of its
finished run, else its whole grant (a run accepted as ``queued`` goes on generating after
the reply, up to the cap the gateway sent)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, metric
from tests.test_keys_and_limits import bearer, running, store

OBJECT_IDS = {"assistants": "asst_1", "threads": "thread_1"}
RUN_USAGE = {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}


class RunsBackend:
    """A backend serving runs: a non-streamed run comes back ``queued`` with ``usage: null``
    (it runs after the reply, as OpenAI's do); a streamed one runs to ``completed`` and its
    last run event carries ``RUN_USAGE``, after a step's own usage. ``bodies``: the run
    requests received, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "fake-model", "object": "model"}]})
        body = json.loads(request.content)
        kind = request.url.path.removeprefix("/v1/")
        if kind in ("assistants", "threads"):  # made by the key first: its own objects
            return httpx.Response(200, json={"id": OBJECT_IDS[kind], "object": kind[:-1]})
        self.bodies.append(body)
        run = {"id": f"run_{len(self.bodies)}", "object": "thread.run", "thread_id": "thread_1",
               "assistant_id": body.get("assistant_id"), "status": "queued", "usage": None,
               "max_completion_tokens": body.get("max_completion_tokens")}
        if not body.get("stream"):
            return httpx.Response(200, json=run)
        step_usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        events = [("thread.run.created", run),
                  ("thread.run.step.completed", {"object": "thread.run.step",
                                                 "status": "completed", "usage": step_usage}),
                  ("thread.run.completed", {**run, "status": "completed",
                                            "usage": RUN_USAGE})]
        text = "".join(f"event: {kind}\ndata: {json.dumps(data)}\n\n" for kind, data in events)
        text += "event: done\ndata: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=text.encode())


async def own_objects(client: httpx.AsyncClient, secret: str) -> None:
    """Make the assistant and the thread the runs name, as the key's own."""
    for kind in OBJECT_IDS:
        made = await client.post(f"/v1/{kind}", json={}, headers=bearer(secret))
        assert made.status_code == 200, made.text


RUN_CALLS = [
    # Create a thread and run it: an admin key, since ``threads/runs`` is taken for an
    # object of another key's and refused to the others (service.ownership).
    ("/v1/threads/runs", {"assistant_id": "asst_1",
                          "thread": {"messages": [{"role": "user", "content": "hi"}]}}, True),
    ("/v1/threads/thread_1/runs", {"assistant_id": "asst_1"}, False),
    # A run that names a model reached the backend through the model's route, reserved
    # what the key had left, and was charged nothing for its reply's null usage.
    ("/v1/threads/thread_1/runs", {"assistant_id": "asst_1", "model": "fake-model"}, False),
]


@pytest.mark.parametrize("path, body, admin", RUN_CALLS)
async def test_a_key_out_of_tokens_cannot_start_runs(path, body, admin):
    # Before: a key whose day was spent started runs all the same, since a forwarded call
    # reserved tokens only when its body named a model, and a queued run cost nothing.
    secret = store().create("runner", tokens_per_day=100, admin=admin)
    backend = RunsBackend()
    before = metric("ttc_key_tokens_total", key_name="runner", kind="completion")
    async with running(backend.transport()) as (_, client):
        await own_objects(client, secret)
        capped = await client.post(path, json={**body, "max_completion_tokens": 60},
                                   headers=bearer(secret))
        assert capped.status_code == 200, capped.text
        assert capped.json()["status"] == "queued"
        # Queued: it goes on generating up to its cap, which the key is charged.
        assert capped.headers["x-ratelimit-remaining-tokens"] == "40"
        over = await client.post(path, json={**body, "max_completion_tokens": 60},
                                 headers=bearer(secret))
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "daily_budget_exhausted"
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert int(over.headers["retry-after"]) == 43_200  # until 00:00 UTC
        assert over.headers["x-ratelimit-remaining-tokens"] == "40"
        # No cap of its own: what the key has left becomes the run's cap upstream.
        uncapped = await client.post(path, json=body, headers=bearer(secret))
        assert uncapped.status_code == 200
        assert uncapped.headers["x-ratelimit-remaining-tokens"] == "0"
        spent = await client.post(path, json=body, headers=bearer(secret))
        assert spent.status_code == 429
    assert [b.get("max_completion_tokens") for b in backend.bodies] == [60, 40]
    assert metric("ttc_key_tokens_total", key_name="runner", kind="completion") == before + 100


async def test_a_streamed_run_is_charged_the_usage_of_its_finished_run():
    secret = store().create("streamer", tpm=1000, prompt_tpm=1000)
    backend = RunsBackend()
    labels = {"key_name": "streamer"}
    before = {kind: metric("ttc_key_tokens_total", **labels, kind=kind)
              for kind in ("prompt", "completion")}
    async with running(backend.transport()) as (_, client):
        await own_objects(client, secret)
        reply = await client.post("/v1/threads/thread_1/runs", headers=bearer(secret),
                                  json={"assistant_id": "asst_1", "stream": True,
                                        "max_completion_tokens": 300,
                                        "max_prompt_tokens": 500})
        assert reply.status_code == 200
        assert "thread.run.completed" in reply.text
        assert reply.headers["x-ratelimit-remaining-tokens"] == "700"  # reserved while running
        assert reply.headers["x-ratelimit-remaining-prompt-tokens"] == "500"
        probe = await client.post("/v1/threads/thread_1/runs", headers=bearer(secret),
                                  json={"assistant_id": "asst_1", "max_completion_tokens": 1})
    # The finished run's usage, not its step's: 30 of the 300 reserved, 20 of the 500.
    assert probe.headers["x-ratelimit-remaining-tokens"] == str(1000 - 30 - 1)
    assert backend.bodies[0]["max_completion_tokens"] == 300
    assert metric("ttc_key_tokens_total", **labels, kind="completion") == (
        before["completion"] + 30 + 1)
    assert metric("ttc_key_tokens_total", **labels, kind="prompt") >= before["prompt"] + 20


async def test_without_keys_a_run_is_forwarded_untouched():
    backend = RunsBackend()
    async with running(backend.transport(), make_settings()) as (_, client):
        reply = await client.post("/v1/threads/thread_1/runs", json={"assistant_id": "asst_1"})
    assert reply.status_code == 200
    assert backend.bodies == [{"assistant_id": "asst_1"}]
