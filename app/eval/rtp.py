"""A caller's RTP endpoint: what a phone's media stack does, measured.

Used by `switchboard eval calls` (scripted callers) and the turn-latency benchmark
(bench/turn_latency.py). sipp does the signalling and puts this endpoint's port in its SDP
offer; the endpoint does the media. One `RtpEngine` thread serves every call of a run: each
20 ms tick of one absolute clock (tick k is due at start + k * 20 ms, so sleeping late never
drifts the cadence; a late wake-up sends the overdue packets at once, as a phone's clock would)
it asks each call's `Behaviour` for the next 20 ms of caller audio, encodes it as G.711 and
sends it; between ticks it reads what arrived and logs every packet with its arrival time,
sequence number, timestamp and decoded energy.

Keys go out as RFC 4733 telephone-events in the same stream, as a phone sends them
(`RtpPeer.press`): the audio pauses for the key, one event packet per tick with the event's
start timestamp and a growing duration (the first with the marker bit), then the end packet
(E bit) three times, one tick apart, with one sequence number; the RTP clock runs on
throughout, so the audio after the key resumes at the right timestamp.

The far end's address is learnt from its first packet (symmetric RTP: a server sends from the
port it receives on, which is the port of its SDP answer), so nothing is sent before the call
is answered and no SDP has to be parsed. An `Echo` feeds back a delayed, attenuated copy of
what was heard, mixed into what the behaviour sends, like a handset whose speaker leaks into
its microphone.

`rtp_stats` sums up the received stream: sequence gaps (lost packets), duplicates, reordering,
packets late against their own timestamps, timestamp jumps.
"""

from __future__ import annotations

import contextlib
import math
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.media.audio import CALL_RATE, FRAME_MS, frame_bytes, frame_samples
from app.media.g711 import Codec

HOST = "127.0.0.1"
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = frame_bytes(CALL_RATE)
SAMPLES_PER_FRAME = frame_samples(CALL_RATE)
SILENT_FRAME = bytes(FRAME_BYTES)
RTP_HEADER = struct.Struct("!BBHII")
MAX_BURST = 25
"""Most overdue ticks sent at once after a stall (0.5 s); older ones are skipped and counted."""
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: the kernel stamps each datagram on arrival (CLOCK_REALTIME, a struct timespec), so a
busy machine that wakes the engine late does not make the server's packets look late."""
_TIMESPEC = struct.Struct("@qq")
TELEPHONE_EVENT_PT = 101
"""The payload type offered for telephone-event/8000 (as the server's own sipp tests do)."""
DTMF_EVENTS = {key: code for code, key in enumerate("0123456789*#ABCD")}
"""RFC 4733 event codes of the keypad keys."""
DTMF_VOLUME = 10
"""-10 dBm0, what phones send."""
END_REPEATS = 3
"""The end packet of an event is sent this many times (RFC 4733 2.5.1.4)."""
KEY_MS = 100
"""How long a key is held by default."""
_EVENT = struct.Struct("!BBH")


