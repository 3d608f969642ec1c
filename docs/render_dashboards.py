"""Render the Grafana dashboards' panels to PNG from a Prometheus, without Grafana.

    python docs/render_dashboards.py --prometheus http://127.0.0.1:9090 \
        --minutes 5 --out docs/images

Each dashboard in ``dashboards/`` becomes ``<out>/dashboard-<name>.png``:
the panels laid out on Grafana's 24-column grid, time series as lines
(stacked where the panel stacks), stat panels as one big number. The
queries are the panels' own, run through Prometheus' range query API.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import requests

ROOT = Path(__file__).resolve().parent.parent
GRID_COLUMNS = 24
ROW_INCHES = 0.42
WIDTH_INCHES = 16.0
STAT_COLOURS = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "blue": "#1f60c4"}


def main() -> None:
    """Parse the command line and render every dashboard."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL of Prometheus")
    parser.add_argument("--minutes", type=float, default=10.0, help="time range shown")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--dashboards", type=Path, default=ROOT / "dashboards")
    args = parser.parse_args()

    end = time.time()
    start = end - args.minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.dashboards.glob("*.json")):
        target = args.out / f"dashboard-{path.stem}.png"
        render_dashboard(json.loads(path.read_text()), args.prometheus, start, end, target)
        print(target)


def render_dashboard(
    dashboard: dict[str, Any], prometheus: str, start: float, end: float, target: Path
) -> None:
    """Draw every panel of ``dashboard`` into one PNG at ``target``."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = rows * ROW_INCHES + 0.8
    fig = plt.figure(figsize=(WIDTH_INCHES, height), dpi=90, facecolor="#f4f5f5")
    fig.suptitle(dashboard["title"], x=0.01, ha="left", fontsize=15, fontweight="bold")

    step = max((end - start) / 240, 1.0)
    for panel in panels:
        ax = fig.add_axes(_box(panel["gridPos"], rows, height))
        series = [
            (_legend(target.get("legendFormat", ""), metric), points)
            for target in panel["targets"]
            for metric, points in _query(prometheus, target["expr"], start, end, step)
        ]
        if panel["type"] == "stat":
            _draw_stat(ax, panel, series)
        else:
            _draw_timeseries(ax, panel, series, (start, end))
    fig.savefig(target, facecolor=fig.get_facecolor())
    plt.close(fig)


def _box(grid: dict[str, int], rows: int, height: float) -> list[float]:
    # Grafana's grid counts rows from the top; matplotlib from the bottom.
    pad_x, pad_top, pad_bottom = 0.035, 0.45, 0.5
    usable = (height - 0.8) / height
    left = grid["x"] / GRID_COLUMNS + pad_x / 2
    width = grid["w"] / GRID_COLUMNS - pad_x
    top = 1 - 0.8 / height - grid["y"] / rows * usable
    box_height = grid["h"] / rows * usable - (pad_top + pad_bottom) / height
    return [left, top - grid["h"] / rows * usable + pad_bottom / height, width, box_height]


def _query(prometheus: str, expr: str, start: float, end: float, step: float) -> list[Any]:
    answer = requests.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    answer.raise_for_status()
    out = []
    for result in answer.json()["data"]["result"]:
        points = [(float(t), float(v)) for t, v in result["values"]]
        out.append((result["metric"], points))
    return out


def _legend(template: str, metric: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in metric.items()) or "value"


def _draw_timeseries(
    ax: Any, panel: dict[str, Any], series: list[Any], span: tuple[float, float]
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    ax.set_facecolor("white")
    ax.grid(True, color="#e0e0e0", linewidth=0.6)
    ax.set_xlim(*(dt.datetime.fromtimestamp(t, dt.UTC) for t in span))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=7))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(labelsize=7)
    ax.set_ylabel(_unit_label(defaults.get("unit", "")), fontsize=7)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey",
                transform=ax.transAxes)
        return

    times = sorted({t for _, points in series for t, _ in points})
    when = [dt.datetime.fromtimestamp(t, dt.UTC) for t in times]
    lines = [[_value_at(points, t) for t in times] for _, points in series]
    labels = [label for label, _ in series]
    if stacked:
        ax.stackplot(when, [[0.0 if math.isnan(v) else v for v in line] for line in lines],
                     labels=labels, alpha=0.75)
    else:
        for label, line in zip(labels, lines, strict=True):
            ax.plot(when, line, label=label, linewidth=1.6)
    _limits(ax, defaults)
    ax.legend(fontsize=6.5, loc="upper left", ncol=2, framealpha=0.7)


def _draw_stat(ax: Any, panel: dict[str, Any], series: list[Any]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    value = math.nan
    if series:
        values = [v for _, v in series[0][1] if not math.isnan(v)]
        value = values[-1] if values else math.nan
    colour = _threshold_colour(defaults, value)
    ax.set_facecolor(colour)
    ax.set_xticks([])
    ax.set_yticks([])
    text = "no data" if math.isnan(value) else f"{value:,.0f}"
    ax.text(0.5, 0.42, text, ha="center", va="center", fontsize=26, color="white",
            fontweight="bold", transform=ax.transAxes)
    ax.text(0.03, 0.85, panel["title"], ha="left", va="center", fontsize=10,
            color="white", fontweight="bold", transform=ax.transAxes)


def _threshold_colour(defaults: dict[str, Any], value: float) -> str:
    colour = "grey"
    steps = defaults.get("thresholds", {}).get("steps", [])
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            colour = step["color"]
    return STAT_COLOURS.get(colour, colour)


def _value_at(points: list[tuple[float, float]], at: float) -> float:
    lookup = dict(points)
    return lookup.get(at, math.nan)


def _limits(ax: Any, defaults: dict[str, Any]) -> None:
    low, high = ax.get_ylim()
    if "min" in defaults:
        low = defaults["min"]
    if "max" in defaults:
        high = max(defaults["max"], high) if high > defaults["max"] else defaults["max"]
    if high <= low:
        high = low + 1
    ax.set_ylim(low, high)


def _unit_label(unit: str) -> str:
    return {"s": "seconds", "ops": "per second", "reqps": "requests/s",
            "percentunit": "ratio"}.get(unit, "")


if __name__ == "__main__":
    main()
