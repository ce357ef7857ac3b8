"""Turn latency, barge-in and echo robustness of a running server, measured at the caller.

Starts `switchboard serve` (K processes when more calls are wanted than one process holds),
dials N concurrent calls into `bench/dialplans/turns.yaml` (a loop of: a 4.5 s question, the
caller's digits, a short read-back) and measures from the RTP the caller sends and receives:

  turns     turn latency: the caller's last voiced packet sent -> the first voiced packet of
            the bot's reply received (p50/p95/p99). The caller answers 600 ms after the
            question ends, reading 4 digits (FSDD recordings of four speakers).
  barge-in  the caller starts talking 1-2 s into the question: time from its first voiced
            packet sent to the bot's audio stopping (silent for >= 200 ms where the prompt
            still had speech), p50/p95, and how many prompts did not stop at all.
  echo      the caller says nothing but sends back what it hears, attenuated (-10 dB) and
            delayed (60 ms): the share of questions cut short (false barge-ins).
  all       per call, RTP sequence gaps, packets > 40 ms late against their timestamps, and
            underruns: digitally silent packets inside a prompt's speech.

sipp does the signalling (one process per call; its SDP names the Python RTP endpoint of
bench/rtp_peer.py). The bot's static prompts are found in the received audio by their waveform:
the benchmark synthesises them with the server's own TTS settings, so it knows each prompt's
full duration and where, inside it, the audio stopped.

    .venv/bin/python bench/turn_latency.py                       # all three modes, 4 calls
    .venv/bin/python bench/turn_latency.py --mode turns --calls 20 --servers 5 --json out.json

Speech: Free Spoken Digit Dataset (Jakobovski et al., CC BY-SA 4.0), read from ../shared/data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
REPO_ROOT = BENCH.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH)]  # the app and tests packages; rtp_peer beside us

from rtp_peer import (  # noqa: E402
    FRAME_BYTES,
    HOST,
    Echo,
    Received,
    RtpEngine,
    RtpPeer,
    RtpStats,
    Silent,
    frame_dbfs,
    rtp_stats,
)

from app.asr.numbers import spoken_digits  # noqa: E402
from app.config import ConfigError, load_config  # noqa: E402
from app.media.audio import CALL_RATE, FRAME_MS  # noqa: E402
from app.media.g711 import Codec  # noqa: E402
from app.media.resample import Resampler  # noqa: E402
from app.models.choose import choose_engines  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402
from tests.sip.rtp_pcap import build_digit_utterance  # noqa: E402
from tests.sip.sipp import SIPP, kill_group, render_scenario, sipp_command, start_sipp  # noqa: E402

DIALPLAN = BENCH / "dialplans" / "turns.yaml"
SCENARIOS = BENCH / "scenarios"
SCENARIO = "uac_bench"
"""sipp's scenario: SCENARIOS/uac_bench.xml."""
SERVICE = "turns"
SPEAKERS = ("jackson", "nicolas", "george", "yweweler")
MODES = ("turns", "barge-in", "echo")
PER_SERVER_MAX = 4
"""Calls one server process can hold: the pjsua2-python wheel is built with PJSUA_MAX_CALLS 4."""
ASK_STEP = "ask_digits"
TURNS_PATTERN = "x{4}"
"""The count in turns.yaml's `check` step that --turns rewrites."""
MATCH_FRAMES = 10
"""Frames (200 ms) of a prompt's start compared to recognise it in the received audio."""
MATCH_MIN = 0.7
"""Normalised correlation above which those frames are that prompt."""
STOP_FRAMES = 10
"""Silent frames (200 ms) where the prompt had sound that make a stop (not a glitch)."""
QUIETER_DB = 20.0
"""A packet this much quieter than the prompt at that point counts as silence in it."""


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


# ----------------------------------------------------------------------------- prompts


@dataclass
class PromptRef:
    """A static prompt as the caller hears it: the server's TTS, resampled, through G.711."""

    name: str
    text: str
    frames: np.ndarray
    """(n, 160) float samples, full scale 1."""
    dbfs: np.ndarray
    zero: np.ndarray
    first: int
    """First and last frame above the voiced threshold: the prompt's speech."""
    last: int

    @property
    def full_ms(self) -> int:
        return (self.last - self.first + 1) * FRAME_MS

    @property
    def key(self) -> np.ndarray:
        return self.frames[self.first : self.first + MATCH_FRAMES].ravel()


def synthesise(tts, voice: str | None, text: str, codec: str) -> bytes:
    """What the server plays for `text`: TTS chunks through a streaming resampler (as the call
    session does), padded to whole frames, through a G.711 round trip."""
    resampler = Resampler(tts.sample_rate, CALL_RATE)
    pcm = b"".join(resampler.process(chunk) for chunk in tts.synthesize(text, voice))
    pcm += resampler.flush()
    if len(pcm) % FRAME_BYTES:
        pcm += bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
    law = Codec.from_name(codec)
    return law.decode(law.encode(pcm))


def prompt_ref(name: str, text: str, pcm: bytes, voiced_dbfs: float) -> PromptRef:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    power = np.mean(frames * frames, axis=1)
    dbfs = np.where(power > 1e-12, 10 * np.log10(np.maximum(power, 1e-12)), -120.0)
    voiced = np.nonzero(dbfs > voiced_dbfs)[0]
    if voiced.size == 0:
        raise ValueError(f"prompt {name!r} synthesised to silence")
    return PromptRef(
        name, text, frames, dbfs, ~np.any(frames != 0, axis=1), int(voiced[0]), int(voiced[-1])
    )


def static_prompts(plan: dict) -> dict[str, str]:
    """Step name -> text of every say/ask prompt without variables."""
    prompts = {}
    for name, step in (plan.get("steps") or {}).items():
        if not isinstance(step, dict):
            continue
        text = step.get("ask", step.get("say"))
        if isinstance(text, str) and "{" not in text and text.strip():
            prompts[name] = text
    return prompts


