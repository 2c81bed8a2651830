"""The evaluation harness in process: the simulator mounted as the backend, records, resume,
figures and every output file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_models.simulation import World
from router_models.tasks import load_suite
from router_models.tasks.registry import TaskRegistry
from service.evaluation import analysis, report, runner
from service.sim import SimConfig, create_sim_app

STRATEGIES = ("direct", "parallel_vote", "sequential")


@pytest.fixture(scope="module")
def items() -> list[Any]:
    return load_suite("graph_connectivity", 6) + load_suite("mc_guess", 6)


@pytest.fixture
def sim(items: list[Any]) -> httpx.ASGITransport:
    config = SimConfig(World.load(), TaskRegistry(items), latency_per_token_s=0, ttft_s=0)
    return httpx.ASGITransport(app=create_sim_app(config))


def _options(transport: httpx.AsyncBaseTransport, **extra: Any) -> runner.RunOptions:
    return runner.RunOptions(backend="http://sim.test/v1", transport=transport, **extra)


async def test_client_mode_records_every_job_against_the_simulator(
        tmp_path: Path, items: list[Any], sim: httpx.ASGITransport) -> None:
    jobs = runner.plan_jobs(items, STRATEGIES, [128, 1024])
    mode, sent = await runner.run_jobs(jobs, tmp_path, _options(sim))
    assert (mode, sent) == ("client", len(jobs))
    records = runner.read_records(tmp_path / runner.ITEMS_FILE)
    assert len(records) == len(jobs) and not any(r["error"] for r in records)
    assert all(r["simulated"] for r in records)
    votes = [r for r in records if r["strategy"] == "parallel_vote"]
    assert all(r["samples"] == runner.vote_width(r["budget_tokens"], 128) for r in votes)
    assert all(r["completion_tokens"] <= r["budget_tokens"] for r in records)
    graph_long = [r for r in records if r["family"] == "graph_connectivity"
                  and r["strategy"] == "sequential" and r["budget_tokens"] == 1024]
    assert sum(r["correct"] for r in graph_long) >= 5


async def test_a_stopped_run_resumes_where_it_was(
        tmp_path: Path, items: list[Any], sim: httpx.ASGITransport) -> None:
    jobs = runner.plan_jobs(items, STRATEGIES, [256])
    await runner.run_jobs(jobs[:10], tmp_path, _options(sim))
    path = tmp_path / runner.ITEMS_FILE
    path.write_text(path.read_text() + '{"suite": "graph_conn')  # a write cut by a kill
    mode, sent = await runner.run_jobs(jobs, tmp_path, _options(sim))
    assert sent == len(jobs) - 10
    assert (await runner.run_jobs(jobs, tmp_path, _options(sim)))[1] == 0
    keys = [runner.record_key(r) for r in runner.read_records(path)]
    assert sorted(keys, key=str) == sorted((j.key for j in jobs), key=str)


async def test_errors_are_recorded_and_retried_on_resume(tmp_path: Path,
                                                         items: list[Any]) -> None:
    failing = {"on": True}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if failing["on"]:
            return httpx.Response(503, json={"error": {"message": "down"}})
        return httpx.Response(200, json={"choices": [{"message": {"content":
                                                                  "The answer is A."}}],
                                         "usage": {"completion_tokens": 5}})

    jobs = runner.plan_jobs(items[-2:], ["direct"], [64])
    transport = httpx.MockTransport(handle)
    await runner.run_jobs(jobs, tmp_path, _options(transport))
    records = runner.read_records(tmp_path / runner.ITEMS_FILE)
    assert all("HTTP 503" in r["error"] for r in records)
    failing["on"] = False
    assert (await runner.run_jobs(jobs, tmp_path, _options(transport)))[1] == 2
    assert not any(r["error"] for r in runner.read_records(tmp_path / runner.ITEMS_FILE))


def test_gateway_mode_sends_router_controls_and_client_mode_n(items: list[Any]) -> None:
    job = runner.Job(items[0], "parallel_vote", 512)
    options = runner.RunOptions(backend="x")
    gateway = runner._body(job, "gateway", options)
    assert gateway["router"] == {"strategy": "parallel_vote", "budget_tokens": 512}
    assert "n" not in gateway and "max_tokens" not in gateway
    client = runner._body(job, "client", options)
    assert (client["n"], client["max_tokens"]) == (4, 128) and "router" not in client
    policy = runner._body(runner.Job(items[0], "policy:cheap", None), "gateway", options)
    assert policy["router"] == {"policy": "cheap"}


def _record(item: str, strategy: str, budget: int, correct: bool, tokens: int,
            family: str = "f") -> dict[str, Any]:
    return {"suite": "s", "item_id": item, "family": family, "strategy": strategy,
            "budget_tokens": budget, "correct": correct, "completion_tokens": tokens,
            "error": None}


def test_winner_margin_and_interval_on_paired_items() -> None:
    records = [_record(str(i), "parallel_vote", 512, True, 400) for i in range(40)]
    records += [_record(str(i), "sequential", 512, i < 10, 500) for i in range(40)]
    (row,) = [c for c in analysis.comparisons(records) if c.family == "f"]
    assert (row.winner, row.runner_up, row.n_paired) == ("parallel_vote", "sequential", 40)
    assert row.difference == pytest.approx(0.75)
    assert row.difference_ci95 is not None
    assert 0.5 < row.difference_ci95[0] < 0.75 < row.difference_ci95[1] <= 1.0
    assert row.p_value is not None and row.p_value < 1e-6 and row.significant


def test_wilson_interval_matches_the_formula() -> None:
    low, high = analysis.wilson(7, 10)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    assert analysis.wilson(0, 0) == (0.0, 1.0)


def test_oracle_takes_the_cheapest_correct_configuration_per_prompt() -> None:
    records = [_record("a", "direct", 128, False, 100), _record("a", "sequential", 512, True, 300),
               _record("b", "direct", 128, True, 50), _record("b", "sequential", 512, True, 400)]
    points = {p.budget_tokens: p for p in analysis.envelope(records) if p.family == "f"}
    assert points[128].accuracy == 0.5 and points[128].mean_tokens == 75
    assert points[512].accuracy == 1.0 and points[512].mean_tokens == 175


async def test_report_writes_every_output_file(tmp_path: Path, items: list[Any],
                                               sim: httpx.ASGITransport) -> None:
    jobs = runner.plan_jobs(items, STRATEGIES, [128, 1024])
    await runner.run_jobs(jobs, tmp_path, _options(sim))
    records = runner.read_records(tmp_path / runner.ITEMS_FILE)
    summary = report.write_report(tmp_path, records, {"backend": "sim", "mode": "client",
                                                      "suites": ["graph_connectivity"]})
    assert json.loads((tmp_path / report.SUMMARY_FILE).read_text())["records"] == len(jobs)
    text = (tmp_path / report.REPORT_FILE).read_text()
    first_table = text.split("| family | budget | winner |", 1)[1].split("\n\n", 1)[0]
    assert "| graph_connectivity | 128 |" in first_table
    assert "| independent_mc | 1024 | parallel_vote" in first_table
    assert "SIMULATION" in text
    for name in summary["plots"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert {"accuracy_vs_tokens_graph_connectivity.png",
            "accuracy_vs_tokens_all.png"} <= set(summary["plots"])


def test_a_strategy_the_gateway_ran_as_another_says_so(tmp_path: Path) -> None:
    # Through the gateway, 99 of 100 parallel_vote@512 items ran as one chain (the samples
    # could not finish in 512 tokens), yet the report named parallel_vote the winner at 512
    # with 137 mean tokens, with nothing to say that no vote had run.
    records = []
    for i in range(40):
        vote = _record(str(i), "parallel_vote", 512, i < 30, 130)
        vote["router"] = {"strategy": "parallel_vote" if i == 0 else "sequential"}
        chain = _record(str(i), "sequential", 512, i < 28, 130)
        chain["router"] = {"strategy": "sequential"}
        records += [vote, chain]
    by = {(c.family, c.strategy): c for c in analysis.cells(records)}
    assert by[("f", "parallel_vote")].ran_as_asked == 1
    assert by[("f", "sequential")].ran_as_asked == 40
    assert analysis.cells([_record("a", "direct", 128, True, 10)])[0].ran_as_asked is None
    report.write_report(tmp_path, records, {"backend": "gw", "mode": "gateway"})
    text = (tmp_path / report.REPORT_FILE).read_text()
    first_table = text.split("| family | budget | winner |", 1)[1].split("\n\n", 1)[0]
    assert "| f | 512 | parallel_vote (tie; ran as asked on 1 of 40 items) |" in first_table
    assert "| f | parallel_vote | 512 | 40 | 75.0 |" in text and "| 1 of 40 |" in text
