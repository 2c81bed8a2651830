"""Server-sent events: splitting an upstream byte stream into events, and writing events.

The decoder is incremental at the UTF-8 level: a character whose bytes are split across two
upstream chunks is held back until it is whole, so text is never mangled. Events are split on
a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``) as the SSE specification says
(https://html.spec.whatwg.org/multipage/server-sent-events.html).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

DONE = b"data: [DONE]\n\n"
_EVENT_END = re.compile(r"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Event:
    """One SSE event: ``data`` is its data lines joined by ``\\n`` (None for a comment or an
    event with no data)."""

    data: str | None


class EventDecoder:
    """Feed upstream chunks (bytes), get whole events back.

    Raises ``UnicodeDecodeError`` only if the upstream sends invalid UTF-8.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buffer += self._utf8.decode(chunk)
        while True:
            match = _EVENT_END.search(self._buffer)
            if match is None:
                return
            raw = self._buffer[:match.start()]
            self._buffer = self._buffer[match.end():]
            if raw:
                yield _parse(raw)

    def close(self) -> Iterator[Event]:
        """Flush what is left when the upstream ends without a final blank line."""
        rest = self._buffer + self._utf8.decode(b"", final=True)
        self._buffer = ""
        if rest.strip():
            yield _parse(rest.rstrip("\r\n"))


def _parse(raw: str) -> Event:
    data_lines = []
    for line in raw.splitlines():
        if line.startswith("data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(" ") else value)
    return Event("\n".join(data_lines) if data_lines else None)


def data_event(payload: bytes) -> bytes:
    """One ``data:`` event from a JSON payload (which contains no newline)."""
    return b"data: " + payload + b"\n\n"


def comment_event(text: str) -> bytes:
    """An SSE comment, used as a keep-alive: clients ignore it."""
    return b": " + text.encode() + b"\n\n"
