"""The call-record write path: what it sustains, and what it costs the call that records.

Side by side in one run:

  sustained   records per second from `on_call_event` to committed rows, through the spool
              (fsync'd) and the database writer, on PostgreSQL and on SQLite: a burst of
              synthetic calls (start, dialogue, 4 turns, 2 variables, 2 events, end: 11
              records each) queued as fast as possible, timed until `flush()` returns
  call side   the time `on_call_event` takes on the publishing (call) thread, p50/p99/max, with
              calls spread over time (one event every 2 ms): a bare `queue.put_nowait`
              (baseline), the recorder with PostgreSQL up, and the recorder with PostgreSQL
              unreachable (a closed port: every record goes to the spool only). The ratio to the
              baseline is the extra delay a record write adds to a call's thread.

    .venv/bin/python bench/store_write.py
    .venv/bin/python bench/store_write.py --calls 2000 --pg postgresql+psycopg://postgres@127.0.0.1/test

PostgreSQL: `--pg URL` (default: the test server of scripts/test-services); each run uses a
private schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from app.call.events import (  # noqa: E402
    CallEnded,
    CallEvent,
    CallStarted,
    DialogStarted,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.store.recorder import CallRecorder  # noqa: E402
from tests.tcp_proxy import ToggleProxy  # noqa: E402

DEFAULT_PG = os.environ.get(
    "SWITCHBOARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def call_events(call_id: str, t0: float) -> list[CallEvent]:
    """One call's records: 11 events, 4 of them turns."""
    events: list[CallEvent] = [
        CallStarted(call_id, '"Bench" <sip:1001@pbx>', "sip:1000@sb", "1000", "bank", "PCMU",
                    t0, t0 + 0.1, "192.0.2.1:5060"),
        DialogStarted(call_id, "bank", "ab" * 32, t0 + 0.1),
    ]  # fmt: skip
    for i in range(4):
        at = t0 + 5 * (i + 1)
        events.append(
            TurnCompleted(call_id, i, f"step{i}", "What is your account number?",
                          "one two three four", 0.9, "pocketsphinx", "digits",
                          at, at + 0.2, at + 0.5, at + 0.3, at + 0.4, result="matched")
        )  # fmt: skip
    events += [
        VariableSet(call_id, "step1", "account", "1234", t0 + 6),
        VariableSet(call_id, "step2", "pin", "[redacted]", t0 + 11),
        StepResult(call_id, "lookup", "webhook", True, "", t0 + 12),
        StepResult(call_id, "step3", "dtmf", True, "4", t0 + 16),
        CallEnded(call_id, t0 + 30, "ANSWERED", "200 OK", "bot"),
    ]
    return events


def sustained(url: str, calls: int, spool: Path) -> tuple[float, int]:
    """(records per second, records) from queueing to committed rows."""
    recorder = CallRecorder(url, "bench", spool_dir=spool, queue_size=calls * 11 + 10)
    recorder.start()
    warm = call_events(f"warm-{uuid.uuid4().hex}", time.time())
    for event in warm:  # schema made and connections open before timing
        recorder.on_call_event(event)
    assert recorder.flush(60)
    events = [e for n in range(calls) for e in call_events(f"c{n}-{uuid.uuid4().hex}", 1.7e9)]
    start = time.perf_counter()
    for event in events:
        recorder.on_call_event(event)
    if not recorder.flush(600):
        raise SystemExit(f"not flushed: {recorder.pending} pending")
    elapsed = time.perf_counter() - start
    recorder.close()
    return len(events) / elapsed, len(events)


def call_side(publish: Callable[[CallEvent], None], events: list[CallEvent]) -> list[float]:
    """Microseconds per `publish`, one event every 2 ms."""
    times = []
    for event in events:
        t = time.perf_counter()
        publish(event)
        times.append((time.perf_counter() - t) * 1e6)
        time.sleep(0.002)
    return times


def summary(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls in the sustained burst")
    parser.add_argument("--events", type=int, default=1500, help="events per call-side run")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL")
    args = parser.parse_args()

    base = make_url(args.pg)
    schema = f"sb_bench_{uuid.uuid4().hex[:10]}"
    plain = base.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def pg(port: int | None = None) -> str:
        url = base.set(query={"options": f"-csearch_path={schema}", "connect_timeout": "2"})
        if port is not None:
            url = url.set(host="127.0.0.1", port=port)
        return url.render_as_string(hide_password=False)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            print(f"sustained write, {args.calls} calls x 11 records, spool fsync'd per batch:")
            for name, url in (("postgresql", pg()), ("sqlite", f"sqlite:///{work}/bench.db")):
                rate, count = sustained(url, args.calls, work / f"spool-{name}")
                print(f"  {name:<11} {count} records in {count / rate:6.2f} s: {rate:8.0f} rec/s")

            print(f"\ncall side, {args.events} events, one every 2 ms (microseconds):")
            events = [e for n in range(args.events // 11 + 1) for e in call_events(f"s{n}", 1.7e9)][
                : args.events
            ]
            bare: queue.Queue[CallEvent] = queue.Queue(maxsize=100_000)
            up = CallRecorder(pg(), "bench", spool_dir=work / "spool-up")
            up.start()
            proxy = ToggleProxy((base.host or "127.0.0.1", base.port or 5432))  # never up
            down = CallRecorder(pg(proxy.port), "bench", spool_dir=work / "spool-down")
            down.start()
            runs = {"queue.put_nowait": bare.put_nowait, "recorder, PG up": up.on_call_event,
                    "recorder, PG down": down.on_call_event}  # fmt: skip
            results: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(3):  # interleaved, so machine noise hits all three alike
                for name, publish in runs.items():
                    results[name] += call_side(publish, events[: len(events) // 3])
            baseline = summary(results["queue.put_nowait"])
            print(f"  {'':<20} {'p50':>7} {'p99':>7} {'max':>8}   p99 / baseline")
            for name, times in results.items():
                p50, p99, worst = summary(times)
                ratio = p99 / baseline[1]
                print(f"  {name:<20} {p50:7.1f} {p99:7.1f} {worst:8.1f}   {ratio:5.2f}")
            assert up.flush(60), "PG-up recorder did not flush"
            print(
                f"\n  PG down: {down.spool_depth} records in the spool, {down.dropped} dropped, "
                f"degraded={down.degraded}"
            )
            up.close()
            down.close(timeout=0.5)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
