"""A real 3-node OpenBao raft cluster: kill the active node while an app reads at full speed.
The app must see no errors, and the sidecar must keep refreshing from the surviving nodes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from sidecar.dev.raft import RaftCluster
from tests.conftest import AUTH, CLASSES, SidecarFactory, config, metric
from tests.integration.test_raft_harness import audited_reads

pytestmark = pytest.mark.slow

BUSY = {
    "standard": {
        **CLASSES["standard"],
        "refresh_interval": "500ms",
        "max_cache_age": "5m",
        "on_outage": "serve_stale",
    }
}


async def test_leader_killed_while_reading_no_failed_reads(
    make_sidecar: SidecarFactory, tmp_path: Path, uid: str
):
    with RaftCluster(tmp_path / "raft") as cluster:
        paths = [f"{uid}/s{i}" for i in range(5)]
        for path in paths:
            cluster.kv_put(path, {"v": f"raft-{path}"})
        leader = cluster.leader_index()
        # The active node first: it is the one the sidecar talks to when it is killed.
        order = [leader] + [i for i in range(len(cluster.addrs)) if i != leader]
        token_file = tmp_path / "raft-token"
        token_file.write_text(cluster.root_token)
        doc = config(
            cluster.addrs[leader],
            token_file,
            tmp_path,
            classes=BUSY,
            rules=[{"match": "**", "class": "standard"}],
            backend={"timeout": "1s"},
        )
        del doc["backend"]["address"]
        doc["backend"]["addresses"] = [cluster.addrs[i] for i in order]
        client, sidecar = await make_sidecar(document=doc)
        for path in paths:
            assert (await client.get(f"/secrets/secret/{path}", headers=AUTH)).status == 200

        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def reader(offset: int) -> None:
            i = offset
            while not stop.is_set():
                response = await client.get(f"/secrets/secret/{paths[i % 5]}", headers=AUTH)
                statuses[response.status] += 1
                await response.read()
                i += 1

        readers = [asyncio.create_task(reader(n)) for n in range(4)]
        await asyncio.sleep(1.0)
        cluster.kill(leader)
        killed_at = time.monotonic()
        await asyncio.sleep(5.0)  # an election takes 1.5-4.5 s here; reads go on meanwhile
        stop.set()
        await asyncio.gather(*readers)

        assert set(statuses) == {200}, statuses
        assert sum(statuses.values()) > 500
        assert metric(sidecar, "sidecar_backend_up", {"address": cluster.addrs[leader]}) == 0
        # Refreshes went on against the survivors (their own audit logs say so), so what the
        # app read was confirmed by the store, not only replayed from memory.
        survivors = [i for i in range(len(cluster.addrs)) if i != leader]
        refreshed = sum(  # refreshes ask the metadata endpoint (no value moves)
            audited_reads(cluster.nodes[i].audit_log, f"secret/metadata/{paths[0]}")
            for i in survivors
        )
        assert refreshed >= 2, refreshed
        assert time.monotonic() - killed_at >= 5.0
