"""``sidecar drill``: run the service's own sidecar config behind the fault proxy, drive steady
reads through it, inject one failure after another (each with a warm-up, the fault and a
recovery), and judge every class against what it declares. How the sidecar is run is in
``process``; what the drill does to the store itself (a new version, a revoked token) in
``operator``; how store requests are counted in ``counting``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.core.policy import is_literal
from sidecar.core.revocations import Revocations
from sidecar.drill.counting import AuditTail, by_class
from sidecar.drill.faultproxy import FaultProxy
from sidecar.drill.faults import Fault, Mode
from sidecar.drill.operator import Operator, OperatorError
from sidecar.drill.process import SidecarProcess, free_port, free_port_run
from sidecar.drill.reads import read_once
from sidecar.drill.verdict import (
    HEALTHY,
    OUTAGE,
    WRONG,
    ClassPolicy,
    Outcome,
    Read,
    judge,
    judge_revoked,
    judge_rotation,
)
from sidecar.ops.emergency import parse_revocations
from sidecar.settings import Settings

REWRITE, REVOKE_TOKEN = "rewrite", "revoke_token"


def _healthy(_settings: Settings) -> Fault:
    return Fault()


@dataclass(frozen=True)
class Scenario:
    """One failure: the fault the proxy injects, what it does to the store (``kind``), and
    what else happens: a sidecar restart, an ``event`` at the fault's start (a new version of
    every secret, the sidecar's token revoked), a ``prepare`` step in the warm-up, an
    ``action`` of the caller's (``make drill`` kills a raft leader)."""

    name: str
    fault: Callable[[Settings], Fault] = _healthy
    kind: str = OUTAGE
    restart: bool = False  # stop and start the sidecar early in the fault (needs a snapshot key)
    event: str | None = None
    prepare: str | None = None
    long: bool = False  # the fault outlasts the shortest serve_stale max_cache_age
    storm: bool = False  # many sidecars started at once, cold and warm
    action: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)


SCENARIOS = [
    Scenario("store_blocked", lambda _s: Fault(Mode.BLACKHOLE)),
    Scenario("store_refusing", lambda _s: Fault(Mode.REFUSE)),
    Scenario("store_slow", lambda s: Fault(Mode.LATENCY, delay=s.backend.timeout * 2)),
    Scenario("stale_node", lambda _s: Fault(Mode.STALE), kind=WRONG, prepare=REWRITE),
    Scenario("rate_limited", lambda _s: Fault(Mode.RATE_LIMIT, retry_after=2)),
    Scenario("token_revoked", kind=HEALTHY, event=REVOKE_TOKEN),
    Scenario("rotation", kind=HEALTHY, event=REWRITE),
    Scenario("restart_in_outage", lambda _s: Fault(Mode.BLACKHOLE), restart=True),
    Scenario("restart_storm", kind=HEALTHY, storm=True),
    Scenario("outage_past_max_age", lambda _s: Fault(Mode.BLACKHOLE), long=True),
]


@dataclass(frozen=True)
class Phases:
    """How long each phase of a scenario lasts, how many readers run, how many sidecars the
    restart storm starts, and the longest a stretched phase may last (``long_limit``: the long
    outage, and a rotation or warm-up that must cover a refresh_interval)."""

    warmup: float = 3.0
    fault: float = 8.0
    recovery: float = 8.0
    readers: int = 4
    storm: int = 8
    long_limit: float = 120.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_paths(settings: Settings) -> list[str]:
    """The secrets the drill reads: every literal rule (globs name no path to read)."""
    return [rule.match for rule in settings.policy().rules if is_literal(rule.match)]


@dataclass
class Marks:
    """When a scenario's fault began and ended (seconds from its start), and what happened."""

    started: float = 0.0
    fault_start: float = 0.0
    fault_end: float = 0.0
    written: dict[str, int] = field(default_factory=dict)  # path -> version the drill wrote
    restarted_at: float | None = None
    revoked: str | None = None  # token_revoked: a digest of the token revoked (never the token)
    revoked_list: Revocations | None = None  # the store's revocation list as the scenario began
    problems: list[str] = field(default_factory=list)  # scenario-wide: every class breaks
    notes: list[str] = field(default_factory=list)  # scenario-wide: not judged, and why


