"""Objects made through the forwarded ``/v1/*`` endpoints (responses, files, batches, ...) belong
to the key that made them: with the gateway in process (two replicas on one database, SQLite and
the real PostgreSQL) in front of a backend that stores objects as OpenAI does, another key's
object answers as an unknown one and never reaches the backend, and lists show a key its own."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.keys import open_key_store
from service.object_refs import made_ids, references
from service.ownership import Target, target_of
from tests.conftest import gateway_client, make_settings
from tests.fakes import RecordingBackend


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class ObjectBackend(RecordingBackend):
    """A backend that keeps objects as OpenAI's stateful endpoints do: ``POST /v1/responses``
    (JSON or a stream), ``POST /v1/files`` (multipart), ``POST /v1/batches`` (which makes its
    output file), then ``GET`` / ``DELETE`` / ``POST .../cancel`` on ``/v1/<kind>/<id>`` and
    cursor-paged lists (newest first, ``after`` and ``limit``). Every call is kept in
    ``calls`` as (method, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}

    def _make(self, kind: str, prefix: str, **fields: Any) -> dict[str, Any]:
        made = {"id": f"{prefix}{next(self._ids)}", **fields}
        self.objects.setdefault(kind, {})[made["id"]] = made
        return made

    def route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        kind, rest = parts[0], parts[1:]
        if request.method == "POST" and not rest:
            return self._create(kind, request)
        if not rest:
            return self._list(kind, request)
        found = self.objects.get(kind, {}).get(rest[0])
        if found is None:
            return missing(rest[0])
        if request.method == "DELETE":
            del self.objects[kind][rest[0]]
            return httpx.Response(200, json={"id": rest[0], "deleted": True})
        return httpx.Response(200, json=found)

    def _create(self, kind: str, request: httpx.Request) -> httpx.Response:
        if kind == "files":  # multipart, as the SDK uploads
            return httpx.Response(200, json=self._make("files", "file-", object="file",
                                                       bytes=len(request.content)))
        body = json.loads(request.content)
        if kind == "batches":
            output = self._make("files", "file-", object="file", purpose="batch_output")
            return httpx.Response(200, json=self._make(
                "batches", "batch_", object="batch", input_file_id=body["input_file_id"],
                output_file_id=output["id"]))
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.objects.get("responses", {}):
            return missing(previous)
        made = self._make("responses", "resp_", object="response", status="completed",
                          input=body["input"], previous_response_id=previous,
                          usage={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})
        if not body.get("stream"):
            return httpx.Response(200, json=made)
        events = [("response.created", {"type": "response.created",
                                        "response": {**made, "status": "in_progress"}}),
                  ("response.completed", {"type": "response.completed", "response": made})]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(
            f"event: {name}\ndata: {json.dumps(event)}\n\n".encode() for name, event in events))

    def _list(self, kind: str, request: httpx.Request) -> httpx.Response:
        items = list(reversed(self.objects.get(kind, {}).values()))  # newest first
        after = request.url.params.get("after")
        if after is not None:
            items = items[[item["id"] for item in items].index(after) + 1:]
        limit = int(request.url.params.get("limit", "20"))
        page = items[:limit]
        return httpx.Response(200, json={
            "object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None})


def missing(ident: str) -> httpx.Response:
    """OpenAI's answer to an object id it does not have."""
    return httpx.Response(404, json={"error": {"message": f"No such object: {ident}",
                                               "type": "invalid_request_error", "param": "id",
                                               "code": None}})


def unknown_object(ident: str, param: str | None = "id") -> dict[str, Any]:
    """The gateway's answer when a key names an object it may not reach: shaped as the backend's
    unknown-object 404, with one message for another key's object and for one never made."""
    return {"error": {"message": f"No such object: {ident}", "type": "invalid_request_error",
                      "param": param, "code": None}}


async def test_a_key_reaches_only_the_objects_it_created_on_every_replica(database_url):
    # Two replicas share the database: the one bob calls never saw alice's object being made,
    # so only the stored owner can tell it apart.
    settings = make_settings(database_url=database_url)
    keys = open_key_store(settings.data_dir, database_url)
    alice, bob, ops = keys.create("alice"), keys.create("bob"), keys.create("ops", admin=True)
    backend = ObjectBackend()
    async with (gateway_client(backend.transport(), settings) as one,
                gateway_client(backend.transport(), settings) as two):
        made = await one.post("/v1/responses", json={"model": "auto", "input": "alice's secret"},
                              headers=bearer(alice))
        assert made.status_code == 200, made.text
        ident = made.json()["id"]
        backend.calls.clear()
        for method, path in (("GET", f"/v1/responses/{ident}"),
                             ("GET", f"/v1/responses/{ident}/input_items"),
                             ("POST", f"/v1/responses/{ident}/cancel"),
                             ("DELETE", f"/v1/responses/{ident}")):
            refused = await two.request(method, path, headers=bearer(bob))
            assert (refused.status_code, refused.json()) == (404, unknown_object(ident)), path
        never = await two.get("/v1/responses/resp_never_made", headers=bearer(bob))
        assert (never.status_code, never.json()) == (404, unknown_object("resp_never_made"))
        assert backend.calls == []  # bob's calls never reached the backend
        # ... and read as the backend's own answer to an id it lacks (an admin key's call
        # reaches the backend).
        forwarded = await two.get("/v1/responses/resp_never_made", headers=bearer(ops))
        assert (forwarded.status_code, forwarded.json()) == (never.status_code, never.json())
        backend.calls.clear()
        # Nor may bob continue alice's conversation, which would hand him her context.
        chained = await two.post("/v1/responses", json={
            "model": "auto", "input": "repeat it", "previous_response_id": ident},
            headers=bearer(bob))
        assert (chained.status_code, chained.json()) == (
            404, unknown_object(ident, "previous_response_id"))
        assert backend.calls == []
        own = await two.get(f"/v1/responses/{ident}", headers=bearer(alice))
        admin = await two.get(f"/v1/responses/{ident}", headers=bearer(ops))
        assert (own.status_code, admin.status_code) == (200, 200), (own.text, admin.text)
        assert own.json()["input"] == "alice's secret"
        follow = await two.post("/v1/responses", json={
            "model": "auto", "input": "and then?", "previous_response_id": ident},
            headers=bearer(alice))
        assert follow.status_code == 200, follow.text
        # An admin key's objects are recorded for no key: other keys cannot reach them.
        admins = (await one.post("/v1/responses", json={"model": "auto", "input": "ops"},
                                 headers=bearer(ops))).json()["id"]
        assert (await two.get(f"/v1/responses/{admins}", headers=bearer(alice))
                ).status_code == 404
        deleted = await one.delete(f"/v1/responses/{ident}", headers=bearer(alice))
        assert deleted.json() == {"id": ident, "deleted": True}
    assert ident not in backend.objects["responses"]


async def test_a_streamed_response_belongs_to_its_key():
    settings = make_settings()
    keys = open_key_store(settings.data_dir, None)
    alice, bob = keys.create("alice"), keys.create("bob")
    backend = ObjectBackend()
    async with gateway_client(backend.transport(), settings) as client:
        made = await client.post("/v1/responses", json={
            "model": "auto", "input": "hi", "stream": True}, headers=bearer(alice))
        assert made.status_code == 200, made.text
        assert "event: response.completed" in made.text
        ident = next(iter(backend.objects["responses"]))
        assert (await client.get(f"/v1/responses/{ident}", headers=bearer(alice))
                ).status_code == 200
        assert (await client.get(f"/v1/responses/{ident}", headers=bearer(bob))
                ).status_code == 404


async def test_files_and_batch_outputs_belong_to_the_key_and_lists_show_its_own(database_url):
    settings = make_settings(database_url=database_url)
    keys = open_key_store(settings.data_dir, database_url)
    alice, bob, ops = keys.create("alice"), keys.create("bob"), keys.create("ops", admin=True)
    backend = ObjectBackend()

    async def upload(client: httpx.AsyncClient, key: str) -> str:
        reply = await client.post("/v1/files", files={"file": ("in.jsonl", b"{}\n")},
                                  data={"purpose": "batch"}, headers=bearer(key))
        assert reply.status_code == 200, reply.text
        return str(reply.json()["id"])

    async with gateway_client(backend.transport(), settings) as client:
        alices = [await upload(client, alice) for _ in range(3)]
        bobs = [await upload(client, bob) for _ in range(2)]
        batch = await client.post("/v1/batches", json={
            "input_file_id": alices[0], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}, headers=bearer(alice))
        assert batch.status_code == 200, batch.text
        output = batch.json()["output_file_id"]  # made by the backend, for alice's batch
        stolen = await client.post("/v1/batches", json={
            "input_file_id": alices[1], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}, headers=bearer(bob))
        assert (stolen.status_code, stolen.json()) == (
            404, unknown_object(alices[1], "input_file_id"))
        assert (await client.get(f"/v1/files/{output}", headers=bearer(alice))
                ).status_code == 200
        assert (await client.get(f"/v1/files/{output}", headers=bearer(bob))).status_code == 404
        assert (await client.get(f"/v1/files/{alices[0]}", headers=bearer(bob))
                ).status_code == 404

        async def listed(key: str, **params: Any) -> dict[str, Any]:
            reply = await client.get("/v1/files", params=params, headers=bearer(key))
            assert reply.status_code == 200, reply.text
            return dict(reply.json())

        everything = await listed(ops)
        assert {f["id"] for f in everything["data"]} == {*alices, *bobs, output}
        mine = await listed(bob)
        assert [f["id"] for f in mine["data"]] == bobs[::-1]
        assert (mine["first_id"], mine["last_id"], mine["has_more"]) == (
            bobs[1], bobs[0], False)
        # Pages of two: bob's files sit behind alice's newer ones, and the cursor the client
        # gets back is always one of its own ids, so the next page goes on from there.
        first = await listed(bob, limit=2)
        assert [f["id"] for f in first["data"]] == bobs[::-1]
        # A cursor is an object id like any other: the page after alice's file would tell bob
        # where it sits, so it is unknown to him as an id never made is.
        for cursor in ("after", "before"):
            for ident in (output, "file-never"):
                calls = list(backend.calls)
                refused = await client.get("/v1/files", params={cursor: ident},
                                           headers=bearer(bob))
                assert (refused.status_code, refused.json()) == (
                    404, unknown_object(ident, cursor))
                assert backend.calls == calls
        pages, after = [], None
        while True:
            page = await listed(alice, limit=2, **({"after": after} if after else {}))
            pages.append([f["id"] for f in page["data"]])
            if not page["has_more"]:
                break
            after = page["last_id"]
            assert after == page["data"][-1]["id"]
        assert [i for page in pages for i in page] == [output, *alices[::-1]]
        assert all(0 < len(page) <= 2 for page in pages)


async def test_a_filtered_page_keeps_no_figure_or_cursor_of_the_backends_whole_page():
    # A backend's page may say more than OpenAI's fields: a count over every tenant's objects,
    # a cursor naming the last object of the page it read (another key's).
    settings = make_settings()
    keys = open_key_store(settings.data_dir, None)
    alice, bob = keys.create("alice"), keys.create("bob")
    backend = ObjectBackend()
    plain = backend.handle

    def handle(request: httpx.Request) -> httpx.Response:
        reply = plain(request)
        if request.method == "GET" and request.url.path == "/v1/files":
            page = json.loads(reply.content)
            last = page["data"][-1]["id"] if page["data"] else None
            return httpx.Response(200, json={**page, "total": len(backend.objects["files"]),
                                             "next_cursor": last, "after": last})
        return reply

    async with gateway_client(httpx.MockTransport(handle), settings) as client:
        for key in (bob, alice, alice):
            made = await client.post("/v1/files", files={"file": ("a.jsonl", b"{}")},
                                     data={"purpose": "batch"}, headers=bearer(key))
            assert made.status_code == 200, made.text
        mine = await client.get("/v1/files", params={"limit": 5}, headers=bearer(bob))
    assert mine.status_code == 200, mine.text
    (own,) = [made for made in backend.objects["files"].values()][:1]
    assert mine.json() == {"object": "list", "data": [own], "has_more": False,
                           "first_id": own["id"], "last_id": own["id"]}


async def test_without_keys_every_call_is_forwarded_as_before():
    backend = ObjectBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        made = await client.post("/v1/responses", json={"model": "auto", "input": "hi"})
        ident = made.json()["id"]
        assert (await client.get(f"/v1/responses/{ident}")).status_code == 200
        unknown = await client.get("/v1/responses/resp_nope")
        listed = await client.get("/v1/responses")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "No such object: resp_nope"  # the backend's
    assert [r["id"] for r in listed.json()["data"]] == [ident]
    assert ("GET", "/v1/responses/resp_nope") in backend.calls


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/audio/speech",
                                  "/v1/responses/input_tokens"])
