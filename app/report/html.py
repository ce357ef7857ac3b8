"""The full report as one self-contained HTML file: tables plus plots as inline SVG.

One file that can be mailed or archived and opened anywhere: no scripts, no stylesheets or
images fetched from elsewhere. Plots are drawn by matplotlib's object API (no pyplot, so no GUI
backend or global figure state) and embedded as SVG text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from app.report.queries import STAGES, Report
from app.report.render import Grid, format_value, grids, report_sections

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SECTION_TITLES = {
    "summary": "Summary",
    "latency": "Latency",
    "outcomes": "Outcomes",
    "calls": "Calls",
}

OUTCOME_COLOURS = {  # the same colour for an outcome in every report
    "contained": "#55a868",
    "transferred": "#4c72b0",
    "abandoned": "#dd8452",
    "failed": "#c44e52",
    "rejected": "#8c8c8c",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
figure { margin: 0.5em 0; } .empty { color: #888; }
"""


def write_html(report: Report, path: Path) -> None:
    """Write the report to `path` (parent folders must exist)."""
    path.write_text(render_html(report), encoding="utf-8")


def render_html(report: Report) -> str:
    sections = report_sections(report)
    plots = {
        "summary": _per_hour_plot(report),
        "latency": _latency_plot(report),
        "outcomes": _outcome_plot(report),
        "calls": "",
    }
    body = [f"<h1>Switchboard call report</h1>\n<p>{escape(_describe(report))}</p>"]
    for name, title in SECTION_TITLES.items():
        tables = "\n".join(_table(grid) for grid in grids(sections[name]))
        body.append(f'<section id="{name}">\n<h2>{title}</h2>\n{plots[name]}\n{tables}\n</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Switchboard call report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _describe(report: Report) -> str:
    filters = report.filters
    bounds = []
    if filters.start is not None:
        bounds.append(f"from {format_value('from', filters.start)}")
    if filters.end is not None:
        bounds.append(f"before {format_value('to', filters.end)}")
    plan = f"dialplan {filters.dialplan}" if filters.dialplan else "all dialplans"
    made = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    span = " ".join(bounds) or "at any time"
    return f"Calls {span} (by calldate, UTC), {plan}. Generated {made}."


def _table(grid: Grid) -> str:
    """An HTML table; each cell is kept with its column name, which decides its format."""
    columns = grid.columns
    rows = [list(zip(grid.columns, row, strict=True)) for row in grid.rows]
    if grid.key == "summary":  # one row of many figures reads better standing up
        columns = ("figure", "value")
        rows = [[("figure", name), (name, value)] for name, value in rows[0]]
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    lines = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if isinstance(value, int | float) else ''}>"
            f"{escape(format_value(column, value))}</td>"
            for column, value in row
        )
        lines.append(f"<tr>{cells}</tr>")
    if not lines:
        lines.append(f'<tr><td class="empty" colspan="{len(columns)}">no rows</td></tr>')
    return (
        f"<table><caption>{escape(grid.title)}</caption>\n<thead><tr>{head}</tr></thead>\n"
        "<tbody>\n" + "\n".join(lines) + "\n</tbody></table>"
    )


def _per_hour_plot(report: Report) -> str:
    if not report.per_hour:
        return _empty("no calls")
    figure = new_figure(max(4.0, min(12.0, 0.4 * len(report.per_hour))), 2.6)
    axes = figure.subplots()
    labels = [bucket.hour.strftime("%m-%d %H:00") for bucket in report.per_hour]
    axes.bar(range(len(labels)), [bucket.calls for bucket in report.per_hour], color="#4c72b0")
    step = max(1, len(labels) // 12)  # at most a dozen labels stay readable
    axes.set_xticks(range(0, len(labels), step), labels[::step], rotation=45, ha="right")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel("calls")
    axes.set_title("Calls per hour (UTC)")
    return inline_svg(figure, "hour")


def _latency_plot(report: Report) -> str:
    stages = [stage for stage in STAGES if report.stage_values.get(stage)]
    if not stages:
        return _empty("no latency values")
    figure = new_figure(7.0, 0.5 + 0.5 * len(stages))
    axes = figure.subplots()
    axes.boxplot(
        [report.stage_values[stage] for stage in stages],
        orientation="horizontal",
        whis=(1, 99),  # whiskers at p1/p99, beyond them each turn is a dot
        tick_labels=stages,
    )
    axes.invert_yaxis()  # pipeline order top to bottom
    axes.set_xlabel("ms")
    axes.set_title("Latency distribution per stage")
    return inline_svg(figure, "latency")


def _outcome_plot(report: Report) -> str:
    if not report.outcomes:
        return _empty("no calls")
    plans = _unique(row.dialplan or "-" for row in report.outcomes)
    found = _unique(row.outcome or "none" for row in report.outcomes)
    kinds = [kind for kind in OUTCOME_COLOURS if kind in found]
    kinds += [kind for kind in found if kind not in OUTCOME_COLOURS]
    share = {(row.dialplan or "-", row.outcome or "none"): row.share for row in report.outcomes}
    figure = new_figure(7.0, 0.8 + 0.45 * len(plans))
    axes = figure.subplots()
    left = [0.0] * len(plans)
    for kind in kinds:
        widths = [100 * share.get((plan, kind), 0.0) for plan in plans]
        axes.barh(plans, widths, left=left, label=kind, color=OUTCOME_COLOURS.get(kind, "#cccccc"))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("% of the dialplan's calls")
    axes.set_title("Outcomes per dialplan")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return inline_svg(figure, "outcomes")


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


_SVG_METADATA = ("Creator", "Date", "Format", "Type")  # None each: no RDF block in the page


def inline_svg(figure: Figure, prefix: str) -> str:
    """The figure as an inline <svg> element, its ids prefixed so plots cannot clash."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text: small and searchable
        figure.savefig(buffer, format="svg", metadata=dict.fromkeys(_SVG_METADATA))
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype, invalid inside HTML
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    svg = re.sub(r"url\(#", f"url(#{prefix}-", svg)
    svg = re.sub(r'href="#', f'href="#{prefix}-', svg)
    return f"<figure>{svg}</figure>"


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
