"""The regression gate: a run compared with a saved result, cohort by cohort.

A cohort fails the gate when its WER rose by more than `max_regression` percentage points over
the baseline's, for the same engine, grammar and channel, and both runs scored at least
`min_clips` clips in it (a cohort of 5 clips moves 20 points on one error: gating on it would
fail CI on noise). Comparing runs on different data is refused: the manifests' content hashes
must agree, or the figures mean nothing side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MIN_CLIPS = 30


class BaselineError(ValueError):
    """The baseline cannot be compared with this run (other data, not a result file)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    engine: str
    grammar: str
    channel: str
    cohort: str
    clips: int
    baseline_wer: float
    wer: float

    @property
    def change_points(self) -> float:
        return 100 * (self.wer - self.baseline_wer)

    def describe(self) -> str:
        return (
            f"{self.engine}/{self.grammar} {self.channel} {self.cohort} ({self.clips} clips): "
            f"WER {100 * self.baseline_wer:.2f}% -> {100 * self.wer:.2f}% "
            f"({self.change_points:+.2f} points)"
        )


@dataclass(frozen=True, slots=True)
class GateReport:
    compared: list[Comparison]
    regressions: list[Comparison]
    missing: list[str]
    """Baseline rows this run has no figure for (an engine or cohort dropped)."""

    @property
    def passed(self) -> bool:
        return not self.regressions


def compare(
    result: dict[str, Any],
    baseline: dict[str, Any],
    max_regression: float,
    min_clips: int = DEFAULT_MIN_CLIPS,
) -> GateReport:
    """`result` against `baseline` (both result dicts as written with --json)."""
    try:
        theirs = baseline["meta"]["manifest"]["content_sha256"]
        rows = baseline["scores"]
    except (KeyError, TypeError):
        raise BaselineError("the baseline is not a `switchboard eval asr --json` result") from None
    ours = result["meta"]["manifest"]["content_sha256"]
    if theirs != ours:
        raise BaselineError(
            f"the baseline was measured on other data (content sha256 {theirs[:12]}, this run "
            f"{ours[:12]}): compare runs of the same manifest"
        )
    if result["meta"]["plan"].get("sample") != baseline["meta"]["plan"].get("sample"):
        raise BaselineError("the baseline used another --sample: compare runs on the same clips")
    current = {_key(row): row for row in result["scores"]}
    compared, regressions, missing = [], [], []
    for row in rows:
        key = _key(row)
        mine = current.get(key)
        if mine is None:
            missing.append(" ".join(key))
            continue
        if row["wer"]["value"] is None or mine["wer"]["value"] is None:
            continue
        if min(row["clips"], mine["clips"]) < min_clips:
            continue
        item = Comparison(*key, mine["clips"], row["wer"]["value"], mine["wer"]["value"])
        compared.append(item)
        if item.change_points > max_regression + 1e-9:
            regressions.append(item)
    return GateReport(compared, regressions, missing)


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (row["engine"], row["grammar"], row["channel"], row["cohort"])
