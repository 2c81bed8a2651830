"""End to end: the search strategy on the real embedded model (Qwen2.5-0.5B-Instruct) over a
local index filled by ``ttc-router index add`` while the gateway runs."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

pytestmark = pytest.mark.e2e

# A made-up fact the model cannot know: only a search can bring "Quenmoor" into its answer.
DOCUMENTS = [
    {"id": "zorblat", "title": "Zorblat festival",
     "text": "The Zorblat festival is a lantern festival held every March in the mountain "
             "town of Quenmoor."},
    {"id": "quenmoor", "title": "Quenmoor",
     "text": "Quenmoor is a small town known for its copper mines and its lantern makers."},
    {"id": "owls", "title": "Owls", "text": "Owls are nocturnal birds of prey."},
]


def test_the_real_model_searches_the_local_index_and_answers(gateway, data_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCUMENTS))
    subprocess.run([sys.executable, "-m", "service", "index", "add", str(docs),
                    "--data-dir", str(data_dir)], check=True, capture_output=True)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                       timeout=300) as client:
        reply = client.chat.completions.create(
            model="auto", temperature=0,
            messages=[{"role": "user", "content": "In which town is the Zorblat festival held?"}],
            extra_body={"router": {"strategy": "search", "budget_tokens": 256}})
    router = reply.model_extra["router"]
    assert router["strategy"] == "search" and "search_error" not in router
    assert 1 <= router["search_calls"] <= 3
    assert reply.usage.completion_tokens == router["spent_tokens"] <= 256
    assert "quenmoor" in reply.choices[0].message.content.lower()
