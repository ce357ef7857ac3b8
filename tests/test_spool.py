"""The call-record spool on a real disk: round trip of every event type, torn tails after a
crash, checkpoints, segment rotation, and one process per spool folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.call.events import (
    CallEnded,
    CallStarted,
    DialogStarted,
    StepEntered,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.store.spool import Position, Spool, SpoolError, decode, encode

T0 = 1_700_000_000.0
EVENTS = [
    CallStarted("c1", "sip:a@b", "sip:bot@pbx", "1000", "demo", "PCMU", T0, T0 + 1,
                "10.0.0.1:5060"),
    DialogStarted("c1", "demo", "ab" * 32, T0 + 1),
    StepEntered("c1", "welcome", T0 + 1),
    TurnCompleted("c1", 0, "account", "Number?", "één twee", 0.9, "vosk", "digits",
                  T0 + 2, T0 + 2.1, None, fallbacks=("asr whisper: hung",), result="no_match"),
    VariableSet("c1", "account", "account", "12", T0 + 3),
    StepResult("c1", "lookup", "webhook", False, "HTTP 500", T0 + 4),
    CallEnded("c1", T0 + 9, "ANSWERED", "200 Normal", "bot"),
]  # fmt: skip


def test_every_event_type_round_trips() -> None:
    for seq, event in enumerate(EVENTS):
        record = decode(encode(seq, event))
        assert (record.seq, record.event) == (seq, event)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (encode(1, EVENTS[0])[:-5], "torn"),
        (encode(1, EVENTS[0]).replace(b'"c1"', b'"c2"', 1), "checksum"),
        (b"zzzzzzzz {}\n", "checksum"),
    ],
)
def test_damaged_lines_are_refused(line: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode(line)


def test_read_commit_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(list(enumerate(EVENTS, start=100)))
    assert spool.pending == len(EVENTS) and spool.last_seq == 106
    records, end, skipped = spool.read(3)
    assert [r.seq for r in records] == [100, 101, 102] and skipped == 0
    spool.commit(end, len(records))
    spool.close()

    again = Spool(tmp_path)  # a restart: resumes after the checkpoint
    assert again.pending == 4 and again.last_seq == 106
    records, end, _ = again.read(100)
    assert [r.event for r in records] == EVENTS[3:]
    again.commit(end, len(records))
    assert again.pending == 0 and again.read(10)[0] == []
    again.close()


def test_torn_tail_after_a_crash_is_cut_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([(1, EVENTS[0]), (2, EVENTS[1])])
    spool.close()
    segment = next(tmp_path.glob("*.log"))
    with segment.open("ab") as handle:  # the process died in the middle of a write
        handle.write(encode(3, EVENTS[2])[:20])
    size_before = segment.stat().st_size

    spool = Spool(tmp_path)
    assert spool.pending == 2
    assert segment.stat().st_size < size_before
    spool.append([(4, EVENTS[3])])  # new records follow the last whole one
    records, _, skipped = spool.read(10)
    assert [r.seq for r in records] == [1, 2, 4] and skipped == 0
    spool.close()


def test_corrupt_record_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([(1, EVENTS[0])])
    spool.close()
    segment = next(tmp_path.glob("*.log"))
    with segment.open("ab") as handle:
        handle.write(b"00000000 {bit rot}\n")
    spool = Spool(tmp_path)
    spool.append([(2, EVENTS[1])])
    records, end, skipped = spool.read(10)
    assert [r.seq for r in records] == [1, 2] and skipped == 1
    spool.commit(end, len(records) + skipped)
    assert spool.pending == 0
    spool.close()


def test_segments_rotate_and_committed_ones_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=600)
    for seq in range(10):
        spool.append([(seq, EVENTS[3])])
    segments = sorted(tmp_path.glob("*.log"))
    assert len(segments) >= 3
    records, end, _ = spool.read(100)
    assert [r.seq for r in records] == list(range(10))
    spool.commit(end, len(records))
    assert sorted(tmp_path.glob("*.log")) == [segments[-1]]
    assert spool.checkpoint == Position(int(segments[-1].stem), segments[-1].stat().st_size)
    spool.close()


def test_unreadable_checkpoint_replays_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([(1, EVENTS[0]), (2, EVENTS[1])])
    _, end, _ = spool.read(10)
    spool.commit(end, 2)
    spool.close()
    (tmp_path / "checkpoint").write_text("{garbage")
    spool = Spool(tmp_path)
    assert spool.pending == 2  # written again: harmless, the writes are idempotent
    spool.close()


def test_a_second_process_cannot_share_the_folder(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    try:
        with pytest.raises(SpoolError, match="in use by another Switchboard process"):
            Spool(tmp_path)
    finally:
        first.close()
    Spool(tmp_path).close()  # free again once the first is closed
