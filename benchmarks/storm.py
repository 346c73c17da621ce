"""Scenario 7: a restart storm. N sidecar processes start at the same instant, each preloading
K secrets, against an OpenBao with a rate-limit quota; cold, warm (each sidecar's snapshot), and
with the store down (snapshot only).

Measured per phase: store requests (total, per second, peak; from the store's audit log, by
its ``time`` field), 429s (OpenBao does not audit requests it rejects with 429, so those come
from each sidecar's ``sidecar_backend_errors_total{kind="rate_limited"}``), and for each
sidecar the time from spawn until its ops port answers and until ``/readyz`` says 200.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    AuditTail,
    BenchError,
    SidecarProc,
    audit_time,
    cpu_seconds,
    http,
    metric_sum,
    request_kind,
)
from sidecar.dev.openbao import DevOpenBao

STORM_CLASS = {
    "business_function": "restart storm benchmark",
    "owner": "team-bench",
    "refresh_interval": "5m",
    "max_cache_age": "1h",
    "on_outage": "serve_stale",
    "rotation_method": "new KV v2 version",
    "revocation_steps": "none: benchmark data",
}

ERROR_KINDS = (
    "rate_limited",
    "connection",
    "timeout",
    "server_error",
    "sealed",
    "throttled",
    "auth_failed",
)


def _sidecars(
    store: DevOpenBao, workdir: Path, count: int, secrets: int, jitter: float
) -> list[SidecarProc]:
    store.request(
        "PUT",
        "sys/policies/acl/storm-read",
        {
            "policy": 'path "secret/data/storm/*" { capabilities = ["read"] }\n'
            'path "secret/metadata/storm/*" { capabilities = ["read"] }\n'
        },
    )
    rules = [
        {"match": f"secret/storm/s{i:02d}", "class": "storm", "preload": True}
        for i in range(secrets)
    ]
    out = []
    for n in range(count):
        directory = workdir / f"storm-{n:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / "snapshot.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        # one token per sidecar, so the audit log tells the sidecars apart (by accessor)
        reply = store.request(
            "POST", "auth/token/create", {"policies": ["storm-read"], "ttl": "2h"}
        )
        out.append(
            SidecarProc(
                f"storm sidecar {n}",
                directory,
                store.addr,
                str(reply["auth"]["client_token"]),
                rules=rules,
                classes={"storm": STORM_CLASS},
                start=False,
                startup_jitter=f"{jitter:g}s",
                snapshot={
                    "path": str(directory / "state" / "snapshot"),
                    "key_file": str(key),
                    "interval": "30s",
                },
            )
        )
    return out


def _phase(  # noqa: PLR0915 - one measurement, start to finish
    label: str,
    sidecars: list[SidecarProc],
    audit: AuditTail,
    *,
    secrets: int,
    jitter: float,
    store_up: bool,
    timeout: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    audit.mark()
    wall0 = time.time()
    t0 = time.monotonic()
    for sidecar in sidecars:
        sidecar.start()
    spawned = time.monotonic() - t0
    listening: dict[int, float] = {}
    ready: dict[int, float] = {}
    cpu_at_ready: dict[int, float] = {}
    while len(ready) < len(sidecars) and time.monotonic() - t0 < timeout:
        for i, sidecar in enumerate(sidecars):
            if i in ready:
                continue
            if not sidecar.alive():
                raise BenchError(f"{sidecar.name} exited:\n{sidecar.tail()}")
            try:
                status = http("GET", f"{sidecar.ops}/readyz", timeout=2)[0]
            except OSError:
                continue
            now = time.monotonic() - t0
            listening.setdefault(i, now)
            if status == 200:
                ready[i] = now
                cpu_at_ready[i] = cpu_seconds(sidecar.pid)
        time.sleep(0.05)
    # let the preloads (spread over startup_jitter) and their retries finish
    settle_until = t0 + jitter + 1.0
    last_count, stable_since = -1, time.monotonic()
    while time.monotonic() - t0 < timeout:
        now = time.monotonic()
        count = len(audit.requests()) if store_up else 0
        if count != last_count:
            last_count, stable_since = count, now
        if now >= settle_until and now - stable_since >= 1.0:
            break
        time.sleep(0.25)
    errors: Counter[str] = Counter()
    for sidecar in sidecars:
        with contextlib.suppress(OSError, BenchError):
            samples = sidecar.metrics()
            for kind in ERROR_KINDS:
                errors[kind] += int(metric_sum(samples, "sidecar_backend_errors_total", kind=kind))
            errors["throttled"] += int(
                metric_sum(samples, "sidecar_unavailable_total", reason="throttled")
            )
    for sidecar in sidecars:
        sidecar.signal(signal.SIGTERM)  # all at once: each writes its snapshot on the way out
    for sidecar in sidecars:
        sidecar.wait(20)
    time.sleep(0.2)
    records = [r for r in audit.requests() if audit_time(r) >= wall0 - 1]
    times = sorted(audit_time(r) - wall0 for r in records)
    per_second = Counter(math.floor(max(0.0, t)) for t in times)
    horizon = int(max(per_second, default=0)) + 1
    kinds = Counter(request_kind(str(r["request"].get("path", ""))) for r in records)
    by_sidecar = Counter(str((r.get("auth") or {}).get("accessor", "?")) for r in records)
    n, ready_times = len(sidecars), [ready[i] for i in sorted(ready)]
    after_listen = [ready[i] - listening[i] for i in sorted(ready)]
    secret_requests = kinds.get("kv_data", 0) + kinds.get("kv_metadata", 0)
    result = {
        "sidecars": n,
        "secrets_each": secrets,
        "store_up": store_up,
        "spawn_s": round(spawned, 3),
        "ready": len(ready),
        "all_ready": len(ready) == n,
        "ready_max_s": round(max(ready_times), 3) if ready_times else None,
        "ready_median_s": round(statistics.median(ready_times), 3) if ready_times else None,
        "listen_to_ready_max_s": round(max(after_listen), 3) if after_listen else None,
        "listening_max_s": round(max(listening.values()), 3) if listening else None,
        "cpu_s_at_ready_median": (
            round(statistics.median(cpu_at_ready.values()), 3) if cpu_at_ready else None
        ),
        "store_requests": len(records),
        "store_requests_by_kind": dict(sorted(kinds.items())),
        "store_requests_per_sidecar_max": max(by_sidecar.values(), default=0),
        "store_requests_per_secret_per_sidecar": round(len(records) / (n * secrets), 3),
        "secret_reads_per_secret_per_sidecar": round(secret_requests / (n * secrets), 3),
        "peak_store_rps": max(per_second.values(), default=0),
        "store_rps_timeline": [per_second.get(s, 0) for s in range(horizon)],
        "rate_limited_429": errors["rate_limited"],
        "sidecar_errors": {k: v for k, v in sorted(errors.items()) if v},
    }
    log(
        f"  {label:<8} ready {len(ready)}/{n} max {result['ready_max_s']}s "
        f"(after listening {result['listen_to_ready_max_s']}s); store requests "
        f"{len(records)} (peak {result['peak_store_rps']}/s, "
        f"{result['store_requests_per_secret_per_sidecar']} per secret per sidecar); "
        f"429s {errors['rate_limited']}"
    )
    return result


def run(
    *,
    workdir: Path,
    sidecars: int,
    secrets: int,
    quota_rps: float,
    jitter: float,
    phases: tuple[str, ...],
    timeout: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    store = DevOpenBao(workdir / "storm-store").start()
    try:
        for i in range(secrets):
            store.kv_put(f"storm/s{i:02d}", {"username": f"svc-{i}", "password": "s" * 150})
        fleet = _sidecars(store, workdir, sidecars, secrets, jitter)
        store.request("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
        store.request(
            "POST", "sys/quotas/rate-limit/bench-storm", {"rate": quota_rps, "interval": "1s"}
        )
        audit = AuditTail(store.audit_log)
        results: dict[str, Any] = {}

        def phase(label: str, group: list[SidecarProc], up: bool = True) -> None:
            if label not in phases:
                return
            results[label] = _phase(
                label,
                group,
                audit,
                secrets=secrets,
                jitter=jitter,
                store_up=up,
                timeout=timeout,
                log=log,
            )
            time.sleep(1.2)  # a fresh quota window for the next phase

        phase("cold_1", fleet[:1])
        (fleet[0].directory / "state" / "snapshot").unlink(missing_ok=True)  # cold again
        phase("cold", fleet)
        phase("warm", fleet)
        phase("warm_1", fleet[:1])
        store.kill()
        phase("store_down", fleet, up=False)
    finally:
        store.stop()
    return {
        "sidecars": sidecars,
        "secrets_each": secrets,
        "startup_jitter_s": jitter,
        "quota": {"type": "rate-limit", "path": "(whole store)", "rate_per_s": quota_rps},
        "note_429": "OpenBao does not audit requests refused with 429: they are counted by "
        'the sidecars\' own sidecar_backend_errors_total{kind="rate_limited"}',
        "phases": results,
    }
