"""Server-sent events: splitting an upstream byte stream into events, and writing events.

The decoder follows the parsing rules of the SSE specification
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- a line ends with CRLF, LF or CR, and with nothing else: U+2028, U+2029, U+0085 and the other
  characters ``str.splitlines()`` also breaks on are ordinary text (servers such as vLLM and
  llama.cpp leave them unescaped inside JSON);
- a blank line dispatches the event; a line starting with ``:`` is a comment; ``field: value``
  loses one space after the colon; a line without a colon is a field with an empty value;
- the data of an event is its ``data`` lines joined by LF.

It is incremental at the UTF-8 level: a character whose bytes are split across two upstream
chunks is held back until it is whole, and so is a CR at the end of a chunk until the next
byte says whether it began a CRLF. httpx-sse was considered: it parses lines that httpx's
``aiter_lines`` has already split, while the gateway reads raw chunks whose first one it has
consumed to decide on retries, so it would need httpx's private line decoder as well.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

DONE = b"data: [DONE]\n\n"
_LINE_END = re.compile(r"\r\n|\r|\n")


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
        self._data: list[str] = []  # the data lines of the event being read
        self._open = False  # whether a line of an event (data, comment, field) was read

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events that ``chunk`` completes (the bytes of any later event are kept)."""
        self._buffer += self._utf8.decode(chunk)
        yield from self._lines(final=False)

    def close(self) -> Iterator[Event]:
        """Flush what is left when the upstream ends without a final blank line."""
        self._buffer += self._utf8.decode(b"", final=True)
        yield from self._lines(final=True)
        if self._buffer:
            self._field(self._buffer)
            self._buffer = ""
        if self._open:
            yield self._dispatch()

    def _lines(self, final: bool) -> Iterator[Event]:
        start = 0
        buffer = self._buffer
        for match in _LINE_END.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer) and not final:
                break  # maybe the first half of a CRLF: wait for the next byte
            line = buffer[start:match.start()]
            start = match.end()
            if line:
                self._field(line)
            elif self._open:
                yield self._dispatch()
        self._buffer = buffer[start:]

    def _field(self, line: str) -> None:
        self._open = True
        name, colon, value = line.partition(":")
        if name != "data":  # a comment (empty name), or a field the gateway does not use
            return
        if colon and value.startswith(" "):
            value = value[1:]
        self._data.append(value)

    def _dispatch(self) -> Event:
        """The event read so far (data None when it had no data line, e.g. a comment)."""
        data, self._data, self._open = self._data, [], False
        return Event("\n".join(data) if data else None)


def data_event(payload: bytes) -> bytes:
    """One ``data:`` event from a JSON payload (which contains no newline)."""
    return b"data: " + payload + b"\n\n"


def comment_event(text: str) -> bytes:
    """An SSE comment, used as a keep-alive: clients ignore it."""
    return b": " + text.encode() + b"\n\n"
