"""The Vault-compatible API, proven with clients nobody here wrote: hvac and the real bao CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import hvac
import pytest
from aiohttp.test_utils import TestClient

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao, bao_binary
from tests.conftest import (
    ADMIN_TOKEN,
    AUTH,
    CALLER_TOKEN,
    CLASSES,
    SidecarFactory,
    config,
    raw_request,
)

VAULT = {"X-Vault-Token": CALLER_TOKEN}


def _url(client: TestClient[Any, Any]) -> str:
    return f"http://{client.host}:{client.port}"


def _hvac(url: str, token: str) -> hvac.Client:
    return hvac.Client(url=url, token=token)


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """hvac and the CLI block: run them off the loop that serves the sidecar."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def bao(addr: str, token: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(BAO_ADDR=addr, BAO_TOKEN=token, HOME=str(home), NO_COLOR="1")
    return subprocess.run(
        [bao_binary(), *args], capture_output=True, text=True, env=env, timeout=30
    )


async def test_hvac_reads_through_the_sidecar_and_hits_the_cache(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"username": "app", "password": "hv-pw-1"})
    openbao.kv_put(f"{uid}/db", {"username": "app", "password": "hv-pw-2"})
    openbao.kv1_put(f"{uid}/legacy", {"api_key": "hv-legacy"})
    client, _ = await make_sidecar()
    via_sidecar = _hvac(_url(client), CALLER_TOKEN)
    direct = _hvac(openbao.addr, openbao.root_token)

    def read_all(c: hvac.Client) -> tuple[Any, Any, Any, Any]:
        latest = c.secrets.kv.v2.read_secret_version(f"{uid}/db", raise_on_deleted_version=True)
        first = c.secrets.kv.v2.read_secret_version(
            f"{uid}/db", version=1, raise_on_deleted_version=True
        )
        meta = c.secrets.kv.v2.read_secret_metadata(f"{uid}/db")
        legacy = c.secrets.kv.v1.read_secret(f"{uid}/legacy", mount_point="kv1")
        return latest, first, meta, legacy

    mine = await _in_thread(read_all, via_sidecar)
    theirs = await _in_thread(read_all, direct)
    for ours, store in zip(mine, theirs, strict=True):
        assert ours["data"] == store["data"]
        assert set(ours) == set(store)  # request_id, lease_id, renewable, ... wrap_info, auth
    assert mine[0]["data"]["data"]["password"] == "hv-pw-2"
    assert mine[1]["data"]["data"]["password"] == "hv-pw-1"
    assert mine[2]["data"]["current_version"] == 2
    assert mine[3]["data"] == {"api_key": "hv-legacy"}

    reads = openbao.count_requests(f"secret/data/{uid}/db")
    again = await _in_thread(
        via_sidecar.secrets.kv.v2.read_secret_version, f"{uid}/db", raise_on_deleted_version=True
    )
    assert again["data"]["data"]["password"] == "hv-pw-2"
    assert openbao.count_requests(f"secret/data/{uid}/db") == reads  # a hit
    response = await client.get(f"/v1/secret/data/{uid}/db", headers=VAULT)
    assert response.headers["X-Cache"] == "HIT"
    assert int(response.headers["Age"]) >= 0