def server_tts(config):
    """The TTS chain the server builds from `config`."""
    from app.server import create_tts

    return create_tts(config)


@dataclass
class Occurrence:
    """A static prompt found in the received stream; `start` indexes the packet aligned with
    the prompt's first voiced frame."""

    ref: PromptRef
    start: int
    score: float
    gain_db: float = 0.0
    """Level of the received prompt relative to the reference (0 on a clean line)."""


class PromptTracker:
    """Finds static prompts in a stream of received packets as they arrive.

    Every onset of sound (a voiced packet after a quiet one) is a candidate; once 200 ms more
    have arrived, that stretch is correlated with the start of each prompt (within +-1 frame).
    Inside a prompt already found, only an onset after a stop (200 ms of quiet) is a candidate:
    "I did not hear anything" must not be found inside "Sorry, I did not catch that".
    """

    def __init__(self, refs: Sequence[PromptRef], voiced_dbfs: float) -> None:
        self.refs = refs
        self.voiced_dbfs = voiced_dbfs
        self.samples: list[np.ndarray] = []
        self.voiced: list[bool] = []
        self._pending: list[tuple[int, int]] = []  # (onset, quiet packets before it)
        self._quiet = 0
        self._busy_until = -1
        self.found: list[Occurrence] = []

    def push(self, packet: Received) -> Occurrence | None:
        pcm = packet.pcm if len(packet.pcm) == FRAME_BYTES else bytes(FRAME_BYTES)
        self.samples.append(np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0)
        voiced = packet.dbfs > self.voiced_dbfs
        self.voiced.append(voiced)
        index = len(self.samples) - 1
        if voiced:
            if index == 0 or not self.voiced[index - 1]:
                self._pending.append((index, self._quiet if index else STOP_FRAMES))
            self._quiet = 0
        else:
            self._quiet += 1
        found = None
        while self._pending and self._pending[0][0] + MATCH_FRAMES + 1 < len(self.samples):
            candidate, quiet_before = self._pending.pop(0)
            if candidate <= self._busy_until and quiet_before < STOP_FRAMES:
                continue
            occurrence = self._match(candidate)
            if occurrence is not None:
                self.found.append(occurrence)
                self._busy_until = occurrence.start + occurrence.ref.last - occurrence.ref.first
                found = occurrence
        return found

    def _match(self, onset: int) -> Occurrence | None:
        low = max(0, onset - 1)
        window = np.concatenate(self.samples[low : onset + MATCH_FRAMES + 1])
        squares = np.concatenate([[0.0], np.cumsum(window * window)])
        best: tuple[float, PromptRef, int] | None = None
        for ref in self.refs:
            key = ref.key
            if window.size < key.size:
                continue
            dots = np.correlate(window, key, mode="valid")
            energy = squares[key.size :] - squares[: -key.size]
            corr = dots / np.sqrt(np.maximum(energy, 1e-12) * float(np.dot(key, key)))
            lag = int(np.argmax(corr))
            if best is None or corr[lag] > best[0]:
                best = (float(corr[lag]), ref, lag)
        if best is None or best[0] < MATCH_MIN:
            return None
        score, ref, lag = best
        heard = float(squares[lag + ref.key.size] - squares[lag])
        gain_db = 10 * math.log10(max(heard, 1e-12) / max(float(np.dot(ref.key, ref.key)), 1e-12))
        return Occurrence(ref, low + round(lag / 160), score, gain_db)


@dataclass
class Play:
    """How much of a prompt occurrence the caller heard."""

    prompt: str
    start: int
    start_at: float
    full_ms: int
    played_ms: int
    complete: bool
    """Played to its last voiced frame."""
    cut: int | None = None
    """Packet index where the audio stopped (the first of >= 200 ms of silence) if it did."""
    cut_at: float | None = None
    end: int | None = None
    """Packet index after the prompt's last voiced frame when complete."""
    truncated: bool = False
    """The stream ended (hang-up) before the prompt could finish or stop."""
    underruns: int = 0
    """Digitally silent packets inside the prompt's speech, audio resuming after them."""


def follow(received: Sequence[Received], occ: Occurrence, voiced_dbfs: float) -> Play:
    """Walk the received packets against the prompt from `occ.start`: a packet that is silent
    where the prompt has sound (digital silence where the prompt has none; 20 dB quieter than
    the prompt where it is voiced) does not advance the prompt. 200 ms of them is a stop;
    fewer, then sound again, an underrun (when digitally silent)."""
    ref = occ.ref
    j, i = ref.first, occ.start
    run = run_zero = underruns = 0
    while i < len(received):
        if j > ref.last:
            break
        packet = received[i]
        expected = ref.dbfs[j] + occ.gain_db
        quiet = ref.dbfs[j] > voiced_dbfs and packet.dbfs < expected - QUIETER_DB
        gap = (packet.zero and not ref.zero[j]) or quiet
        if gap:
            run += 1
            run_zero += packet.zero
            if run >= STOP_FRAMES:
                cut = i - run + 1
                return Play(
                    ref.name,
                    occ.start,
                    received[occ.start].arrival,
                    ref.full_ms,
                    (j - ref.first) * FRAME_MS,
                    False,
                    cut,
                    received[cut].arrival,
                    underruns=underruns,
                )
        else:
            if run_zero and run:
                underruns += run_zero
            run = run_zero = 0
            j += 1
        i += 1
    complete = j > ref.last
    return Play(
        ref.name,
        occ.start,
        received[occ.start].arrival,
        ref.full_ms,
        (j - ref.first) * FRAME_MS,
        complete,
        end=i if complete else None,
        truncated=not complete,
        underruns=underruns,
    )


# ----------------------------------------------------------------------------- callers


@dataclass
class Utterance:
    speaker: str
    digits: str
    frames: list[bytes]
    voiced: list[bool]


