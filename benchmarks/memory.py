"""Scenario 8: resident memory of the sidecar idle and holding N cached secrets (~200 bytes of
data each), next to `bao proxy` idle and after passing the same reads through."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    ROOT,
    BenchError,
    Proc,
    SidecarProc,
    clean_env,
    metric_sum,
    rss_bytes,
)
from benchmarks.throughput import bao_proxy
from sidecar.dev.openbao import DevOpenBao

MB = 2**20


async def _many(
    method: str,
    urls: list[str],
    headers: dict[str, str],
    *,
    bodies: list[dict[str, Any]] | None = None,
    concurrency: int = 32,
) -> dict[int, int]:
    """Many requests with bounded concurrency; returns a count per status."""
    statuses: dict[int, int] = {}
    queue = list(enumerate(urls))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            while queue:
                i, url = queue.pop()
                body = bodies[i] if bodies is not None else None
                async with session.request(method, url, json=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _secret(i: int) -> dict[str, Any]:
    return {"data": {"username": f"svc-{i:05d}", "password": f"{i:05d}" + "m" * 175}}


def _settled_rss(pid: int | None, pause: float = 1.0) -> int | None:
    time.sleep(pause)
    return rss_bytes(pid)


def _imports() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memprobe", "imports"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return {"error": result.stderr[-500:]}
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _trace(
    store: DevOpenBao, store_token: str, workdir: Path, base: int, more: int
) -> dict[str, Any]:
    """Python allocations per cached secret, by the file that allocated them: a sidecar run
    under tracemalloc (benchmarks.memprobe) holding ``base`` secrets, then ``base + more``."""
    sidecar = _memory_sidecar(
        "sidecar (tracemalloc)", workdir / "sidecar-trace", store, store_token
    )
    dump = workdir / "tracemalloc.json"
    sidecar.args = [
        sys.executable,
        "-m",
        "benchmarks.memprobe",
        "run",
        str(dump),
        "--",
        "run",
        "--config",
        str(sidecar.config),
    ]
    dumps = []
    try:
        sidecar.start()
        sidecar.wait_ready()
        caller = {"X-Sidecar-Token": sidecar.caller_token}
        for start, stop in ((0, base), (base, base + more)):
            urls = [f"{sidecar.base}/secrets/secret/mem/s{i:05d}" for i in range(start, stop)]
            asyncio.run(_many("GET", urls, caller))
            dump.unlink(missing_ok=True)
            sidecar.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 30
            while not dump.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # let the writer finish
            dumps.append(json.loads(dump.read_text()))
    finally:
        sidecar.stop()
    before = {f["file"]: f for f in dumps[0]["top_files"]}
    per_file = []
    for f in dumps[1]["top_files"]:
        grown = f["mb"] - before.get(f["file"], {"mb": 0.0})["mb"]
        if grown > 0:
            per_file.append({"file": f["file"], "bytes_per_secret": round(grown * MB / more)})
    per_file.sort(key=lambda f: -f["bytes_per_secret"])
    lines_before = {f["file"]: f for f in dumps[0]["top_lines"]}
    per_line = []
    for f in dumps[1]["top_lines"]:
        grown = f["mb"] - lines_before.get(f["file"], {"mb": 0.0})["mb"]
        if grown * MB / more >= 8:
            per_line.append({"line": f["file"], "bytes_per_secret": round(grown * MB / more)})
    per_line.sort(key=lambda f: -f["bytes_per_secret"])
    traced = (dumps[1]["traced_mb"] - dumps[0]["traced_mb"]) * MB / more
    return {
        "tool": "tracemalloc (allocations still alive, by allocating file)",
        "secrets": [base, base + more],
        "python_bytes_per_secret": round(traced),
        "by_file": per_file[:10],
        "by_line": per_line[:15],
    }


FAST_CLASS = {
    "business_function": "benchmark: refresh-ahead in steady state",
    "owner": "team-bench",
    "refresh_interval": "2s",
    "max_cache_age": "10m",
    "on_outage": "serve_stale",
    "rotation_method": "new KV v2 version",
    "revocation_steps": "none: benchmark data",
}


def _steady(
    store: DevOpenBao, store_token: str, workdir: Path, secrets: int, seconds: float
) -> dict[str, Any]:
    """RSS while the same secrets are read and refreshed ahead, over and over (a class with a
    2 s refresh_interval and a 10 min max_cache_age): it should stay flat."""
    sidecar = SidecarProc(
        "sidecar (steady state)",
        workdir / "sidecar-steady",
        store.addr,
        store_token,
        rules=[{"match": "secret/mem/**", "class": "fast"}],
        classes={"fast": FAST_CLASS},
        backend={
            "rate_limit": {"requests_per_second": 100000, "burst": 100000},
            "timeout": "10s",
        },
    )
    urls = [f"{sidecar.base}/secrets/secret/mem/s{i:05d}" for i in range(secrets)]
    try:
        sidecar.wait_ready()
        caller = {"X-Sidecar-Token": sidecar.caller_token}
        asyncio.run(_many("GET", urls, caller))
        time.sleep(0.5)

        def fetches() -> float:
            return metric_sum(
                sidecar.metrics(), "sidecar_backend_fetch_duration_seconds_count", outcome="success"
            )

        start_rss, start_fetches, started = rss_bytes(sidecar.pid) or 0, fetches(), time.monotonic()
        timeline = []
        while time.monotonic() - started < seconds:
            asyncio.run(_many("GET", urls, caller))
            timeline.append(round((rss_bytes(sidecar.pid) or 0) / MB, 1))
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        end_rss, refreshes = rss_bytes(sidecar.pid) or 0, fetches() - start_fetches
    finally:
        sidecar.stop()
    grown = end_rss - start_rss
    return {
        "secrets": secrets,
        "refresh_interval_s": 2,
        "max_cache_age_s": 600,
        "seconds": round(elapsed, 1),
        "refreshes": int(refreshes),
        "rss_start_mb": round(start_rss / MB, 1),
        "rss_end_mb": round(end_rss / MB, 1),
        "rss_growth_mb_per_minute": round(grown / MB / elapsed * 60, 1),
        "retained_kb_per_refresh": round(grown / 1024 / refreshes, 2) if refreshes else None,
        "rss_timeline_mb": timeline,
    }


def _memory_sidecar(name: str, directory: Path, store: DevOpenBao, token: str) -> SidecarProc:
    return SidecarProc(
        name,
        directory,
        store.addr,
        token,
        rules=[{"match": "secret/mem/**", "class": "bench"}],
        start=False,
        backend={
            "rate_limit": {"requests_per_second": 100000, "burst": 100000},
            "timeout": "10s",
        },
    )


def run(  # noqa: PLR0915 - one measurement, start to finish
    *,
    store: DevOpenBao,
    store_token: str,
    workdir: Path,
    steps: tuple[int, ...],
    trace: bool,
    steady_seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    total = max(steps)
    started = time.monotonic()
    root = {"X-Vault-Token": store.root_token}
    urls = [f"{store.addr}/v1/secret/data/mem/s{i:05d}" for i in range(total)]
    written = asyncio.run(_many("POST", urls, root, bodies=[_secret(i) for i in range(total)]))
    if written.get(200) != total:
        raise BenchError(f"writing {total} secrets: {written}")
    log(f"  wrote {total} secrets to the store in {time.monotonic() - started:.1f}s")

    procs: list[Proc] = []
    out: dict[str, Any] = {"secret_data_bytes": len(str(_secret(0)["data"]).encode())}
    try:
        sidecar = _memory_sidecar(
            "sidecar (memory)", workdir / "sidecar-memory", store, store_token
        )
        sidecar.start()
        procs.append(sidecar)
        sidecar.wait_ready()
        sidecar_rss: dict[str, float | None] = {}
        rss = _settled_rss(sidecar.pid)
        sidecar_rss["idle"] = round(rss / MB, 1) if rss else None
        caller = {"X-Sidecar-Token": sidecar.caller_token}
        done = 0
        for step in sorted(steps):
            paths = [f"{sidecar.base}/secrets/secret/mem/s{i:05d}" for i in range(done, step)]
            statuses = asyncio.run(_many("GET", paths, caller))
            if statuses.get(200) != len(paths):
                raise BenchError(f"reading {len(paths)} secrets through the sidecar: {statuses}")
            done = step
            cached = metric_sum(sidecar.metrics(), "sidecar_secrets_cached")
            if cached < step:
                raise BenchError(f"the sidecar holds {cached:g} secrets, expected {step}")
            rss = _settled_rss(sidecar.pid)
            sidecar_rss[str(step)] = round(rss / MB, 1) if rss else None
            log(f"  sidecar RSS with {step} cached secrets: {sidecar_rss[str(step)]} MB")
        out["sidecar_rss_mb"] = sidecar_rss
        sidecar.stop()
        ordered = sorted(steps)
        low, high = sidecar_rss.get(str(ordered[0])), sidecar_rss.get(str(ordered[-1]))
        if len(ordered) > 1 and low is not None and high is not None:
            out["sidecar_rss_kb_per_secret"] = round(
                (high - low) * 1024 / (ordered[-1] - ordered[0]), 2
            )
        out["imports"] = _imports()
        if trace:
            out["per_secret_profile"] = _trace(
                store, store_token, workdir, base=ordered[0], more=min(3000, total - ordered[0])
            )
            log(
                "  tracemalloc: "
                f"{out['per_secret_profile']['python_bytes_per_secret']} bytes per cached secret"
            )

        proxy, proxy_url = bao_proxy(store, workdir / "memory-proxy")
        procs.append(proxy)
        proxy_rss: dict[str, float | None] = {}
        rss = _settled_rss(proxy.pid)
        proxy_rss["idle"] = round(rss / MB, 1) if rss else None
        paths = [f"{proxy_url}/v1/secret/data/mem/s{i:05d}" for i in range(total)]
        statuses = asyncio.run(_many("GET", paths, {"X-Vault-Token": store_token}))
        if statuses.get(200) != total:
            raise BenchError(f"reading through bao proxy: {statuses}")
        rss = _settled_rss(proxy.pid)
        proxy_rss[f"after_{total}_reads"] = round(rss / MB, 1) if rss else None
        out["bao_proxy_rss_mb"] = proxy_rss
        after = proxy_rss[f"after_{total}_reads"]
        log(f"  bao proxy RSS idle {proxy_rss['idle']} MB, after {total} reads {after} MB")
        if steady_seconds > 0:
            out["steady_state"] = steady = _steady(
                store, store_token, workdir, min(500, total), steady_seconds
            )
            log(
                f"  steady state ({steady['refreshes']} refreshes in {steady['seconds']}s): RSS "
                f"{steady['rss_start_mb']} -> {steady['rss_end_mb']} MB, "
                f"{steady['retained_kb_per_refresh']} KB kept per refresh"
            )
    finally:
        for proc in reversed(procs):
            proc.stop()
    out["seconds"] = round(time.monotonic() - started, 1)
    return out
