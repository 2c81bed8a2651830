"""Cut the schemas the conformance tests need out of OpenAI's published OpenAPI document.

Usage (the document is not kept in this repository; only the cut is)::

    python tests/openai_schema/extract.py PATH/TO/openapi.json COMMIT \
        > tests/openai_schema/schemas.json

``PATH/TO/openapi.json`` is ``openapi.json`` of https://github.com/openai/openai-openapi at
``COMMIT``. The output keeps ``ROOTS`` and every schema they reference, under
``components.schemas`` as in the original, so that ``#/components/schemas/...`` references
resolve unchanged, with the source, commit and OpenAPI version in ``x-source``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROOTS = ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "CreateCompletionResponse", "Model", "ListModelsResponse", "ErrorResponse")


def cut(document: dict[str, Any], commit: str) -> dict[str, Any]:
    """``ROOTS`` and their references, with their provenance."""
    schemas = document["components"]["schemas"]
    kept: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    name = value.rsplit("/", 1)[-1]
                    if name not in kept:
                        kept[name] = schemas[name]
                        walk(schemas[name])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for root in ROOTS:
        kept[root] = schemas[root]
        walk(schemas[root])
    return {"x-source": {"repository": "https://github.com/openai/openai-openapi",
                         "file": "openapi.json", "commit": commit,
                         "openapi": document["openapi"],
                         "api_version": document["info"]["version"], "roots": list(ROOTS)},
            "components": {"schemas": dict(sorted(kept.items()))}}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        print(json.dumps(cut(json.load(handle), sys.argv[2]), indent=1))
