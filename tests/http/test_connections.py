"""A local flood without a token: trickling headers, idle sockets, every slot busy, a low file
limit. The daemon's own server (both listeners, real sockets) in front of a real OpenBao."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import AUTH, CALLER_TOKEN, config, metric, running


def _doc(openbao: DevOpenBao, token_file: Path, tmp_path: Path, **http: Any) -> dict[str, Any]:
    return config(
        openbao.addr,
        token_file,
        tmp_path,
        metrics_listen="127.0.0.1:0",
        http={"max_connections": 16, "ops_max_connections": 8, **http},
    )


async def _open(url: str, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = url.removeprefix("http://").split(":")
    return [await asyncio.open_connection(host, int(port)) for _ in range(count)]


def _closed(reader: asyncio.StreamReader) -> bool:
    return reader.at_eof()


async def test_trickling_headers_are_cut_at_the_header_timeout(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-trickle"})
    document = _doc(openbao, store_token_file, tmp_path, header_timeout="600ms")
    async with running(document) as (server, api, _), aiohttp.ClientSession() as session:
        conns = await _open(api, 10)
        for _, writer in conns:
            writer.write(b"GET /secrets/secret/x HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        for reader, writer in conns:
            await asyncio.sleep(0.1)
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: 1\r\n")  # still trickling...
            assert await asyncio.wait_for(reader.read(), 5) == b""  # ...and cut without a reply
        assert time.monotonic() - started < 4
        closed = metric(
            server.sidecar,
            "sidecar_http_connections_closed_total",
            {"listener": "api", "reason": "header_timeout"},
        )
        assert closed == 10
        # A complete request on a fresh connection is served as usual.
        response = await session.get(f"{api}/secrets/secret/{uid}/db", headers=AUTH)
        assert response.status == 200


async def test_idle_sockets_cannot_lock_out_reads_or_probes(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str, caplog: Any
):
    openbao.kv_put(f"{uid}/a", {"password": "pw-idle-a"})
    openbao.kv_put(f"{uid}/b", {"password": "pw-idle-b"})
    caplog.set_level("WARNING", logger="sidecar.connections")
    async with running(_doc(openbao, store_token_file, tmp_path)) as (server, api, ops):
        flood = await _open(api, 60) + await _open(ops, 30)  # far past both caps, no token
        await asyncio.sleep(0.05)
        assert metric(server.sidecar, "sidecar_http_connections", {"listener": "api"}) == 16
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # a miss, then hits: each a new connection, none refused
                for name in ("a", "b"):
                    async with session.get(
                        f"{api}/secrets/secret/{uid}/{name}", headers=AUTH
                    ) as response:
                        assert response.status == 200
            for path in ("/healthz", "/readyz", "/metrics"):
                async with session.get(f"{ops}{path}") as response:
                    assert response.status == 200
        evicted = metric(
            server.sidecar,
            "sidecar_http_connections_closed_total",
            {"listener": "api", "reason": "evicted"},
        )
        assert evicted >= 44
        assert sum(_closed(reader) for reader, _ in flood) >= 44 + 22
        assert any("to make room" in r.getMessage() for r in caplog.records)
        for _, writer in flood:
            writer.close()


async def test_every_slot_busy_refuses_new_connections_until_one_frees(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str, caplog: Any
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-busy"})
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with (
        running(_doc(openbao, store_token_file, tmp_path)) as (server, api, _),
        aiohttp.ClientSession(connector=connector) as session,
    ):
        url = f"{api}/secrets/secret/{uid}/db"
        assert (await session.get(url, headers=AUTH)).status == 200
        # 16 blocking queries hold every slot, each busy with a request in progress.
        waits = [
            asyncio.create_task(session.get(f"{url}?wait=2s", headers=AUTH)) for _ in range(16)
        ]
        await asyncio.sleep(0.5)
        for reader, writer in await _open(api, 50):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # refused: closed at once
            writer.close()
        refused = metric(
            server.sidecar,
            "sidecar_http_connections_closed_total",
            {"listener": "api", "reason": "limit"},
        )
        assert refused == 50
        # Counted, and logged once (rate-limited): no traceback per refusal (a request task
        # that failed would be reported when collected).
        gc.collect()
        await asyncio.sleep(0.1)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        said = [r for r in caplog.records if r.getMessage().startswith("connection refused")]
        assert len(said) == 1
        assert [r.status for r in await asyncio.gather(*waits)] == [304] * 16
        assert (await session.get(url, headers=AUTH)).status == 200


async def test_idle_keepalive_connections_are_closed(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    document = _doc(openbao, store_token_file, tmp_path, keepalive_timeout="700ms")
    async with running(document) as (_, api, _):
        reader, writer = (await _open(api, 1))[0]
        writer.write(b"GET /secrets/secret/x HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 401 " in head.split(b"\r\n")[0]
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # the rest of the 401, then EOF
        assert reader.at_eof() and b"caller token" in data
        assert 0.4 < time.monotonic() - started < 3
        writer.close()


def test_a_low_open_file_limit_is_fitted_and_survives_a_flood(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    """The sidecar as a process, with 300 open files allowed in all: its listeners' caps are
    lowered to fit, 400 idle sockets are evicted as they come, and reads and probes work."""
    openbao.kv_put(f"{uid}/db", {"password": "pw-nofile"})
    port, ops_port = free_port(), free_port()
    document = config(
        openbao.addr,
        store_token_file,
        tmp_path,
        listen=f"127.0.0.1:{port}",
        metrics_listen=f"127.0.0.1:{ops_port}",
    )
    (tmp_path / "caller-token").write_text(CALLER_TOKEN)
    config_file = tmp_path / "sidecar.json"
    config_file.write_text(json.dumps(document))

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    log_file = (tmp_path / "sidecar.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--config", str(config_file)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=limit_files,  # noqa: PLW1509 - only lowers a limit
        env={k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
    )
    flood: list[socket.socket] = []
    try:
        _wait_ready(ops_port)
        for _ in range(400):
            flood.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.3)
        for target in (port, port, ops_port):
            path = f"/secrets/secret/{uid}/db" if target == port else "/healthz"
            status, body = _get(target, path)
            assert status == 200, body
        assert b"pw-nofile" in _get(port, f"/secrets/secret/{uid}/db")[1]
    finally:
        for sock in flood:
            sock.close()
        process.terminate()
        process.wait(15)
        log_file.close()
    lines = [json.loads(x) for x in (tmp_path / "sidecar.log").read_text().splitlines() if x]
    fitted = [x for x in lines if x["msg"].startswith("open-file limit is too low")]
    assert fitted and fitted[0]["nofile"] == 300
    assert any(x["msg"].startswith("idle connection closed") for x in lines)
    assert process.returncode == 0


def _get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: {CALLER_TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _wait_ready(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, IndexError, ValueError):
            if _get(port, "/readyz")[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the sidecar did not become ready")


async def test_streams_and_blocking_queries_are_bounded_and_released_at_shutdown(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-streams"})
    document = _doc(openbao, store_token_file, tmp_path, max_connections=64)
    document["shutdown_timeout"] = "2s"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with running(document) as (server, api, _):
            url = f"{api}/secrets/secret/{uid}/db"
            assert (await session.get(url, headers=AUTH)).status == 200
            streams = [await session.get(f"{api}/events", headers=AUTH) for _ in range(40)]
            assert all(s.status == 200 for s in streams)
            waits = [
                asyncio.create_task(session.get(f"{url}?wait=5m", headers=AUTH)) for _ in range(24)
            ]
            await asyncio.sleep(0.5)
            assert metric(server.sidecar, "sidecar_http_connections", {"listener": "api"}) == 64
            reader, writer = (await _open(api, 1))[0]  # the 65th: every slot is busy
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            started = time.monotonic()
        # Leaving `running` shut the server down: every stream and query was released.
        assert time.monotonic() - started < 6
        for stream in streams:
            assert await asyncio.wait_for(stream.content.read(), 5) is not None
        done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)
        assert all(isinstance(r, aiohttp.ClientError) or r.status in (200, 304, 503) for r in done)


async def test_clients_that_never_read_their_answers_cannot_hold_the_slots(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    """Pipelining requests and never reading the answers pauses the sidecar's writes on those
    connections: such a reader is owed nothing and makes room like an idle one."""
    openbao.kv_put(f"{uid}/db", {"password": "pw-pinned"})
    document = _doc(openbao, store_token_file, tmp_path, ops_max_connections=4)
    async with running(document) as (_, api, ops), aiohttp.ClientSession() as session:
        url = f"{api}/secrets/secret/{uid}/db"
        assert (await session.get(url, headers=AUTH)).status == 200
        pins = [*_pin(ops, "/metrics", 4, 2000), *_pin(api, url.removeprefix(api), 16, 20000)]
        await asyncio.sleep(1)
        async with aiohttp.ClientSession() as fresh:  # new connections: each must get a slot
            for _ in range(3):
                probe = await asyncio.wait_for(fresh.get(f"{ops}/healthz"), 5)
                assert probe.status == 200
                read = await asyncio.wait_for(fresh.get(url, headers=AUTH), 5)
                assert read.status == 200
        for sock in pins:
            sock.close()


def _pin(base: str, target: str, count: int, pipeline: int) -> list[socket.socket]:
    host, port = base.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * pipeline)
        socks.append(sock)
    return socks
