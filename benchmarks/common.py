"""Shared plumbing: child processes, /proc readings, small HTTP calls, Prometheus text, machine."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A scenario could not run (a process did not start, a port did not open...)."""


# -- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds the process has used so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is fields[0]; utime and stime are fields 14 and 15 of stat
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size (VmRSS) of the process, in bytes."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- child processes ----------------------------------------------------------------------


def _child_setup() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with us
    with contextlib.suppress(Exception):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def raise_fd_limit() -> None:
    with contextlib.suppress(Exception):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def clean_env() -> dict[str, str]:
    """Our environment without Vault's or the sidecar's variables (they would override configs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))}


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: Sequence[str], log: Path, *, cwd: Path = ROOT, start: bool = True
    ) -> None:
        self.name = name
        self.log = log
        self.args = list(args)
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=clean_env(),
                preexec_fn=_child_setup,  # noqa: PLW1509 - only sets limits and a death signal
            )

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise BenchError(f"{self.name} was never started")
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is not None:
            return self._process.returncode
        self._process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int | None:
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_port(port: int, proc: Proc | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s")


# -- small HTTP ---------------------------------------------------------------------------


def http(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the standard library; HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        try:
            samples.append((match.group(1), labels, float(match.group(3))))
        except ValueError:
            continue
    return samples


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


# -- the store's own evidence: its audit log ----------------------------------------------


class AuditTail:
    """Records of an OpenBao file audit log written after ``mark()`` (read from a byte offset,
    so a log grown large by the throughput rounds is not read again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        try:
            self.offset = self.path.stat().st_size
        except FileNotFoundError:
            self.offset = 0

    def records(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a last line without newline is unfinished
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("type") == "request"]


def audit_time(record: dict[str, Any]) -> float:
    """The record's ``time`` (RFC 3339 with nanoseconds) as epoch seconds."""
    text = str(record.get("time", ""))
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if match is None:
        return 0.0
    from datetime import datetime

    zone = match.group(3) or "Z"
    moment = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp() + float(match.group(2) or 0)


def request_kind(path: str) -> str:
    """What a store request was for, by its API path."""
    if path.startswith("sys/internal/ui/mounts/"):
        return "mount_discovery"
    if path.startswith("auth/token/lookup-self"):
        return "token_lookup"
    if path.startswith("auth/token/renew-self"):
        return "token_renew"
    if path.startswith("sys/health"):
        return "health"
    if "/data/" in path:
        return "kv_data"
    if "/metadata/" in path:
        return "kv_metadata"
    return "other"


# -- the sidecar as a process -------------------------------------------------------------

BENCH_CLASS = {
    "business_function": "benchmark secrets",
    "owner": "team-bench",
    "refresh_interval": "1h",  # every read in a round is a hit
    "max_cache_age": "2h",
    "on_outage": "serve_stale",
    "rotation_method": "new KV v2 version",
    "revocation_steps": "none: benchmark data",
}


class SidecarProc(Proc):
    """``python -m sidecar run --config ...`` with its own ports, tokens and directory."""

    def __init__(
        self,
        name: str,
        directory: Path,
        store_addr: str,
        store_token: str,
        *,
        rules: list[dict[str, Any]],
        classes: dict[str, dict[str, Any]] | None = None,
        start: bool = True,
        cprofile_to: Path | None = None,
        **overrides: Any,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.ops_port = free_port()
        token_file = directory / "store-token"
        token_file.write_text(store_token + "\n")
        token_file.chmod(0o600)
        self.caller_token = f"bench-caller-{os.urandom(12).hex()}"
        caller_file = directory / "caller-token"
        caller_file.write_text(self.caller_token + "\n")
        document: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "metrics_listen": f"127.0.0.1:{self.ops_port}",
            "caller_token_file": str(caller_file),
            "admin_token_file": str(directory / "admin-token"),
            "log_level": "warning",
            "backend": {
                "address": store_addr,
                "auth": {"method": "token", "token_file": str(token_file)},
            },
            "classes": classes or {"bench": BENCH_CLASS},
            "secrets": rules,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value
        self.config = directory / "sidecar.yaml"
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))
        profiler = ["-m", "cProfile", "-o", str(cprofile_to)] if cprofile_to else []
        super().__init__(
            name,
            [sys.executable, *profiler, "-m", "sidecar", "run", "--config", str(self.config)],
            directory / "sidecar.log",
            start=start,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                if http("GET", f"{self.ops}/readyz", timeout=2)[0] == 200:
                    return
            time.sleep(0.03)
        raise BenchError(f"{self.name} not ready after {timeout:g}s:\n{self.tail()}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        return http(
            "GET",
            f"{self.base}/secrets/{path}",
            headers={"X-Sidecar-Token": self.caller_token},
            timeout=timeout,
        )

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        status, _headers, body = http("GET", f"{self.ops}/metrics", timeout=5)
        if status != 200:
            raise BenchError(f"{self.name} /metrics answered {status}")
        return prometheus(body.decode())


def sidecar_tree() -> str:
    """A short hash of the sidecar's source as it is on disk now (it may differ from HEAD)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# -- the machine --------------------------------------------------------------------------


def machine(bao: str | None) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    openbao = None
    if bao:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            openbao = subprocess.run(
                [bao, "version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
    versions = {}
    for module in ("aiohttp", "uvloop", "hvac"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sidecar"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        commit = f"{head} (+ uncommitted changes in sidecar/)" if dirty else head
    return {
        "sidecar_commit": commit,
        "sidecar_tree": sidecar_tree(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "openbao": openbao,
        "packages": versions,
    }
