"""The ops listener: /metrics, /healthz, /readyz need no token and expose no secrets."""

from __future__ import annotations

from typing import Any

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, SidecarFactory


async def test_metrics_health_and_readiness(
    make_sidecar: SidecarFactory, aiohttp_client: Any, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-metrics-value"})
    client, sidecar = await make_sidecar()
    ops = await aiohttp_client(sidecar.ops)

    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
    await client.get(f"/secrets/secret/{uid}/missing", headers=AUTH)

    health = await ops.get("/healthz")
    assert health.status == 200
    assert health.headers["Server"] == "secrets-sidecar"  # no versions
    ready = await ops.get("/readyz")
    assert ready.status == 200
    report = await ready.json()
    assert report["ready"] is True
    assert report["secrets_cached"] == 1

    text = await (await ops.get("/metrics")).text()
    assert 'sidecar_cache_lookups_total{class="standard",outcome="hit"} 1.0' in text
    assert 'sidecar_cache_lookups_total{class="standard",outcome="miss"} 2.0' in text
    assert 'sidecar_cache_lookups_total{class="payments",outcome="hit"} 0.0' in text
    assert 'sidecar_backend_fetch_duration_seconds_count{outcome="success"} 1.0' in text
    assert 'sidecar_backend_errors_total{kind="not_found"} 1.0' in text
    assert "sidecar_secrets_cached 1.0" in text
    assert 'sidecar_build_info{version="' in text
    assert "pw-metrics-value" not in text
    assert uid not in text  # paths never become labels
