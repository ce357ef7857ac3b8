"""The call-record spool: an append-only, fsync'd journal of call events on local disk.

Every event the recorder takes goes here first, then to the database, so neither a database
outage nor a crash of the server loses records: the database writer replays the spool from its
checkpoint, in order, and the writes are idempotent (keyed by call id, turn index, event
sequence number), so replaying a record twice never duplicates a row.

Layout of the spool folder: segment files `00000001.log`, `00000002.log` ... of lines
`<crc32 hex> <json>\\n`, one event each (`{"seq": ..., "type": "TurnCompleted", "event": {...}}`),
and `checkpoint` (`{"segment": n, "offset": bytes}`: everything before it is in the database).
A segment is deleted once the checkpoint has passed it. After a crash the last line may be
torn (written in part): it is detected by its missing newline or bad checksum and cut off; it
was never acknowledged, so that is the in-flight record at most. A lock file keeps a second
server process off the same spool.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.call import events as call_events
from app.call.events import CallEvent

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
_EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        call_events.CallStarted,
        call_events.StepEntered,
        call_events.TurnCompleted,
        call_events.DialogStarted,
        call_events.VariableSet,
        call_events.StepResult,
        call_events.CallEnded,
    )
}


class SpoolError(RuntimeError):
    """The spool folder cannot be used (taken by another process, not writable)."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: a segment number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    event: CallEvent


def encode(seq: int, event: CallEvent) -> bytes:
    """One spool line for `event` with its sequence number."""
    body = json.dumps(
        {"seq": seq, "type": type(event).__name__, "event": dataclasses.asdict(event)},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(line: bytes) -> Record:
    """The record of a spool line; ValueError when the line is torn or corrupt."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        raise ValueError("torn or malformed line")
    body = line[9:-1]
    try:
        crc = int(line[:8], 16)
    except ValueError:
        raise ValueError("malformed checksum") from None
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    data = json.loads(body)
    cls = _EVENT_TYPES.get(data.get("type"))
    if cls is None:
        raise ValueError(f"unknown event type {data.get('type')!r}")
    fields = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in data["event"].items()
    }
    return Record(int(data["seq"]), cls(**fields))


class Spool:
    """Appends (one writer thread) and reads back from the checkpoint (one reader thread).

    `append` returns only once the records are on disk (fsync). `read` and `commit` are for the
    database writer: read a batch after the checkpoint, write it, then commit its end position.
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.directory / "lock", "a+b")  # noqa: SIM115 - held until close
        except OSError as exc:
            raise SpoolError(f"cannot use spool folder {self.directory}: {exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolError(
                f"spool folder {self.directory} is in use by another Switchboard process "
                "(each server needs its own server.data_dir)"
            ) from None
        self._counts = threading.Lock()  # `pending` changes on the writer's and reader's threads
        self._checkpoint = self._read_checkpoint()
        self.last_seq = 0
        self.pending = 0  # records after the checkpoint
        self._repair_and_count()
        segments = self._segments()
        self._segment = segments[-1] if segments else max(1, self._checkpoint.segment)
        self._file = open(self._path(self._segment), "ab")  # noqa: SIM115 - the append handle
        self._fsync_dir()

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: list[tuple[int, CallEvent]]) -> None:
        """Write `records` (seq, event) at the end and fsync; OSError when the disk refuses."""
        if not records:
            return
        data = b"".join(encode(seq, event) for seq, event in records)
        if self._file.tell() > 0 and self._file.tell() + len(data) > self._segment_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        with self._counts:
            self.pending += len(records)
            self.last_seq = max(self.last_seq, records[-1][0])

    # -- reading ------------------------------------------------------------------------------

    @property
    def checkpoint(self) -> Position:
        return self._checkpoint

    def read(self, limit: int) -> tuple[list[Record], Position, int]:
        """Up to `limit` records after the checkpoint, the position after them, and how many
        corrupt lines were skipped on the way (logged; they cannot be replayed)."""
        records: list[Record] = []
        skipped = 0
        position = self._checkpoint
        for segment in self._segments():
            if segment < position.segment:
                continue
            offset = position.offset if segment == position.segment else 0
            with open(self._path(segment), "rb") as handle:
                handle.seek(offset)
                while len(records) < limit:
                    line = handle.readline()
                    if not line:
                        break
                    if not line.endswith(b"\n"):
                        break  # being written right now: read it next time
                    offset += len(line)
                    try:
                        records.append(decode(line))
                    except (ValueError, TypeError, KeyError) as exc:
                        skipped += 1
                        log.error("spool %s: skipping a corrupt record: %s", segment, exc)
            position = Position(segment, offset)
            if len(records) >= limit:
                break
        return records, position, skipped

    def commit(self, position: Position, count: int) -> None:
        """Everything before `position` (`count` records) is in the database."""
        self._checkpoint = position
        with self._counts:
            self.pending = max(0, self.pending - count)
        tmp = self.directory / "checkpoint.tmp"
        tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
        tmp.replace(self.directory / "checkpoint")  # no fsync: a lost checkpoint only replays
        for segment in self._segments():
            if segment < position.segment:
                self._path(segment).unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()
        self._lock.close()

    # -- internals ----------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.log"

    def _segments(self) -> list[int]:
        return sorted(
            int(path.stem) for path in self.directory.glob("*.log") if path.stem.isdigit()
        )

    def _rotate(self) -> None:
        self._file.close()
        self._segment += 1
        self._file = open(self._path(self._segment), "ab")  # noqa: SIM115
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_checkpoint(self) -> Position:
        try:
            data: dict[str, Any] = json.loads((self.directory / "checkpoint").read_text())
            return Position(int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("spool checkpoint unreadable (%s): replaying the whole spool", exc)
        segments = self._segments()
        return Position(segments[0] if segments else 1, 0)

    def _repair_and_count(self) -> None:
        """Cut a torn last record off the newest segment; count what awaits the database."""
        segments = self._segments()
        for segment in segments:
            start = self._checkpoint.offset if segment == self._checkpoint.segment else 0
            if segment < self._checkpoint.segment:
                continue
            good_end = start
            with open(self._path(segment), "rb") as handle:
                handle.seek(start)
                for line in handle:
                    try:
                        record = decode(line)
                    except (ValueError, TypeError, KeyError):
                        if segment == segments[-1] and not line.endswith(b"\n"):
                            break  # the torn tail: handled below
                        good_end += len(line)  # corrupt in the middle: read() skips it
                        continue
                    good_end += len(line)
                    self.pending += 1
                    self.last_seq = max(self.last_seq, record.seq)
            size = self._path(segment).stat().st_size
            if segment == segments[-1] and size > good_end:
                log.warning(
                    "spool %s: cutting off %d byte(s) of a record torn by a crash",
                    self._path(segment).name,
                    size - good_end,
                )
                os.truncate(self._path(segment), good_end)
