"""The SSE decoder: events split anywhere, UTF-8 split anywhere."""

from __future__ import annotations

from service.sse import EventDecoder


def decode_all(chunks: list[bytes]) -> list[str | None]:
    decoder = EventDecoder()
    out = [event.data for chunk in chunks for event in decoder.feed(chunk)]
    return out + [event.data for event in decoder.close()]


def test_events_split_at_every_byte_come_out_whole():
    stream = ('data: {"a": "é世🌍"}\n\n: keep-alive\n\n'
              'data: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n')
    raw = stream.encode()
    whole = decode_all([raw])
    assert whole == ['{"a": "é世🌍"}', None, "line1\nline2", "[DONE]"]
    assert decode_all([raw[i:i + 1] for i in range(len(raw))]) == whole


def test_a_last_event_without_a_blank_line_is_flushed():
    assert decode_all([b"data: tail"]) == ["tail"]
