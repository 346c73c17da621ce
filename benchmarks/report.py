"""Targets, the table (text and Markdown) and the chart, from one results document."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# (key, what, threshold text, extractor -> measured value, check(value) -> bool)
Check = tuple[str, str, str, Callable[[dict[str, Any]], Any], Callable[[Any], bool] | None]


def _get(doc: dict[str, Any], *keys: str) -> Any:
    node: Any = doc
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(doc: dict[str, Any], name: str) -> float | None:
    value = _get(doc, "throughput", "ratios", name, "median")
    return float(value) if value is not None else None


def _warm_requests(doc: dict[str, Any]) -> tuple[float, float, dict[str, int], int] | None:
    phase = _get(doc, "storm", "phases", "warm")
    if not isinstance(phase, dict):
        return None
    return (
        phase["store_requests_per_secret_per_sidecar"],
        phase["secret_reads_per_secret_per_sidecar"],
        phase["store_requests_by_kind"],
        phase["sidecars"],
    )


def _largest_rss(doc: dict[str, Any]) -> tuple[int, float] | None:
    rss = _get(doc, "memory", "sidecar_rss_mb") or {}
    steps = [(int(k), v) for k, v in rss.items() if k.isdigit() and v is not None]
    return max(steps) if steps else None


CHECKS: list[Check] = [
    (
        "hit_vs_bare",
        "cache hit req/s vs bare aiohttp handler",
        ">= 0.9x",
        lambda d: _ratio(d, "sidecar_hit/bare_aiohttp"),
        lambda v: v >= 0.9,
    ),
    (
        "hit_vs_direct",
        "cache hit req/s vs direct OpenBao",
        ">= 3x",
        lambda d: _ratio(d, "sidecar_hit/direct_openbao"),
        lambda v: v >= 3.0,
    ),
    (
        "hit_vs_proxy",
        "cache hit req/s vs bao proxy",
        ">= 6x",
        lambda d: _ratio(d, "sidecar_hit/bao_proxy"),
        lambda v: v >= 6.0,
    ),
    (
        "hit_p99",
        "p99 hit latency at the benchmark's connections",
        "<= 5 ms",
        lambda d: _get(d, "throughput", "targets", "sidecar_hit", "p99_ms"),
        lambda v: v <= 5.0,
    ),
    (
        "coalescing",
        "store reads for the concurrent cold burst",
        "== number of secrets",
        lambda d: (
            None
            if _get(d, "coalescing", "store_reads") is None
            else (d["coalescing"]["store_reads"], d["coalescing"]["secrets"])
        ),
        lambda v: v[0] == v[1],
    ),
    (
        "warm_requests",
        # Judged on requests for secrets; the per-sidecar auth request (the token's TTL, for
        # renewal) is not per secret, and is shown next to it.
        "warm restart: store requests per secret per sidecar (on secret paths)",
        "<= 1",
        _warm_requests,
        lambda v: v[1] <= 1.0,
    ),
    (
        "warm_ready_spawn",
        "warm restart: ready time from spawn, N sidecars vs 1 (all N processes on this machine)",
        "information: CPU-bound process start",
        lambda d: (
            None
            if _get(d, "storm", "phases", "warm_1", "ready_max_s") is None
            or _get(d, "storm", "phases", "warm", "ready_max_s") is None
            else (
                d["storm"]["phases"]["warm"]["ready_max_s"],
                d["storm"]["phases"]["warm_1"]["ready_max_s"],
            )
        ),
        None,
    ),
    (
        "warm_ready_flat",
        "warm restart: ready time after listening, N sidecars vs 1",
        "does not grow (<= 1 sidecar's + 0.25 s)",
        lambda d: (
            None
            if _get(d, "storm", "phases", "warm_1", "listen_to_ready_max_s") is None
            or _get(d, "storm", "phases", "warm", "listen_to_ready_max_s") is None
            else (
                d["storm"]["phases"]["warm"]["listen_to_ready_max_s"],
                d["storm"]["phases"]["warm_1"]["listen_to_ready_max_s"],
            )
        ),
        lambda v: v[0] <= v[1] + 0.25,
    ),
    (
        "store_down_ready",
        "store down, warm snapshot only: all sidecars ready",
        "all",
        lambda d: (
            None
            if _get(d, "storm", "phases", "store_down") is None
            else (d["storm"]["phases"]["store_down"]["ready"], d["storm"]["sidecars"])
        ),
        lambda v: v[0] == v[1],
    ),
    (
        "rss_steady",
        "steady state: RSS growth while the same secrets are refreshed ahead",
        "information: should stay flat",
        lambda d: _get(d, "memory", "steady_state", "rss_growth_mb_per_minute"),
        None,
    ),
    (
        "rss_max",
        "sidecar RSS with the most cached secrets",
        "<= 80 MB",
        _largest_rss,
        lambda v: v[1] <= 80.0,
    ),
]


def _show(key: str, value: Any) -> str:
    if value is None:
        return "not measured"
    if key == "coalescing":
        return f"{value[0]} reads for {value[1]} secrets"
    if key == "warm_requests":
        per_secret, reads, kinds, sidecars = value
        other = ", ".join(
            f"{n / sidecars:g} {k}" for k, n in kinds.items() if k not in ("kv_data", "kv_metadata")
        )
        return (
            f"{reads:g} on secret paths ({per_secret:g} with all requests: per sidecar also "
            f"{other or 'nothing'})"
        )
    if key in ("warm_ready_flat", "warm_ready_spawn"):
        return f"{value[0]:.2f} s vs {value[1]:.2f} s"
    if key == "store_down_ready":
        return f"{value[0]} of {value[1]}"
    if key == "rss_max":
        return f"{value[1]:.1f} MB with {value[0]} secrets"
    if key.startswith("hit_vs"):
        return f"{value:.2f}x"
    if key == "rss_steady":
        return f"{value:+.1f} MB per minute"
    if key == "hit_p99":
        return f"{value:.2f} ms"
    return f"{value}"


def evaluate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    smoke = doc.get("mode") == "smoke"
    out = []
    for key, what, threshold, extract, check in CHECKS:
        try:
            value = extract(doc)
        except (KeyError, TypeError, ValueError):
            value = None
        if value is None:
            status = "not measured"
        elif check is None:
            status = "info"
        elif smoke:
            status = "not judged (smoke)"
        else:
            status = "met" if check(value) else "MISSED"
        out.append(
            {
                "key": key,
                "target": what,
                "threshold": threshold,
                "measured": _show(key, value),
                "status": status,
            }
        )
    return out


# -- text ---------------------------------------------------------------------------------


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def tables(doc: dict[str, Any], *, markdown: bool) -> str:  # noqa: PLR0915
    """The report as aligned text (stdout) or Markdown (docs)."""
    out: list[str] = []

    def table(headers: list[str], rows: list[list[str]]) -> None:
        if markdown:
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "|".join("---" for _ in headers) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in rows)
        else:
            shown = [headers, *rows] if any(headers) else rows
            widths = [max(len(str(x)) for x in col) for col in zip(*shown, strict=True)]
            for row in shown:
                line = "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                out.append(line.rstrip())
        out.append("")

    def heading(text: str) -> None:
        out.append(f"### {text}" if markdown else f"== {text}")
        out.append("")

    m = doc.get("machine", {})
    gen = doc.get("generator", {})
    heading("Run")
    table(
        ["", ""],
        [
            ["when", f"{doc.get('started_at')} ({doc.get('mode')} mode, {doc.get('seconds')} s)"],
            ["machine", f"{m.get('cpu_model')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB"],
            ["system", f"Linux {m.get('kernel')}, Python {m.get('python')}"],
            [
                "sidecar",
                f"commit {m.get('sidecar_commit')}, source hash {m.get('sidecar_tree')}"
                + (
                    f" (CHANGED during the run, {doc.get('sidecar_tree_at_end')} at the end)"
                    if doc.get("sidecar_tree_at_end")
                    and doc.get("sidecar_tree_at_end") != m.get("sidecar_tree")
                    else ""
                ),
            ],
            ["store", f"{m.get('openbao')}, `bao server -dev` (in-memory), file audit device on"],
            [
                "load",
                f"{gen.get('name')} ({gen.get('version') or 'built in'}), "
                f"{gen.get('connections')} connections, {gen.get('rounds')} rounds of "
                f"{gen.get('round_seconds')} s per target, alternating order, medians",
            ],
        ],
    )

    tp = doc.get("throughput")
    if isinstance(tp, dict) and "targets" in tp:
        heading("Throughput and latency (every sidecar request a cache hit)")
        rows = []
        for t in tp["targets"].values():
            if not t.get("available"):
                rows.append([t["label"], t.get("reason") or "not available"] + ["-"] * 7)
                continue
            rows.append(
                [
                    t["label"],
                    f"{t['rps']:.0f} ({t['rps_min']:.0f}-{t['rps_max']:.0f})",
                    _num(t["p50_ms"]),
                    _num(t["p99_ms"]),
                    _num(t["p999_ms"]),
                    _num(t["cpu_s_per_10k"]),
                    _num(t.get("store_cpu_s_per_10k")),
                    f"{t['errors']}/{t['non_2xx']}",
                    "-" if t.get("hit_fraction") is None else f"{100 * t['hit_fraction']:.2f}%",
                ]
            )
        table(
            [
                "target",
                "req/s (min-max)",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "CPU s/10k req",
                "store CPU s/10k",
                "errors/non-2xx",
                "hits (own metrics)",
            ],
            rows,
        )
        ratio_rows = [
            [name.replace("/", " / "), f"{r['median']:.2f}x", f"{r['min']:.2f}-{r['max']:.2f}x"]
            for name, r in tp.get("ratios", {}).items()
            if r.get("median") is not None
        ]
        if ratio_rows:
            table(["ratio of req/s (per round, median)", "median", "range"], ratio_rows)
    elif isinstance(tp, dict) and tp.get("error"):
        heading("Throughput and latency")
        out += [f"failed: {tp['error']}", ""]

    co = doc.get("coalescing")
    if isinstance(co, dict):
        heading("Coalescing (counted in the store's audit log)")
        if co.get("error"):
            out += [f"failed: {co['error']}", ""]
        else:
            table(
                [
                    "requests",
                    "secrets",
                    "store reads",
                    "ideal",
                    "other store requests",
                    "statuses",
                    "all answered s",
                ],
                [
                    [
                        str(co["requests"]),
                        str(co["secrets"]),
                        str(co["store_reads"]),
                        str(co["ideal_store_reads"]),
                        ", ".join(
                            f"{k} {v}"
                            for k, v in co["store_requests_by_kind"].items()
                            if k != "kv_data"
                        )
                        or "0",
                        ", ".join(f"{k}: {v}" for k, v in co["statuses"].items()),
                        _num(co["all_answered_s"]),
                    ]
                ],
            )

    st = doc.get("storm")
    if isinstance(st, dict):
        heading(
            f"Restart storm ({st.get('sidecars')} sidecars x {st.get('secrets_each')} preloaded "
            f"secrets, quota {_get(st, 'quota', 'rate_per_s')} req/s on the store, "
            f"startup_jitter {st.get('startup_jitter_s')} s)"
        )
        if st.get("error"):
            out += [f"failed: {st['error']}", ""]
        else:
            rows = []
            for label, p in st["phases"].items():
                rows.append(
                    [
                        label,
                        str(p["sidecars"]),
                        f"{p['ready']}/{p['sidecars']}",
                        _num(p["ready_max_s"]),
                        _num(p["listen_to_ready_max_s"]),
                        _num(p["cpu_s_at_ready_median"]),
                        str(p["store_requests"]) if p["store_up"] else "(store down)",
                        _num(p["store_requests_per_secret_per_sidecar"]),
                        str(p["peak_store_rps"]),
                        str(p["rate_limited_429"]),
                    ]
                )
            table(
                [
                    "phase",
                    "sidecars",
                    "ready",
                    "ready s (from spawn, max)",
                    "ready s after listening (max)",
                    "CPU s per process at ready",
                    "store requests",
                    "per secret per sidecar",
                    "peak store req/s",
                    "429s",
                ],
                rows,
            )
            out.append(st.get("note_429", ""))
            out.append("")

    me = doc.get("memory")
    if isinstance(me, dict):
        heading("Memory (VmRSS)")
        if me.get("error"):
            out += [f"failed: {me['error']}", ""]
        else:
            rows = [
                [
                    f"sidecar, {k} cached secrets" if k.isdigit() else f"sidecar, {k}",
                    _num(v, "{:.1f}"),
                ]
                for k, v in me.get("sidecar_rss_mb", {}).items()
            ]
            rows += [
                [f"bao proxy, {k.replace('_', ' ')}", _num(v, "{:.1f}")]
                for k, v in me.get("bao_proxy_rss_mb", {}).items()
            ]
            bare = _get(doc, "throughput", "targets", "bare_aiohttp", "rss_mb_after")
            if bare is not None:
                rows.append(
                    ["bare aiohttp + uvloop process (after its rounds)", _num(bare, "{:.1f}")]
                )
            table(["process", "RSS MB"], rows)
            if me.get("sidecar_rss_kb_per_secret") is not None:
                out.append(
                    f"Each cached secret adds {me['sidecar_rss_kb_per_secret']:.2f} KB of RSS "
                    f"(~{me.get('secret_data_bytes')} bytes of secret data each)."
                )
                out.append("")
            steady = me.get("steady_state") or {}
            if steady.get("refreshes"):
                out.append(
                    f"Steady state: {steady['secrets']} secrets read every ~0.5 s and refreshed "
                    f"ahead ({steady['refresh_interval_s']} s refresh_interval, "
                    f"{steady['max_cache_age_s']} s max_cache_age) for {steady['seconds']} s: "
                    f"{steady['refreshes']} refreshes, RSS {steady['rss_start_mb']} -> "
                    f"{steady['rss_end_mb']} MB ({steady['rss_growth_mb_per_minute']} MB/min, "
                    f"{steady['retained_kb_per_refresh']} KB kept per refresh)."
                )
                out.append("")
            imports = _get(me, "imports", "rss_added_by_import_mb") or {}
            if imports:
                heading("Memory: what the idle sidecar is made of (RSS added by each import)")
                rows = [["interpreter", _num(_get(me, "imports", "interpreter_rss_mb"), "{:.1f}")]]
                rows += [[k, _num(v, "{:.1f}")] for k, v in imports.items()]
                table(["import", "RSS MB"], rows)
            trace = me.get("per_secret_profile") or {}
            if trace.get("by_file"):
                heading(
                    f"Memory: what a cached secret is made of ({trace['tool']}; "
                    f"{trace['python_bytes_per_secret']} bytes per secret in all)"
                )
                table(
                    ["allocated in", "bytes per secret"],
                    [[f["file"], str(f["bytes_per_secret"])] for f in trace["by_file"]],
                )
                if trace.get("by_line"):
                    table(
                        ["allocated at (line)", "bytes per secret"],
                        [[f["line"], str(f["bytes_per_secret"])] for f in trace["by_line"]],
                    )

    bu = doc.get("budget")
    if isinstance(bu, dict):
        _budget_tables(bu, heading, table, out)

    heading("Targets")
    table(
        ["target", "threshold", "measured", "status"],
        [[t["target"], t["threshold"], t["measured"], t["status"]] for t in doc.get("targets", [])],
    )
    missed = [t for t in doc.get("targets", []) if t["status"] == "MISSED"]
    if missed:
        out.append(
            "MISSED: "
            + "; ".join(f"{t['target']} ({t['measured']}, {t['threshold']})" for t in missed)
        )
        out.append("")

    profiles = _get(doc, "throughput", "profiles") or {}
    for name, prof in profiles.items():
        if not isinstance(prof, dict) or not prof.get("top_self"):
            continue
        cpu = _get(doc, "throughput", "targets", name, "cpu_s_per_10k")
        us = cpu * 100 if cpu else None  # CPU microseconds per request
        heading(
            f"Profile: {name} under load ({prof.get('tool')}; "
            f"{_num(us, '{:.1f}')} CPU us per request)"
        )
        if prof.get("self_by_area"):
            table(
                ["self time by area", "%", "us/request"], _shares(prof["self_by_area"], "area", us)
            )
        own = [e for e in prof.get("top_inclusive_own_code") or [] if e["percent"] < 40]
        if own:
            table(["own code, inclusive", "%", "us/request"], _shares(own[:10], "function", us))
        table(
            ["top functions, self", "%", "us/request"],
            _shares(prof["top_self"][:10], "function", us),
        )
    for name in ("sidecar_hit", "sidecar_vault_api"):
        extra = profile_diff(doc, name, "bare_aiohttp")
        if extra:
            heading(
                f"Where {name} spends more than the bare handler (CPU us per request, self time "
                "by function: profile share x CPU per request, difference)"
            )
            table(
                ["function", name, "bare", "extra"],
                [
                    [f, _num(a, "{:.1f}"), _num(b, "{:.1f}"), _num(a - b, "{:+.1f}")]
                    for f, a, b in extra
                ],
            )
    errors = doc.get("errors") or []
    if errors:
        heading("Errors")
        out += [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def _budget_tables(
    bu: dict[str, Any],
    heading: Callable[[str], None],
    table: Callable[[list[str], list[list[str]]], None],
    out: list[str],
) -> None:
    heading(
        f"Store budget ({bu.get('secrets')} secrets read at random by {bu.get('clients')} "
        f"clients through one sidecar, refresh_interval {bu.get('refresh_interval_s'):g} s, "
        f"{bu.get('seconds_per_run'):g} s from cold per run)"
        if not bu.get("error")
        else "Store budget"
    )
    if bu.get("error"):
        out += [f"failed: {bu['error']}", ""]
        return
    rows = []
    for on_outage, runs in bu["runs"].items():
        for name, r in runs.items():
            rows.append(
                [
                    on_outage,
                    f"{name} (burst {r['rate_limit']['burst']})",
                    _num(r["reads_per_s"], "{:.0f}"),
                    f"{r['hits']} / {r['misses']} / {r['stale']}",
                    _num(None if r["hit_fraction"] is None else 100 * r["hit_fraction"], "{:.1f}%"),
                    f"{_num(r['p50_ms'])} / {_num(r['p99_ms'])}",
                    f"{_num(r['non_hit_p50_ms'])} / {_num(r['non_hit_p99_ms'])}",
                    str(r["failed"])
                    + (
                        " (" + ", ".join(f"{k} {v}" for k, v in r["failure_reasons"].items()) + ")"
                        if r["failure_reasons"]
                        else ""
                    ),
                    _num(r["store_requests_per_s"], "{:.1f}"),
                ]
            )
    table(
        [
            "class",
            "budget req/s",
            "reads/s",
            "hit / miss / stale",
            "hits",
            "p50 / p99 ms",
            "non-hit p50 / p99 ms",
            "failed (non-200)",
            "store req/s (audit log)",
        ],
        rows,
    )
    measures = (
        ("reads_per_s", "reads/s"),
        ("hit_fraction", "hit fraction"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("non_hit_p50_ms", "non-hit p50 ms"),
        ("non_hit_p99_ms", "non-hit p99 ms"),
        ("store_requests_per_s", "store req/s"),
    )
    ratio_rows = []
    low, high = _get(bu, "compared", "base"), _get(bu, "compared", "against")
    for on_outage, ratios in bu.get("ratios", {}).items():
        a, b = bu["runs"][on_outage][low], bu["runs"][on_outage][high]
        ratio_rows += [
            [
                f"{on_outage}: {what}",
                _num(a.get(key), "{:g}"),
                _num(b.get(key), "{:g}"),
                _num(ratios.get(key), "{:.2f}x"),
            ]
            for key, what in measures
        ]
    if ratio_rows:
        table(["budget side by side", str(low), str(high), f"{high} vs {low}"], ratio_rows)
    out.append(
        "hit / miss / stale: the X-Sidecar-Cache header of each answer (a read that joined a "
        "fetch under way says MISS); non-hit: every read not answered HIT, failures included."
    )
    out.append("")


def profile_diff(
    doc: dict[str, Any], name: str, floor: str, top: int = 12
) -> list[tuple[str, float, float]]:
    """Functions by how many more CPU microseconds per request they take in ``name`` than in
    ``floor`` (profile share of self time x CPU per request of each)."""
    profiles = _get(doc, "throughput", "profiles") or {}
    a, b = profiles.get(name) or {}, profiles.get(floor) or {}
    cpu_a = _get(doc, "throughput", "targets", name, "cpu_s_per_10k")
    cpu_b = _get(doc, "throughput", "targets", floor, "cpu_s_per_10k")
    if not a.get("self_percent") or not b.get("self_percent") or not cpu_a or not cpu_b:
        return []

    def us(profile: dict[str, Any], cpu: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for function, percent in profile["self_percent"].items():
            # the loop's own frame differs by program (run_app, Runner.run): one name for both
            key = (
                "event loop (uvloop C)"
                if function.split(" (")[0]
                in ("run_app", "Runner.run", "run", "run_until_complete", "run_forever")
                else function
            )
            out[key] = out.get(key, 0.0) + cpu * 100 * percent / 100
        return out

    ua, ub = us(a, cpu_a), us(b, cpu_b)
    rows = [(f, ua.get(f, 0.0), ub.get(f, 0.0)) for f in set(ua) | set(ub)]
    rows.sort(key=lambda r: r[1] - r[2], reverse=True)
    total = ("total (CPU us per request)", cpu_a * 100, cpu_b * 100)
    return [*rows[:top], total]


def _shares(entries: list[dict[str, Any]], key: str, us: float | None) -> list[list[str]]:
    return [
        [e[key], f"{e['percent']:.1f}", _num(us * e["percent"] / 100 if us else None, "{:.1f}")]
        for e in entries
    ]


# -- chart ---------------------------------------------------------------------------------

SHORT = {
    "sidecar_hit": "hit",
    "sidecar_vault_api": "hit /v1",
    "direct_openbao": "OpenBao",
    "bao_proxy": "bao proxy",
    "bare_aiohttp": "bare aiohttp",
}


def chart(doc: dict[str, Any], path: Path) -> str | None:  # noqa: PLR0915
    """Write the PNG; returns why not when it cannot (matplotlib missing, nothing to draw)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no PNG chart"

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    m = doc.get("machine", {})
    fig.suptitle(
        f"secrets-sidecar benchmarks ({doc.get('mode')}) - {doc.get('started_at')} - "
        f"{m.get('cpu_model')}, {m.get('cores')} cores - "
        f"{_get(doc, 'generator', 'name')}, {_get(doc, 'generator', 'connections')} connections",
        fontsize=10,
    )
    named = [
        (name, t)
        for name, t in (_get(doc, "throughput", "targets") or {}).items()
        if t.get("available")
    ]
    targets = [t for _, t in named]
    ax = axes[0][0]
    if targets:
        labels = [t["label"].split(" (")[0] for t in targets]
        rps = [t["rps"] for t in targets]
        low = [t["rps"] - t["rps_min"] for t in targets]
        high = [t["rps_max"] - t["rps"] for t in targets]
        colors = ["tab:green" if "sidecar" in t["label"] else "tab:gray" for t in targets]
        ax.barh(labels, rps, xerr=[low, high], color=colors)
        ax.invert_yaxis()
        for i, value in enumerate(rps):
            ax.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
        ax.set_xlabel("req/s (median of rounds; bars: min-max)")
        ax.set_title("Throughput", fontsize=10)
        ax = axes[0][1]
        x = range(len(targets))
        width = 0.27
        for offset, key, name in (
            (-width, "p50_ms", "p50"),
            (0, "p99_ms", "p99"),
            (width, "p999_ms", "p99.9"),
        ):
            ax.bar([i + offset for i in x], [t[key] for t in targets], width, label=name)
        ax.set_xticks(list(x))
        ax.set_xticklabels([SHORT.get(name, name) for name, _ in named], fontsize=8)
        ax.set_yscale("log")
        ax.axhline(5.0, color="red", linestyle="--", linewidth=0.8, label="5 ms target (hit p99)")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title("Latency", fontsize=10)
        ax.legend(fontsize=8)
    phases = _get(doc, "storm", "phases") or {}
    ax = axes[1][0]
    for label, phase in phases.items():
        if phase.get("store_up") and phase.get("store_rps_timeline"):
            ax.step(
                range(len(phase["store_rps_timeline"])),
                phase["store_rps_timeline"],
                where="post",
                label=f"{label} ({phase['sidecars']} sidecars)",
            )
    quota = _get(doc, "storm", "quota", "rate_per_s")
    if quota:
        ax.axhline(quota, color="red", linestyle="--", linewidth=0.8, label="store quota")
    ax.set_xlabel("seconds since spawn")
    ax.set_ylabel("store requests per second (audit log)")
    ax.set_title("Restart storm: load on the store", fontsize=10)
    if phases:
        ax.legend(fontsize=8)
    ax = axes[1][1]
    rss = _get(doc, "memory", "sidecar_rss_mb") or {}
    proxy = _get(doc, "memory", "bao_proxy_rss_mb") or {}
    bars = [
        (f"sidecar {k}" if not k.isdigit() else f"sidecar {int(k):,} secrets", v, "tab:green")
        for k, v in rss.items()
        if v is not None
    ]
    bars += [
        (f"bao proxy {k.replace('_', ' ')}", v, "tab:gray")
        for k, v in proxy.items()
        if v is not None
    ]
    if bars:
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        for i, (_, value, _) in enumerate(bars):
            ax.text(i, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        ax.axhline(80, color="red", linestyle="--", linewidth=0.8, label="80 MB target")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.set_ylabel("RSS, MB")
    ax.set_title("Memory", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
