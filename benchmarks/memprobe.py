"""What the sidecar's memory is made of, without touching its code.

``python -m benchmarks.memprobe imports``: the RSS of a bare interpreter, and what each group
of the imports of ``sidecar run`` adds to it; printed as JSON.

``python -m benchmarks.memprobe run OUT -- run --config FILE``: run the sidecar in this process
with tracemalloc on; on SIGUSR1 write the allocations still alive, grouped by file, to OUT (JSON).
"""

from __future__ import annotations

import json
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

MB = 2**20


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _package(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            if marker == "lib/python3":
                return "stdlib"
            return rest.split("/", 1)[0].removesuffix(".py")
    if filename.startswith("<frozen"):
        return "stdlib"
    return filename.rsplit("/", 1)[-1]


# what `sidecar run` imports, in an order where each step adds its own weight
IMPORTS = (
    ("asyncio (with ssl)", "asyncio"),
    ("uvloop", "uvloop"),
    ("orjson, yaml", "orjson"),
    ("orjson, yaml", "yaml"),
    ("aiohttp", "aiohttp.web"),
    ("pydantic, pydantic-settings", "pydantic"),
    ("pydantic, pydantic-settings", "pydantic_settings"),
    ("cryptography (snapshot AES-GCM)", "cryptography.hazmat.primitives.ciphers.aead"),
    ("requests, hvac", "requests"),
    ("requests, hvac", "hvac"),
    ("prometheus_client", "prometheus_client.aiohttp"),
    ("sidecar's own modules", "sidecar.cli"),
    ("sidecar's own modules", "sidecar.app"),
    ("sidecar's own modules", "sidecar.server"),
)


def imports() -> dict[str, Any]:
    """RSS added by each group of imports, in a fresh interpreter (no tracing)."""
    import importlib

    start = previous = _rss()
    added: dict[str, float] = {}
    for group, module in IMPORTS:
        importlib.import_module(module)
        now = _rss()
        added[group] = added.get(group, 0.0) + (now - previous) / MB
        previous = now
    return {
        "interpreter_rss_mb": round(start / MB, 1),
        "after_imports_rss_mb": round(previous / MB, 1),
        "rss_added_by_import_mb": {k: round(v, 1) for k, v in added.items()},
    }


def run(out: Path, argv: list[str]) -> int:
    tracemalloc.start(1)

    def dump(_signum: int, _frame: FrameType | None) -> None:
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("filename")
        by_file = [
            {
                "file": str(s.traceback[0].filename).split("site-packages/")[-1],
                "mb": round(s.size / MB, 2),
                "blocks": s.count,
            }
            for s in stats[:25]
        ]
        by_line = [
            {
                "file": f"{str(s.traceback[0].filename).split('site-packages/')[-1]}"
                f":{s.traceback[0].lineno}",
                "mb": round(s.size / MB, 4),
                "blocks": s.count,
            }
            for s in snapshot.statistics("lineno")[:60]
        ]
        by_package: Counter[str] = Counter()
        for s in stats:
            by_package[_package(s.traceback[0].filename)] += s.size
        traced, _peak = tracemalloc.get_traced_memory()
        out.write_text(
            json.dumps(
                {
                    "rss_mb": round(_rss() / MB, 1),
                    "traced_mb": round(traced / MB, 1),
                    "by_package_mb": {k: round(v / MB, 2) for k, v in by_package.most_common(12)},
                    "top_files": by_file,
                    "top_lines": by_line,
                },
                indent=2,
            )
        )

    signal.signal(signal.SIGUSR1, dump)
    from sidecar.cli import main

    return main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["imports"]:
        print(json.dumps(imports()))
        raise SystemExit(0)
    if sys.argv[1:2] == ["run"] and len(sys.argv) > 3 and sys.argv[3] == "--":
        raise SystemExit(run(Path(sys.argv[2]), sys.argv[4:]))
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
