"""`make bench-smoke`: every benchmark scenario runs briefly and writes well-formed results.

Benchmarks are a tool, not a timed test: nothing here judges a number. The built-in load
generator is used so the test does not depend on wrk being installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_every_benchmark_scenario_completes_and_writes_well_formed_json(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--generator",
            "builtin",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["mode"] == "smoke"
    assert doc["errors"] == []
    assert doc["generator"]["name"] == "builtin"
    for key in ("cpu_model", "cores", "python", "openbao", "kernel"):
        assert doc["machine"][key], key

    targets = doc["throughput"]["targets"]
    for name in ("sidecar_hit", "direct_openbao", "bao_proxy", "bare_aiohttp"):
        target = targets[name]
        assert target["available"] is True, name
        assert target["rps"] > 0 and target["p99_ms"] > 0, name
        assert isinstance(target["cpu_s_per_10k"], float), name
    # the Vault-compatible API is measured when it answers, else reported as not available
    assert "sidecar_vault_api" in targets
    assert {
        "sidecar_hit/direct_openbao",
        "sidecar_hit/bao_proxy",
        "sidecar_hit/bare_aiohttp",
    } <= set(doc["throughput"]["ratios"])

    coalescing = doc["coalescing"]
    assert isinstance(coalescing["store_reads"], int)
    assert sum(coalescing["statuses"].values()) == coalescing["requests"]

    phases = doc["storm"]["phases"]
    assert set(phases) == {"cold", "warm", "store_down"}
    for phase in phases.values():
        assert isinstance(phase["store_requests"], int)
        assert isinstance(phase["rate_limited_429"], int)
        assert isinstance(phase["store_rps_timeline"], list)

    memory = doc["memory"]
    assert set(memory["sidecar_rss_mb"]) == {"idle", "100", "300"}
    assert memory["bao_proxy_rss_mb"]["idle"] > 0

    budget = doc["budget"]
    assert set(budget["runs"]) == {"serve_stale", "fail_closed"}
    for runs in budget["runs"].values():
        assert set(runs) == {"50/s", "2000/s"}
        for run in runs.values():
            assert run["reads"] > 0
            assert run["hits"] + run["misses"] + run["stale"] <= run["reads"]
            assert isinstance(run["store_requests"], int)
            assert isinstance(run["failed"], int)
            assert run["non_hit_p50_ms"] is not None  # from cold: every secret misses once
    assert set(budget["ratios"]) == {"serve_stale", "fail_closed"}
    assert "Store budget" in result.stdout

    assert {t["key"] for t in doc["targets"]} >= {"hit_vs_bare", "coalescing", "rss_max"}
    assert "Throughput and latency" in result.stdout
    assert (tmp_path / "latest.md").read_text().startswith("### Run")
