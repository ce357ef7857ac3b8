"""Caller audio for sipp: G.711 RTP packets in a pcap file, and digit utterances from FSDD.

sipp's `play_pcap_audio` replays the UDP payloads of a pcap at the pace of its timestamps,
rewriting addresses and ports, so the file only needs well-formed Ethernet/IPv4/UDP headers
around correct RTP: one 20 ms G.711 frame per packet, sequence numbers +1, timestamps +160.

Keypresses go in the same stream as RFC 4733 telephone-events (`write_rtp_pcap(...,
dtmf=[(at_ms, key), ...])`), the way a phone sends them: audio stops for the key, event
packets every 20 ms with the duration growing, the end packet sent three times, then audio
again, all with one SSRC and continuous sequence numbers.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from app.media.audio import CALL_RATE, FRAME_MS, frame_bytes, frame_samples
from app.media.g711 import Codec
from tests.sip.wavfile import read_wav

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
RTP_VERSION = 2
FSDD_RATE = 8000

# Placeholder addresses: sipp replaces them with the call's own.
SRC_IP = bytes([127, 0, 0, 1])
DST_IP = bytes([127, 0, 0, 1])
SRC_PORT = 6000
DST_PORT = 4000

TELEPHONE_EVENT_PT = 101
"""The payload type the sipp scenarios offer for `telephone-event/8000`."""
DTMF_EVENTS = {key: code for code, key in enumerate("0123456789*#ABCD")}
DTMF_VOLUME = 10  # -10 dBm0, what phones send
END_RETRANSMITS = 3


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp_ip_ethernet(payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", SRC_PORT, DST_PORT, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), ident & 0xFFFF, 0, 64, IPPROTO_UDP, 0,
        SRC_IP, DST_IP,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    return ethernet + struct.pack("!H", ETHERTYPE_IPV4) + ip + udp


def rtp_packets(
    pcm: bytes, codec: str = "PCMU", ssrc: int = 0x5B1B0A4D, first_seq: int = 1
) -> list[bytes]:
    """RTP packets (header + 20 ms G.711 payload) for 8 kHz 16-bit PCM; the last is padded."""
    law = Codec.from_name(codec)
    size = frame_bytes(CALL_RATE)
    if len(pcm) % size:
        pcm += b"\x00" * (size - len(pcm) % size)
    packets = []
    for index, start in enumerate(range(0, len(pcm), size)):
        marker = 0x80 if index == 0 else 0
        header = struct.pack(
            "!BBHII",
            RTP_VERSION << 6,
            marker | law.payload_type,
            (first_seq + index) & 0xFFFF,
            (index * frame_samples(CALL_RATE)) & 0xFFFFFFFF,
            ssrc,
        )
        packets.append(header + law.encode(pcm[start : start + size]))
    return packets


def rtp_packets_with_dtmf(
    pcm: bytes,
    dtmf: list[tuple[int, str]],
    codec: str = "PCMU",
    key_ms: int = 100,
    ssrc: int = 0x5B1B0A4D,
) -> list[tuple[int, bytes]]:
    """(send time in µs, RTP packet): G.711 audio with RFC 4733 keypresses at `dtmf`.

    Each (at_ms, key) replaces the audio from `at_ms` (rounded down to a 20 ms frame) for
    `key_ms`: event packets every 20 ms share the event's start timestamp, the first has the
    marker bit, the duration grows by 160; then the end packet three times (same sequence
    number, as RFC 4733 says), then audio resumes. The audio is extended with silence when a
    key comes after its end. Keys must be in time order, at least `key_ms` + 40 ms apart.
    """
    law = Codec.from_name(codec)
    size = frame_bytes(CALL_RATE)
    key_frames = max(1, key_ms // FRAME_MS)
    starts: dict[int, int] = {}
    previous_end = -1
    for at_ms, key in dtmf:
        if key.upper() not in DTMF_EVENTS:
            raise ValueError(f"not a DTMF key: {key!r}")
        frame = at_ms // FRAME_MS
        if frame <= previous_end:
            raise ValueError(f"key {key!r} at {at_ms} ms overlaps the one before")
        starts[frame] = DTMF_EVENTS[key.upper()]
        previous_end = frame + key_frames + 1
    total_frames = max(-(-len(pcm) // size), previous_end + 2)
    pcm = pcm.ljust(total_frames * size, b"\x00")
    samples = frame_samples(CALL_RATE)
    packets: list[tuple[int, bytes]] = []
    seq = 1
    frame = 0

    def header(marker: bool, payload_type: int, timestamp: int) -> bytes:
        return struct.pack(
            "!BBHII", RTP_VERSION << 6, (0x80 if marker else 0) | payload_type,
            seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc,
        )  # fmt: skip

    while frame < total_frames:
        if frame in starts:
            code, timestamp = starts[frame], frame * samples
            for k in range(key_frames):
                body = struct.pack("!BBH", code, DTMF_VOLUME, (k + 1) * samples)
                when = (frame + k) * FRAME_MS * 1000
                packets.append((when, header(k == 0, TELEPHONE_EVENT_PT, timestamp) + body))
                seq += 1
            end = struct.pack("!BBH", code, 0x80 | DTMF_VOLUME, key_frames * samples)
            for r in range(END_RETRANSMITS):
                when = (frame + key_frames) * FRAME_MS * 1000 + r * 100
                packets.append((when, header(False, TELEPHONE_EVENT_PT, timestamp) + end))
            seq += 1
            frame += key_frames + 1
            continue
        chunk = pcm[frame * size : (frame + 1) * size]
        marker = frame == 0 or frame - 1 - key_frames in starts  # talkspurt after a key
        rtp = header(marker, law.payload_type, frame * samples) + law.encode(chunk)
        packets.append((frame * FRAME_MS * 1000, rtp))
        seq += 1
        frame += 1
    return packets


def write_rtp_pcap(
    pcm: bytes,
    path: Path,
    codec: str = "PCMU",
    dtmf: list[tuple[int, str]] | None = None,
    key_ms: int = 100,
) -> Path:
    """Write 8 kHz 16-bit PCM as a pcap of RTP packets paced every 20 ms, for sipp; with
    `dtmf` [(at_ms, key), ...], keypresses as RFC 4733 events in the same stream (see
    `rtp_packets_with_dtmf`; the scenario must offer telephone-event as payload type 101)."""
    if not pcm and not dtmf:
        raise ValueError("no audio to put in the pcap")
    if dtmf:
        timed = rtp_packets_with_dtmf(pcm, dtmf, codec, key_ms)
    else:
        timed = [(i * FRAME_MS * 1000, rtp) for i, rtp in enumerate(rtp_packets(pcm, codec))]
    out = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for index, (usec, rtp) in enumerate(timed):
        frame = _udp_ip_ethernet(rtp, index)
        out.append(
            struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def silence(ms: int, rate: int = CALL_RATE) -> bytes:
    """`ms` milliseconds of 16-bit digital silence."""
    return b"\x00\x00" * (rate * ms // 1000)


def build_digit_utterance(
    shared_data: Path,
    speaker: str,
    digits: str,
    pause_ms: tuple[int, int] = (200, 600),
    seed: int = 0,
    pad_ms: int = 500,
) -> bytes:
    """A caller reading `digits` (e.g. "4711"): FSDD recordings of one speaker, random takes,
    joined by random pauses in `pause_ms`, with `pad_ms` of silence before and after.

    Returns 8 kHz 16-bit PCM. Deterministic for a given seed.
    """
    if not digits or not digits.isdigit():
        raise ValueError(f"digits must be a non-empty string of 0-9, got {digits!r}")
    low, high = pause_ms
    if not 0 <= low <= high:
        raise ValueError(f"pause_ms must be (low, high) with 0 <= low <= high, got {pause_ms}")
    rng = random.Random(seed)
    parts = [silence(pad_ms)]
    for position, digit in enumerate(digits):
        path = shared_data / "fsdd" / f"{digit}_{speaker}_{rng.randrange(50)}.wav"
        if not path.exists():
            raise FileNotFoundError(f"no FSDD recording {path} (speaker {speaker!r}?)")
        pcm, rate = read_wav(path)
        if rate != FSDD_RATE:
            raise ValueError(f"{path}: expected {FSDD_RATE} Hz, got {rate}")
        if position:
            parts.append(silence(rng.randint(low, high)))
        parts.append(pcm)
    parts.append(silence(pad_ms))
    return b"".join(parts)
