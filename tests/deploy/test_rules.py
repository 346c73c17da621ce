"""The Prometheus rules (deploy/prometheus): checked and unit-tested by promtool, shipped the
same by the chart, and every alert carries what on-call needs: severity, summary, a
description naming the class and its owner, and a runbook that exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import CHART, ROOT, render

RULES = ROOT / "deploy" / "prometheus" / "secrets-sidecar.rules.yml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "alerts.test.yml"
RUNBOOK_URL = "https://github.com/secrets-sidecar/secrets-sidecar/blob/main/"
RUNBOOK_SECTIONS = [
    "Owner",
    "Dashboards",
    "Customer impact",
    "Common failure modes",
    "Steps",
    "Rollback",
]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 21 rules found" in checked.stdout


def test_promtool_unit_tests_pass_and_fail_when_an_alert_changes(tmp_path: Path):
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # the same tests against rules where stale serving pages instead of warning: they notice
    folder = tmp_path / "prometheus"
    shutil.copytree(RULES.parent, folder)
    changed = folder / RULES.name
    text = changed.read_text()
    stale = text.index("alert: SecretsSidecarServingStale")
    severity = text.index("severity: warning", stale)
    changed.write_text(text[:severity] + "severity: critical" + text[severity + 17 :])
    broken = promtool("test", "rules", str(folder / "tests" / UNIT_TESTS.name))
    assert broken.returncode != 0
    assert "SecretsSidecarServingStale" in broken.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} never expected to fire"
        assert any(not c["exp_alerts"] for c in mine), f"{name} never expected to stay silent"


def test_every_alert_says_what_on_call_needs():
    for alert in alerts():
        name, annotations = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        if "sidecar_class_info" in alert["expr"]:
            for field in ("summary", "description"):
                assert "{{ $labels.owner }}" in annotations[field], (name, field)
                assert "{{ $labels.class }}" in annotations[field], (name, field)


def test_every_runbook_url_is_a_runbook_with_the_sections_on_call_reads():
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL), url
        page = ROOT / url.removeprefix(RUNBOOK_URL)
        assert page.parent == ROOT / "docs" / "runbooks" and page.exists(), url
        headings = re.findall(r"^## (.+)$", page.read_text(), re.M)
        assert headings == RUNBOOK_SECTIONS, (page.name, headings)
        assert alert["alert"] in page.read_text().split("\n", 1)[0], page.name


def test_the_chart_ships_the_same_rules_as_a_prometheus_rule():
    assert (CHART / "files" / "prometheus-rules.yml").read_text() == RULES.read_text()
    (rule,) = [
        d for d in render({"prometheusRule": {"enabled": True}}) if d["kind"] == "PrometheusRule"
    ]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_chart_ships_the_dashboard_where_grafana_finds_it():
    dashboard = ROOT / "deploy" / "grafana" / "secrets-sidecar.json"
    assert (CHART / "files" / "grafana-dashboard.json").read_text() == dashboard.read_text()
    values = {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}}}
    (config_map,) = [
        d
        for d in render(values)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    assert json.loads(config_map["data"]["secrets-sidecar.json"]) == json.loads(
        dashboard.read_text()
    )


def test_the_runbooks_panel_table_matches_the_dashboard():
    """Links to panels (`viewPanel=ID`) in the runbooks' index point at the panel named."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "secrets-sidecar.json").read_text())
    index = (ROOT / "docs" / "runbooks" / "README.md").read_text()
    listed = dict(re.findall(r"^\| [^|]+ \| ([^|]+?) \| `(\d+)` \|$", index, re.M))
    panels = {p["title"]: str(p["id"]) for p in dashboard["panels"] if p["type"] != "row"}
    assert listed == panels
