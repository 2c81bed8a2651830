"""Which key owns each object made through the forwarded endpoints, and what a key may reach.

Once API keys exist, the forwarded endpoints (``service.routes.proxy``) would otherwise let any
key read, cancel or delete any tenant's responses, files, batches, ... under the gateway's own
upstream credentials. So, for a key that is not an admin key:

- an object it makes is recorded as its own in the request log's database (table
  ``proxy_objects``: kind, id, key name; every replica reads it) before its id reaches the
  client: the ``id`` of a 2xx reply to ``POST /v1/<kind>`` (JSON, or the first event of a
  stream, ``response.id`` in the Responses API's), and the files a backend makes for it
  (``DERIVED``: a batch's ``output_file_id`` once it is done, when the key reads the batch);
- a call naming an object, in its path (``/v1/<kind>/<id>[/...]``) or in its JSON body
  (``REFERENCES``: ``previous_response_id``, ``input_file_id``, ...), reaches the backend only
  if every object named is the key's own; any other id, another key's or one never made
  through the gateway with a key, is ``UnknownObject``: OpenAI's 404 for an unknown id, one
  message for both, and the backend never sees the call;
- a list (``GET /v1/<kind>``) shows the key its own objects (``owned_page``).

A path's kind is its first segment (two for ``chat/...`` and ``fine_tuning/...``), except for
the ``STATELESS`` endpoints, which keep no objects. An endpoint the gateway does not know is
taken as a collection too, so its ``/v1/<x>/<y>`` is refused to such keys: failing closed, as
a new stateful API must not leak before it is listed here.

Admin keys reach everything and an open gateway (no keys) forwards everything as it is; neither
records anything. Objects made before keys existed, or with an admin key, are admin-only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from service.errors import GatewayError, InvalidRequest, UnknownObject
from service.store import Backend, StoreError

# First path segments (after ``/v1/``) of endpoints that keep no object: forwarded as they are.
STATELESS = frozenset({"embeddings", "completions", "moderations", "rerank", "score",
                       "tokenize", "detokenize", "audio", "images", "messages"})
# Collections two segments deep: ``/v1/chat/completions/{id}`` (stored chat completions),
# ``/v1/fine_tuning/jobs/{id}``.
_TWO_SEGMENTS = frozenset({"chat", "fine_tuning"})
# ``/v1/<kind>/<word>`` calls whose second segment is an action, not an object id.
_ACTIONS = frozenset({"responses/input_tokens", "responses/compact"})
# Request body fields, at any depth, that name an object of a kind.
REFERENCES = {"previous_response_id": "responses", "conversation": "conversations",
              "file_id": "files", "file_ids": "files", "input_file_id": "files",
              "training_file": "files", "validation_file": "files",
              "vector_store_id": "vector_stores", "vector_store_ids": "vector_stores",
              "assistant_id": "assistants", "thread_id": "threads"}
# Reply fields of a kind's objects that name objects the backend made for them.
DERIVED = {"batches": {"output_file_id": "files", "error_file_id": "files"},
           "fine_tuning/jobs": {"result_files": "files", "fine_tuned_model": "models"},
           "uploads": {"file": "files"}}  # a completed upload's file object
# The most upstream pages one list call reads while looking for the key's own objects.
MAX_LIST_PAGES = 10


@dataclass(frozen=True)
class Target:
    """What a forwarded path names: its collection (``kind``, None for an endpoint that keeps
    no object) and the object id (None for the collection itself)."""

    kind: str | None
    object_id: str | None

    @property
    def collection(self) -> bool:
        """Whether the path is the collection itself (``/v1/files``): create and list."""
        return self.kind is not None and self.object_id is None


def target_of(path: str) -> Target:
    """The ``Target`` of a forwarded path (without its ``/v1/`` prefix): ``files/file-1/content``
    names ``Target("files", "file-1")``, ``files`` the collection, ``embeddings`` nothing.

    Raises:
        InvalidRequest: a ``.`` or ``..`` segment, or an empty one before the last (400): the
            upstream URL would resolve them, so ``embeddings/../files/ID`` would reach a file
            while reading as an embedding call.
    """
    parts = path.split("/")
    if any(part in (".", "..") for part in parts) or "" in parts[:-1]:
        raise InvalidRequest("a path may not hold '.', '..' or empty segments")
    if parts[0] in STATELESS:
        return Target(None, None)
    depth = 2 if parts[0] in _TWO_SEGMENTS else 1
    kind, rest = "/".join(parts[:depth]), [part for part in parts[depth:] if part]
    if not rest:
        return Target(kind, None)
    if f"{kind}/{rest[0]}" in _ACTIONS:
        return Target(None, None)
    return Target(kind, rest[0])


def references(body: Any) -> list[tuple[str, str, str]]:
    """The objects a JSON request body names, as (field, kind, id): every ``REFERENCES`` field
    at any depth (outside ``metadata``) whose value is an id, a list of ids, or an object with
    an ``id``."""
    found: list[tuple[str, str, str]] = []
    stack = [body]  # iterative: a deeply nested body cannot exhaust the recursion limit
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for field, value in node.items():
                if field == "metadata":  # the client's own key-value pairs, not references
                    continue
                kind = REFERENCES.get(field)
                if kind is not None:
                    values = value if isinstance(value, list) else [value]
                    for one in values:
                        ident = one.get("id") if isinstance(one, dict) else one
                        if isinstance(ident, str):
                            found.append((field, kind, ident))
                stack.append(value)
    return found


@dataclass(frozen=True)
class Owned:
    """A forwarded call made with a key that is not an admin key: ``owner`` (the key's name)
    reaches only its own objects, recorded in ``store``. Built by ``Owned.admit``."""

    store: Backend
    owner: str
    method: str
    target: Target

    @classmethod
    async def admit(cls, store: Backend, owner: str, method: str, path: str,
                    body: Any) -> Owned:
        """The call's scope, once every object it names (in ``path``, without ``/v1/``, and
        in ``body``, the parsed JSON body or None) is found to be ``owner``'s.

        Raises:
            InvalidRequest: the path holds dot or empty segments (``target_of``, 400).
            UnknownObject: another key's object, or one no key made through the gateway (404).
            GatewayError: the database failed (500).
        """
        target = target_of(path)
        named = [("id", target.kind, target.object_id)] if target.object_id is not None else []
        for param, kind, ident in [*named, *references(body)]:
            if ident not in await _owned(store, str(kind), owner, [ident]):
                raise UnknownObject(ident, param=param)
        return cls(store, owner, method, target)

    def lists(self, status: int) -> bool:
        """Whether the reply (``status``) is a list to cut to the key's own (``page``)."""
        return self.target.collection and self.method == "GET" and 200 <= status < 300

    async def page(self, query: str, first: bytes, fetch: Fetch) -> bytes:
        """``owned_page`` of this call's list reply; the files of the key's own objects that
        it shows (``DERIVED``) are recorded as the key's.

        Raises:
            GatewayError: the database failed, or fetching a further page did.
        """
        try:
            return await owned_page(self.store, self.owner, str(self.target.kind), query,
                                    first, fetch)
        except StoreError as exc:
            raise GatewayError(f"cannot read the owners of objects: {exc}") from exc

    def record(self, chunks: AsyncIterator[bytes], status: int,
               content_type: str) -> AsyncIterator[bytes]:
        """``chunks`` of the reply, through ``recorded`` when it may show objects made for the
        key: a 2xx reply to ``POST /v1/<kind>``, or to any call on a kind with ``DERIVED``
        objects."""
        kind = self.target.kind
        created = self.method == "POST" and self.target.collection
        if kind is None or not 200 <= status < 300 or not (created or kind in DERIVED):
            return chunks
        return recorded(chunks, self.store, self.owner, kind, created=created,
                        stream=content_type.startswith("text/event-stream"))


