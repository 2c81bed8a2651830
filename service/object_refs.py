"""What a request body names and what a reply makes, among the objects the forwarded endpoints
keep (``service.ownership`` holds a key to its own).

A body names an object by a ``REFERENCES`` field at any depth (``previous_response_id``,
``file_id``, ``vector_store_ids``, a code interpreter's ``container``, ...), by a typed id (an
eval's ``{"type": "file_id", "id": ...}``), or, in a Responses API ``input`` or a
conversation's ``items``, by an item's ``id``: an ``item_reference``, or an item passed back
by value, which OpenAI resolves by that id (a reasoning item's content is read from the stored
one). A reply makes the objects it names: the ``id`` of what a call created, ``DERIVED``
fields (a batch's output file), and the items of a response or a conversation with the
containers their code interpreter calls ran in (``made_ids``).
"""

from __future__ import annotations

from typing import Any

# Request body fields, at any depth, that name an object of a kind.
REFERENCES = {"previous_response_id": "responses", "conversation": "conversations",
              "file_id": "files", "file_ids": "files", "input_file_id": "files",
              "training_file": "files", "validation_file": "files",
              "vector_store_id": "vector_stores", "vector_store_ids": "vector_stores",
              "assistant_id": "assistants", "thread_id": "threads",
              "container": "containers", "container_id": "containers",
              "approval_request_id": "items", "skill_id": "skills"}
# Subtrees that carry the client's own data or the model's output, never a reference: an output
# text's annotations cite container files ("cfile_...") that are no ``/v1/files`` object.
_DATA_FIELDS = frozenset({"metadata", "annotations"})
# Body fields whose list elements are Responses API items, and the item types OpenAI resolves
# by ``id`` (every output item type, and the explicit reference).
ITEM_FIELDS = frozenset({"input", "items"})
ITEM_TYPES = frozenset({
    "item_reference", "message", "reasoning", "function_call", "function_call_output",
    "custom_tool_call", "custom_tool_call_output", "file_search_call", "web_search_call",
    "computer_call", "computer_call_output", "code_interpreter_call", "image_generation_call",
    "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "mcp_approval_response", "compaction"})
# Kinds whose replies show items: a response's ``output``, a stream event's ``item``, a list's
# ``data`` (``/v1/responses/{id}/input_items``, ``/v1/conversations/{id}/items``).
ITEM_KINDS = frozenset({"responses", "conversations"})
# Reply fields of a kind's objects that name objects the backend made for them.
DERIVED = {"batches": {"output_file_id": "files", "error_file_id": "files"},
           "fine_tuning/jobs": {"result_files": "files", "fine_tuned_model": "models"},
           "uploads": {"file": "files"}}  # a completed upload's file object
# Eval run sources that select stored answers by filter (every key's: the backend sees one
# set of credentials), not by id.
STORED_SOURCES = frozenset({"responses", "stored_completions"})


def references(body: Any) -> list[tuple[str, str, str]]:
    """The objects a JSON request body names, as (field, kind, id), in no particular order:
    every ``REFERENCES`` field at any depth (outside ``metadata`` and ``annotations``) whose
    value is an id, a list of ids, or an object with an ``id``; every item of an
    ``ITEM_TYPES`` type with an ``id`` in an ``input`` or ``items`` list, as kind ``items``;
    and a file named as ``{"type": "file_id", "id": ...}`` (an eval's data source)."""
    found: list[tuple[str, str, str]] = []
    # Iterative: a deeply nested body cannot exhaust the recursion limit. Each node travels
    # with the field that holds it, so an item knows whether it sits in an ``input`` list.
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        node, holder = stack.pop()
        if isinstance(node, list):
            stack.extend((one, holder) for one in node)
        elif isinstance(node, dict):
            ident = node.get("id")
            if isinstance(ident, str):
                if holder in ITEM_FIELDS and node.get("type") in ITEM_TYPES:
                    found.append((holder, "items", ident))
                elif node.get("type") == "file_id":  # an eval's source: {"type", "id"}
                    found.append((holder, "files", ident))
            for field, value in node.items():
                if field in _DATA_FIELDS:
                    continue
                kind = REFERENCES.get(field)
                if kind is not None:
                    for one in value if isinstance(value, list) else [value]:
                        named = one.get("id") if isinstance(one, dict) else one
                        if isinstance(named, str):
                            found.append((field, kind, named))
                stack.append((value, field))
    return found


def reads_stored(body: Any) -> bool:
    """Whether a JSON body asks for stored answers by filter: an eval run's ``source`` of a
    ``STORED_SOURCES`` type, at any depth."""
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            source = node.get("source")
            if isinstance(source, dict) and source.get("type") in STORED_SOURCES:
                return True
            stack.extend(node.values())
    return False


def made_ids(kind: str, reply: Any, *, created: bool) -> list[tuple[str, str]]:
    """The objects, as (kind, id), that a reply to a call on ``kind`` (or one event of its
    stream) shows were made for the caller: its ``id`` when the call ``created`` it, its
    ``DERIVED`` fields, and for ``ITEM_KINDS`` the items it shows (``items_of``)."""
    if not isinstance(reply, dict):
        return []
    if isinstance(reply.get("response"), dict):  # a Responses API stream event
        reply = reply["response"]
    made = [(kind, reply["id"])] if created and isinstance(reply.get("id"), str) else []
    for field, derived in DERIVED.get(kind, {}).items():
        values = reply.get(field)
        for value in values if isinstance(values, list) else [values]:
            ident = value.get("id") if isinstance(value, dict) else value
            if isinstance(ident, str):
                made.append((derived, ident))
    if kind in ITEM_KINDS:
        made += items_of(reply)
    return made


def items_of(reply: dict[str, Any]) -> list[tuple[str, str]]:
    """The items a reply shows, as ("items", id), and the containers their code interpreter
    calls ran in, as ("containers", id): in a response's ``output``, an event's ``item``, a
    list's ``data``, or the reply itself when it is an item."""
    shown: list[Any] = [reply, reply.get("item")]
    for field in ("output", "data"):
        if isinstance(reply.get(field), list):
            shown += reply[field]
    made: list[tuple[str, str]] = []
    for item in shown:
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
            continue
        if isinstance(item.get("id"), str):
            made.append(("items", item["id"]))
        if isinstance(item.get("container_id"), str):  # an "auto" container made for it
            made.append(("containers", item["container_id"]))
    return made


def derives(kind: str | None) -> bool:
    """Whether replies to any call on ``kind`` may show objects made for the caller."""
    return kind in DERIVED or kind in ITEM_KINDS
