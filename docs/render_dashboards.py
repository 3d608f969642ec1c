"""Render the Grafana dashboards' panels to PNG from a Prometheus, without Grafana.

    python docs/render_dashboards.py --prometheus http://127.0.0.1:9090 \
        --minutes 5 --out docs/images

Each dashboard in ``dashboards/`` becomes ``<out>/dashboard-<name>.png``:
the panels laid out on Grafana's 24-column grid, time series as lines
(stacked where the panel stacks) with the legend below, stat panels as
one big number. The queries are the panels' own, run through Prometheus'
range query API, with ``$__rate_interval`` replaced as Grafana would
(``--rate-interval``).
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
from matplotlib.ticker import FuncFormatter, MaxNLocator

ROOT = Path(__file__).resolve().parent.parent
GRID_COLUMNS = 24
ROW_INCHES = 0.46
WIDTH_INCHES = 16.0
HEADER_INCHES = 0.7
# Room around each plot, in inches: the tick labels and the title must
# fit inside the panel's own grid cell.
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 0.72, 0.18, 0.34, 0.34
LEGEND_ROW_INCHES = 0.17
STAT_COLOURS = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "blue": "#1f60c4"}
# Twelve colours told apart at a glance (Grafana's classic palette order).
PALETTE = (
    "#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1",
    "#ba43a9", "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17",
)
# Series whose legend says good or bad keep that colour on every panel
# (taken from the palette, so no other series of the panel gets it).
GREEN, YELLOW, CYAN, ORANGE, RED, BLUE, PURPLE, VIOLET = PALETTE[:8]
MEANING = {
    "success": GREEN, "200": GREEN, "hits": GREEN, "valid": GREEN, "304": BLUE,
    "misses": ORANGE, "transient": ORANGE, "429": ORANGE,
    "failure": RED, "dead": RED, "revoked": RED, "420": RED, "503": RED,
    "deferred": YELLOW, "skipped": CYAN, "owner_changed": PURPLE,
    "config_error": VIOLET,
}
# Nice steps for the time axis, in minutes.
TICK_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 360)


def main() -> None:
    """Parse the command line and render every dashboard."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL of Prometheus")
    parser.add_argument("--minutes", type=float, default=10.0, help="time range shown")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--dashboards", type=Path, default=ROOT / "dashboards")
    parser.add_argument(
        "--rate-interval",
        default="1m",
        help="what $__rate_interval stands for (Grafana: 4 scrape intervals)",
    )
    args = parser.parse_args()

    end = time.time()
    start = end - args.minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.dashboards.glob("*.json")):
        target = args.out / f"dashboard-{path.stem}.png"
        dashboard = json.loads(path.read_text())
        render_dashboard(
            dashboard, args.prometheus, (start, end), target, args.rate_interval
        )
        print(target)