async def _owned(store: Backend, kind: str, owner: str, ids: Sequence[str]) -> set[str]:
    try:
        return await store.owned_ids(kind, owner, ids)
    except StoreError as exc:
        raise GatewayError(f"cannot read the owners of objects: {exc}") from exc


def made_ids(kind: str, reply: Any, *, created: bool) -> list[tuple[str, str]]:
    """The objects, as (kind, id), that a reply to a call on ``kind`` shows were made for the
    caller: its ``id`` when the call ``created`` it, and its ``DERIVED`` fields."""
    if not isinstance(reply, dict):
        return []
    if isinstance(reply.get("response"), dict):  # a Responses API stream event
        reply = reply["response"]
    made = [(kind, reply["id"])] if created and isinstance(reply.get("id"), str) else []
    for field, derived in DERIVED.get(kind, {}).items():
        values = reply.get(field)
        for value in values if isinstance(values, list) else [values]:
            ident = value.get("id") if isinstance(value, dict) else value
            if isinstance(ident, str):
                made.append((derived, ident))
    return made


async def recorded(chunks: AsyncIterator[bytes], store: Backend, owner: str, kind: str, *,
                   created: bool, stream: bool) -> AsyncIterator[bytes]:
    """``chunks`` of a 2xx reply passed through, once the objects it shows were made for
    ``owner`` (``made_ids``) are recorded as its own: a JSON reply is held until it ends, a
    stream until its first event (which names what it makes), so the client never holds an
    id its key cannot reach yet.

    Raises:
        StoreError: the database failed (the reply is cut off: its objects would be
            unreachable for their owner).
    """
    held = bytearray()
    passing = False  # the objects are recorded: the rest goes straight through
    async for chunk in chunks:
        if passing:
            yield chunk
            continue
        held += chunk
        if stream and b"\n\n" in held.replace(b"\r\n", b"\n"):
            await _record(store, owner, made_ids(kind, _first_event(bytes(held)),
                                                 created=created))
            passing = True
            yield bytes(held)
    if not passing and held:
        await _record(store, owner, made_ids(
            kind, _first_event(bytes(held)) if stream else _json(bytes(held)), created=created))
        yield bytes(held)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _first_event(text: bytes) -> Any:
    """The JSON data of a stream's first event (None when it has none)."""
    event = text.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return _json(b"\n".join(line[5:].strip() for line in event.split(b"\n")
                             if line.startswith(b"data:")))


