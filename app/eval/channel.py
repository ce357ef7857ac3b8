"""A telephone channel in software: what a caller's speech goes through before it reaches us.

In the order it happens on a real call:
1. band-limit and resample to 8 kHz (libsoxr, as the server's own resampler);
2. noise at the caller's end, at a given SNR: white (Gaussian), babble (several other clips of
   the manifest mixed, the cafeteria behind a caller) or a noise recording (looped from a random
   offset). The SNR is against the speech's active level: the mean power of the 20 ms frames
   within 40 dB of the loudest one (a simple stand-in for ITU-T P.56), so leading silence does
   not make the noise quieter;
3. G.711 mu-law or A-law encode and decode: the codec's quantisation noise;
4. packet loss on 20 ms packets, in bursts (a two-state Gilbert model with the given loss rate
   and mean burst length), concealed as a receiver does: the last good frame repeated, fading
   out by 20% a frame and silent after 100 ms (a simplification of G.711 Appendix I).

Each clip's channel is seeded from the run's seed and the clip, so every engine in a run hears
exactly the same degraded audio, and a rerun hears it again.
"""

from __future__ import annotations

import hashlib
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.media.audio import CALL_RATE, frame_samples
from app.media.g711 import Codec
from app.media.resample import resample

NOISE_KINDS = ("white", "babble")
"""Built-in noises; anything else given as `noise` is a path to a WAV recording."""
BABBLE_TALKERS = 4
ACTIVE_RANGE_DB = 40.0
CONCEAL_FADE_PER_FRAME = 0.2
FRAME = frame_samples(CALL_RATE)


class ChannelError(ValueError):
    """A channel setting cannot be simulated (unknown codec, unreadable noise file...)."""


@dataclass(frozen=True, slots=True)
class Channel:
    """One telephone condition. `snr_db` None: no noise added."""

    codec: str = "PCMU"
    snr_db: float | None = None
    noise: str = "white"
    loss: float = 0.0
    """Share of 20 ms packets lost, 0 to < 1."""
    burst_frames: float = 1.0
    """Mean length of a loss burst in packets (1: independent losses)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "codec", Codec.from_name(self.codec).name)
        except ValueError as exc:
            raise ChannelError(str(exc)) from None
        if not 0 <= self.loss < 1:
            raise ChannelError(f"packet loss must be in [0, 1), got {self.loss}")
        if self.burst_frames < 1:
            raise ChannelError(f"a loss burst is at least 1 packet, got {self.burst_frames}")
        noise_file = self.noise not in NOISE_KINDS
        if self.snr_db is not None and noise_file and not Path(self.noise).is_file():
            raise ChannelError(
                f"noise {self.noise!r} is not one of {', '.join(NOISE_KINDS)} or a WAV file"
            )

    @property
    def label(self) -> str:
        """Short and stable: the key of this condition in results ("PCMU 10dB babble")."""
        parts = [self.codec]
        if self.snr_db is None:
            parts.append("clean")
        else:
            noise = self.noise if self.noise in NOISE_KINDS else Path(self.noise).stem
            parts.append(f"{self.snr_db:g}dB {noise}")
        if self.loss:
            burst = f" burst {self.burst_frames:g}" if self.burst_frames > 1 else ""
            parts.append(f"loss {100 * self.loss:g}%{burst}")
        return " ".join(parts)

    def describe(self) -> dict[str, object]:
        return {
            "label": self.label,
            "codec": self.codec,
            "snr_db": self.snr_db,
            "noise": self.noise if self.snr_db is not None else None,
            "loss": self.loss,
            "burst_frames": self.burst_frames,
        }


NoiseSource = Callable[[int, np.random.Generator], np.ndarray]
"""Noise of n samples at 8 kHz (float, any level): the generator picks where it comes from."""


def clip_seed(run_seed: int, clip_key: str, channel: Channel) -> int:
    """A seed for one clip under one channel, stable across runs and Python processes."""
    digest = hashlib.sha256(f"{run_seed}|{clip_key}|{channel.label}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def simulate(
    pcm: bytes,
    rate: int,
    channel: Channel,
    rng: np.random.Generator,
    noise: NoiseSource | None = None,
) -> bytes:
    """`pcm` (16-bit mono at `rate`) as it arrives from the telephone network: 8 kHz PCM."""
    audio = resample(pcm, rate, CALL_RATE)
    if channel.snr_db is not None:
        if noise is None:
            raise ChannelError(f"{channel.label}: no noise source given")
        audio = add_noise(audio, channel.snr_db, noise, rng)
    law = Codec.from_name(channel.codec)
    audio = law.decode(law.encode(audio))
    if channel.loss:
        audio = conceal(audio, loss_mask(len(audio) // 2, channel, rng))
    return audio


def active_power(samples: np.ndarray) -> float:
    """Mean power of the frames within ACTIVE_RANGE_DB of the loudest (0 for silence)."""
    usable = samples[: len(samples) - len(samples) % FRAME].astype(np.float64)
    if not usable.size:
        usable = samples.astype(np.float64)
        return float(np.mean(usable * usable)) if usable.size else 0.0
    powers = np.mean(usable.reshape(-1, FRAME) ** 2, axis=1)
    loudest = float(powers.max())
    if loudest <= 0:
        return 0.0
    return float(powers[powers >= loudest * 10 ** (-ACTIVE_RANGE_DB / 10)].mean())


def add_noise(pcm: bytes, snr_db: float, noise: NoiseSource, rng: np.random.Generator) -> bytes:
    """`pcm` with noise added at `snr_db` below the speech's active level."""
    speech = np.frombuffer(pcm, dtype="<i2")
    level = active_power(speech)
    if level == 0 or not speech.size:
        return pcm
    sound = noise(len(speech), rng).astype(np.float64)
    power = float(np.mean(sound * sound))
    if power <= 0:
        return pcm
    sound *= np.sqrt(level / 10 ** (snr_db / 10) / power)
    mixed = speech.astype(np.float64) + sound
    return np.clip(np.round(mixed), -32768, 32767).astype("<i2").tobytes()


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


