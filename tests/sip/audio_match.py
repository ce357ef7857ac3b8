"""Did the caller hear what the bot said? Find a reference rendering inside a call recording.

The recording starts at an arbitrary point (ringing, answer, earlier prompts) and its level
may differ slightly from the reference, so we use normalised cross-correlation: at every lag,
the dot product of the reference with the recording window divided by both energies. A value
near 1 means the same waveform, whatever its level; speech that merely sounds alike stays
low. The numerator is one FFT convolution, the window energies a running sum, so a minute of
8 kHz audio takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.media.audio import CALL_RATE, SAMPLE_WIDTH
from app.media.g711 import Codec
from app.media.resample import resample

QUIET_POWER = 1e-7
"""Mean power (full scale = 1) below which audio counts as silence (about -70 dBFS): a window
that quiet is no match, whatever its shape, and a reference that quiet is an error."""
FOUND = 0.5
"""A piece whose correlation reaches this counts as found when measuring slips."""


@dataclass(frozen=True)
class Match:
    """Best alignment of a reference inside a recording."""

    correlation: float
    """Normalised cross-correlation at the best lag, -1..1 (1: identical waveform)."""
    offset_samples: int
    """Where the reference starts in the recording."""
    rate: int

    @property
    def offset_s(self) -> float:
        return self.offset_samples / self.rate


def _samples(pcm: bytes, what: str) -> np.ndarray:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"{what}: 16-bit PCM must have an even byte count, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0


def telephone_reference(pcm: bytes, rate: int, codec: str = "PCMU") -> bytes:
    """What a caller would hear of `pcm`: resampled to 8 kHz and through a G.711 round trip."""
    law = Codec.from_name(codec)
    return law.decode(law.encode(resample(pcm, rate, CALL_RATE)))


def _ncc(rec: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, int]:
    """Normalised cross-correlation of `ref` at every lag that overlaps `rec`, and the lag of
    index 0 (negative: the reference starts before the recording)."""
    ref_energy = float(np.dot(ref, ref))
    pad = np.zeros(ref.size - 1)
    padded = np.concatenate([pad, rec, pad])
    size = 1 << (padded.size + ref.size - 2).bit_length()
    spectrum = np.fft.rfft(padded, size) * np.conj(np.fft.rfft(ref, size))
    dots = np.fft.irfft(spectrum, size)[: padded.size - ref.size + 1]
    squares = np.concatenate([[0.0], np.cumsum(padded * padded)])
    window_energy = squares[ref.size :] - squares[: -ref.size]
    quiet = window_energy < QUIET_POWER * ref.size
    corr = np.where(quiet, 0.0, dots / np.sqrt(np.maximum(window_energy, 1e-12) * ref_energy))
    return corr, -(ref.size - 1)


def _check_reference(ref: np.ndarray) -> None:
    if ref.size == 0:
        raise ValueError("reference is empty")
    if float(np.dot(ref, ref)) < QUIET_POWER * ref.size:
        raise ValueError("reference is silent: nothing to look for")


def find_reference(recording: bytes, reference: bytes, rate: int = CALL_RATE) -> Match:
    """Where `reference` best matches `recording` (both 16-bit mono PCM at `rate`).

    Any overlap counts: the reference may start before the recording or run past its end
    (a call cut short); the missing part then lowers the correlation in proportion to its
    energy, so silence cut off costs nothing and missing speech does.
    """
    ref = _samples(reference, "reference")
    _check_reference(ref)
    rec = _samples(recording, "recording")
    corr, first_lag = _ncc(rec, ref)
    best = int(np.argmax(corr))
    return Match(correlation=float(corr[best]), offset_samples=best + first_lag, rate=rate)


@dataclass(frozen=True)
class PieceMatch:
    """A reference found piece by piece, tolerating frame slips inside the recording."""

    pieces: list[Match]
    """One match per voiced piece; its offset is where the reference would start."""
    correlation: float
    """Energy-weighted mean of the pieces' correlations."""
    offset_s: float
    """Where the reference starts, from the first piece found (correlation >= FOUND)."""
    max_slip_s: float
    """Largest disagreement between found pieces about that start (frames dropped/inserted)."""


def find_reference_pieces(
    recording: bytes,
    reference: bytes,
    rate: int = CALL_RATE,
    piece_s: float = 0.5,
    max_slip_s: float = 0.2,
) -> PieceMatch:
    """Like `find_reference`, but each voiced `piece_s` of the reference may shift by up to
    `max_slip_s` from the overall alignment.

    A clock-driven receiver (a PJSIP jitter buffer fed by a bursty sender) drops or inserts
    whole 20 ms frames, which splits one long waveform match; per piece, each still matches.
    """
    ref = _samples(reference, "reference")
    _check_reference(ref)
    rec = _samples(recording, "recording")
    overall = find_reference(recording, reference, rate).offset_samples
    step, slip = int(piece_s * rate), int(max_slip_s * rate)
    pieces: list[Match] = []
    weights: list[float] = []
    for start in range(0, ref.size, step):
        piece = ref[start : start + step]
        energy = float(np.dot(piece, piece))
        if piece.size < step // 2 or energy < 100 * QUIET_POWER * piece.size:
            continue  # silence or a scrap: nothing to align
        low = max(0, overall + start - slip)
        high = max(low, min(rec.size, overall + start + piece.size + slip))
        corr, first_lag = _ncc(rec[low:high], piece)
        best = int(np.argmax(corr))
        implied_start = low + best + first_lag - start
        pieces.append(Match(float(corr[best]), implied_start, rate))
        weights.append(energy)
    if not pieces:
        raise ValueError("reference has no voiced piece to look for")
    starts = [p.offset_samples for p in pieces if p.correlation >= FOUND] or [overall]
    return PieceMatch(
        pieces=pieces,
        correlation=float(np.average([p.correlation for p in pieces], weights=weights)),
        offset_s=starts[0] / rate,
        max_slip_s=(max(starts) - min(starts)) / rate,
    )