async def _record(store: Backend, owner: str, made: Sequence[tuple[str, str]]) -> None:
    now = time.time()
    for kind in dict.fromkeys(k for k, _ in made):
        await store.own_objects(kind, [i for k, i in made if k == kind], owner, now)


Fetch = Callable[[str], Awaitable[bytes]]


async def owned_page(store: Backend, owner: str, kind: str, query: str, first: bytes,
                     fetch: Fetch) -> bytes:
    """A list reply (``first``, the backend's JSON page for ``query``) cut to ``owner``'s
    objects: ``data`` holds only those, ``first_id`` / ``last_id`` name its own ends and
    ``has_more`` says whether more of them may follow, so a client paging with ``after`` (the
    SDKs pass the last item's id) goes on from its own last object. While the page holds
    fewer than ``limit`` (else the backend's page size) of the key's objects and the backend
    has more, the next backend pages are read (``fetch(query)``, ``after`` the backend's last
    id; at most ``MAX_LIST_PAGES`` in all), so another tenant's objects cannot leave a page
    empty. A reply that is not a list passes as it is. With ``before``, one page only.

    Raises:
        StoreError: the database failed.
        GatewayError: fetching a further page failed.
    """
    page = _list_body(first)
    if page is None:
        return first
    params = dict(parse_qsl(query))
    limit = params.get("limit", "")
    wanted = int(limit) if limit.isdigit() else max(len(page["data"]), 1)
    mine: list[Any] = []
    for pages in range(1, MAX_LIST_PAGES + 1):
        items = [item for item in page["data"]
                 if isinstance(item, dict) and isinstance(item.get("id"), str)]
        owned = await store.owned_ids(kind, owner, [item["id"] for item in items])
        mine += [item for item in items if item["id"] in owned]
        await _record(store, owner, [made for item in items if item["id"] in owned
                                     for made in made_ids(kind, item, created=False)])
        if (len(mine) >= wanted or not page.get("has_more") or not items
                or "before" in params or pages == MAX_LIST_PAGES):
            break
        following = _list_body(await fetch(urlencode({**params, "after": items[-1]["id"]})))
        if following is None:
            break
        page = following
    data = mine[:wanted]
    result = {**page, "data": data, "has_more": len(mine) > wanted or bool(page.get("has_more"))}
    for field, item in (("first_id", data[0] if data else None),
                        ("last_id", data[-1] if data else None)):
        if field in page:
            result[field] = item["id"] if item is not None else None
    return orjson.dumps(result)


def _list_body(body: bytes) -> dict[str, Any] | None:
    page = _json(body)
    return page if isinstance(page, dict) and isinstance(page.get("data"), list) else None
