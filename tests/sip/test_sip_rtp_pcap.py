"""rtp_pcap: the pcap files sipp replays, and the FSDD digit utterances put in them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.media.g711 import Codec
from tests.sip.rtp_pcap import build_digit_utterance, write_rtp_pcap


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
