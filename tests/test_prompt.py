"""Reading the prompt from messages of every shape."""

from __future__ import annotations

from router_models.prompt import content_text, has_conversation, prompt_text


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