@dataclass
class Turn:
    """One caller answer: where its packets are in `peer.sent`, and what it was about."""

    speaker: str
    digits: str
    first_sent: int
    """Index in peer.sent of the utterance's first voiced packet."""
    last_sent: int = -1
    prompt_start: int | None = None
    """The question occurrence (packet index) the caller answered or barged into."""
    barge_offset_ms: float | None = None


class Caller:
    """Answers each question: waits for the question (recognised by its waveform) to be
    over (or, barging in, for a moment inside it) and reads digits. Engine thread only."""

    def __init__(
        self,
        refs: Sequence[PromptRef],
        utterances: Sequence[Utterance],
        voiced_dbfs: float,
        *,
        answer_after_ms: float = 600,
        barge_at_ms: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.tracker = PromptTracker(refs, voiced_dbfs)
        self.utterances = utterances
        self.voiced_dbfs = voiced_dbfs
        self.answer_after_s = answer_after_ms / 1000
        self.barge_at_ms = barge_at_ms
        self.rng = random.Random(seed)
        self.turns: list[Turn] = []
        self._question: Occurrence | None = None
        self._question_at = 0.0
        self._barge_at: float | None = None
        self._barge_offset = 0.0
        self._last_voiced_rx = 0.0
        self._speaking: Utterance | None = None
        self._position = 0

    def on_received(self, peer: RtpPeer, packet: Received) -> None:
        if packet.dbfs > self.voiced_dbfs:
            self._last_voiced_rx = packet.arrival
        occurrence = self.tracker.push(packet)
        if occurrence is not None and occurrence.ref.name == ASK_STEP:
            self._question = occurrence
            self._question_at = peer.received[occurrence.start].arrival
            if self.barge_at_ms is not None:
                self._barge_offset = self.rng.uniform(*self.barge_at_ms) / 1000
                self._barge_at = self._question_at + self._barge_offset

    def next_frame(self, peer: RtpPeer, at: float) -> tuple[bytes, str]:
        if self._speaking is None and self._question is not None and self._should_start(at):
            self._speaking = self.utterances[len(self.turns) % len(self.utterances)]
            self._position = 0
            first = self._speaking.voiced.index(True) if any(self._speaking.voiced) else 0
            turn = Turn(
                self._speaking.speaker,
                self._speaking.digits,
                len(peer.sent) + first,
                prompt_start=self._question.start,
            )
            if self._barge_at is not None:
                turn.barge_offset_ms = self._barge_offset * 1000
            self.turns.append(turn)
            self._question = None
            self._barge_at = None
        if self._speaking is None:
            return bytes(FRAME_BYTES), "silence"
        utterance, index = self._speaking, self._position
        if utterance.voiced[index]:
            self.turns[-1].last_sent = len(peer.sent)
        self._position += 1
        if self._position >= len(utterance.frames):
            self._speaking = None
        return utterance.frames[index], "speech"

    def _should_start(self, at: float) -> bool:
        if self._barge_at is not None:
            return at >= self._barge_at
        # answering: the question is over once nothing was heard for `answer_after`
        return (
            self._last_voiced_rx >= self._question_at
            and at - self._last_voiced_rx >= self.answer_after_s
        )


def make_utterances(
    data: Path, call: int, count: int, pause_ms: tuple[int, int], voiced_dbfs: float, seed: int
) -> list[Utterance]:
    """The caller's answers, turn by turn: 4 digits of one FSDD speaker (rotating over the
    speakers by call and turn), pauses of `pause_ms` between them. Made before the call: the
    RTP engine thread must not wait for files."""

    def make(turn: int) -> Utterance:
        rng = random.Random(seed * 1_000_003 + call * 1009 + turn)
        speaker = SPEAKERS[(call + turn) % len(SPEAKERS)]
        digits = "".join(rng.choice("0123456789") for _ in range(4))  # a 4-digit code
        pcm = build_digit_utterance(
            data, speaker, digits, pause_ms=pause_ms, seed=rng.randrange(1 << 30), pad_ms=0
        )
        pcm += bytes(-len(pcm) % FRAME_BYTES)
        frames = [pcm[k : k + FRAME_BYTES] for k in range(0, len(pcm), FRAME_BYTES)]
        return Utterance(speaker, digits, frames, [frame_dbfs(f) > voiced_dbfs for f in frames])

    return [make(turn) for turn in range(count)]


# ----------------------------------------------------------------------------- processes


@dataclass
class Server:
    index: int
    process: ServerProcess
    workdir: Path
    max_calls: int


def start_servers(
    servers: list[Server],
    count: int,
    per_server: list[int],
    overrides: dict[str, str],
    workdir: Path,
) -> None:
    """Start `count` servers at once (each with its own ports, data dir and SQLite file),
    adding each to `servers` as soon as it runs (so an interrupted start can still stop it)."""
    results: list[Server | BaseException | None] = [None] * count

    def start(index: int) -> None:
        folder = workdir / f"server-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        env = {**overrides, "SWITCHBOARD_SIP__MAX_CALLS": str(max(1, per_server[index]))}
        try:
            results[index] = Server(
                index, ServerProcess.start(env, folder, timeout=90), folder, per_server[index]
            )
            servers.append(results[index])
        except BaseException as exc:  # reported below, with the others stopped
            results[index] = exc

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures = [r for r in results if not isinstance(r, Server)]
    if failures:
        raise RuntimeError(f"a server did not start: {str(failures[0])[-4000:]}")
    servers.sort(key=lambda server: server.index)


class SippCalls:
    """sipp processes, one per call; all killed by `kill_all` whatever state they are in."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()

    def run(
        self, server: Server, peer: RtpPeer, call_id: str, codec: str, wait_s: float, folder: Path
    ) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        values = {
            "RTP_IP": HOST,
            "RTP_PORT": peer.port,
            "CODEC": peer.codec,
            "PT": peer.payload_type,
            "WAIT_MS": int(wait_s * 1000),
        }
        scenario = render_scenario(SCENARIO, folder, values, templates=SCENARIOS)
        action_log = folder / "actions.log"
        command = sipp_command(
            scenario,
            HOST,
            server.process.port,
            (folder / "messages.log", folder / "errors.log", action_log),
            service=SERVICE,
            timeout_s=wait_s + 15,
            extra_args=("-cid_str", f"{call_id}@%s"),
        )
        started = time.monotonic()
        proc = start_sipp(command, folder)
        with self._lock:
            self._procs.append(proc)
        try:
            _, stderr = proc.communicate(timeout=wait_s + 25)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            _, stderr = proc.communicate()
            timed_out = True
        logged = action_log.read_text(errors="replace") if action_log.exists() else ""
        ended_by = "bot" if "SERVER-BYE" in logged else "caller" if "CALLER-BYE" in logged else ""
        return {
            "ok": proc.returncode == 0 and not timed_out,
            "exit": proc.returncode,
            "timed_out": timed_out,
            "answered": "ANSWERED" in logged,
            "ended_by": ended_by,
            "duration_s": round(time.monotonic() - started, 2),
            "stderr": stderr[-800:],
            "folder": str(folder),
        }

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                kill_group(proc)


# ----------------------------------------------------------------------------- one mode


@dataclass
class CallResult:
    mode: str
    index: int
    server: int
    call_id: str
    sipp: dict
    peer: RtpPeer
    caller: Caller | None
    plays: list[Play] = field(default_factory=list)
    occurrences: list[Occurrence] = field(default_factory=list)


def run_mode(
    mode: str,
    args: argparse.Namespace,
    servers: list[Server],
    refs: list[PromptRef],
    engine: RtpEngine,
    sipp: SippCalls,
    run_id: str,
    workdir: Path,
) -> list[CallResult]:
    wait_s = args.turns * 25 + 30
    results: list[CallResult | None] = [None] * args.calls
    threads = []
    for index in range(args.calls):
        server = servers[index % len(servers)]
        call_id = f"bench-{run_id}-{mode}-{index}"
        caller: Caller | None = None
        echo = None
        if mode == "echo":
            behaviour = Silent()
            echo = Echo(args.echo_ms, args.echo_db)
        else:
            caller = Caller(
                refs,
                make_utterances(
                    args.data, index, args.turns + 2, args.pause_ms, args.voiced_dbfs, args.seed
                ),
                args.voiced_dbfs,
                answer_after_ms=args.answer_after_ms,
                barge_at_ms=args.barge_at_ms if mode == "barge-in" else None,
                seed=args.seed * 7919 + index,
            )
            behaviour = caller
        peer = RtpPeer(call_id, behaviour, args.codec, echo)
        engine.add(peer)

        def call(index=index, server=server, peer=peer, caller=caller, call_id=call_id) -> None:
            time.sleep(index * args.stagger_ms / 1000)
            try:
                outcome = sipp.run(
                    server, peer, call_id, args.codec, wait_s, workdir / mode / f"call-{index}"
                )
            except Exception as exc:  # one failed call is a result, not a crash
                outcome = {"ok": False, "error": repr(exc)}
            time.sleep(0.3)  # the last packets in flight
            engine.remove(peer)
            results[index] = CallResult(mode, index, server.index, call_id, outcome, peer, caller)

        thread = threading.Thread(target=call, name=f"call-{mode}-{index}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
            if engine.error is not None:
                raise RuntimeError(f"RTP engine failed: {engine.error!r}")
    done = [r for r in results if r is not None]
    for result in done:
        tracker = PromptTracker(refs, args.voiced_dbfs)
        for packet in result.peer.received:
            tracker.push(packet)
        result.occurrences = tracker.found
        result.plays = [follow(result.peer.received, o, args.voiced_dbfs) for o in tracker.found]
    return done


# ----------------------------------------------------------------------------- analysis


def analyse_turns(results: list[CallResult], voiced_dbfs: float) -> dict:
    latencies: list[float] = []
    rows = []
    outcomes: dict[str, int] = {}
    for result in results:
        if result.caller is None:
            continue
        sent, received = result.peer.sent, result.peer.received
        starts = {p.start: p.prompt for p in result.plays}
        for number, turn in enumerate(result.caller.turns):
            if turn.last_sent < 0 or turn.last_sent >= len(sent):
                continue  # the call ended while the caller was still talking
            t_first, t_end = sent[turn.first_sent].sent, sent[turn.last_sent].sent
            overlap = any(t_first < p.arrival <= t_end and p.dbfs > voiced_dbfs for p in received)
            reply = next(
                (k for k, p in enumerate(received) if p.arrival > t_end and p.dbfs > voiced_dbfs),
                None,
            )
            row = {
                "call": result.call_id,
                "turn": number,
                "speaker": turn.speaker,
                "digits": turn.digits,
                "bot_spoke_during_answer": overlap,
            }
            if reply is None:
                row["reply"] = "none"
            else:
                what = next((starts[k] for k in range(reply - 2, reply + 3) if k in starts), None)
                row["reply"] = what or "read_back/other"
                row["latency_ms"] = round((received[reply].arrival - t_end) * 1000, 1)
                row["speech_end_sent"] = t_end
                row["reply_received"] = received[reply].arrival
                if not overlap:
                    latencies.append(row["latency_ms"])
            outcome = "bot talked over the answer" if overlap else row["reply"]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            rows.append(row)
    return {"latency_ms": summary(latencies), "replies": outcomes, "turns": rows}


def analyse_barge_in(results: list[CallResult], tolerance_ms: float) -> dict:
    reactions: list[float] = []
    rows = []
    by_speaker: dict[str, list[int]] = {}  # speaker -> [prompts stopped, barge-ins]
    counts = {"stopped": 0, "not_stopped": 0, "stopped_before_caller_spoke": 0, "unknown": 0}
    for result in results:
        if result.caller is None:
            continue
        plays = {p.start: p for p in result.plays}
        sent = result.peer.sent
        for number, turn in enumerate(result.caller.turns):
            play = plays.get(turn.prompt_start) if turn.prompt_start is not None else None
            if play is None or turn.first_sent >= len(sent) or play.truncated:
                counts["unknown"] += 1
                continue
            t_speech = sent[turn.first_sent].sent
            row = {
                "call": result.call_id,
                "turn": number,
                "speaker": turn.speaker,
                "barge_offset_ms": round(turn.barge_offset_ms or 0),
                "prompt_ms": play.full_ms,
                "played_ms": play.played_ms,
            }
            heard = by_speaker.setdefault(turn.speaker, [0, 0])
            heard[1] += 1
            if play.complete or play.played_ms >= play.full_ms - tolerance_ms:
                counts["not_stopped"] += 1
                row["result"] = "not stopped"
                end_at = play.cut_at
                if play.end is not None:
                    end_at = result.peer.received[play.end - 1].arrival
                if end_at is not None:
                    row["talked_over_ms"] = round((end_at - t_speech) * 1000, 1)
            elif play.cut_at is not None and play.cut_at >= t_speech:
                heard[0] += 1
                counts["stopped"] += 1
                row["result"] = "stopped"
                row["reaction_ms"] = round((play.cut_at - t_speech) * 1000, 1)
                reactions.append(row["reaction_ms"])
            else:
                counts["stopped_before_caller_spoke"] += 1
                row["result"] = "stopped before the caller spoke"
            rows.append(row)
    return {
        "reaction_ms": summary(reactions),
        "counts": counts,
        "stopped_by_speaker": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_speaker.items())},
        "turns": rows,
    }


def analyse_echo(results: list[CallResult], tolerance_ms: float) -> dict:
    rows = []
    asked = cut = 0
    for result in results:
        for play in result.plays:
            if play.prompt != ASK_STEP or play.truncated:
                continue
            asked += 1
            short = not play.complete and play.played_ms < play.full_ms - tolerance_ms
            cut += short
            rows.append(
                {
                    "call": result.call_id,
                    "prompt_ms": play.full_ms,
                    "played_ms": play.played_ms,
                    "cut_short": short,
                }
            )
    # what the caller fed back, as a check of the echo path: its level against what it heard
    heard = [p.dbfs for r in results for p in r.peer.received if p.dbfs > -50]
    echoed = [p.dbfs for r in results for p in r.peer.sent if "echo" in p.kind and p.dbfs > -60]
    return {
        "prompts": asked,
        "cut_short": cut,
        "cut_short_pct": round(100 * cut / asked, 1) if asked else None,
        "echo_packets": len(echoed),
        "echo_level_db": round(float(np.median(echoed) - np.median(heard)), 1)
        if heard and echoed
        else None,
        "plays": rows,
    }


def analyse_media(results: list[CallResult], late_ms: float) -> dict:
    total = RtpStats()
    prompts = underrun_frames = prompts_with_underruns = 0
    prompt_ms = 0
    for result in results:
        total.add(rtp_stats(result.peer.received, late_ms))
        for play in result.plays:
            prompts += 1
            prompt_ms += play.played_ms
            underrun_frames += play.underruns
            prompts_with_underruns += play.underruns > 0
    return {
        "packets": total.packets,
        "lost": total.lost,
        "duplicates": total.duplicates,
        "reordered": total.reordered,
        f"late_over_{late_ms:g}ms": total.late,
        "lateness_ms": {
            "p50": _round(percentile(total.lateness_ms, 50)),
            "p99": _round(percentile(total.lateness_ms, 99)),
            "max": _round(total.max_lateness_ms),
        },
        "max_interarrival_ms": round(total.max_interarrival_ms, 1),
        "timestamp_jumps": total.timestamp_jumps,
        "ssrc_changes": total.ssrc_changes,
        "prompts_checked": prompts,
        "prompt_audio_s": round(prompt_ms / 1000, 1),
        "underrun_packets": underrun_frames,
        "prompts_with_underruns": prompts_with_underruns,
    }


def _epoch(value: str | None) -> float | None:
    """A `turns` timestamp as SQLite holds it (naive UTC, ISO text) in seconds since the epoch."""
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def server_turns(servers: list[Server], results: list[CallResult], turn_rows: list[dict]) -> dict:
    """The server's own turn records for the turns-mode calls: response_ms and its stages
    (`turns` columns), the silence that ended each answer, and the transcripts.

    Matched with the caller's view of the same turn (`turn_rows`, from analyse_turns), they
    split the latency heard at the caller into: the caller's speech end to the server's
    (network, jitter buffer, bridge, VAD tail), the server's response, and the server's first
    frame to the caller hearing voice (bridge, network, a quiet start of the audio), and give
    the caller's latency less the silence the endpointer waited for that answer."""
    responses: list[float] = []
    overhead: list[float] = []
    stages: dict[str, list[float]] = {"asr_ms": [], "decide_ms": [], "tts_ms": [], "playout_ms": []}
    silences: list[float] = []
    inbound: list[float] = []
    outbound: list[float] = []
    over_silence: list[float] = []
    exact = total = 0
    spoken = {
        r.call_id: [t.digits for t in (r.caller.turns if r.caller else [])]
        for r in results
        if r.mode == "turns"
    }
    heard = {  # turns where the caller was heard out (not talked over): their latency counts
        (row["call"], row["turn"]): row
        for row in turn_rows
        if "latency_ms" in row and not row["bot_spoke_during_answer"]
    }
    # the caller's clock is time.monotonic(); the server's records are wall-clock
    mono_to_wall = time.time() - time.monotonic()
    for server in servers:
        db = server.workdir / "switchboard.db"
        if not db.exists():
            continue
        try:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                rows = conn.execute(
                    "SELECT call_id, turn_index, transcript, speech_end_at, first_audio_at, "
                    "response_ms, end_silence_ms, asr_ms, decide_ms, tts_ms, playout_ms "
                    "FROM turns WHERE call_id LIKE 'bench-%-turns-%'"
                ).fetchall()
        except sqlite3.Error:
            continue
        for call_id, index, transcript, end_at, audio_at, response_ms, silence_ms, *parts in rows:
            if response_ms is not None:
                responses.append(float(response_ms))
                if silence_ms is not None:
                    silences.append(float(silence_ms))
            for name, value in zip(stages, parts, strict=True):
                if value is not None:
                    stages[name].append(float(value))
            call = str(call_id).split("@")[0]
            said = spoken.get(call, [])
            if index < len(said):
                total += 1
                exact += (spoken_digits(transcript or "") or "") == said[index]
            row = heard.get((call, index))
            if row is None:
                continue
            if silence_ms is not None:
                over_silence.append(row["latency_ms"] - float(silence_ms))
            end_wall, audio_wall = _epoch(end_at), _epoch(audio_at)
            if end_wall is not None and audio_wall is not None:
                inbound.append((end_wall - (row["speech_end_sent"] + mono_to_wall)) * 1000)
                outbound.append(((row["reply_received"] + mono_to_wall) - audio_wall) * 1000)
    # The endpointer's speech end is the last voiced frame; the response counts from there, so
    # it includes the end-of-turn silence: what is left over is the server's own work.
    if len(silences) == len(responses):
        overhead = [r - s for r, s in zip(responses, silences, strict=True)]
    return {
        "response_ms": summary(responses),
        "end_silence_ms": summary(silences),
        "overhead_ms": summary(overhead),
        "stages": {name: summary(values) for name, values in stages.items()},
        "caller_latency_over_silence_ms": summary(over_silence),
        "caller_speech_end_to_server_ms": summary(inbound),
        "server_first_frame_to_caller_ms": summary(outbound),
        "recognised_exactly": exact,
        "answers": total,
    }


def server_log_findings(servers: list[Server]) -> list[str]:
    """Warnings, errors and tracebacks in the servers' logs (each saved as server-K/server.log)."""
    findings = []
    for server in servers:
        log = server.process.log
        (server.workdir / "server.log").write_text(log)
        lines = log.splitlines()
        for number, line in enumerate(lines):
            if line.startswith("Traceback"):
                tail = next((t for t in lines[number + 1 :] if t and not t.startswith(" ")), "")
                findings.append(f"server {server.index}: Traceback ... {tail.strip()[:300]}")
            elif any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "overrun")):
                findings.append(f"server {server.index}: {line.strip()[:300]}")
    return findings