async def test_calls_that_name_no_object_are_forwarded_for_any_key(path):
    settings = make_settings()
    bob = open_key_store(settings.data_dir, None).create("bob")
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"object": "list", "data": []})

    async with gateway_client(httpx.MockTransport(handle), settings) as client:
        reply = await client.post(path, json={"model": "fake-model", "input": "hi"},
                                  headers=bearer(bob))
    assert reply.status_code == 200, reply.text
    assert seen == [path]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/chat/completions/chatcmpl-1"),  # stored chat completions
    ("DELETE", "/v1/models/ft:fake-model:acme:1"),  # a fine-tuned model
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel"),
    ("GET", "/v1/vector_stores/vs_1/files"),
])
async def test_objects_no_key_made_through_the_gateway_are_unknown_to_a_key(method, path):
    settings = make_settings()
    bob = open_key_store(settings.data_dir, None).create("bob")
    backend = ObjectBackend()
    async with gateway_client(backend.transport(), settings) as client:
        refused = await client.request(method, path, headers=bearer(bob))
    assert refused.status_code == 404
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert backend.calls == []


@pytest.mark.parametrize("paths", [
    # The upstream URL resolves '..': 'embeddings/../files/ID' would reach the file.
    ("/v1/embeddings/%2e%2e/files/{id}", "/v1/embeddings//files/{id}", "/v1/files/{id}/%2e"),
    # The gateway forwards the path as decoded once; the backend, or a proxy in front of it
    # (nginx resolves '%2e%2e' and '%2f'), decodes it again, and would reach the file.
    ("/v1/embeddings/%252e%252e/files/{id}", "/v1/embeddings/%252E./files/{id}",
     "/v1/embeddings/..%252ffiles%252f{id}", "/v1/embeddings/%255c..%255cfiles%255c{id}",
     "/v1/embeddings/..%5Cfiles%5C{id}"),
], ids=["decoded once", "encoded twice"])
async def test_dot_segments_cannot_steer_a_stateless_call_to_an_object(paths):
    settings = make_settings()
    keys = open_key_store(settings.data_dir, None)
    alice, bob = keys.create("alice"), keys.create("bob")
    backend = ObjectBackend()
    async with gateway_client(backend.transport(), settings) as client:
        ident = (await client.post("/v1/files", files={"file": ("a.jsonl", b"{}")},
                                   data={"purpose": "batch"}, headers=bearer(alice))).json()["id"]
        backend.calls.clear()
        for path in (p.format(id=ident) for p in paths):
            refused = await client.get(path, headers=bearer(bob))
            assert refused.status_code == 400, (path, refused.text)
            assert refused.json()["error"]["type"] == "invalid_request_error"
    assert backend.calls == []


