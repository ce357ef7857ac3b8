"""Results of `switchboard eval asr` as terminal tables, JSON and a self-contained HTML page.

Tables: one per channel, a row per cohort (clip count first, so a figure on 12 clips is not
read like one on 500), for each engine/grammar the WER with its 95% interval, CER and entity
accuracy; then a speed table. The HTML page holds the same tables, the run's provenance, and
plots: WER by cohort per engine (error bars: the intervals) and latency distributions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from app.eval.asr import Result
from app.report.html import STYLE, inline_svg, new_figure


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _interval(estimate: dict[str, float | None]) -> str:
    low, high = estimate.get("low"), estimate.get("high")
    if low is None or high is None:
        return ""
    return f"[{_pct(low)}-{_pct(high)}]"


def variants(result: Result) -> list[str]:
    """The engine/grammar columns, in plan order."""
    return list(dict.fromkeys(_variant(s) for s in result.scores))


def channels(result: Result) -> list[str]:
    return list(dict.fromkeys(s["channel"] for s in result.scores))


def _grid(result: Result, channel: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one channel's accuracy table."""
    names = variants(result)
    header = ["cohort", "clips"]
    for name in names:
        header += [f"{name} WER % [95% CI]", "CER %", "entity %"]
    rows: dict[str, list[str]] = {}
    for s in result.scores:
        if s["channel"] != channel:
            continue
        row = rows.setdefault(s["cohort"], [s["cohort"], str(s["clips"])] + [""] * 3 * len(names))
        at = 2 + 3 * names.index(_variant(s))
        row[at] = f"{_pct(s['wer']['value'])} {_interval(s['wer'])}".strip()
        row[at + 1] = _pct(s["cer"]["value"])
        row[at + 2] = _pct(s["entity_accuracy"]["value"]) if s["entity_clips"] else "-"
    return header, list(rows.values())


def _speed_grid(result: Result) -> tuple[list[str], list[list[str]]]:
    header = ["engine/grammar", "channel", "clips", "latency p50 ms", "p95 ms", "RTF", "errors"]
    rows = [
        [
            _variant(s),
            s["channel"],
            str(s["recognitions"]),
            _ms(s["latency_p50_ms"]),
            _ms(s["latency_p95_ms"]),
            "-" if s["rtf"] is None else f"{s['rtf']:.3f}",
            str(s["errors"]),
        ]
        for s in result.speed
    ]
    return header, rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_tables(result: Result, console: Console) -> None:
    meta = result.meta
    manifest = meta["manifest"]
    console.print(
        f"[bold]{manifest['path']}[/]: {manifest['clips']} clips, "
        f"{manifest['audio_s']:.0f} s of audio, content sha256 {manifest['content_sha256'][:12]}"
    )
    for channel in channels(result):
        header, rows = _grid(result, channel)
        table = Table(title=f"Channel: {channel}", title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    header, rows = _speed_grid(result)
    table = Table(title="Speed (latency: last frame fed -> final result)", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_markdown(result: Result, out: TextIO) -> None:
    """The same tables as Markdown (for a pull request or a closing note)."""
    for channel in channels(result):
        header, rows = _grid(result, channel)
        out.write(f"\n**{channel}**\n\n")
        _markdown_table(header, rows, out)
    out.write("\n**Speed**\n\n")
    _markdown_table(*_speed_grid(result), out)


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    out.write("| " + " | ".join(header) + " |\n")
    out.write("|" + "|".join("---" for _ in header) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(row) + " |\n")


def write_json(result: Result, path: Path) -> None:
    path.write_text(json.dumps(result.as_dict(), indent=1) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# -- HTML ---------------------------------------------------------------------------------


def write_html(result: Result, path: Path) -> None:
    path.write_text(render_html(result))


def render_html(result: Result) -> str:
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>Switchboard ASR evaluation</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        "<h1>ASR evaluation</h1>\n",
        _provenance(result),
    ]
    for index, channel in enumerate(channels(result)):
        parts.append(f"<h2>Channel: {escape(channel)}</h2>\n")
        parts.append(_wer_plot(result, channel, f"wer{index}"))
        parts.append(_html_table(*_grid(result, channel)))
    parts.append("<h2>Speed</h2>\n")
    parts.append(_latency_plot(result))
    parts.append(_html_table(*_speed_grid(result)))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _provenance(result: Result) -> str:
    meta = result.meta
    manifest = meta["manifest"]
    engines = "".join(
        f"<li>{escape(name)}: {escape(str(info['package']))} {escape(str(info['version']))}, "
        f"model {escape(str(info['model']))}</li>"
        for name, info in meta["engines"].items()
    )
    return (
        f"<p>{escape(manifest['path'])}: {manifest['clips']} clips, "
        f"{manifest['audio_s']:.0f} s of audio; content sha256 "
        f"<code>{escape(manifest['content_sha256'])}</code>. Created {escape(meta['created'])} "
        f"by switchboard {escape(meta['switchboard'])}.</p>\n<ul>{engines}</ul>\n"
        "<p>WER and CER after normalisation (case, punctuation, numbers as digits); entity: "
        "the digit string matches exactly. Brackets: 95% bootstrap intervals.</p>\n"
    )


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i else ''}>{escape(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _wer_plot(result: Result, channel: str, prefix: str) -> str:
    names = variants(result)
    scores = [s for s in result.scores if s["channel"] == channel]
    cohorts = list(dict.fromkeys(s["cohort"] for s in scores))
    figure = new_figure(max(5.0, min(14.0, 0.9 * len(cohorts) * max(1, len(names)))), 3.0)
    axes = figure.subplots()
    width = 0.8 / max(1, len(names))
    for v, name in enumerate(names):
        xs, values, below, above = [], [], [], []
        for c, cohort in enumerate(cohorts):
            match = [s for s in scores if s["cohort"] == cohort and _variant(s) == name]
            if not match or match[0]["wer"]["value"] is None:
                continue
            wer = match[0]["wer"]
            xs.append(c + (v - (len(names) - 1) / 2) * width)
            values.append(100 * wer["value"])
            below.append(100 * (wer["value"] - wer["low"]))
            above.append(100 * (wer["high"] - wer["value"]))
        axes.bar(xs, values, width, yerr=[below, above], capsize=2, label=name)
    axes.set_xticks(range(len(cohorts)), cohorts, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel("WER %")
    axes.set_title(f"WER by cohort, {channel}")
    axes.legend(fontsize="small", frameon=False)
    return inline_svg(figure, prefix)


def _latency_plot(result: Result) -> str:
    groups: dict[str, list[float]] = {}
    for clip in result.clips:
        if clip["error"] is None:
            key = f"{clip['engine']}/{clip['grammar']}\n{clip['channel']}"
            groups.setdefault(key, []).append(clip["latency_ms"])
    figure = new_figure(7.0, 0.6 + 0.45 * max(1, len(groups)))
    axes = figure.subplots()
    if groups:
        axes.boxplot(list(groups.values()), orientation="horizontal", showfliers=True, whis=(5, 95))
        axes.set_yticks(range(1, len(groups) + 1), list(groups), fontsize="small")
    axes.set_xlabel("recognition latency, ms (whiskers: p5-p95)")
    axes.set_title("Latency distributions")
    return inline_svg(figure, "latency")


def _variant(score: dict[str, Any]) -> str:
    return f"{score['engine']}/{score['grammar']}"
