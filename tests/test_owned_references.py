"""Every object id a request body can name is held to its key's own objects: Responses API
items (``item_reference`` and items passed back with their ``id``), containers, the requests
inside a batch's input file, a chat completion's file parts, and the Assistants API's threads,
messages and runs. With the gateway in process in front of a backend that resolves every such
reference as OpenAI does, another key's id answers as an unknown one and the backend never
sees the call."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.keys import open_key_store
from service.ownership import recorded
from tests.conftest import gateway_client, make_settings
from tests.fakes import RecordingBackend
from tests.test_proxy_ownership import bearer, missing, unknown_object

# Item types of the Responses API that the fake backend makes.
_ITEM_PREFIX = {"message": "msg_", "reasoning": "rs_", "code_interpreter_call": "ci_",
                "compaction": "cmp_"}


class ReferenceBackend(RecordingBackend):
    """A backend holding OpenAI's stateful objects and resolving what a body names: a response's
    ``previous_response_id``, ``conversation``, input items given by id, and code interpreter
    containers; files and their content, batches, evals, and the Assistants API's assistants,
    threads, messages and runs (a run is found only under its own thread). An unknown id is
    OpenAI's 404. Every call is kept in ``calls`` as (method, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.items: dict[str, dict[str, Any]] = {}  # every item any response or conversation holds
        self.contents: dict[str, bytes] = {}

    def make(self, kind: str, prefix: str, **fields: Any) -> dict[str, Any]:
        made = {"id": f"{prefix}{next(self._ids)}", **fields}
        self.objects.setdefault(kind, {})[made["id"]] = made
        return made

    def item(self, kind: str, **fields: Any) -> dict[str, Any]:
        made = {"id": f"{_ITEM_PREFIX[kind]}{next(self._ids)}", "type": kind, **fields}
        self.items[made["id"]] = made
        return made

    def route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        try:
            return self._answer(request, parts)
        except LookupError as exc:
            return missing(str(exc.args[0]))

    def _find(self, kind: str, ident: Any) -> dict[str, Any]:
        found = self.objects.get(kind, {}).get(ident)
        if found is None:
            raise LookupError(ident)
        return found

    def _answer(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        body = json.loads(request.content) if request.headers.get(
            "content-type", "").startswith("application/json") else {}
        match request.method, parts:
            case "POST", ["responses"]:
                return self._respond(body)
            case "POST", ["responses", "compact"]:
                return httpx.Response(200, json={
                    "id": f"resp_{next(self._ids)}", "object": "response.compaction",
                    "output": [self.item("compaction", encrypted_content="...")]})
            case "POST", ["chat", "completions"]:
                for message in body["messages"]:
                    for part in message["content"] if isinstance(message["content"], list) else []:
                        if part.get("type") == "file":
                            self._find("files", part["file"]["file_id"])
                return httpx.Response(200, json={
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                    "model": "fake-model", "choices": [{
                        "index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "read"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
            case "GET", ["responses", ident, "input_items"]:
                return listed(self._find("responses", ident)["input_items"])
            case "POST", ["conversations"]:
                return httpx.Response(200, json=self.make("conversations", "conv_",
                                                          object="conversation", items=[]))
            case "POST", ["conversations", ident, "items"]:
                made = [self.item(new.pop("type"), **new) for new in body["items"]]
                self._find("conversations", ident)["items"] += made
                return listed(made)
            case "POST", ["containers"]:
                made = self.make("containers", "cntr_", object="container")
                return httpx.Response(200, json=made)
            case "POST", ["files"]:
                made = self.make("files", "file-", object="file")
                self.contents[made["id"]] = _multipart_file(request)
                return httpx.Response(200, json=made)
            case "GET", ["files", ident, "content"]:
                self._find("files", ident)
                return httpx.Response(200, content=self.contents[ident])
            case "POST", ["batches"]:
                self._find("files", body["input_file_id"])
                return httpx.Response(200, json=self.make("batches", "batch_", object="batch"))
            case "POST", ["evals"] | ["assistants"] | ["threads"] | ["vector_stores"]:
                return httpx.Response(200, json=self.make(parts[0], f"{parts[0][:-1]}_",
                                                          object=parts[0][:-1]))
            case "POST", ["evals", ident, "runs"]:
                self._find("evals", ident)
                source = body["data_source"]["source"]
                if source["type"] == "file_id":
                    self._find("files", source["id"])
                return httpx.Response(200, json={"id": "evalrun_1", "object": "eval.run"})
            case "POST", ["threads", ident, "messages"]:
                for attachment in body.get("attachments", []):
                    self._find("files", attachment["file_id"])
                return httpx.Response(200, json=self.make(
                    "messages", "msg_", object="thread.message",
                    thread_id=self._find("threads", ident)["id"]))
            case "POST", ["threads", ident, "runs"]:
                self._find("assistants", body["assistant_id"])
                return httpx.Response(200, json=self.make(
                    "runs", "run_", object="thread.run",
                    thread_id=self._find("threads", ident)["id"]))
            case "GET", ["threads", ident, "runs", run]:
                found = self._find("runs", run)
                if found["thread_id"] != ident:  # runs are found under their own thread only
                    raise LookupError(run)
                return httpx.Response(200, json=found)
            case "GET", [kind, ident]:
                return httpx.Response(200, json=self._find(kind, ident))
        return httpx.Response(404, json={"error": {"message": "no route", "type": "x"}})

    def _respond(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("previous_response_id") is not None:
            self._find("responses", body["previous_response_id"])
        given = body["input"] if isinstance(body["input"], list) else [
            {"type": "message", "role": "user", "content": body["input"]}]
        inputs = []
        for item in given:
            if item.get("type") == "item_reference" or "id" in item:
                if item["id"] not in self.items:  # OpenAI resolves items by id
                    raise LookupError(item["id"])
                inputs.append(self.items[item["id"]])
            else:
                inputs.append(self.item("message", **{k: v for k, v in item.items()
                                                      if k != "type"}))
        output = [self.item("reasoning", summary=[]), self.item(
            "message", role="assistant", content=[{"type": "output_text", "text": "done"}])]
        for tool in body.get("tools", []):
            container = tool.get("container")
            if isinstance(container, str):
                self._find("containers", container)
            elif isinstance(container, dict):
                container = self.make("containers", "cntr_", object="container")["id"]
            if container is not None:
                output.insert(0, self.item("code_interpreter_call", container_id=container))
        made = self.make("responses", "resp_", object="response", status="completed",
                         output=output, input_items=inputs,
                         usage={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})
        reply = {k: v for k, v in made.items() if k != "input_items"}
        if not body.get("stream"):
            return httpx.Response(200, json=reply)
        events = [{"type": "response.created", "response": {**reply, "output": []}}]
        events += [{"type": "response.output_item.added", "output_index": i, "item": item}
                    for i, item in enumerate(output)]
        events.append({"type": "response.completed", "response": reply})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(
            f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events))


def listed(items: list[dict[str, Any]]) -> httpx.Response:
    ends = {"first_id": items[0]["id"], "last_id": items[-1]["id"]} if items else {
        "first_id": None, "last_id": None}
    return httpx.Response(200, json={"object": "list", "data": items, "has_more": False, **ends})


def _multipart_file(request: httpx.Request) -> bytes:
    """The file part's bytes of a multipart upload (one file, as the tests send)."""
    body = request.content
    start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
    return body[start:body.index(b"\r\n--", start)]


@pytest.fixture
def keys() -> dict[str, str]:
    store = open_key_store(make_settings().data_dir, None)
    return {"alice": store.create("alice"), "bob": store.create("bob"),
            "ops": store.create("ops", admin=True)}


def respond(**body: Any) -> dict[str, Any]:
    return {"model": "fake-model", **body}


async def refused_as_unknown(client: httpx.AsyncClient, backend: ReferenceBackend,
                             method: str, path: str, ident: str, param: str,
                             key: str, headers: dict[str, str] | None = None,
                             **kwargs: Any) -> None:
    """``key``'s call naming ``ident`` answers as OpenAI answers an id it does not have (one
    answer for another key's object and for one never made), and never reaches the backend."""
    before = list(backend.calls)
    theirs = await client.request(method, path, headers={**bearer(key), **(headers or {})},
                                  **kwargs)
    assert (theirs.status_code, theirs.json()) == (404, unknown_object(ident, param)), path
    assert backend.calls == before  # the backend never saw it


async def test_items_of_another_keys_response_are_unknown_however_they_are_named(keys):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        made = await client.post("/v1/responses", json=respond(input="alice's secret"),
                                 headers=bearer(keys["alice"]))
        assert made.status_code == 200, made.text
        reasoning, message = made.json()["output"]
        # OpenAI resolves an item by its id alone: a reference would hand bob alice's turn.
        for named in ({"type": "item_reference", "id": message["id"]},
                      {"type": "reasoning", "id": reasoning["id"], "summary": []},
                      message):
            await refused_as_unknown(client, backend, "POST", "/v1/responses", named["id"],
                                     "input", keys["bob"], json=respond(input=[named]))
        await refused_as_unknown(client, backend, "POST", "/v1/responses", "msg_never", "input",
                                 keys["bob"], json=respond(input=[
                                     {"type": "item_reference", "id": "msg_never"}]))
        # The owner passes her items back, by reference or by value.
        again = await client.post("/v1/responses", json=respond(input=[
            {"type": "item_reference", "id": message["id"]}, reasoning,
            {"type": "message", "role": "user", "content": "go on"}]),
            headers=bearer(keys["alice"]))
        assert again.status_code == 200, again.text


@pytest.mark.parametrize(("made", "field", "name"), [
    ("/v1/conversations", "conversation", lambda ident: {"conversation": ident}),
    ("/v1/conversations", "conversation",
     lambda ident: {"conversation": {"id": ident}}),
    ("/v1/files", "file_id", lambda ident: {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": ident}]}]}),
    ("/v1/files", "file_id", lambda ident: {"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": ident}]}]}),
    ("/v1/vector_stores", "vector_store_ids", lambda ident: {"tools": [
        {"type": "file_search", "vector_store_ids": [ident]}]}),
], ids=["conversation", "conversation object", "input_file", "input_image", "file_search"])
async def test_a_response_names_only_the_keys_own_objects(keys, made, field, name):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        alice = bearer(keys["alice"])
        ident = (await (client.post(made, files={"file": ("a.pdf", b"%PDF")},
                                    data={"purpose": "user_data"}, headers=alice)
                        if made == "/v1/files" else
                        client.post(made, json={}, headers=alice))).json()["id"]
        body = respond(**{"input": "read it", **name(ident)})
        await refused_as_unknown(client, backend, "POST", "/v1/responses", ident, field,
                                 keys["bob"], json=body)


async def test_a_compacted_window_is_the_keys_own(keys):
    # The compacted window is passed back as the next input, its compaction item by id.
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        compacted = await client.post("/v1/responses/compact", headers=bearer(keys["alice"]),
                                      json=respond(input="a long conversation"))
        assert compacted.status_code == 200, compacted.text
        (window,) = compacted.json()["output"]
        own = await client.post("/v1/responses", headers=bearer(keys["alice"]),
                                json=respond(input=[window]))
        assert own.status_code == 200, own.text
        await refused_as_unknown(client, backend, "POST", "/v1/responses", window["id"],
                                 "input", keys["bob"], json=respond(input=[window]))


async def test_items_shown_in_a_stream_are_the_keys_before_the_client_sees_them(keys):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        async with client.stream("POST", "/v1/responses", headers=bearer(keys["alice"]),
                                 json=respond(input="hi", stream=True)) as stream:
            added = None
            async for line in stream.aiter_lines():
                if line.startswith("data:") and "output_item.added" in line:
                    added = json.loads(line[5:])["item"]["id"]
                    # Named while the stream is still open: recorded before it was sent.
                    own = await client.post("/v1/responses", headers=bearer(keys["alice"]),
                                            json=respond(input=[
                                                {"type": "item_reference", "id": added}]))
                    assert own.status_code == 200, own.text
                    break
        assert added is not None
        await refused_as_unknown(client, backend, "POST", "/v1/responses", added, "input",
                                 keys["bob"], json=respond(input=[
                                     {"type": "item_reference", "id": added}]))


async def test_input_and_conversation_items_the_key_reads_are_its_own(keys):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        alice = bearer(keys["alice"])
        made = (await client.post("/v1/responses", json=respond(input="first"),
                                  headers=alice)).json()
        inputs = await client.get(f"/v1/responses/{made['id']}/input_items", headers=alice)
        typed = inputs.json()["data"][0]["id"]  # the id the backend gave alice's own input
        conversation = (await client.post("/v1/conversations", json={},
                                          headers=alice)).json()["id"]
        added = await client.post(f"/v1/conversations/{conversation}/items", headers=alice,
                                  json={"items": [{"type": "message", "role": "user",
                                                   "content": "remember 42"}]})
        assert added.status_code == 200, added.text
        remembered = added.json()["data"][0]["id"]
        for ident in (typed, remembered):
            own = await client.post("/v1/responses", headers=alice, json=respond(
                input=[{"type": "item_reference", "id": ident}]))
            assert own.status_code == 200, own.text
            await refused_as_unknown(client, backend, "POST", "/v1/responses", ident, "input",
                                     keys["bob"], json=respond(input=[
                                         {"type": "item_reference", "id": ident}]))
        # Nor may bob add alice's item to a conversation of his own.
        his = (await client.post("/v1/conversations", json={},
                                 headers=bearer(keys["bob"]))).json()["id"]
        await refused_as_unknown(client, backend, "POST", f"/v1/conversations/{his}/items",
                                 remembered, "items", keys["bob"], json={
                                     "items": [{"type": "item_reference", "id": remembered}]})


async def test_a_code_interpreter_container_is_its_keys_own(keys):
    # A container holds the files its code wrote and read: naming it reads them.
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        alice = bearer(keys["alice"])
        made = (await client.post("/v1/containers", json={"name": "c"}, headers=alice)).json()
        auto = (await client.post("/v1/responses", headers=alice, json=respond(
            input="plot it", tools=[{"type": "code_interpreter",
                                     "container": {"type": "auto"}}]))).json()
        call = auto["output"][0]
        assert call["type"] == "code_interpreter_call"
        for container in (made["id"], call["container_id"]):
            tools = [{"type": "code_interpreter", "container": container}]
            own = await client.post("/v1/responses", headers=alice,
                                    json=respond(input="again", tools=tools))
            assert own.status_code == 200, own.text
            await refused_as_unknown(client, backend, "POST", "/v1/responses", container,
                                     "container", keys["bob"],
                                     json=respond(input="again", tools=tools))
        await refused_as_unknown(client, backend, "GET", f"/v1/containers/{call['container_id']}",
                                 call["container_id"], "id", keys["bob"])
        # Alice passes the call back by value, its container with it.
        back = await client.post("/v1/responses", headers=alice, json=respond(input=[call]))
        assert back.status_code == 200, back.text


async def test_a_batch_runs_only_requests_that_name_the_keys_own_objects(keys):
    # The requests of a batch are in its input file: the backend runs them with the gateway's
    # credentials, so a line naming alice's response would copy her context into bob's output.
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        theirs = (await client.post("/v1/responses", json=respond(input="alice's secret"),
                                    headers=bearer(keys["alice"]))).json()["id"]
        mine = (await client.post("/v1/responses", json=respond(input="bob's"),
                                  headers=bearer(keys["bob"]))).json()["id"]

        async def batch_of(*previous: str) -> httpx.Response:
            lines = b"".join(json.dumps({
                "custom_id": str(i), "method": "POST", "url": "/v1/responses",
                "body": respond(input="repeat it", previous_response_id=ident)}).encode() + b"\n"
                for i, ident in enumerate(previous))
            upload = await client.post("/v1/files", files={"file": ("in.jsonl", lines)},
                                       data={"purpose": "batch"}, headers=bearer(keys["bob"]))
            assert upload.status_code == 200, upload.text
            return await client.post("/v1/batches", headers=bearer(keys["bob"]), json={
                "input_file_id": upload.json()["id"], "endpoint": "/v1/responses",
                "completion_window": "24h"})

        own = await batch_of(mine, mine)
        assert own.status_code == 200, own.text
        for ident in (theirs, "resp_never"):
            refused = await batch_of(mine, ident)
            assert (refused.status_code, refused.json()) == (
                404, unknown_object(ident, "previous_response_id"))
        assert [call for call in backend.calls if call[1] == "/v1/batches"] == [
            ("POST", "/v1/batches")]


async def test_a_chat_completion_reads_only_the_keys_own_files(keys):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        theirs = (await client.post("/v1/files", files={"file": ("a.pdf", b"%PDF alice")},
                                    data={"purpose": "user_data"},
                                    headers=bearer(keys["alice"]))).json()["id"]

        def chat(file_id: str) -> dict[str, Any]:
            return {"model": "fake-model", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "summarise"},
                {"type": "file", "file": {"file_id": file_id}}]}]}

        own = await client.post("/v1/chat/completions", json=chat(theirs),
                                headers=bearer(keys["alice"]))
        assert own.status_code == 200, own.text
        await refused_as_unknown(client, backend, "POST", "/v1/chat/completions", theirs,
                                 "file_id", keys["bob"], json=chat(theirs))
        await refused_as_unknown(client, backend, "POST", "/v1/chat/completions", "file-never",
                                 "file_id", keys["bob"], json=chat("file-never"))