# ----------------------------------------------------------------------------- report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_report(settings: dict, report: dict) -> None:
    print("Switchboard turn latency at the caller (RTP), " + settings["when"])
    print()
    print("settings")
    for key, value in settings.items():
        if key != "when":
            print(f"  {key:<22} {value}")
    print()
    header = f"{'mode':<10}{'measure':<44}{'n':>5}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
    print(header)
    print("-" * len(header))
    if "cpu" in report:
        cpu = report["cpu"]
        print(
            f"cpu: servers used {cpu['server_cpu_s']} CPU s in {cpu['wall_s']} s "
            f"({cpu['cores_busy']} cores busy, {cpu['per_call_core_share']} of a core per call)"
        )

    def line(mode: str, what: str, stats: dict, p99: bool = True) -> None:
        print(
            f"{mode:<10}{what:<44}{stats['n']:>5}{fmt_ms(stats['p50']):>8}"
            f"{fmt_ms(stats['p95']):>8}{fmt_ms(stats['p99']) if p99 else '':>8}"
            f"{fmt_ms(stats['max']):>8}"
        )

    def note(text: str) -> None:
        print(f"{'':<10}{text}")

    modes = report["modes"]
    if "turns" in modes:
        turns = modes["turns"]
        line("turns", "end of caller speech -> bot audio, ms", turns["latency_ms"])
        replies = ", ".join(f"{k} {v}" for k, v in sorted(turns["replies"].items()))
        note(f"replies: {replies or 'none'}")
        server = report.get("server_records", {})
        if server:
            line(
                "",
                "  less the silence waited for that answer",
                server["caller_latency_over_silence_ms"],
            )
            line(
                "",
                "  caller speech end -> server's speech end",
                server["caller_speech_end_to_server_ms"],
            )
            line("", "server's own response_ms (turns table)", server["response_ms"])
            line("", "  the end-of-turn silence in it", server["end_silence_ms"])
            line("", "  response - silence (server's work)", server["overhead_ms"])
            for name, stats in server["stages"].items():
                line("", f"    {name}", stats)
            line(
                "",
                "server's first frame -> caller hears voice",
                server["server_first_frame_to_caller_ms"],
            )
            note(f"digits recognised exactly: {server['recognised_exactly']}/{server['answers']}")
    if "barge-in" in modes:
        barge = modes["barge-in"]
        line(
            "barge-in",
            "caller speech start -> bot audio stops, ms",
            barge["reaction_ms"],
            p99=False,
        )
        counts = barge["counts"]
        note(
            f"prompts stopped {counts['stopped']}, not stopped {counts['not_stopped']}, "
            f"stopped before the caller spoke {counts['stopped_before_caller_spoke']}, "
            f"unknown {counts['unknown']}"
        )
        speakers = ", ".join(f"{k} {v}" for k, v in barge["stopped_by_speaker"].items())
        note(f"stopped, by caller: {speakers}")
        talked = [r["talked_over_ms"] for r in barge["turns"] if "talked_over_ms" in r]
        if talked:
            note(
                f"where not stopped, the bot talked over the caller for a median "
                f"{np.median(talked):.0f} ms (to the prompt's end)"
            )
    if "echo" in modes:
        echo = modes["echo"]
        pct = "-" if echo["cut_short_pct"] is None else f"{echo['cut_short_pct']:.1f}%"
        print(
            f"{'echo':<10}{'questions cut short (false barge-in)':<44}{echo['prompts']:>5}"
            f"{pct:>8}   ({echo['cut_short']} of {echo['prompts']})"
        )
        note(
            f"echo sent in {echo['echo_packets']} packets, median level "
            f"{echo['echo_level_db']} dB against what was heard"
        )
    print()
    print("media, bot -> caller (all modes)")
    for key, value in report["media"].items():
        if isinstance(value, dict):
            value = ", ".join(
                f"{k} {fmt_ms(v) if v is None else f'{v:.1f}'}" for k, v in value.items()
            )
        print(f"  {key:<22} {value}")
    print()
    calls = report["calls"]
    failed = [c for c in calls if not c["sipp"].get("ok")]
    by_caller = [c for c in calls if c["sipp"].get("ended_by") == "caller"]
    print(
        f"calls: {len(calls)}, failed {len(failed)}, hung up by the caller after the wait "
        f"{len(by_caller)}; caller RTP clock: {report['engine']}"
    )
    for call in failed[:5]:
        print(f"  failed: {call['call_id']}: {call['sipp']}")
    if report["server_findings"]:
        print("server log:")
        for finding in report["server_findings"][:15]:
            print(f"  {finding}")


