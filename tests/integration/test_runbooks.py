"""The runbooks' commands, run: extend a cache window, revoke a leaked secret fleet-wide,
verify that a new value is in use. Each runbook's `<!-- runbook-test: run -->` blocks run as
written, in order, in bash, against a sidecar process in front of OpenBao; only its set-up
block is replaced, so that `sc` calls the local `sidecar` instead of `kubectl exec` into a pod.
Then the test checks what the runbook promised."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import CLASSES

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
BLOCK = re.compile(
    r"<!-- runbook-test: (?P<kind>setup|run) -->[ \t]*\n[ \t]*```sh[ \t]*\n(?P<body>.*?)^[ \t]*```",
    re.M | re.S,
)


@dataclass
class Runbook:
    steps: list[str]
    rollback: list[str]


def runbook(name: str) -> Runbook:
    """The runnable blocks of a runbook, split at its Rollback heading (set-up block checked)."""
    text = (RUNBOOKS / name).read_text()
    rollback_at = text.index("\n## Rollback")
    blocks = [(m.start(), m["kind"], textwrap.dedent(m["body"])) for m in BLOCK.finditer(text)]
    assert [kind for _, kind, _ in blocks][:1] == ["setup"], name
    assert "sc() { kubectl" in blocks[0][2], "the set-up block defines sc through kubectl exec"
    runs = [(at, body) for at, kind, body in blocks if kind == "run"]
    return Runbook(
        steps=[body for at, body in runs if at < rollback_at],
        rollback=[body for at, body in runs if at > rollback_at],
    )


@dataclass
class Live:
    store: DevOpenBao
    api: str
    caller_token: str
    audit: Path
    env: dict[str, str]
    folder: Path

    def read(self, path: str) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            f"{self.api}/secrets/{path}", headers={"X-Sidecar-Token": self.caller_token}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def run(self, setup: str, blocks: list[str]) -> str:
        """The blocks in one bash, after ``setup`` (which defines sc locally)."""
        script = "\n".join([setup, *blocks])
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{script}\n--- out\n{done.stdout}\n--- err\n{done.stderr}"
        return done.stdout

    def audit_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def _wait(condition: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("runbooks")
    store = DevOpenBao(folder / "store").start()
    sidecar = None
    try:
        api, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        (folder / "store-token").write_text(store.root_token)
        config = folder / "sidecar.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": api,
                    "metrics_listen": ops,
                    "caller_token_file": str(folder / "caller" / "token"),
                    "admin_token_file": str(folder / "admin" / "token"),
                    "audit_log": str(folder / "audit.log"),
                    "startup_jitter": "0s",
                    "revocation_list": "secret/sidecar/revocations",
                    "revocation_poll_interval": "500ms",
                    "backend": {
                        "address": store.addr,
                        "auth": {"method": "token", "token_file": str(folder / "store-token")},
                    },
                    "classes": {
                        "standard": {
                            **CLASSES["standard"],
                            "refresh_interval": "1s",
                            "overlap": "2s",
                        },
                        "payments": CLASSES["payments"],
                    },
                    "secrets": [{"match": "secret/app/**", "class": "standard"}],
                }
            )
        )
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(config)],
            stdout=(folder / "sidecar.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        token_file = folder / "caller" / "token"
        _wait(token_file.exists, "the sidecar did not start")
        bin_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SIDECAR_CONFIG": str(config),
            "BAO_ADDR": store.addr,
            "BAO_TOKEN": store.root_token,
            "HOME": str(folder),
        }
        yield Live(
            store,
            f"http://{api}",
            token_file.read_text().strip(),
            folder / "audit.log",
            env,
            folder,
        )
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(30)
        store.stop()


def test_the_extend_runbook_opens_a_window_and_its_rollback_closes_it(live: Live):
    live.store.kv_put("app/cart", {"token": "extend-runbook-value"})
    assert live.read("secret/app/cart")[0] == 200
    book = runbook("extend-cache-window.md")
    setup = 'CLASS=standard\nsc() { sidecar "$@"; }'
    out = live.run(setup, book.steps)
    assert "class standard: max_cache_age 6h (configured 15m) until " in out
    assert '"standard":' in out  # under "extensions" in sc status --json
    assert any(e["event"] == "cache_window_extended" for e in live.audit_events())

    live.run(setup, book.rollback)

    def reverted() -> bool:
        return any(e["event"] == "cache_window_reverted" for e in live.audit_events())

    _wait(reverted, "the window did not end")
    status = live.run(setup, ["sc status --json"])
    assert json.loads(status)["extensions"] == {}


def test_the_revoke_runbook_refuses_the_leaked_version_everywhere_and_serves_the_new_one(
    live: Live,
):
    live.store.kv_put("app/db", {"password": "revoke-runbook-leaked"})
    assert live.read("secret/app/db")[1]["version"] == 1
    book = runbook("revoke-leaked-secret.md")
    setup = 'SECRET=app/db LEAKED=1 LIST=sidecar/revocations MOUNT=secret\nsc() { sidecar "$@"; }'
    out = live.run(setup, book.steps)
    assert re.search(r"current_version\s+2\n", out)
    assert re.search(r"purged \d+ cached value\(s\)", out)  # 0 if the revocation dropped it
    status, body = live.read("secret/app/db?version=1")
    assert (status, body["error"], body["reason"]) == (
        410,
        "secret_revoked",
        "leaked in ticket OPS-1234",
    )
    status, body = live.read("secret/app/db")
    assert (status, body["version"]) == (200, 2)
    assert "revoke-runbook-leaked" not in out
    assert any(
        e["event"] == "revoked" and e["path"] == "secret/app/db" for e in live.audit_events()
    )

    live.run(setup, book.rollback)
    _wait(lambda: live.read("secret/app/db?version=1")[0] == 200, "the revocation was not lifted")


def test_the_verify_runbook_shows_the_new_version_read_by_the_app(live: Live):
    live.store.kv_put("app/api", {"key": "verify-runbook-v1"})
    assert live.read("secret/app/api")[1]["version"] == 1
    live.store.kv_put("app/api", {"key": "verify-runbook-v2"})
    _wait(lambda: live.read("secret/app/api")[1]["version"] == 2, "the rotation was not seen")
    book = runbook("verify-rotation.md")
    setup = f'SECRET=secret/app/api AUDIT="{live.audit}"\nsc() {{ sidecar "$@"; }}'
    out = live.run(setup, book.steps)
    status_row = next(line for line in out.splitlines() if line.startswith("secret/app/api "))
    assert status_row.split()[3:5] == ["2", "fresh"]
    rotation = next(line for line in out.splitlines() if "v1 -> v2" in line)
    assert "changed" in rotation and "never" not in rotation.split("changed", 1)[1].split()[0]
    assert "verify-runbook" not in out
    assert book.rollback == []  # "these steps change nothing"
