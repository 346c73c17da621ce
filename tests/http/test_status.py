"""The on-call status view: ``GET /admin/status`` and its page, against a real OpenBao (through
a fault proxy for the outage): each value's class, owner, version, age against its limits and
state, the store nodes, the snapshot; never a value; the page only with the admin token."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    CALLER_TOKEN,
    CLASSES,
    SidecarFactory,
    raw_request,
)
from tests.faultproxy import FaultProxy

QUICK = {
    "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "10s"},
    "payments": {**CLASSES["payments"], "owner": "<b>team-payments</b>"},
}
VALUE = "status-view-value-5d2e"


def _basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"oncall:{token}".encode()).decode()}


def _row(report: dict[str, Any], path: str) -> dict[str, Any]:
    (row,) = [r for r in report["secrets"] if r["path"] == path]
    return row


async def test_status_shows_each_secret_against_its_limits_through_an_outage(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    clock: ManualClock,
    tmp_path: Path,
):
    openbao.kv_put(f"{uid}/db", {"password": VALUE})
    openbao.kv_put(f"{uid}/db", {"password": VALUE + "-2"})
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    proxy = FaultProxy(openbao.port).start()
    try:
        client, sidecar = await make_sidecar(
            proxy.addr,
            classes=QUICK,
            snapshot={"path": str(tmp_path / "snapshot"), "key_file": str(key)},
        )
        path = f"secret/{uid}/db"
        assert (await client.get(f"/secrets/{path}", headers=AUTH)).status == 200
        assert sidecar.snapshotter is not None and await sidecar.snapshotter.save()

        report = await (await client.get("/admin/status", headers=ADMIN)).json()
        row = _row(report, path)
        assert row["class"] == "standard" and row["owner"] == "team-test"
        assert row["version"] == 2 and row["kid"] == f"{path}#2"
        assert row["state"] == "fresh" and row["last_error"] is None
        assert (row["refresh_interval_seconds"], row["max_cache_age_seconds"]) == (1.0, 10.0)
        assert report["states"] == {"fresh": 1}
        assert report["snapshot"]["enabled"] is True
        assert report["snapshot"]["written_at"] is not None and not report["snapshot"]["failing"]
        assert report["auth"]["method"] == "token"
        (node,) = report["store_nodes"]
        assert (node["address"], node["up"], node["circuit"]) == (proxy.addr, True, "closed")

        # the store goes away: the value ages, is served stale, then shows failing and near limit
        proxy.set("reset")
        proxy.cut_all()
        clock.advance(2)
        assert (await client.get(f"/secrets/{path}", headers=AUTH)).status == 200  # stale
        clock.advance(0.5)
        await client.get(f"/secrets/{path}", headers=AUTH)
        report = await (await client.get("/admin/status", headers=ADMIN)).json()
        row = _row(report, path)
        assert row["state"] == "failing", row
        assert row["last_error"] == "connection"
        assert row["runbook"].endswith("docs/runbooks/store-unreachable.md")
        clock.advance(6)  # 8.5 s of 10 s
        report = await (await client.get("/admin/status", headers=ADMIN)).json()
        assert _row(report, path)["state"] == "near_limit"
        assert _row(report, path)["runbook"].endswith("docs/runbooks/cache-age-near-limit.md")
        assert any(not n["up"] for n in report["store_nodes"])

        page = await client.get("/admin/status.html", headers=_basic(ADMIN_TOKEN))
        html = await page.text()
        assert page.status == 200 and page.content_type == "text/html"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"
        assert f'data-path="{path}"' in html and "near_limit" in html
        for body in (html, str(report)):
            assert VALUE not in body  # versions, ages and states: never a value
    finally:
        proxy.stop()


async def test_the_page_asks_a_browser_for_the_admin_token_and_refuses_anything_else(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/payments/key", {"k": VALUE})
    client, _ = await make_sidecar(classes=QUICK)
    assert (await client.get(f"/secrets/secret/{uid}/payments/key", headers=AUTH)).status == 200
    anonymous = await client.get("/admin/status.html")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="secrets-sidecar admin"')
    assert (await client.get("/admin/status.html", headers=_basic(CALLER_TOKEN))).status == 403
    assert (await client.get("/admin/status.html", headers=_basic("x" * 40))).status == 403
    for broken in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer x"):
        refused = await client.get("/admin/status.html", headers={"Authorization": broken})
        assert refused.status == 401, broken
    # Basic credentials open the admin door only: the secrets API still wants its header
    assert (await client.get("/secrets/secret/x", headers=_basic(CALLER_TOKEN))).status == 401
    # the JSON endpoint answers 401 without a challenge (it is for programs)
    assert "WWW-Authenticate" not in (await client.get("/admin/status")).headers
    page = await client.get("/admin/status.html", headers=ADMIN)
    assert page.status == 200
    # configured text is escaped: an owner name cannot add markup to the page
    html = await page.text()
    assert "&lt;b&gt;team-payments&lt;/b&gt;" in html and "<b>team-payments</b>" not in html


async def test_the_status_page_is_not_on_the_unauthenticated_ops_listener(
    make_sidecar: SidecarFactory, aiohttp_client: Any
):
    _, sidecar = await make_sidecar(classes=QUICK)
    ops = await aiohttp_client(sidecar.ops)
    for path in ("/admin/status.html", "/admin/status"):
        assert (await ops.get(path, headers=ADMIN)).status == 404


async def test_the_status_page_is_refused_in_any_other_spelling_and_to_the_caller_token(
    make_sidecar: SidecarFactory,
):
    """Percent-encoded and absolute-form targets are refused before any report is built; so is
    the caller token in the header the JSON endpoint takes."""
    client, _ = await make_sidecar(classes=QUICK)
    creds = _basic(ADMIN_TOKEN)
    for target in (
        "/admin/status%2Ehtml",
        "/%61dmin/status.html",
        f"http://{client.host}:{client.port}/admin/status.html",
    ):
        status, _, body = await raw_request(client, "GET", target, creds)
        assert status in (400, 404), (target, status)
        assert b"secrets-sidecar status" not in body
    for page in ("/admin/status.html", "/admin/status"):
        assert (await client.get(page, headers=AUTH)).status == 403