class LoopedNoise:
    """A noise recording, resampled to 8 kHz once, cut from a random offset and looped."""

    def __init__(self, path: Path) -> None:
        try:
            with wave.open(str(path), "rb") as wav:
                if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                    raise ChannelError(f"noise file {path}: expected 16-bit mono WAV")
                pcm = resample(wav.readframes(wav.getnframes()), wav.getframerate(), CALL_RATE)
        except (OSError, wave.Error, EOFError) as exc:
            raise ChannelError(f"noise file {path}: {exc}") from None
        self.samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if not self.samples.size or not np.any(self.samples):
            raise ChannelError(f"noise file {path}: silent or empty")

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        start = int(rng.integers(0, self.samples.size))
        return np.resize(np.roll(self.samples, -start), n)


class Babble:
    """Several other talkers at once, each at equal level, from a pool of 8 kHz clips."""

    def __init__(self, pool: Sequence[Callable[[], bytes]], talkers: int = BABBLE_TALKERS) -> None:
        if len(pool) < 2:
            raise ChannelError("babble needs at least 2 clips in the manifest to mix from")
        self._pool = pool
        self._talkers = min(talkers, len(pool))
        self._cache: dict[int, np.ndarray] = {}

    def _talker(self, index: int) -> np.ndarray:
        talker = self._cache.get(index)
        if talker is None:
            samples = np.frombuffer(self._pool[index](), dtype="<i2").astype(np.float64)
            power = active_power(samples)
            talker = samples / np.sqrt(power) if power > 0 else samples
            if len(self._cache) < 512:  # bounded: a big manifest is not held in memory
                self._cache[index] = talker
        return talker

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mix = np.zeros(n)
        for index in rng.choice(len(self._pool), size=self._talkers, replace=False):
            talker = self._talker(int(index))
            if talker.size:
                start = int(rng.integers(0, talker.size))
                mix += np.resize(np.roll(talker, -start), n)
        return mix


def loss_mask(samples: int, channel: Channel, rng: np.random.Generator) -> np.ndarray:
    """True for each 20 ms packet lost: a Gilbert model with the channel's rate and bursts."""
    frames = -(-samples // FRAME)
    leave_bad = 1 / channel.burst_frames
    enter_bad = channel.loss * leave_bad / (1 - channel.loss)
    draws = rng.random(frames)
    lost = np.zeros(frames, dtype=bool)
    bad = rng.random() < channel.loss  # start in the stationary distribution
    for i in range(frames):
        lost[i] = bad
        bad = draws[i] >= leave_bad if bad else draws[i] < enter_bad
    return lost


def conceal(pcm: bytes, lost: np.ndarray) -> bytes:
    """Lost packets replaced by the last good one, fading out over 100 ms."""
    samples = np.frombuffer(pcm, dtype="<i2").copy()
    last_good: np.ndarray | None = None
    run = 0
    for i, gone in enumerate(lost):
        frame = samples[i * FRAME : (i + 1) * FRAME]
        if not gone:
            last_good = frame.copy()
            run = 0
            continue
        gain = max(0.0, 1.0 - CONCEAL_FADE_PER_FRAME * run)
        run += 1
        if last_good is None or gain == 0:
            frame[:] = 0
        else:
            frame[:] = np.round(last_good[: frame.size] * gain).astype("<i2")
    return samples.tobytes()
