"""Several store addresses: failover to a healthy node, and never going backwards when a
lagging node answers an older version than one already served."""

from __future__ import annotations

from pathlib import Path

from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, CLASSES, SidecarFactory, config, metric

QUICK = {"standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"}}


async def test_failover_and_never_going_backwards(
    make_sidecar: SidecarFactory, tmp_path: Path, uid: str, clock: ManualClock
):
    primary = DevOpenBao(tmp_path / "primary").start()
    lagging = DevOpenBao(tmp_path / "lagging").start()  # a replica that missed two writes
    try:
        for n in (1, 2, 3):
            primary.kv_put(f"{uid}/db", {"password": f"fo-v{n}"})
        lagging.kv_put(f"{uid}/db", {"password": "fo-v1"})
        lagging.kv_put(f"{uid}/only-on-b", {"v": "fo-b"})
        token_file = tmp_path / "token"
        token_file.write_text("root")  # both dev servers use the same root token id
        doc = config(
            primary.addr,
            token_file,
            tmp_path,
            classes=QUICK,
            rules=[{"match": "**", "class": "standard"}],
        )
        del doc["backend"]["address"]
        doc["backend"]["addresses"] = [primary.addr, lagging.addr]
        client, sidecar = await make_sidecar(document=doc)

        first = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
        assert (await first.json())["version"] == 3
        primary.kill()
        clock.advance(1.1)

        # The lagging node answers version 1; the sidecar keeps serving 3 (stale), never 1.
        for _ in range(3):
            response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
            assert response.status == 200
            body = await response.json()
            assert (body["version"], body["data"]["password"]) == (3, "fo-v3")
            assert response.headers["X-Sidecar-Cache"] == "STALE"
        assert metric(sidecar, "sidecar_backend_errors_total", {"kind": "stale_read"}) >= 1
        assert metric(sidecar, "sidecar_backend_up", {"address": primary.addr}) == 0
        assert metric(sidecar, "sidecar_backend_up", {"address": lagging.addr}) == 1

        # What only the healthy node has is served from it: failover, not an outage.
        other = await client.get(f"/secrets/secret/{uid}/only-on-b", headers=AUTH)
        assert other.status == 200
        assert (await other.json())["data"] == {"v": "fo-b"}
    finally:
        primary.stop()
        lagging.stop()