# ----------------------------------------------------------------------------- main


def parse_pair(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    pair = (int(low), int(high or low))
    if not 0 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 <= LOW <= HIGH, got {text}")
    return pair


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    parser.add_argument("--calls", type=int, default=4, help="concurrent calls (default 4)")
    parser.add_argument(
        "--servers",
        type=int,
        default=0,
        help=f"server processes (default: calls / {PER_SERVER_MAX}, rounded up)",
    )
    parser.add_argument("--turns", type=int, default=4, help="questions per call (default 4)")
    parser.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU")
    parser.add_argument("--echo-db", type=float, default=-10.0, help="echo gain (default -10)")
    parser.add_argument("--echo-ms", type=float, default=60.0, help="echo delay (default 60)")
    parser.add_argument(
        "--end-silence-ms",
        type=int,
        default=None,
        help="server [vad] end_silence_ms (default: the server's)",
    )
    parser.add_argument(
        "--server-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other server setting, e.g. vad.aggressiveness=3 (repeatable)",
    )
    parser.add_argument(
        "--dialplan",
        type=Path,
        default=DIALPLAN,
        help="the dialplan (default bench/dialplans/turns.yaml)",
    )
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--pause-ms",
        type=parse_pair,
        default=(200, 400),
        help="pause between the caller's digits, LOW,HIGH (default 200,400)",
    )
    parser.add_argument(
        "--answer-after-ms",
        type=float,
        default=600,
        help="the caller answers this long after the question ends",
    )
    parser.add_argument(
        "--barge-at-ms",
        type=parse_pair,
        default=(1000, 2000),
        help="barge-in this far into the question, LOW,HIGH (default 1000,2000)",
    )
    parser.add_argument(
        "--voiced-dbfs",
        type=float,
        default=-50.0,
        help="a packet is voiced above this mean power (default -50 dBFS)",
    )
    parser.add_argument("--late-ms", type=float, default=40.0)
    parser.add_argument(
        "--cut-tolerance-ms",
        type=float,
        default=300.0,
        help="a prompt is cut short when it stops this much before its end",
    )
    parser.add_argument(
        "--stagger-ms", type=float, default=250.0, help="between call starts (default 250)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write settings and results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    args.servers = args.servers or math.ceil(args.calls / PER_SERVER_MAX)
    if args.servers < 1 or args.servers > args.calls:
        parser.error("--servers must be between 1 and --calls")
    if math.ceil(args.calls / args.servers) > PER_SERVER_MAX:
        parser.error(
            f"{args.calls} calls on {args.servers} servers is more than "
            f"{PER_SERVER_MAX} per server (PJSIP's limit in this build): "
            f"use --servers {math.ceil(args.calls / PER_SERVER_MAX)}"
        )
    return args


def server_overrides(args: argparse.Namespace, plans: Path, routes: Path) -> dict[str, str]:
    overrides = {
        "SWITCHBOARD_DIALPLANS__DIR": str(plans),
        "SWITCHBOARD_SIP__ROUTES": str(routes),
        "SWITCHBOARD_STATE__URL": "memory://",
    }
    if args.end_silence_ms is not None:
        overrides["SWITCHBOARD_VAD__END_SILENCE_MS"] = str(args.end_silence_ms)
    for item in args.server_set:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise SystemExit(f"--server-set: expected SECTION.KEY=VALUE, got {item!r}")
        overrides[f"SWITCHBOARD_{section.upper()}__{name.upper().replace('.', '__')}"] = value
    return overrides


def install_dialplan(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, dict]:
    text = args.dialplan.read_text()
    if TURNS_PATTERN not in text:
        raise SystemExit(f"{args.dialplan}: no {TURNS_PATTERN!r} turn count to set")
    text = text.replace(TURNS_PATTERN, f"x{{{args.turns}}}")
    plans = workdir / "dialplans"
    plans.mkdir(parents=True)
    (plans / "turns.yaml").write_text(text)
    routes = workdir / "routes.toml"
    routes.write_text(f'[[route]]\nnumber = "{SERVICE}"\ndialplan = "turns"\n')
    return plans, routes, yaml.safe_load(text)


def check_tools(args: argparse.Namespace) -> None:
    if shutil.which(SIPP) is None:
        raise SystemExit("sipp not found on PATH: install the 'sip-tester' package (apt-get)")
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found on PATH: install the 'espeak-ng' package")
    if not (args.data / "fsdd").is_dir():
        raise SystemExit(f"no FSDD recordings under {args.data}/fsdd (give --data)")
    if not args.dialplan.is_file():
        raise SystemExit(f"dialplan {args.dialplan} not found")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: no server or sipp left behind


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    check_tools(args)
    modes = list(MODES) if args.mode == "all" else [args.mode]
    workdir = Path(tempfile.mkdtemp(prefix="turn-latency-"))
    plans, routes, plan = install_dialplan(args, workdir)
    overrides = server_overrides(args, plans, routes)
    try:
        config = load_config(None, {**os.environ, **overrides})
    except ConfigError as exc:
        raise SystemExit(f"server settings: {exc}") from None
    ask = (plan.get("steps") or {}).get(ASK_STEP) or {}
    prompts = static_prompts(plan)
    if ASK_STEP not in prompts:
        raise SystemExit(f"{args.dialplan}: needs a static `{ASK_STEP}` ask step")
    tts = server_tts(config)
    refs = [
        prompt_ref(name, text, synthesise(tts, None, text, args.codec), args.voiced_dbfs)
        for name, text in prompts.items()
    ]
    ask_ref = next(r for r in refs if r.name == ASK_STEP)

    per_server = [len(range(i, args.calls, args.servers)) for i in range(args.servers)]
    vad = asdict(config.vad)
    settings = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "servers": f"{args.servers} x switchboard serve, calls per server {per_server}",
        "calls": f"{args.calls} concurrent, {args.turns} questions each, "
        f"started {args.stagger_ms:.0f} ms apart",
        "modes": ", ".join(modes),
        "codec": args.codec,
        "server [vad]": ", ".join(f"{k}={v}" for k, v in vad.items()),
        "end of speech": f"[vad] end_silence_ms={vad.get('end_silence_ms')}"
        + (f", ask end_silence_ms={ask['end_silence_ms']}" if "end_silence_ms" in ask else ""),
        "barge-in": f"ask barge_in={ask.get('barge_in', '(not set: server default)')}; "
        f"caller barges in {args.barge_at_ms[0]}-{args.barge_at_ms[1]} ms into the question",
        "question": f"{ask_ref.full_ms} ms of speech: {ask_ref.text!r}",
        "engines": choose_engines(config).summary,
        "echo (echo mode)": f"{args.echo_db:g} dB, {args.echo_ms:g} ms delay, caller silent",
        "caller speech": f"FSDD {'/'.join(SPEAKERS)}, 4 digits, pauses "
        f"{args.pause_ms[0]}-{args.pause_ms[1]} ms, answers {args.answer_after_ms:.0f} ms "
        f"after the question; {args.data}",
        "thresholds": f"voiced > {args.voiced_dbfs:g} dBFS, stop = {STOP_FRAMES * FRAME_MS} ms "
        f"of silence, late > {args.late_ms:g} ms, cut short = > {args.cut_tolerance_ms:g} ms "
        "before the end",
        "server overrides": " ".join(
            f"{k}={v}" for k, v in overrides.items() if "DIALPLANS" not in k and "ROUTES" not in k
        ),
    }

    sipp = SippCalls()
    engine = RtpEngine()
    servers: list[Server] = []
    results: list[CallResult] = []
    report: dict = {"modes": {}}
    started = time.monotonic()
    ok = False
    try:
        print(f"starting {args.servers} server(s)...", file=sys.stderr)
        start_servers(servers, args.servers, per_server, overrides, workdir)
        engine.start()
        cpu_start = (time.monotonic(), sum(process_cpu_s(s.process.process.pid) for s in servers))
        run_id = f"{os.getpid()}{int(time.time()) % 100000}"
        for mode in modes:
            print(f"{mode}: {args.calls} calls...", file=sys.stderr)
            mode_results = run_mode(mode, args, servers, refs, engine, sipp, run_id, workdir)
            results.extend(mode_results)
            if mode == "turns":
                report["modes"][mode] = analyse_turns(mode_results, args.voiced_dbfs)
            elif mode == "barge-in":
                report["modes"][mode] = analyse_barge_in(mode_results, args.cut_tolerance_ms)
            else:
                report["modes"][mode] = analyse_echo(mode_results, args.cut_tolerance_ms)
        wall = time.monotonic() - cpu_start[0]
        used = sum(process_cpu_s(s.process.process.pid) for s in servers) - cpu_start[1]
        report["cpu"] = {
            "server_cpu_s": round(used, 1),
            "wall_s": round(wall, 1),
            "cores_busy": round(used / wall, 2),
            "per_call_core_share": round(used / wall / args.calls, 3),
        }
        ok = True
    except KeyboardInterrupt:
        print("interrupted: stopping calls and servers", file=sys.stderr)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        sipp.kill_all()
        engine.stop()
        exit_codes = {s.index: s.process.stop() for s in servers}
    if not ok:
        print(f"work directory kept: {workdir}", file=sys.stderr)
        return 1
    report["media"] = analyse_media(results, args.late_ms)
    if "turns" in modes:
        report["server_records"] = server_turns(servers, results, report["modes"]["turns"]["turns"])
    for mode in modes:
        heard = [r for r in results if r.mode == mode and r.peer.received]
        if heard and not any(o.ref.name == ASK_STEP for r in heard for o in r.occurrences):
            print(
                f"WARNING: {mode}: the question was never recognised in the received audio; "
                "does the server speak with other TTS settings than it was configured with?",
                file=sys.stderr,
            )
    report["server_findings"] = server_log_findings(servers) + [
        f"server {i}: exit code {code} on SIGTERM" for i, code in exit_codes.items() if code
    ]
    report["engine"] = (
        f"{engine.stats.late_sends}/{engine.stats.ticks} ticks sent > 10 ms late, "
        f"max {engine.stats.max_send_lateness_ms:.0f} ms, {engine.stats.skipped_ticks} skipped"
    )
    report["calls"] = [
        {
            "call_id": r.call_id,
            "mode": r.mode,
            "server": r.server,
            "sipp": r.sipp,
            "packets_received": len(r.peer.received),
            "packets_sent": len(r.peer.sent),
            "prompts": [asdict(p) for p in r.plays],
        }
        for r in results
    ]
    report["wall_s"] = round(time.monotonic() - started, 1)
    settings["when"] += f", {report['wall_s']} s"
    print_report(settings, report)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, **report}, indent=2, default=str))
        print(f"\nwritten: {args.json}")
    failed = any(not c["sipp"].get("ok") for c in report["calls"])
    if args.keep or failed or report["server_findings"]:
        print(f"work directory: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
