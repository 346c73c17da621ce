"""Where the time of a cache hit goes: py-spy (sampling, attached to the running process, which
is not slowed) when it is installed (the ``bench`` extra), else cProfile (deterministic, slows
the process, so its shares are indicative only)."""

from __future__ import annotations

import pstats
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Outermost frames that only run the event loop: time "in" them is uvloop's C code (socket
# reads and writes, the HTTP parser called from C, callbacks), not Python we could change.
LOOP_RUNNERS = {
    "run_app",
    "run",
    "_event_loop_run",
    "run_until_complete",
    "run_forever",
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "main",
    "_run",
    "serve",
    "Server.run",
    "Runner.run",
}


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks, by function)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed")
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frame(text: str) -> tuple[str, str]:
    """'Handler.fn (pkg/mod.py:12)' -> ('Handler.fn', 'pkg/mod.py')."""
    name, _, where = text.rpartition(" (")
    if not name:
        return text, ""
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _area(stack: list[tuple[str, str]], leaf: int) -> str:
    name, file = stack[leaf]
    if name in LOOP_RUNNERS or file.startswith("<frozen runpy"):
        # the Python frame that entered the loop: samples here are uvloop's C code
        return "event loop (uvloop C: sockets, parsing, callbacks)"
    for prefix, area in (
        ("sidecar/", "sidecar code"),
        ("benchmarks/", "handler code"),
        ("aiohttp/", "aiohttp"),
        ("multidict/", "aiohttp"),
        ("yarl/", "aiohttp"),
        ("prometheus_client/", "prometheus_client"),
        ("asyncio/", "asyncio"),
        ("uvloop/", "event loop (uvloop C: sockets, parsing, callbacks)"),
    ):
        if file.startswith(prefix) or f"/{prefix}" in file:
            return area
    return file.split("/", 1)[0] or name


def summarize_py_spy(raw: Path, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [_frame(f) for f in stack_text.split(";")]
        total += count
        leaf = len(stack) - 1
        name, file = stack[leaf]
        self_time[f"{name} ({file})"] += count
        areas[_area(stack, leaf)] += count
        for key in {f"{fn} ({f})" for fn, f in stack}:
            inclusive[key] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": key, "percent": round(100 * value / total, 1)}
            for key, value in counter.most_common(n)
        ]

    sidecar_inclusive = Counter(
        {k: v for k, v in inclusive.items() if "(sidecar/" in k or "(benchmarks/" in k}
    )
    return {
        "tool": "py-spy (sampling, by function)",
        "samples": total,
        # every function's share of self time, for comparing two profiles function by function
        "self_percent": {
            key: round(100 * value / total, 2)
            for key, value in self_time.most_common()
            if total and 100 * value / total >= 0.05
        },
        "self_by_area": [
            {"area": area, "percent": round(100 * n / total, 1)} for area, n in areas.most_common()
        ]
        if total
        else [],
        "top_self": share(self_time, top) if total else [],
        "top_inclusive_own_code": share(sidecar_inclusive, top) if total else [],
        "top_inclusive_library": share(
            Counter(
                {
                    k: v
                    for k, v in inclusive.items()
                    if ("(aiohttp/" in k or "(prometheus_client/" in k)
                }
            ),
            top,
        )
        if total
        else [],
    }


def summarize_cprofile(stats_file: Path, top: int = 15) -> dict[str, Any]:
    stats = pstats.Stats(str(stats_file))
    entries = []
    total = 0.0
    for (file, _line, name), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((file, name, tottime, cumtime))
        total += tottime

    def short(file: str) -> str:
        for marker in ("site-packages/", "/work/main/"):
            if marker in file:
                return file.split(marker, 1)[1]
        return file

    by_self = sorted(entries, key=lambda e: e[2], reverse=True)[:top]
    own = sorted(
        (e for e in entries if "/sidecar/" in e[0] and not e[1].startswith("<")),
        key=lambda e: e[3],
        reverse=True,
    )[:top]
    return {
        "tool": "cProfile (deterministic; slows the process, shares are indicative)",
        "top_self": [
            {"function": f"{n} ({short(f)})", "percent": round(100 * t / total, 1)}
            for f, n, t, _ in by_self
        ],
        "top_inclusive_own_code": [
            {"function": f"{n} ({short(f)})", "percent": round(100 * c / total, 1)}
            for f, n, _, c in own
        ],
    }


def render(summary: dict[str, Any], title: str) -> str:
    lines = [f"== {title}: {summary.get('tool')}; samples: {summary.get('samples', '-')}"]
    if summary.get("self_by_area"):
        lines.append("self time by area:")
        lines += [f"  {a['percent']:5.1f}%  {a['area']}" for a in summary["self_by_area"]]
    for key, heading in (
        ("top_self", "top functions by self time:"),
        ("top_inclusive_own_code", "own code, inclusive (time under each function):"),
        ("top_inclusive_library", "library, inclusive:"),
    ):
        if summary.get(key):
            lines.append(heading)
            lines += [f"  {e['percent']:5.1f}%  {e['function']}" for e in summary[key]]
    return "\n".join(lines) + "\n"
