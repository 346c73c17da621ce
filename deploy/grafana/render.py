"""Draw the dashboard's panels from a Prometheus into one PNG (for the docs: what the dashboard
shows, without a Grafana). Every panel's queries, with the dashboard's variables at "All", over
[start, end]. Needs matplotlib (`pip install -e '.[bench]'`); `make docs-images` runs it at
the end of the live Prometheus test's outage scenario.

    python deploy/grafana/render.py PROMETHEUS_URL START END OUT.png
"""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).with_name("secrets-sidecar.json")


def _query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, object]]:
    params = urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": max(1.0, (end - start) / 200)}
    )
    address = f"{url}/api/v1/query_range?{params}"
    with urllib.request.urlopen(address, timeout=30) as answer:  # noqa: S310 - an http URL given
        return list(json.loads(answer.read())["data"]["result"])


def _legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    # a label the scrape does not have (pod, outside Kubernetes): name the target instead
    return re.sub(r"\{\{\w+\}\}", labels.get("instance", "all"), template)


def render(url: str, start: float, end: float, out: Path) -> int:
    """Write the PNG; returns how many panels were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 4.2, rows * 2.6))
    for axis, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$namespace", ".*")
                .replace("$pod", ".*")
                .replace("$class", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
            )
            for series in _query_range(url, expr, start, end):
                points = series["values"]  # type: ignore[index]
                xs = [float(t) - start for t, _ in points]
                ys = [float(v) for _, v in points]
                label = _legend(target.get("legendFormat", ""), series["metric"])  # type: ignore[arg-type]
                axis.plot(xs, ys, label=label or None, linewidth=1.2)
        axis.set_title(panel["title"], fontsize=9)
        axis.tick_params(labelsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, loc="upper left")
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(
        "secrets-sidecar dashboard: traffic, a rotation, then the store killed (x: seconds)",
        fontsize=11,
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return len(panels)


if __name__ == "__main__":
    drawn = render(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
    print(f"{drawn} panels drawn into {sys.argv[4]}")
