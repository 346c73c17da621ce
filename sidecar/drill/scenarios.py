"""The drill's scenarios by name, and its table for the terminal."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from sidecar.drill.drill import SCENARIOS, Scenario
from sidecar.drill.verdict import Outcome, Read
from sidecar.ops.columns import aligned


def by_name(names: list[str] | None) -> list[Scenario]:
    """The scenarios named (all of them for None), in the drill's order."""
    return [s for s in SCENARIOS if names is None or s.name in names]


def render_table(outcomes: list[Outcome], skipped: dict[str, str] | None = None) -> str:
    """One row per scenario and class, then what broke, what was not judged, what was skipped."""
    rows = [
        (
            "SCENARIO",
            "CLASS",
            "READS",
            "FRESH",
            "STALE",
            "503",
            "OLDER",
            "PREV",
            "P99",
            "STORE",
            "RECOVERED",
            "VERDICT",
        )
    ]
    for o in outcomes:
        refused = ", ".join(f"{n} {r}" for r, n in sorted(o.unavailable.items())) or "0"
        rows.append(
            (
                o.scenario,
                o.secret_class,
                str(o.reads),
                str(o.fresh),
                str(o.stale),
                refused,
                str(o.older),
                str(o.previous_served),
                f"{o.p99 * 1000:.0f}ms",
                "-" if o.store_requests is None else str(o.store_requests),
                "-" if o.recovered_after is None else f"{o.recovered_after:g}s",
                "holds" if o.holds else "BROKEN",
            )
        )
    lines = aligned(rows)
    for o in outcomes:
        lines += [f"{o.scenario} / {o.secret_class}: {why}" for why in o.broken]
    seen: set[tuple[str, str]] = set()
    for o in outcomes:
        for note in o.notes:
            if (o.scenario, note) not in seen:  # scenario-wide notes: once, not per class
                seen.add((o.scenario, note))
                lines.append(f"{o.scenario}: note: {note}")
    lines += [f"{name}: skipped: {why}" for name, why in (skipped or {}).items()]
    lines.append(
        "PREV: ?version=previous answered (rotation); RECOVERED: from the fault's end to the "
        "first fresh read (restart_storm: until every sidecar was ready)"
    )
    sources = sorted({o.store_source for o in outcomes if o.store_source})
    if sources:
        lines.append(
            "STORE: store requests for each class's secrets, counted at the "
            + " and ".join(sources)
        )
    held = sum(o.holds for o in outcomes)
    lines.append(f"{held} of {len(outcomes)} verdicts hold")
    return "\n".join(lines)


def write_report(
    path: Path,
    outcomes: list[Outcome],
    timelines: dict[str, tuple[list[Read], float, float]],
    command: str,
    skipped: dict[str, str] | None = None,
) -> list[str]:
    """The drill as Markdown at ``path``, with a timeline chart per scenario next to it (PNG,
    when matplotlib is installed: `pip install -e '.[bench]'`); the notes on what was left out."""
    notes: list[str] = []
    charts: dict[str, str] = {}
    try:
        charts = _charts(path, timelines)
    except ImportError:
        notes.append("no charts: matplotlib is not installed (pip install -e '.[bench]')")
    held = sum(o.holds for o in outcomes)
    lines = [
        "# Drill report",
        "",
        f"`{command}` on {platform.node()} ({platform.platform()}, {os.cpu_count()} CPUs), "
        f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}: "
        f"**{held} of {len(outcomes)} verdicts hold**.",
        "",
        "```",
        render_table(outcomes, skipped),
        "```",
        "",
    ]
    for scenario, image in charts.items():
        lines += [f"## {scenario}", "", f"![reads over time, {scenario}]({image})", ""]
    lines += [f"_{note}_" for note in notes]
    path.write_text("\n".join(lines) + "\n")
    return notes


def _charts(path: Path, timelines: dict[str, tuple[list[Read], float, float]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    for scenario, (reads, fault_start, fault_end) in timelines.items():
        figure, axis = plt.subplots(figsize=(9, 3))
        kinds = sorted({_kind(r) for r in reads})
        end = max((r.at for r in reads), default=1.0)
        buckets = [i * 0.5 for i in range(int(end / 0.5) + 2)]
        bottom = [0] * len(buckets)
        for kind in kinds:
            counts = [0] * len(buckets)
            for read in reads:
                if _kind(read) == kind:
                    counts[int(read.at / 0.5)] += 1
            axis.bar(buckets, counts, width=0.5, bottom=bottom, align="edge", label=kind)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        axis.axvspan(fault_start, fault_end, color="red", alpha=0.08, label="fault")
        axis.set_xlabel("seconds")
        axis.set_ylabel("reads per 0.5 s")
        axis.set_title(scenario)
        axis.legend(fontsize=7, loc="upper right")
        figure.tight_layout()
        image = f"{path.stem}-{scenario}.png"
        figure.savefig(path.parent / image, dpi=80)
        plt.close(figure)
        charts[scenario] = image
    return charts


def _kind(read: Read) -> str:
    if read.status == 200:
        return "200 stale" if read.stale else "200 fresh"
    if read.status == 0:
        return "no answer"
    return f"{read.status} {read.reason or ''}".strip()
