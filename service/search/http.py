"""The HTTP boundary of the search adapters: one request, its failures translated into
``SearchError`` (``unavailable``, ``timeout``, ``status``, ``malformed``).

The gateway's searches share one httpx client (``open_client``), which the app opens at
start-up and closes at shutdown, so connections to the search service are pooled and none
outlives the gateway. An adapter used alone (the command line, a test) with no client opens a
short-lived one per search, over ``transport`` when one is given (tests inject
``httpx.MockTransport`` or ``httpx.ASGITransport`` here).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from service.search.base import SearchError


def open_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The search client the app owns: pooled connections, redirects followed, no default
    timeout (each search passes its own ``search_timeout_s``), over ``transport`` when given
    (tests). Close it with ``aclose()``."""
    return httpx.AsyncClient(transport=transport, follow_redirects=True)


async def request_json(method: str, url: str, *, backend: str, timeout_s: float,
                       client: httpx.AsyncClient | None = None,
                       transport: httpx.AsyncBaseTransport | None = None,
                       params: dict[str, str] | None = None, json: Any = None,
                       headers: dict[str, str] | None = None) -> Any:
    """Send one request (on ``client``, else on a short-lived client over ``transport``) and
    decode its JSON body.

    Raises:
        SearchError: the service is unreachable (``unavailable``), slower than
            ``timeout_s`` seconds (``timeout``), answered a non-2xx status (``status``), or
            sent a body that is not JSON (``malformed``).
    """
    try:
        if client is not None:
            response = await client.request(method, url, params=params, json=json,
                                            headers=headers, timeout=timeout_s)
        else:
            async with httpx.AsyncClient(transport=transport, timeout=timeout_s,
                                         follow_redirects=True) as own:
                response = await own.request(method, url, params=params, json=json,
                                             headers=headers)
    except httpx.TimeoutException as exc:
        raise SearchError(f"{backend} did not answer within {timeout_s} s",
                          reason="timeout") from exc
    except httpx.HTTPError as exc:
        raise SearchError(f"{backend} is unreachable at {url}: {exc!r}") from exc
    if not response.is_success:
        raise SearchError(f"{backend} answered HTTP {response.status_code}: "
                          f"{response.text[:200]}", reason="status")
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise SearchError(f"{backend} sent a body that is not JSON: {exc}",
                          reason="malformed") from exc


def malformed(backend: str, what: str) -> SearchError:
    """The error for a JSON body that lacks what the backend's API promises."""
    return SearchError(f"{backend} sent JSON without {what}", reason="malformed")
