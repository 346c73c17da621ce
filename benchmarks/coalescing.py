"""Scenario 6: N concurrent cold requests spread over K secrets -> how many store reads?

The connections are opened first; then every request is written in the same event-loop turn,
so all of them are in flight together before the first answer arrives. The store reads are
counted in the store's own audit log (OpenBao's file audit device), not in our metrics.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import AuditTail, BenchError, SidecarProc, request_kind
from sidecar.dev.openbao import DevOpenBao


async def burst(
    port: int, paths: list[str], headers: dict[str, str], *, connect_concurrency: int = 64
) -> list[tuple[int, str, float]]:
    """Send one GET per path, all at once, each on its own connection.

    Returns (status, X-Sidecar-Cache, seconds from the burst to this answer) per request."""
    gate = asyncio.Semaphore(connect_concurrency)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            return await asyncio.open_connection("127.0.0.1", port)

    streams = await asyncio.gather(*(connect() for _ in paths))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    started = time.perf_counter()
    for (_, writer), path in zip(streams, paths, strict=True):
        writer.write(
            f"GET /secrets/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
        )

    async def answer(reader: asyncio.StreamReader) -> tuple[int, str, float]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        await reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields.get("x-sidecar-cache", ""), time.perf_counter() - started

    try:
        return list(await asyncio.gather(*(answer(reader) for reader, _ in streams)))
    finally:
        for _, writer in streams:
            writer.close()


def run(
    *,
    store: DevOpenBao,
    store_token: str,
    workdir: Path,
    requests: int,
    secrets: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    prefix = f"coalesce-{uuid.uuid4().hex[:8]}"
    paths = [f"secret/{prefix}/s{i:03d}" for i in range(secrets)]
    for i, path in enumerate(paths):
        store.kv_put(path.removeprefix("secret/"), {"username": f"svc-{i}", "password": "c" * 150})
    sidecar = SidecarProc(
        "sidecar (coalescing)",
        workdir / "sidecar-coalesce",
        store.addr,
        store_token,
        rules=[{"match": f"secret/{prefix}/**", "class": "bench"}],
    )
    try:
        sidecar.wait_ready()
        time.sleep(0.3)  # let the start-up token lookup land before the mark
        audit = AuditTail(store.audit_log)
        audit.mark()
        wanted = [paths[i % secrets] for i in range(requests)]
        answers = asyncio.run(
            burst(sidecar.port, wanted, {"X-Sidecar-Token": sidecar.caller_token})
        )
        time.sleep(0.2)  # the audit device writes the response record after the answer
        records = audit.requests()
    finally:
        sidecar.stop()
    if len(answers) != requests:
        raise BenchError(f"{len(answers)} answers to {requests} requests")
    data_paths = {f"secret/data/{p.removeprefix('secret/')}" for p in paths}
    store_reads = sum(1 for r in records if r["request"].get("path") in data_paths)
    kinds = Counter(request_kind(str(r["request"].get("path", ""))) for r in records)
    statuses = Counter(str(status) for status, _, _ in answers)
    cache = Counter(header or "-" for _, header, _ in answers)
    latencies = sorted(seconds for _, _, seconds in answers)
    result = {
        "requests": requests,
        "secrets": secrets,
        "store_reads": store_reads,
        "ideal_store_reads": secrets,
        "store_requests_total": len(records),
        "store_requests_by_kind": dict(sorted(kinds.items())),
        "statuses": dict(statuses),
        "x_sidecar_cache": dict(cache),
        "all_answered_s": round(latencies[-1], 4),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "counted_in": "the store's file audit log (request records)",
    }
    log(
        f"  {requests} concurrent cold requests over {secrets} secrets -> {store_reads} store "
        f"reads (ideal {secrets}); all answered in {result['all_answered_s']:.2f}s; "
        f"statuses {dict(statuses)}"
    )
    return result
