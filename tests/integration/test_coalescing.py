"""N concurrent cold requests cause one store read: counted in OpenBao's own audit log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, SidecarFactory, metric
from tests.faultproxy import FaultProxy


@pytest.fixture
def slow_store(openbao: DevOpenBao) -> Iterator[FaultProxy]:
    """The store, 300 ms slower: concurrent requests surely overlap."""
    fault = FaultProxy(openbao.port).start()
    fault.set("pass", delay=0.3)
    yield fault
    fault.stop()


async def test_concurrent_cold_requests_make_one_store_read(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, slow_store: FaultProxy, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-coalesce"})
    client, sidecar = await make_sidecar(slow_store.addr)

    responses = await asyncio.gather(
        *(client.get(f"/secrets/secret/{uid}/db", headers=AUTH) for _ in range(50))
    )

    assert [r.status for r in responses] == [200] * 50
    bodies = [await r.json() for r in responses]
    assert {b["data"]["password"] for b in bodies} == {"pw-coalesce"}
    assert openbao.count_requests(f"secret/data/{uid}/db") == 1
    assert openbao.count_requests(f"sys/internal/ui/mounts/secret/{uid}/db") <= 1
    labels = {"class": "standard"}
    assert metric(sidecar, "sidecar_cache_lookups_total", {"outcome": "miss", **labels}) == 1
    assert metric(sidecar, "sidecar_cache_lookups_total", {"outcome": "coalesced", **labels}) == 49
    assert sorted(r.headers["X-Sidecar-Cache"] for r in responses) == ["MISS"] * 50


async def test_callers_that_give_up_do_not_cancel_the_fetch(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, slow_store: FaultProxy, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-leader-left"})
    client, _ = await make_sidecar(slow_store.addr)
    path = f"/secrets/secret/{uid}/db"

    async def impatient() -> None:
        # The first caller (the one whose request started the fetch) disconnects early.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get(path, headers=AUTH), 0.1)

    async def patient() -> int:
        await asyncio.sleep(0.02)
        return (await client.get(path, headers=AUTH)).status

    async def impatient_follower() -> None:
        await asyncio.sleep(0.03)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get(path, headers=AUTH), 0.1)

    results = await asyncio.gather(
        impatient(), *(patient() for _ in range(5)), impatient_follower()
    )
    assert results[1:6] == [200] * 5
    after = await client.get(path, headers=AUTH)
    assert after.headers["X-Sidecar-Cache"] == "HIT"
    assert openbao.count_requests(f"secret/data/{uid}/db") == 1


async def test_different_secrets_are_fetched_separately(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, slow_store: FaultProxy, uid: str
):
    for i in range(5):
        openbao.kv_put(f"{uid}/s{i}", {"v": f"value-{i}"})
    client, _ = await make_sidecar(slow_store.addr)
    responses = await asyncio.gather(
        *(client.get(f"/secrets/secret/{uid}/s{i % 5}", headers=AUTH) for i in range(40))
    )
    assert all(r.status == 200 for r in responses)
    for i in range(5):
        assert openbao.count_requests(f"secret/data/{uid}/s{i}") == 1