def test_what_a_path_names():
    assert target_of("files") == Target("files", None)
    assert target_of("files/") == Target("files", None)
    assert target_of("files/file-1/content") == Target("files", "file-1")
    assert target_of("chat/completions/chatcmpl-1") == Target("chat/completions", "chatcmpl-1")
    assert target_of("fine_tuning/jobs") == Target("fine_tuning/jobs", None)
    assert target_of("responses/input_tokens") == Target("responses", None)  # an action
    assert target_of("audio/speech") == Target(None, None)


def test_what_a_body_names_and_a_reply_made():
    body = {"model": "m", "previous_response_id": "resp_1", "conversation": {"id": "conv_1"},
            "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
            "tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}]}
    assert sorted(references(body)) == [
        ("conversation", "conversations", "conv_1"), ("file_id", "files", "file-1"),
        ("previous_response_id", "responses", "resp_1"),
        ("vector_store_ids", "vector_stores", "vs_1"),
        ("vector_store_ids", "vector_stores", "vs_2")]
    assert references([[[[{"file_id": 3}]]]]) == []  # not an id
    assert references({"metadata": {"thread_id": "the client's own"}}) == []
    items = {"input": [{"type": "item_reference", "id": "msg_1"},
                       {"type": "reasoning", "id": "rs_1", "summary": []},
                       {"type": "message", "role": "user", "content": [{"type": "output_text",
                        "annotations": [{"type": "container_file_citation",
                                         "container_id": "cntr_1", "file_id": "cfile_1"}]}]},
                       {"type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_2"}],
             "tools": [{"type": "code_interpreter", "container": {"type": "auto",
                                                                  "file_ids": ["file-2"]}}],
             "data_source": {"source": {"type": "file_id", "id": "file-3"}}}
    assert sorted(references(items)) == [
        ("container_id", "containers", "cntr_2"), ("file_ids", "files", "file-2"),
        ("input", "items", "ci_1"), ("input", "items", "msg_1"), ("input", "items", "rs_1"),
        ("source", "files", "file-3")]
    # A tool call's id in a chat message, or an item-shaped value outside an input, names none.
    assert references({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
        "testing_criteria": [{"type": "message", "id": "criterion"}]}) == []
    upload = {"id": "upload_1", "status": "completed", "file": {"id": "file-9"}}
    assert made_ids("uploads", upload, created=False) == [("files", "file-9")]
    event = {"type": "response.created", "response": {"id": "resp_2"}}
    assert made_ids("responses", event, created=True) == [("responses", "resp_2")]
    added = {"type": "response.output_item.added", "item": {
        "type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_1"}}
    assert made_ids("responses", added, created=False) == [
        ("items", "ci_1"), ("containers", "cntr_1")]
    listed = {"object": "list", "data": [{"type": "message", "id": "msg_1"}]}
    assert made_ids("conversations", listed, created=False) == [("items", "msg_1")]
    assert made_ids("files", listed, created=False) == []


async def test_the_latest_key_handed_an_id_owns_it_and_long_lists_are_read(database_url):
    from tests.test_store import open_log

    log = await open_log(database_url)
    try:
        store = log.backend
        ids = [f"file-{i}" for i in range(5000)]
        await store.own_objects("files", ids, "alice", 1.0)
        await store.own_objects("files", ["file-7"], "bob", 2.0)  # the backend reused an id
        assert await store.owned_ids("files", "alice", [*ids, "file-x"]) == set(ids) - {"file-7"}
        assert await store.owned_ids("files", "bob", ids) == {"file-7"}
        assert await store.owned_ids("batches", "bob", ["file-7"]) == set()  # kinds apart
    finally:
        await log.close()
