"""Refresh-ahead: secrets in use are refreshed before they go stale; unused ones are not."""

from __future__ import annotations

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, CLASSES, SidecarFactory

FAST = {
    "quick": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "30s"},
}


async def test_steady_traffic_only_sees_hits_and_new_versions_arrive(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, clock: ManualClock
):
    openbao.kv_put(f"{uid}/busy", {"password": "pw-busy-1"})
    openbao.kv_put(f"{uid}/idle", {"password": "pw-idle-1"})
    client, sidecar = await make_sidecar(classes=FAST, rules=[{"match": "**", "class": "quick"}])

    assert (await client.get(f"/secrets/secret/{uid}/idle", headers=AUTH)).status == 200
    first = await client.get(f"/secrets/secret/{uid}/busy", headers=AUTH)
    assert first.headers["X-Sidecar-Cache"] == "MISS"

    outcomes, versions = [], []
    for tick in range(30):  # 3 s of the sidecar's time, steady reads, three refresh intervals
        if tick == 10:
            openbao.kv_put(f"{uid}/busy", {"password": "pw-busy-2"})
        response = await client.get(f"/secrets/secret/{uid}/busy", headers=AUTH)
        outcomes.append(response.headers["X-Sidecar-Cache"])
        versions.append((await response.json())["version"])
        clock.advance(0.1)
        sidecar.cache.run_due()  # what the refresher does when woken, here and now
        await sidecar.cache.settle()

    assert set(outcomes) == {"HIT"}, outcomes
    # refreshed in the background at 75-90% of each interval, about three times in 3 s: each
    # refresh asks the metadata endpoint (no value moves); the data is read only on rotation
    assert openbao.count_requests(f"secret/metadata/{uid}/busy") >= 3
    assert openbao.count_requests(f"secret/data/{uid}/busy") == 2
    # the new version written at ~1 s is served within a refresh interval (+ jitter)
    assert versions[-1] == 2
    assert versions.index(2) <= 10 + 12
    # the secret nobody read again: refreshed once (it was read within the interval before
    # its first refresh point), then left alone
    assert openbao.count_requests(f"secret/data/{uid}/idle") == 1
    assert openbao.count_requests(f"secret/metadata/{uid}/idle") == 1
