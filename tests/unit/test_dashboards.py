"""The committed Grafana JSON is what grafana/dashboards.py generates, and its
queries are well-formed for Grafana and Prometheus. Whether each query returns
data is tested against a real Prometheus in tests/e2e/test_prometheus.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grafana_foundation_sdk", reason="pip install -e '.[test]'")

from grafana import dashboards

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "grafana" / "provisioning"


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def committed() -> dict[str, dict[str, Any]]:
    return {f: json.loads((dashboards.OUT_DIR / f).read_text()) for f in dashboards.dashboards()}


def test_committed_json_matches_the_generator() -> None:
    generated = dashboards.dashboards()
    on_disk = sorted(p.name for p in dashboards.OUT_DIR.glob("*.json"))
    assert on_disk == sorted(generated), (
        f"grafana/dashboards/ holds {on_disk}, the generator makes {sorted(generated)}; "
        f"regenerate with `{dashboards.REGENERATE}` and remove stale files"
    )
    for file, text in generated.items():
        assert (dashboards.OUT_DIR / file).read_text() == text, (
            f"grafana/dashboards/{file} is stale: regenerate with `{dashboards.REGENERATE}`"
        )


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    for file, text in dashboards.dashboards().items():
        (tmp_path / file).write_text(text)
    assert dashboards.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "nsvisor-host.json").write_text("{}")
    assert dashboards.main(["--out", str(tmp_path), "--check"]) == 1


def test_uids_are_unique_and_stable() -> None:
    uids = [d["uid"] for d in committed().values()]
    # Links from the host overview's tables point at /d/nsvisor-container.
    assert sorted(uids) == ["nsvisor-container", "nsvisor-host"]


def test_every_query_uses_the_datasource_variable_and_has_a_unique_ref_id() -> None:
    for file, dash in committed().items():
        for p in panels(dash):
            if p["type"] == "row":
                continue
            targets = p.get("targets", [])
            assert targets, f"{file}: panel {p['title']!r} has no query"
            ref_ids = [t["refId"] for t in targets]
            assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), (file, p["title"], ref_ids)
            for t in targets:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert t["expr"].strip(), (file, p["title"])


def test_per_container_queries_select_the_container() -> None:
    dash = committed()["nsvisor-container.json"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance", "name"]
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    for expr in exprs:
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert 'name="$name"' in selector, expr


def test_annotations_mark_oom_kills_limit_hits_and_restarts() -> None:
    dash = committed()["nsvisor-container.json"]
    by_name = {a["name"]: a["expr"] for a in dash["annotations"]["list"]}
    assert "container_oom_events_total" in by_name["OOM kills"]
    assert 'event="max"' in by_name["Memory limit hits"]
    assert "nsvisor_container_restarts_total" in by_name["Restarts"]


def test_counters_are_only_read_through_rate_or_increase() -> None:
    """A raw counter on a graph is a line that only goes up; the stats that
    show one on purpose (restart count) are instant queries."""
    for file, dash in committed().items():
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("instant"):
                    continue
                for name in re.findall(r"\b(\w+_total)\b(?!\s*\[)", t["expr"]):
                    window = re.search(rf"{name}\{{[^}}]*\}}\[", t["expr"])
                    assert window, f"{file}: {p['title']!r}: {name} without a range: {t['expr']}"


def test_provisioning_points_at_the_dashboards_and_a_prometheus() -> None:
    yaml = pytest.importorskip("yaml")
    ds = yaml.safe_load((PROVISIONING / "datasources" / "nsvisor-prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "nsvisor.yml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file"
    # deploy/compose.yml mounts grafana/dashboards at this path.
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts
