"""A scripted caller: the actions of one scenario call, played on the RTP engine's clock.

`ScriptedCaller` is an `app.eval.rtp.Behaviour`: the engine thread asks it for the caller's
next 20 ms every tick, so it never blocks and allocates nothing per frame (a `say` is cut into
frames before the call). Before a `say` or `dtmf` (unless told otherwise) and at a
`wait_for_bot`, it waits for the bot's turn to be over: voice heard since the caller's last
input ended, then `quiet_ms` without any. A bot that does not get there within `bot_timeout_ms`
fails the call, and the caller hangs up.

`turn_latencies` measures on the wire what a caller waits, as bench/turn_latency.py does: from
the caller's last voiced packet sent (for keys: the first packet of the last key's event, the
moment the server learns the key) to the first voiced packet of the bot's reply received. An
input the bot talked over is not a turn: its latency is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.eval.rtp import FRAME_BYTES, FRAME_S, SILENT_FRAME, Received, RtpPeer, Sent, frame_dbfs
from app.eval.scenario import Action, CallSpec, Dtmf, Hangup, Say, Wait, WaitForBot

VOICED_DBFS = -50.0
"""A received or sent packet louder than this (mean power) carries voice."""


@dataclass
class Input:
    """Something the caller said or keyed, as sent: indexes into `RtpPeer.sent`."""

    action: int
    """1-based, as in the scenario."""
    kind: str
    """Either "say" or "dtmf"."""
    first_sent: int
    last_sent: int
    text: str | None = None


@dataclass
class _Frames:
    """A `say` cut into frames before the call, with which frames carry voice."""

    frames: list[bytes]
    voiced: list[bool]


def _frames(pcm: bytes, voiced_dbfs: float) -> _Frames:
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    frames = [pcm[k : k + FRAME_BYTES] for k in range(0, len(pcm), FRAME_BYTES)]
    return _Frames(frames, [frame_dbfs(f) > voiced_dbfs for f in frames])


class ScriptedCaller:
    """Plays `spec.actions` in order; engine thread only, except the flags the runner reads."""

    def __init__(self, spec: CallSpec, voiced_dbfs: float = VOICED_DBFS) -> None:
        self.spec = spec
        self.voiced_dbfs = voiced_dbfs
        self.inputs: list[Input] = []
        self.failures: list[str] = []
        self.index = 0
        """The action in progress (0-based); len(actions) once all are done."""
        self.finished = False
        """Every action done (or abandoned after a failure): the caller only listens now."""
        self.hangup_requested = False
        """The runner should hang up (a `hangup` action, or a failure)."""
        self._say = {
            i: _frames(a.pcm, voiced_dbfs) for i, a in enumerate(spec.actions) if isinstance(a, Say)
        }
        self._phase = "start"
        self._mark: float | None = None
        """When the caller's last input ended (the answer, before the first)."""
        self._last_voiced_rx: float | None = None
        self._started_at = 0.0
        self._position = 0
        self._input: Input | None = None
        self._keys_before = 0
        self._gap = 0

    # ------------------------------------------------------------------ Behaviour

    def on_received(self, peer: RtpPeer, packet: Received) -> None:
        if packet.dbfs > self.voiced_dbfs:
            self._last_voiced_rx = packet.arrival

    def next_frame(self, peer: RtpPeer, at: float) -> tuple[bytes, str]:
        if self._mark is None:
            self._mark = at
        actions = self.spec.actions
        while not self.finished:
            if self.index >= len(actions):
                self.finished = True
                break
            action = actions[self.index]
            if self._phase == "start":
                self._started_at = at
                self._phase = "bot" if _quiet_ms(action) is not None else "go"
            if self._phase == "bot":
                state = self._bot_turn(at, _quiet_ms(action) or 0)
                if state == "wait":
                    return SILENT_FRAME, "silence"
                if state == "timeout":
                    self._fail(
                        f"action {self.index + 1} ({action.label}): the bot did not speak and "
                        f"fall silent within {self.spec.bot_timeout_ms / 1000:g} s"
                    )
                    break
                self._phase = "go"
                self._started_at = at
            frame = self._perform(peer, action, at)
            if frame is not None:
                return frame
            self.index += 1
            self._phase = "start"
        return SILENT_FRAME, "silence"

    # ------------------------------------------------------------------ steps

    def _bot_turn(self, at: float, quiet_ms: int) -> str:
        """Is the bot's turn over? "done" once it spoke after the caller's last input and then
        fell quiet for `quiet_ms`; "timeout" after `bot_timeout_ms`; else "wait"."""
        heard, mark = self._last_voiced_rx, self._mark
        spoke = heard is not None and mark is not None and heard > mark
        if spoke and at - (heard or 0.0) >= quiet_ms / 1000:
            return "done"
        if at - self._started_at > self.spec.bot_timeout_ms / 1000:
            return "timeout"
        return "wait"

    def _perform(self, peer: RtpPeer, action: Action, at: float) -> tuple[bytes, str] | None:
        """The action's next frame, or None when it is over."""
        if isinstance(action, Say):
            return self._speak(peer, action, at)
        if isinstance(action, Dtmf):
            return self._keys(peer, action, at)
        if isinstance(action, Wait):
            if at - self._started_at >= action.ms / 1000 - FRAME_S / 2:
                return None
            return SILENT_FRAME, "silence"
        if isinstance(action, Hangup):
            self.hangup_requested = True
            self.finished = True
            return SILENT_FRAME, "silence"
        if isinstance(action, WaitForBot):
            return None  # the waiting was the bot phase
        raise TypeError(f"not an action: {action!r}")

    def _speak(self, peer: RtpPeer, action: Say, at: float) -> tuple[bytes, str] | None:
        say = self._say[self.index]
        if self._input is None:
            self._input = Input(self.index + 1, "say", -1, -1, action.text)
            self._position = 0
        if self._position < len(say.frames):
            index = self._position
            self._position += 1
            if say.voiced[index]:
                if self._input.first_sent < 0:
                    self._input.first_sent = len(peer.sent)
                self._input.last_sent = len(peer.sent)
            return say.frames[index], "speech"
        if self._input.first_sent >= 0:
            self.inputs.append(self._input)
        self._input = None
        self._mark = at
        return None

    def _keys(self, peer: RtpPeer, action: Dtmf, at: float) -> tuple[bytes, str] | None:
        """One key at a time: the peer sends its events in place of our frames (so this is
        called again only once the key is out), then `gap_ms` of silence before the next."""
        if self._input is None:
            self._input = Input(self.index + 1, "dtmf", -1, -1, None)
            self._position = 0
            self._gap = 0
            self._keys_before = len(peer.key_starts)
        if self._gap > 0:
            self._gap -= 1
            return SILENT_FRAME, "silence"
        if self._position < len(action.keys):
            peer.press(action.keys[self._position], action.key_ms)
            self._position += 1
            if self._position < len(action.keys):
                self._gap = action.gap_ms // 20
            return SILENT_FRAME, "silence"
        started = peer.key_starts[self._keys_before :]
        if started:
            self._input.first_sent, self._input.last_sent = started[0][1], started[-1][1]
            self.inputs.append(self._input)
        self._input = None
        self._mark = at
        return None

    def _fail(self, reason: str) -> None:
        self.failures.append(reason)
        self.hangup_requested = True
        self.finished = True

    # ------------------------------------------------------------------ after the call

    def unperformed(self) -> list[str]:
        """Labels of the `say` and `dtmf` actions the call ended before (or in the middle of)."""
        if self.finished and not self.failures:
            return []
        left = self.spec.actions[self.index :]
        return [
            f"action {self.index + 1 + offset} ({action.label})"
            for offset, action in enumerate(left)
            if isinstance(action, Say | Dtmf)
        ]


def _quiet_ms(action: Action) -> int | None:
    """How long the bot must have been quiet before `action` starts (None: no waiting)."""
    if isinstance(action, Say | Dtmf):
        return action.wait_quiet_ms
    if isinstance(action, WaitForBot):
        return action.quiet_ms
    return None


# -------------------------------------------------------------------------- latency


@dataclass
class TurnLatency:
    """The wait after one caller input, on the wire."""

    action: int
    kind: str
    latency_ms: float | None
    """None: no reply before the caller's next input (or the end of the call)."""
    overlap: bool
    """The bot spoke while the caller was still giving the input: not a turn, not counted."""
    input_end: float = field(repr=False, default=0.0)
    """time.monotonic() of the input's last packet sent."""

    @property
    def counted(self) -> bool:
        return self.latency_ms is not None and not self.overlap


def turn_latencies(
    inputs: Sequence[Input],
    sent: Sequence[Sent],
    received: Sequence[Received],
    voiced_dbfs: float = VOICED_DBFS,
) -> list[TurnLatency]:
    """The caller's wait after each input: its last packet sent -> the first voiced packet
    received after it and before the next input starts (`received` in arrival order)."""
    turns = []
    for number, item in enumerate(inputs):
        if not 0 <= item.first_sent <= item.last_sent < len(sent):
            continue
        start, end = sent[item.first_sent].sent, sent[item.last_sent].sent
        following = inputs[number + 1] if number + 1 < len(inputs) else None
        limit = (
            sent[following.first_sent].sent
            if following is not None and 0 <= following.first_sent < len(sent)
            else float("inf")
        )
        overlap = False
        reply: float | None = None
        for packet in received:
            if packet.dbfs <= voiced_dbfs or packet.arrival <= start:
                continue
            if packet.arrival <= end:
                overlap = True
            elif packet.arrival < limit:
                reply = packet.arrival
                break
            else:
                break
        latency = None if reply is None else round((reply - end) * 1000, 1)
        turns.append(TurnLatency(item.action, item.kind, latency, overlap, end))
    return turns
