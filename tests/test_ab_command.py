"""``ttc-router ab report`` gives the figures of ``GET /v1/experiments/{name}``;
``ttc-router ab replay`` estimates from the request log and refuses what it cannot support."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.commands.ab import parse_since
from service.settings import load_settings
from tests.conftest import gateway_client
from tests.scripted import ScriptedLLM

CONFIG = {"upstreams": [{"url": "http://backend.test/v1", "name": "fake",
                         "models": ["fake-model"]}],
          "policies": {"cheap": "fixed:direct@256"},
          "experiments": {"exp": {"arms": {
              "control": {"policy": "cheap", "weight": 0.5},
              "treatment": {"policy": "fixed:sequential@512", "weight": 0.5}}}}}


async def _traffic(config: Path, data_dir: Path) -> dict:
    """Thirty experiment requests with feedback (three in four correct); the HTTP report."""
    settings = load_settings(config, data_dir=data_dir, retry_backoff_s=0.0)
    async with gateway_client(ScriptedLLM(lambda i, body: "It is 4.").transport(),
                              settings) as client:
        for i in range(30):
            reply = await client.post("/v1/chat/completions", json={
                "model": "fake-model", "user": f"u{i}", "router": {"experiment": "exp"},
                "messages": [{"role": "user", "content": "What is 2+2?"}]})
            assert reply.status_code == 200, reply.text
            await client.post("/v1/feedback", json={
                "id": reply.json()["router"]["decision_id"], "correct": i % 4 != 0})
        return (await client.get("/v1/experiments/exp")).json()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_ab_report_prints_the_figures_of_the_http_report(tmp_path, config, capsys):
    served = asyncio.run(_traffic(config, tmp_path / "data"))
    assert main(["ab", "report", "exp", "--config", str(config), "--data-dir",
                 str(tmp_path / "data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == served
    assert main(["ab", "report", "exp", "--config", str(config), "--data-dir",
                 str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "treatment - control (accuracy)" in text and "95% Wilson" in text
    assert main(["ab", "report", "nope", "--config", str(config)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_ab_replay_refuses_a_policy_the_log_never_explored(tmp_path, config, capsys):
    served = asyncio.run(_traffic(config, tmp_path / "data"))
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--json"]
    # the log holds two deterministic arms: a third plan was never tried
    assert main(["ab", "replay", "--policy", "fixed:parallel_vote@1024", *args]) == 1
    refused = json.loads(capsys.readouterr().out)
    assert refused["supported"] is False and refused["accuracy"] == {}
    assert "never explored" in refused["reason"]
    # the control arm's plan is supported on the control arm's rows only (about half the
    # log): refused by default, estimated when the operator allows that much unsupported
    # choice, and then the self-normalised estimate is the control arm's own accuracy
    assert main(["ab", "replay", "--policy", "cheap", *args, "--since", "1h"]) == 1
    assert json.loads(capsys.readouterr().out)["supported"] is False
    assert main(["ab", "replay", "--policy", "cheap", *args, "--max-unsupported", "0.7"]) == 0
    cheap = json.loads(capsys.readouterr().out)
    assert cheap["supported"] is True and cheap["rows"] == 30
    assert cheap["accuracy"]["snips"]["value"] == pytest.approx(
        served["arms"]["control"]["accuracy"])
    assert main(["ab", "replay", "--policy", "cheap", "--config", str(config), "--data-dir",
                 str(tmp_path / "data"), "--since", "2999-01-01"]) == 1
    assert "0 requests" in capsys.readouterr().err


def test_since_takes_seconds_iso_times_and_ages():
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2024-01-01") == 1_704_067_200
    assert parse_since("2024-01-01T01:00:00+01:00") == 1_704_067_200
    assert parse_since("2h", now_s=10_000) == 2_800
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
