"""What the requests in a batch's input file name (``service.ownership``) and may spend
(its key's token limits).

A batch's requests are lines of its input file (``{"custom_id", "method", "url", "body"}``),
which the backend runs with the gateway's credentials, later; a line naming another key's
response would copy that key's context into the batch's output, and tokens its requests
generate would pass no limit. The gateway never parses uploads (multipart, or the Uploads
API's parts, whose lines may be cut anywhere), so the file is read back from the backend when
a batch is created, line by line.

``batch_bound`` reads the most a batch may generate: each request's own cap (``max_tokens``,
``max_completion_tokens``, the Responses API's ``max_output_tokens``) times the completions it
draws (``n``, ``best_of``, the prompts of a legacy batch prompt), and ``default_tokens`` for a
request that sets none, written into a copy of the file as its cap (as the gateway does for a
forwarded Responses call or an Assistants run), so the bound holds whatever the backend's own
default. Embeddings and moderations generate nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from service.object_refs import references
from service.ownership import Target, target_of
from service.protocol import candidates
from service.strategies.base import estimate_prompt_tokens
from service.upstream import is_token_count

# The cap each batchable endpoint reads, first the one written into a request that has none;
# an endpoint whose requests generate nothing has none.
CAPS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/embeddings": (),
    "/v1/moderations": (),
}


@dataclass(frozen=True)
class BatchBound:
    """What a batch's requests may spend: ``completion_tokens`` at most (their caps, as sent
    or written), ``prompt_tokens`` (an estimate, 4 characters a token) over ``requests``
    lines; ``content``: the input file to run, or None when it is the one uploaded (every
    request had its cap)."""

    completion_tokens: int
    prompt_tokens: int
    requests: int
    content: bytes | None


def batch_bound(content: bytes, default_tokens: int) -> BatchBound:
    """The ``BatchBound`` of an input file (``content``, JSONL): see the module docstring.
    A line that is not a request of a batchable endpoint (not JSON, an unknown ``url``, a
    body that is not an object) is bounded by ``default_tokens`` and left as it is: the
    backend refuses it, and until then the gateway cannot tell what it would run."""
    lines = content.split(b"\n")
    completion = prompt = requests = 0
    written = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        requests += 1
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            request = None
        body = request.get("body") if isinstance(request, dict) else None
        caps = CAPS.get(str(request.get("url"))) if isinstance(request, dict) else None
        if not isinstance(body, dict) or caps is None:
            completion += default_tokens
            continue
        prompt += estimate_prompt_tokens(
            body if "messages" in body or "prompt" in body else {"prompt": body.get("input")})
        if not caps:
            continue
        cap = next((body[name] for name in caps if is_token_count(body.get(name))
                    and body[name] > 0), None)
        if cap is None:
            cap = default_tokens
            lines[i] = orjson.dumps({**request, "body": {**body, caps[0]: cap}})
            written = True
        n = body.get("n")
        completion += cap * candidates(body, n if is_token_count(n) and n > 0 else 1)
    return BatchBound(completion, prompt, requests, b"\n".join(lines) if written else None)


def multipart_upload(content: bytes, filename: str = "batch_input.jsonl",
                     ) -> tuple[bytes, str]:
    """(body, content type) of ``POST /v1/files`` uploading ``content`` for a batch."""
    boundary = secrets.token_hex(16)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f'batch\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n')
    return (head.encode() + content + f"\r\n--{boundary}--\r\n".encode(),
            f"multipart/form-data; boundary={boundary}")


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
