"""Scenarios 1-5: req/s, latency and server CPU of a cache hit next to the alternatives.

Every target gets the same generator, the same concurrency and the same round length; the
rounds alternate in order (A B C D E, then E D C B A, ...) so drift on a noisy machine hits
every target alike; the report is the median of the rounds, and each ratio is the median of
the per-round ratios (measured minutes apart at most, on the same machine state).
"""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import profiling
from benchmarks.common import (
    BenchError,
    Proc,
    SidecarProc,
    cpu_seconds,
    free_port,
    http,
    metric_sum,
    rss_bytes,
    wait_port,
)
from benchmarks.loadgen import LoadResult, run_load
from sidecar.dev.openbao import DevOpenBao, bao_binary

HOT_PATH = "bench/hot"  # KV v2 key on the mount "secret"
# ~200 bytes of secret data, like a database credential with a long password
HOT_DATA = {
    "username": "svc-bench-app",
    "password": "p" * 120,
    "host": "db.bench.internal",
    "port": "5432",
}


@dataclass
class Target:
    name: str
    label: str
    url: str
    headers: dict[str, str]
    pid: Callable[[], int | None]  # the server process whose CPU is charged
    available: bool = True
    reason: str | None = None
    sidecar: SidecarProc | None = None  # hit checks through its metrics
    rounds: list[dict[str, Any]] = field(default_factory=list)


def bao_proxy(store: DevOpenBao, workdir: Path) -> tuple[Proc, str]:
    """`bao proxy` with `cache {}` and `api_proxy` in front of the store; clients send their
    own X-Vault-Token (no auto-auth)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "bao-proxy.hcl"
    config.write_text(
        f"""log_level = "warn"
