"""Who may call what: every endpoint with both tokens, and with every spelling of its path that
reaches the same route (percent-encoded fixed parts, absolute-form targets). Authorisation is
decided on the route that runs, so no spelling lets the caller token reach /admin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import ADMIN, ADMIN_TOKEN, AUTH, CALLER_TOKEN, SidecarFactory, raw_request

PURGE = json.dumps({"all": True}).encode()
EXTEND = json.dumps({"class": "standard", "max_cache_age": "1h", "for": "1h"}).encode()
JSON = {"Content-Type": "application/json"}


def _absolute(client, path: str) -> str:
    return f"http://{client.host}:{client.port}{path}"


# Every spelling of an admin endpoint that aiohttp's router dispatches to that endpoint.
ADMIN_SPELLINGS = [
    ("POST", "/admin/purge", PURGE),
    ("POST", "/%61dmin/purge", PURGE),
    ("POST", "/admi%6E/purge", PURGE),
    ("POST", "/admin/%70urge", PURGE),
    ("POST", "/%61%64%6d%69%6e/%70%75%72%67%65", PURGE),
    ("POST", "ABSOLUTE/admin/purge", PURGE),
    ("POST", "ABSOLUTE/%61dmin/purge", PURGE),
    ("POST", "/admin/extend", EXTEND),
    ("POST", "/%61dmin/extend", EXTEND),
    ("POST", "ABSOLUTE/admin/extend", EXTEND),
    ("GET", "/admin/status", b""),
    ("GET", "/admi%6E/status", b""),
    ("GET", "ABSOLUTE/admin/status", b""),
]


@pytest.mark.parametrize(("method", "target", "body"), ADMIN_SPELLINGS)
async def test_the_caller_token_never_reaches_the_admin_api(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, method, target, body, tmp_path
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-guard"})
    audit = tmp_path / "audit.log"
    client, sidecar = await make_sidecar(audit_log=str(audit))
    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    target = target.replace("ABSOLUTE", _absolute(client, ""))

    status, _, payload = await raw_request(client, method, target, {**AUTH, **JSON}, body)
    assert status == 403, payload
    assert json.loads(payload)["error"] == "forbidden"
    assert len(sidecar.cache) == 1  # nothing purged
    assert sidecar.admin.extensions() == {}  # no window extended
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert "purged" not in events and "cache_window_extended" not in events

    # The X-Vault-Token spelling of the caller token is refused the same way.
    status, _, _ = await raw_request(
        client, method, target, {"X-Vault-Token": CALLER_TOKEN, **JSON}, body
    )
    assert status == 403
    assert len(sidecar.cache) == 1


@pytest.mark.parametrize(("method", "target", "body"), ADMIN_SPELLINGS)
async def test_the_admin_token_works_only_on_the_plain_spelling(
    make_sidecar: SidecarFactory, method, target, body
):
    client, sidecar = await make_sidecar()
    target = target.replace("ABSOLUTE", _absolute(client, ""))
    status, _, payload = await raw_request(client, method, target, {**ADMIN, **JSON}, body)
    if target.startswith("/admin/") and "%" not in target:
        assert status == 200, payload
    else:
        assert status == 400, payload
        reason = json.loads(payload)["reason"]
        assert "absolute URL" in reason or "percent-encoding" in reason
    sidecar.admin.close()


CALLER_ENDPOINTS = [
    ("GET", "/secrets/secret/UID/db", "/%73ecrets/secret/UID/db"),
    ("GET", "/secrets/secret/UID/db", "/secret%73/secret/UID/db"),
    ("POST", "/verify/secret/UID/db", "/%76erify/secret/UID/db"),
    ("GET", "/v1/secret/data/UID/db", "/%761/secret/data/UID/db"),
    ("GET", "/v1/secret/data/UID/db", "/v%31/secret/data/UID/db"),
    ("GET", "/v1/sys/internal/ui/mounts/secret/UID/db", "/v1%2Fsys/internal/ui/mounts/secret/x"),
]


@pytest.mark.parametrize(("method", "plain", "encoded"), CALLER_ENDPOINTS)
async def test_caller_endpoints_refuse_the_admin_token_and_odd_spellings(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, method, plain, encoded
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-guard-caller"})
    client, _ = await make_sidecar()
    plain, encoded = plain.replace("UID", uid), encoded.replace("UID", uid)
    body = json.dumps({"field": "password", "value": "x"}).encode() if method == "POST" else b""
    headers = {**JSON}

    for target in (plain, encoded, _absolute(client, plain)):
        # The admin token opens no caller endpoint, whatever the spelling.
        status, _, payload = await raw_request(client, method, target, {**ADMIN, **headers}, body)
        assert status in (403, 404), (target, status)
        assert b"pw-guard-caller" not in payload
        # No token: 401 before anything else.
        status, _, _ = await raw_request(client, method, target, headers, body)
        assert status in (401, 404), (target, status)

    status, _, payload = await raw_request(client, method, plain, {**AUTH, **headers}, body)
    assert status == 200, payload
    for target in (encoded, _absolute(client, plain)):
        status, _, payload = await raw_request(client, method, target, {**AUTH, **headers}, body)
        assert status in (400, 404), (target, payload)
        assert b"pw-guard-caller" not in payload


async def test_events_need_the_caller_token_spelt_plainly(make_sidecar: SidecarFactory):
    client, _ = await make_sidecar()
    assert (await raw_request(client, "GET", "/events", ADMIN, head_only=True))[0] == 403
    assert (await raw_request(client, "GET", "/%65vents", AUTH, head_only=True))[0] == 400
    absolute = _absolute(client, "/events")
    assert (await raw_request(client, "GET", absolute, AUTH, head_only=True))[0] == 400
    status, headers, _ = await raw_request(client, "GET", "/events", AUTH, head_only=True)
    assert (status, headers["content-type"]) == (200, "text/event-stream")


async def test_unknown_endpoints_need_a_token(make_sidecar: SidecarFactory):
    client, _ = await make_sidecar()
    assert (await client.get("/v2/anything")).status == 401
    assert (await client.get("/v2/anything", headers={"X-Sidecar-Token": "x" * 40})).status == 403
    for headers in (AUTH, ADMIN):
        response = await client.get("/v2/anything", headers=headers)
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"


@pytest.mark.parametrize(
    "header",
    [
        "X-Forwarded-For",
        "Forwarded",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
        "x-forwarded-for",
        "FORWARDED",
    ],
)
async def test_forwarding_headers_are_refused_everywhere(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, header: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-forwarded"})
    client, sidecar = await make_sidecar()
    path = f"/secrets/secret/{uid}/db"
    assert (await client.get(path, headers=AUTH)).status == 200
    assert (await client.get(path, headers=AUTH)).headers["X-Sidecar-Cache"] == "HIT"
    for target, headers in (
        (path, AUTH),  # a fresh hit: answered before routing, and still refused
        (f"/v1/secret/data/{uid}/db", AUTH),
        ("/admin/status", ADMIN),
    ):
        response = await client.get(target, headers={**headers, header: "10.0.0.1"})
        assert response.status == 400, (target, header)
        body = await response.read()
        assert header.lower().encode() in body.lower() and b"pw-forwarded" not in body
    assert sidecar.cache.hit(f"secret/{uid}/db") is not None


async def test_malformed_tokens_are_401_not_500(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    for token in (b"\xff\xfe" + b"a" * 30, CALLER_TOKEN.encode() + b"\xc3", "é".encode() * 20):
        for header in ("X-Sidecar-Token", "X-Vault-Token"):
            for target in (f"/secrets/secret/{uid}/db", f"/v1/secret/data/{uid}/db"):
                reader_status = await _send_bytes(client, target, header.encode(), token)
                assert reader_status == 401, (token, header, target)


async def _send_bytes(client, target: str, name: bytes, value: bytes) -> int:
    import asyncio

    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            b"GET "
            + target.encode()
            + b" HTTP/1.1\r\nHost: x\r\n"
            + name
            + b": "
            + value
            + b"\r\nConnection: close\r\n\r\n"
        )
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_token_comparisons_are_constant_time_and_exhaustive(monkeypatch):
    """Every comparison goes through hmac.compare_digest, and during a rotation's grace both
    the new and the old token are compared, whichever matches (no early exit)."""
    import hmac

    from sidecar.http import tokens as callers

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(callers.hmac, "compare_digest", spy)
    check = callers.CallerCheck("new-token-0123456789", clock=lambda: 0.0)
    check.rotate("newer-token-0123456789", grace=10.0)
    assert check("newer-token-0123456789") and check("new-token-0123456789")
    assert len(calls) == 4
    assert not check("wrong-token-0123456789")
    assert len(calls) == 6


async def test_admin_token_is_not_a_caller_token_on_any_api(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-admin-not-caller"})
    client, _ = await make_sidecar()
    for target in (f"/secrets/secret/{uid}/db", f"/v1/secret/data/{uid}/db"):
        for header in ("X-Sidecar-Token", "X-Vault-Token"):
            response = await client.get(target, headers={header: ADMIN_TOKEN})
            assert response.status == 403
            assert b"pw-admin-not-caller" not in await response.read()
