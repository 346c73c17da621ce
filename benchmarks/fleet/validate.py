"""The simulator held against reality once: real sidecar processes against a real OpenBao,
started together, their store requests counted by OpenBao's own audit log, then the same
fleet simulated; both rates side by side. Secrets are KV v2, kept fresh by refresh-ahead
(metadata reads); only secret reads are compared (a real sidecar also looks up its token and
discovers mounts once; those are reported apart)."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import AuditTail, SidecarProc, audit_time, request_kind
from benchmarks.fleet.fleet import FleetSpec, secret_class, simulate
from benchmarks.fleet.storemodel import StoreModel
from sidecar.core.policy import OnOutage
from sidecar.dev.openbao import DevOpenBao

CLASS = {
    "business_function": "fleet simulator validation",
    "owner": "team-fleet",
    "on_outage": "serve_stale",
    "rotation_method": "new KV v2 version",
    "revocation_steps": "none: benchmark data",
}


def validate(
    store_model: StoreModel,
    *,
    sidecars: int = 16,
    secrets: int = 20,
    refresh: float = 2.0,
    seconds: float = 40.0,
    settle: float = 10.0,
    say: Any = print,
) -> dict[str, Any]:
    """Real and simulated secret reads per second over [settle, seconds) after a joint start."""
    real = _real(sidecars, secrets, refresh, seconds, settle, say)
    spec = FleetSpec(
        sidecars=sidecars,
        secrets=secrets,
        mix=[(secret_class("fleet", refresh, 3600, OnOutage.SERVE_STALE), 1.0)],
    )
    run = simulate(spec, store_model, duration=seconds)
    simulated = run.window(settle, seconds)["mean"]
    error = (simulated - real["rate"]) / real["rate"] if real["rate"] else float("inf")
    say(
        f"  validation: {sidecars} real sidecars {real['rate']:.1f} secret reads/s, "
        f"simulated {simulated:.1f}/s ({error:+.1%})"
    )
    return {
        "sidecars": sidecars,
        "secrets": secrets,
        "refresh_interval": refresh,
        "window": [settle, seconds],
        "real_rate": real["rate"],
        "real_other": real["other"],
        "simulated_rate": simulated,
        "estimate": round(spec.expected_rate(), 1),
        "error": round(error, 4),
        "within_20_percent": abs(error) <= 0.2,
    }


def _real(
    count: int, secrets: int, refresh: float, seconds: float, settle: float, say: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-validation-") as folder:
        workdir = Path(folder)
        store = DevOpenBao(workdir / "bao").start()
        procs: list[SidecarProc] = []
        try:
            for i in range(secrets):
                store.kv_put(f"fleet/s{i:03d}", {"value": f"validation-{i}"})
            rules = [
                {"match": f"secret/fleet/s{i:03d}", "class": "fleet", "preload": True}
                for i in range(secrets)
            ]
            klass = {**CLASS, "refresh_interval": f"{refresh:g}s", "max_cache_age": "1h"}
            procs = [
                SidecarProc(
                    f"validation sidecar {n}",
                    workdir / f"sidecar-{n:02d}",
                    store.addr,
                    store.root_token,
                    rules=rules,
                    classes={"fleet": klass},
                    start=False,
                )
                for n in range(count)
            ]
            audit = AuditTail(store.audit_log)
            audit.mark()
            started = time.time()
            for proc in procs:
                proc.start()
            say(f"  validation: {count} real sidecars started; {seconds:g}s ...")
            time.sleep(seconds + 1.0)
            records = audit.requests()
        finally:
            for proc in procs:
                proc.stop()
            store.stop()
    kinds: Counter[str] = Counter()
    reads = 0
    for record in records:
        at = audit_time(record) - started
        kind = request_kind(str(record.get("request", {}).get("path", "")))
        if settle <= at < seconds:
            if kind in ("kv_data", "kv_metadata"):
                reads += 1
            else:
                kinds[kind] += 1
    return {"rate": round(reads / (seconds - settle), 1), "other": dict(kinds)}
