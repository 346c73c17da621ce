"""The store model's numbers, measured on this machine in the same run: a real OpenBao dev
server (with its file audit device on, as in production), KV v2 data and metadata reads at
increasing concurrency (wrk, or the built-in load generator), reads/s and latency."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.fleet.storemodel import StoreModel
from benchmarks.loadgen import choose, run_load
from sidecar.dev.openbao import DevOpenBao

KINDS = {"data": "secret/data/fleet/calibration", "metadata": "secret/metadata/fleet/calibration"}


def measure(concurrency: list[int], seconds: float, say: Any = print) -> dict[str, Any]:
    """Reads/s and latency of each kind at each concurrency, against a fresh OpenBao."""
    generator = choose("auto")
    with tempfile.TemporaryDirectory(prefix="fleet-calibration-") as folder:
        store = DevOpenBao(Path(folder) / "bao").start()
        try:
            store.kv_put("fleet/calibration", {"value": "calibration"})
            points: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
            for kind, path in KINDS.items():
                for connections in concurrency:
                    result = run_load(
                        generator,
                        f"{store.addr}/v1/{path}",
                        {"X-Vault-Token": store.root_token},
                        connections=connections,
                        duration=seconds,
                        workdir=Path(folder),
                    )
                    point = {
                        "concurrency": connections,
                        "rps": round(result.rps, 1),
                        "p50_ms": round(result.p50_ms, 3),
                        "p99_ms": round(result.p99_ms, 3),
                        "errors": result.errors + result.non_2xx,
                    }
                    points[kind].append(point)
                    say(
                        f"  store {kind:8} x{connections:<3} {point['rps']:>8.0f} reads/s, "
                        f"p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms"
                    )
        finally:
            store.stop()
    return {"generator": generator, "seconds_per_point": seconds, "points": points}


def model(calibration: dict[str, Any]) -> StoreModel:
    """The store model for these measurements: each kind's capacity is the most reads/s seen;
    the idle latency is the median at concurrency 1 less one service time."""
    points = calibration["points"]
    capacity = {kind: max(p["rps"] for p in series) for kind, series in points.items()}
    idle = statistics.fmean(
        max(0.0, series[0]["p50_ms"] / 1000 - 1 / capacity[kind]) for kind, series in points.items()
    )
    capacity["health"] = 10 * max(capacity.values())  # sys/health: cheap, and rare
    return StoreModel(capacity=capacity, base_latency=idle)
