"""`python -m benchmarks.fleet --smoke`: the fleet simulator at small size, in the suite. The
store model is calibrated against a real OpenBao, the simulator is held against 4 real sidecar
processes, and each scenario runs. Virtual time makes the simulated figures the same run after
run (seeded), so what the shaping promises is asserted, not only that it ran; nothing is timed
in real seconds. The full run is `make fleet` (docs/fleet.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fleet") / "fleet.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def _runs(fleet: dict[str, Any], scenario: str) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in fleet["runs"] if r["scenario"] == scenario}


@pytest.mark.timeout(300)
def test_the_simulator_predicts_real_sidecars_store_requests_within_20_percent(fleet):
    validation = fleet["validation"]
    assert validation["real_rate"] > 0
    assert abs(validation["error"]) <= 0.2, validation
    model = fleet["store_model"]
    assert model["capacity"]["metadata"] > 100  # measured, not assumed
    assert model["capacity"]["data"] > 100


def test_steady_state_matches_the_sizing_rule(fleet):
    for run in _runs(fleet, "steady").values():
        assert run["in_window"]["mean"] == pytest.approx(run["estimate"], rel=0.1), run["label"]


@pytest.mark.parametrize("scenario", ["restart_cold", "restart_warm"])
def test_a_mass_restart_stays_bunched_without_the_spread_and_smooths_with_it(fleet, scenario):
    runs = _runs(fleet, scenario)
    before, after = runs["before"]["in_window"], runs["after"]["in_window"]
    assert before["peak_to_mean"] > 3  # the 75-90 % window alone keeps the pods together
    assert after["peak_to_mean"] < before["peak_to_mean"] / 2
    assert after["mean"] == pytest.approx(runs["after"]["estimate"], rel=0.15)


def test_recovery_after_an_outage_peaks_lower_with_the_spread(fleet):
    runs = _runs(fleet, "outage")
    assert (
        runs["after"]["outage"]["recovery"]["peak"] < runs["before"]["outage"]["recovery"]["peak"]
    )
    for run in runs.values():
        assert run["reads_stale"] > 0  # serve_stale classes rode the outage out
        assert set(run["refusals"]) <= {"fail_closed", "max_cache_age_exceeded"}


def test_a_rotation_reaches_every_pod_within_a_refresh_cycle(fleet):
    (run,) = _runs(fleet, "rotation").values()
    (converged,) = run["convergence"].values()
    assert converged["sidecars_converged"] == run["sidecars"]
    assert converged["max_seconds"] <= 0.9 * 60 + 1
