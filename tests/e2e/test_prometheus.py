"""A real Prometheus scrapes a real gateway (``ttc-router serve`` in front of a fake backend
process) after real traffic and feedback; every PromQL expression of every dashboard panel and
every recording and alert rule must parse and return data, and the token counters must equal
the summed ``usage`` of the traffic sent."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.obs import Process, start_fake_backend, start_gateway, start_prometheus

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROUNDS = 3
ROUND_PAUSE_S = 2.5  # more than two scrape intervals: counters must grow between scrapes
IGNORES_TTL_S = 2.0  # under ROUND_PAUSE_S, over the 1 s scrape interval: see ``stack``

# Metrics that the gateway defines but whose producers (API keys, the classifier, the search
# strategy, A/B assignment) are other issues' work not yet in this build; expressions
# reading only these must return nothing. When one starts producing data, this test fails until
# it is removed from here, and from then on its panels must return data like every other.
NOT_YET_PRODUCED = {
    "ttc_key_tokens_total": "API keys",
    "ttc_search_calls_total": "the search strategy",
    "ttc_key_open_streams": "API keys",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s",
                     "$strategy": ".*", "$policy": ".*", "$arm": ".*", "$model": ".*",
                     "$experiment": ".*"}
# An A/B experiment the traffic joins (ttc_experiment_* and the arm label).
EXPERIMENTS = {"e2e": {"arms": {"short": {"policy": "fixed:direct@64"},
                                "long": {"policy": "fixed:sequential@128"}}}}


@dataclass
class Traffic:
    """What the test sent and what the gateway answered."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    statuses: list[int] = field(default_factory=list)
    feedback_ids: set[str] = field(default_factory=set)
    correct_ids: set[str] = field(default_factory=set)

    def add_usage(self, usage: dict[str, int] | None) -> None:
        if usage:
            self.prompt_tokens += usage["prompt_tokens"]
            self.completion_tokens += usage["completion_tokens"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    backend = start_fake_backend(tmp_path)
    gateway = None
    prometheus = None
    try:
        # A target mean of one token: the auto request spends more than 1.5x it, so the
        # TTCMeanSpendAboveTarget expression has data (pending; it fires after an hour).
        # The gateway remembers for 2 s that overrun-model ignores max_tokens: less than a
        # round's pause, so that every round's first overrun request overruns again
        # (TTCBudgetOverruns has data) and its second is cut at its grant
        # (ttc_budget_cut_calls_total), and more than a scrape interval, so that a scrape
        # sees the fact (TTCBackendIgnoresMaxTokens).
        gateway = start_gateway(backend.url, tmp_path / "data", tmp_path,
                                env={"TTC_EXPERIMENTS": json.dumps(EXPERIMENTS),
                                     "TTC_LEARNED_TARGET_TOKENS": "1",
                                     "TTC_IGNORES_MAX_TOKENS_TTL_S": str(IGNORES_TTL_S)})
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / f) for f in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [
            {"targets": [gateway.url.removeprefix("http://")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = start_prometheus(tmp_path / "prometheus.yml", tmp_path, binary)
        yield gateway, prometheus
    finally:
        for process in (prometheus, gateway, backend):
            if process is not None:
                process.stop()


def send_round(client: httpx.Client, traffic: Traffic, index: int) -> None:
    """One round: answers, streams, budget overruns, backend failures, refused requests,
    other strategies when this build routes them, and feedback (a third of it correct)."""
    def chat(model: str, **extra: Any) -> httpx.Response:
        return client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": f"What is 2+2? ({index})"}],
            **extra})

    answered = []
    for _ in range(6):
        reply = chat("fake-model", router={"budget_tokens": 64})
        traffic.statuses.append(reply.status_code)
        assert reply.status_code == 200, reply.text
        traffic.add_usage(reply.json()["usage"])
        answered.append(reply.headers["x-ttc-decision-id"])
    for _ in range(2):
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Count to 3"}]}) as streamed:
            assert streamed.status_code == 200
            events = [line.removeprefix("data: ") for line in streamed.iter_lines()
                      if line.startswith("data: {")]
        traffic.add_usage(json.loads(events[-1]).get("usage"))
        answered.append(streamed.headers["x-ttc-decision-id"])
    completion = client.post("/v1/completions", json={"model": "fake-model", "prompt": "2+2="})
    assert completion.status_code == 200, completion.text
    traffic.add_usage(completion.json()["usage"])
    # The backend ignores max_tokens: the first spends 24 tokens on a budget of 2, and the
    # gateway cuts the second at its 2.
    spent = []
    for _ in range(2):
        overrun = chat("overrun-model", router={"budget_tokens": 2})
        assert overrun.status_code == 200, overrun.text
        traffic.add_usage(overrun.json()["usage"])
        spent.append(overrun.json()["router"]["spent_tokens"])
    assert spent[0] > 2 and spent[1] == 2, spent
    failed = chat("flaky-model")
    assert failed.status_code == 502, failed.text
    for bad in (b"{not json", b'{"model": "fake-model", "messages": []}'):
        refused = client.post("/v1/chat/completions", content=bad,
                              headers={"content-type": "application/json"})
        assert refused.status_code == 400
    assert chat("no-such-model").status_code == 404
    # A vote of identical answers stops early (ttc_vote_early_stops_total).
    for strategy in ("parallel_vote", "sequential"):
        routed = chat("fake-model", router={"strategy": strategy, "budget_tokens": 1024})
        assert routed.status_code == 200, routed.text
        traffic.add_usage(routed.json()["usage"])
    # A/B experiment traffic: sticky users in both arms (ttc_experiment_*), with feedback.
    arms = set()
    for user in range(6):
        joined = chat("fake-model", user=f"e2e-user-{user}", router={"experiment": "e2e"})
        assert joined.status_code == 200, joined.text
        traffic.add_usage(joined.json()["usage"])
        arms.add(joined.json()["router"]["arm"])
        answered.append(joined.headers["x-ttc-decision-id"])
    assert arms == {"short", "long"}
    # model auto: the classifier scores the prompt (ttc_classifier_duration_seconds).
    auto = chat("auto", router={"budget_tokens": 512})
    assert auto.status_code == 200, auto.text
    assert auto.json()["router"]["scores"] is not None
    traffic.add_usage(auto.json()["usage"])

    for i, decision_id in enumerate(answered):
        correct = i % 3 == 0
        for _ in range(2):  # repeated feedback must not be counted twice
            sent = client.post("/v1/feedback", json={"id": decision_id, "correct": correct})
            assert sent.status_code == 200, sent.text
        traffic.feedback_ids.add(decision_id)
        if correct:
            traffic.correct_ids.add(decision_id)


def query(prometheus: Process, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    return result if body["data"]["resultType"] == "vector" else [{"value": result}]


def scalar_sum(prometheus: Process, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else 0.0


def wait_for(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def metric_names(expr: str) -> set[str]:
    """The ttc_ metric families an expression reads (histogram suffixes removed)."""
    names = set(re.findall(r"\bttc_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if not n.endswith("_total") else n
            for n in names}


def expressions() -> dict[str, str]:
    """Every PromQL expression shipped in deploy/: where it comes from -> the expression, with
    Grafana's variables replaced as Grafana would (All selected)."""
    found: dict[str, str] = {}
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(name, value)
                found[f"{path.name}: {panel['title']} [{target['refId']}]"] = expr
    for path in sorted((DEPLOY / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                found[f"{path.name}: {name}"] = rule["expr"]
                if "record" in rule:
                    found[f"{path.name}: {name} (recorded series)"] = name
    return found


def test_every_dashboard_and_rule_expression_returns_data(stack):
    gateway, prometheus = stack
    # Prometheus hands new targets to its scrapers at most every 5 s: wait for the first scrape.
    wait_for(lambda: query(prometheus, 'up{job="ttc-router"} == 1'), 20, "the first scrape")
    traffic = Traffic()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for index in range(ROUNDS):
            send_round(client, traffic, index)
            time.sleep(ROUND_PAUSE_S)

    # Token counters equal the summed usage of the traffic sent.
    wait_for(lambda: scalar_sum(prometheus, 'sum(ttc_tokens_total{kind="completion"})')
             == traffic.completion_tokens, 20, "Prometheus to scrape the last tokens")
    assert scalar_sum(prometheus, 'sum(ttc_tokens_total{kind="prompt",model!="flaky-model"})') \
        == traffic.prompt_tokens
    # The failing backend read the prompts of the calls it failed: they are charged, though no
    # usage body reaches the client.
    assert scalar_sum(prometheus, 'sum(ttc_tokens_total{kind="prompt",model="flaky-model"})') > 0
    assert traffic.completion_tokens > 0
    # Feedback was counted once per request, however often it was sent.
    assert scalar_sum(prometheus, "sum(ttc_feedback_total)") == len(traffic.feedback_ids)
    assert scalar_sum(prometheus, 'sum(ttc_feedback_total{outcome="correct"})') == \
        len(traffic.correct_ids)

    recorded = [e for e in expressions() if e.endswith("(recorded series)")]
    wait_for(lambda: all(query(prometheus, expressions()[e]) for e in recorded), 20,
             "every recording rule to produce a series")

    missing, unexpected = [], []
    for where, expr in expressions().items():
        result = query(prometheus, expr)  # a parse error fails here
        values = [float(sample["value"][1]) for sample in result]
        has_data = any(not math.isnan(v) for v in values)
        names = metric_names(expr)
        waiting = bool(names) and names <= NOT_YET_PRODUCED.keys()
        if waiting and has_data:
            unexpected.append(f"{where}: {sorted(names)} now has data; drop it from "
                              "NOT_YET_PRODUCED")
        elif not waiting and not has_data:
            missing.append(f"{where}: {expr} -> {result}")
    assert not unexpected, "\n".join(unexpected)
    assert not missing, "expressions without data:\n" + "\n".join(missing)

    rules = httpx.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules
    alerts = httpx.get(prometheus.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert {a["labels"]["alertname"] for a in alerts} == {
        "TTCBackendErrors", "TTCBudgetOverruns", "TTCAccuracyDrop", "TTCRejectedRequests",
        "TTCMeanSpendAboveTarget", "TTCBackendIgnoresMaxTokens"}

    # Grafana's template variables (label_values(ttc_requests_total, LABEL)) have values.
    for label in ("strategy", "policy", "arm", "model"):
        values = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values",
                           params={"match[]": "ttc_requests_total"}, timeout=10).json()["data"]
        assert values, label
