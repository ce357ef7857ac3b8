"""Dial scripted calls, read their records back, check them: the work of `eval calls`.

Per call: an RTP endpoint with a `ScriptedCaller` joins the shared `RtpEngine`, sipp places the
call (its Call-ID a fresh UUID, so the records are found by it), the runner hangs up when the
script or the call's time limit says so, then polls the store until the call row has ended (the
server writes records through a spool, a moment after the call) and checks the expectations.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.eval.caller import VOICED_DBFS, Input, ScriptedCaller, TurnLatency, turn_latencies
from app.eval.rtp import RtpEngine, RtpPeer, Sent
from app.eval.scenario import CallSpec, Expect, Matches
from app.eval.sipp import SippCall, SippError, wait_answered

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.config import Config

HANGUP_GRACE_S = 15.0
"""After our hang-up signal, sipp has this long to finish the BYE before it is killed."""
SETTLE_S = 0.5
"""After the call row has ended: the call's last events land in the same or the next batch."""
TRANSCRIPT_WINDOW_S = (0.5, 5.0)
"""A server turn answers a `say` when its speech end is this long before the first voiced
packet sent .. after the last one (both clocks are this machine's when the server is local)."""


# -------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    number: str | None
    """Dialled by calls that name no number."""


_TARGET = re.compile(r"^(?:sips?:)?(?:(?P<user>[^@\s]+)@)?(?P<host>[^:@\s]+)(?::(?P<port>\d+))?$")


def resolve_target(uri: str | None, host: str | None, port: int | None, config: Config) -> Target:
    """Where to dial: --host/--port, else --target, else the config's [sip] bind and port."""
    number = None
    if uri:
        match = _TARGET.match(uri.strip())
        if match is None:
            raise ValueError(f"--target: expected sip:[NUMBER@]HOST[:PORT], got {uri!r}")
        number = match.group("user")
        host = host or match.group("host")
        port = port or (int(match.group("port")) if match.group("port") else None)
    host = host or config.sip.bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # the server listens everywhere: dial it here
    port = port or config.sip.udp_port
    if not 0 < port < 65536:
        raise ValueError(f"SIP port must be 1-65535, got {port}")
    try:
        address = socket.gethostbyname(host)
    except OSError as exc:
        raise ValueError(f"cannot resolve SIP host {host!r}: {exc}") from None
    return Target(address, port, number)


class RecordsError(RuntimeError):
    """The server's call records cannot be read."""


def open_records(url: str) -> Engine:
    """The store at `url`, checked to hold call records (never creating an empty database)."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from app.store.db import error_reason, open_engine, parse_url

    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise RecordsError(str(exc)) from None
    shown = parsed.render_as_string(hide_password=True)
    sqlite = parsed.drivername.startswith("sqlite")
    if sqlite and parsed.database and not Path(parsed.database).is_file():
        raise RecordsError(
            f"no call records at {shown}: give the server's config (--config) or --db"
        )
    engine = open_engine(url)
    try:
        missing = [t for t in ("calls", "turns", "events") if not inspect(engine).has_table(t)]
    except SQLAlchemyError as exc:
        engine.dispose()
        raise RecordsError(f"cannot read call records from {shown}: {error_reason(exc)}") from None
    if missing:
        engine.dispose()
        raise RecordsError(f"no call-record schema in {shown} (missing {', '.join(missing)})")
    return engine


@dataclass(frozen=True)
class Settings:
    target: Target
    local_ip: str
    codec: str = "PCMU"
    concurrency: int = 1
    records_wait_s: float = 10.0
    keep: bool = False
    voiced_dbfs: float = VOICED_DBFS


# -------------------------------------------------------------------------- results


@dataclass
class Transcript:
    """What the server heard for one `say` with a reference."""

    action: int
    reference: str
    heard: str | None
    """The transcript of the turn that took it (None: no turn found)."""
    redacted: bool = False
    """A sensitive step's transcript: stored as [redacted], not scored."""