async def test_an_eval_run_reads_only_the_keys_own_file(keys):
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        theirs = (await client.post("/v1/files", files={"file": ("e.jsonl", b"{}")},
                                    data={"purpose": "evals"},
                                    headers=bearer(keys["alice"]))).json()["id"]
        bob = bearer(keys["bob"])
        ident = (await client.post("/v1/evals", json={"name": "e"}, headers=bob)).json()["id"]
        source = {"type": "jsonl", "source": {"type": "file_id", "id": theirs}}
        await refused_as_unknown(client, backend, "POST", f"/v1/evals/{ident}/runs", theirs,
                                 "source", keys["bob"], json={"data_source": source})


@pytest.mark.parametrize("source", [
    {"type": "responses", "source": {"type": "responses", "limit": 100}},
    {"type": "completions", "source": {"type": "stored_completions", "limit": 100}},
])
async def test_an_eval_run_cannot_read_every_keys_stored_answers(keys, source):
    # These sources select stored responses or chat completions by filter, not by id: every
    # tenant's, since the backend sees one set of credentials.
    backend = ReferenceBackend()
    async with gateway_client(backend.transport(), make_settings()) as client:
        bob = bearer(keys["bob"])
        ident = (await client.post("/v1/evals", json={"name": "e"}, headers=bob)).json()["id"]
        refused = await client.post(f"/v1/evals/{ident}/runs", json={"data_source": source},
                                    headers=bob)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "permission_error"
        assert ("POST", f"/v1/evals/{ident}/runs") not in backend.calls
        admin = await client.post(f"/v1/evals/{ident}/runs", json={"data_source": source},
                                  headers=bearer(keys["ops"]))
        assert admin.status_code == 200, admin.text


