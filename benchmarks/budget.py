"""Scenario 9: one sidecar over its own store request budget (``backend.rate_limit``).

200 KV v2 secrets in one class with a 2 s ``refresh_interval`` (60 s ``max_cache_age``), read
uniformly at random by 4 concurrent clients (4 keep-alive connections, closed loop, in one
asyncio process: ``python -m benchmarks.budget``) through one sidecar process, from cold, for
25 s. Reading them all within 2 s needs about 100 store requests a second, twice the default
budget (50/s, burst 20). The same run with a budget of 2000/s (burst 200) goes next to it, for a
``serve_stale`` class and for a ``fail_closed`` class: four sidecars, one after the other,
against one OpenBao.

Measured per run: reads/s; how each read was answered (the ``X-Sidecar-Cache`` header, and the
sidecar's own ``sidecar_cache_lookups_total``); read latency (median, p99) of all reads and of
the reads that were not hits; failed reads (non-200, by reason); store requests per second from
the store's file audit log (request records within the client's run, by their ``time``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    AuditTail,
    BenchError,
    SidecarProc,
    audit_time,
    metric_sum,
    request_kind,
)
from benchmarks.loadgen import ClosedLoop, drive, run_child, run_fast
from sidecar.dev.openbao import DevOpenBao

PREFIX = "budget"


def budget_class(on_outage: str) -> dict[str, Any]:
    return {
        "business_function": "store budget benchmark",
        "owner": "team-bench",
        "refresh_interval": "2s",
        "max_cache_age": "60s",
        "on_outage": on_outage,
        "rotation_method": "new KV v2 version",
        "revocation_steps": "none: benchmark data",
    }


def label(rate: float) -> str:
    """A budget's name in the results: ``50/s``."""
    return f"{rate:g}/s"


# -- the readers (a child process, so the harness stays idle while they run) ---------------


class _Tally(ClosedLoop):
    """The readers' run: each request a secret chosen at random, each answer counted by how the
    sidecar says it was served (``X-Sidecar-Cache``), its status and, if it failed, why."""

    def __init__(self, requests: list[bytes], started: float, seconds: float, seed: int) -> None:
        super().__init__(started + seconds, retry_pause=0.05, grace=None)
        self.requests = requests
        self.random = random.Random(seed)  # noqa: S311 - which secret to read next
        self.latencies: list[int] = []  # ns, every read
        self.non_hit: list[int] = []  # ns, every read not answered HIT (failures included)
        self.answers: Counter[str] = Counter()  # X-Sidecar-Cache value, or "-" without one
        self.statuses: Counter[int] = Counter()
        self.reasons: Counter[str] = Counter()  # the error body's reason, of non-200 answers
        self.timeline: Counter[int] = Counter()  # reads answered, by second of the run
        self.first = started

    def next_request(self) -> bytes:
        """A GET of one of the secrets, uniformly at random."""
        return self.random.choice(self.requests)

    def answered(self, status: int, head: bytes, body: bytes, latency_ns: int) -> None:
        """Count one read: its latency, how it was served, its status and any failure reason."""
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        answer = fields.get(b"x-sidecar-cache", b"-").decode()
        self.latencies.append(latency_ns)
        if answer != "HIT":
            self.non_hit.append(latency_ns)
        self.answers[answer] += 1
        self.statuses[status] += 1
        if status != 200:
            with contextlib.suppress(ValueError, AttributeError):
                self.reasons[str(json.loads(body).get("reason"))] += 1
        self.timeline[int(self.last - self.first)] += 1


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 2)