class Drill:
    """One run: the proxy, the sidecar process, the readers, the scenarios."""

    def __init__(
        self,
        settings: Settings,
        document: dict[str, Any],
        phases: Phases,
        progress: Callable[[str], None],
        *,
        operator_token: str | None = None,
        audit_logs: list[Path] | None = None,
    ) -> None:
        self.settings = settings
        self.document = document
        self.phases = phases
        self.progress = progress
        self.paths = read_paths(settings)
        self.classes = {
            name: ClassPolicy(
                name, c.on_outage, c.refresh_interval, c.max_cache_age, overlap=c.overlap
            )
            for name, c in settings.classes.items()
        }
        policy = settings.policy()
        self.class_of = {
            path: found.name for path in self.paths if (found := policy.classify(path)) is not None
        }
        backend = settings.backend
        self.stores = [str(s) for s in (backend.addresses or [backend.address])]
        self.operator = Operator(self.stores[0], operator_token) if operator_token else None
        self.audit = AuditTail(audit_logs) if audit_logs else None
        self.aborted: str | None = None  # why the drill stopped before its last scenario
        self.skipped: dict[str, str] = {}  # scenario -> why it did not run
        # scenario name -> its reads and when its fault began and ended (for the report's charts)
        self.timelines: dict[str, tuple[list[Read], float, float]] = {}
        self.proxies: list[str] = []

    # -- the run -----------------------------------------------------------------------

    async def run(self, scenarios: list[Scenario]) -> list[Outcome]:
        """Every scenario in turn; the outcomes, class by class."""
        if not self.paths:
            raise ValueError("no literal secret paths in the config's rules to read")
        if self.settings.revocation_list is not None and self.operator is None:
            self.skipped["revoked_version_check"] = (
                "needs --operator-token-file to read the revocation list"
            )
        with tempfile.TemporaryDirectory(prefix="sidecar-drill-") as scratch:
            folder = Path(scratch)
            first = free_port_run(len(self.stores))
            proxy = FaultProxy(
                self.stores, "127.0.0.1", first, ("127.0.0.1", free_port()), remember_token=True
            )
            await proxy.start()
            self.proxies = [f"http://127.0.0.1:{first + i}" for i in range(len(self.stores))]
            sidecar = SidecarProcess(self.document, self.proxies, folder / "sidecar")
            outcomes: list[Outcome] = []
            try:
                await sidecar.start()
                async with aiohttp.ClientSession() as session:
                    for scenario in scenarios:
                        why = self._cannot_run(scenario)
                        if why is not None:
                            self.skipped[scenario.name] = why
                            self.progress(f"scenario {scenario.name}: skipped: {why}")
                            continue
                        try:
                            if scenario.storm:
                                from sidecar.drill.storm import restart_storm  # uses our types

                                done = await restart_storm(self, session, proxy, sidecar, folder)
                            else:
                                done = await self._one(scenario, proxy, session, sidecar)
                            if sidecar.exited:  # judged as broken above; the next one needs it
                                await sidecar.start()
                        except (RuntimeError, OSError) as exc:
                            # a sidecar that cannot come back (a crash loop) is a finding:
                            # report it with what was measured so far, and stop
                            self.aborted = f"scenario {scenario.name}: {exc}"
                            self.progress(f"stopped: {self.aborted}")
                            outcomes.append(
                                Outcome(scenario.name, "(all)", broken=[f"stopped: {exc}"])
                            )
                            break
                        held = sum(o.holds for o in done)
                        self.progress(
                            f"scenario {scenario.name}: {held} of {len(done)} classes hold"
                        )
                        outcomes += done
            finally:
                await sidecar.stop()
                await proxy.stop()
            return outcomes

    def _cannot_run(self, scenario: Scenario) -> str | None:
        """Why ``scenario`` cannot run with this config and these options (None: it can)."""
        needs_operator = REWRITE in (scenario.event, scenario.prepare)
        if needs_operator and self.operator is None:
            return (
                "needs --operator-token-file: the drill writes a new version of each secret "
                "(the same data again)"
            )
        if scenario.event == REVOKE_TOKEN:
            if self.operator is None:
                return "needs --operator-token-file: the drill revokes the sidecar's store token"
            if self.settings.backend.auth.method == "token":
                return (
                    "token auth: a revoked token stays dead until token_file is rewritten; the "
                    "scenario is for approle or kubernetes auth, which log in again"
                )
        if scenario.restart and self.settings.snapshot.key_file is None:
            return "no snapshot.key_file, so a restart during an outage starts cold by design"
        if scenario.long:
            ages = [c.max_cache_age for c in self.classes.values() if c.on_outage == "serve_stale"]
            if not ages:
                return "no serve_stale class: nothing is served once the store is gone"
            if self._long_fault() > self.phases.long_limit:
                return (
                    f"the shortest serve_stale max_cache_age ({min(ages):g}s) is longer than "
                    f"--long-limit ({self.phases.long_limit:g}s); raise --long-limit to run it"
                )
        return None

    def _long_fault(self) -> float:
        ages = [c.max_cache_age for c in self.classes.values() if c.on_outage == "serve_stale"]
        return min(ages) + self.settings.backend.timeout + 3.0

    def _slack(self) -> float:
        """How long past a refresh_interval a change may take to reach the readers."""
        return 2.0 + self.settings.backend.timeout

    def covering_refresh(self) -> float:
        """A phase long enough for every class to refresh once (within ``long_limit``)."""
        longest = max((c.refresh_interval for c in self.classes.values()), default=0.0)
        return min(longest + self._slack(), self.phases.long_limit)

    # -- one scenario --------------------------------------------------------------------

    async def _one(
        self,
        scenario: Scenario,
        proxy: FaultProxy,
        session: aiohttp.ClientSession,
        sidecar: SidecarProcess,
    ) -> list[Outcome]:
        self.progress(f"scenario {scenario.name}: warm-up, fault, recovery")
        before = proxy.paths.copy()
        operator_before = self.operator.paths.copy() if self.operator else Counter()
        if self.audit is not None:
            self.audit.take()
        injected = proxy.injected
        revoked = await self._revocations()
        reads, marks = await self._traffic(scenario, proxy, session, sidecar)
        marks.revoked_list = revoked
        if scenario.fault(self.settings).mode is Mode.STALE and proxy.injected == injected:
            marks.notes.append(
                "not exercised: the proxy had no older version of any secret to answer with"
            )
        last = proxy.last_token
        if marks.revoked is not None and last is not None and _digest(last) == marks.revoked:
            marks.notes.append(
                "not exercised: the sidecar sent no request with a new token after the "
                "revocation (nothing was due for a refresh)"
            )
        self.timelines[scenario.name] = (reads, marks.fault_start, marks.fault_end)
        counts, source = self._store_requests(proxy, before, operator_before)
        outcomes = self.judge_reads(scenario, reads, marks, sidecar.exited)
        for outcome in outcomes:
            outcome.store_requests = counts[outcome.secret_class]
            outcome.store_source = source
        return outcomes

    def _store_requests(
        self, proxy: FaultProxy, before: Counter[str], operator_before: Counter[str]
    ) -> tuple[Counter[str], str]:
        """This scenario's store requests for each class's secrets, and where they were counted."""
        if self.audit is not None:
            seen = self.audit.take()
            if self.operator is not None:  # the drill's own writes are not the sidecar's
                seen.subtract(self.operator.paths - operator_before)
            return by_class(+seen, self.class_of), "audit log"
        return by_class(proxy.paths - before, self.class_of), "proxy"

    async def _traffic(
        self,
        scenario: Scenario,
        proxy: FaultProxy,
        session: aiohttp.ClientSession,
        sidecar: SidecarProcess,
    ) -> tuple[list[Read], Marks]:
        reads: list[Read] = []
        marks = Marks(started=time.monotonic())
        phase = ["warmup"]
        stop = asyncio.Event()
        token = [sidecar.caller_token()]
        unread, every_path_read = set(self.paths), asyncio.Event()
        overlapping = {
            path
            for path, name in self.class_of.items()
            if scenario.event == REWRITE and self.classes[name].overlap > 0
        }

        async def reader(offset: int) -> None:
            turn = offset
            while not stop.is_set():
                path = self.paths[turn % len(self.paths)]
                # every third round over the paths asks for the previous version instead
                previous = path in overlapping and (turn // len(self.paths)) % 3 == 2
                turn += 1
                read = await read_once(
                    session, sidecar.api, token[0], path, phase[0], marks.started, previous
                )
                reads.append(read)
                if read.status == 200:
                    unread.discard(path)
                    if not unread:
                        every_path_read.set()
                await asyncio.sleep(0.05)

        readers = [asyncio.create_task(reader(i)) for i in range(self.phases.readers)]
        try:
            warmup = self.phases.warmup
            if scenario.prepare == REWRITE:
                # the proxy must have seen the version before (each secret read once), and the
                # sidecar must hold the new one before the fault
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(every_path_read.wait(), warmup)
                await self._rewrite(marks)
                warmup = max(warmup, self.covering_refresh())
            await asyncio.sleep(warmup)
            phase[0] = "fault"
            marks.fault_start = time.monotonic() - marks.started
            await self._fault(scenario, proxy, sidecar, marks, phase, token)
            await proxy.set_fault(Fault())
            marks.fault_end = time.monotonic() - marks.started
            phase[0] = "recovery"
            await asyncio.sleep(self.phases.recovery)
        finally:
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
            await proxy.set_fault(Fault())
        reads.sort(key=lambda r: r.at)
        return reads, marks

    async def _fault(
        self,
        scenario: Scenario,
        proxy: FaultProxy,
        sidecar: SidecarProcess,
        marks: Marks,
        phase: list[str],
        token: list[str],
    ) -> None:
        """The fault phase: the proxy's fault, the scenario's event, its restart."""
        await proxy.set_fault(scenario.fault(self.settings))
        length = self._long_fault() if scenario.long else self.phases.fault
        if scenario.event == REWRITE:
            await self._rewrite(marks)
            length = max(length, self.covering_refresh())
        elif scenario.event == REVOKE_TOKEN:
            await self._revoke(proxy, marks)
            length = max(length, self.covering_refresh())  # every value re-read with it
        if scenario.action is not None:
            await scenario.action()
        if not scenario.restart:
            await asyncio.sleep(length)
            return
        await asyncio.sleep(min(1.0, length / 3))
        phase[0] = "restart"  # reads while it restarts: counted, not judged
        restarted = time.monotonic()
        await sidecar.stop()
        try:
            await sidecar.start()
            token[0] = sidecar.caller_token()
        except RuntimeError as exc:
            marks.problems.append(f"restarted during the outage: {exc}")
        marks.restarted_at = time.monotonic() - marks.started
        phase[0] = "fault"
        await asyncio.sleep(max(0.0, length - (time.monotonic() - restarted)))

    async def _revocations(self) -> Revocations | None:
        """The store's revocation list (the config's ``revocation_list``), read with the
        operator token; None when there is none to check against."""
        path = self.settings.revocation_list
        if path is None or self.operator is None:
            return None
        try:
            data = await self.operator.read(path)
        except OperatorError as exc:
            self.progress(f"revoked versions not checked: {exc}")
            return None
        listed = Revocations()
        listed.replace(parse_revocations(data or {})[0])
        return listed

    async def _rewrite(self, marks: Marks) -> None:
        """A new version of every KV v2 secret read (the same data again)."""
        assert self.operator is not None
        for path in self.paths:
            try:
                version = await self.operator.rewrite(path)
            except OperatorError as exc:
                marks.problems.append(f"could not write a new version: {exc}")
                return
            if version is None:
                marks.notes.append(f"{path}: not KV v2, so no new version was written")
            else:
                marks.written[path] = version

    async def _revoke(self, proxy: FaultProxy, marks: Marks) -> None:
        assert self.operator is not None
        if proxy.last_token is None:
            marks.problems.append("the sidecar sent no store token through the proxy to revoke")
            return
        try:
            await self.operator.revoke(proxy.last_token)
        except OperatorError as exc:
            marks.problems.append(f"could not revoke the sidecar's token: {exc}")
            return
        marks.revoked = _digest(proxy.last_token)

    def judge_reads(
        self,
        scenario: Scenario,
        reads: list[Read],
        marks: Marks,
        exited: bool,
        recovery_bound: float | None = None,
    ) -> list[Outcome]:
        """Each class's outcome of ``scenario`` from its reads, with the scenario's problems and
        notes, the rotation's and revocation list's rules, and the warm-restart check."""
        outcomes = []
        for name, policy in sorted(self.classes.items()):
            mine = [r for r in reads if self.class_of.get(r.path) == name]
            if not mine:
                continue
            outcome = judge(
                scenario.name,
                policy,
                mine,
                fault_seconds=marks.fault_end - marks.fault_start,
                fault_ended_at=marks.fault_end,
                timeout=self.settings.backend.timeout,
                recovery_bound=recovery_bound or self.phases.recovery,
                exited=exited,
                kind=scenario.kind,
                fault_started_at=marks.fault_start if scenario.kind == OUTAGE else None,
            )
            outcome.broken += marks.problems
            outcome.notes += marks.notes
            if marks.revoked_list is not None:
                # reads after one poll interval: the sidecar has seen the list by then
                settled = self.settings.revocation_poll_interval + self._slack()
                judge_revoked(
                    outcome, [r for r in mine if r.at > settled], marks.revoked_list.covers
                )
            written = {p: v for p, v in marks.written.items() if self.class_of.get(p) == name}
            if scenario.event == REWRITE and written:
                judge_rotation(
                    outcome,
                    policy,
                    mine,
                    written,
                    marks.fault_start,
                    marks.fault_end,
                    self._slack(),
                )
            if scenario.restart and not marks.problems and policy.on_outage == "serve_stale":
                after = marks.restarted_at or 0.0
                warm = [r for r in mine if r.phase == "fault" and r.at > after]
                if not any(r.status == 200 for r in warm):
                    outcome.broken.append(
                        "restarted during the outage, it served nothing: no warm start from "
                        "the snapshot"
                    )
            outcomes.append(outcome)
        return outcomes