async def test_the_assistants_api_is_forwarded_and_owned_per_key(keys):
    backend = ReferenceBackend()
    beta = {"openai-beta": "assistants=v2"}
    async with gateway_client(backend.transport(), make_settings()) as client:
        alice, bob = {**bearer(keys["alice"]), **beta}, {**bearer(keys["bob"]), **beta}
        helper = (await client.post("/v1/assistants", json={"model": "fake-model"},
                                    headers=alice)).json()["id"]
        thread = (await client.post("/v1/threads", json={}, headers=alice)).json()["id"]
        file = (await client.post("/v1/files", files={"file": ("a.txt", b"alice")},
                                  data={"purpose": "assistants"}, headers=alice)).json()["id"]
        said = await client.post(f"/v1/threads/{thread}/messages", headers=alice, json={
            "role": "user", "content": "hi", "attachments": [{"file_id": file}]})
        run = await client.post(f"/v1/threads/{thread}/runs", json={"assistant_id": helper},
                                headers=alice)
        assert (said.status_code, run.status_code) == (200, 200), (said.text, run.text)
        run_id = run.json()["id"]
        seen = await client.get(f"/v1/threads/{thread}/runs/{run_id}", headers=alice)
        assert seen.json()["thread_id"] == thread
        # Every path under alice's thread, and every body naming her objects, is unknown to bob.
        for method, path in (("GET", f"/v1/threads/{thread}"),
                             ("GET", f"/v1/threads/{thread}/runs/{run_id}"),
                             ("POST", f"/v1/threads/{thread}/runs/{run_id}/cancel"),
                             ("GET", f"/v1/threads/{thread}/messages")):
            await refused_as_unknown(client, backend, method, path, thread, "id", keys["bob"],
                                     headers=beta)
        his = (await client.post("/v1/threads", json={}, headers=bob)).json()["id"]
        await refused_as_unknown(client, backend, "POST", f"/v1/threads/{his}/runs", helper,
                                 "assistant_id", keys["bob"], json={"assistant_id": helper})
        await refused_as_unknown(client, backend, "POST", f"/v1/threads/{his}/messages", file,
                                 "file_id", keys["bob"], json={
                                     "role": "user", "content": "x",
                                     "attachments": [{"file_id": file}]})
        # Alice's run named under bob's own thread: the backend finds runs per thread.
        crossed = await client.get(f"/v1/threads/{his}/runs/{run_id}", headers=bob)
        assert crossed.status_code == 404