async def test_bao_cli_prints_the_same_through_the_sidecar(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/app", {"username": "app", "password": "cli-pw-1"})
    openbao.kv_put(f"{uid}/app", {"username": "app", "password": "cli-pw-2"})
    openbao.kv1_put(f"{uid}/old", {"api_key": "cli-legacy"})
    client, _ = await make_sidecar()
    commands = [
        ("kv", "get", f"secret/{uid}/app"),
        ("kv", "get", "-field=password", f"secret/{uid}/app"),
        ("kv", "get", "-version=1", f"secret/{uid}/app"),
        ("kv", "get", "-format=json", "-field=data", f"secret/{uid}/app"),
        ("kv", "metadata", "get", f"secret/{uid}/app"),
        ("kv", "get", f"kv1/{uid}/old"),
        ("kv", "get", f"secret/{uid}/missing"),
    ]
    for command in commands:
        direct = await _in_thread(bao, openbao.addr, openbao.root_token, *command, home=tmp_path)
        mine = await _in_thread(bao, _url(client), CALLER_TOKEN, *command, home=tmp_path)
        assert (mine.returncode, mine.stdout, mine.stderr) == (
            direct.returncode,
            direct.stdout,
            direct.stderr,
        ), command
    assert "cli-pw-2" in mine.stdout or "No value found" in mine.stdout + mine.stderr


async def test_store_down_hvac_and_cli_keep_working_within_max_age(
    make_sidecar: SidecarFactory, tmp_path: Path, uid: str, clock: ManualClock
):
    store = DevOpenBao(tmp_path / "store").start()
    try:
        store.kv_put(f"{uid}/db", {"password": "down-pw"})
        token_file = tmp_path / "t"
        token_file.write_text(store.root_token)
        quick = {
            "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"}
        }
        doc = config(
            store.addr,
            token_file,
            tmp_path,
            classes=quick,
            rules=[{"match": "**", "class": "standard"}],
        )
        client, _ = await make_sidecar(document=doc)
        sidecar = _hvac(_url(client), CALLER_TOKEN)
        await _in_thread(
            sidecar.secrets.kv.v2.read_secret_version, f"{uid}/db", raise_on_deleted_version=True
        )
        before = await _in_thread(
            bao, _url(client), CALLER_TOKEN, "kv", "get", f"secret/{uid}/db", home=tmp_path
        )
    finally:
        store.kill()
    clock.advance(1.2)
    stale = await _in_thread(
        sidecar.secrets.kv.v2.read_secret_version, f"{uid}/db", raise_on_deleted_version=True
    )
    assert stale["data"]["data"] == {"password": "down-pw"}
    after = await _in_thread(
        bao, _url(client), CALLER_TOKEN, "kv", "get", f"secret/{uid}/db", home=tmp_path
    )
    assert after.returncode == 0
    assert after.stdout == before.stdout
    response = await client.get(f"/v1/secret/data/{uid}/db", headers=VAULT)
    assert response.headers["X-Cache"] == "STALE"
    cold = await client.get(f"/v1/secret/data/{uid}/never", headers=VAULT)
    assert cold.status == 503
    assert (await cold.json())["errors"][0].startswith("secret_unavailable: ")


