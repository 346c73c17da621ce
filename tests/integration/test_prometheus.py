"""The alerts and the dashboard against a real Prometheus (Debian's package) scraping a real
sidecar process in front of a real OpenBao. Reads flow, a secret is rotated, then the store is
killed: the store-unreachable, serving-stale and fail-closed alerts reach `firing` with the
class and its owner, and every expression of the Grafana dashboard returns series. The rules are
the shipped ones with `for:` cut to seconds (nothing else changed)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import CLASSES, docs_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "secrets-sidecar.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "secrets-sidecar.json"
QUICK = {
    "standard": {
        **CLASSES["standard"],
        "refresh_interval": "1s",
        "max_cache_age": "1h",
        "overlap": "1m",
    },
    "payments": {**CLASSES["payments"], "refresh_interval": "1s", "max_cache_age": "1h"},
}


def _wait(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class Prometheus:
    """A throwaway Prometheus on a free loopback port, scraping ``targets`` and evaluating
    ``rules`` every second."""

    def __init__(self, folder: Path, targets: list[str], rules: Path) -> None:
        tool = shutil.which("prometheus")
        assert tool, "prometheus is missing: `make test` installs Debian's prometheus package"
        self.url = f"http://127.0.0.1:{free_port()}"
        config_file = folder / "prometheus.yml"
        config_file.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "sidecar", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log = folder / "prometheus.log"
        self.process = subprocess.Popen(
            [
                tool,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        _wait(lambda: self.process.poll() is None and _ok(f"{self.url}/-/ready"), "prometheus")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["alerts"])

    def targets_up(self) -> bool:
        targets = self.get("/api/v1/targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@dataclass
class Traffic:
    """Reads both secrets through the sidecar every 0.1 s in a thread, keeping the statuses."""

    api: str
    token: str
    paths: list[str]
    statuses: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Traffic:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def read(self, path: str) -> int:
        request = urllib.request.Request(self.api + path, headers={"X-Sidecar-Token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.paths:
                self.statuses.append(self.read(path))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Outage:
    prometheus: Prometheus
    traffic: Traffic
    firing: list[dict[str, str]]


def _quick_rules(folder: Path) -> Path:
    text = re.sub(r"(?m)^(\s+for: )\S+$", r"\g<1>2s", RULES.read_text())
    assert text != RULES.read_text()
    path = folder / "rules.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    folder = tmp_path_factory.mktemp("prometheus")
    store = DevOpenBao(folder / "store").start()
    sidecar = prometheus = traffic = None
    try:
        store.kv_put("app/db", {"password": "prometheus-test-value-1"})
        store.kv_put("app/payments/key", {"key": "prometheus-test-key"})
        store.kv_put("sidecar/revocations", {"revoked": []})
        # a token with a TTL, as a real sidecar has (the root token never expires)
        grant = store.request("POST", "auth/token/create", {"ttl": "1h", "policies": ["root"]})
        (folder / "store-token").write_text(grant["auth"]["client_token"])
        (folder / "snapshot.key").write_bytes(os.urandom(32))
        (folder / "snapshot.key").chmod(0o600)
        api, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        (folder / "sidecar.yaml").write_text(
            yaml.safe_dump(
                {
                    "listen": api,
                    "metrics_listen": ops,
                    "caller_token_file": str(folder / "caller" / "token"),
                    "admin_token_file": str(folder / "admin" / "token"),
                    "startup_jitter": "0s",
                    "revocation_list": "secret/sidecar/revocations",
                    "revocation_poll_interval": "1s",
                    "snapshot": {
                        "path": str(folder / "snapshot"),
                        "key_file": str(folder / "snapshot.key"),
                        "interval": "1s",
                    },
                    "backend": {
                        "address": store.addr,
                        "timeout": "1s",
                        "auth": {"method": "token", "token_file": str(folder / "store-token")},
                    },
                    "classes": QUICK,
                    "secrets": [
                        {"match": "secret/app/payments/**", "class": "payments"},
                        {"match": "secret/app/**", "class": "standard"},
                    ],
                }
            )
        )
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(folder / "sidecar.yaml")],
            stdout=(folder / "sidecar.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        _wait(lambda: _ok(f"http://{ops}/readyz"), "the sidecar did not become ready")
        prometheus = Prometheus(folder, [ops], _quick_rules(folder))
        _wait(prometheus.targets_up, "prometheus never scraped the sidecar")
        token = (folder / "caller" / "token").read_text().strip()
        paths = ["/secrets/secret/app/db", "/secrets/secret/app/payments/key"]
        started = time.time()
        # drawing the docs' picture (`make docs-images`): longer phases, so there is a shape
        linger = 30 if docs_image("dashboard.png") else 0
        traffic = Traffic(f"http://{api}", token, paths).start()
        time.sleep(3 + linger)
        assert set(traffic.statuses) == {200}
        assert [a for a in prometheus.alerts() if a["state"] == "firing"] == []

        # a rotation while traffic flows: detected, adopted, the previous version read once
        store.kv_put("app/db", {"password": "prometheus-test-value-2"})
        _wait(
            lambda: prometheus.query("sidecar_rotation_adoption_seconds_count > 0"),
            "the rotation was not adopted",
        )
        assert traffic.read("/secrets/secret/app/db?version=previous") == 200
        time.sleep(linger)

        store.kill()
        wanted = {
            ("SecretsSidecarStoreUnreachable", None, None),
            ("SecretsSidecarServingStale", "standard", "team-test"),
            ("SecretsSidecarFailClosedRefusing", "payments", "team-payments"),
        }

        def fired() -> bool:
            seen = {
                (a["labels"]["alertname"], a["labels"].get("class"), a["labels"].get("owner"))
                for a in prometheus.alerts()  # type: ignore[union-attr]
                if a["state"] == "firing"
            }
            return wanted <= seen

        _wait(fired, "the outage alerts did not fire", timeout=90)
        time.sleep(linger)
        firing = [a["labels"] for a in prometheus.alerts() if a["state"] == "firing"]
        yield Outage(prometheus, traffic, firing)
        image = docs_image("dashboard.png")
        if image:  # `make docs-images`: the docs' picture of this scenario
            render = subprocess.run(
                [
                    sys.executable,
                    str(DASHBOARD.with_name("render.py")),
                    prometheus.url,
                    str(started),
                    str(time.time()),
                    image,
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert render.returncode == 0, render.stderr
    finally:
        if traffic is not None:
            traffic.stop()
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(30)
        if prometheus is not None:
            prometheus.stop()
        store.stop()


def test_a_store_outage_fires_the_alerts_with_class_and_owner(outage: Outage):
    prometheus = outage.prometheus
    assert 503 in outage.traffic.statuses  # the fail-closed class refused during the outage
    info = prometheus.query("sidecar_class_info")
    assert {(s["metric"]["class"], s["metric"]["owner"]) for s in info} == {
        ("standard", "team-test"),
        ("payments", "team-payments"),
    }
    alerts = {a["labels"]["alertname"]: a for a in prometheus.alerts()}
    # a serve_stale class within its limits is a warning; the fail-closed class pages
    assert alerts["SecretsSidecarServingStale"]["labels"]["severity"] == "warning"
    failing = alerts["SecretsSidecarFailClosedRefusing"]
    assert failing["labels"]["severity"] == "critical"
    assert "team-payments" in failing["annotations"]["description"]
    assert failing["annotations"]["runbook_url"].endswith("docs/runbooks/fail-closed-refusing.md")
    for quiet in ("SecretsSidecarCacheAgeNearLimit", "SecretsSidecarRetiredCredentialPresented"):
        assert quiet not in alerts
    (ratio,) = prometheus.query("sidecar:hit_ratio:rate5m")
    assert 0 < float(ratio["value"][1]) <= 1


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_dashboard_expression_returns_series_after_traffic_a_rotation_and_an_outage(
    outage: Outage,
):
    """What Grafana would send: its variables at "All" (`.*`), a rate interval of 1m and a
    range of 1h. Each returns at least one series with a number (not only NaN)."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    empty = []
    for title, expr in exprs:
        query = (
            expr.replace("$namespace", ".*")
            .replace("$pod", ".*")
            .replace("$class", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
        )
        assert "$" not in query, (title, query)
        result = outage.prometheus.query(query)
        # a series whose every value is NaN (a quantile of nothing) draws nothing: not enough
        if not any(not math.isnan(float(s["value"][1])) for s in result):
            empty.append(title)
    assert empty == []


def test_the_dashboard_variables_read_metrics_the_sidecar_exports(outage: Outage):
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric = re.search(r"label_values\((\w+)", variable["query"]["query"])
        assert metric, variable["name"]
        assert outage.prometheus.query(metric.group(1)), variable["name"]
