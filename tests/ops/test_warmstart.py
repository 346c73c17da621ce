"""Warm start from the encrypted snapshot: ready while the store is down, bad snapshots ignored."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.dev.openbao import DevOpenBao
from sidecar.settings import ConfigError
from tests.conftest import AUTH, CLASSES, SidecarFactory, config, metric

CLASSES_WS = {
    "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"},
    "payments": {**CLASSES["payments"], "refresh_interval": "1s", "max_cache_age": "1h"},
}


def _key_file(tmp_path: Path, name: str = "snapshot.key") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def _document(
    store: DevOpenBao, tmp_path: Path, uid: str, key_file: Path, **extra: Any
) -> dict[str, Any]:
    token_file = tmp_path / "ws-token"
    token_file.write_text(store.root_token)
    rules = [
        {"match": f"secret/{uid}/db", "class": "standard", "preload": True},
        {"match": f"secret/{uid}/pay", "class": "payments"},
        {"match": "**", "class": "standard"},
    ]
    doc = config(
        store.addr,
        token_file,
        tmp_path,
        classes=CLASSES_WS,
        rules=rules,
        snapshot={"path": str(tmp_path / "state" / "snapshot"), "key_file": str(key_file)},
        startup_jitter="0s",
    )
    doc.update(extra)
    return doc


async def test_restart_with_the_store_down_is_ready_from_the_snapshot(
    make_sidecar: SidecarFactory, aiohttp_client: Any, tmp_path: Path, uid: str
):
    store = DevOpenBao(tmp_path / "store").start()
    try:
        store.kv_put(f"{uid}/db", {"password": "ws-secret-db-value"})
        store.kv_put(f"{uid}/other", {"token": "ws-secret-other-value"})
        store.kv_put(f"{uid}/pay", {"key": "ws-secret-payment-key"})
        doc = _document(store, tmp_path, uid, _key_file(tmp_path))

        first, sidecar = await make_sidecar(document=doc)
        for name in ("db", "other", "pay"):
            assert (await first.get(f"/secrets/secret/{uid}/{name}", headers=AUTH)).status == 200
        await first.close()  # shutdown writes the last snapshot
        snapshot = Path(doc["snapshot"]["path"])
        assert snapshot.stat().st_mode & 0o777 == 0o600
        raw = snapshot.read_bytes()
        for value in ("ws-secret-db-value", "ws-secret-other-value", "ws-secret-payment-key"):
            assert value.encode() not in raw
        assert metric(sidecar, "sidecar_snapshot_last_success_timestamp_seconds") > 0
        assert metric(sidecar, "sidecar_snapshot_entries") == 2  # fail_closed never on disk
    finally:
        store.kill()

    # The store is down; a new sidecar starts with the snapshot.
    second, restarted = await make_sidecar(document=doc)
    ops = await aiohttp_client(restarted.ops)
    ready = await ops.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["preloaded_servable"] == 1
    response = await second.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 200
    assert response.headers["X-Sidecar-Cache"] == "STALE"
    assert (await response.json())["data"] == {"password": "ws-secret-db-value"}
    assert (await second.get(f"/secrets/secret/{uid}/other", headers=AUTH)).status == 200
    payment = await second.get(f"/secrets/secret/{uid}/pay", headers=AUTH)
    assert payment.status == 503  # fail_closed: not persisted, store down


async def test_no_store_and_no_snapshot_is_not_ready(
    make_sidecar: SidecarFactory, aiohttp_client: Any, tmp_path: Path, uid: str
):
    store = DevOpenBao(tmp_path / "store").start()
    doc = _document(store, tmp_path, uid, _key_file(tmp_path))
    store.kill()
    _, sidecar = await make_sidecar(document=doc)
    ops = await aiohttp_client(sidecar.ops)
    await asyncio.sleep(0.3)
    response = await ops.get("/readyz")
    assert response.status == 503
    assert (await response.json())["preloaded_servable"] == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered", "wrong_key", "empty"])
async def test_bad_snapshot_is_reported_and_ignored(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    tmp_path: Path,
    uid: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
):
    openbao.kv_put(f"{uid}/db", {"password": "ws-damaged"})
    key_file = _key_file(tmp_path)
    doc = _document(openbao, tmp_path, uid, key_file)
    first, _ = await make_sidecar(document=doc)
    assert (await first.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    await first.close()
    snapshot = Path(doc["snapshot"]["path"])
    data = snapshot.read_bytes()
    if damage == "garbage":
        snapshot.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        snapshot.write_bytes(data[: len(data) - 7])
    elif damage == "tampered":
        snapshot.write_bytes(data[:-20] + bytes([data[-20] ^ 0x01]) + data[-19:])
    elif damage == "wrong_key":
        key_file.write_bytes(os.urandom(32))
    else:
        snapshot.write_bytes(b"")

    caplog.set_level(logging.INFO)
    client, sidecar = await make_sidecar(document=doc)
    assert metric(sidecar, "sidecar_snapshot_errors_total", {"operation": "load"}) == 1
    assert any("snapshot unusable" in r.getMessage() for r in caplog.records)
    # ...and the sidecar works: from the store, or from what could be authenticated.
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["data"] == {"password": "ws-damaged"}


async def test_snapshot_is_written_every_interval(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, tmp_path: Path, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "ws-interval"})
    doc = _document(openbao, tmp_path, uid, _key_file(tmp_path))
    doc["snapshot"]["interval"] = "300ms"
    client, sidecar = await make_sidecar(document=doc)
    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    await asyncio.sleep(0.8)
    assert Path(doc["snapshot"]["path"]).exists()
    assert metric(sidecar, "sidecar_snapshot_entries") >= 1


def test_bad_key_file_is_a_config_error(tmp_path: Path, openbao: DevOpenBao, uid: str):
    from sidecar.app import create_app
    from sidecar.config import settings_from

    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"0123")
    settings = settings_from(_document(openbao, tmp_path, uid, key_file))
    with pytest.raises(ConfigError) as caught:
        create_app(settings, caller_token="x" * 32, admin_token="y" * 32)
    assert "snapshot.key_file" in str(caught.value)


async def test_snapshot_inspect_shows_no_values(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, tmp_path: Path, uid: str, capsys
):
    import yaml

    openbao.kv_put(f"{uid}/db", {"password": "ws-inspect-value"})
    openbao.kv_put(f"{uid}/gone", {"password": "ws-inspect-gone"})
    doc = _document(openbao, tmp_path, uid, _key_file(tmp_path))
    client, _ = await make_sidecar(document=doc)
    for name in ("db", "gone"):
        assert (await client.get(f"/secrets/secret/{uid}/{name}", headers=AUTH)).status == 200
    # a metadata read through the Vault-compatible API is held (and saved) too
    metadata = await client.get(f"/v1/secret/metadata/{uid}/db", headers=AUTH)
    assert metadata.status == 200
    await client.close()

    # Now the rules no longer cover .../gone: inspect says a start would discard it.
    doc["secrets"] = [r for r in doc["secrets"] if r["match"] != "**"]
    cfg = tmp_path / "inspect.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    assert main(["snapshot", "inspect", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"secret/{uid}/db" in out and "restore" in out
    assert f"secret/{uid}/gone" in out and "discard: no rule classifies" in out
    assert "ws-inspect" not in out
    # times as RFC 3339; the metadata document named as such, not as "?version=0"
    written = next(line for line in out.splitlines() if line.startswith("written:"))
    assert re.fullmatch(r"written:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", written)
    assert f"secret/{uid}/db (metadata)" in out
    assert "?version=0" not in out

    assert main(["snapshot", "inspect", "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["restorable"] == 2  # the value and its metadata; not the one out of rules
    assert report["written_at"].endswith("Z")
    held = {(e["path"], e["held_as"]) for e in report["entries"]}
    assert (f"secret/{uid}/db", "metadata") in held
    assert (f"secret/{uid}/db", "latest") in held
    assert "ws-inspect" not in json.dumps(report)


async def test_preloads_start_with_jitter_and_make_the_sidecar_ready(
    make_sidecar: SidecarFactory, aiohttp_client: Any, openbao: DevOpenBao, uid: str
):
    from datetime import datetime

    paths = [f"{uid}/pre{i}" for i in range(10)]
    for path in paths:
        openbao.kv_put(path, {"v": path})
    client, sidecar = await make_sidecar(
        rules=[
            *({"match": f"secret/{p}", "class": "standard", "preload": True} for p in paths),
            {"match": "**", "class": "standard"},
        ],
        startup_jitter="1500ms",
    )
    ops = await aiohttp_client(sidecar.ops)
    assert (await ops.get("/readyz")).status == 503  # nothing fetched yet
    for _ in range(40):
        await asyncio.sleep(0.1)
        if (await ops.get("/readyz")).status == 200:
            break
    assert (await ops.get("/readyz")).status == 200
    times = sorted(
        datetime.fromisoformat(r["time"][:26])
        for r in openbao.audit_records()
        if r["type"] == "request"
        and r["request"]["operation"] == "read"
        and r["request"]["path"].startswith(f"secret/data/{uid}/pre")
    )
    assert len(times) == 10
    # spread over the jitter window, not a burst (10 uniform draws in 1.5 s: span < 0.3 s
    # has a probability of about 5e-6)
    assert (times[-1] - times[0]).total_seconds() >= 0.3
    hit = await client.get(f"/secrets/secret/{paths[0]}", headers=AUTH)
    assert hit.headers["X-Sidecar-Cache"] == "HIT"


async def test_secret_ages_are_exported_per_class(
    make_sidecar: SidecarFactory, aiohttp_client: Any, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/a", {"v": "1"})
    openbao.kv_put(f"{uid}/payments/b", {"v": "2"})
    client, sidecar = await make_sidecar()
    for path in (f"{uid}/a", f"{uid}/payments/b"):
        assert (await client.get(f"/secrets/secret/{path}", headers=AUTH)).status == 200
    text = await (await (await aiohttp_client(sidecar.ops)).get("/metrics")).text()
    assert 'sidecar_secret_age_seconds_bucket{class="standard",le="1.0"} 1.0' in text
    assert 'sidecar_secret_age_seconds_gcount{class="payments"} 1.0' in text
    assert uid not in text


async def test_warm_start_remembers_mounts_and_confirms_each_secret_once(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, tmp_path: Path, uid: str
):
    mount = f"ws{uid}"
    openbao.enable_kv(mount, 2)
    openbao.kv_put("db", {"password": "ws-mounts-value"}, mount=mount)
    doc = _document(openbao, tmp_path, uid, _key_file(tmp_path))
    doc["secrets"] = [{"match": f"{mount}/db", "class": "standard", "preload": True}]
    doc["classes"] = {"standard": CLASSES["standard"]}  # refresh_interval 60 s: no refresh-ahead
    first, _ = await make_sidecar(document=doc)
    assert (await first.get(f"/secrets/{mount}/db", headers=AUTH)).status == 200
    await first.close()
    discoveries = openbao.count_requests(f"sys/internal/ui/mounts/{mount}/db")
    assert discoveries == 1

    second, _ = await make_sidecar(document=doc)
    for _ in range(40):  # the preload (startup_jitter 0) confirms the restored value
        await asyncio.sleep(0.05)
        if openbao.count_requests(f"{mount}/metadata/db"):
            break
    response = await second.get(f"/secrets/{mount}/db", headers=AUTH)
    assert response.status == 200
    assert openbao.count_requests(f"sys/internal/ui/mounts/{mount}/db") == discoveries
    # one confirmation for the secret: the metadata check (no value moved), no data read
    assert openbao.count_requests(f"{mount}/metadata/db") == 1
    assert openbao.count_requests(f"{mount}/data/db") == 1


async def test_a_version_1_snapshot_warms_a_start(tmp_path: Path):
    """Snapshots written before format version 2 still warm the cache and the mount table."""
    import shutil

    from prometheus_client import CollectorRegistry

    from sidecar.core.cache import SecretCache
    from sidecar.core.policy import OnOutage, Policy, Rule, SecretClass
    from sidecar.ops.metrics import Metrics
    from sidecar.ops.warmstart import Snapshotter
    from sidecar.settings import SnapshotSettings

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "snapshot-v1.bin"
    snapshot = tmp_path / "state" / "snapshot"
    snapshot.parent.mkdir()
    shutil.copy(fixture, snapshot)
    written = 1_700_000_001.0  # when the fixture was written
    standard = SecretClass("standard", "b", "o", 60.0, 3600.0, OnOutage.SERVE_STALE, "r", "r")

    class Mounts:
        def __init__(self) -> None:
            self.imported: list[dict[str, Any]] = []

        def export_mounts(self) -> list[dict[str, Any]]:
            return []

        def import_mounts(self, mounts: list[dict[str, Any]]) -> int:
            self.imported.extend(mounts)
            return len(mounts)

    class NoStore:
        async def start(self) -> None: ...
        async def close(self) -> None: ...
        async def read(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a warm start asks the store nothing at once")

        async def version_info(self, path: str) -> Any:
            raise AssertionError("a warm start asks the store nothing at once")

    cache = SecretCache(
        NoStore(), Policy([Rule("**", standard)]), wall=lambda: written + 30, clock=lambda: 5000.0
    )
    mounts = Mounts()
    snapshotter = Snapshotter(
        SnapshotSettings(path=snapshot),
        bytes(range(32)),
        cache,
        Metrics(CollectorRegistry()),
        wall=lambda: written + 30,
        mounts=mounts,
        confirm_within=60.0,
    )
    assert snapshotter.load() == 3
    assert cache.servable("secret/v1app/db") and cache.servable("secret/v1app/db", 2)
    assert cache.servable("kv1/v1app/legacy")
    stale = await cache.get("secret/v1app/db")
    assert (stale.stale, stale.entry.secret.data) == (True, {"password": "v1-fixture-pw"})
    assert [m["path"] for m in mounts.imported] == ["secret/"]
    await cache.close()


async def test_unsaved_changes_show_until_the_snapshot_is_written(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, tmp_path: Path, uid: str
):
    """What the "snapshot not written" alert waits on: changes the file does not have yet."""
    openbao.kv_put(f"{uid}/app", {"k": "unsaved-gauge-value"})
    document = _document(openbao, tmp_path, uid, _key_file(tmp_path))
    client, sidecar = await make_sidecar(document=document)
    assert metric(sidecar, "sidecar_snapshot_interval_seconds") == 30.0
    assert metric(sidecar, "sidecar_snapshot_unsaved_changes") == 1.0  # nothing saved yet
    assert sidecar.snapshotter is not None
    assert await sidecar.snapshotter.save()
    assert metric(sidecar, "sidecar_snapshot_unsaved_changes") == 0.0
    assert (await client.get(f"/secrets/secret/{uid}/app", headers=AUTH)).status == 200
    assert metric(sidecar, "sidecar_snapshot_unsaved_changes") == 1.0
    assert await sidecar.snapshotter.save()
    assert metric(sidecar, "sidecar_snapshot_unsaved_changes") == 0.0
