"""Caller audio for sipp: G.711 RTP packets in a pcap file, and digit utterances from FSDD.

sipp's `play_pcap_audio` replays the UDP payloads of a pcap at the pace of its timestamps,
rewriting addresses and ports, so the file only needs well-formed Ethernet/IPv4/UDP headers
around correct RTP: one 20 ms G.711 frame per packet, sequence numbers +1, timestamps +160.
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


def write_rtp_pcap(pcm: bytes, path: Path, codec: str = "PCMU") -> Path:
    """Write 8 kHz 16-bit PCM as a pcap of RTP packets paced every 20 ms, for sipp."""
    if not pcm:
        raise ValueError("no audio to put in the pcap")
    out = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for index, rtp in enumerate(rtp_packets(pcm, codec)):
        frame = _udp_ip_ethernet(rtp, index)
        usec = index * FRAME_MS * 1000
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
