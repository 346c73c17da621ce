"""A broken or impersonated store (tests/hostile.py in front of a real OpenBao): replies of the
wrong shape, redirects elsewhere, huge and dripping replies, error texts that quote secrets.
Each is refused at the store boundary as 503 ``bad_response``/``timeout``: never served, never
a 500, never a dead background loop, never the token sent anywhere unconfigured."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import ADMIN, AUTH, SidecarFactory, config, metric
from tests.hostile import HostileStore, drip, huge, redirect, respond, rewrite


@pytest.fixture
def hostile(openbao: DevOpenBao) -> Iterator[HostileStore]:
    store = HostileStore(openbao.port).start()
    yield store
    store.stop()


def _set(document: Any, *keys_and_value: Any) -> Any:
    *keys, last, value = keys_and_value
    target = document
    for key in keys:
        target = target[key]
    target[last] = value
    return document


GARBAGE = ["a string", ["a", "list"], 42, 3.5, True]


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: type(g).__name__)
async def test_secret_data_of_the_wrong_shape_is_bad_response_and_harms_nothing(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    tmp_path: Path,
    garbage: Any,
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-shape"})
    openbao.kv_put(f"{uid}/ok", {"password": "pw-fine"})
    hostile.on(f"secret/data/{uid}/db", rewrite(lambda b: _set(b, "data", "data", garbage)))
    key_file = tmp_path / "snapshot.key"
    key_file.write_bytes(os.urandom(32))
    audit = tmp_path / "audit.log"
    client, sidecar = await make_sidecar(
        hostile.addr,
        snapshot={"path": str(tmp_path / "snap"), "key_file": str(key_file), "interval": "1s"},
        audit_log=str(audit),
    )
    assert (await client.get(f"/secrets/secret/{uid}/ok", headers=AUTH)).status == 200
    for _ in range(2):
        response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
        assert response.status == 503
        body = await response.json()
        assert (body["error"], body["reason"]) == ("secret_unavailable", "bad_response")
        assert "data.data" in body["detail"]
    vault = await client.get(f"/v1/secret/data/{uid}/db", headers=AUTH)
    assert vault.status == 503
    assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "bad_response"}) >= 2

    # Nothing else broke: the snapshot is written, purge works, shutdown is clean.
    assert sidecar.snapshotter is not None
    assert await sidecar.snapshotter.save(force=True)
    purge = await client.post("/admin/purge", headers=ADMIN, json={"all": True})
    assert purge.status == 200
    assert metric(sidecar, "sidecar_snapshot_errors_total", {"operation": "save"}) == 0
    await client.close()
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert events[-1] == "stopped"


@pytest.mark.parametrize("version", ["3", 3.5, True, -1, 0, None])
async def test_a_version_that_is_not_a_positive_whole_number_is_bad_response(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str, version
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-version"})
    hostile.on(
        f"secret/data/{uid}/db",
        rewrite(lambda b: _set(b, "data", "metadata", "version", version)),
    )
    client, _ = await make_sidecar(hostile.addr)
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    if version is None:  # absent: the version asked for (none: the latest) is all we know
        assert response.status == 200
        return
    assert response.status == 503, await response.text()
    assert (await response.json())["reason"] == "bad_response"


@pytest.mark.parametrize(
    ("where", "garbage"),
    [
        (("data", "metadata", "custom_metadata"), "text"),
        (("data", "metadata", "custom_metadata"), {"owner": 7}),
        (("data", "metadata", "created_time"), 12),
        (("data", "metadata"), ["x"]),
        (("data",), "text"),
    ],
)
async def test_other_fields_of_the_wrong_type_are_bad_response(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    where,
    garbage,
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-fields"})
    hostile.on(f"secret/data/{uid}/db", rewrite(lambda b: _set(b, *where, garbage)))
    client, _ = await make_sidecar(hostile.addr)
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 503
    assert b"pw-fields" not in await response.read()


async def test_metadata_and_mount_replies_of_the_wrong_shape(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-meta"})
    hostile.on(f"secret/metadata/{uid}/db", rewrite(lambda b: _set(b, "data", "versions", "x")))
    hostile.on(
        f"sys/internal/ui/mounts/secret/{uid}/odd",
        rewrite(lambda b: _set(b, "data", "options", ["v2"])),
    )
    client, _ = await make_sidecar(hostile.addr)
    odd = await client.get(f"/secrets/secret/{uid}/odd", headers=AUTH)  # the mount is new
    assert odd.status == 503
    assert (await odd.json())["reason"] == "bad_response"
    meta = await client.get(f"/v1/secret/metadata/{uid}/db", headers=AUTH)
    assert meta.status == 503


async def test_a_malformed_revocation_list_keeps_the_last_good_one_and_polling_goes_on(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str
):
    listing = f"{uid}/revocations"
    openbao.kv_put(f"{uid}/leaked", {"password": "pw-leaked"})
    openbao.kv_put(f"{uid}/later", {"password": "pw-later"})
    openbao.kv_put(listing, {"revoked": [{"path": f"secret/{uid}/leaked", "reason": "leak"}]})
    client, sidecar = await make_sidecar(
        hostile.addr, revocation_list=f"secret/{listing}", revocation_poll_interval="100ms"
    )
    await _until(lambda: sidecar.cache.controls.revocations() != [])
    leaked = await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)
    assert leaked.status == 410

    for garbage in (["a", "list"], {"revoked": "everything"}, {"revoked": [7, "x"]}):
        hostile.on(
            f"secret/data/{listing}", rewrite(lambda b, g=garbage: _set(b, "data", "data", g))
        )
        failures = metric(sidecar, "sidecar_revocation_polls_total", {"result": "failure"})
        await _until(
            lambda f=failures: (
                metric(sidecar, "sidecar_revocation_polls_total", {"result": "failure"}) >= f + 2
            )
        )
        # The last good list stays in force.
        assert (await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)).status == 410

    # The poller is alive: a good list published later is applied.
    hostile.clear()
    openbao.kv_put(listing, {"revoked": [{"path": f"secret/{uid}/later", "reason": "later"}]})
    await _until(
        lambda: [r["path"] for r in sidecar.cache.controls.revocations()] == [f"secret/{uid}/later"]
    )
    assert (await client.get(f"/secrets/secret/{uid}/later", headers=AUTH)).status == 410
    assert (await client.get(f"/secrets/secret/{uid}/leaked", headers=AUTH)).status == 200
    assert metric(sidecar, "sidecar_revocation_list_last_success_timestamp_seconds") > 0


async def test_a_redirect_elsewhere_is_not_followed_and_the_token_stays_home(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    aiohttp_server: Any,
):
    seen: list[dict[str, str]] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"data": {"data": {"password": "from-elsewhere"}}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    other = await aiohttp_server(app)
    openbao.kv_put(f"{uid}/db", {"password": "pw-redirect"})
    location = f"http://127.0.0.1:{other.port}/v1/secret/data/{uid}/db"
    hostile.on(f"secret/data/{uid}/db", redirect(location))
    client, _ = await make_sidecar(hostile.addr)
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 503
    body = await response.json()
    assert body["reason"] == "bad_response"
    assert "redirect" in body["detail"]
    assert seen == []  # never asked, never given the token


async def test_a_redirect_to_another_configured_node_is_followed_once(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    store_token_file: Path,
    tmp_path: Path,
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-standby"})
    # A standby that points at the active node, which is configured too.
    hostile.on(f"secret/data/{uid}/db", redirect(f"{openbao.addr}/v1/secret/data/{uid}/db"))
    document = config(hostile.addr, store_token_file, tmp_path)
    del document["backend"]["address"]
    document["backend"]["addresses"] = [hostile.addr, openbao.addr]
    client, _ = await make_sidecar(document=document)
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["data"] == {"password": "pw-standby"}
    assert openbao.count_requests(f"secret/data/{uid}/db") == 1
    assert hostile.seen.count(f"secret/data/{uid}/db") == 1


async def test_a_huge_reply_is_cut_at_the_size_limit(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str
):
    openbao.kv_put(f"{uid}/ok", {"password": "pw-small"})
    hostile.on(f"secret/data/{uid}/huge", huge(300 * 1024 * 1024))
    client, sidecar = await make_sidecar(hostile.addr, backend={"max_response_size": "1MiB"})
    assert (await client.get(f"/secrets/secret/{uid}/ok", headers=AUTH)).status == 200
    started = time.monotonic()
    for _ in range(3):
        response = await client.get(f"/secrets/secret/{uid}/huge", headers=AUTH)
        assert response.status == 503
        body = await response.json()
        assert (body["reason"], "1048576 bytes" in body["detail"]) == ("bad_response", True)
    assert time.monotonic() - started < 10
    await _until(lambda: len(hostile.sent) == 3)
    assert max(hostile.sent) < 40 * 1024 * 1024  # the reader stopped; no 300 MB moved
    assert hostile.cut == 3
    # A node that answers wrongly is not down: its circuit stays closed for the others.
    assert metric(sidecar, "sidecar_circuit_state", {"address": hostile.addr}) == 0
    await client.post("/admin/purge", headers=ADMIN, json={"all": True})
    assert (await client.get(f"/secrets/secret/{uid}/ok", headers=AUTH)).status == 200


@pytest.mark.parametrize("phase", ["headers", "body"])
async def test_dripping_replies_end_at_the_deadline_and_free_their_threads(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str, phase
):
    openbao.kv_put(f"{uid}/healthy", {"password": "pw-healthy"})
    hostile.on(f"secret/data/{uid}/drip", drip(0.2, phase))
    client, _ = await make_sidecar(
        hostile.addr,
        backend={
            "timeout": "1s",
            "max_concurrency": 2,
            "circuit_breaker": {"failure_threshold": 100},
        },
    )
    # Make the mount known first: the drips then occupy both worker threads.
    assert (await client.get(f"/secrets/secret/{uid}/healthy", headers=AUTH)).status == 200
    await client.post("/admin/purge", headers=ADMIN, json={"all": True})
    started = time.monotonic()
    drips = await asyncio.gather(
        *(
            client.get(f"/secrets/secret/{uid}/drip{i}", headers=AUTH)
            for i in range(2)  # two paths (one would be coalesced): every worker thread
        )
    )
    assert [r.status for r in drips] == [503, 503]
    assert {(await r.json())["reason"] for r in drips} == {"timeout"}
    assert time.monotonic() - started < 3
    # The threads are free at once: a healthy read needs one.
    healthy = await client.get(f"/secrets/secret/{uid}/healthy", headers=AUTH)
    assert healthy.status == 200, await healthy.text()
    assert time.monotonic() - started < 4
    # And the sidecar hung up on the drips (their sockets were shut down).
    await _until(lambda: hostile.cut >= 2)
    assert b"dripped" not in b"".join([await r.read() for r in drips])


async def test_store_error_texts_never_reach_callers(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    caplog: Any,
):
    secret_text = "connection to db failed for user=app password=hunter2-leaked"
    caplog.set_level(logging.WARNING)
    for status, path in ((500, "five"), (403, "four"), (400, "bad"), (429, "slow"), (502, "gw")):
        hostile.on(f"secret/data/{uid}/{path}", respond(status, {"errors": [secret_text]}))
    client, _ = await make_sidecar(hostile.addr)
    for path in ("five", "four", "bad", "slow", "gw"):
        for target in (f"/secrets/secret/{uid}/{path}", f"/v1/secret/data/{uid}/{path}"):
            response = await client.get(target, headers=AUTH)
            assert response.status in (400, 403, 503), (path, response.status)
            assert b"hunter2" not in await response.read(), (path, target)
    # ...but the log keeps the store's words for whoever investigates.
    assert any("hunter2" in str(getattr(r, "store_message", "")) for r in caplog.records)


async def test_a_failing_snapshot_write_is_counted_and_the_loop_goes_on(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from sidecar.ops import warmstart

    openbao.kv_put(f"{uid}/db", {"password": "pw-snapfail"})
    key_file = tmp_path / "snapshot.key"
    key_file.write_bytes(os.urandom(32))
    snapshot = tmp_path / "snap"
    real = warmstart.write_snapshot
    failures = {"left": 2}

    def flaky(*args: Any, **kwargs: Any) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise TypeError("not an OSError: something unexpected")
        return real(*args, **kwargs)

    monkeypatch.setattr(warmstart, "write_snapshot", flaky)
    client, sidecar = await make_sidecar(
        snapshot={"path": str(snapshot), "key_file": str(key_file), "interval": "200ms"}
    )
    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    await _until(snapshot.exists, within=10)
    assert metric(sidecar, "sidecar_snapshot_errors_total", {"operation": "save"}) == 2
    assert metric(sidecar, "sidecar_snapshot_last_success_timestamp_seconds") > 0


async def test_a_purge_whose_snapshot_cannot_be_rewritten_removes_the_snapshot(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A purged value must not come back after a restart, even when the disk is full."""
    from sidecar.ops import warmstart
    from sidecar.ops.snapshot import load_key, read_snapshot

    openbao.kv_put(f"{uid}/db", {"password": "pw-purged-for-good"})
    key_file = tmp_path / "snapshot.key"
    key_file.write_bytes(os.urandom(32))
    snapshot = tmp_path / "snap"
    audit = tmp_path / "audit.log"
    client, sidecar = await make_sidecar(
        snapshot={"path": str(snapshot), "key_file": str(key_file), "interval": "1h"},
        audit_log=str(audit),
    )
    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    assert sidecar.snapshotter is not None and await sidecar.snapshotter.save(force=True)
    paths = {e.secret.path for e in read_snapshot(snapshot, load_key(key_file)).entries}
    assert f"secret/{uid}/db" in paths

    def disk_full(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(warmstart, "write_snapshot", disk_full)
    purge = await client.post("/admin/purge", headers=ADMIN, json={"path": f"secret/{uid}/db"})
    assert purge.status == 200
    assert not snapshot.exists()
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert "snapshot_removed" in events


async def _until(condition: Any, within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("retry_after", ["inf", "-inf", "nan", "1e9", "99999999999999999999"])
async def test_an_absurd_retry_after_neither_breaks_answers_nor_holds_the_node_for_ever(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    hostile: HostileStore,
    uid: str,
    retry_after: str,
):
    openbao.kv_put(f"{uid}/ok", {"password": "pw-after"})
    hostile.on(
        f"secret/data/{uid}/slow",
        respond(429, {"errors": ["slow down"]}, {"Retry-After": retry_after}),
    )
    client, _ = await make_sidecar(hostile.addr)
    assert (await client.get(f"/secrets/secret/{uid}/ok", headers=AUTH)).status == 200
    for target in (f"/secrets/secret/{uid}/slow", f"/secrets/secret/{uid}/other"):
        response = await client.get(target, headers=AUTH)
        assert response.status == 503, await response.text()
        assert 1 <= int(response.headers["Retry-After"]) <= 300
    vault = await client.get(f"/v1/secret/data/{uid}/other", headers=AUTH)
    assert vault.status == 503 and 1 <= int(vault.headers["Retry-After"]) <= 300


async def test_redirects_elsewhere_do_not_open_the_nodes_circuit(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, hostile: HostileStore, uid: str
):
    openbao.kv_put(f"{uid}/ok", {"password": "pw-ok"})
    hostile.on(f"secret/data/{uid}/away", redirect("http://127.0.0.1:9/v1/elsewhere"))
    client, sidecar = await make_sidecar(hostile.addr)
    for _ in range(5):
        assert (await client.get(f"/secrets/secret/{uid}/away", headers=AUTH)).status == 503
        await client.post("/admin/purge", headers=ADMIN, json={"all": True})
    assert metric(sidecar, "sidecar_circuit_state", {"address": hostile.addr}) == 0
    assert (await client.get(f"/secrets/secret/{uid}/ok", headers=AUTH)).status == 200
