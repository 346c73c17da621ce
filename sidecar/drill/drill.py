"""``sidecar drill``: run the service's own sidecar config behind the fault proxy, drive steady
reads through it, inject one failure after another (each with a warm-up, the fault and a
recovery), and judge every class against what it declares.

The sidecar runs as a process of its own (a crash shows as an exit), with the config as given
except where the drill must put things: the store addresses (the proxy's), its listeners and
token files (free loopback ports, a scratch folder), the snapshot and audit files (the same
folder). Its store identity is the config's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sidecar.core.policy import is_literal
from sidecar.drill.faultproxy import FaultProxy
from sidecar.drill.faults import Fault, Mode
from sidecar.drill.verdict import ClassPolicy, Outcome, Read, judge
from sidecar.settings import Settings


@dataclass(frozen=True)
class Scenario:
    """One failure: the fault, and whether it makes the store unavailable (rather than wrong)."""

    name: str
    fault: Callable[[Settings], Fault]
    outage: bool = True
    restart: bool = False  # stop and start the sidecar early in the fault (needs a snapshot key)


SCENARIOS = [
    Scenario("store_blocked", lambda _s: Fault(Mode.BLACKHOLE)),
    Scenario("store_refusing", lambda _s: Fault(Mode.REFUSE)),
    Scenario("store_slow", lambda s: Fault(Mode.LATENCY, delay=s.backend.timeout * 2)),
    Scenario("stale_node", lambda _s: Fault(Mode.STALE), outage=False),
    Scenario("rate_limited", lambda _s: Fault(Mode.RATE_LIMIT, retry_after=2)),
    Scenario("restart_in_outage", lambda _s: Fault(Mode.BLACKHOLE), restart=True),
]


@dataclass(frozen=True)
class Phases:
    """How long each phase of a scenario lasts, and how many readers run."""

    warmup: float = 3.0
    fault: float = 8.0
    recovery: float = 8.0
    readers: int = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_run(count: int) -> int:
    """A first loopback port with ``count`` free ones from it (the proxy listens on a run)."""
    for _ in range(100):
        first = _free_port()
        try:
            for offset in range(1, count):
                with socket.create_server(("127.0.0.1", first + offset)):
                    pass
        except OSError:
            continue
        return first
    raise OSError("no run of free loopback ports")


def drill_config(
    document: dict[str, Any], proxies: list[str], folder: Path, api: int, ops: int
) -> dict[str, Any]:
    """The service's config, with what the drill must own replaced."""
    config = dict(document)
    backend = dict(config.get("backend") or {})
    backend.pop("address", None)
    backend["addresses"] = proxies
    config["backend"] = backend
    config["listen"] = f"127.0.0.1:{api}"
    config["metrics_listen"] = f"127.0.0.1:{ops}"
    config["caller_token_file"] = str(folder / "caller" / "token")
    config["admin_token_file"] = str(folder / "admin" / "token")
    config["audit_log"] = str(folder / "audit.log")
    config["startup_jitter"] = "0s"
    snapshot = dict(config.get("snapshot") or {})
    snapshot["path"] = str(folder / "snapshot")
    config["snapshot"] = snapshot
    return config


def read_paths(settings: Settings) -> list[str]:
    """The secrets the drill reads: every literal rule (globs name no path to read)."""
    return [rule.match for rule in settings.policy().rules if is_literal(rule.match)]


