"""Which key owns each object made through the forwarded endpoints, and what a key may reach.

Once API keys exist, the forwarded endpoints (``service.routes.proxy``) would otherwise let any
key read, cancel or delete any tenant's responses, files, batches, ... under the gateway's own
upstream credentials. So, for a key that is not an admin key:

- an object it makes is recorded as its own in the request log's database (table
  ``proxy_objects``: kind, id, key name; every replica reads it) before its id reaches the
  client: the ``id`` of a 2xx reply to ``POST /v1/<kind>`` (JSON, or the first event of a
  stream, ``response.id`` in the Responses API's), and what the backend made for it
  (``object_refs.made_ids``: a batch's ``output_file_id`` when the key reads the batch, a
  response's items and code interpreter containers, event by event in a stream);
- a call naming an object, in its path (``/v1/<kind>/<id>[/...]``), in a list's ``after`` /
  ``before`` cursor, or in its JSON body (``object_refs.references``: ``previous_response_id``,
  ``input_file_id``, an ``item_reference``, ...), reaches the backend only if every object
  named is the key's own; any other id, another key's or one never made through the gateway
  with a key, is ``UnknownObject``: OpenAI's 404 for an unknown id, one message for both, and
  the backend never sees the call. A path below an object (``/v1/threads/{id}/runs/{run}``)
  is the object's: the backend finds what lies below it under it only;
- a list (``GET /v1/<kind>``) shows the key its own objects (``owned_lists.owned_page``);
- a body that selects stored answers by filter, not by id (an eval run over stored
  responses), is ``Forbidden``: it would read every key's.

A path's kind is its first segment (two for ``chat/...`` and ``fine_tuning/...``), except for
the ``STATELESS`` endpoints, which keep no objects. An endpoint the gateway does not know is
taken as a collection too, so its ``/v1/<x>/<y>`` is refused to such keys: failing closed, as
a new stateful API must not leak before it is listed here.

Admin keys reach everything and an open gateway (no keys) forwards everything as it is; neither
records anything. Objects made before keys existed, or with an admin key, are admin-only.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from service.errors import Forbidden, GatewayError, InvalidRequest, UnknownObject
from service.object_refs import derives, made_ids, reads_stored, references
from service.owned_lists import cursors, owned_page
from service.store import Backend, StoreError

# First path segments (after ``/v1/``) of endpoints that keep no object: forwarded as they are.
STATELESS = frozenset({"embeddings", "completions", "moderations", "rerank", "score",
                       "tokenize", "detokenize", "audio", "images", "messages"})
# Collections two segments deep: ``/v1/chat/completions/{id}`` (stored chat completions),
# ``/v1/fine_tuning/jobs/{id}``.
_TWO_SEGMENTS = frozenset({"chat", "fine_tuning"})
# ``/v1/<kind>/<word>`` calls whose second segment is an action on the collection, not an
# object id: they name no object, and what their replies show (a compacted window's items) is
# the caller's, as a created object's is.
_ACTIONS = frozenset({"responses/input_tokens", "responses/compact"})


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
    names ``Target("files", "file-1")``, ``files`` the collection (so does an action on it,
    ``responses/compact``), ``embeddings`` nothing.

    Raises:
        InvalidRequest: a ``.`` or ``..`` segment, or an empty one before the last (400): the
            upstream URL would resolve them, so ``embeddings/../files/ID`` would reach a file
            while reading as an embedding call. So is a segment that becomes one of those, or
            splits, once percent-decoded again (``%2e%2e``, ``..%2f``, ``%5c``: the client
            sent them encoded twice), or that holds a backslash: the path is forwarded as
            decoded once, and the backend or a proxy before it (nginx) decodes and resolves
            it again.
    """
    parts = path.split("/")
    if any(_steers(part) for part in parts) or "" in parts[:-1]:
        raise InvalidRequest("a path may not hold '.', '..' or empty segments")
    if parts[0] in STATELESS:
        return Target(None, None)
    depth = 2 if parts[0] in _TWO_SEGMENTS else 1
    kind, rest = "/".join(parts[:depth]), [part for part in parts[depth:] if part]
    if not rest:
        return Target(kind, None)
    if f"{kind}/{rest[0]}" in _ACTIONS:
        return Target(kind, None)
    return Target(kind, rest[0])


def _steers(segment: str) -> bool:
    """Whether a path segment is, or decodes to, a dot segment or more than one segment."""
    if segment in (".", "..") or "\\" in segment:
        return True
    decoded = unquote(segment)
    return decoded in (".", "..") or "/" in decoded or "\\" in decoded