@dataclass
class CallResult:
    scenario: Path
    name: str
    number: str
    call_id: str
    reasons: list[str]
    outcome: str | None
    ended_by: str
    duration_s: float
    latencies: list[TurnLatency] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": str(self.scenario),
            "name": self.name,
            "number": self.number,
            "call_id": self.call_id,
            "passed": self.passed,
            "reasons": self.reasons,
            "outcome": self.outcome,
            "ended_by": self.ended_by,
            "duration_s": round(self.duration_s, 1),
            "turns": [
                {
                    "action": t.action,
                    "kind": t.kind,
                    "latency_ms": t.latency_ms,
                    "overlap": t.overlap,
                }
                for t in self.latencies
            ],
            "transcripts": [vars(t) for t in self.transcripts],
            "steps": self.steps,
            "variables": self.variables,
        }


# -------------------------------------------------------------------------- running


def run_calls(
    specs: Sequence[CallSpec],
    settings: Settings,
    records: Engine,
    progress: Callable[[CallResult], None] | None = None,
) -> tuple[list[CallResult], Path | None]:
    """Run every call (`settings.concurrency` at once), results in `specs` order; also the
    folder of sipp's logs when it is kept (asked for, or a call failed)."""
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-eval-"))
    engine = RtpEngine()
    engine.start()
    stop = threading.Event()
    results: list[CallResult] = []
    try:
        with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="eval-call") as pool:
            futures = [
                pool.submit(_run_call, spec, n, settings, engine, records, workdir, stop)
                for n, spec in enumerate(specs)
            ]
            try:
                for future in futures:
                    result = future.result()
                    results.append(result)
                    if progress is not None:
                        progress(result)
            except BaseException:
                stop.set()  # every call still up hangs up; queued ones never start
                raise
    finally:
        engine.stop()
    if engine.error is not None:
        raise RuntimeError(f"the RTP engine failed: {engine.error!r}")
    if settings.keep or not all(r.passed for r in results):
        return results, workdir
    shutil.rmtree(workdir, ignore_errors=True)
    return results, None


def _run_call(
    spec: CallSpec,
    ordinal: int,
    settings: Settings,
    engine: RtpEngine,
    records: Engine,
    workdir: Path,
    stop: threading.Event,
) -> CallResult:
    call_id = f"{uuid.uuid4()}@switchboard-eval"
    if stop.is_set():
        return CallResult(spec.scenario, spec.name, spec.number, call_id, ["not run"], None, "", 0)
    caller = ScriptedCaller(spec, settings.voiced_dbfs)
    peer = RtpPeer(spec.name, caller, settings.codec, host=settings.local_ip)
    mono_to_wall = time.time() - time.monotonic()
    started = time.monotonic()
    reasons: list[str] = []
    engine.add(peer)
    try:
        try:
            sipp = SippCall(
                host=settings.target.host,
                port=settings.target.port,
                number=spec.number,
                call_id=call_id,
                local_ip=settings.local_ip,
                rtp_port=peer.port,
                codec=peer.codec,
                payload_type=peer.payload_type,
                dtmf_payload_type=peer.dtmf_payload_type,
                wait_s=spec.timeout_s + 30,
                folder=workdir / f"{ordinal + 1:03d}",
            )
        except SippError as exc:
            raise RuntimeError(str(exc)) from None
        reasons += _follow(sipp, caller, peer, engine, spec, stop)
        outcome = sipp.wait(HANGUP_GRACE_S)
    finally:
        time.sleep(0.3)  # the last packets in flight
        engine.remove(peer)
    duration = time.monotonic() - started
    expect = spec.expect
    if not outcome.answered and (expect.outcome != "rejected" or not outcome.final_status):
        reasons.insert(0, f"not answered: {outcome.refusal()}")
    elif outcome.answered and not outcome.ended_by:
        reasons.append(f"sipp failed mid-call (exit {outcome.exit_code}): {outcome.errors}")
    reasons += caller.failures
    if not caller.failures and outcome.answered:
        left = caller.unperformed()
        if left:
            reasons.append(f"the call ended before {', '.join(left)}")
    heard_of = outcome.answered or bool(outcome.final_status)  # else the server never saw it
    wait = settings.records_wait_s if heard_of and not stop.is_set() else 0.0
    found = fetch_records(records, call_id, wait)
    latencies = turn_latencies(caller.inputs, peer.sent, peer.received, settings.voiced_dbfs)
    if found.call is None and heard_of:
        reasons.append(
            f"no call record under Call-ID {call_id} after {settings.records_wait_s:g} s "
            "(is --config/--db the server's store?)"
        )
    elif found.call is None:
        pass  # not answered, and the server never heard of the call: said above
    elif found.call.get("ended_at") is None:
        reasons.append(f"the call record had not ended {settings.records_wait_s:g} s after")
    else:
        reasons += check_expectations(expect, found, latencies)
    return CallResult(
        scenario=spec.scenario,
        name=spec.name,
        number=spec.number,
        call_id=call_id,
        reasons=reasons,
        outcome=(found.call or {}).get("outcome"),
        ended_by=outcome.ended_by,
        duration_s=duration,
        latencies=latencies,
        transcripts=match_transcripts(caller.inputs, peer.sent, found.turns, mono_to_wall),
        steps=steps_reached(found.turns, found.events),
        variables=found.variables,
    )


