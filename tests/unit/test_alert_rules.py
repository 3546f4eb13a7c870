"""deploy/prometheus, deploy/alertmanager and deploy/compose.yml are valid:
promtool checks the scrape configs and the rules and runs the rule unit tests
(deploy/prometheus/tests/*.yml); amtool checks the Alertmanager example; the
compose file (which cannot run here: no container engine) is checked for
structure and for mounts of files that exist."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "nsvisor-alerts.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
COMPOSE = ROOT / "deploy" / "compose.yml"

EXPECTED_ALERTS = {
    "ContainerMemoryNearLimit",
    "ContainerMemoryLimitHit",
    "ContainerOOMKilled",
    "ContainerRestartLoop",
    "ContainerCPUThrottled",
    "ContainerDownAgainstPolicy",
    "NsvisorExporterDown",
}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: apt-get install {package} (deploy/setup.sh does)")
    return path


def run(*args: str) -> str:
    r = subprocess.run(args, cwd=PROM, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def load(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-fleet.yml"])
def test_promtool_check_config(config: str) -> None:
    out = run(tool("promtool", "prometheus"), "check", "config", config)
    assert "SUCCESS" in out


def test_promtool_check_rules() -> None:
    out = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    out = run(tool("promtool", "prometheus"), "test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in out


def test_the_rules_are_the_documented_set_with_severity_and_summary() -> None:
    rules = [r for g in load(RULES)["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for t in load(path)["tests"]:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing >= EXPECTED_ALERTS, f"never tested firing: {EXPECTED_ALERTS - firing}"
    assert quiet >= EXPECTED_ALERTS, f"never tested quiet: {EXPECTED_ALERTS - quiet}"


def test_file_sd_example_is_valid_target_groups() -> None:
    groups = load(PROM / "targets" / "nsvisor-hosts.yml.example")
    for g in groups:
        assert g["targets"] and all(":" in t for t in g["targets"])
        assert all(isinstance(v, str) for v in g.get("labels", {}).values())
    fleet = load(PROM / "prometheus-fleet.yml")
    [job] = fleet["scrape_configs"]
    assert job["job_name"] == "nsvisor"  # the NsvisorExporterDown rule matches on it


def test_amtool_check_config() -> None:
    out = run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in out


def test_alertmanager_routes_critical_alerts_to_a_receiver_that_exists() -> None:
    am = load(ALERTMANAGER)
    receivers = {r["name"] for r in am["receivers"]}
    assert am["route"]["receiver"] in receivers
    assert all(r["receiver"] in receivers for r in am["route"]["routes"])


def test_compose_brings_up_the_provisioned_stack() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"prometheus", "alertmanager", "grafana"}
    for name, svc in services.items():
        assert svc["image"].count(":") == 1, f"{name}: pin the image tag"
        # nsvisor listens on 127.0.0.1:9323: only the host network reaches it.
        assert svc["network_mode"] == "host", name
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"
    prom_args = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_args
    # The rule_files glob in prometheus.yml is relative to the config file.
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]
    for name in ("prometheus", "alertmanager"):
        listen = [a for a in services[name]["command"] if a.startswith("--web.listen-address=")]
        assert listen and listen[0].endswith(("127.0.0.1:9090", "127.0.0.1:9093")), name
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    # The addresses the provisioned files use are the ones the services listen on.
    prom_cfg = load(PROM / "prometheus.yml")
    assert prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9093"
    ]
    ds = load(ROOT / "grafana" / "provisioning" / "datasources" / "nsvisor-prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://127.0.0.1:9090"


def test_scrape_config_targets_the_daemons_default_metrics_addr() -> None:
    cfg = load(PROM / "prometheus.yml")
    [job] = cfg["scrape_configs"]
    assert job["job_name"] == "nsvisor"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9323"]
    example = (ROOT / "deploy" / "examples" / "nsvisor.toml").read_text()
    assert 'metrics_addr = "127.0.0.1:9323"' in example