cache {{}}
api_proxy {{
  use_auto_auth_token = false
}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
vault {{
  address = "{store.addr}"
}}
"""
    )
    proc = Proc(
        "bao proxy", [bao_binary(), "proxy", f"-config={config}"], workdir / "bao-proxy.log"
    )
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def app_token(store: DevOpenBao) -> str:
    """A token as an application would hold: a read policy on the KV v2 mount."""
    store.request(
        "PUT",
        "sys/policies/acl/bench-read",
        {
            "policy": 'path "secret/data/*" { capabilities = ["read"] }\n'
            'path "secret/metadata/*" { capabilities = ["read"] }\n'
        },
    )
    reply = store.request(
        "POST", "auth/token/create", {"policies": ["bench-read"], "ttl": "4h", "no_parent": True}
    )
    return str(reply["auth"]["client_token"])


def hit_counts(sidecar: SidecarProc) -> tuple[float, float]:
    samples = sidecar.metrics()
    hits = metric_sum(samples, "sidecar_cache_lookups_total", outcome="hit")
    total = metric_sum(samples, "sidecar_cache_lookups_total")
    return hits, total


def run(  # noqa: PLR0915 - one measurement, start to finish
    *,
    store: DevOpenBao,
    token: str,
    workdir: Path,
    generator: str,
    connections: int,
    duration: float,
    rounds: int,
    warmup: float,
    threads: int,
    profile_seconds: float,
    results: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    store.kv_put(HOT_PATH, HOT_DATA)
    procs: list[Proc] = []
    try:
        sidecar = SidecarProc(
            "sidecar",
            workdir / "sidecar-hit",
            store.addr,
            token,
            rules=[{"match": "secret/bench/**", "class": "bench"}],
        )
        procs.append(sidecar)
        sidecar.wait_ready()
        status, headers, _ = sidecar.get(f"secret/{HOT_PATH}")
        if status != 200:
            raise BenchError(f"the sidecar answered {status} to the first read")
        status, headers, body = sidecar.get(f"secret/{HOT_PATH}")
        if headers.get("X-Sidecar-Cache") != "HIT":
            raise BenchError(f"the second read was not a hit: {headers.get('X-Sidecar-Cache')}")
        body_file = workdir / "hit-body.json"
        body_file.write_bytes(body)

        proxy, proxy_url = bao_proxy(store, workdir)
        procs.append(proxy)

        bare_port = free_port()
        bare = Proc(
            "bare aiohttp",
            [
                sys.executable,
                "-m",
                "benchmarks.bare",
                "--port",
                str(bare_port),
                "--body",
                str(body_file),
            ],
            workdir / "bare.log",
        )
        procs.append(bare)
        wait_port(bare_port, bare)

        caller = {"X-Sidecar-Token": sidecar.caller_token}
        vault_token = {"X-Vault-Token": token}
        targets = [
            Target(
                "sidecar_hit",
                "1. sidecar hit (GET /secrets/...)",
                f"{sidecar.base}/secrets/secret/{HOT_PATH}",
                caller,
                lambda: sidecar.pid,
                sidecar=sidecar,
            ),
            _vault_api_target(sidecar),
            Target(
                "direct_openbao",
                "3. direct OpenBao KV v2 read",
                f"{store.addr}/v1/secret/data/{HOT_PATH}",
                vault_token,
                lambda: store.pid,
            ),
            Target(
                "bao_proxy",
                "4. bao proxy (cache {} + api_proxy)",
                f"{proxy_url}/v1/secret/data/{HOT_PATH}",
                vault_token,
                lambda: proxy.pid,
            ),
            Target(
                "bare_aiohttp",
                "5. bare aiohttp + uvloop handler",
                f"http://127.0.0.1:{bare_port}/secrets/secret/{HOT_PATH}",
                caller,  # the same request as the hit's (the header is parsed, not checked)
                lambda: bare.pid,
            ),
        ]
        for target in targets:
            if target.available:
                status, _, answer = http("GET", target.url, headers=target.headers)
                if status != 200:
                    raise BenchError(f"{target.name}: {target.url} answered {status}: {answer!r}")
        active = [t for t in targets if t.available]

        def one(target: Target, seconds: float) -> dict[str, Any]:
            server_pid, store_pid = target.pid(), store.pid
            before = hit_counts(target.sidecar) if target.sidecar else None
            cpu0, store0 = cpu_seconds(server_pid), cpu_seconds(store_pid)
            result: LoadResult = run_load(
                generator,
                target.url,
                target.headers,
                connections=connections,
                duration=seconds,
                threads=threads,
                workdir=workdir,
            )
            cpu1, store1 = cpu_seconds(server_pid), cpu_seconds(store_pid)
            record = result.to_json()
            per10k = 1e4 / result.requests if result.requests else 0.0
            record["cpu_s_per_10k"] = round((cpu1 - cpu0) * per10k, 4)
            # the store's CPU while this target ran: what each answer cost the store
            record["store_cpu_s_per_10k"] = (
                None if server_pid == store_pid else round((store1 - store0) * per10k, 4)
            )
            if before is not None and target.sidecar is not None:
                after = hit_counts(target.sidecar)
                lookups = after[1] - before[1]
                record["hit_fraction"] = (
                    round((after[0] - before[0]) / lookups, 6) if lookups else None
                )
            return record

        log(f"  warm-up: {warmup:g}s per target")
        for target in active:
            one(target, warmup)
        for i in range(rounds):
            order = active if i % 2 == 0 else list(reversed(active))
            for target in order:
                record = one(target, duration)
                record["round"] = i + 1
                target.rounds.append(record)
                log(
                    f"  round {i + 1}/{rounds} {target.name:<15} {record['rps']:>9.0f} req/s  "
                    f"p99 {record['p99_ms']:.2f} ms  cpu {record['cpu_s_per_10k']:.2f} s/10k"
                )
        rss = {t.name: rss_bytes(t.pid()) for t in active}
        profiles: dict[str, Any] = {}
        if profile_seconds > 0:
            run_one = functools.partial(
                run_load,
                generator,
                connections=connections,
                threads=threads,
                workdir=workdir,
            )
            # the hit, the Vault-compatible hit, and the bare handler
            for target in (t for t in active if t.name not in {"direct_openbao", "bao_proxy"}):
                profiles[target.name] = _profile(
                    target, run_one, profile_seconds, results, store, token, workdir, log
                )
    finally:
        for proc in reversed(procs):
            proc.stop()

    summaries = {t.name: _summary(t, rss.get(t.name)) for t in targets}
    return {
        "connections": connections,
        "round_seconds": duration,
        "rounds": rounds,
        "warmup_seconds": warmup,
        "targets": summaries,
        "ratios": _ratios(targets),
        "profiles": profiles,
        "store_token": "a token with a read policy on secret/ (what an application holds)",
    }


def _profile(
    target: Target,
    load: Callable[..., LoadResult],
    seconds: float,
    results: Path,
    store: DevOpenBao,
    token: str,
    workdir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Profile one server under the same load as a round; py-spy attaches to the running
    process, cProfile (the fallback) needs a sidecar started under it."""
    results.mkdir(parents=True, exist_ok=True)
    text_file = results / f"profile-{target.name}.txt"
    pid = target.pid()
    if profiling.py_spy() is not None and pid is not None:
        raw = workdir / f"profile-{target.name}.raw"
        recorder = profiling.record(pid, seconds, raw)
        load(target.url, target.headers, duration=seconds + 1)
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
        summary = profiling.summarize_py_spy(raw)
    elif target.sidecar is not None:
        stats = workdir / "sidecar.cprofile"
        profiled = SidecarProc(
            "sidecar (cProfile)",
            workdir / "sidecar-cprofile",
            store.addr,
            token,
            rules=[{"match": "secret/bench/**", "class": "bench"}],
            cprofile_to=stats,
        )
        try:
            profiled.wait_ready()
            profiled.get(f"secret/{HOT_PATH}")
            profiled.get(f"secret/{HOT_PATH}")  # served once: later reads take the hit path
            load(
                profiled.base + urlsplit(target.url).path,
                {key: profiled.caller_token for key in target.headers},
                duration=seconds,
            )
        finally:
            profiled.stop()
        summary = profiling.summarize_cprofile(stats)
    else:
        return {"skipped": "py-spy is not installed (pip install -e '.[bench]')"}
    text = profiling.render(summary, f"{target.label} under load")
    text_file.write_text(text)
    summary["file"] = text_file.name
    log(f"  profile of {target.name} written to {text_file}")
    return summary


def _vault_api_target(sidecar: SidecarProc) -> Target:
    url = f"{sidecar.base}/v1/secret/data/{HOT_PATH}"
    headers = {"X-Vault-Token": sidecar.caller_token}
    target = Target(
        "sidecar_vault_api",
        "2. sidecar Vault-compatible API hit (GET /v1/...)",
        url,
        headers,
        lambda: sidecar.pid,
        sidecar=sidecar,
    )
    try:
        status, _, body = http("GET", url, headers=headers)
    except OSError as exc:
        status, body = 0, str(exc).encode()
    if status != 200:
        target.available = False
        target.reason = f"not available: GET /v1/secret/data/... answered {status}"
        if body:
            target.reason += f" {body[:120].decode(errors='replace')}"
    return target


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _summary(target: Target, rss: int | None) -> dict[str, Any]:
    if not target.available:
        return {"label": target.label, "available": False, "reason": target.reason}
    rounds = target.rounds
    return {
        "label": target.label,
        "available": True,
        "url": target.url,
        "rps": _median([r["rps"] for r in rounds]),
        "rps_min": min(r["rps"] for r in rounds),
        "rps_max": max(r["rps"] for r in rounds),
        "p50_ms": _median([r["p50_ms"] for r in rounds]),
        "p99_ms": _median([r["p99_ms"] for r in rounds]),
        "p999_ms": _median([r["p999_ms"] for r in rounds]),
        "cpu_s_per_10k": _median([r["cpu_s_per_10k"] for r in rounds]),
        "store_cpu_s_per_10k": _median([r["store_cpu_s_per_10k"] for r in rounds]),
        "hit_fraction": _median([r.get("hit_fraction") for r in rounds]),
        "errors": sum(r["errors"] for r in rounds),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "rss_mb_after": round(rss / 2**20, 1) if rss else None,
        "rounds": rounds,
    }


def _ratios(targets: list[Target]) -> dict[str, Any]:
    """hit / other, the median over rounds of the ratio within each round."""
    by_name = {t.name: t for t in targets if t.available}
    out: dict[str, Any] = {}
    for numerator in ("sidecar_hit", "sidecar_vault_api"):
        if numerator not in by_name:
            continue
        for denominator in ("direct_openbao", "bao_proxy", "bare_aiohttp"):
            if denominator not in by_name:
                continue
            per_round = [
                a["rps"] / b["rps"]
                for a, b in zip(
                    by_name[numerator].rounds, by_name[denominator].rounds, strict=False
                )
                if b["rps"]
            ]
            key = f"{numerator}/{denominator}"
            out[key] = {
                "median": round(statistics.median(per_round), 3) if per_round else None,
                "min": round(min(per_round), 3) if per_round else None,
                "max": round(max(per_round), 3) if per_round else None,
            }
    return out
