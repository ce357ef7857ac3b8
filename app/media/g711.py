"""G.711 (mu-law PCMU and A-law PCMA): the only codecs on Switchboard's telephone edge.

Encoding is done by `audioop` in C, one call per 20 ms frame, so the media path costs no Python
loop per sample. Everything inside the call core sees 16-bit PCM; only the SIP adapter uses this.
"""

from __future__ import annotations

import enum

from app.media.audio import SAMPLE_WIDTH
from app.media.audioop_compat import audioop

_ALIASES = {
    "pcmu": "PCMU",
    "ulaw": "PCMU",
    "u-law": "PCMU",
    "mu-law": "PCMU",
    "mulaw": "PCMU",
    "g711u": "PCMU",
    "pcma": "PCMA",
    "alaw": "PCMA",
    "a-law": "PCMA",
    "g711a": "PCMA",
}


def _check_pcm(pcm: bytes) -> None:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(
            f"PCM must be 16-bit samples: got {len(pcm)} bytes, not a multiple of {SAMPLE_WIDTH}"
        )


def pcm_to_ulaw(pcm: bytes) -> bytes:
    """16-bit PCM to mu-law, one byte per sample."""
    _check_pcm(pcm)
    return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)


def ulaw_to_pcm(data: bytes) -> bytes:
    """mu-law bytes to 16-bit PCM."""
    return audioop.ulaw2lin(data, SAMPLE_WIDTH)


def pcm_to_alaw(pcm: bytes) -> bytes:
    """16-bit PCM to A-law, one byte per sample."""
    _check_pcm(pcm)
    return audioop.lin2alaw(pcm, SAMPLE_WIDTH)


def alaw_to_pcm(data: bytes) -> bytes:
    """A-law bytes to 16-bit PCM."""
    return audioop.alaw2lin(data, SAMPLE_WIDTH)


class Codec(enum.Enum):
    """A G.711 law with its static RTP payload type (RFC 3551) and SDP encoding name."""

    PCMU = (0, "PCMU")
    PCMA = (8, "PCMA")

    @property
    def payload_type(self) -> int:
        return self.value[0]

    @property
    def encoding_name(self) -> str:
        return self.value[1]

    def encode(self, pcm: bytes) -> bytes:
        """16-bit PCM to this law's bytes."""
        return pcm_to_ulaw(pcm) if self is Codec.PCMU else pcm_to_alaw(pcm)

    def decode(self, data: bytes) -> bytes:
        """This law's bytes to 16-bit PCM."""
        return ulaw_to_pcm(data) if self is Codec.PCMU else alaw_to_pcm(data)

    @classmethod
    def from_name(cls, name: str) -> Codec:
        """The codec for an SDP or config name ("PCMU", "ulaw", "a-law", ...), case-insensitive."""
        canonical = _ALIASES.get(name.strip().lower())
        if canonical is None:
            raise ValueError(f"unsupported codec {name!r}: Switchboard speaks G.711 PCMU or PCMA")
        return cls[canonical]
