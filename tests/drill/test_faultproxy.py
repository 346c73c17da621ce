"""``sidecar faultproxy`` between a real sidecar and a real OpenBao: each fault does to the
sidecar what it says (the sidecar's own error kinds show it), scoped faults hit only their
scope, the stale fault is refused by the sidecar's no-going-back rule, and the control API and
CLI set, show and clear faults with reasons for bad ones."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.cli import main
from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao, free_port
from sidecar.drill.faultproxy import FaultProxy
from sidecar.drill.faults import Fault, Mode
from sidecar.drill.process import free_port_run
from tests.conftest import ADMIN, AUTH, CLASSES, SidecarFactory, config, metric

QUICK = {
    "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"},
    "payments": CLASSES["payments"],
}


@pytest.fixture
async def proxy(openbao: DevOpenBao) -> AsyncIterator[FaultProxy]:
    first = free_port_run(2)
    running = FaultProxy(
        [openbao.addr, openbao.addr], "127.0.0.1", first, ("127.0.0.1", free_port())
    )
    await running.start()
    yield running
    await running.stop()


def _node(proxy: FaultProxy, node: int = 0) -> str:
    return f"http://127.0.0.1:{proxy.port + node}"


async def _sidecar(make_sidecar: SidecarFactory, address: str, **extra: Any) -> Any:
    return await make_sidecar(
        address,
        classes=QUICK,
        backend={"timeout": "500ms", "backoff": {"base": "50ms", "cap": "200ms"}},
        **extra,
    )


def _errors(sidecar: Any, kind: str) -> float:
    return metric(sidecar, "sidecar_backend_errors_total", {"kind": kind})


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(Mode.ERROR, status=500), "server_error"),
        (Fault(Mode.RATE_LIMIT, retry_after=1), "rate_limited"),
        (Fault(Mode.BLACKHOLE), "timeout"),
        (Fault(Mode.LATENCY, delay=2), "timeout"),
        (Fault(Mode.RESET), "connection"),
        (Fault(Mode.REFUSE), "connection"),
    ],
)
async def test_each_fault_reaches_the_sidecar_as_its_kind_of_failure_and_clears(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    proxy: FaultProxy,
    uid: str,
    fault: Fault,
    kind: str,
):
    for name in ("a", "b"):
        openbao.kv_put(f"{uid}/{name}", {"v": f"fault-{name}"})
    client, sidecar = await _sidecar(make_sidecar, _node(proxy))
    assert (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status == 200
    await proxy.set_fault(fault)
    failed = await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)
    assert failed.status == 503
    assert _errors(sidecar, kind) >= 1, await failed.json()
    await proxy.set_fault(Fault())
    async with asyncio.timeout(10):  # after the sidecar's own backoff, reads go through again
        while (await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)).status != 200:
            await asyncio.sleep(0.1)


async def test_a_small_latency_only_slows_reads_and_a_scoped_fault_hits_only_its_scope(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, proxy: FaultProxy, uid: str
):
    for name in ("ok/a", "bad/a", "ok/b"):
        openbao.kv_put(f"{uid}/{name}", {"v": "scoped"})
    client, _ = await _sidecar(make_sidecar, _node(proxy))
    await proxy.set_fault(Fault(Mode.LATENCY, delay=0.05))
    assert (await client.get(f"/secrets/secret/{uid}/ok/a", headers=AUTH)).status == 200
    assert proxy.injected >= 1
    await proxy.set_fault(Fault(Mode.ERROR, status=500, prefix=f"secret/data/{uid}/bad/"))
    assert (await client.get(f"/secrets/secret/{uid}/bad/a", headers=AUTH)).status == 503
    assert (await client.get(f"/secrets/secret/{uid}/ok/b", headers=AUTH)).status == 200


async def test_a_fault_on_one_node_sends_the_sidecar_to_the_other(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    proxy: FaultProxy,
    uid: str,
    store_token_file: Path,
    tmp_path: Path,
):
    openbao.kv_put(f"{uid}/a", {"v": "failover"})
    await proxy.set_fault(Fault(Mode.ERROR, status=503, node=0))
    document = config(_node(proxy, 0), store_token_file, tmp_path, classes=QUICK)
    del document["backend"]["address"]
    document["backend"]["addresses"] = [_node(proxy, 0), _node(proxy, 1)]
    client, _ = await make_sidecar(document=document)
    assert (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status == 200
    assert proxy.requests[1] >= 1


async def test_a_lagging_node_answers_an_older_version_and_the_sidecar_keeps_the_newer(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    proxy: FaultProxy,
    uid: str,
    clock: ManualClock,
):
    openbao.kv_put(f"{uid}/a", {"v": "stale-v1"})
    client, sidecar = await _sidecar(make_sidecar, _node(proxy))
    path = f"/secrets/secret/{uid}/a"
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 1
    openbao.kv_put(f"{uid}/a", {"v": "stale-v2"})
    await client.post("/admin/purge", headers=ADMIN, json={"path": f"secret/{uid}/a"})
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 2
    await proxy.set_fault(Fault(Mode.STALE))
    clock.advance(1.5)  # past refresh_interval: the next read asks the (lagging) store
    answer = await (await client.get(path, headers=AUTH)).json()
    assert answer["version"] == 2  # never back to 1
    assert _errors(sidecar, "stale_read") >= 1
    assert proxy.injected >= 1


async def test_the_control_api_and_cli_set_show_and_clear_and_log_each_change(
    proxy: FaultProxy, caplog: pytest.LogCaptureFixture
):
    control = f"{proxy.control[0]}:{proxy.control[1]}"
    caplog.set_level(logging.WARNING, logger="sidecar.faultproxy")

    def cli(*args: str) -> int:
        return main(["faultproxy", *args, "--control", control])

    assert await asyncio.to_thread(cli, "set", "latency", "3s", "--jitter", "500ms") == 0
    assert proxy.fault == Fault(Mode.LATENCY, delay=3, jitter=0.5)
    assert (
        await asyncio.to_thread(cli, "set", "error", "503", "--node", "1", "--fraction", "0.5") == 0
    )
    assert proxy.fault == Fault(Mode.ERROR, status=503, node=1, fraction=0.5)
    assert await asyncio.to_thread(cli, "set", "error", "200") == 1  # refused, with the reason
    assert proxy.fault.status == 503
    assert await asyncio.to_thread(cli, "clear") == 0
    assert proxy.fault == Fault()
    assert await asyncio.to_thread(cli, "show") == 0
    changes = [r for r in caplog.records if r.getMessage() == "fault set"]
    assert [r.__dict__["fault"]["mode"] for r in changes] == ["latency", "error", "pass"]
    async with aiohttp.ClientSession() as session:
        bad = await session.put(
            f"http://{control}/fault", data=json.dumps({"mode": "error", "url": "x"})
        )
        assert bad.status == 400
        assert "unknown field(s) ['url']" in (await bad.json())["reason"]


def test_the_proxy_binds_loopback_unless_told_otherwise(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    args = ["faultproxy", "run", "--store", "http://127.0.0.1:8200", "--listen", "0.0.0.0:18200"]
    assert main(args) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main([*args[:4], "--control", "0.0.0.0:18299"]) == 2
    assert "--control must be a loopback address" in capsys.readouterr().err
    assert main(["faultproxy", "run", "--store", "file:///etc/passwd"]) == 2
    assert "http(s)://" in capsys.readouterr().err


async def test_the_proxy_counts_store_paths_and_keeps_no_token_unless_the_drill_asks(
    proxy: FaultProxy, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/counted", {"v": "x"})
    url = f"{_node(proxy)}/v1/secret/data/{uid}/counted"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(url, headers={"X-Vault-Token": openbao.root_token}) as reply:
                assert reply.status == 200
    assert proxy.paths[f"secret/data/{uid}/counted"] == 3
    assert proxy.last_token is None  # `sidecar faultproxy run` in staging holds no token

    first = free_port_run(1)
    drills = FaultProxy(
        [openbao.addr], "127.0.0.1", first, ("127.0.0.1", free_port()), remember_token=True
    )
    await drills.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{first}/v1/secret/data/{uid}/counted",
                headers={"X-Vault-Token": openbao.root_token},
            ) as reply,
        ):
            assert reply.status == 200
        assert drills.last_token == openbao.root_token
    finally:
        await drills.stop()