def _follow(
    sipp: SippCall,
    caller: ScriptedCaller,
    peer: RtpPeer,
    engine: RtpEngine,
    spec: CallSpec,
    stop: threading.Event,
) -> list[str]:
    """Watch the call until sipp is done: hang up when the script, the time limit or an
    interrupt says so. Returns the reasons it failed on the way."""
    reasons: list[str] = []
    deadline = time.monotonic() + spec.timeout_s
    hung_up_at: float | None = None
    while sipp.running():
        now = time.monotonic()
        if hung_up_at is None:
            if caller.hangup_requested or stop.is_set() or engine.error is not None:
                wait_answered(sipp, peer.answered_at)
                sipp.hang_up()
                hung_up_at = now
            elif now > deadline:
                reasons.append(f"the call was still up after {spec.timeout_s:g} s: hung up")
                sipp.hang_up()
                hung_up_at = now
        elif now - hung_up_at > HANGUP_GRACE_S:
            break  # sipp.wait kills it
        time.sleep(0.05)
    return reasons


# -------------------------------------------------------------------------- records


@dataclass
class Records:
    call: dict[str, Any] | None
    turns: list[dict[str, Any]]
    events: list[dict[str, Any]]
    variables: dict[str, str]


def fetch_records(engine: Engine, call_id: str, wait_s: float) -> Records:
    """The call's records once its row has ended (polled for up to `wait_s`)."""
    from app.store.queries import get_call, get_events, get_turns, get_variables

    deadline = time.monotonic() + wait_s
    while True:
        row = get_call(engine, call_id)
        if row is not None and row.get("ended_at") is not None:
            time.sleep(SETTLE_S)
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return Records(
        get_call(engine, call_id),
        get_turns(engine, call_id),
        get_events(engine, call_id),
        get_variables(engine, call_id),
    )


def steps_reached(turns: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]) -> list[str]:
    """The steps the records show, in time order: those of turns and of events."""
    timed: list[tuple[float, str]] = []
    for turn in turns:
        at = turn.get("asr_final_at") or turn.get("speech_end_at") or turn.get("decided_at")
        timed.append((_epoch(at), turn.get("step") or ""))
    timed += [(_epoch(event.get("at")), event.get("step") or "") for event in events]
    seen: list[str] = []
    for _, step in sorted(timed, key=lambda item: item[0]):
        if step and step not in seen:
            seen.append(step)
    return seen


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if isinstance(value, datetime) else float("inf")


def _plain(text: str) -> str:
    return " ".join(text.casefold().split())


