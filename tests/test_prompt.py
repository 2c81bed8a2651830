"""Reading the prompt from messages of every shape."""

from __future__ import annotations

import hashlib
import json

from router_models.prompt import (
    PROMPT_KEY_HEX,
    content_text,
    has_conversation,
    prompt_key,
    prompt_text,
)


def test_content_parts_give_their_text():
    parts = [{"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "in the picture?"}]
    assert content_text(parts) == "What is\nin the picture?"
    assert content_text(None) == ""
    assert content_text(42) == ""


def test_prompt_is_the_last_user_turn():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                {"role": "tool", "tool_call_id": "c", "content": "42"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]}]
    assert prompt_text(messages) == "second"
    assert has_conversation(messages)


def test_empty_and_system_only_lists_do_not_crash():
    assert prompt_text([]) == ""
    assert prompt_text([{"role": "system", "content": "x"}, "junk", None]) == ""
    assert not has_conversation([{"role": "system", "content": "x"}])
    assert not has_conversation([])


def test_prompt_key_identifies_the_conversation_not_the_request():
    question = [{"role": "user", "content": "What is 17 * 23?"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 17 * 23?"}]}]
    key = prompt_key(question)
    assert len(key) == PROMPT_KEY_HEX and int(key, 16) >= 0
    assert prompt_key(parts) == key  # the same text, whatever shape the content takes
    assert prompt_key([{"role": "system", "content": "Be brief."}, *question]) != key
    assert prompt_key([{"role": "assistant", "content": "What is 17 * 23?"}]) != key
    assert prompt_key([{"role": "user", "content": "What is 17 * 24?"}]) != key
    assert prompt_key("What is 17 * 23?") == prompt_key("What is 17 * 23?") != key
    assert prompt_key([None, *question, 3]) == key  # non-objects are skipped, never an error


def test_prompt_key_tells_apart_what_the_model_is_shown_besides_text():
    """One question about two pictures is two prompts: the answer depends on the picture, so
    the learner must count each (a vision app asking "What is the total on this receipt?"
    of every upload had all its feedback after the first left out as repeats)."""
    def asking(*parts: dict) -> list[dict]:
        return [{"role": "user", "content": [
            {"type": "text", "text": "What number is in this picture?"}, *parts]}]

    a = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    b = {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    assert prompt_key(asking(a)) != prompt_key(asking(b))
    assert prompt_key(asking(a)) == prompt_key(asking(dict(a)))  # the same picture again
    assert prompt_key(asking(a)) != prompt_key(asking()) != prompt_key(asking(audio))
    # A turn that only calls tools: the calls are what the model said.
    calls = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function",
                  "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}]
    elsewhere = json.loads(json.dumps(calls).replace("Paris", "Oslo"))
    assert prompt_key(calls) != prompt_key(elsewhere)
    # Text alone keys as before, so the keys already in a request log still match.
    text = [{"role": "user", "content": "What is 17 * 23?"}]
    assert prompt_key(text) == hashlib.sha256(
        b'[["user","What is 17 * 23?"]]').hexdigest()[:PROMPT_KEY_HEX]
