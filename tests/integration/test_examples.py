"""Every ``sh`` and ``python`` example in README.md and docs/*.md runs, as pasted, against the
demo that ``make run`` starts: a doc cannot drift from the code any more.

The demo runs in a scratch folder (its files in ``.demo/`` there, as in a checkout), and each
example runs in that folder with the venv's ``sidecar`` and ``bao`` on PATH. The only change made
to an example is the port: ``127.0.0.1:8100`` and ``:9102`` become the demo's, in case those
are taken on the test machine. A block preceded by ``<!-- example: not run: REASON -->`` is
not run (the set-up commands themselves, minutes of benchmarks); it must say why.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.dev.openbao import free_port

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!--\s*example:\s*(?P<note>[^>]*?)\s*-->\s*\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
    re.M | re.S,
)
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    lang: str
    body: str
    note: str | None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def _examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            lang = RUNNABLE.get(match["lang"])
            if lang is None:
                continue  # output, diagrams, config: shown, not run
            line = text[: match.start("lang")].count("\n") + 1
            found.append(
                Example(str(page.relative_to(ROOT)), line, lang, match["body"], match["note"])
            )
    return found


EXAMPLES = _examples()
RUN = [e for e in EXAMPLES if e.note is None]


def test_the_examples_are_found_and_every_one_left_out_says_why():
    assert len(RUN) >= 5, [e.name for e in RUN]
    for example in EXAMPLES:
        if example.note is not None:
            assert re.fullmatch(r"not run: \S.{10,}", example.note), example.name


@dataclass(frozen=True)
class Demo:
    folder: Path
    port: int
    ops_port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``make run``'s demo (``sidecar demo``), in a scratch folder of its own."""
    folder = tmp_path_factory.mktemp("checkout")
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    err = (folder / "demo.err").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        printed = ""
        while "Ctrl-C stops" not in printed:
            assert process.poll() is None, (folder / "demo.err").read_text()
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.2)
            printed = (folder / "demo.err").read_text()
        ops_port = int(re.search(r"http://127.0.0.1:(\d+)/readyz", printed).group(1))  # type: ignore[union-attr]
        _wait_ready(ops_port)
        yield Demo(folder, port, ops_port, env)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        err.close()


def _wait_ready(ops_port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", ops_port), 1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                if b" 200 " in sock.recv(200):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the demo sidecar never became ready")


@pytest.mark.parametrize("example", RUN, ids=[e.name for e in RUN])
def test_example_runs_as_pasted(example: Example, demo: Demo) -> None:
    code = example.body.replace("127.0.0.1:8100", f"127.0.0.1:{demo.port}").replace(
        "127.0.0.1:9102", f"127.0.0.1:{demo.ops_port}"
    )
    command = ["sh", "-e", "-c", code] if example.lang == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(
        command, cwd=demo.folder, env=demo.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"{example.name} failed ({done.returncode}):\n{code}\n--- stdout\n{done.stdout}"
        f"\n--- stderr\n{done.stderr}"
    )
