"""The sidecar as the drill runs it: a process of its own (a crash shows as an exit) with the
service's config, except where the drill must put things: the store addresses (the proxy's),
its listeners and token files (free loopback ports, a scratch folder), the snapshot and audit
files (the same folder). Its store identity is the config's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

READY_WITHIN = 60.0  # seconds a sidecar may take to answer /readyz 200 before it counts as failed


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_run(count: int) -> int:
    """A first loopback port with ``count`` free ones from it (the proxy listens on a run)."""
    for _ in range(100):
        first = free_port()
        try:
            for offset in range(1, count):
                with socket.create_server(("127.0.0.1", first + offset)):
                    pass
        except OSError:
            continue
        return first
    raise OSError("no run of free loopback ports")


def drill_config(
    document: dict[str, Any],
    proxies: list[str],
    folder: Path,
    api: int,
    ops: int,
    *,
    keep_jitter: bool = False,
) -> dict[str, Any]:
    """The service's config, with what the drill must own replaced. ``keep_jitter``: keep the
    config's ``startup_jitter`` (a restart storm is what it is for); else none, so that a
    scenario starts on time."""
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
    if not keep_jitter:
        config["startup_jitter"] = "0s"
    snapshot = dict(config.get("snapshot") or {})
    snapshot["path"] = str(folder / "snapshot")
    config["snapshot"] = snapshot
    return config


class SidecarProcess:
    """One sidecar, run from ``folder`` (its config, log, tokens and snapshot live there)."""

    def __init__(
        self, document: dict[str, Any], proxies: list[str], folder: Path, *, storm: bool = False
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.api_port, self.ops_port = free_port(), free_port()
        self.config = folder / "sidecar.yaml"
        self.config.write_text(
            yaml.safe_dump(
                drill_config(
                    document, proxies, folder, self.api_port, self.ops_port, keep_jitter=storm
                )
            )
        )
        self.snapshot = folder / "snapshot"
        self.process: asyncio.subprocess.Process | None = None
        self.ready_after: float | None = None  # seconds from start to /readyz 200

    @property
    def api(self) -> str:
        """The secrets API's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def exited(self) -> bool:
        """Has the process ended on its own (or been stopped)?"""
        return self.process is not None and self.process.returncode is not None

    def caller_token(self) -> str:
        """The caller token the sidecar wrote at start."""
        return (self.folder / "caller" / "token").read_text().strip()

    async def start(self) -> None:
        """Start it and wait until it is ready; RuntimeError (naming its log) if it is not."""
        log = (self.folder / "sidecar.log").open("ab")
        begun = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--config",
            str(self.config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SIDECAR_CONFIG": str(self.config)},
        )
        log.close()
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the sidecar exited at start: {self._log_tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.ops_port}/readyz") as ready:
                        if ready.status == 200:
                            self.ready_after = time.monotonic() - begun
                            return
                if time.monotonic() - begun > READY_WITHIN:
                    raise RuntimeError(
                        f"the sidecar was not ready within {READY_WITHIN:g}s: {self._log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def _log_tail(self, lines: int = 3) -> str:
        """The end of its log (the scratch folder is gone by the time anyone could read it);
        the sidecar never logs a secret value."""
        try:
            tail = (self.folder / "sidecar.log").read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "no log"
        return " | ".join(line.strip() for line in tail) or "an empty log"

    async def stop(self) -> None:
        """SIGTERM (the sidecar writes its snapshot as it stops), and wait for the exit."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