def frame_dbfs(pcm: bytes) -> float:
    """Mean power of 16-bit PCM in dB relative to full scale (-120 for digital silence)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return -120.0
    power = float(np.mean(samples * samples)) / (32768.0 * 32768.0)
    return 10 * math.log10(power) if power > 1e-12 else -120.0


def scale_pcm(pcm: bytes, gain_db: float) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def mix_pcm(a: bytes, b: bytes) -> bytes:
    total = np.frombuffer(a, dtype="<i2").astype(np.int32) + np.frombuffer(b, dtype="<i2")
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


@dataclass(slots=True)
class Received:
    """One RTP packet as the caller got it."""

    arrival: float
    """time.monotonic() when read from the socket."""
    seq: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    pcm: bytes
    """The payload decoded to 16-bit PCM (empty for a payload type other than the codec's)."""
    dbfs: float
    zero: bool
    """Digital silence: every decoded sample is 0 (what a server sends when it has nothing)."""


@dataclass(slots=True)
class Sent:
    scheduled: float
    sent: float
    seq: int
    kind: str
    """What the behaviour sent: "speech", "silence"; "+echo" when echo was mixed in; "dtmf" for
    a telephone-event packet."""
    dbfs: float


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One tick's telephone-event payload."""

    payload: bytes
    marker: bool
    """The first packet of the event."""
    new_seq: bool
    """False for a repeat of the end packet: it goes out with the end packet's sequence number."""


def telephone_event(key: str, duration_ms: int = KEY_MS) -> list[EventPacket]:
    """The RFC 4733 packets of one key held `duration_ms` (rounded down to whole ticks, at least
    one), one per tick: updates with the duration so far, then the end packet three times."""
    code = DTMF_EVENTS.get(key.upper()) if len(key) == 1 else None
    if code is None:
        raise ValueError(f"not a DTMF key: {key!r} (keys are 0-9, *, #, A-D)")
    if not 0 < duration_ms <= 5000:
        raise ValueError(f"a key is held 1-5000 ms, got {duration_ms}")
    frames = max(1, duration_ms // FRAME_MS)
    packets = [
        EventPacket(_EVENT.pack(code, DTMF_VOLUME, (i + 1) * SAMPLES_PER_FRAME), i == 0, True)
        for i in range(frames)
    ]
    end = _EVENT.pack(code, 0x80 | DTMF_VOLUME, frames * SAMPLES_PER_FRAME)
    packets += [EventPacket(end, False, repeat == 0) for repeat in range(END_REPEATS)]
    return packets


class Behaviour(Protocol):
    """What the caller does; called on the engine thread, so it must not block."""

    def next_frame(self, peer: RtpPeer, at: float) -> tuple[bytes, str]:
        """The caller's next 20 ms (16-bit PCM, `FRAME_BYTES` long) and a label for it; `at` is
        the tick's scheduled time (time.monotonic() clock)."""
        ...

    def on_received(self, peer: RtpPeer, packet: Received) -> None:
        """A packet arrived (already appended to `peer.received`)."""
        ...


class Silent:
    """A caller that says nothing."""

    def next_frame(self, peer: RtpPeer, at: float) -> tuple[bytes, str]:
        return SILENT_FRAME, "silence"

    def on_received(self, peer: RtpPeer, packet: Received) -> None:
        pass


class Echo:
    """The far end's audio fed back `delay_ms` later at `gain_db` (negative: quieter).

    Frames are replayed one per tick in arrival order once they are `delay_ms` old; a burst of
    late packets therefore comes back spread out, as through a phone's playout buffer.
    """

    def __init__(self, delay_ms: float, gain_db: float) -> None:
        if delay_ms < 0:
            raise ValueError(f"echo delay must be >= 0 ms, got {delay_ms}")
        self.delay_s = delay_ms / 1000
        self.gain_db = gain_db
        self._queue: deque[tuple[float, bytes]] = deque()

    def push(self, arrival: float, pcm: bytes) -> None:
        if pcm:
            self._queue.append((arrival, pcm))

    def pull(self, at: float) -> bytes | None:
        while len(self._queue) > 3 and self._queue[2][0] <= at - self.delay_s:
            self._queue.popleft()  # more than a few frames overdue: keep the delay bounded
        if self._queue and self._queue[0][0] <= at - self.delay_s:
            return scale_pcm(self._queue.popleft()[1], self.gain_db)
        return None


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Sockets on an even port P (RTP) and P+1 (RTCP, read and discarded)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 60000, 2)
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        for sock in (rtp, rtcp):
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return rtp, rtcp
    raise RuntimeError("no free pair of UDP ports for RTP/RTCP on loopback after 200 tries")


_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's arrival stamp on the time.monotonic() clock (now, if there is none)."""
    now = time.monotonic()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return now - (time.time() - (seconds + nanoseconds / 1e9))
    return now


class RtpPeer:
    """One call's media: sends what `behaviour` says, logs what arrives."""

    def __init__(
        self,
        name: str,
        behaviour: Behaviour,
        codec: str = "PCMU",
        echo: Echo | None = None,
        host: str = HOST,
    ) -> None:
        self.name = name
        self.behaviour = behaviour
        self.law = Codec.from_name(codec)
        self.codec = self.law.name
        self.payload_type = self.law.payload_type
        self.echo = echo
        self.host = host
        self.rtp, self.rtcp = _bind_pair(host)
        self.port = self.rtp.getsockname()[1]
        self.kernel_timestamps = False
        """Arrival times come from the kernel (else: when the engine read the packet)."""
        with contextlib.suppress(OSError):
            self.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_timestamps = True
        self.remote: tuple[str, int] | None = None
        self.answered_at: float | None = None
        """Arrival time of the first packet from the far end."""
        self.received: list[Received] = []
        self.sent: list[Sent] = []
        self.other_packets = 0
        """Packets that were not RTP of our codec (RFC 4733 events, garbage, other sources)."""
        self.skipped_ticks = 0
        self.closed = False
        self.dtmf_payload_type = TELEPHONE_EVENT_PT
        self.key_starts: list[tuple[str, int]] = []
        """(key, index in `sent` of its first event packet) for every key sent."""
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._first_sent = True
        self._keys: deque[tuple[str, list[EventPacket]]] = deque()
        self._event: list[EventPacket] | None = None
        self._event_at = 0
        self._event_timestamp = 0

    def press(self, key: str, duration_ms: int = KEY_MS) -> None:
        """Queue a key: it goes out as RFC 4733 events from the next free tick, in place of
        the behaviour's audio (which is not asked for frames meanwhile)."""
        self._keys.append((key, telephone_event(key, duration_ms)))

    @property
    def dtmf_busy(self) -> bool:
        """A key is being sent or waits to be."""
        return self._event is not None or bool(self._keys)

    # ----------------------------------------------------------------- engine thread

    def read(self) -> None:
        """Drain the RTP socket (and discard RTCP); each packet is stamped with its arrival."""
        while True:
            try:
                data, ancillary, _, address = self.rtp.recvmsg(4096, _ANCILLARY_SIZE)
            except OSError:  # nothing more (BlockingIOError) or closed
                break
            self._on_datagram(data, address, _arrival(ancillary))
        while True:
            try:
                self.rtcp.recv(4096)
            except OSError:
                break

    def _on_datagram(self, data: bytes, address: tuple[str, int], now: float) -> None:
        if len(data) < RTP_HEADER.size or data[0] >> 6 != 2:
            self.other_packets += 1
            return
        if self.remote is None:
            self.remote = address
            self.answered_at = now
        elif address != self.remote:
            self.other_packets += 1
            return
        first, second, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
        offset = RTP_HEADER.size + 4 * (first & 0x0F)
        if first & 0x10 and len(data) >= offset + 4:  # header extension
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        payload = data[offset:]
        if first & 0x20 and payload:  # padding
            payload = payload[: -payload[-1]]
        payload_type = second & 0x7F
        if payload_type != self.payload_type:
            self.other_packets += 1
            return
        pcm = self.law.decode(payload)
        packet = Received(
            arrival=now,
            seq=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload_type=payload_type,
            marker=bool(second & 0x80),
            pcm=pcm,
            dbfs=frame_dbfs(pcm),
            zero=not pcm.strip(b"\x00"),
        )
        self.received.append(packet)
        if self.echo is not None:
            self.echo.push(now, pcm)
        self.behaviour.on_received(self, packet)

    def tick(self, scheduled: float) -> None:
        """Send the caller's next frame (nothing until the far end has been heard)."""
        if self.remote is None or self.closed:
            return
        if self._event is None and self._keys:
            key, self._event = self._keys.popleft()
            self._event_at = 0
            self._event_timestamp = self._timestamp
            self.key_starts.append((key, len(self.sent)))
        if self._event is not None:
            self._send_event(scheduled)
            return
        pcm, kind = self.behaviour.next_frame(self, scheduled)
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"behaviour gave {len(pcm)} bytes, a frame is {FRAME_BYTES}")
        if self.echo is not None:
            echoed = self.echo.pull(scheduled)
            if echoed is not None:
                pcm = mix_pcm(pcm, echoed)
                kind += "+echo"
        header = RTP_HEADER.pack(
            0x80,
            (0x80 if self._first_sent else 0) | self.payload_type,
            self._seq,
            self._timestamp,
            self._ssrc,
        )
        with contextlib.suppress(OSError):  # ICMP unreachable after the far end has gone
            self.rtp.sendto(header + self.law.encode(pcm), self.remote)
        self.sent.append(Sent(scheduled, time.monotonic(), self._seq, kind, frame_dbfs(pcm)))
        self._first_sent = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF

    def _send_event(self, scheduled: float) -> None:
        assert self._event is not None
        packet = self._event[self._event_at]
        seq = self._seq if packet.new_seq else (self._seq - 1) & 0xFFFF
        header = RTP_HEADER.pack(
            0x80,
            (0x80 if packet.marker else 0) | self.dtmf_payload_type,
            seq,
            self._event_timestamp,
            self._ssrc,
        )
        with contextlib.suppress(OSError):
            self.rtp.sendto(header + packet.payload, self.remote)
        self.sent.append(Sent(scheduled, time.monotonic(), seq, "dtmf", -120.0))
        if packet.new_seq:
            self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        self._event_at += 1
        if self._event_at >= len(self._event):
            self._event = None
            self._first_sent = True  # the audio after a key starts a talkspurt

    def skip(self) -> None:
        """A tick the engine could not serve in time: the RTP clock still advances."""
        if self.remote is not None and not self.closed:
            self.skipped_ticks += 1
            self._seq = (self._seq + 1) & 0xFFFF
            self._timestamp = (self._timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF

    def close(self) -> None:
        self.closed = True
        for sock in (self.rtp, self.rtcp):
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class EngineStats:
    ticks: int = 0
    late_sends: int = 0
    """Ticks served more than 10 ms after they were due (the caller's own jitter)."""
    max_send_lateness_ms: float = 0.0
    skipped_ticks: int = 0


class RtpEngine:
    """The one thread that times and moves every call's packets."""

    def __init__(self) -> None:
        self._peers: list[RtpPeer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtp-engine", daemon=True)
        self.stats = EngineStats()
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def add(self, peer: RtpPeer) -> None:
        with self._lock:
            self._peers.append(peer)

    def remove(self, peer: RtpPeer) -> None:
        """Stop serving `peer` and close its sockets (takes effect within a tick)."""
        with self._lock:
            if peer in self._peers:
                self._peers.remove(peer)
        time.sleep(2 * FRAME_S)  # let a tick in progress finish with it
        peer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by the caller: a dead engine is a failed run
            self.error = exc

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        registered: dict[int, RtpPeer] = {}
        start = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            with self._lock:
                peers = list(self._peers)
            current = {id(p): p for p in peers}
            for key in list(registered):
                if key not in current:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        selector.unregister(registered[key].rtp)
                    del registered[key]
            for key, peer in current.items():
                if key not in registered:
                    selector.register(peer.rtp, selectors.EVENT_READ, peer)
                    registered[key] = peer
            due = start + tick * FRAME_S
            now = time.monotonic()
            if due > now:
                events = selector.select(min(due - now, FRAME_S)) if registered else []
                if not registered:
                    time.sleep(min(due - now, FRAME_S))
                for key, _ in events:
                    key.data.read()
                now = time.monotonic()
                if now < due:
                    continue
            # serve every tick that is due, oldest first (a stall sends a short burst)
            overdue = int((now - due) / FRAME_S)
            if overdue > MAX_BURST:
                for _ in range(overdue - MAX_BURST):
                    for peer in peers:
                        peer.skip()
                self.stats.skipped_ticks += overdue - MAX_BURST
                tick += overdue - MAX_BURST
                due = start + tick * FRAME_S
            while due <= now:
                for peer in peers:
                    peer.read()
                    peer.tick(due)
                lateness = (time.monotonic() - due) * 1000
                self.stats.ticks += 1
                if lateness > 10:
                    self.stats.late_sends += 1
                self.stats.max_send_lateness_ms = max(self.stats.max_send_lateness_ms, lateness)
                tick += 1
                due = start + tick * FRAME_S
        selector.close()


# ------------------------------------------------------------------------- received stream


@dataclass
class RtpStats:
    """The received stream of one call, or several added up."""

    packets: int = 0
    lost: int = 0
    """Sequence numbers never received (gaps)."""
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    """Packets more than `late_ms` behind the best-case arrival their timestamp implies."""
    max_lateness_ms: float = 0.0
    max_interarrival_ms: float = 0.0
    timestamp_jumps: int = 0
    """Consecutive packets whose timestamps differ by other than 160 per sequence step."""
    ssrc_changes: int = 0
    lateness_ms: list[float] = field(default_factory=list, repr=False)

    def add(self, other: RtpStats) -> None:
        self.packets += other.packets
        self.lost += other.lost
        self.duplicates += other.duplicates
        self.reordered += other.reordered
        self.late += other.late
        self.max_lateness_ms = max(self.max_lateness_ms, other.max_lateness_ms)
        self.max_interarrival_ms = max(self.max_interarrival_ms, other.max_interarrival_ms)
        self.timestamp_jumps += other.timestamp_jumps
        self.ssrc_changes += other.ssrc_changes
        self.lateness_ms.extend(other.lateness_ms)


def rtp_stats(packets: Sequence[Received], late_ms: float = 40.0) -> RtpStats:
    """Loss, duplicates, reordering and lateness of a received stream (arrival order).

    Lateness: each packet's arrival minus its timestamp's time, relative to the earliest such
    difference in its segment (a segment ends where the SSRC changes or the timestamps jump),
    i.e. how much later than the stream's best case it came: a smooth 20 ms stream is 0 ms
    throughout; a sender that stalls 100 ms and then bursts makes its packets up to 100 ms late.
    """
    stats = RtpStats(packets=len(packets))
    if not packets:
        return stats
    seen: set[int] = set()
    highest: int | None = None
    extended: list[int] = []
    cycles = 0
    previous_seq: int | None = None
    for packet in packets:
        if previous_seq is not None and packet.seq < 0x1000 and previous_seq > 0xF000:
            cycles += 1
        previous_seq = packet.seq
        ext = cycles * 0x10000 + packet.seq
        extended.append(ext)
        if ext in seen:
            stats.duplicates += 1
            continue
        if highest is not None and ext < highest:
            stats.reordered += 1
        seen.add(ext)
        highest = ext if highest is None else max(highest, ext)
    stats.lost = max(0, (max(seen) - min(seen) + 1) - len(seen))

    # segments of consistent timing
    segment: list[tuple[float, float]] = []  # (arrival, media time)
    segments = [segment]
    media_base = 0.0
    for index, packet in enumerate(packets):
        if index:
            before = packets[index - 1]
            stats.max_interarrival_ms = max(
                stats.max_interarrival_ms, (packet.arrival - before.arrival) * 1000
            )
            steps = extended[index] - extended[index - 1]
            ts_step = (packet.timestamp - before.timestamp) & 0xFFFFFFFF
            if packet.ssrc != before.ssrc:
                stats.ssrc_changes += 1
                segment = []
                segments.append(segment)
            elif steps > 0 and ts_step != steps * SAMPLES_PER_FRAME:
                stats.timestamp_jumps += 1
                segment = []
                segments.append(segment)
        if not segment:
            media_base = packet.timestamp
        media = ((packet.timestamp - media_base) & 0xFFFFFFFF) / CALL_RATE
        segment.append((packet.arrival, media))
    for part in segments:
        if not part:
            continue
        base = min(arrival - media for arrival, media in part)
        for arrival, media in part:
            lateness = (arrival - media - base) * 1000
            stats.lateness_ms.append(lateness)
            if lateness > late_ms:
                stats.late += 1
            stats.max_lateness_ms = max(stats.max_lateness_ms, lateness)
    return stats
