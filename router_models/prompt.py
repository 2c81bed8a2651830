"""Reading the prompt out of OpenAI messages, whatever shape the content takes.

Content may be a string, ``None`` (an assistant turn that only calls tools), or a list of
parts (``{"type": "text", "text": ...}``, images, audio, files); only text parts carry prompt
text. Anything that reads the prompt (the classifier, policies) goes through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Roles whose text is the conversation to answer; system and developer turns are instructions.
CONVERSATION_ROLES = frozenset({"user", "assistant", "tool", "function"})


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