def check_expectations(
    expect: Expect, records: Records, latencies: Sequence[TurnLatency]
) -> list[str]:
    """Why the call does not meet `expect` (empty: it does)."""
    reasons = []
    call = records.call or {}
    if expect.outcome is not None and call.get("outcome") != expect.outcome:
        reasons.append(f"outcome: expected {expect.outcome}, got {call.get('outcome') or 'none'}")
    for name, wanted in expect.variables.items():
        got = records.variables.get(name)
        shown = "not set" if got is None else repr(got)
        if wanted is None:
            if got is not None:
                reasons.append(f"variable {name}: expected not set, got {shown}")
        elif isinstance(wanted, Matches):
            if got is None or wanted.pattern.fullmatch(got) is None:
                reasons.append(f"variable {name}: expected a value {wanted}, got {shown}")
        elif got != wanted:
            reasons.append(f"variable {name}: expected {wanted!r}, got {shown}")
    if expect.steps:
        reached = steps_reached(records.turns, records.events)
        for step in expect.steps:
            if step not in reached:
                reasons.append(
                    f"step {step} not reached (recorded: {', '.join(reached) or 'none'})"
                )
    prompts = [_plain(t.get("prompt") or "") for t in records.turns]
    for text in expect.said:
        if not any(_plain(text) in prompt for prompt in prompts):
            reasons.append(f"the bot did not say {text!r} (in the prompts of its turns)")
    if expect.max_turn_latency_ms is not None:
        for turn in latencies:
            if turn.counted and turn.latency_ms > expect.max_turn_latency_ms:
                reasons.append(
                    f"turn latency after action {turn.action} ({turn.kind}): "
                    f"{turn.latency_ms:.0f} ms, over {expect.max_turn_latency_ms:.0f} ms"
                )
    return reasons


def match_transcripts(
    inputs: Sequence[Input],
    sent: Sequence[Sent],
    turns: Sequence[dict[str, Any]],
    mono_to_wall: float,
) -> list[Transcript]:
    """For each `say` with a reference, the server's turn that heard it: the first speech turn
    (not keys) whose speech end lies in `TRANSCRIPT_WINDOW_S` around the utterance."""
    used: set[int] = set()
    found = []
    before, after = TRANSCRIPT_WINDOW_S
    for item in inputs:
        if item.kind != "say" or item.text is None:
            continue
        if not 0 <= item.first_sent <= item.last_sent < len(sent):
            found.append(Transcript(item.action, item.text, None))
            continue
        start = sent[item.first_sent].sent + mono_to_wall - before
        end = sent[item.last_sent].sent + mono_to_wall + after
        match = None
        for turn in turns:
            index = turn.get("turn_index")
            at = turn.get("speech_end_at")
            if index in used or turn.get("engine") == "dtmf" or not isinstance(at, datetime):
                continue
            if start <= at.timestamp() <= end:
                match = turn
                used.add(index)
                break
        if match is None:
            found.append(Transcript(item.action, item.text, None))
            continue
        heard = match.get("transcript") or ""
        found.append(Transcript(item.action, item.text, heard, heard.startswith("[redacted")))
    return found


# -------------------------------------------------------------------------- summary


def summarise(results: Sequence[CallResult]) -> dict[str, Any]:
    """Passed, containment, wire turn latency (after speech; after keys) and live WER."""
    from app.eval.metrics import percentile, score_clip
    from app.eval.metrics import summarise as wer_summary
    from app.eval.textnorm import normalise

    scores = []
    for result in results:
        for item in result.transcripts:
            reference = normalise(item.reference)
            if item.redacted or not reference:
                continue
            scores.append(score_clip(reference, normalise(item.heard or "")))
    wer = wer_summary(scores) if scores else None
    contained = sum(r.outcome == "contained" for r in results)
    return {
        "calls": len(results),
        "passed": sum(r.passed for r in results),
        "contained": contained,
        "containment": contained / len(results) if results else None,
        "turn_latency_ms": _latency(results, "say", percentile),
        "key_latency_ms": _latency(results, "dtmf", percentile),
        "live_wer": {
            "utterances": len(scores),
            "ref_words": sum(s.ref_words for s in scores),
            "wer": None if wer is None else wer.wer.value,
            "wer_95": None if wer is None else [wer.wer.low, wer.wer.high],
            "entity_accuracy": None if wer is None else wer.entity_accuracy.value,
        },
    }


def _latency(results: Sequence[CallResult], kind: str, percentile: Callable) -> dict[str, Any]:
    """The wire latencies after inputs of one kind: speech turns and key turns apart, since a
    key answer is often complete before its last key (a `#` after a full PIN)."""
    values = [t.latency_ms for r in results for t in r.latencies if t.counted and t.kind == kind]
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }
