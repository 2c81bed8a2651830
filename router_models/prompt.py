"""Reading the prompt out of OpenAI messages, whatever shape the content takes.

Content may be a string, ``None`` (an assistant turn that only calls tools), or a list of
parts (``{"type": "text", "text": ...}``, images, audio, files); only text parts carry prompt
text. Anything that reads the prompt (the classifier, policies) goes through here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Roles whose text is the conversation to answer; system and developer turns are instructions.
CONVERSATION_ROLES = frozenset({"user", "assistant", "tool", "function"})
# Hex digits of a prompt key: 48 bits, so two different prompts among a learner's window of a
# few thousand share a key with a chance of about 1e-8.
PROMPT_KEY_HEX = 12


def content_text(content: Any) -> str:
    """The text of one message's ``content``: a string as is, the text parts of a list joined
    by newlines, and "" for ``None`` or anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return ""


def prompt_text(messages: Sequence[Any]) -> str:
    """The text of the last user turn, or "" when there is none.

    The classifier scores the question being asked now; earlier turns are context. Messages
    that are not objects are skipped, never an error.
    """
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def has_conversation(messages: Sequence[Any]) -> bool:
    """True when at least one message is a user, assistant or tool turn (not only system or
    developer instructions)."""
    return any(isinstance(m, dict) and m.get("role") in CONVERSATION_ROLES for m in messages)


def prompt_key(messages: Sequence[Any] | str) -> str:
    """What identifies a prompt for learning: the first ``PROMPT_KEY_HEX`` hex digits of the
    SHA-256 of every message's role and text (``content_text``), plus, where a message has
    them, its parts that are not text (images, audio, files: as sent) and its ``tool_calls``;
    or of a completions prompt string. Two requests with the same conversation get the same
    key, whatever else differs (sampling settings, tools offered): the learner counts a prompt
    asked again once. The same question about another picture is another prompt, since its
    answer depends on the picture. A text-only message keys as ``[role, text]`` alone, the
    key it had before other parts counted.

    A truncated hash, not the text, but a short prompt can be confirmed by hashing a guess:
    it is kept with the decision in the request log, like the classifier's scores."""
    if isinstance(messages, str):
        parts: Any = messages
    else:
        parts = [_message_key(m) for m in messages if isinstance(m, dict)]
    # sort_keys: the same part sent with its keys in another order is the same prompt;
    # default=str: the library is also handed values that did not come from JSON.
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:PROMPT_KEY_HEX]


def _message_key(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    key: list[Any] = [message.get("role"), content_text(content)]
    if isinstance(content, list):
        others = [part for part in content if not isinstance(part, str) and not (
            isinstance(part, dict) and isinstance(part.get("text"), str))]
        if others:
            key.append(others)
    if message.get("tool_calls"):
        key.append({"tool_calls": message["tool_calls"]})
    return key
