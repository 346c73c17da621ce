"""Emergency controls against a real OpenBao: purge, the revocation list, incident windows."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import ADMIN, AUTH, CLASSES, SidecarFactory, metric
from tests.faultproxy import FaultProxy

QUICK = {
    "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "2s"},
    "payments": CLASSES["payments"],
}


async def test_admin_and_caller_tokens_open_different_doors(make_sidecar: SidecarFactory, uid):
    client, _ = await make_sidecar()
    assert (await client.get("/admin/status", headers=AUTH)).status == 403
    refused = await client.post("/admin/purge", headers=AUTH, json={"all": True})
    assert refused.status == 403
    assert "not the caller token" in (await refused.json())["reason"]
    assert (await client.get("/admin/status")).status == 401
    status = await client.get("/admin/status", headers=ADMIN)
    assert status.status == 200
    secrets = await client.get(f"/secrets/secret/{uid}/x", headers=ADMIN)
    assert secrets.status == 403
    assert "admin token" in (await secrets.json())["reason"]


async def test_purge_forces_a_store_read_and_rewrites_the_snapshot(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    for name in ("a", "b", "c"):
        openbao.kv_put(f"{uid}/{name}", {"v": f"purge-{name}"})
    key_file = tmp_path / "k"
    key_file.write_bytes(os.urandom(32))
    snapshot = tmp_path / "snap"
    client, sidecar = await make_sidecar(
        snapshot={"path": str(snapshot), "key_file": str(key_file)},
        audit_log=str(tmp_path / "audit.log"),
    )
    for name in ("a", "b", "c"):
        assert (await client.get(f"/secrets/secret/{uid}/{name}", headers=AUTH)).status == 200

    one = await client.post("/admin/purge", headers=ADMIN, json={"path": f"secret/{uid}/a"})
    assert (await one.json()) == {"purged": 1}
    from sidecar.ops.snapshot import load_key, read_snapshot

    on_disk = {e.secret.path for e in read_snapshot(snapshot, load_key(key_file)).entries}
    assert on_disk == {f"secret/{uid}/b", f"secret/{uid}/c"}
    again = await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)
    assert again.headers["X-Sidecar-Cache"] == "MISS"
    assert openbao.count_requests(f"secret/data/{uid}/a") == 2
    hit = await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)
    assert hit.headers["X-Sidecar-Cache"] == "HIT"

    prefix = await client.post("/admin/purge", headers=ADMIN, json={"prefix": f"secret/{uid}/"})
    assert (await prefix.json()) == {"purged": 3}
    left = read_snapshot(snapshot, load_key(key_file))
    assert left.entries == []  # no secret, only the mount table
    assert [m["path"] for m in left.mounts] == ["secret/"]
    assert len(sidecar.cache) == 0
    everything = await client.post("/admin/purge", headers=ADMIN, json={"all": True})
    assert (await everything.json()) == {"purged": 0}
    for bad in ({}, {"path": "a", "prefix": "b"}, {"all": False}, {"path": "../x"}, {"colour": 1}):
        response = await client.post("/admin/purge", headers=ADMIN, json=bad)
        assert response.status == 400, bad
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    purges = [r for r in records if r["event"] == "purged"]
    assert [(r["scope"], r["entries"]) for r in purges] == [("path", 1), ("prefix", 3), ("all", 0)]


async def test_revocation_list_in_the_store_turns_reads_into_410(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/leaked", {"key": "leaked-v1"})
    openbao.kv_put(f"{uid}/versioned", {"key": "versioned-v1"})
    openbao.kv_put(f"{uid}/versioned", {"key": "versioned-v2"})
    list_path = f"{uid}/revocations"
    openbao.kv_put(list_path, {"revoked": []})
    client, sidecar = await make_sidecar(
        revocation_list=f"secret/{list_path}",
        revocation_poll_interval="300ms",
        audit_log=str(tmp_path / "audit.log"),
    )
    for name in ("leaked", "versioned"):
        assert (await client.get(f"/secrets/secret/{uid}/{name}", headers=AUTH)).status == 200

    openbao.kv_put(
        list_path,
        {
            "revoked": [
                {"path": f"secret/{uid}/leaked", "reason": "posted in a public channel"},
                {"path": f"secret/{uid}/versioned", "version": 1, "reason": "v1 leaked"},
                {"path": 42},  # a bad entry is skipped, not fatal
            ]
        },
    )
    await _until(lambda: metric(sidecar, "sidecar_revocations_total") == 2)
    refused = await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)
    assert refused.status == 410
    body = await refused.json()
    assert (body["error"], body["reason"]) == ("secret_revoked", "posted in a public channel")
    assert "leaked-v1" not in await refused.text()
    # a version-specific entry: the fresh version after it is served normally
    latest = await client.get(f"/secrets/secret/{uid}/versioned", headers=AUTH)
    assert latest.status == 200
    assert (await latest.json())["version"] == 2
    old = await client.get(f"/secrets/secret/{uid}/versioned?version=1", headers=AUTH)
    assert old.status == 410
    assert all(key[0] != f"secret/{uid}/leaked" for key, _ in sidecar.cache.entries())
    # a path entry (no version) covers versions written later too: a kill switch
    openbao.kv_put(f"{uid}/leaked", {"key": "leaked-v2"})
    still = await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)
    assert still.status == 410
    assert "leaked-v2" not in await still.text()
    status = await (await client.get("/admin/status", headers=ADMIN)).json()
    # RFC 3339 like every other time the sidecar prints, not an epoch float
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", status["revocation_list_polled_at"]
    )

    # off the list: served again (a fresh store read)
    openbao.kv_put(list_path, {"revoked": []})
    await _until(lambda: not sidecar.cache.controls.revocations())
    again = await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)
    assert again.status == 200
    assert again.headers["X-Sidecar-Cache"] == "MISS"
    records = (tmp_path / "audit.log").read_text()
    assert records.count('"event":"revoked"') == 2
    assert records.count('"event":"unrevoked"') == 2
    assert "leaked-v1" not in records


async def test_revocation_list_keeps_working_when_the_circuit_is_open(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/x", {"key": "x1"})
    list_path = f"{uid}/revocations"
    openbao.kv_put(list_path, {"revoked": []})
    client, sidecar = await make_sidecar(
        revocation_list=f"secret/{list_path}",
        revocation_poll_interval="300ms",
        backend={"rate_limit": {"requests_per_second": 0.001, "burst": 3}},
    )
    assert (await client.get(f"/secrets/secret/{uid}/x", headers=AUTH)).status == 200
    # a few more reads spend the sidecar's own budget (3, refilling once in 1,000 s)...
    reasons = []
    for n in range(4):
        response = await client.get(f"/secrets/secret/{uid}/y{n}", headers=AUTH)
        reasons.append((await response.json()).get("reason"))
    assert reasons[-1] == "throttled", reasons
    # ...yet the revocation list is still read and obeyed.
    openbao.kv_put(list_path, {"revoked": [{"path": f"secret/{uid}/x", "reason": "incident"}]})
    await _until(lambda: bool(sidecar.cache.controls.revocations()))
    assert (await client.get(f"/secrets/secret/{uid}/x", headers=AUTH)).status == 410


async def test_extend_respects_the_ceiling_and_reverts(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    openbao.kv_put(f"{uid}/db", {"password": "ext-pw"})
    proxy = FaultProxy(openbao.port).start()
    try:
        client, sidecar = await make_sidecar(
            proxy.addr,
            classes=QUICK,
            max_cache_age_ceiling="1h",
            audit_log=str(tmp_path / "audit.log"),
        )
        path = f"/secrets/secret/{uid}/db"
        assert (await client.get(path, headers=AUTH)).status == 200

        async def extend(**body: Any) -> Any:
            return await client.post("/admin/extend", headers=ADMIN, json=body)

        too_long = await extend(**{"class": "standard", "max_cache_age": "2h", "for": "10m"})
        assert too_long.status == 400
        assert "max_cache_age_ceiling" in (await too_long.json())["reason"]
        assert (await extend(**{"class": "nope", "max_cache_age": "1m", "for": "1m"})).status == 404
        shorter = await extend(**{"class": "standard", "max_cache_age": "1s", "for": "1m"})
        assert shorter.status == 400
        bad = await extend(**{"class": "standard", "max_cache_age": "x", "for": "1m"})
        assert bad.status == 400

        # The store goes down: an incident. Extend the 2 s window to 30 s for 3.5 s.
        proxy.set("reset")
        proxy.cut_all()
        ok = await extend(**{"class": "standard", "max_cache_age": "30s", "for": "3500ms"})
        assert ok.status == 200
        result = await ok.json()
        assert (result["max_cache_age"], result["configured_max_cache_age"]) == (30.0, 2.0)
        status = await (await client.get("/admin/status", headers=ADMIN)).json()
        assert "standard" in status["extensions"]

        clock.advance(2.5)  # older than the configured 2 s: served only thanks to the window
        stale = await client.get(path, headers=AUTH)
        assert stale.status == 200
        assert stale.headers["X-Sidecar-Cache"] == "STALE"

        clock.advance(1.3)  # the window has reverted by itself
        gone = await client.get(path, headers=AUTH)
        assert gone.status == 503
        assert (await gone.json())["reason"] == "max_cache_age_exceeded"
        assert sidecar.cache.class_named("standard").max_cache_age == 2.0
        status = await (await client.get("/admin/status", headers=ADMIN)).json()
        assert status["extensions"] == {}
        records = (tmp_path / "audit.log").read_text()
        assert '"cache_window_extended"' in records
        assert '"cache_window_reverted"' in records
    finally:
        proxy.stop()


async def _until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.05)


async def test_extend_refuses_a_fail_closed_class_and_audits_nothing(
    make_sidecar: SidecarFactory, tmp_path: Path
):
    """A fail_closed class never serves an unconfirmed value: a longer window would change
    nothing but the audit log's story. Refused with a reason, nothing recorded."""
    client, sidecar = await make_sidecar(
        classes=QUICK, max_cache_age_ceiling="1h", audit_log=str(tmp_path / "audit.log")
    )
    response = await client.post(
        "/admin/extend",
        headers=ADMIN,
        json={"class": "payments", "max_cache_age": "30m", "for": "10m"},
    )
    assert response.status == 409
    body = await response.json()
    assert body["error"] == "conflict"
    assert "fail_closed" in body["reason"] and "serve_stale" in body["reason"]
    assert sidecar.cache.class_named("payments").max_cache_age == 300.0
    status = await (await client.get("/admin/status", headers=ADMIN)).json()
    assert status["extensions"] == {}
    audit = tmp_path / "audit.log"
    assert not audit.exists() or "cache_window_extended" not in audit.read_text()


