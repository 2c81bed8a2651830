"""deploy/: rule files through promtool (syntax and unit tests), the Kubernetes manifests and
the Kustomize overlays rendered by ``kubectl kustomize`` through kubernetes-validate, and the
references between the Grafana, compose, Prometheus and Kubernetes files."""

from __future__ import annotations

import base64
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

from service.routes.health import READY_TIMEOUT_S
from service.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
OVERLAYS = ("one-box", "replicas", "trial")
# Custom resources: their schemas come with the Prometheus Operator, not with Kubernetes, so
# kubernetes-validate has none to check them against.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (it renders the Kustomize overlays; the files "
                    "themselves are still checked one by one)")
    return path


def manifest_files() -> list[Path]:
    """Every complete Kubernetes manifest under deploy/k8s: not the kustomizations, not the
    strategic-merge patches (partial by design), not the Prometheus adapter's values."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"
                  and not p.name.endswith("-patch.yaml") and p.parent.name != "prometheus-adapter")


def render(overlay: str) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize`` makes of one overlay."""
    rendered = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def kubernetes_validate(paths: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("kubernetes-validate") is None and not Path(
            sys.executable).with_name("kubernetes-validate").exists():
        pytest.skip("kubernetes-validate is not installed (pip install '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "--no-warn",
         *paths], capture_output=True, text=True, timeout=120)


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
                      "TTCRejectedRequests", "TTCMeanSpendAboveTarget",
                      "TTCBackendIgnoresMaxTokens"}


def test_every_kubernetes_manifest_validates_against_the_api_schemas():
    plain = [str(path) for path in manifest_files()
             if all(doc["kind"] not in CRD_KINDS
                    for doc in yaml.safe_load_all(path.read_text()) if doc)]
    assert len(plain) >= 8, plain
    checked = kubernetes_validate(plain)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_to_manifests_that_validate(overlay, tmp_path):
    docs = render(overlay)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CRD_KINDS]))
    checked = kubernetes_validate([str(out)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_overlays_are_composed_of_files_that_exist():
    """Without kubectl too: every resource and patch a kustomization names exists, and every
    patch targets a resource of its base."""
    base_docs = [doc for path in manifest_files() if path.parent.name == "base"
                 for doc in yaml.safe_load_all(path.read_text()) if doc]
    base_names = {(d["kind"], d["metadata"]["name"]) for d in base_docs}
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []):
            assert (kustomization.parent / entry).exists(), (kustomization, entry)
        for patch in spec.get("patches", []):
            target = yaml.safe_load((kustomization.parent / patch["path"]).read_text())
            assert (target["kind"], target["metadata"]["name"]) in base_names, patch
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_resources_refer_to_each_other(overlay):
    kinds = by_kind(render(overlay))
    deployment = next(d for d in kinds["Deployment"] if d["metadata"]["name"] == "ttc-router")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = next(s for s in kinds["Service"] if s["metadata"]["name"] == "ttc-router")
    assert service["spec"]["selector"].items() <= labels.items()
    config_maps = {c["metadata"]["name"] for c in kinds["ConfigMap"]}
    assert {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v} \
        <= config_maps
    # The ServiceMonitor (a custom resource, see CRD_KINDS) selects the Service by its labels
    # and scrapes a port the Service names.
    monitor = kinds["ServiceMonitor"][0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    # The kubelet waits longer than /ready's own probe of the backends.
    assert container["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S
    assert {"requests", "limits"} <= set(container["resources"])
    secrets = {s["metadata"]["name"] for s in kinds.get("Secret", [])}
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and not ref.get("optional", False):
            # A required Secret is either rendered here or named in the overlay's instructions.
            assert ref["name"] in secrets or ref["name"] == "ttc-router-secrets", ref


def test_the_shutdown_fits_in_the_grace_period():
    """preStop sleep, then the gateway's own drain (TTC_SHUTDOWN_TIMEOUT_S), then the log
    flush: the kubelet's SIGKILL at terminationGracePeriodSeconds must come after all three."""
    pod = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())["spec"]["template"]
    container = pod["spec"]["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain_s = float(env["TTC_SHUTDOWN_TIMEOUT_S"])
    # The same figure as the gateway's default.
    assert drain_s == Settings.model_fields["shutdown_timeout_s"].default
    assert pre_stop_s >= 5
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5


def test_replicas_share_stores_and_survive_disruptions():
    kinds = by_kind(render("replicas"))
    deployment = kinds["Deployment"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("TTC_DATABASE_URL", "TTC_REDIS_URL"):
        assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is False, name
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = kinds["PodDisruptionBudget"][0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = kinds["HorizontalPodAutoscaler"][0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # A drain leaves at least one replica serving.
    assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1
    # The HPA scales on a metric the gateway exports and the adapter's rule serves.
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                    if m["type"] == "Pods"]
    assert pods_metrics == ["ttc_requests_in_flight"]
    exported = {metric.name for metric in REGISTRY.collect()}
    assert "ttc_requests_in_flight" in exported
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert set(pods_metrics) <= served


def test_one_box_keeps_its_sqlite_on_a_volume_with_one_writer():
    kinds = by_kind(render("one-box"))
    deployment = kinds["Deployment"][0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert [c["metadata"]["name"] for c in kinds["PersistentVolumeClaim"]] == [claim]
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds


def test_trial_secret_points_at_the_trial_services():
    kinds = by_kind(render("trial"))
    secret = next(s for s in kinds["Secret"] if s["metadata"]["name"].startswith(
        "ttc-router-secrets"))
    urls = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    services = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in kinds["Service"]}
    for key in ("database_url", "redis_url"):
        url = urlsplit(urls[key])
        assert services[url.hostname] == url.port, (key, urls[key])
    gateway = next(d for d in kinds["Deployment"] if d["metadata"]["name"] == "ttc-router")
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert secret["metadata"]["name"] in refs  # the generated name, hash suffix and all


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


def test_the_images_healthcheck_asks_the_port_the_gateway_listens_on():
    # The HEALTHCHECK asked 127.0.0.1:8000 whatever TTC_PORT said, so a container run with
    # -e TTC_PORT=9000 (as deploy/images/image-test.sh runs them) was marked unhealthy.
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text().replace("\\\n", " ")
    check = re.search(r'HEALTHCHECK .*? CMD python -c "([^"]+)"', dockerfile)
    assert check is not None

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PATH": "/usr/bin:/bin", "TTC_PORT": str(server.server_address[1])}
        ran = subprocess.run([sys.executable, "-c", check[1]], env=env, timeout=30,
                             capture_output=True, text=True)
    finally:
        server.shutdown()
        server.server_close()
    assert ran.returncode == 0, ran.stderr