async def test_errors_come_in_vaults_shape(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    client, _ = await make_sidecar(rules=[{"match": "secret/**", "class": "standard"}])
    missing = await client.get(f"/v1/secret/data/{uid}/nothing", headers=VAULT)
    assert (missing.status, await missing.json()) == (404, {"errors": []})
    not_allowed = await client.get(f"/v1/kv1/{uid}/x", headers=VAULT)
    assert not_allowed.status == 403
    assert (await not_allowed.json())["errors"][0].startswith("path_not_allowed")
    no_token = await client.get(f"/v1/secret/data/{uid}/x")
    assert no_token.status == 401
    assert "errors" in await no_token.json()
    wrong = await client.get(f"/v1/secret/data/{uid}/x", headers={"X-Vault-Token": "nope" * 5})
    assert wrong.status == 403
    assert "errors" in await wrong.json()
    bad = await client.get(f"/v1/secret/data/{uid}/x?colour=red", headers=VAULT)
    assert bad.status == 400
    assert "colour" in (await bad.json())["errors"][0]
    write = await client.post(f"/v1/secret/data/{uid}/x", headers=VAULT, json={"data": {}})
    assert write.status == 405
    message = (await write.json())["errors"][0]
    assert "vault_api.passthrough" in message
    assert (await client.get("/v1/sys/health", headers=VAULT)).status == 405
    # Vault clients list with GET ?list=true (the Go client turns LIST into that)
    assert (await client.get("/v1/secret/metadata/?list=true", headers=VAULT)).status == 405
    native = await client.get(f"/secrets/secret/{uid}/nothing", headers=AUTH)
    assert (await native.json())["error"] == "secret_not_found"  # the native API keeps its own


async def test_forbidden_and_sealed_in_vaults_shape(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/denied", {"v": "d"})
    openbao.request(
        "POST",
        f"sys/policies/acl/{uid}",
        {"policy": f'path "secret/data/{uid}/allowed" {{ capabilities = ["read"] }}'},
    )
    token = openbao.request("POST", "auth/token/create", {"policies": [uid]})["auth"][
        "client_token"
    ]
    token_file = tmp_path / "limited"
    token_file.write_text(token)
    client, _ = await make_sidecar(document=config(openbao.addr, token_file, tmp_path))
    denied = await client.get(f"/v1/secret/data/{uid}/denied", headers=VAULT)
    assert (denied.status, await denied.json()) == (403, {"errors": ["permission denied"]})


async def test_passthrough_uses_the_callers_own_token_and_invalidates(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/pt", {"v": "pt-1"})
    writer = openbao.request(
        "POST", "auth/token/create", {"policies": ["root"], "display_name": f"writer-{uid}"}
    )["auth"]["client_token"]
    client, _ = await make_sidecar(vault_api={"passthrough": True})
    assert (await (await client.get(f"/v1/secret/data/{uid}/pt", headers=VAULT)).json())["data"][
        "data"
    ] == {"v": "pt-1"}

    # The unmodified CLI, with the app's own store token: the write goes through.
    put = await _in_thread(
        bao, _url(client), writer, "kv", "put", f"secret/{uid}/pt", "v=pt-2", home=tmp_path
    )
    assert put.returncode == 0, put.stderr
    writes = [
        r
        for r in openbao.audit_records()
        if r["type"] == "request"
        and r["request"]["path"] == f"secret/data/{uid}/pt"
        and r["request"]["operation"] in ("create", "update")
    ]
    assert writes[-1]["auth"]["display_name"] == f"token-writer-{uid}"  # not the sidecar's
    # The cached entry was dropped: the next read fetches version 2.
    after = await client.get(f"/v1/secret/data/{uid}/pt", headers=VAULT)
    assert after.headers["X-Cache"] == "MISS"
    assert (await after.json())["data"]["data"] == {"v": "pt-2"}

    # The caller token itself is never forwarded as a store token.
    refused = await client.post(f"/v1/secret/data/{uid}/pt", headers=VAULT, json={"data": {"v": 3}})
    assert refused.status == 403
    # A foreign token gets no cached reads: its GET is forwarded, not answered from memory.
    forwarded = await client.get(f"/v1/secret/data/{uid}/pt", headers={"X-Vault-Token": writer})
    assert forwarded.status == 200
    assert "X-Cache" not in forwarded.headers


@pytest.mark.parametrize("raw", ["/v1/secret/data/a/../b", "/v1/secret/data//b", "/v1/a%00b"])
async def test_bad_paths_are_400_in_vaults_shape(make_sidecar: SidecarFactory, raw: str):
    from tests.conftest import raw_get

    client, _ = await make_sidecar()
    response = await raw_get(client, raw, headers=VAULT)
    assert response.status == 400
    assert "errors" in await response.json()


async def test_deleted_and_destroyed_versions_look_as_they_do_from_the_store(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """Vault answers a deleted or destroyed KV v2 version with 404 and that version's metadata;
    the CLI prints the metadata and exits 0. Through the sidecar: the same output."""
    for n in (1, 2, 3):
        openbao.kv_put(f"{uid}/app", {"password": f"del-pw-{n}"})
    openbao.request("POST", f"secret/delete/{uid}/app", {"versions": [1]})
    openbao.request("POST", f"secret/destroy/{uid}/app", {"versions": [2]})
    client, _ = await make_sidecar()
    for version in ("1", "2"):
        for fmt in ("table", "json"):
            command = ("kv", "get", f"-version={version}", f"-format={fmt}", f"secret/{uid}/app")
            direct = await _in_thread(
                bao, openbao.addr, openbao.root_token, *command, home=tmp_path
            )
            for _ in range(2):  # a miss, then the negative cache: both as the store says
                mine = await _in_thread(bao, _url(client), CALLER_TOKEN, *command, home=tmp_path)
                if fmt == "json":  # request_id differs by nature; everything else must not
                    d, m = json.loads(direct.stdout), json.loads(mine.stdout)
                    d.pop("request_id"), m.pop("request_id")
                    assert (mine.returncode, m) == (direct.returncode, d), command
                else:
                    assert (mine.returncode, mine.stdout, mine.stderr) == (
                        direct.returncode,
                        direct.stdout,
                        direct.stderr,
                    ), command
            assert direct.returncode == 0 and "deletion_time" in direct.stdout
    raw = await client.get(f"/v1/secret/data/{uid}/app?version=1", headers=VAULT)
    assert raw.status == 404
    assert (await raw.json())["data"]["data"] is None
    native = await client.get(f"/secrets/secret/{uid}/app?version=1", headers=VAULT)
    assert (native.status, (await native.json())["error"]) == (404, "secret_not_found")


async def test_every_response_has_its_own_request_id(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "rid-pw"})
    client, _ = await make_sidecar()
    ids = []
    for _ in range(5):  # a miss, then hits answered before routing
        response = await client.get(f"/v1/secret/data/{uid}/db", headers=VAULT)
        body = await response.json()
        assert body["data"]["data"] == {"password": "rid-pw"}
        ids.append(body["request_id"])
    assert len(set(ids)) == 5
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i)
        for i in ids
    )


async def test_the_server_header_names_no_versions(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "srv-pw"})
    client, _ = await make_sidecar()
    for path in (
        f"/secrets/secret/{uid}/db",
        f"/secrets/secret/{uid}/db",
        f"/v1/secret/data/{uid}/db",
        f"/v1/secret/data/{uid}/db",
        "/admin/status",
        "/nowhere",
        f"/secrets/secret/{uid}/x",
    ):
        response = await client.get(path, headers=VAULT)
        assert response.headers["Server"] == "secrets-sidecar", path


