"""deploy/: rule files through promtool (syntax and unit tests), Kubernetes manifests through
kubernetes-validate, and the references between the Grafana, compose and Prometheus files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
# Custom resources: their schemas come with the Prometheus Operator, not with Kubernetes, so
# kubernetes-validate has none to check them against.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_rule_files_pass_promtool_check():
    checked = promtool("check", "rules", *map(str, RULE_FILES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(RULE_FILES) == 2


def test_alerts_fire_on_the_traffic_they_are_for_in_promtool_unit_tests():
    tested = promtool("test", "rules", str(DEPLOY / "rules" / "tests" / "ttc-rules-test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_prometheus_configs_pass_promtool_check():
    local = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert local.returncode == 0, local.stdout + local.stderr
    # The compose config names the rules where the container mounts them.
    compose = promtool("check", "config", "--syntax-only", str(DEPLOY / "compose" /
                                                               "prometheus.yml"))
    assert compose.returncode == 0, compose.stdout + compose.stderr


def test_every_alert_the_issue_asks_for_exists():
    alerts = {rule["alert"] for group in yaml.safe_load(
        (DEPLOY / "rules" / "ttc-alerts.yml").read_text())["groups"] for rule in group["rules"]}
    assert alerts == {"TTCBackendErrors", "TTCBudgetOverruns", "TTCAccuracyDrop",
                      "TTCRejectedRequests"}


def test_kubernetes_manifests_validate_against_the_api_schemas():
    if shutil.which("kubernetes-validate") is None and not Path(
            sys.executable).with_name("kubernetes-validate").exists():
        pytest.skip("kubernetes-validate is not installed (pip install '.[test]')")
    plain = sorted({str(path) for path, doc in k8s_documents() if doc["kind"] not in CRD_KINDS})
    assert len(plain) == 4
    checked = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *plain],
        capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_kubernetes_resources_refer_to_each_other():
    docs = {doc["kind"]: doc for _, doc in k8s_documents()}
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                         "ServiceMonitor"}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    labels = pod["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"requests", "limits"} <= set(container["resources"])
    assert {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v} == \
        {docs["ConfigMap"]["metadata"]["name"]}
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        docs["Deployment"]["metadata"]["name"]
    # The ServiceMonitor (a custom resource, see CRD_KINDS) selects the Service by its labels
    # and scrapes a port the Service names.
    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        docs["Service"]["metadata"]["labels"].items()
    port_names = {port["name"] for port in docs["Service"]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_dashboards_use_the_provisioned_datasource_and_carry_queries():
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                                 "prometheus.yml").read_text())["datasources"][0]
    assert len(DASHBOARDS) >= 3
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["panels"], path
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], (path, panel["title"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert len(uids) == len(DASHBOARDS)


def test_compose_runs_the_four_services_with_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "backend", "prometheus", "grafana"}
    assert services["gateway"]["environment"]["TTC_UPSTREAM_URL"].startswith("http://backend:")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" /
                               "ttc-router.yml").read_text())["providers"][0]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro")
               for v in services["grafana"]["volumes"])
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8000"]
