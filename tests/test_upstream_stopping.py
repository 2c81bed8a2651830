"""An upstream's own early-stopping rule: the embedded model's votes stop once two samples
agree (the rule its outcome bank validated), every other upstream keeps the gateway's, and an
operator's own ``vote_first_wave`` / ``vote_stop_threshold`` holds over the model's."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.commands.serve import embedded_upstream
from service.local_backend import GEMMA3_270M, QWEN_CODER_05B, LocalBackend
from service.settings import Settings, UpstreamSettings, load_settings
from tests.conftest import BACKEND_URL, gateway_client, make_settings
from tests.scripted import ScriptedLLM

QUESTION = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 6*7?"}],
            "router": {"strategy": "parallel_vote", "budget_tokens": 8 * 64}}


def _settings(**upstream_rule: object) -> Settings:
    settings = make_settings(vote_width=8, supports_n=False)
    upstream = UpstreamSettings(url=BACKEND_URL, name="fake", models=["fake-model"],
                                supports_n=False, **upstream_rule)
    return settings.model_copy(update={"upstreams": [upstream]})


async def _samples_drawn(settings: Settings) -> tuple[int, dict]:
    llm = ScriptedLLM(lambda i, body: "The answer is 42.", honours_n=False)
    async with gateway_client(llm.transport(), settings) as client:
        reply = await client.post("/v1/chat/completions", json=QUESTION)
    assert reply.status_code == 200, reply.text
    return len(llm.requests), reply.json()["router"]


async def test_an_upstream_with_its_own_rule_stops_a_vote_at_two_agreeing_samples():
    drawn, router = await _samples_drawn(_settings(vote_first_wave=2, vote_stop_threshold=0.6))
    # Two agreeing samples: Beta(3, 1) puts 0.875 on the leader being the majority of all
    # eight, above 0.6, so the vote is settled after its first wave.
    assert drawn == 2 and router["samples"] == 2 and router["early_stop"] is True
    assert router["winner"] == "42"


async def test_an_upstream_without_one_keeps_the_gateways_rule():
    drawn, router = await _samples_drawn(_settings())
    # The gateway's rule: a first wave of 3 (Beta(4, 1): 0.9375 >= 0.9) settles it.
    assert drawn == 3 and router["samples"] == 3 and router["early_stop"] is True


async def test_the_upstreams_threshold_is_the_one_read():
    # A first wave of 2 at the gateway's 0.9 is not settled by two agreeing samples
    # (0.875 < 0.9): the third is drawn; at the upstream's 0.6 it would not be.
    drawn, _ = await _samples_drawn(_settings(vote_first_wave=2))
    assert drawn == 3
    drawn, _ = await _samples_drawn(_settings(vote_first_wave=2, vote_stop_threshold=0.6))
    assert drawn == 2


def _local(alias: str) -> LocalBackend:
    local = LocalBackend(Path("/nonexistent.gguf"), alias, n_ctx=2048)
    local.supports_n = True
    return local


def test_the_embedded_qwen_model_brings_its_banked_rule():
    upstream = embedded_upstream(load_settings(None), _local(QWEN_CODER_05B.alias))
    assert (upstream.vote_first_wave, upstream.vote_stop_threshold) == (2, 0.6)
    assert QWEN_CODER_05B.vote_stopping == (2, 0.6)
    assert upstream.models == [QWEN_CODER_05B.alias] and upstream.supports_n is True


def test_a_model_with_no_bank_keeps_the_gateways_rule():
    upstream = embedded_upstream(load_settings(None), _local(GEMMA3_270M.alias))
    assert (upstream.vote_first_wave, upstream.vote_stop_threshold) == (None, None)


@pytest.mark.parametrize("variable", ["TTC_VOTE_FIRST_WAVE", "TTC_VOTE_STOP_THRESHOLD"])
def test_an_operators_own_rule_holds_over_the_models(monkeypatch, variable):
    monkeypatch.setenv(variable, "3" if variable.endswith("WAVE") else "0.9")
    settings = load_settings(None)
    upstream = embedded_upstream(settings, _local(QWEN_CODER_05B.alias))
    assert (upstream.vote_first_wave, upstream.vote_stop_threshold) == (None, None)


def test_the_config_file_counts_as_the_operators_choice(tmp_path):
    config = tmp_path / "ttc.yaml"
    config.write_text("vote_stop_threshold: 0.95\n")
    settings = load_settings(config)
    assert settings.vote_stop_threshold == 0.95
    assert embedded_upstream(settings, _local(QWEN_CODER_05B.alias)).vote_first_wave is None
