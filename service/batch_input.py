"""The objects that the requests in a batch's input file name (``service.ownership``).

A batch's requests are lines of its input file (``{"custom_id", "method", "url", "body"}``),
which the backend runs with the gateway's credentials; a line naming another key's response
would copy that key's context into the batch's output. The gateway never parses uploads
(multipart, or the Uploads API's parts, whose lines may be cut anywhere), so the file is read
back from the backend when a batch is created, line by line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from service.object_refs import references
from service.ownership import Target, target_of


def batch_input_file(method: str, target: Target, body: Any) -> str | None:
    """The input file id of a call that creates a batch (``POST /v1/batches`` with a JSON
    body naming ``input_file_id``), else None."""
    if method != "POST" or target != Target("batches", None) or not isinstance(body, dict):
        return None
    ident = body.get("input_file_id")
    return ident if isinstance(ident, str) else None


async def batch_references(content: AsyncIterator[bytes]) -> list[tuple[str, str, str]]:
    """The objects the lines of a batch input file (``content``, JSONL in chunks) name, as
    (field, kind, id): their bodies' ``references`` and the object in each line's ``url``
    (``url``). A line that is not a JSON object names nothing (the backend refuses it).

    Raises:
        InvalidRequest: a line's ``url`` holds dot or empty segments (``target_of``, 400).
    """
    found: list[tuple[str, str, str]] = []
    held = bytearray()
    async for chunk in content:
        newline = chunk.rfind(b"\n")  # in the chunk only: a long line costs no rescans
        if newline < 0:
            held += chunk
            continue
        lines = bytes(held + chunk[:newline]).split(b"\n")
        held = bytearray(chunk[newline + 1:])
        for line in lines:
            found += _line_references(line)
    return found + _line_references(bytes(held))


def _line_references(line: bytes) -> list[tuple[str, str, str]]:
    if not line.strip():
        return []
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(request, dict):
        return []
    found = references(request.get("body"))
    url = request.get("url")
    if isinstance(url, str) and url.startswith("/v1/"):
        target = target_of(url.removeprefix("/v1/").split("?", 1)[0])
        if target.kind is not None and target.object_id is not None:
            found.append(("url", target.kind, target.object_id))
    return found