@dataclass(frozen=True)
class Owned:
    """A forwarded call made with a key that is not an admin key: ``owner`` (the key's name)
    reaches only its own objects, recorded in ``store``. Built by ``Owned.admit``."""

    store: Backend
    owner: str
    method: str
    target: Target

    @classmethod
    async def admit(cls, store: Backend, owner: str, method: str, path: str, query: str,
                    body: Any) -> Owned:
        """The call's scope, once every object it names is found to be ``owner``'s: in
        ``path`` (without ``/v1/``), in a list's cursors (``query``, ``owned_lists.cursors``)
        and in ``body`` (the parsed JSON body or None, ``object_refs.references``).

        Raises:
            InvalidRequest: the path holds dot or empty segments (``target_of``, 400).
            Forbidden: the body asks for stored answers by filter (``reads_stored``, 403).
            UnknownObject: another key's object, or one no key made through the gateway (404).
            GatewayError: the database failed (500).
        """
        target = target_of(path)
        named = [("id", target.kind, target.object_id)] if target.object_id is not None else []
        if target.collection and method == "GET":
            named += [(param, target.kind, ident) for param, ident in cursors(query)]
        await check_owned(store, owner, [*named, *references(body)])
        if reads_stored(body):
            raise Forbidden("a source of stored responses or chat completions reads every "
                            "key's: it needs an admin key", param="data_source")
        return cls(store, owner, method, target)

    def lists(self, status: int) -> bool:
        """Whether the reply (``status``) is a list to cut to the key's own (``page``)."""
        return self.target.collection and self.method == "GET" and 200 <= status < 300

    async def page(self, query: str, first: bytes, fetch: Fetch) -> bytes:
        """``owned_page`` of this call's list reply; the objects the key's own show were
        made for it (``made_ids``) are recorded as the key's.

        Raises:
            GatewayError: the database failed, or fetching a further page did.
        """
        async def record(made: list[tuple[str, str]]) -> None:
            await _record(self.store, self.owner, made)

        try:
            return await owned_page(self.store, self.owner, str(self.target.kind), query,
                                    first, fetch, record)
        except StoreError as exc:
            raise GatewayError(f"cannot read the owners of objects: {exc}") from exc

    def record(self, chunks: AsyncIterator[bytes], status: int,
               content_type: str) -> AsyncIterator[bytes]:
        """``chunks`` of the reply, through ``recorded`` when it may show objects made for the
        key: a 2xx reply to ``POST /v1/<kind>``, or to any call on a kind whose replies show
        objects made for it (``object_refs.derives``)."""
        kind = self.target.kind
        created = self.method == "POST" and self.target.collection
        if kind is None or not 200 <= status < 300 or not (created or derives(kind)):
            return chunks
        return recorded(chunks, self.store, self.owner, kind, created=created,
                        stream=content_type.startswith("text/event-stream"))


async def check_owned(store: Backend | None, owner: str,
                      named: Sequence[tuple[str, str | None, str]]) -> None:
    """Check that ``owner`` owns every object ``named``, as (param, kind, id); one query per
    kind. ``store`` is only needed when something is named.

    Raises:
        UnknownObject: the first object (in ``named`` order) that is another key's, or one no
            key made through the gateway (404, ``param`` where it was named).
        GatewayError: the database failed, or there is none (500).
    """
    if not named:
        return
    if store is None:
        raise GatewayError("the request log is not available: objects' owners are unknown")
    wanted: dict[str, list[str]] = {}
    for _, kind, ident in named:
        wanted.setdefault(str(kind), []).append(ident)
    owned = {kind: await _owned(store, kind, owner, ids) for kind, ids in wanted.items()}
    for param, kind, ident in named:
        if ident not in owned[str(kind)]:
            raise UnknownObject(ident, param=param)


async def _owned(store: Backend, kind: str, owner: str, ids: Sequence[str]) -> set[str]:
    try:
        return await store.owned_ids(kind, owner, list(dict.fromkeys(ids)))
    except StoreError as exc:
        raise GatewayError(f"cannot read the owners of objects: {exc}") from exc


# A blank line, which ends an event of a stream (each line ends in CRLF, LF or CR).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")


async def recorded(chunks: AsyncIterator[bytes], store: Backend, owner: str, kind: str, *,
                   created: bool, stream: bool) -> AsyncIterator[bytes]:
    """``chunks`` of a 2xx reply passed through, once the objects it shows were made for
    ``owner`` (``made_ids``) are recorded as its own, so the client never holds an id its key
    cannot reach yet: a JSON reply is held until it ends; a stream's events are held until
    they are complete, and those that name an ``id`` are read (a Responses API stream shows
    its items one event at a time; what the call created is its first event's ``id``).

    Raises:
        StoreError: the database failed (the reply is cut off: its objects would be
            unreachable for their owner).
    """
    if not stream:
        whole = b"".join([chunk async for chunk in chunks])
        await _record(store, owner, made_ids(kind, _json(whole), created=created))
        if whole:
            yield whole
        return
    held = bytearray()
    first, seen = True, set[tuple[str, str]]()
    async for chunk in chunks:
        held += chunk
        end = max((match.end() for match in _EVENT_END.finditer(held)), default=0)
        if not end:
            continue
        events, held = bytes(held[:end]), held[end:]
        made: list[tuple[str, str]] = []
        for event in _EVENT_END.split(events):
            if event.strip():
                if first or b'"id"' in event:  # deltas (most events) name no object
                    made += made_ids(kind, _event_data(event), created=created and first)
                first = False
        fresh = [one for one in dict.fromkeys(made) if one not in seen]
        await _record(store, owner, fresh)
        seen.update(fresh)
        yield events
    if held:
        await _record(store, owner, [one for one in made_ids(
            kind, _event_data(bytes(held)), created=created and first) if one not in seen])
        yield bytes(held)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _event_data(event: bytes) -> Any:
    """The JSON data of one event of a stream (None when it has none)."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return _json(b"\n".join(line[5:].strip() for line in lines if line.startswith(b"data:")))


async def record_owned(store: Backend, owner: str, made: Sequence[tuple[str, str]]) -> None:
    """Record the objects ``made`` (kind, id) as ``owner``'s own: ones the gateway made for
    the key itself (a batch input file's copy).

    Raises:
        GatewayError: the database failed (500).
    """
    try:
        await _record(store, owner, made)
    except StoreError as exc:
        raise GatewayError(f"cannot record the owner of objects: {exc}") from exc


async def _record(store: Backend, owner: str, made: Sequence[tuple[str, str]]) -> None:
    now = time.time()
    for kind in dict.fromkeys(k for k, _ in made):
        await store.own_objects(kind, [i for k, i in made if k == kind], owner, now)


Fetch = Callable[[str], Awaitable[bytes]]
