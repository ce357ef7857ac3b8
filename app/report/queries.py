"""The figures of `switchboard report`, read from the call records with portable SQL.

Every query is a SQLAlchemy Core select that runs unchanged on SQLite and PostgreSQL: plain
counts, sums and averages in SQL; percentiles, hour buckets and NULL-aware ordering in Python,
because those differ between the two dialects (percentile_cont, date_trunc, NULLS FIRST/LAST).

Definitions (the README's "Reports" section says the same):

- The calls of a report are the `calls` rows with `from <= calldate < to` (either bound
  optional) and, with a dialplan given, `calls.dialplan = NAME`; the turns are those calls' turns.
- summary: `calls`; `answered` (disposition 'ANSWERED'); `answer_rate` = answered / calls.
  Over answered calls: `contained`, `transferred`, `abandoned`, `failed` (by `outcome`) and
  `containment_rate`, `transfer_rate`, `abandon_rate` (each / answered); `aht_s`: mean billsec of
  answered calls; `mean_duration_s`: mean duration of all calls; `turns_per_answered_call`: turns
  of answered calls / answered; `no_match_rate`: turns with result 'no_match' / turns with a
  result. A rate or mean whose denominator is 0 is None.
- latency: per stage (asr_ms, decide_ms, tts_ms, playout_ms, response_ms) the count of non-null
  values, mean, p50, p95, p99 (linear interpolation between closest ranks, numpy.percentile's
  default) and max.
- outcomes: calls per (dialplan, outcome) with their share of the dialplan's calls; the top 10
  no-match prompts: turns with result 'no_match' per (dialplan, step, prompt), most first, ties
  by step, then dialplan and prompt.
- calls: one row per call ordered by calldate (then call_id), with its number of turns.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import fmean
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, case, func, select, true

from app.store.models import Call, Turn

STAGES = ("asr_ms", "decide_ms", "tts_ms", "playout_ms", "response_ms")
TOP_NO_MATCH = 10
_OUTCOMES = ("contained", "transferred", "abandoned", "failed")  # counted over answered calls
_ANSWERED = Call.disposition == "ANSWERED"


@dataclass(frozen=True)
class Filters:
    """Which calls a report covers: `start` inclusive, `end` exclusive (UTC), one dialplan."""

    start: datetime | None = None
    end: datetime | None = None
    dialplan: str | None = None

    def where(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = [true()]
        if self.start is not None:
            conditions.append(Call.calldate >= self.start)
        if self.end is not None:
            conditions.append(Call.calldate < self.end)
        if self.dialplan is not None:
            conditions.append(Call.dialplan == self.dialplan)
        return and_(*conditions)


@dataclass(frozen=True)
class Summary:
    calls: int
    answered: int
    answer_rate: float | None
    contained: int
    transferred: int
    abandoned: int
    failed: int
    containment_rate: float | None
    transfer_rate: float | None
    abandon_rate: float | None
    aht_s: float | None
    mean_duration_s: float | None
    turns_per_answered_call: float | None
    turns_with_result: int
    no_match_turns: int
    no_match_rate: float | None


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # the start of the hour, UTC
    calls: int


@dataclass(frozen=True)
class StageLatency:
    stage: str
    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class OutcomeCount:
    dialplan: str | None
    outcome: str | None
    calls: int
    share: float  # of the dialplan's calls in the report


@dataclass(frozen=True)
class NoMatchPrompt:
    dialplan: str | None
    step: str | None
    prompt: str | None
    no_match: int


@dataclass(frozen=True)
class CallRow:
    calldate: datetime | None
    call_id: str
    src: str | None
    dst: str | None
    dialplan: str | None
    duration: float | None
    billsec: float | None
    disposition: str | None
    outcome: str | None
    turns: int


@dataclass(frozen=True)
class Report:
    """Every section for one set of filters: what `--html` writes."""

    filters: Filters
    summary: Summary
    per_hour: list[HourCount]
    stage_values: dict[str, list[float]]
    latency: list[StageLatency]
    outcomes: list[OutcomeCount]
    top_no_match: list[NoMatchPrompt]
    calls: list[CallRow]


def full_report(engine: Engine, filters: Filters) -> Report:
    """All sections; the latency values are read once for both the figures and the plot."""
    values = stage_values(engine, filters)
    return Report(
        filters=filters,
        summary=summary(engine, filters),
        per_hour=calls_per_hour(engine, filters),
        stage_values=values,
        latency=latency(values),
        outcomes=outcomes(engine, filters),
        top_no_match=top_no_match(engine, filters),
        calls=calls(engine, filters),
    )


def summary(engine: Engine, filters: Filters) -> Summary:
    """The headline figures: volumes, answer and containment rates, handling time, no-matches."""
    answered_outcome = [_count_if(_ANSWERED & (Call.outcome == name)) for name in _OUTCOMES]
    calls_query = select(
        func.count(),
        _count_if(_ANSWERED),
        *answered_outcome,
        func.avg(case((_ANSWERED, Call.billsec))),
        func.avg(Call.duration),
    ).where(filters.where())
    turns_query = (
        select(
            _count_if(_ANSWERED),
            func.count(Turn.result),
            _count_if(Turn.result == "no_match"),
        )
        .select_from(Turn)
        .join(Call, Turn.call_id == Call.call_id)
        .where(filters.where())
    )
    with engine.connect() as conn:
        calls, answered, contained, transferred, abandoned, failed, aht, mean_duration = (
            conn.execute(calls_query).one()
        )
        answered_turns, with_result, no_match = conn.execute(turns_query).one()
    return Summary(
        calls=calls,
        answered=answered,
        answer_rate=_ratio(answered, calls),
        contained=contained,
        transferred=transferred,
        abandoned=abandoned,
        failed=failed,
        containment_rate=_ratio(contained, answered),
        transfer_rate=_ratio(transferred, answered),
        abandon_rate=_ratio(abandoned, answered),
        aht_s=_float(aht),
        mean_duration_s=_float(mean_duration),
        turns_per_answered_call=_ratio(answered_turns, answered),
        turns_with_result=with_result,
        no_match_turns=no_match,
        no_match_rate=_ratio(no_match, with_result),
    )


def calls_per_hour(engine: Engine, filters: Filters) -> list[HourCount]:
    """Calls per UTC hour from the first call's hour to the last's, empty hours included."""
    with engine.connect() as conn:
        dates = conn.scalars(
            select(Call.calldate).where(filters.where(), Call.calldate.is_not(None))
        ).all()
    counts = Counter(_hour(date) for date in dates)
    if not counts:
        return []
    hour, last, buckets = min(counts), max(counts), []
    while hour <= last:
        buckets.append(HourCount(hour, counts.get(hour, 0)))
        hour += timedelta(hours=1)
    return buckets


def stage_values(engine: Engine, filters: Filters) -> dict[str, list[float]]:
    """The non-null values of each latency stage, sorted (for the figures and the plots)."""
    query = (
        select(*(getattr(Turn, stage) for stage in STAGES))
        .join(Call, Turn.call_id == Call.call_id)
        .where(filters.where())
    )
    values: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with engine.connect() as conn:
        for row in conn.execute(query):
            for stage, value in zip(STAGES, row, strict=True):
                if value is not None:
                    values[stage].append(float(value))
    return {stage: sorted(found) for stage, found in values.items()}


def latency(values: dict[str, list[float]]) -> list[StageLatency]:
    """One row per stage from `stage_values`; figures are None for a stage with no values."""
    rows = []
    for stage in STAGES:
        found = values.get(stage, [])
        if not found:
            rows.append(StageLatency(stage, 0, None, None, None, None, None))
            continue
        rows.append(
            StageLatency(
                stage=stage,
                count=len(found),
                mean=fmean(found),
                p50=percentile(found, 50),
                p95=percentile(found, 95),
                p99=percentile(found, 99),
                max=found[-1],
            )
        )
    return rows


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values, interpolating linearly between the two closest
    ranks: numpy.percentile(values, p) with its default method, without numpy arrays."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def outcomes(engine: Engine, filters: Filters) -> list[OutcomeCount]:
    """Calls per (dialplan, outcome), each with its share of the dialplan's calls."""
    query = (
        select(Call.dialplan, Call.outcome, func.count())
        .where(filters.where())
        .group_by(Call.dialplan, Call.outcome)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    totals: Counter[str | None] = Counter()
    for dialplan, _outcome, count in rows:
        totals[dialplan] += count
    ordered = sorted(rows, key=lambda r: (_text_key(r[0]), -r[2], _text_key(r[1])))
    return [
        OutcomeCount(dialplan, outcome, count, count / totals[dialplan])
        for dialplan, outcome, count in ordered
    ]


def top_no_match(
    engine: Engine, filters: Filters, limit: int = TOP_NO_MATCH
) -> list[NoMatchPrompt]:
    """The prompts callers most often answered with something the dialogue did not understand."""
    query = (
        select(Call.dialplan, Turn.step, Turn.prompt, func.count())
        .join(Call, Turn.call_id == Call.call_id)
        .where(filters.where(), Turn.result == "no_match")
        .group_by(Call.dialplan, Turn.step, Turn.prompt)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    ordered = sorted(rows, key=lambda r: (-r[3], _text_key(r[1]), _text_key(r[0]), _text_key(r[2])))
    return [NoMatchPrompt(*row) for row in ordered[:limit]]


def calls(engine: Engine, filters: Filters) -> list[CallRow]:
    """Every call of the report in calldate order, with its number of turns."""
    turn_counts = (
        select(Turn.call_id, func.count().label("turns")).group_by(Turn.call_id).subquery()
    )
    query = (
        select(
            Call.calldate,
            Call.call_id,
            Call.src,
            Call.dst,
            Call.dialplan,
            Call.duration,
            Call.billsec,
            Call.disposition,
            Call.outcome,
            func.coalesce(turn_counts.c.turns, 0),
        )
        .outerjoin(turn_counts, turn_counts.c.call_id == Call.call_id)
        .where(filters.where())
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    rows.sort(key=lambda r: (r[0] is None, r[0] or datetime.min, r[1]))  # no calldate: last
    return [CallRow(*row) for row in rows]


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _text_key(value: str | None) -> tuple[bool, str]:
    """Sort key putting None last on every backend (SQL NULL ordering differs)."""
    return (value is None, value or "")
