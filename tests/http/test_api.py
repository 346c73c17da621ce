"""The native secrets API over HTTP, against a real OpenBao dev server."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, CALLER_TOKEN, SidecarFactory, metric, raw_get


async def test_envelope_and_headers(make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str):
    openbao.kv_put(f"{uid}/db", {"username": "app", "password": "pw-envelope-1"})
    client, _ = await make_sidecar()

    first = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert first.status == 200
    assert first.headers["X-Sidecar-Cache"] == "MISS"
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Age"] == "0"
    body = await first.json()
    assert body["path"] == f"secret/{uid}/db"
    assert body["data"] == {"username": "app", "password": "pw-envelope-1"}
    assert body["version"] == 1
    assert body["kid"] == f"secret/{uid}/db#1"
    assert body["class"] == "standard"
    assert body["stale"] is False
    assert body["fetched_at"].endswith("Z")
    assert 0 <= body["age_seconds"] < 1

    second = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert second.headers["X-Sidecar-Cache"] == "HIT"
    assert (await second.json())["data"] == body["data"]


async def test_a_hit_never_touches_the_store(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-hit"})
    client, sidecar = await make_sidecar()
    for _ in range(25):
        response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
        assert response.status == 200
    assert openbao.count_requests(f"secret/data/{uid}/db") == 1
    assert metric(sidecar, "sidecar_cache_lookups_total", {"outcome": "hit", "class": "standard"})
    assert (
        metric(sidecar, "sidecar_cache_lookups_total", {"outcome": "miss", "class": "standard"})
        == 1
    )


async def test_class_is_chosen_by_first_matching_rule(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/payments/signing", {"key": "k-1"})
    client, _ = await make_sidecar()
    response = await client.get(f"/secrets/secret/{uid}/payments/signing", headers=AUTH)
    assert (await response.json())["class"] == "payments"
    bare = await client.get(f"/secrets/secret/{uid}/payments/signing?field=key", headers=AUTH)
    # a bare value has no envelope: class and version come as headers
    assert bare.headers["X-Sidecar-Class"] == "payments"
    assert bare.headers["X-Sidecar-Version"] == "1"


async def test_field_returns_the_bare_value(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-field", "port": 5432, "opts": {"ssl": True}})
    client, _ = await make_sidecar()

    response = await client.get(f"/secrets/secret/{uid}/db?field=password", headers=AUTH)
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.read() == b"pw-field"

    number = await client.get(f"/secrets/secret/{uid}/db?field=port", headers=AUTH)
    assert await number.read() == b"5432"
    nested = await client.get(f"/secrets/secret/{uid}/db?field=opts", headers=AUTH)
    assert await nested.read() == b'{"ssl":true}'

    missing = await client.get(f"/secrets/secret/{uid}/db?field=nope", headers=AUTH)
    assert missing.status == 404
    assert (await missing.json())["error"] == "field_not_found"


async def test_version_selects_a_kv2_version(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-v1"})
    openbao.kv_put(f"{uid}/db", {"password": "pw-v2"})
    client, _ = await make_sidecar()

    latest = await (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).json()
    assert (latest["version"], latest["data"]["password"]) == (2, "pw-v2")
    old = await client.get(f"/secrets/secret/{uid}/db?version=1", headers=AUTH)
    body = await old.json()
    assert (body["version"], body["data"]["password"], body["kid"]) == (
        1,
        "pw-v1",
        f"secret/{uid}/db#1",
    )
    beyond = await client.get(f"/secrets/secret/{uid}/db?version=9", headers=AUTH)
    assert beyond.status == 404
    assert (await beyond.json())["error"] == "secret_not_found"


async def test_deleted_version_is_not_found(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-del-1"})
    openbao.kv_put(f"{uid}/db", {"password": "pw-del-2"})
    openbao.request("POST", f"secret/delete/{uid}/db", {"versions": [1]})
    client, _ = await make_sidecar()
    response = await client.get(f"/secrets/secret/{uid}/db?version=1", headers=AUTH)
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "secret_not_found"
    assert "deleted" in body["reason"]


async def test_kv_version_1_mount(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv1_put(f"{uid}/legacy", {"api_key": "kv1-value"})
    audit = tmp_path / "audit.log"
    client, sidecar = await make_sidecar(audit_log=str(audit))
    response = await client.get(f"/secrets/kv1/{uid}/legacy", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["data"] == {"api_key": "kv1-value"}
    assert body["version"] is None
    assert body["kid"] == f"kv1/{uid}/legacy"
    field = await client.get(f"/secrets/kv1/{uid}/legacy?field=api_key", headers=AUTH)
    assert await field.read() == b"kv1-value"
    versioned = await client.get(f"/secrets/kv1/{uid}/legacy?version=2", headers=AUTH)
    assert versioned.status == 400
    assert "KV v2" in (await versioned.json())["reason"]
    assert openbao.count_requests(f"kv1/{uid}/legacy") == 1
    # the caller's mistake, found without asking the store: not a store error
    assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "invalid_request"}) == 0
    assert "fetch_failed" not in audit.read_text()


async def test_missing_secret_is_404(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    response = await client.get(f"/secrets/secret/{uid}/nothing", headers=AUTH)
    assert response.status == 404
    body = await response.json()
    assert body == {
        "error": "secret_not_found",
        "reason": body["reason"],
        "path": f"secret/{uid}/nothing",
    }
    assert response.headers.get("Retry-After") is None


async def test_store_refusing_the_sidecar_is_403(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path
):
    openbao.kv_put(f"{uid}/allowed", {"v": "a"})
    openbao.kv_put(f"{uid}/denied", {"v": "d"})
    openbao.request(
        "POST",
        f"sys/policies/acl/{uid}",
        {"policy": f'path "secret/data/{uid}/allowed" {{ capabilities = ["read"] }}'},
    )
    token = openbao.request("POST", "auth/token/create", {"policies": [uid], "ttl": "1h"})
    token_file = tmp_path / "limited-token"
    token_file.write_text(token["auth"]["client_token"])
    from tests.conftest import config

    client, _ = await make_sidecar(document=config(openbao.addr, token_file, tmp_path))
    allowed = await client.get(f"/secrets/secret/{uid}/allowed", headers=AUTH)
    assert allowed.status == 200
    denied = await client.get(f"/secrets/secret/{uid}/denied", headers=AUTH)
    assert denied.status == 403
    assert (await denied.json())["error"] == "secret_forbidden"


async def test_unknown_mount_is_refused_not_unavailable(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    response = await client.get(f"/secrets/nomount{uid}/x", headers=AUTH)
    assert response.status in (403, 404)
    assert (await response.json())["error"] in ("secret_forbidden", "secret_not_found")


async def test_path_without_a_rule_is_not_served(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-norule"})
    client, _ = await make_sidecar(rules=[{"match": f"secret/{uid}/only/**", "class": "standard"}])
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 403
    assert (await response.json())["error"] == "path_not_allowed"
    assert openbao.count_requests(f"secret/data/{uid}/db") == 0


# -- callers -------------------------------------------------------------------------------


async def test_caller_token_is_required(make_sidecar: SidecarFactory, openbao, uid: str):
    openbao.kv_put(f"{uid}/db", {"password": "pw-token"})
    client, _ = await make_sidecar()
    missing = await client.get(f"/secrets/secret/{uid}/db")
    assert missing.status == 401
    assert "X-Sidecar-Token" in (await missing.json())["reason"]
    wrong = await client.get(
        f"/secrets/secret/{uid}/db", headers={"X-Sidecar-Token": CALLER_TOKEN[:-1] + "x"}
    )
    assert wrong.status == 403
    assert b"pw-token" not in await wrong.read()
    vault_style = await client.get(
        f"/secrets/secret/{uid}/db", headers={"X-Vault-Token": CALLER_TOKEN}
    )
    assert vault_style.status == 200
    assert openbao.count_requests(f"secret/data/{uid}/db") == 1


async def test_forwarded_requests_are_refused(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    response = await client.get(
        f"/secrets/secret/{uid}/db", headers={**AUTH, "X-Forwarded-For": "10.1.2.3"}
    )
    assert response.status == 400
    assert "X-Forwarded-For" in (await response.json())["reason"]


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ("/secrets/secret/a/../b", "'..'"),
        ("/secrets/secret/a/%2e%2e/b", "'..'"),
        ("/secrets/secret/a/%2E%2E/b", "'..'"),
        ("/secrets/secret/a//b", "'//'"),
        ("/secrets/secret/a/./b", "'.'"),
        ("/secrets/secret/a/", "trailing"),
        ("/secrets/", "empty"),
        ("/secrets/secret/a%00b", "control"),
        ("/secrets/secret/a%01b", "control"),
        ("/secrets/secret/a%0Ab", "control"),
        ("/secrets/secret/" + "x" * 520, "512"),
        ("/secrets/secret/a?colour=red", "unknown query parameter 'colour'"),
        ("/secrets/secret/a?field=x&field=y", "more than once"),
        ("/secrets/secret/a?version=abc", "positive whole number"),
        ("/secrets/secret/a?version=0", "positive whole number"),
        ("/secrets/secret/a?version=-1", "positive whole number"),
        ("/secrets/secret/a?field=", "empty"),
    ],
)
async def test_bad_input_is_400_with_a_reason(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, raw: str, reason_part: str
):
    client, _ = await make_sidecar()

    def secret_requests() -> int:  # the sidecar's own login/lookup-self don't count
        return sum(
            1
            for record in openbao.audit_records()
            if not record.get("request", {}).get("path", "").startswith("auth/")
        )

    before = secret_requests()
    response = await raw_get(client, raw)
    assert response.status == 400, await response.text()
    body = await response.json()
    assert body["error"] == "bad_request"
    assert reason_part in body["reason"]
    assert secret_requests() == before  # refused before the store


async def test_only_get_and_known_endpoints(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    post = await client.post(f"/secrets/secret/{uid}/db", headers=AUTH, data=b"{}")
    assert post.status == 405
    other = await client.get("/v2/whatever", headers=AUTH)
    assert other.status == 404
    assert (await other.json())["error"] == "not_found"


async def test_requests_are_counted_by_status(make_sidecar: SidecarFactory, uid: str):
    client, sidecar = await make_sidecar()
    await client.get(f"/secrets/secret/{uid}/db")
    await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert metric(sidecar, "sidecar_http_requests_total", {"status": "401"}) == 1
    assert metric(sidecar, "sidecar_http_requests_total", {"status": "404"}) == 1
    assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "not_found"}) == 1


async def test_hits_answered_before_routing_keep_every_guard(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-front"})
    client, sidecar = await make_sidecar()
    path = f"/secrets/secret/{uid}/db"
    assert (await client.get(path, headers=AUTH)).status == 200
    hit = await client.get(path, headers=AUTH)  # now a fresh, served value: the front answers
    assert (hit.status, hit.headers["X-Sidecar-Cache"]) == (200, "HIT")
    assert (await client.get(path)).status == 401
    wrong = await client.get(path, headers={"X-Sidecar-Token": "x" * 34})
    assert wrong.status == 403
    assert b"pw-front" not in await wrong.read()
    forwarded = await client.get(path, headers={**AUTH, "X-Forwarded-For": "10.0.0.1"})
    assert forwarded.status == 400
    from tests.conftest import ADMIN

    assert (await client.get(path, headers=ADMIN)).status == 403
    encoded = await raw_get(client, f"/secrets/secret/{uid}/d%62")  # takes the full route
    assert (encoded.status, encoded.headers["X-Sidecar-Cache"]) == (200, "HIT")
    traversal = await raw_get(client, f"/secrets/secret/{uid}/../{uid}/db")
    assert traversal.status == 400
    assert metric(sidecar, "sidecar_http_requests_total", {"status": "200"}) == 3
