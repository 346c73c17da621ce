"""The real daemon as a process: start, serve, log, stop on a signal; and the demo (make run)."""

from __future__ import annotations

import json
import os
import re
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

import pytest
import yaml

from sidecar import __version__
from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import config

SIDECAR = [sys.executable, "-m", "sidecar"]


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("X-Sidecar-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout}s")


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Daemon:
    def __init__(self, cfg: Path, tmp_path: Path) -> None:
        self.stdout = tmp_path / "stdout.log"
        self.stderr = tmp_path / "stderr.log"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [*SIDECAR, "run", "--config", str(cfg)], stdout=out, stderr=err
            )

    def logs(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture
def daemon_config(openbao: DevOpenBao, tmp_path: Path) -> dict[str, Any]:
    # A distinctive store token (not "root"), so the logs can be searched for it.
    store_token = openbao.request("POST", "auth/token/create", {"policies": ["root"]})
    token_file = tmp_path / "store-token"
    token_file.write_text(store_token["auth"]["client_token"])
    doc = config(openbao.addr, token_file, tmp_path)
    doc["_store_token"] = store_token["auth"]["client_token"]
    doc["listen"] = f"127.0.0.1:{free_port()}"
    doc["metrics_listen"] = f"127.0.0.1:{free_port()}"
    doc["caller_token_file"] = str(tmp_path / "shared" / "caller-token")
    doc["log_level"] = "debug"
    return doc


def _write(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if not k.startswith("_")}))
    return path


@pytest.fixture
def daemon(daemon_config: dict[str, Any], tmp_path: Path) -> Iterator[Daemon]:
    proc = Daemon(_write(daemon_config, tmp_path / "sidecar.yaml"), tmp_path)
    yield proc
    if proc.process.poll() is None:
        proc.process.kill()
        proc.process.wait()


def test_daemon_serves_logs_json_and_stops_on_sigterm(
    daemon: Daemon, daemon_config: dict[str, Any], openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": "pw-process-secret-value"})
    port = int(daemon_config["listen"].rsplit(":", 1)[1])
    ops_port = int(daemon_config["metrics_listen"].rsplit(":", 1)[1])
    _wait_port(port)

    token_file = Path(daemon_config["caller_token_file"])
    assert token_file.stat().st_mode & 0o777 == 0o640
    token = token_file.read_text().strip()
    assert len(token) >= 32

    assert _get(f"http://127.0.0.1:{port}/secrets/secret/{uid}/db")[0] == 401
    status, body = _get(f"http://127.0.0.1:{port}/secrets/secret/{uid}/db?field=password", token)
    assert (status, body) == (200, b"pw-process-secret-value")
    assert _get(f"http://127.0.0.1:{ops_port}/healthz")[0] == 200
    assert _get(f"http://127.0.0.1:{ops_port}/readyz")[0] == 200
    # the secrets API is not on the ops port, and the ops API is not on the secrets port
    assert _get(f"http://127.0.0.1:{ops_port}/secrets/secret/{uid}/db", token)[0] == 404
    assert _get(f"http://127.0.0.1:{port}/metrics", token)[0] == 404

    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert _port_closed(port) and _port_closed(ops_port)

    stdout = daemon.stdout.read_text()
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert records, "no log lines"
    fetches = [r for r in records if r["msg"] == "store fetch"]
    assert fetches and fetches[0]["path"] == f"secret/{uid}/db"
    assert fetches[0]["class"] == "standard"
    assert any(r["msg"] == "stopped" for r in records)
    logs = daemon.logs()
    assert "pw-process-secret-value" not in logs
    assert token not in logs
    assert daemon_config["_store_token"] not in logs


def test_existing_caller_token_file_is_used_not_replaced(
    daemon_config: dict[str, Any], tmp_path: Path, openbao: DevOpenBao, uid: str
):
    token_file = Path(daemon_config["caller_token_file"])
    token_file.parent.mkdir(parents=True)
    token_file.write_text("operator-chosen-token-0123456789\n")
    daemon = Daemon(_write(daemon_config, tmp_path / "c.yaml"), tmp_path)
    try:
        port = int(daemon_config["listen"].rsplit(":", 1)[1])
        _wait_port(port)
        openbao.kv_put(f"{uid}/x", {"v": "1"})
        url = f"http://127.0.0.1:{port}/secrets/secret/{uid}/x"
        assert _get(url, "operator-chosen-token-0123456789")[0] == 200
        assert token_file.read_text() == "operator-chosen-token-0123456789\n"
    finally:
        assert daemon.stop(signal.SIGINT) == 0


def test_invalid_config_exits_2_naming_the_key(daemon_config: dict[str, Any], tmp_path: Path):
    daemon_config["classes"]["standard"]["max_cache_age"] = "10s"
    daemon_config["backend"]["colour"] = "blue"
    cfg = _write(daemon_config, tmp_path / "bad.yaml")
    result = subprocess.run(
        [*SIDECAR, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "classes.standard.max_cache_age: must be at least refresh_interval (1m)" in result.stderr
    assert "backend.colour: unknown key" in result.stderr
    port = int(daemon_config["listen"].rsplit(":", 1)[1])
    assert _port_closed(port)

    check = subprocess.run(
        [*SIDECAR, "check-config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 2
    assert "classes.standard.max_cache_age" in check.stderr


def test_short_caller_token_is_refused(daemon_config: dict[str, Any], tmp_path: Path):
    token_file = Path(daemon_config["caller_token_file"])
    token_file.parent.mkdir(parents=True)
    token_file.write_text("short")
    cfg = _write(daemon_config, tmp_path / "c.yaml")
    result = subprocess.run(
        [*SIDECAR, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr


def test_port_in_use_exits_1_saying_which(daemon_config: dict[str, Any], tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        daemon_config["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
        cfg = _write(daemon_config, tmp_path / "c.yaml")
        result = subprocess.run(
            [*SIDECAR, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr and "(listen)" in result.stderr


def test_version():
    result = subprocess.run([*SIDECAR, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"sidecar {__version__}"


def test_demo_runs_and_ctrl_c_stops_both(tmp_path: Path):
    """``make run``: a dev OpenBao with demo secrets, the sidecar in front; Ctrl-C ends both."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))}
    demo_dir = tmp_path / "demo"
    err = (tmp_path / "demo.err").open("wb")
    process = subprocess.Popen(
        [*SIDECAR, "demo", "--dir", str(demo_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )
    try:
        _wait_port(port, timeout=30)
        token = (demo_dir / "caller-token").read_text().strip()
        base = f"http://127.0.0.1:{port}/secrets"
        assert _get(f"{base}/secret/app/db?field=password", token) == (200, b"demo-password-v2")
        assert _get(f"{base}/kv1/legacy/api?field=api_key", token) == (200, b"demo-legacy-key")
        printed = (tmp_path / "demo.err").read_text()
        assert f'curl -s -H "X-Sidecar-Token: $(cat {demo_dir / "caller-token"})"' in printed
        store_port = int(re.search(r"OpenBao dev server: http://127.0.0.1:(\d+)", printed).group(1))
        assert not _port_closed(store_port)

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert _port_closed(port)
        assert _port_closed(store_port), "the OpenBao dev server outlived the demo"
    finally:
        if process.poll() is None:
            process.kill()
        err.close()
