"""The drill's scenarios by name, and its table for the terminal."""

from __future__ import annotations

from sidecar.drill.drill import SCENARIOS, Scenario
from sidecar.drill.verdict import Outcome
from sidecar.ops.columns import aligned


def by_name(names: list[str] | None) -> list[Scenario]:
    """The scenarios named (all of them for None), in the drill's order."""
    return [s for s in SCENARIOS if names is None or s.name in names]


def render_table(outcomes: list[Outcome]) -> str:
    """One row per scenario and class, then what broke."""
    rows = [
        (
            "SCENARIO",
            "CLASS",
            "READS",
            "FRESH",
            "STALE",
            "503",
            "OLDER",
            "P99",
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
                f"{o.p99 * 1000:.0f}ms",
                "-" if o.recovered_after is None else f"{o.recovered_after:g}s",
                "holds" if o.holds else "BROKEN",
            )
        )
    lines = aligned(rows)
    for o in outcomes:
        lines += [f"{o.scenario} / {o.secret_class}: {why}" for why in o.broken]
    held = sum(o.holds for o in outcomes)
    lines.append(f"{held} of {len(outcomes)} verdicts hold")
    return "\n".join(lines)