async def test_class_metrics_name_the_owner_and_follow_an_extension(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, clock: ManualClock
):
    """What alerts join and compare with: each class's owner, its limits, the limit in force
    during an extension, and the age of the oldest value held."""
    openbao.kv_put(f"{uid}/db", {"password": "metrics-value"})
    client, sidecar = await make_sidecar(classes=QUICK, max_cache_age_ceiling="1h")
    owner = QUICK["standard"]["owner"]
    info = {"class": "standard", "owner": owner, "on_outage": "serve_stale"}
    assert metric(sidecar, "sidecar_class_info", info) == 1
    payments = {
        "class": "payments",
        "owner": CLASSES["payments"]["owner"],
        "on_outage": "fail_closed",
    }
    assert metric(sidecar, "sidecar_class_info", payments) == 1
    standard = {"class": "standard"}
    assert metric(sidecar, "sidecar_class_refresh_interval_seconds", standard) == 1.0
    assert metric(sidecar, "sidecar_class_max_cache_age_seconds", standard) == 2.0
    assert metric(sidecar, "sidecar_class_effective_max_cache_age_seconds", standard) == 2.0
    assert (
        sidecar.metrics.registry.get_sample_value("sidecar_secret_oldest_age_seconds", standard)
        is None
    )

    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    clock.advance(0.75)
    assert 0.75 <= metric(sidecar, "sidecar_secret_oldest_age_seconds", standard) < 2.0

    extended = await client.post(
        "/admin/extend",
        headers=ADMIN,
        json={"class": "standard", "max_cache_age": "30s", "for": "10m"},
    )
    assert extended.status == 200
    assert metric(sidecar, "sidecar_class_effective_max_cache_age_seconds", standard) == 30.0
    assert metric(sidecar, "sidecar_class_max_cache_age_seconds", standard) == 2.0


