"""Leased credentials (OpenBao's database secrets engine against a real, throwaway PostgreSQL):
one lease per path shared by every caller, concurrent first reads coalesced into one store
request and one database user, every credential handed out able to log in, and never one
past its lease's end, not even while the store is cut off."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import psycopg
import pytest

from sidecar.dev.openbao import DevOpenBao
from sidecar.dev.postgres import ThrowawayPostgres
from sidecar.ops.evidence import build_report
from tests.conftest import (
    ADMIN,
    AUTH,
    CALLER_TOKEN,
    CLASSES,
    SidecarFactory,
    config,
    database_role,
    metric,
    raw_request,
    running,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(120)

LEASED = {
    "standard": CLASSES["standard"],
    "database": {**CLASSES["standard"], "refresh_interval": "1h", "max_cache_age": "1h"},
}


def _rules(role: str) -> list[dict[str, str]]:
    return [
        {"match": f"database/creds/{role}", "class": "database"},
        {"match": "**", "class": "standard"},
    ]


def _role(openbao: DevOpenBao, uid: str, *, ttl: str, max_ttl: str) -> tuple[str, str]:
    """A database role for this test and the path that issues its credentials. Its name is 8
    characters: the store's user names keep 8 of the role's (``v-token-<role>-...``)."""
    role = f"r{uid[1:8]}"
    return role, database_role(openbao, role, ttl=ttl, max_ttl=max_ttl)


def _login(database: ThrowawayPostgres, credential: dict[str, Any]) -> str:
    url = (
        f"postgresql://{credential['username']}:{credential['password']}@127.0.0.1:"
        f"{database.port}/postgres?sslmode=disable"
    )
    with psycopg.connect(url, connect_timeout=5) as connection:
        row = connection.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def _ends(envelope: dict[str, Any]) -> float:
    return datetime.fromisoformat(envelope["lease_expires_at"].replace("Z", "+00:00")).timestamp()


async def test_concurrent_first_reads_make_one_store_request_and_one_database_user(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, postgres: ThrowawayPostgres, uid: str
):
    role, path = _role(openbao, uid, ttl="1m", max_ttl="5m")
    client, _ = await make_sidecar(classes=LEASED, rules=_rules(role))
    replies = await asyncio.gather(
        *(client.get(f"/secrets/{path}", headers=AUTH) for _ in range(200))
    )
    assert {r.status for r in replies} == {200}
    envelopes = [await r.json() for r in replies]
    assert len({e["kid"] for e in envelopes}) == 1  # one lease, shared
    assert envelopes[0]["kid"].startswith(f"{path}#lease-")
    assert envelopes[0]["class"] == "database" and envelopes[0]["lease_duration"] == 60
    assert openbao.count_requests(path) == 1  # the store's own audit log
    users = postgres.login_roles(f"v-token-{role}-")
    assert len(users) == 1
    assert _login(postgres, envelopes[0]["data"]) == users[0]
    # the lease is in the store and is the sidecar's: the value is in no log line
    assert envelopes[0]["data"]["password"] not in openbao.server_log.read_text()


async def test_a_lease_in_use_is_renewed_then_replaced_near_max_ttl_and_every_login_works(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    tmp_path: Path,
):
    role, path = _role(openbao, uid, ttl="3s", max_ttl="6s")
    renewals = openbao.count_requests("sys/leases/renew", "update")
    audit = tmp_path / "audit.log"
    client, sidecar = await make_sidecar(classes=LEASED, rules=_rules(role), audit_log=str(audit))
    kids: list[str] = []
    most = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # an app that reads its credential before each connect
        reply = await client.get(f"/secrets/{path}", headers=AUTH)
        assert reply.status == 200
        envelope = await reply.json()
        assert _ends(envelope) - time.time() > 0.2, "a credential at the end of its lease"
        _login(postgres, envelope["data"])  # no failed login, ever
        # the store drops each user when its lease ends: the current one and the one before
        most = max(most, len(postgres.login_roles(f"v-token-{role}-")))
        if not kids or kids[-1] != envelope["kid"]:
            kids.append(envelope["kid"])
        await asyncio.sleep(0.25)
    assert most <= 2, most
    # 3 s leases renewed for as long again while the store grants it; near the 6 s max_ttl
    # (granted less than asked) a new credential is issued while the old one still works:
    # over 10 s, renewals and at least two re-issues
    assert openbao.count_requests("sys/leases/renew", "update") > renewals
    assert 3 <= len(kids) <= 5, kids
    # one store read per credential; refresh-ahead may have made the next one already
    assert len(kids) <= openbao.count_requests(path) <= len(kids) + 1

    # evidence: the metrics, and the audit log as `sidecar evidence` reads it (kids, no values)
    events = {"class": "database"}
    assert metric(sidecar, "sidecar_lease_events_total", {**events, "event": "issued"}) == 1
    assert metric(sidecar, "sidecar_lease_events_total", {**events, "event": "renewed"}) >= 1
    assert metric(sidecar, "sidecar_lease_events_total", {**events, "event": "reissued"}) >= 1
    assert metric(sidecar, "sidecar_leases_active", {"class": "database"}) == 1
    left = metric(sidecar, "sidecar_lease_remaining_seconds_gsum", {"class": "database"})
    assert 0 < left <= 3
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    report = build_report(records)["paths"][path]["leases"]
    assert report["issued"]["count"] == 1 and report["renewed"]["count"] >= 1
    assert report["reissued"]["last_kid"].startswith(f"{path}#lease-")  # by kid, no value
    assert envelope["data"]["password"] not in audit.read_text()


async def test_with_the_store_cut_off_a_credential_is_served_until_its_lease_ends_never_after(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    tmp_path: Path,
):
    role, path = _role(openbao, uid, ttl="4s", max_ttl="20s")
    proxy = FaultProxy(openbao.port).start()
    audit = tmp_path / "audit.log"
    try:
        client, sidecar = await make_sidecar(
            proxy.addr,
            classes=LEASED,
            rules=_rules(role),
            backend={"timeout": "500ms", "backoff": {"base": "100ms", "cap": "500ms"}},
            audit_log=str(audit),
        )
        first = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
        proxy.set("blackhole")
        proxy.cut_all()
        served_until = 0.0
        statuses: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            reply = await client.get(f"/secrets/{path}", headers=AUTH)
            body = await reply.json()
            if reply.status == 200:
                assert body["kid"] == first["kid"]  # the one lease, while it lasts
                assert time.time() < _ends(first), "served past its lease's end"
                _login(postgres, body["data"])
                served_until = time.time()
            statuses.append((reply.status, body.get("reason")))
            await asyncio.sleep(0.2)
        assert statuses[0][0] == 200 and served_until > 0
        # then, with the store still unreachable: 503 lease_expired, never the dead credential
        assert statuses[-1] == (503, "lease_expired"), statuses[-5:]
        assert set(statuses) <= {(200, None), (503, "lease_expired")}, set(statuses)
        # told once, with the credential's kid: evidence of a lease lost to the outage
        ended = [
            r
            for r in map(json.loads, audit.read_text().splitlines())
            if r["event"] == "lease_expired"
        ]
        assert [(r["path"], r["kid"]) for r in ended] == [(path, first["kid"])]
        labels = {"class": "database", "event": "expired"}
        assert metric(sidecar, "sidecar_lease_events_total", labels) == 1
    finally:
        proxy.stop()


async def test_a_fail_closed_classs_credentials_are_never_written_to_the_snapshot(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
):
    role, path = _role(openbao, uid, ttl="1m", max_ttl="5m")
    openbao.kv_put(f"{uid}/kv", {"v": "kept"})
    closed = {**LEASED, "database": {**CLASSES["payments"], "max_cache_age": "1h"}}
    client, sidecar = await make_sidecar(classes=closed, rules=_rules(role))
    assert (await client.get(f"/secrets/{path}", headers=AUTH)).status == 200
    assert (await client.get(f"/secrets/secret/{uid}/kv", headers=AUTH)).status == 200
    written = {key[0] for key, _ in sidecar.cache.export()}  # what the snapshot writes
    assert written == {f"secret/{uid}/kv"}  # as for KV: fail_closed values never touch disk


async def test_the_vault_compatible_api_serves_the_shared_lease_in_vaults_shape(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, postgres: ThrowawayPostgres, uid: str
):
    role, path = _role(openbao, uid, ttl="1m", max_ttl="5m")
    client, _ = await make_sidecar(classes=LEASED, rules=_rules(role))
    url = f"http://{client.host}:{client.port}"

    def generate() -> dict[str, Any]:  # hvac, as an app would ask Vault for its credentials
        vault = hvac.Client(url=url, token=CALLER_TOKEN)
        return dict(vault.secrets.database.generate_credentials(name=role))

    first, second = await asyncio.gather(*(asyncio.to_thread(generate) for _ in range(2)))
    assert first["lease_id"].startswith(f"{path}/") and first["lease_id"] == second["lease_id"]
    # what is left of it (the lease less its margin), and not for the app to renew or revoke
    assert 50 <= first["lease_duration"] <= 54 and first["renewable"] is False
    assert first["data"] == second["data"]
    assert _login(postgres, first["data"]) == first["data"]["username"]
    native = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
    assert native["data"] == first["data"]  # one credential, whichever API asks
    assert openbao.count_requests(path) == 1
    refused = await client.get(f"/v1/{path}?ttl=5m", headers=AUTH)
    assert refused.status == 400  # no query on a leased read


async def test_a_restart_within_the_lease_reuses_the_credential_from_the_snapshot(
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    tmp_path: Path,
    store_token_file: Path,
):
    role, path = _role(openbao, uid, ttl="1m", max_ttl="5m")
    key = tmp_path / "snapshot.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    document = config(
        openbao.addr,
        store_token_file,
        tmp_path,
        classes=LEASED,
        rules=_rules(role),
        snapshot={"path": str(tmp_path / "snapshot"), "key_file": str(key)},
        startup_jitter="0s",
    )
    renewals = openbao.count_requests("sys/leases/renew", "update")
    headers = {"X-Sidecar-Token": CALLER_TOKEN}
    async with (
        running(document) as (_, api, _ops),
        aiohttp.ClientSession() as session,
        session.get(f"{api}/secrets/{path}", headers=headers) as reply,
    ):
        before = await reply.json()
    assert before["data"]["password"] not in (tmp_path / "snapshot").read_bytes().decode(
        "latin-1"
    )  # encrypted on disk
    async with running(document) as (_, api, _ops), aiohttp.ClientSession() as session:
        async with session.get(f"{api}/secrets/{path}", headers=headers) as reply:
            after = await reply.json()
        assert after["kid"] == before["kid"] and after["data"] == before["data"]
        deadline = time.monotonic() + 10  # restored: confirmed by renewing its lease
        while openbao.count_requests("sys/leases/renew", "update") == renewals:
            assert time.monotonic() < deadline, "the restored lease was never renewed"
            await asyncio.sleep(0.1)
    assert openbao.count_requests(path) == 1  # no second credential...
    assert len(postgres.login_roles(f"v-token-{role}-")) == 1  # ...and no second user
    assert _login(postgres, after["data"]) == after["data"]["username"]


async def test_a_purge_of_a_leased_path_revokes_its_lease_and_drops_the_database_user(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    tmp_path: Path,
):
    role, path = _role(openbao, uid, ttl="1h", max_ttl="2h")
    audit = tmp_path / "audit.log"
    client, _ = await make_sidecar(classes=LEASED, rules=_rules(role), audit_log=str(audit))
    leaked = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
    assert _login(postgres, leaked["data"]) == leaked["data"]["username"]
    purged = await client.post("/admin/purge", headers=ADMIN, json={"path": path})
    assert purged.status == 200 and (await purged.json())["purged"] == 1
    # revoked in the store at once, not at the end of its hour-long lease: the user is gone
    assert openbao.count_requests("sys/leases/revoke", "update") >= 1
    assert postgres.login_roles(f"v-token-{role}-") == []
    with pytest.raises(psycopg.OperationalError):
        _login(postgres, leaked["data"])
    record = [json.loads(line) for line in audit.read_text().splitlines()][-1]
    assert record["event"] == "purged" and record["leases_revoked"] == 1
    fresh = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
    assert fresh["kid"] != leaked["kid"]  # the next read gets a new credential
    assert _login(postgres, fresh["data"]) == fresh["data"]["username"]


async def test_leases_are_revoked_at_shutdown_only_when_asked(
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    tmp_path: Path,
    store_token_file: Path,
):
    role, path = _role(openbao, uid, ttl="1h", max_ttl="2h")
    names: dict[bool, str] = {}
    for revoke in (False, True):
        document = config(
            openbao.addr,
            store_token_file,
            tmp_path,
            classes=LEASED,
            rules=_rules(role),
            revoke_leases_on_shutdown=revoke,
        )
        async with (
            running(document) as (_, api, _ops),
            aiohttp.ClientSession() as session,
            session.get(f"{api}/secrets/{path}", headers={"X-Sidecar-Token": CALLER_TOKEN}) as r,
        ):
            names[revoke] = (await r.json())["data"]["username"]
    # by default a stopping sidecar leaves its credential alive (a restarting pod keeps its
    # connections); asked to, it revokes its lease, and the store drops that user
    assert postgres.login_roles(f"v-token-{role}-") == [names[False]]


async def test_during_the_overlap_the_replaced_credential_is_served_as_previous(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, postgres: ThrowawayPostgres, uid: str
):
    role, path = _role(openbao, uid, ttl="10s", max_ttl="10s")  # no renewal: a new one
    overlapping = {**LEASED, "database": {**LEASED["database"], "overlap": "1h"}}
    client, _ = await make_sidecar(classes=overlapping, rules=_rules(role))
    none_yet = await client.get(f"/secrets/{path}?version=previous", headers=AUTH)
    assert none_yet.status == 410 and (await none_yet.json())["error"] == "version_retired"
    first = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
    deadline = time.monotonic() + 15
    while True:  # read on: near its end, the credential is replaced ahead of time
        current = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
        if current["kid"] != first["kid"]:
            break
        assert time.monotonic() < deadline, "never replaced"
        await asyncio.sleep(0.2)
    previous = await client.get(f"/secrets/{path}?version=previous", headers=AUTH)
    assert previous.status == 200
    old = await previous.json()
    assert old["kid"] == first["kid"] and old["data"] == first["data"]
    _login(postgres, old["data"])  # both work during the overlap
    _login(postgres, current["data"])
    await asyncio.sleep(max(0.0, _ends(first) - time.time()))
    gone = await client.get(f"/secrets/{path}?version=previous", headers=AUTH)
    assert gone.status == 410  # never past its lease, whatever the overlap says


async def test_a_leased_path_is_guarded_like_any_other_and_no_log_holds_the_credential(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    postgres: ThrowawayPostgres,
    uid: str,
    caplog: pytest.LogCaptureFixture,
):
    role, path = _role(openbao, uid, ttl="1m", max_ttl="5m")
    client, _ = await make_sidecar(classes=LEASED, rules=_rules(role))
    caplog.set_level("DEBUG")
    for target, headers, status in (
        (f"/%73ecrets/{path}", AUTH, 400),  # the endpoint percent-encoded
        (f"/secrets/{path.replace('/', '%252F')}", AUTH, 400),  # still encoded after decoding
        (f"http://{client.host}:{client.port}/secrets/{path}", AUTH, 400),  # absolute-form
        (f"/secrets/{path}", ADMIN, 403),  # the other token
        (f"/v1/{path}", ADMIN, 403),
        (f"/secrets/{path}", {}, 401),
    ):
        answered, _, _ = await raw_request(client, "GET", target, headers)
        assert answered == status, (target, answered)
    assert openbao.count_requests(path) == 0  # refused before any credential was made
    credential = await (await client.get(f"/secrets/{path}", headers=AUTH)).json()
    # one decoding of the secret's own path is the same path, decided on (and dispatched) as
    # such: the same rule, the same shared credential
    _, _, body = await raw_request(client, "GET", f"/secrets/{path.replace('/', '%2F')}", AUTH)
    assert json.loads(body)["kid"] == credential["kid"]
    await client.get(f"/v1/{path}", headers=AUTH)
    assert openbao.count_requests(path) == 1
    assert credential["data"]["password"] not in caplog.text
    assert credential["data"]["username"] not in caplog.text
