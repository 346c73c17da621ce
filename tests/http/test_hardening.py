"""Bad input gets a clear answer and one log line, never a 500 or a traceback; token files
rotate; what is logged leaves values out; a missing path costs the store one read, not one a
request. Against a real OpenBao."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.app import create_app
from sidecar.config import settings_from
from sidecar.core.clock import ManualClock
from sidecar.core.supervise import supervised
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import (
    ADMIN,
    AUTH,
    CALLER_TOKEN,
    SidecarFactory,
    SidecarTestServer,
    config,
    metric,
    raw_get,
    running,
)


@pytest.mark.parametrize(
    "target",
    [
        "/secrets/secret/{uid}/db?version=%C2%B2",  # ²
        "/secrets/secret/{uid}/db?version=%E2%91%A0",  # ①
        "/secrets/secret/{uid}/db?version=%D9%A3",  # Arabic-Indic three
        "/secrets/secret/{uid}/db?wait=30s&newer_than=%C2%B2",
        "/secrets/secret/{uid}/db?wait=%D9%A3s",
        "/v1/secret/data/{uid}/db?version=%C2%B2",
        "/v1/secret/data/{uid}/db?version=%D9%A3",
    ],
)
async def test_digits_from_other_scripts_are_400_not_500(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, target: str, caplog: Any
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-digits"})
    client, _ = await make_sidecar()
    response = await raw_get(client, target.format(uid=uid))
    assert response.status == 400, await response.text()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("target", ["/verify/secret/x/db", "/admin/purge"])
async def test_bodies_over_the_limit_are_413_chunked_or_not(
    make_sidecar: SidecarFactory, target: str, caplog: Any
):
    client, _ = await make_sidecar()
    headers = {**(ADMIN if target.startswith("/admin") else AUTH), "Content-Type": "json"}
    big = b'{"field": "' + b"x" * 70_000 + b'"}'

    async def chunks() -> Any:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    chunked = await client.post(target, headers=headers, data=chunks())
    assert chunked.status == 413, await chunked.text()
    assert (await chunked.json())["error"] == "request_too_large"
    declared = await client.post(target, headers=headers, data=big)
    assert declared.status == 413
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_dripping_body_is_cut_at_the_header_timeout(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar(http={"header_timeout": "500ms"})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST /verify/secret/{uid}/db HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: {CALLER_TOKEN}\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 400 " in status_line
    writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /secrets/secret/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2"
        b"\r\n\r\nab",
        b"POST /verify/secret/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /secrets/secret/x HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: a\r\n b\r\n\r\n",
        b"GET /secrets/secret/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity"
        b"\r\n\r\n",
        b"GET /secrets/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["duplicate-content-length", "cl-and-te", "obs-fold", "te-list", "nul-in-target"],
)
async def test_smuggling_shapes_are_400_with_one_warning_and_no_traceback(
    make_sidecar: SidecarFactory, request_bytes: bytes, caplog: Any
):
    client, _ = await make_sidecar()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request_bytes)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert b" 400 " in status_line
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert all(r.levelno <= logging.WARNING and not r.exc_info for r in records), records


async def test_the_access_log_names_query_parameters_but_not_their_values(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str, caplog: Any
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-access"})
    caplog.set_level(logging.INFO, logger="sidecar.access")
    document = config(
        openbao.addr, store_token_file, tmp_path, metrics_listen="127.0.0.1:0", access_log=True
    )
    async with running(document) as (_, api, _), aiohttp.ClientSession() as session:
        url = f"{api}/secrets/secret/{uid}/db?field=password&version=1"
        async with session.get(url, headers=AUTH) as response:
            assert await response.read() == b"pw-access"
    [record] = [r for r in caplog.records if r.name == "sidecar.access"]
    assert record.query == ["field", "version"]  # type: ignore[attr-defined]
    assert record.path == f"/secrets/secret/{uid}/db"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    logged = json.dumps({k: v for k, v in record.__dict__.items() if k != "args"}, default=str)
    assert "password" not in logged and CALLER_TOKEN not in logged


async def test_a_missing_path_costs_the_store_one_read_per_negative_ttl(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    client, sidecar = await make_sidecar()
    for _ in range(30):
        response = await client.get(f"/secrets/secret/{uid}/missing", headers=AUTH)
        assert response.status == 404
    assert openbao.count_requests(f"secret/data/{uid}/missing") == 1
    assert (
        metric(sidecar, "sidecar_cache_lookups_total", {"outcome": "negative", "class": "standard"})
        == 29
    )
    # The secret appears; a purge makes the sidecar look again at once.
    openbao.kv_put(f"{uid}/missing", {"password": "pw-now-here"})
    assert (await client.get(f"/secrets/secret/{uid}/missing", headers=AUTH)).status == 404
    purge = await client.post("/admin/purge", headers=ADMIN, json={"path": f"secret/{uid}/missing"})
    assert purge.status == 200
    assert (await client.get(f"/secrets/secret/{uid}/missing", headers=AUTH)).status == 200
    assert openbao.count_requests(f"secret/data/{uid}/missing") == 2


async def test_a_flood_of_distinct_missing_paths_logs_a_few_lines(
    make_sidecar: SidecarFactory, uid: str, caplog: Any
):
    caplog.set_level(logging.WARNING, logger="sidecar.cache")
    client, _ = await make_sidecar(backend={"rate_limit": {"requests_per_second": 10_000}})
    for i in range(60):
        assert (await client.get(f"/secrets/secret/{uid}/m{i}", headers=AUTH)).status == 404
    lines = [r for r in caplog.records if r.getMessage() == "store fetch failed"]
    assert 1 <= len(lines) <= 10


# -- token files ---------------------------------------------------------------------------


async def _served(
    openbao: DevOpenBao,
    tmp_path: Path,
    aiohttp_client: Any,
    clock: ManualClock | None = None,
    **overrides: Any,
):
    token_file = tmp_path / "store-token"
    token_file.write_text(openbao.root_token)
    settings = settings_from(config(openbao.addr, token_file, tmp_path, **overrides))
    sidecar = create_app(settings, registry=CollectorRegistry(), clock=clock or ManualClock())
    client: TestClient[Any, Any] = await aiohttp_client(SidecarTestServer(sidecar.api))
    return client, sidecar


async def test_a_rotated_caller_token_works_at_once_and_the_old_one_stops_after_grace(
    openbao: DevOpenBao, uid: str, tmp_path: Path, aiohttp_client: Any, clock: ManualClock
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-rotate-token"})
    audit = tmp_path / "audit.log"
    client, sidecar = await _served(
        openbao, tmp_path, aiohttp_client, clock, token_rotation_grace="1s", audit_log=str(audit)
    )
    path = f"/secrets/secret/{uid}/db"
    old = (tmp_path / "caller-token").read_text().strip()
    assert (await client.get(path, headers={"X-Sidecar-Token": old})).status == 200

    new = "rotated-caller-token-" + uid
    (tmp_path / "caller-token").write_text(new + "\n")
    for _ in range(60):  # the watcher looks once a second
        if (await client.get(path, headers={"X-Sidecar-Token": new})).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get(path, headers={"X-Sidecar-Token": new})).status == 200
    assert (await client.get(path, headers={"X-Sidecar-Token": old})).status == 200  # grace
    clock.advance(1.1)
    assert (await client.get(path, headers={"X-Sidecar-Token": old})).status == 403
    assert (await client.get(path, headers={"X-Sidecar-Token": new})).status == 200

    # A broken file keeps the current token.
    (tmp_path / "caller-token").write_text("short")
    await asyncio.sleep(1.3)
    assert (await client.get(path, headers={"X-Sidecar-Token": new})).status == 200
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["setting"] for r in records if r["event"] == "token_rotated"] == ["caller_token_file"]
    assert new not in audit.read_text() and old not in audit.read_text()
    del sidecar


async def test_token_files_are_created_private_and_open_ones_are_reported(
    openbao: DevOpenBao, tmp_path: Path, aiohttp_client: Any, caplog: Any
):
    caplog.set_level(logging.WARNING, logger="sidecar.callers")
    overrides = {
        "caller_token_file": str(tmp_path / "caller" / "token"),
        "admin_token_file": str(tmp_path / "admin" / "token"),
    }
    old_umask = os.umask(0o022)
    try:
        await _served(openbao, tmp_path, aiohttp_client, **overrides)
    finally:
        os.umask(old_umask)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "admin") == 0o700
    assert mode(tmp_path / "admin" / "token") == 0o600
    assert mode(tmp_path / "caller") == 0o750
    assert mode(tmp_path / "caller" / "token") == 0o640
    assert not [r for r in caplog.records if "readable by more" in r.getMessage()]

    (tmp_path / "admin" / "token").chmod(0o644)
    await _served(openbao, tmp_path, aiohttp_client, **overrides)
    warned = [r for r in caplog.records if "readable by more" in r.getMessage()]
    assert [r.key for r in warned] == ["admin_token_file"]  # type: ignore[attr-defined]


# -- background loops ------------------------------------------------------------------------


async def test_a_failing_background_loop_is_logged_counted_and_restarted(caplog: Any):
    runs: list[int] = []
    errors: list[str] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError("boom")
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervised("refresh", loop, errors.append, base=0.01, cap=0.02))
    for _ in range(100):
        if len(runs) == 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(runs) == 3
    assert errors == ["refresh", "refresh"]
    failed = [r for r in caplog.records if r.getMessage().startswith("background task failed")]
    assert len(failed) == 2 and failed[0].exc_info is not None


async def test_malformed_requests_never_copy_a_token_or_a_query_value_into_the_log(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, caplog: Any
):
    caplog.set_level(logging.DEBUG)
    document = config(
        openbao.addr, store_token_file, tmp_path, metrics_listen="127.0.0.1:0", access_log=True
    )
    async with running(document) as (_, api, _):
        host, port = api.removeprefix("http://").split(":")
        for request in (
            f"GET /secrets/secret/a/db HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: {CALLER_TOKEN}"
            "\x01\r\n\r\n".encode(),
            b"GET /secrets/secret/a/db?x=hunter2-query-value HTTP/1.1 \x01\r\nHost: x\r\n\r\n",
            f"GET /secrets/secret/a/db?wait=hunter2-query-value HTTP/1.1\r\nHost: x\r\n"
            f"X-Sidecar-Token: {CALLER_TOKEN}\r\n\r\n".encode(),
        ):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            assert b" 400 " in await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        await asyncio.sleep(0.2)
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    assert "malformed HTTP request refused" in logged
    assert CALLER_TOKEN not in logged and "hunter2" not in logged


async def test_passthrough_bodies_have_a_deadline_and_own_tokens_are_never_forwarded(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    from tests.conftest import ADMIN_TOKEN

    client, _ = await make_sidecar(
        vault_api={"passthrough": True}, http={"header_timeout": "500ms"}
    )
    # A body that drips in is cut at the header timeout.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST /v1/secret/data/{uid}/x HTTP/1.1\r\nHost: x\r\nX-Vault-Token: someone-else\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    assert b" 400 " in await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    # The admin token is never forwarded to the store as "the caller's own".
    before = openbao.count_requests(f"secret/data/{uid}/x", None)
    refused = await client.post(
        f"/v1/secret/data/{uid}/x",
        headers={**AUTH, "X-Vault-Token": ADMIN_TOKEN},
        json={"data": {"v": 1}},
    )
    assert refused.status == 403
    assert openbao.count_requests(f"secret/data/{uid}/x", None) == before


async def test_a_write_passed_through_never_makes_the_sidecar_ask_about_its_path(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    client, _ = await make_sidecar(
        vault_api={"passthrough": True},
        rules=[{"match": f"secret/{uid}/app/**", "class": "standard"}],
    )
    for target in (f"/v1/cubbyhole/{uid}", f"/v1/secret/data/{uid}/other"):
        response = await client.post(
            target, headers={"X-Vault-Token": openbao.root_token}, json={"data": {"v": "w"}}
        )
        assert response.status in (200, 204), await response.text()
    asked = [
        r["request"]["path"]
        for r in openbao.audit_records()
        if r.get("type") == "request"
        and r["request"]["path"].startswith("sys/internal/ui/mounts/")
        and uid in r["request"]["path"]
    ]
    assert asked == []


async def test_rotations_in_quick_succession_keep_each_replaced_token_for_its_grace(
    openbao: DevOpenBao, tmp_path: Path, aiohttp_client: Any
):
    from sidecar.http.tokens import CallerCheck

    now = [0.0]
    check = CallerCheck("token-a-0123456789", clock=lambda: now[0])
    check.rotate("token-b-0123456789", grace=30)
    now[0] = 1
    check.rotate("token-c-0123456789", grace=30)
    assert check("token-a-0123456789") and check("token-b-0123456789")
    now[0] = 30.5
    assert not check("token-a-0123456789") and check("token-b-0123456789")
    now[0] = 31.5
    assert not check("token-b-0123456789") and check("token-c-0123456789")


async def test_the_caller_and_admin_tokens_must_differ_at_start_and_after_rotations(
    openbao: DevOpenBao, uid: str, tmp_path: Path, aiohttp_client: Any, caplog: Any
):
    from sidecar.settings import ConfigError

    same = "the-very-same-token-" + uid
    (tmp_path / "caller-token").write_text(same)
    (tmp_path / "admin-token").write_text(same)
    (tmp_path / "admin-token").chmod(0o600)
    with pytest.raises(ConfigError, match="admin_token_file: holds the same token"):
        await _served(openbao, tmp_path, aiohttp_client)

    (tmp_path / "admin-token").write_text("a-different-admin-token-" + uid)
    client, sidecar = await _served(openbao, tmp_path, aiohttp_client)
    admin = (tmp_path / "admin-token").read_text().strip()
    (tmp_path / "caller-token").write_text(admin)  # a mistake, or an attempt
    [caller_file] = [f for f in sidecar.token_files if f.path.name == "caller-token"]
    assert caller_file.poll() is False
    status = await client.get("/admin/status", headers={"X-Sidecar-Token": admin})
    assert status.status == 200
    read = await client.get(f"/secrets/secret/{uid}/x", headers={"X-Sidecar-Token": admin})
    assert read.status == 403  # the admin token did not become a caller token
    assert any("must differ" in r.getMessage() for r in caplog.records)