async def _read(
    port: int, token: str, paths: Sequence[str], clients: int, seconds: float
) -> dict[str, Any]:
    requests = [
        f"GET /secrets/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-Sidecar-Token: {token}\r\n\r\n".encode()
        for path in paths
    ]
    started_wall = time.time()
    started = time.monotonic()
    tally = _Tally(requests, started, seconds, seed=port)
    await drive(tally, "127.0.0.1", port, clients)
    elapsed = max(tally.last, started + 1e-9) - started
    reads = len(tally.latencies)
    return {
        "reads": reads,
        "seconds": round(elapsed, 3),
        "reads_per_s": round(reads / elapsed, 1),
        "started_wall": started_wall,
        "ended_wall": started_wall + elapsed,
        "x_sidecar_cache": dict(sorted(tally.answers.items())),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "failed": sum(n for status, n in tally.statuses.items() if status != 200),
        "failure_reasons": dict(tally.reasons.most_common()),
        "connection_errors": tally.errors,
        "p50_ms": _percentile(tally.latencies, 0.5),
        "p99_ms": _percentile(tally.latencies, 0.99),
        "non_hit_reads": len(tally.non_hit),
        "non_hit_p50_ms": _percentile(tally.non_hit, 0.5),
        "non_hit_p99_ms": _percentile(tally.non_hit, 0.99),
        # whole seconds only: the reads in flight at the deadline end a last, partial one
        "reads_per_second_timeline": [
            tally.timeline.get(s, 0) for s in range(max(1, int(elapsed)))
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="random reads of secrets through a sidecar")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--paths-file", type=Path, required=True, help="one secret path a line")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=25.0)
    args = parser.parse_args()
    token = args.token_file.read_text().strip()
    paths = args.paths_file.read_text().split()
    result = run_fast(_read(args.port, token, paths, args.clients, args.seconds))
    print(json.dumps(result))
    return 0


# -- the scenario -----------------------------------------------------------------------------


def _run_one(
    store: DevOpenBao,
    token: str,
    directory: Path,
    paths_file: Path,
    *,
    on_outage: str,
    rate: float,
    burst: int,
    clients: int,
    seconds: float,
    audit: AuditTail,
    log: Callable[[str], None],
) -> dict[str, Any]:
    sidecar = SidecarProc(
        f"sidecar ({on_outage}, budget {label(rate)})",
        directory,
        store.addr,
        token,
        rules=[{"match": f"secret/{PREFIX}/**", "class": on_outage}],
        classes={on_outage: budget_class(on_outage)},
        backend={"rate_limit": {"requests_per_second": rate, "burst": burst}},
    )
    try:
        sidecar.wait_ready()
        time.sleep(0.3)  # let the start-up token lookup land before the mark
        audit.mark()
        result: dict[str, Any] = run_child(
            [
                sys.executable,
                "-m",
                "benchmarks.budget",
                "--port",
                str(sidecar.port),
                "--token-file",
                str(directory / "caller-token"),
                "--paths-file",
                str(paths_file),
                "--clients",
                str(clients),
                "--seconds",
                str(seconds),
            ],
            timeout=seconds + 60,
            what="the readers",
            error=BenchError,
        )
        samples = sidecar.metrics()
        time.sleep(0.2)  # the audit device writes the last records after the answers
        records = [
            r
            for r in audit.requests()
            if result["started_wall"] <= audit_time(r) <= result["ended_wall"]
        ]
    finally:
        sidecar.stop()
    lookups = {
        labels["outcome"]: int(value)
        for name, labels, value in samples
        if name == "sidecar_cache_lookups_total" and value
    }
    problems: Counter[str] = Counter()
    for name, labels, value in samples:
        if value and name == "sidecar_backend_errors_total":
            problems[f"backend error: {labels.get('kind')}"] += int(value)
        elif value and name == "sidecar_unavailable_total":
            problems[f"unavailable: {labels.get('reason')}"] += int(value)
    reads = result["reads"]
    hits = result["x_sidecar_cache"].get("HIT", 0)
    result.update(
        {
            "on_outage": on_outage,
            "rate_limit": {"requests_per_second": rate, "burst": burst},
            "hits": hits,
            "misses": result["x_sidecar_cache"].get("MISS", 0),
            "stale": result["x_sidecar_cache"].get("STALE", 0),
            "hit_fraction": round(hits / reads, 4) if reads else None,
            "lookups": dict(sorted(lookups.items())),
            "stale_served_metric": int(metric_sum(samples, "sidecar_stale_served_total")),
            "sidecar_problems": dict(sorted(problems.items())),
            "store_requests": len(records),
            "store_requests_per_s": round(len(records) / result["seconds"], 1),
            "store_requests_by_kind": dict(
                sorted(
                    Counter(
                        request_kind(str(r["request"].get("path", ""))) for r in records
                    ).items()
                )
            ),
        }
    )
    del result["started_wall"], result["ended_wall"]
    log(
        f"  {on_outage:<11} budget {label(rate):>7}: {result['reads_per_s']} reads/s, "
        f"{hits} hits / {result['misses']} misses / {result['stale']} stale / "
        f"{result['failed']} failed; non-hit p50 {result['non_hit_p50_ms']} ms; "
        f"store {result['store_requests_per_s']} req/s"
    )
    return result


def _ratios(low: dict[str, Any], high: dict[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        a, b = low.get(key), high.get(key)
        return round(b / a, 2) if a and b is not None else None

    return {
        key: ratio(key)
        for key in (
            "reads_per_s",
            "hit_fraction",
            "p50_ms",
            "p99_ms",
            "non_hit_p50_ms",
            "non_hit_p99_ms",
            "store_requests_per_s",
        )
    }


def run(
    *,
    workdir: Path,
    secrets: int,
    clients: int,
    seconds: float,
    budgets: Sequence[tuple[float, int]],
    classes: Sequence[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    store = DevOpenBao(workdir / "budget-store").start()
    try:
        paths = [f"secret/{PREFIX}/s{i:03d}" for i in range(secrets)]
        for i, path in enumerate(paths):
            store.kv_put(
                path.removeprefix("secret/"), {"username": f"svc-{i}", "password": "b" * 150}
            )
        paths_file = workdir / "budget-paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        store.request(
            "PUT",
            "sys/policies/acl/budget-read",
            {
                "policy": f'path "secret/data/{PREFIX}/*" {{ capabilities = ["read"] }}\n'
                f'path "secret/metadata/{PREFIX}/*" {{ capabilities = ["read"] }}\n'
            },
        )
        reply = store.request(
            "POST", "auth/token/create", {"policies": ["budget-read"], "ttl": "2h"}
        )
        token = str(reply["auth"]["client_token"])
        audit = AuditTail(store.audit_log)
        runs: dict[str, dict[str, Any]] = {}
        for on_outage in classes:
            runs[on_outage] = {}
            for rate, burst in budgets:
                runs[on_outage][label(rate)] = _run_one(
                    store,
                    token,
                    workdir / f"budget-{on_outage}-{rate:g}",
                    paths_file,
                    on_outage=on_outage,
                    rate=rate,
                    burst=burst,
                    clients=clients,
                    seconds=seconds,
                    audit=audit,
                    log=log,
                )
    finally:
        store.stop()
    low, high = label(budgets[0][0]), label(budgets[-1][0])
    return {
        "secrets": secrets,
        "clients": clients,
        "client": f"{clients} concurrent keep-alive connections in one asyncio process "
        "(closed loop), each read a secret chosen uniformly at random",
        "seconds_per_run": seconds,
        "refresh_interval_s": 2.0,
        "max_cache_age_s": 60.0,
        "budgets": [{"requests_per_second": r, "burst": b} for r, b in budgets],
        "runs": runs,
        "compared": {"base": low, "against": high},  # ratios: against / base
        "ratios": {c: _ratios(runs[c][low], runs[c][high]) for c in classes},
    }


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
