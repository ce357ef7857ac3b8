"""rtp_pcap: the pcap files sipp replays, and the FSDD digit utterances put in them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.media.g711 import Codec
from tests.sip.rtp_pcap import TELEPHONE_EVENT_PT, build_digit_utterance, write_rtp_pcap


def _read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp, UDP payload) per packet of an Ethernet/IPv4/UDP pcap."""
    data = path.read_bytes()
    magic, major, minor, _, _, _, linktype = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    packets, pos = [], 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + incl]
        assert incl == orig == len(frame)
        assert frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 17
        udp_len = struct.unpack("!H", frame[38:40])[0]
        packets.append((sec + usec / 1e6, frame[42 : 34 + udp_len]))
        pos += 16 + incl
    return packets


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_pcap_holds_paced_rtp(shared_data: Path, tmp_path: Path, codec: str) -> None:
    pcm = build_digit_utterance(shared_data, "jackson", "12", seed=4)
    packets = _read_pcap(write_rtp_pcap(pcm, tmp_path / "a.pcap", codec))
    law = Codec.from_name(codec)
    assert len(packets) == -(-len(pcm) // 320)
    for index, (when, rtp) in enumerate(packets):
        first, second, seq, timestamp = struct.unpack("!BBHI", rtp[:8])
        assert first == 0x80  # version 2, no padding/extension/CSRC
        assert second == (0x80 if index == 0 else 0) | law.payload_type
        assert (seq, timestamp) == (1 + index, 160 * index)
        assert when == pytest.approx(0.02 * index)
        assert len(rtp) == 12 + 160
    payload = b"".join(rtp[12:] for _, rtp in packets)
    assert law.decode(payload)[: len(pcm)] == law.decode(law.encode(pcm))


def test_digit_utterance_is_deterministic_and_padded(shared_data: Path) -> None:
    one = build_digit_utterance(shared_data, "nicolas", "4711", seed=9, pad_ms=400)
    assert one == build_digit_utterance(shared_data, "nicolas", "4711", seed=9, pad_ms=400)
    assert one != build_digit_utterance(shared_data, "nicolas", "4711", seed=10, pad_ms=400)
    pad = b"\x00\x00" * 3200
    assert one.startswith(pad) and one.endswith(pad)
    seconds = len(one) / 16000
    assert 0.8 + 3 * 0.2 + 4 * 0.2 < seconds < 0.8 + 3 * 0.6 + 4 * 1.0


def test_digit_utterance_rejects_bad_input(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="digits"):
        build_digit_utterance(shared_data, "jackson", "12a")
    with pytest.raises(FileNotFoundError, match="nobody"):
        build_digit_utterance(shared_data, "nobody", "1")


def test_pcap_with_rfc4733_keys(shared_data: Path, tmp_path: Path) -> None:
    """Keys replace the audio for their duration, in one stream: events every 20 ms sharing
    the key's start timestamp, growing durations, the end packet three times, then audio."""
    pcm = build_digit_utterance(shared_data, "jackson", "512", seed=1, pad_ms=100)
    path = write_rtp_pcap(pcm, tmp_path / "k.pcap", "PCMA", dtmf=[(200, "#"), (600, "D")])
    packets = _read_pcap(path)
    events = [(when, rtp) for when, rtp in packets if rtp[1] & 0x7F == TELEPHONE_EVENT_PT]
    assert len(events) == 2 * (5 + 3)
    for start, (code, first_ms) in zip((0, 8), ((11, 200), (15, 600)), strict=True):
        key = events[start : start + 8]
        stamps = {struct.unpack("!I", rtp[4:8])[0] for _, rtp in key}
        assert stamps == {first_ms * 8}
        assert key[0][0] == pytest.approx(first_ms / 1000)
        assert key[0][1][1] & 0x80  # marker on the first event packet
        bodies = [struct.unpack("!BBH", rtp[12:16]) for _, rtp in key]
        assert [b[0] for b in bodies] == [code] * 8
        assert [b[2] for b in bodies] == [160, 320, 480, 640, 800, 800, 800, 800]
        assert [bool(b[1] & 0x80) for b in bodies] == [False] * 5 + [True] * 3
        assert len({struct.unpack("!H", rtp[2:4])[0] for _, rtp in key[5:]}) == 1
    sequence = [struct.unpack("!H", rtp[2:4])[0] for _, rtp in packets]
    distinct = [seq for i, seq in enumerate(sequence) if i == 0 or seq != sequence[i - 1]]
    assert distinct == list(range(1, len(distinct) + 1))  # continuous, retransmits excepted
    audio = [rtp for _, rtp in packets if rtp[1] & 0x7F == Codec.from_name("PCMA").payload_type]
    assert len(audio) + 2 * 6 == -(-len(pcm) // 320)


def test_pcap_rejects_overlapping_or_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        write_rtp_pcap(b"", tmp_path / "a.pcap", dtmf=[(100, "1"), (180, "2")])
    with pytest.raises(ValueError, match="DTMF key"):
        write_rtp_pcap(b"", tmp_path / "a.pcap", dtmf=[(100, "X")])