class Owners:
    """The part of a store ``recorded`` writes to: every (kind, id) recorded, in order."""

    def __init__(self) -> None:
        self.owned: list[tuple[str, str]] = []

    async def own_objects(self, kind: str, ids: list[str], key_name: str, time_s: float) -> None:
        self.owned += [(kind, ident) for ident in ids]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
async def test_a_stream_cut_anywhere_records_each_object_before_its_event_passes(ending):
    made = {"id": "resp_1", "object": "response", "output": []}
    message = {"type": "message", "id": "msg_1", "content": []}
    events = [{"type": "response.created", "response": made},
              {"type": "response.output_item.added", "item": message},
              {"type": "response.output_text.delta", "item_id": "msg_1", "delta": '"id"'},
              {"type": "response.output_item.added", "item": {
                  "type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_1"}},
              {"type": "response.completed", "response": {**made, "output": [message]}}]
    raw = b"".join(b"event: x" + ending + b"data: " + json.dumps(event).encode() + ending * 2
                   for event in events)

    async def chunks() -> Any:
        for start in range(0, len(raw), 7):
            yield raw[start:start + 7]

    store, passed = Owners(), b""
    expected = [("responses", "resp_1"), ("items", "msg_1"), ("items", "ci_1"),
                ("containers", "cntr_1")]
    async for piece in recorded(chunks(), store, "alice", "responses",  # type: ignore[arg-type]
                                created=True, stream=True):
        passed += piece
        # No id reaches the client before it is its key's.
        assert all(one in store.owned for one in expected if one[1].encode() in passed)
    assert passed == raw
    assert store.owned == expected  # each once
