"""The restart storm: many sidecars with the service's config started at once behind the
fault proxy, cold, then warm from the drill sidecar's snapshot; each reads every secret, and
each class is judged as against a healthy store (no read may fail), with the store requests
the storm cost and how long the sidecars took to become ready."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path

import aiohttp

from sidecar.drill.counting import by_class
from sidecar.drill.drill import Drill, Marks, Scenario
from sidecar.drill.faultproxy import FaultProxy
from sidecar.drill.process import SidecarProcess
from sidecar.drill.reads import read_once
from sidecar.drill.verdict import HEALTHY, Outcome, Read


async def restart_storm(
    drill: Drill,
    session: aiohttp.ClientSession,
    proxy: FaultProxy,
    sidecar: SidecarProcess,
    folder: Path,
) -> list[Outcome]:
    """Start ``phases.storm`` sidecars at once, cold, then warm from the drill sidecar's
    snapshot (when it has a key); each reads every secret; judged as a healthy store."""
    modes = ["cold"]
    if drill.settings.snapshot.key_file is not None:
        modes.append("warm")
        await sidecar.stop()  # writes its snapshot: the fleet's warm start
        await sidecar.start()
    else:
        drill.skipped["restart_storm_warm"] = "no snapshot.key_file: every start is cold"
    outcomes: list[Outcome] = []
    for mode in modes:
        name = f"restart_storm_{mode}"
        drill.progress(f"scenario {name}: {drill.phases.storm} sidecars at once")
        before = proxy.paths.copy()
        if drill.audit is not None:
            drill.audit.take()
        fleet = [
            SidecarProcess(drill.document, drill.proxies, folder / f"{name}-{i}", storm=True)
            for i in range(drill.phases.storm)
        ]
        if mode == "warm":
            for member in fleet:
                shutil.copy2(sidecar.snapshot, member.snapshot)
        started = time.monotonic()
        try:
            results = await asyncio.gather(*(m.start() for m in fleet), return_exceptions=True)
            ready = [m for m, r in zip(fleet, results, strict=True) if r is None]
            fault_end = time.monotonic() - started
            reads: list[Read] = []
            for phase in ("fault", "recovery"):
                if phase == "recovery":  # restored values are confirmed within a refresh
                    await asyncio.sleep(drill.covering_refresh())
                for member in ready:
                    token = member.caller_token()
                    for path in drill.paths:
                        reads.append(
                            await read_once(session, member.api, token, path, phase, started)
                        )
        finally:
            await asyncio.gather(*(m.stop() for m in fleet))
        total = proxy.paths - before
        counts, source = (
            (by_class(drill.audit.take(), drill.class_of), "audit log")
            if drill.audit is not None
            else (by_class(total, drill.class_of), "proxy")
        )
        times = [m.ready_after for m in ready if m.ready_after is not None]
        note = (
            f"{len(ready)} of {len(fleet)} sidecars ready, in {statistics.median(times):.1f}s "
            f"median, {max(times):.1f}s at most; {sum(total.values())} store requests in "
            f"all through the proxy (logins and mount lookups included)"
            if times
            else "no sidecar became ready"
        )
        problems = [
            f"a sidecar of the storm did not start: {r}"
            for r in results
            if isinstance(r, BaseException)
        ]
        drill.timelines[name] = (reads, 0.0, fault_end)
        if not ready:  # nothing to judge by reads: every class broke
            outcomes += [
                Outcome(name, c, broken=problems[:3] or ["no sidecar became ready"])
                for c in sorted(set(drill.class_of.values()))
            ]
            continue
        for outcome in drill.judge_reads(
            Scenario(name, kind=HEALTHY),
            reads,
            Marks(fault_end=fault_end, problems=problems[:3], notes=[note]),
            exited=False,
            recovery_bound=drill.covering_refresh() + drill.phases.recovery,
        ):
            outcome.store_requests, outcome.store_source = counts[outcome.secret_class], source
            if times and outcome.recovered_after is not None:
                outcome.recovered_after = round(max(times), 2)  # the storm is over
            outcomes.append(outcome)
    return outcomes