async def test_a_missing_revocation_list_is_a_failed_poll_and_never_lifts_a_revocation(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    """A misspelt or deleted list path must show (and alert), not read as "nothing revoked"."""
    openbao.kv_put(f"{uid}/x", {"v": "missing-list-value"})
    list_path = f"{uid}/revocations"
    client, sidecar = await make_sidecar(
        revocation_list=f"secret/{list_path}", revocation_poll_interval="200ms"
    )
    await _until(
        lambda: metric(sidecar, "sidecar_revocation_polls_total", {"result": "failure"}) >= 2
    )
    assert metric(sidecar, "sidecar_revocation_list_last_success_timestamp_seconds") == 0
    assert (await client.get(f"/secrets/secret/{uid}/x", headers=AUTH)).status == 200

    openbao.kv_put(list_path, {"revoked": [{"path": f"secret/{uid}/x", "reason": "leaked"}]})
    await _until(lambda: bool(sidecar.cache.controls.revocations()))
    assert (await client.get(f"/secrets/secret/{uid}/x", headers=AUTH)).status == 410
    assert metric(sidecar, "sidecar_revocation_list_last_success_timestamp_seconds") > 0

    # the list deleted (by mistake or to "lift everything"): the revocation stays in force
    openbao.request("DELETE", f"secret/metadata/{list_path}")
    failures = metric(sidecar, "sidecar_revocation_polls_total", {"result": "failure"})
    await _until(
        lambda: metric(sidecar, "sidecar_revocation_polls_total", {"result": "failure"}) > failures
    )
    assert (await client.get(f"/secrets/secret/{uid}/x", headers=AUTH)).status == 410