async def test_hvac_list_and_is_authenticated_get_vault_shaped_answers(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """hvac's list_secrets sends LIST, which the HTTP parser refuses before any route: a
    Vault-shaped 405 that says what to do, not a text 400 quoting the request line.
    is_authenticated() asks auth/token/lookup-self: answered for the caller token (never
    echoing it), and a wrong token is not authenticated."""
    openbao.kv_put(f"{uid}/db", {"password": "hv-list"})
    client, _ = await make_sidecar()
    sidecar = _hvac(_url(client), CALLER_TOKEN)
    with pytest.raises(hvac.exceptions.VaultError) as refused:
        await _in_thread(sidecar.secrets.kv.v2.list_secrets, f"{uid}/")
    assert "does not take the LIST method" in str(refused.value)
    assert "passthrough" in str(refused.value)
    assert "b'LIST" not in str(refused.value)
    assert refused.value.errors == [str(refused.value).split(", on list ")[0]]  # Vault's shape

    assert await _in_thread(sidecar.is_authenticated) is True
    looked_up = await _in_thread(sidecar.lookup_token)
    assert looked_up["data"]["display_name"] == "secrets-sidecar-caller"
    assert CALLER_TOKEN not in json.dumps(looked_up)
    stranger = _hvac(_url(client), "not-the-caller-token-0123456789")
    assert await _in_thread(stranger.is_authenticated) is False


async def test_lookup_self_with_the_callers_own_store_token_is_passed_through(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    """With passthrough, a client that sends the caller token in X-Sidecar-Token and its own
    store token in X-Vault-Token asks about *that* token: the store answers, not the sidecar."""
    mine = openbao.request(
        "POST", "auth/token/create", {"policies": ["default"], "display_name": f"app-{uid}"}
    )["auth"]["client_token"]
    client, _ = await make_sidecar(vault_api={"passthrough": True})
    both = {"X-Sidecar-Token": CALLER_TOKEN, "X-Vault-Token": mine}
    answer = await client.get("/v1/auth/token/lookup-self", headers=both)
    assert answer.status == 200
    assert (await answer.json())["data"]["display_name"] == f"token-app-{uid}"
    local = await client.get("/v1/auth/token/lookup-self", headers=VAULT)
    assert (await local.json())["data"]["display_name"] == "secrets-sidecar-caller"


async def test_lookup_self_and_list_hold_up_to_odd_requests(
    make_sidecar: SidecarFactory, tmp_path: Path
):
    """The answers added for hvac, tried the way the guard's own tests try every endpoint:
    the admin token and no token are refused, an absolute-form target is refused, a
    percent-encoded spelling reaches the same answer (never the token), and LIST says nothing
    but what to do, whoever sends it."""
    client, _ = await make_sidecar()
    path = "/v1/auth/token/lookup-self"
    status, _, body = await raw_request(client, "GET", path, {"X-Vault-Token": ADMIN_TOKEN})
    assert status == 403
    status, _, _ = await raw_request(client, "GET", path)
    assert status in (401, 403)
    absolute = f"http://{client.host}:{client.port}{path}"
    status, _, _ = await raw_request(client, "GET", absolute, VAULT)
    assert status == 400
    status, _, body = await raw_request(client, "GET", "/v1/auth/token/lookup%2Dself", VAULT)
    assert status == 200 and CALLER_TOKEN.encode() not in body
    status, _, body = await raw_request(
        client, "LIST", "/v1/secret/metadata/x", {"X-Vault-Token": ADMIN_TOKEN}
    )
    assert status == 405
    assert json.loads(body)["errors"][0].startswith("the sidecar does not take the LIST method")
