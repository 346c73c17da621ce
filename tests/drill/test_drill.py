"""``sidecar drill`` end to end against a real OpenBao: a short store outage under live reads,
a verdict per class; and a deliberately wrong class (fail_closed with an hour-long refresh
interval) that the drill must catch rather than pass."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import CLASSES, approle_auth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SHORT = ["--warmup", "1500ms", "--fault", "3s", "--recovery", "5s", "--readers", "2", "--json"]


def _config(openbao: DevOpenBao, tmp_path: Path, uid: str, payments_refresh: str) -> Path:
    token = tmp_path / "store-token"
    token.write_text(openbao.root_token)
    document: dict[str, Any] = {
        "backend": {
            "address": openbao.addr,
            "timeout": "500ms",
            "backoff": {"base": "100ms", "cap": "1s"},
            "auth": {"method": "token", "token_file": str(token)},
        },
        "classes": {
            "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"},
            "payments": {
                **CLASSES["payments"],
                "refresh_interval": payments_refresh,
                "max_cache_age": "1h",
            },
        },
        "secrets": [
            {"match": f"secret/{uid}/db", "class": "standard"},
            {"match": f"secret/{uid}/pay", "class": "payments"},
        ],
    }
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _seed(openbao: DevOpenBao, uid: str) -> None:
    """The two secrets every drill here reads (their values are grepped for in the output)."""
    openbao.kv_put(f"{uid}/db", {"password": "drill-db"})
    openbao.kv_put(f"{uid}/pay", {"key": "drill-pay"})


def _drill(
    config: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[dict[str, Any]]]:
    chosen = any(e.startswith("--scenario") for e in extra)
    scenario = [] if chosen else ["--scenario", "store_blocked"]
    code = main(["drill", "--config", str(config), *scenario, *SHORT, *extra])
    captured = capsys.readouterr()
    for value in ("drill-db", "drill-pay"):  # counts and versions only, never a value
        assert value not in captured.out + captured.err
    return code, json.loads(captured.out)["outcomes"]


def test_a_well_configured_sidecar_holds_through_a_blocked_store(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    report = tmp_path / "report.md"
    code, outcomes = _drill(_config(openbao, tmp_path, uid, "1s"), capsys, "--report", str(report))
    by_class = {o["class"]: o for o in outcomes}
    assert set(by_class) == {"standard", "payments"}
    standard, payments = by_class["standard"], by_class["payments"]
    assert standard["stale"] > 0 and standard["broken"] == []  # read-only through the outage
    assert payments["stale"] == 0 and sum(payments["unavailable"].values()) > 0  # failed closed
    assert payments["broken"] == []
    assert all(o["older_version_served"] == 0 for o in outcomes)
    assert all(o["recovered_after_seconds"] is not None for o in outcomes)
    assert code == 0
    text = report.read_text()
    assert "**2 of 2 verdicts hold**" in text and "store_blocked  standard" in text
    if importlib.util.find_spec("matplotlib") is None:  # the dev extra alone: said, not hidden
        assert "no charts: matplotlib is not installed" in text
    else:
        chart = tmp_path / "report-store_blocked.png"
        assert chart.read_bytes()[:4] == b"\x89PNG" and "](report-store_blocked.png)" in text


def test_the_drill_catches_a_fail_closed_class_that_does_not_fail_closed(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    code, outcomes = _drill(_config(openbao, tmp_path, uid, "1h"), capsys)
    payments = next(o for o in outcomes if o["class"] == "payments")
    assert code == 1
    assert any("does not fail closed in time" in why for why in payments["broken"])
    assert next(o for o in outcomes if o["class"] == "standard")["broken"] == []


def test_a_sidecar_restarted_during_the_outage_serves_again_from_its_snapshot(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    config = _config(openbao, tmp_path, uid, "1s")
    args = ["drill", "--config", str(config), "--scenario", "restart_in_outage", *SHORT]
    assert main(args) == 1  # no snapshot key: skipped, and said why; nothing judged is no pass
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "outcomes": [],
        "skipped": {
            "restart_in_outage": "no snapshot.key_file, so a restart during an outage starts "
            "cold by design"
        },
    }
    assert "skipped: no snapshot.key_file" in captured.err
    assert "no verdict: every scenario chosen was skipped" in captured.err

    key = tmp_path / "snapshot.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    document = yaml.safe_load(config.read_text())
    document["snapshot"] = {"key_file": str(key), "interval": "1s"}
    config.write_text(yaml.safe_dump(document))
    assert main(args) == 0
    outcomes = {o["class"]: o for o in json.loads(capsys.readouterr().out)["outcomes"]}
    standard = outcomes["standard"]
    # warm: restarted during the outage, it served the snapshot's value (stale, within limits),
    # and confirmed it once the store was back (this failed in 6 of 14 runs before the fix in
    # core/upkeep.py: a restored value nobody had read lately was never retried)
    assert standard["stale"] > 0 and standard["broken"] == []
    assert standard["recovered_after_seconds"] is not None
    assert outcomes["payments"]["stale"] == 0  # fail_closed values are never in the snapshot


def test_rotation_stale_node_and_a_revoked_token_with_an_operator_token(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    config = _config(openbao, tmp_path, uid, "1s")
    document = yaml.safe_load(config.read_text())
    document["backend"]["auth"] = approle_auth(openbao, uid, tmp_path)  # it can log in again
    document["classes"]["standard"]["overlap"] = "30s"
    # a revocation list naming a version nobody serves any more: checked, never served
    openbao.kv_put(f"{uid}/revoked", {"revoked": [{"path": f"secret/{uid}/db", "version": 1}]})
    document["revocation_list"] = f"secret/{uid}/revoked"
    document["revocation_poll_interval"] = "1s"
    config.write_text(yaml.safe_dump(document))
    openbao.kv_put(f"{uid}/db", {"password": "drill-db"})  # version 2 from now on
    operator = tmp_path / "operator-token"
    operator.write_text(openbao.root_token)
    logins = openbao.count_requests(f"auth/ar{uid}/login", "update")
    scenarios = ["stale_node", "token_revoked", "rotation"]
    code, outcomes = _drill(
        config,
        capsys,
        *(f"--scenario={s}" for s in scenarios),
        f"--operator-token-file={operator}",
        f"--store-audit-log={openbao.audit_log}",
    )
    by = {(o["scenario"], o["class"]): o for o in outcomes}
    assert set(by) == {(s, c) for s in scenarios for c in ("standard", "payments")}
    for outcome in outcomes:
        assert outcome["broken"] == [], outcome
        assert outcome["store_requests_source"] == "audit log"
        assert outcome["older_version_served"] == 0
        assert outcome["revoked_version_served"] == 0
    # stale_node really answered old versions: the sidecar kept the newer one it held
    assert not any("not exercised" in n for o in outcomes for n in o["notes"])
    # the revoked token: reads went on, and the sidecar logged in again (the store's count)
    assert openbao.count_requests(f"auth/ar{uid}/login", "update") >= logins + 2
    # rotation: readers moved to the new version; during the overlap ?version=previous
    # answered the one before (standard has an overlap, payments none)
    assert by[("rotation", "standard")]["previous_served"] > 0
    assert by[("rotation", "payments")]["previous_served"] == 0
    assert by[("rotation", "standard")]["store_requests"] > 0
    # the drill wrote the same data again: versions moved, values did not
    data = openbao.request("GET", f"secret/data/{uid}/db")["data"]
    assert data["data"] == {"password": "drill-db"} and data["metadata"]["version"] >= 3
    assert code == 0


def test_an_outage_past_max_cache_age_ends_serving_at_the_limit(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    config = _config(openbao, tmp_path, uid, "1s")
    document = yaml.safe_load(config.read_text())
    document["classes"]["standard"]["max_cache_age"] = "3s"
    config.write_text(yaml.safe_dump(document))
    code, outcomes = _drill(config, capsys, "--scenario=outage_past_max_age")
    standard = next(o for o in outcomes if o["class"] == "standard")
    assert standard["stale"] > 0  # served stale while it could
    assert standard["unavailable"].get("max_cache_age_exceeded", 0) > 0  # then stopped
    assert standard["broken"] == [] and code == 0


def test_a_restart_storm_cold_and_warm(
    openbao: DevOpenBao, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
):
    _seed(openbao, uid)
    config = _config(openbao, tmp_path, uid, "1s")
    document = yaml.safe_load(config.read_text())
    key = tmp_path / "snapshot.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    document["snapshot"] = {"key_file": str(key), "interval": "1s"}
    config.write_text(yaml.safe_dump(document))
    code, outcomes = _drill(config, capsys, "--scenario=restart_storm", "--storm=3")
    by = {(o["scenario"], o["class"]): o for o in outcomes}
    assert set(by) == {
        (f"restart_storm_{m}", c) for m in ("cold", "warm") for c in ("standard", "payments")
    }
    for outcome in outcomes:
        assert outcome["broken"] == [], outcome
        assert outcome["reads"] == 2 * 3  # two rounds, three sidecars
        assert outcome["fresh"] + outcome["stale"] == outcome["reads"]  # never refused
        assert outcome["recovered_after_seconds"] is not None  # all fresh within a refresh
        assert any("3 of 3 sidecars ready" in n for n in outcome["notes"])
    cold = by[("restart_storm_cold", "standard")]["store_requests"]
    warm = by[("restart_storm_warm", "standard")]["store_requests"]
    assert cold > 0 and warm > 0
    assert code == 0


def test_make_drills_raft_leader_killed_holds_on_a_real_three_node_cluster(tmp_path: Path):
    from sidecar.dev.gameday import raft_leader_killed
    from sidecar.drill.drill import Phases

    phases = Phases(warmup=1.5, fault=4.0, recovery=4.0, readers=2)
    drill, outcomes = raft_leader_killed(tmp_path / "raft", phases)
    assert {o.secret_class for o in outcomes} == {"standard", "payments"}
    for outcome in outcomes:
        assert outcome.scenario == "raft_leader_killed"
        assert outcome.broken == [] and outcome.fresh > 0 and not outcome.unavailable
        assert outcome.store_source == "audit log" and outcome.store_requests
    reads, fault_start, _ = drill.timelines["raft_leader_killed"]
    assert any(r.at > fault_start + 1 and r.status == 200 for r in reads)  # after the kill