class Drill:
    """One run: the proxy, the sidecar process, the readers, the scenarios."""

    def __init__(
        self,
        settings: Settings,
        document: dict[str, Any],
        phases: Phases,
        progress: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.document = document
        self.phases = phases
        self.progress = progress
        self.paths = read_paths(settings)
        self.classes = {
            name: ClassPolicy(name, c.on_outage, c.refresh_interval, c.max_cache_age)
            for name, c in settings.classes.items()
        }
        policy = settings.policy()
        self.class_of = {
            path: found.name for path in self.paths if (found := policy.classify(path)) is not None
        }
        self.exits = 0
        self.fault_ended_at = 0.0
        self.fault_started_at = 0.0
        self.restarted_at: float | None = None
        self.restart_problem: str | None = None
        # scenario name -> its reads and when its fault began and ended (for the report's charts)
        self.timelines: dict[str, tuple[list[Read], float, float]] = {}

    async def run(self, scenarios: list[Scenario]) -> list[Outcome]:
        """Every scenario in turn; the outcomes, class by class."""
        if not self.paths:
            raise ValueError("no literal secret paths in the config's rules to read")
        stores = self.settings.backend.addresses or [self.settings.backend.address]
        with tempfile.TemporaryDirectory(prefix="sidecar-drill-") as scratch:
            folder = Path(scratch)
            first = free_port_run(len(stores))
            proxy = FaultProxy(
                [str(s) for s in stores], "127.0.0.1", first, ("127.0.0.1", _free_port())
            )
            await proxy.start()
            api, ops = _free_port(), _free_port()
            config = folder / "sidecar.yaml"
            proxies = [f"http://127.0.0.1:{first + i}" for i in range(len(stores))]
            config.write_text(
                yaml.safe_dump(drill_config(self.document, proxies, folder, api, ops))
            )
            process = await self._start_sidecar(config, folder, ops)
            outcomes: list[Outcome] = []
            try:
                token = (folder / "caller" / "token").read_text().strip()

                async def restart() -> None:
                    nonlocal process
                    process.terminate()  # SIGTERM: the sidecar writes its snapshot as it stops
                    await process.wait()
                    process = await self._start_sidecar(config, folder, ops)

                async with aiohttp.ClientSession() as session:
                    for scenario in scenarios:
                        if scenario.restart and self.settings.snapshot.key_file is None:
                            self.progress(
                                f"scenario {scenario.name}: skipped: no snapshot.key_file, so a "
                                "restart during an outage starts cold by design"
                            )
                            continue
                        self.progress(f"scenario {scenario.name}: warm-up, fault, recovery")
                        reads = await self._scenario(
                            scenario,
                            proxy,
                            session,
                            f"http://127.0.0.1:{api}",
                            token,
                            restart if scenario.restart else None,
                        )
                        exited = process.returncode is not None
                        outcomes += self._judge(scenario, reads, exited)
                        self.timelines[scenario.name] = (
                            reads,
                            self.fault_started_at,
                            self.fault_ended_at,
                        )
                        if exited:
                            self.exits += 1
                            process = await self._start_sidecar(config, folder, ops)
                            token = (folder / "caller" / "token").read_text().strip()
            finally:
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
                await proxy.stop()
            return outcomes

    async def _start_sidecar(
        self, config: Path, folder: Path, ops: int
    ) -> asyncio.subprocess.Process:
        log = (folder / "sidecar.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--config",
            str(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SIDECAR_CONFIG": str(config)},
        )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the sidecar exited at start; see {folder / 'sidecar.log'}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{ops}/readyz") as ready:
                        if ready.status == 200:
                            return process
                if time.monotonic() > deadline:
                    raise RuntimeError("the sidecar did not become ready within 60s")
                await asyncio.sleep(0.2)

    async def _scenario(
        self,
        scenario: Scenario,
        proxy: FaultProxy,
        session: aiohttp.ClientSession,
        api: str,
        token: str,
        restart: Callable[[], Any] | None = None,
    ) -> list[Read]:
        reads: list[Read] = []
        started = time.monotonic()
        phase = ["warmup"]
        stop = asyncio.Event()

        async def reader(offset: int) -> None:
            turn = offset
            while not stop.is_set():
                path = self.paths[turn % len(self.paths)]
                turn += 1
                reads.append(await self._read(session, api, token, path, phase[0], started))
                await asyncio.sleep(0.05)

        readers = [asyncio.create_task(reader(i)) for i in range(self.phases.readers)]
        try:
            await asyncio.sleep(self.phases.warmup)
            phase[0] = "fault"
            self.fault_started_at = time.monotonic() - started
            await proxy.set_fault(scenario.fault(self.settings))
            if restart is None:
                await asyncio.sleep(self.phases.fault)
            else:
                await asyncio.sleep(min(1.0, self.phases.fault / 3))
                phase[0] = "restart"  # reads while it restarts: counted, not judged
                restarted = time.monotonic()
                try:
                    await restart()
                except RuntimeError as exc:
                    self.restart_problem = str(exc)
                self.restarted_at = time.monotonic() - started
                phase[0] = "fault"
                await asyncio.sleep(max(0.0, self.phases.fault - (time.monotonic() - restarted)))
            await proxy.set_fault(Fault())
            self.fault_ended_at = time.monotonic() - started
            phase[0] = "recovery"
            await asyncio.sleep(self.phases.recovery)
        finally:
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
            await proxy.set_fault(Fault())
        return reads

    async def _read(
        self,
        session: aiohttp.ClientSession,
        api: str,
        token: str,
        path: str,
        phase: str,
        started: float,
    ) -> Read:
        begun = time.monotonic()
        try:
            async with session.get(
                f"{api}/secrets/{path}",
                headers={"X-Sidecar-Token": token},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as reply:
                body = await reply.json(content_type=None)
                status = reply.status
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return Read(
                begun - started, phase, path, 0, time.monotonic() - begun, reason="no_answer"
            )
        seconds = time.monotonic() - begun
        if status == 200 and isinstance(body, dict):
            return Read(
                begun - started,
                phase,
                path,
                200,
                seconds,
                version=body.get("version"),
                stale=bool(body.get("stale")),
                age=body.get("age_seconds"),
            )
        reason = body.get("reason") if isinstance(body, dict) else None
        return Read(begun - started, phase, path, status, seconds, reason=str(reason))

    def _judge(self, scenario: Scenario, reads: list[Read], exited: bool) -> list[Outcome]:
        outcomes = []
        restarted_at, problem = self.restarted_at, self.restart_problem
        self.restarted_at = self.restart_problem = None
        for name, policy in sorted(self.classes.items()):
            mine = [r for r in reads if self.class_of.get(r.path) == name]
            if not mine:
                continue
            outcomes.append(
                judge(
                    scenario.name,
                    policy,
                    mine,
                    fault_seconds=self.phases.fault,
                    fault_ended_at=self.fault_ended_at,
                    timeout=self.settings.backend.timeout,
                    recovery_bound=self.phases.recovery,
                    exited=exited,
                    outage=scenario.outage,
                )
            )
            if scenario.restart:
                outcome = outcomes[-1]
                if problem is not None:
                    outcome.broken.append(f"restarted during the outage: {problem}")
                elif policy.on_outage == "serve_stale" and restarted_at is not None:
                    warm = [r for r in mine if r.phase == "fault" and r.at > restarted_at]
                    if not any(r.status == 200 for r in warm):
                        outcome.broken.append(
                            "restarted during the outage, it served nothing: no warm start "
                            "from the snapshot"
                        )
        return outcomes
