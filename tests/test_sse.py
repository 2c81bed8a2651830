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


def test_unicode_line_separators_inside_json_are_text_not_line_ends():
    # vLLM (through pydantic) and llama.cpp leave U+2028, U+2029 and U+0085 unescaped in JSON;
    # only CR, LF and CRLF end an SSE line.
    payload = '{"choices": [{"delta": {"content": "a\u2028b\u2029c\u0085d\x0be\x1cf"}}]}'
    raw = f"data: {payload}\n\ndata: [DONE]\n\n".encode()
    assert decode_all([raw]) == [payload, "[DONE]"]
    assert decode_all([raw[i:i + 1] for i in range(len(raw))]) == [payload, "[DONE]"]


def test_cr_crlf_and_lf_line_ends_mix_even_when_a_crlf_is_split():
    raw = b"data: a\rdata: b\r\n\r\ndata: c\n\r\n: note\r\rdata:d\r\r"
    expected = ["a\nb", "c", None, "d"]
    assert decode_all([raw]) == expected
    assert decode_all([raw[i:i + 1] for i in range(len(raw))]) == expected
    # A CR at the end of one chunk and the LF at the start of the next are one line end.
    assert decode_all([b"data: x\r", b"\n\r", b"\ndata: y\n\n"]) == ["x", "y"]


def test_fields_other_than_data_and_a_missing_space_follow_the_specification():
    raw = b"event: message\nid: 7\ndata:no-space\ndata\nretry: 10\n\n"
    assert decode_all([raw]) == ["no-space\n"]