def render_dashboard(
    dashboard: dict[str, Any],
    prometheus: str,
    span: tuple[float, float],
    target: Path,
    rate_interval: str = "1m",
) -> None:
    """Draw every panel of ``dashboard`` into one PNG at ``target``."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = rows * ROW_INCHES + HEADER_INCHES
    fig = plt.figure(figsize=(WIDTH_INCHES, height), dpi=90, facecolor="#f4f5f5")
    fig.suptitle(dashboard["title"], x=0.01, ha="left", fontsize=15, fontweight="bold")

    step = max((span[1] - span[0]) / 240, 1.0)
    for panel in panels:
        series = [
            (_legend(target.get("legendFormat", ""), metric), points)
            for target in panel["targets"]
            for metric, points in _query(
                prometheus,
                target["expr"].replace("$__rate_interval", rate_interval),
                span,
                step,
            )
        ]
        if panel["type"] == "stat":
            ax = fig.add_axes(_box(panel["gridPos"], height, legend_rows=-1))
            _draw_stat(ax, panel, series)
        else:
            legend_rows = _legend_rows(panel, len(series))
            ax = fig.add_axes(_box(panel["gridPos"], height, legend_rows))
            _draw_timeseries(ax, panel, series, span)
    fig.savefig(target, facecolor=fig.get_facecolor())
    plt.close(fig)


def _box(grid: dict[str, int], height: float, legend_rows: int) -> list[float]:
    """The panel's plot area in figure fractions.

    Grafana's grid counts rows from the top, matplotlib from the bottom.
    A stat panel (``legend_rows`` -1) fills its cell with a small margin.
    """
    cell_left = grid["x"] / GRID_COLUMNS * WIDTH_INCHES
    cell_width = grid["w"] / GRID_COLUMNS * WIDTH_INCHES
    cell_top = height - HEADER_INCHES - grid["y"] * ROW_INCHES
    cell_height = grid["h"] * ROW_INCHES

    if legend_rows < 0:
        left, right, top, bottom = 0.12, 0.12, 0.1, 0.1
    else:
        left, right, top = PAD_LEFT, PAD_RIGHT, PAD_TOP
        bottom = PAD_BOTTOM + legend_rows * LEGEND_ROW_INCHES + 0.05
    return [
        (cell_left + left) / WIDTH_INCHES,
        (cell_top - cell_height + bottom) / height,
        (cell_width - left - right) / WIDTH_INCHES,
        (cell_height - top - bottom) / height,
    ]


def _query(
    prometheus: str, expr: str, span: tuple[float, float], step: float
) -> list[Any]:
    answer = requests.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": span[0], "end": span[1], "step": step},
        timeout=30,
    )
    answer.raise_for_status()
    out = []
    for result in answer.json()["data"]["result"]:
        points = [(float(t), float(v)) for t, v in result["values"]]
        out.append((result["metric"], points))
    return sorted(out, key=lambda item: sorted(item[0].items()))


def _legend(template: str, metric: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in metric.items()) or "value"


def _legend_columns(panel: dict[str, Any]) -> int:
    return max(1, panel["gridPos"]["w"] // 3)


def _legend_rows(panel: dict[str, Any], count: int) -> int:
    return max(1, math.ceil(count / _legend_columns(panel)))


def _draw_timeseries(
    ax: Any,
    panel: dict[str, Any],
    series: list[Any],
    span: tuple[float, float],
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    _frame(ax, panel, span)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey",
                transform=ax.transAxes)
        return

    times = sorted({t for _, points in series for t, _ in points})
    when = [dt.datetime.fromtimestamp(t, dt.UTC) for t in times]
    lines = [_values_at(points, times) for _, points in series]
    labels = [label for label, _ in series]
    colours = _colours(labels)
    if stacked:
        filled = [[0.0 if math.isnan(v) else v for v in line] for line in lines]
        ax.stackplot(when, filled, labels=labels, colors=colours, alpha=0.8)
    else:
        for index, (label, line) in enumerate(zip(labels, lines, strict=True)):
            # Past twelve series the colours come round again, dashed.
            style = "-" if index < len(PALETTE) else "--"
            ax.plot(when, line, label=label, linewidth=1.6, color=colours[index],
                    linestyle=style)
    _limits(ax, defaults, lines)
    # Below the tick labels, which take PAD_BOTTOM inches under the plot.
    plot_inches = ax.get_position().height * ax.figure.get_figheight()
    ax.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -PAD_BOTTOM / plot_inches),
        frameon=False,
        ncol=_legend_columns(panel), borderaxespad=0.0, handlelength=1.4,
        columnspacing=1.0,
    )


def _frame(ax: Any, panel: dict[str, Any], span: tuple[float, float]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    ax.set_facecolor("white")
    ax.grid(True, color="#e0e0e0", linewidth=0.6)
    ax.set_xlim(*(dt.datetime.fromtimestamp(t, dt.UTC) for t in span))
    most = max(3, int(panel["gridPos"]["w"] * 0.9))  # HH:MM labels per panel width
    ax.xaxis.set_major_locator(_time_ticks(span, most))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _format(v, unit)))
    ax.tick_params(labelsize=7)


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


def _values_at(points: list[tuple[float, float]], times: list[float]) -> list[float]:
    lookup = dict(points)
    return [lookup.get(at, math.nan) for at in times]


def _time_ticks(span: tuple[float, float], most: int) -> Any:
    minutes = (span[1] - span[0]) / 60
    step = next((m for m in TICK_MINUTES if minutes / m <= most), TICK_MINUTES[-1])
    return mdates.MinuteLocator(byminute=range(0, 60, step) if step < 60 else [0])


def _colours(labels: list[str]) -> list[str]:
    # Meaningful colours first, then the palette's, none twice in a panel
    # (until there are more series than colours).
    chosen: list[str | None] = []
    for label in labels:
        colour = MEANING.get(label)
        chosen.append(colour if colour not in chosen else None)
    spare = iter([c for c in PALETTE if c not in chosen] + list(PALETTE) * 2)
    return [colour or next(spare) for colour in chosen]


def _limits(ax: Any, defaults: dict[str, Any], lines: list[list[float]]) -> None:
    low, high = ax.get_ylim()
    if "min" in defaults:
        low = defaults["min"]
    if "max" in defaults:
        high = max(defaults["max"], high) if high > defaults["max"] else defaults["max"]
    values = [v for line in lines for v in line if not math.isnan(v)]
    if high <= low or (values and max(values) <= low):
        high = low + 1  # an all-zero series sits on the axis, not mid-panel
    ax.set_ylim(low, high)


def _format(value: float, unit: str) -> str:
    """A tick label in the panel's unit, short enough for a narrow panel."""
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "bytes":
        return _scaled(value, 1024, ("B", "KiB", "MiB", "GiB", "TiB"), " ")
    if unit == "s":
        if abs(value) >= 3600:
            return f"{_number(value / 3600)} h"
        if abs(value) >= 120:
            return f"{_number(value / 60)} min"
        return f"{_number(value)} s"
    suffix = "/s" if unit in {"ops", "reqps"} else ""
    return _scaled(value, 1000, ("", "k", "M", "G")) + suffix


def _scaled(value: float, base: int, names: tuple[str, ...], sep: str = "") -> str:
    index = 0
    while abs(value) >= base and index < len(names) - 1:
        value /= base
        index += 1
    return f"{_number(value)}{sep}{names[index]}"


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


if __name__ == "__main__":
    main()
