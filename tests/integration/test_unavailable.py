"""'Unavailable' (503) is a different incident from 'invalid' (404/403): each cause, for real."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import AUTH, SidecarFactory, metric
from tests.faultproxy import FaultProxy


@pytest.fixture
def proxy(openbao: DevOpenBao) -> Iterator[FaultProxy]:
    fault = FaultProxy(openbao.port).start()
    yield fault
    fault.stop()


async def _unavailable(client, path: str) -> dict:
    response = await client.get(path, headers=AUTH)
    assert response.status == 503, await response.text()
    assert int(response.headers["Retry-After"]) >= 1
    body = await response.json()
    assert body["error"] == "secret_unavailable"
    return body


async def test_store_unreachable_is_503_not_404(make_sidecar: SidecarFactory, uid: str):
    client, sidecar = await make_sidecar(f"http://127.0.0.1:{free_port()}")
    body = await _unavailable(client, f"/secrets/secret/{uid}/db")
    assert body["reason"] == "connection_failed"
    assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "connection"}) >= 1


async def test_store_timeout_is_503_within_the_backend_timeout(
    make_sidecar: SidecarFactory, proxy: FaultProxy, uid: str
):
    proxy.set("blackhole")
    client, sidecar = await make_sidecar(proxy.addr, backend={"timeout": "300ms"})
    started = time.monotonic()
    body = await _unavailable(client, f"/secrets/secret/{uid}/db")
    elapsed = time.monotonic() - started
    assert body["reason"] == "timeout"
    assert elapsed < 2.0, elapsed
    assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "timeout"}) == 1


async def test_connection_reset_is_503(make_sidecar: SidecarFactory, proxy: FaultProxy, uid: str):
    proxy.set("reset")
    client, _ = await make_sidecar(proxy.addr)
    body = await _unavailable(client, f"/secrets/secret/{uid}/db")
    assert body["reason"] == "connection_failed"


async def test_rate_limited_store_is_503_with_its_retry_after(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    mount = f"rl{uid}"  # a mount of its own: quotas apply per mount
    openbao.enable_kv(mount, 2)
    openbao.kv_put("a", {"v": "rate-a"}, mount=mount)
    openbao.kv_put("b", {"v": "rate-b"}, mount=mount)
    openbao.request("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
    openbao.request(
        "POST",
        f"sys/quotas/rate-limit/{uid}",
        {"path": f"{mount}/", "rate": 1, "interval": "30s"},
    )
    try:
        client, sidecar = await make_sidecar()
        first = await client.get(f"/secrets/{mount}/a", headers=AUTH)
        assert first.status == 200
        response = await client.get(f"/secrets/{mount}/b", headers=AUTH)
        assert response.status == 503
        body = await response.json()
        assert body["reason"] == "rate_limited"
        # OpenBao's own Retry-After (seconds left in the 30 s interval) is passed on.
        assert 1 < int(response.headers["Retry-After"]) <= 30
        assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "rate_limited"}) == 1
        # the cached one is still a hit: the quota is not our problem for it
        again = await client.get(f"/secrets/{mount}/a", headers=AUTH)
        assert again.status == 200
    finally:
        openbao.request("DELETE", f"sys/quotas/rate-limit/{uid}")


async def test_sealed_store_is_503(make_sidecar: SidecarFactory, tmp_path, uid: str):
    store = DevOpenBao(tmp_path / "sealable").start()
    try:
        store.kv_put(f"{uid}/db", {"password": "pw-sealed"})
        token_file = tmp_path / "sealable-token"
        token_file.write_text(store.root_token)
        from tests.conftest import config

        client, _ = await make_sidecar(document=config(store.addr, token_file, tmp_path))
        assert (await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)).status == 200
        store.request("PUT", "sys/seal")
        body = await _unavailable(client, f"/secrets/secret/{uid}/other")
        assert body["reason"] == "sealed"
    finally:
        store.stop()
