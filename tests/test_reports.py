"""`switchboard report`: every figure against values worked out by hand, on SQLite and PostgreSQL.

The data set: 12 calls on 2024-05-01 between 10:00 and 13:00 UTC, 7 on dialplan `bank` and 5 on
`survey`, 9 answered, 30 turns. The expected numbers below are literals computed by hand from
the tables in this file, not by the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.cli import main
from app.report.queries import Filters, percentile, top_no_match
from app.store.db import create_schema, open_engine
from app.store.models import Call, Turn
from tests.pg_schema import pg_url, postgres_problem, private_schema

DAY = "2024-05-01"

# call_id, calldate (UTC), dialplan, disposition, outcome, duration, billsec; in calldate order.
CALLS = [
    ("bank-1", "10:05:00", "bank", "ANSWERED", "contained", 60, 58),
    ("bank-2", "10:20:00", "bank", "ANSWERED", "transferred", 90, 88),
    ("survey-1", "10:40:00", "survey", "ANSWERED", "contained", 120, 118),
    ("bank-3", "10:55:00", "bank", "NO ANSWER", "abandoned", 15, 0),  # not counted: unanswered
    ("bank-4", "10:58:00", "bank", "ANSWERED", "abandoned", 30, 28),
    ("survey-2", "11:15:00", "survey", "ANSWERED", "contained", 100, 98),
    ("survey-3", "11:30:00", "survey", "ANSWERED", "failed", 45, 43),
    ("bank-5", "11:45:00", "bank", "BUSY", "rejected", 0, 0),
    ("bank-6", "12:00:00", "bank", "ANSWERED", "contained", 75, 73),
    ("survey-4", "12:10:00", "survey", "ANSWERED", "transferred", 80, 78),
    ("bank-7", "12:30:00", "bank", "ANSWERED", "contained", 50, 48),
    ("survey-5", "12:59:59", "survey", "FAILED", "rejected", 5, 0),
]
PROMPTS = {
    "account": "What is your account number?",
    "confirm": "Is that right?",
    "menu": "Balance or transfer?",
    "q1": "How satisfied were you, from 1 to 5?",
    "q2": "Would you recommend us?",
    "bye": "Thank you, goodbye.",
}
# Per call, its turns in order: (step, result, response_ms).
TURNS = {
    "bank-1": [
        ("account", "no_match", 700),
        ("account", "matched", 640),
        ("confirm", "matched", 810),
    ],
    "bank-2": [
        ("account", "no_match", 600),
        ("account", "matched", 2000),
        ("confirm", "no_match", 760),
        ("confirm", "matched", 690),
    ],
    "bank-4": [("account", "no_input", 830), ("account", "no_match", None)],
    "bank-6": [("account", "matched", 620), ("confirm", "matched", 850), ("menu", "no_match", 730)],
    "bank-7": [("account", "matched", 780), ("menu", "matched", 660)],
    "survey-1": [
        ("q1", "no_match", 610),
        ("q1", "no_match", 860),
        ("q1", "matched", 740),
        ("q2", "no_match", 670),
        ("q2", "matched", 800),
    ],
    "survey-2": [
        ("q1", "matched", 650),
        ("q2", "no_match", 720),
        ("q2", "matched", 840),
        ("bye", None, None),
    ],
    "survey-3": [("q1", "no_input", 680), ("q1", "no_match", 790), ("q2", "matched", 630)],
    "survey-4": [
        ("q1", "matched", 770),
        ("q2", "matched", 710),
        ("q1", "matched", 820),
        ("q2", "matched", 750),
    ],
}
# Other stages: asr_ms 300 unless there was no answer (no_input, or no result): 27 values;
# decide_ms 20 on all 30 turns; tts_ms 100 and playout_ms 20 where response_ms is set: 28.


def at(clock: str, day: str = DAY) -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)


def load(url: str) -> None:
    engine = open_engine(url)
    try:
        create_schema(engine)
        with Session(engine) as session:
            for call_id, clock, plan, disposition, outcome, duration, billsec in reversed(CALLS):
                session.add(
                    Call(
                        call_id=call_id,
                        uniqueid=call_id,
                        calldate=at(clock),
                        src=f"+49305551{call_id[-1]}",
                        dst="1000" if plan == "bank" else "2000",
                        dcontext=plan,
                        dialplan=plan,
                        disposition=disposition,
                        outcome=outcome,
                        duration=float(duration),
                        billsec=float(billsec),
                    )
                )
            session.flush()
            for call_id, turns in TURNS.items():
                for index, (step, result, response) in enumerate(turns):
                    answered = result not in ("no_input", None)
                    session.add(
                        Turn(
                            call_id=call_id,
                            turn_index=index,
                            step=step,
                            prompt=PROMPTS[step],
                            result=result,
                            asr_ms=300.0 if answered else None,
                            decide_ms=20.0,
                            tts_ms=None if response is None else 100.0,
                            playout_ms=None if response is None else 20.0,
                            response_ms=None if response is None else float(response),
                        )
                    )
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    problem = postgres_problem()
    if problem:
        pytest.fail(problem)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database holding the data set."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'calls.db'}"
        load(url)
        yield url
        return
    request.getfixturevalue("postgres_ready")
    with private_schema() as schema:
        url = pg_url(schema)
        load(url)
        yield url


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """Run `switchboard report ... --format json` and return the parsed document."""
    assert main(["report", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- summary -----------------------------------------------------------------------------------


def test_summary_figures(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = report(capsys, "summary", "--db", db)
    assert doc["report"] == "summary"
    assert doc["filters"] == {"from": None, "to": None, "dialplan": None}
    assert doc["summary"] == pytest.approx(
        {
            "calls": 12,
            "answered": 9,
            "answer_rate": 0.75,
            "contained": 5,
            "transferred": 2,
            "abandoned": 1,  # bank-3 was abandoned before answer: not counted
            "failed": 1,
            "containment_rate": 5 / 9,
            "transfer_rate": 2 / 9,
            "abandon_rate": 1 / 9,
            "aht_s": 632 / 9,  # 58+88+118+28+98+43+73+78+48
            "mean_duration_s": 670 / 12,
            "turns_per_answered_call": 30 / 9,
            "turns_with_result": 29,
            "no_match_turns": 10,
            "no_match_rate": 10 / 29,
        }
    )
    assert doc["calls_per_hour"] == [
        {"hour": "2024-05-01T10:00:00Z", "calls": 5},
        {"hour": "2024-05-01T11:00:00Z", "calls": 3},
        {"hour": "2024-05-01T12:00:00Z", "calls": 4},  # 12:00:00 and 12:59:59 both in it
    ]


def test_summary_filtered_by_dialplan(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    summary = report(capsys, "summary", "--db", db, "--dialplan", "bank")["summary"]
    assert summary == pytest.approx(
        {
            "calls": 7,
            "answered": 5,
            "answer_rate": 5 / 7,
            "contained": 3,
            "transferred": 1,
            "abandoned": 1,
            "failed": 0,
            "containment_rate": 0.6,
            "transfer_rate": 0.2,
            "abandon_rate": 0.2,
            "aht_s": 59.0,  # (58+88+28+73+48) / 5
            "mean_duration_s": 320 / 7,  # 60+90+15+30+0+75+50
            "turns_per_answered_call": 2.8,
            "turns_with_result": 14,
            "no_match_turns": 5,
            "no_match_rate": 5 / 14,
        }
    )


def test_from_inclusive_to_exclusive(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = report(capsys, "summary", "--db", db, "--from", f"{DAY}T11:00", "--to", f"{DAY} 12:00")
    assert doc["filters"] == {
        "from": "2024-05-01T11:00:00Z",
        "to": "2024-05-01T12:00:00Z",
        "dialplan": None,
    }
    summary = doc["summary"]  # survey-2, survey-3, bank-5: not bank-4 (10:58), not bank-6 (12:00)
    assert (summary["calls"], summary["answered"], summary["contained"], summary["failed"]) == (
        3,
        2,
        1,
        1,
    )
    assert summary["no_match_rate"] == pytest.approx(2 / 6)
    assert doc["calls_per_hour"] == [{"hour": "2024-05-01T11:00:00Z", "calls": 3}]

    calls = report(capsys, "calls", "--db", db, "--from", f"{DAY}T12:00:00")["calls"]
    assert [c["call_id"] for c in calls] == ["bank-6", "survey-4", "bank-7", "survey-5"]

    whole_day = report(capsys, "summary", "--db", db, "--from", DAY, "--to", "2024-05-02")
    assert whole_day["summary"]["calls"] == 12
    assert whole_day["filters"]["from"] == "2024-05-01T00:00:00Z"
    # a zone is converted: 14:00+02:00 is 12:00 UTC
    later = report(capsys, "summary", "--db", db, "--from", f"{DAY}T14:00:00+02:00")
    assert later["summary"]["calls"] == 4


def test_empty_range_gives_null_rates(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = report(capsys, "summary", "--db", db, "--to", DAY)
    summary = doc["summary"]
    assert summary["calls"] == 0 and summary["answered"] == 0
    for rate in ("answer_rate", "containment_rate", "abandon_rate", "aht_s", "no_match_rate"):
        assert summary[rate] is None
    assert doc["calls_per_hour"] == []

    assert main(["report", "summary", "--db", db, "--to", DAY]) == 0
    table = capsys.readouterr().out
    assert "answer_rate" in table
    assert [line.split()[-1] for line in table.splitlines() if "containment_rate" in line] == ["-"]


# -- latency -----------------------------------------------------------------------------------


def test_latency_per_stage(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    stages = {row["stage"]: row for row in report(capsys, "latency", "--db", db)["stages"]}
    assert list(stages) == ["asr_ms", "decide_ms", "tts_ms", "playout_ms", "response_ms"]
    # response_ms: 600, 610, ..., 860 (27 values) and one 2000; sorted v[0..27]
    assert stages["response_ms"] == pytest.approx(
        {
            "stage": "response_ms",
            "count": 28,
            "mean": 21710 / 28,  # 27 * 730 + 2000
            "p50": 735.0,  # rank 13.5: between 730 and 740
            "p95": 856.5,  # rank 25.65: 850 + 0.65 * 10
            "p99": 1692.2,  # rank 26.73: 860 + 0.73 * 1140
            "max": 2000.0,
        }
    )
    assert {name: row["count"] for name, row in stages.items()} == {
        "asr_ms": 27,
        "decide_ms": 30,
        "tts_ms": 28,
        "playout_ms": 28,
        "response_ms": 28,
    }
    assert stages["decide_ms"]["p99"] == pytest.approx(20.0)


def test_latency_for_one_dialplan(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = report(capsys, "latency", "--db", db, "--dialplan", "bank")["stages"]
    response = next(row for row in rows if row["stage"] == "response_ms")
    # 600 620 640 660 690 700 730 760 780 810 830 850 2000
    assert (response["count"], response["p50"]) == (13, pytest.approx(730.0))
    assert response["p95"] == pytest.approx(1310.0)  # rank 11.4: 850 + 0.4 * 1150
    assert response["p99"] == pytest.approx(1862.0)  # rank 11.88: 850 + 0.88 * 1150


def test_percentile_is_numpy_linear() -> None:
    assert percentile([10.0], 99) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)  # 3 + 0.85 * 1
    with pytest.raises(ValueError):
        percentile([], 50)


# -- outcomes ----------------------------------------------------------------------------------


def test_outcomes_and_top_no_match_prompts(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = report(capsys, "outcomes", "--db", db)
    assert [(r["dialplan"], r["outcome"], r["calls"]) for r in doc["outcomes"]] == [
        ("bank", "contained", 3),
        ("bank", "abandoned", 2),
        ("bank", "rejected", 1),
        ("bank", "transferred", 1),
        ("survey", "contained", 2),
        ("survey", "failed", 1),
        ("survey", "rejected", 1),
        ("survey", "transferred", 1),
    ]
    assert [r["share"] for r in doc["outcomes"]] == pytest.approx(
        [3 / 7, 2 / 7, 1 / 7, 1 / 7, 0.4, 0.2, 0.2, 0.2]
    )
    assert doc["top_no_match_prompts"] == [
        {"dialplan": "bank", "step": "account", "prompt": PROMPTS["account"], "no_match": 3},
        {"dialplan": "survey", "step": "q1", "prompt": PROMPTS["q1"], "no_match": 3},
        {"dialplan": "survey", "step": "q2", "prompt": PROMPTS["q2"], "no_match": 2},
        {"dialplan": "bank", "step": "confirm", "prompt": PROMPTS["confirm"], "no_match": 1},
        {"dialplan": "bank", "step": "menu", "prompt": PROMPTS["menu"], "no_match": 1},
    ]
    engine = open_engine(db)
    try:
        top = top_no_match(engine, Filters(dialplan="survey"), limit=1)
    finally:
        engine.dispose()
    assert [(row.step, row.no_match) for row in top] == [("q1", 3)]


# -- calls -------------------------------------------------------------------------------------


def test_calls_in_calldate_order_with_turns(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    calls = report(capsys, "calls", "--db", db)["calls"]
    assert [c["call_id"] for c in calls] == [row[0] for row in CALLS]
    assert [c["turns"] for c in calls] == [3, 4, 5, 0, 2, 4, 3, 0, 3, 4, 2, 0]
    assert calls[0] == {
        "calldate": "2024-05-01T10:05:00Z",
        "call_id": "bank-1",
        "src": "+493055511",
        "dst": "1000",
        "dialplan": "bank",
        "duration": 60.0,
        "billsec": 58.0,
        "disposition": "ANSWERED",
        "outcome": "contained",
        "turns": 3,
    }
    survey = report(capsys, "calls", "--db", db, "--dialplan", "survey")["calls"]
    assert [c["call_id"] for c in survey] == [f"survey-{n}" for n in range(1, 6)]


# -- formats -----------------------------------------------------------------------------------


def test_csv_shapes(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "summary", "--db", db, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2
    summary = dict(zip(rows[0], rows[1], strict=True))
    assert (summary["calls"], summary["answered"], summary["answer_rate"]) == ("12", "9", "0.75")
    assert rows[0][:3] == ["calls", "answered", "answer_rate"]

    assert main(["report", "calls", "--db", db, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "calldate",
        "call_id",
        "src",
        "dst",
        "dialplan",
        "duration",
        "billsec",
        "disposition",
        "outcome",
        "turns",
    ]
    assert len(rows) == 13
    assert rows[1][:2] == ["2024-05-01T10:05:00Z", "bank-1"]

    # outcomes: two tables, the breakdown then the prompts, separated by an empty line
    assert main(["report", "outcomes", "--db", db, "--format", "csv"]) == 0
    first, second = capsys.readouterr().out.split("\n\n")
    assert first.splitlines()[0] == "dialplan,outcome,calls,share"
    assert len(first.splitlines()) == 9
    assert second.splitlines()[:2] == [
        "dialplan,step,prompt,no_match",
        "bank,account,What is your account number?,3",
    ]


def test_table_output(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "latency", "--db", db]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("response_ms"))
    assert line.split() == ["response_ms", "28", "775.4", "735.0", "856.5", "1692.2", "2000.0"]

    assert main(["report", "summary", "--db", db]) == 0
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if "answer_rate" in line] == ["75.0%"]


def test_html_report(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "report.html"
    assert main(["report", "calls", "--db", db, "--format", "json", "--html", str(target)]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["calls"]) == 12  # the subcommand's output as usual
    assert str(target) in captured.err
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for title in ("<h2>Summary</h2>", "<h2>Latency</h2>", "<h2>Outcomes</h2>", "<h2>Calls</h2>"):
        assert title in page
    assert page.count("<svg") == 3  # calls per hour, latency per stage, outcomes
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<?xml" not in page  # the SVG prolog does not belong inside HTML
    assert "Top no-match prompts" in page and "survey-5" in page


def test_html_of_an_empty_range(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "empty.html"
    assert main(["report", "summary", "--db", db, "--to", DAY, "--html", str(target)]) == 0
    page = target.read_text(encoding="utf-8")
    assert "<svg" not in page and "no calls" in page and "<h2>Latency</h2>" in page


# -- configuration and errors ------------------------------------------------------------------


def test_database_from_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWITCHBOARD_STORE__URL", raising=False)
    load(f"sqlite:///{tmp_path / 'var' / 'records.db'}")
    config = tmp_path / "switchboard.toml"
    config.write_text('[store]\nurl = "sqlite:///var/records.db"\n')  # relative to the file
    doc = report(capsys, "summary", "--config", str(config), "--dialplan", "survey")
    assert doc["summary"]["calls"] == 5


def test_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/test"
    assert main(["report", "summary", "--db", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "switchboard: cannot read call records from postgresql+psycopg://postgres:***@127.0.0.1:1/test"
    )
    assert "refused" in captured.err and "secret" not in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_database_without_schema_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert main(["report", "latency", "--db", f"sqlite:///{empty}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("switchboard: no call-record schema in sqlite:///")
    assert "missing table calls, turns" in err

    missing = tmp_path / "nowhere" / "calls.db"
    assert main(["report", "calls", "--db", f"sqlite:///{missing}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()  # a report never creates a database


def test_postgres_schema_without_tables_exits_1(
    postgres_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with private_schema() as schema:
        assert main(["report", "outcomes", "--db", pg_url(schema)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("switchboard: no call-record schema in postgresql+psycopg://")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "yesterday"],
        ["--to", "2024-13-01"],
        ["--format", "xml"],
        ["--db", "mysql://localhost/calls"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "summary", *args])
    assert exit_info.value.code == 2
    assert "switchboard report summary: error:" in capsys.readouterr().err


def test_from_after_to_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "summary", "--from", "2024-05-02", "--to", "2024-05-01"]) == 2
    assert "--from must be before --to" in capsys.readouterr().err
