"""Store outages: stale within limits, fail-closed by class, fast answers while the circuit is
open, rate limits honoured, never going backwards. Real OpenBao servers, really killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, CLASSES, SidecarFactory, config, metric
from tests.faultproxy import FaultProxy

SHORT = {
    "stale_ok": {
        **CLASSES["standard"],
        "refresh_interval": "1s",
        "max_cache_age": "3s",
        "on_outage": "serve_stale",
    },
    "strict": {
        **CLASSES["payments"],
        "refresh_interval": "1s",
        "max_cache_age": "1m",
        "on_outage": "fail_closed",
    },
}
RULES = [{"match": "secret/*/strict/**", "class": "strict"}, {"match": "**", "class": "stale_ok"}]


@pytest.fixture
def own_store(tmp_path: Path) -> Iterator[DevOpenBao]:
    """A store of this test's own, so it can be killed."""
    store = DevOpenBao(tmp_path / "own-store").start()
    yield store
    store.stop()


def _own_config(store: DevOpenBao, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    token_file = tmp_path / "own-token"
    token_file.write_text(store.root_token)
    overrides.setdefault("classes", SHORT)
    overrides.setdefault("rules", RULES)
    return config(store.addr, token_file, tmp_path, **overrides)


async def test_serve_stale_until_max_cache_age_then_503(
    make_sidecar: SidecarFactory,
    own_store: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    own_store.kv_put(f"{uid}/db", {"password": "pw-stale"})
    client, sidecar = await make_sidecar(document=_own_config(own_store, tmp_path))
    path = f"/secrets/secret/{uid}/db"
    assert (await client.get(path, headers=AUTH)).status == 200
    own_store.kill()

    clock.advance(1.2)  # past refresh_interval, within max_cache_age
    stale = await client.get(path, headers=AUTH)
    assert stale.status == 200
    assert stale.headers["X-Sidecar-Cache"] == "STALE"
    assert stale.headers["Warning"] == '110 - "Response is Stale"'
    assert int(stale.headers["Age"]) >= 1
    body = await stale.json()
    assert body["stale"] is True
    assert body["data"] == {"password": "pw-stale"}
    assert body["age_seconds"] >= 1.0
    assert metric(sidecar, "sidecar_stale_served_total", {"class": "stale_ok"}) >= 1

    clock.advance(2.0)  # past max_cache_age (3 s since the store last confirmed it)
    gone = await client.get(path, headers=AUTH)
    assert gone.status == 503
    body = await gone.json()
    assert body["reason"] == "max_cache_age_exceeded"
    assert "pw-stale" not in await gone.text()
    assert len(sidecar.cache) == 0  # dropped from memory, not just hidden
    never = await client.get(path, headers=AUTH)
    assert never.status == 503


async def test_fail_closed_refuses_at_once_and_uncached_is_503_not_404(
    make_sidecar: SidecarFactory,
    own_store: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    own_store.kv_put(f"{uid}/strict/key", {"key": "signing-key-value"})
    client, sidecar = await make_sidecar(document=_own_config(own_store, tmp_path))
    path = f"/secrets/secret/{uid}/strict/key"
    assert (await client.get(path, headers=AUTH)).status == 200
    own_store.kill()

    fresh = await client.get(path, headers=AUTH)  # still within refresh_interval: a hit
    assert fresh.status == 200
    clock.advance(1.1)
    refused = await client.get(path, headers=AUTH)
    assert refused.status == 503
    body = await refused.json()
    assert body["reason"] == "fail_closed"
    assert "signing-key-value" not in await refused.text()
    assert metric(sidecar, "sidecar_fail_closed_total", {"class": "strict"}) == 1

    uncached = await client.get(f"/secrets/secret/{uid}/never-read", headers=AUTH)
    assert uncached.status == 503
    assert (await uncached.json())["error"] == "secret_unavailable"


async def test_open_circuit_answers_without_waiting_for_the_store(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, clock: ManualClock
):
    proxy = FaultProxy(openbao.port).start()
    try:
        openbao.kv_put(f"{uid}/strict/key", {"key": "k"})
        client, sidecar = await make_sidecar(
            proxy.addr,
            classes=SHORT,
            rules=RULES,
            backend={"timeout": "1s", "circuit_breaker": {"failure_threshold": 2}},
        )
        path = f"/secrets/secret/{uid}/strict/key"
        assert (await client.get(path, headers=AUTH)).status == 200
        proxy.set("blackhole")
        proxy.cut_all()
        # Two reads pay the timeout and open the circuit...
        for i in range(2):
            assert (await client.get(f"/secrets/secret/{uid}/cold{i}", headers=AUTH)).status == 503
        assert metric(sidecar, "sidecar_circuit_state", {"address": proxy.addr}) == 1
        clock.advance(1.0)  # the cached fail_closed value goes past refresh_interval
        # ...then misses and fail-closed reads are answered at once, not after the 1 s timeout
        # (a quarter of it is generous for a loaded machine and far from a timeout).
        for target in (f"/secrets/secret/{uid}/cold-x", path):
            started = time.monotonic()
            response = await client.get(target, headers=AUTH)
            elapsed = time.monotonic() - started
            assert response.status == 503
            assert elapsed < 0.25, f"{target} took {elapsed * 1000:.0f} ms"
            assert int(response.headers["Retry-After"]) >= 1
        assert metric(sidecar, "sidecar_backend_up", {"address": proxy.addr}) == 0

        # The store comes back: the next probe closes the circuit.
        proxy.set("pass")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            response = await client.get(path, headers=AUTH)
            if response.status == 200:
                break
            await asyncio.sleep(0.1)
        assert response.status == 200
        assert metric(sidecar, "sidecar_circuit_state", {"address": proxy.addr}) == 0
        assert metric(sidecar, "sidecar_backend_up", {"address": proxy.addr}) == 1
    finally:
        proxy.stop()


async def test_slow_store_and_broken_path_serve_stale(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, clock: ManualClock
):
    proxy = FaultProxy(openbao.port).start()
    try:
        openbao.kv_put(f"{uid}/db", {"password": "pw-slow"})
        client, _ = await make_sidecar(
            proxy.addr,
            classes=SHORT,
            rules=RULES,
            backend={"timeout": "300ms", "circuit_breaker": {"failure_threshold": 50}},
        )
        path = f"/secrets/secret/{uid}/db"
        assert (await client.get(path, headers=AUTH)).status == 200
        proxy.set("pass", delay=1.0)  # answers arrive after the backend timeout
        proxy.cut_all()
        clock.advance(1.1)  # past refresh_interval: the refresh times out, the value is stale
        slow = await client.get(path, headers=AUTH)
        assert slow.status == 200
        assert slow.headers["X-Sidecar-Cache"] == "STALE"
        proxy.set("reset")  # a broken network path
        broken = await client.get(path, headers=AUTH)
        assert broken.status == 200
        assert broken.headers["X-Sidecar-Cache"] == "STALE"
    finally:
        proxy.stop()


async def test_404_or_403_during_refresh_is_invalid_not_stale(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, clock: ManualClock
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-deleted"})
    client, sidecar = await make_sidecar(classes=SHORT, rules=RULES)
    path = f"/secrets/secret/{uid}/db"
    assert (await client.get(path, headers=AUTH)).status == 200
    openbao.request("DELETE", f"secret/metadata/{uid}/db")  # deleted for good in the store
    clock.advance(1.05)
    response = await client.get(path, headers=AUTH)
    assert response.status == 404
    assert "pw-deleted" not in await response.text()
    assert len(sidecar.cache) == 0


async def test_rate_limit_storm_honours_retry_after(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    mount = f"storm{uid}"
    openbao.enable_kv(mount, 2)
    for i in range(40):
        openbao.kv_put(f"s{i}", {"v": f"storm-{i}"}, mount=mount)
    openbao.request("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
    openbao.request(
        "POST", f"sys/quotas/rate-limit/{uid}", {"path": f"{mount}/", "rate": 2, "interval": "10s"}
    )
    proxy = FaultProxy(openbao.port).start()  # to see the requests OpenBao refuses unaudited
    try:
        client, sidecar = await make_sidecar(proxy.addr)
        statuses = []
        started = time.monotonic()
        for i in range(40):  # an app hammering 40 different cold secrets
            response = await client.get(f"/secrets/{mount}/s{i}", headers=AUTH)
            statuses.append(response.status)
            if response.status == 503:
                body = await response.json()
                assert body["reason"] == "rate_limited"
                assert 1 <= int(response.headers["Retry-After"]) <= 10
        assert time.monotonic() - started < 5  # refused fast, not after timeouts
        assert statuses[:2] == [200, 200]
        assert set(statuses[2:]) == {503}
        # OpenBao audited the 2 reads it allowed; the one it refused (429) is not audited, so
        # the wire shows it: 3 requests reached the store, the other 37 never left the sidecar.
        audited = sum(openbao.count_requests(f"{mount}/data/s{i}") for i in range(40))
        assert audited == 2
        on_the_wire = [line for line in proxy.request_lines if f"/v1/{mount}/data/" in line]
        assert len(on_the_wire) == 3, on_the_wire
        assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "rate_limited"}) == 38
    finally:
        proxy.stop()
        openbao.request("DELETE", f"sys/quotas/rate-limit/{uid}")


async def test_own_request_budget_spreads_a_burst(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    for i in range(25):
        openbao.kv_put(f"{uid}/b{i}", {"v": str(i)})
    client, _ = await make_sidecar(backend={"rate_limit": {"requests_per_second": 20, "burst": 5}})
    await client.get(f"/secrets/secret/{uid}/b0", headers=AUTH)  # mount discovery + 1 read
    started = time.monotonic()
    responses = await asyncio.gather(
        *(client.get(f"/secrets/secret/{uid}/b{i}", headers=AUTH) for i in range(1, 25))
    )
    elapsed = time.monotonic() - started
    assert [r.status for r in responses] == [200] * 24
    # 24 reads with at most 5 saved tokens (some spent) at 20/s: at least ~0.95 s
    assert elapsed >= 0.9, elapsed


async def test_store_down_preload_retries_are_bounded(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    proxy = FaultProxy(openbao.port).start()
    proxy.set("reset")
    try:
        rules = [
            {"match": f"secret/{uid}/p{i}", "class": "stale_ok", "preload": True} for i in range(10)
        ]
        _, sidecar = await make_sidecar(
            proxy.addr,
            classes=SHORT,
            rules=[*rules, {"match": "**", "class": "stale_ok"}],
            startup_jitter="200ms",
            backend={"backoff": {"base": "100ms", "cap": "1s"}},
        )
        await asyncio.sleep(3.0)
        # 10 preloaded secrets, 3 s of outage: the breaker and backoff keep it to a trickle
        # (without them: 10 secrets x a retry every few ms).
        assert proxy.connections <= 20, proxy.connections
        assert sidecar.readiness()["ready"] is False
    finally:
        proxy.stop()


async def test_access_revoked_during_refresh_is_403_at_once(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-revoked"})
    policy = f'path "secret/data/{uid}/*" {{ capabilities = ["read"] }}'
    openbao.request("POST", f"sys/policies/acl/{uid}", {"policy": policy})
    token = openbao.request("POST", "auth/token/create", {"policies": [uid], "ttl": "1h"})
    token_file = tmp_path / "limited"
    token_file.write_text(token["auth"]["client_token"])
    doc = config(openbao.addr, token_file, tmp_path, classes=SHORT, rules=RULES)
    client, sidecar = await make_sidecar(document=doc)
    path = f"/secrets/secret/{uid}/db"
    assert (await client.get(path, headers=AUTH)).status == 200
    # The policy no longer grants it: access revoked in the store.
    openbao.request(
        "POST",
        f"sys/policies/acl/{uid}",
        {"policy": f'path "secret/data/{uid}/other" {{ capabilities = ["read"] }}'},
    )
    clock.advance(1.05)
    response = await client.get(path, headers=AUTH)
    assert response.status == 403
    assert (await response.json())["error"] == "secret_forbidden"
    assert len(sidecar.cache) == 0


async def test_without_a_snapshot_key_the_start_log_says_so(
    make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("WARNING")
    await make_sidecar()
    assert any("no snapshot" in r.getMessage() for r in caplog.records)
