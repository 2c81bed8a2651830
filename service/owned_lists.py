"""A forwarded list (``GET /v1/<kind>``) cut to one key's own objects (``service.ownership``).

The backend pages over every tenant's objects, so a key's page is rebuilt from them: ``data``
holds only its objects and the page's cursors name only them. A cursor the key sends
(``after``, ``before``) is an object id like any other, checked before the backend is called:
the page after another key's object would tell where that object sits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from service.object_refs import made_ids
from service.store import Backend

# The query parameters of a list that name one of its objects.
CURSORS = ("after", "before")
# The most upstream pages one list call reads while looking for the key's own objects.
MAX_LIST_PAGES = 10

Fetch = Callable[[str], Awaitable[bytes]]
Record = Callable[[list[tuple[str, str]]], Awaitable[None]]


def cursors(query: str) -> list[tuple[str, str]]:
    """The object ids a list's query string names, as (parameter, id)."""
    return [(name, value) for name, value in parse_qsl(query) if name in CURSORS and value]


async def owned_page(store: Backend, owner: str, kind: str, query: str, first: bytes,
                     fetch: Fetch, record: Record) -> bytes:
    """A list reply (``first``, the backend's JSON page for ``query``) cut to ``owner``'s
    objects: ``data`` holds only those, ``first_id`` / ``last_id`` name its own ends and
    ``has_more`` says whether more of them may follow, so a client paging with ``after`` (the
    SDKs pass the last item's id) goes on from its own last object. While the page holds
    fewer than ``limit`` (else the backend's page size) of the key's objects and the backend
    has more, the next backend pages are read (``fetch(query)``, ``after`` the backend's last
    id; at most ``MAX_LIST_PAGES`` in all), so another tenant's objects cannot leave a page
    empty. The objects the key's own show were made for it (``made_ids``) go to ``record``.
    Only ``object``, ``data``, ``has_more``, ``first_id`` and ``last_id`` are kept: any other
    field of the backend's page (a count, a next-page cursor) speaks of every tenant's objects.
    A reply that is not a list passes as it is. With ``before``, one page only.

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
        await record([made for item in items if item["id"] in owned
                      for made in made_ids(kind, item, created=False)])
        if (len(mine) >= wanted or not page.get("has_more") or not items
                or "before" in params or pages == MAX_LIST_PAGES):
            break
        following = _list_body(await fetch(urlencode({**params, "after": items[-1]["id"]})))
        if following is None:
            break
        page = following
    data = mine[:wanted]
    result = {"object": page.get("object", "list"), "data": data,
              "has_more": len(mine) > wanted or bool(page.get("has_more"))}
    for field, item in (("first_id", data[0] if data else None),
                        ("last_id", data[-1] if data else None)):
        if field in page:
            result[field] = item["id"] if item is not None else None
    return orjson.dumps(result)


def _list_body(body: bytes) -> dict[str, Any] | None:
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return page if isinstance(page, dict) and isinstance(page.get("data"), list) else None
