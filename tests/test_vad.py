"""Voice-activity detectors on real telephone speech (FSDD, 8 kHz) through the public interface.

Both engines must call digital silence and faint line noise non-speech and spoken digits speech;
Silero must also agree with webrtcvad on where the speech is, and its streaming must reproduce
the model run offline over a whole file, which pins the window/context/state protocol exactly.
"""

from __future__ import annotations

import importlib.util
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from app.media.audio import frame_bytes, iter_frames
from app.media.resample import resample
from app.vad import VadError, VoiceDetector, create_detector

RATE = 8000
FRAME = frame_bytes(RATE)
SILENCE = b"\x00" * FRAME

_missing = [
    name for name in ("onnxruntime", "faster_whisper") if importlib.util.find_spec(name) is None
]
needs_silero = pytest.mark.skipif(
    bool(_missing),
    reason=f"Silero VAD needs {' and '.join(_missing)}: pip install 'switchboard[silero]'",
)
ENGINES = ["webrtc", pytest.param("silero", marks=needs_silero)]


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2), path
        return wav.readframes(wav.getnframes()), wav.getframerate()


def fsdd(shared_data: Path, name: str) -> bytes:
    pcm, rate = read_wav(shared_data / "fsdd" / name)
    assert rate == RATE
    return pcm


def frames(pcm: bytes, rate: int = RATE) -> list[bytes]:
    return list(iter_frames([pcm], rate))


def decide(detector: VoiceDetector, frame_list: list[bytes]) -> np.ndarray:
    return np.array([detector.is_speech(frame) for frame in frame_list], dtype=bool)


@pytest.fixture(scope="module")
def digit_sample(fsdd_manifest: list[dict], shared_data: Path) -> list[tuple[str, bytes]]:
    """80 recordings: every 25th row, so all four speakers and all ten digits."""
    return [(row["audio"], fsdd(shared_data, row["audio"])) for row in fsdd_manifest[::25]]


@pytest.mark.parametrize("kind", ENGINES)
def test_detector_satisfies_the_interface(kind: str) -> None:
    detector = create_detector(kind)
    assert isinstance(detector, VoiceDetector)
    assert (detector.name, detector.sample_rate) == (kind, RATE)


@pytest.mark.parametrize("kind", ENGINES)
def test_digital_silence_is_not_speech(kind: str) -> None:
    decisions = decide(create_detector(kind), [SILENCE] * 100)
    assert decisions.mean() <= 0.02


@pytest.mark.parametrize("kind", ENGINES)
def test_low_white_noise_is_not_speech(kind: str) -> None:
    # -50 dBFS: a quiet line's hiss, well below any of the recorded talkers.
    noise = np.random.default_rng(7).normal(0.0, 100.0, RATE * 3).astype("<i2").tobytes()
    decisions = decide(create_detector(kind), frames(noise))
    assert decisions.mean() <= 0.1


@pytest.mark.parametrize("kind", ENGINES)
def test_spoken_digits_are_speech(kind: str, digit_sample: list[tuple[str, bytes]]) -> None:
    # Per recording: 200 ms of silence (a detector listening before the caller talks), then the
    # digit; the fraction of the digit's frames called speech. FSDD files are trimmed to the
    # word, so a working detector calls most of each one speech; Silero loses a frame or two
    # to its 32 ms windows and misses the odd short, quiet word.
    detector = create_detector(kind)
    fractions = {}
    for name, pcm in digit_sample:
        detector.reset()
        decide(detector, [SILENCE] * 10)
        fractions[name] = decide(detector, frames(pcm)).mean()
    values = np.array(list(fractions.values()))
    worst = sorted(fractions.items(), key=lambda item: item[1])[:5]
    assert np.median(values) >= 0.7, worst
    assert (values >= 0.5).mean() >= 0.85, worst


@pytest.mark.parametrize("kind", ENGINES)
def test_reset_restores_a_fresh_state(kind: str, shared_data: Path) -> None:
    word = frames(fsdd(shared_data, "1_george_29.wav"))
    fresh = decide(create_detector(kind), word)

    detector = create_detector(kind)
    cut_off = frames(fsdd(shared_data, "0_jackson_30.wav"))
    assert decide(detector, cut_off[: len(cut_off) // 2])[-1], "precondition: mid-word"
    detector.reset()
    assert decide(detector, word).tolist() == fresh.tolist()


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("size", [0, 1, FRAME - 2, FRAME - 1, FRAME + 2, 2 * FRAME])
def test_wrong_frame_size_is_rejected(kind: str, size: int) -> None:
    with pytest.raises(ValueError, match=f"{FRAME} bytes"):
        create_detector(kind).is_speech(b"\x00" * size)


def test_unknown_engine_is_a_vad_error() -> None:
    with pytest.raises(VadError, match=r"'nope'.*webrtc, silero"):
        create_detector("nope")


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("webrtc", {"sample_rate": 11025}),
        ("webrtc", {"aggressiveness": 4}),
        pytest.param("silero", {"sample_rate": 22050}, marks=needs_silero),
        pytest.param("silero", {"threshold": 0.0}, marks=needs_silero),
        pytest.param("silero", {"threshold": 1.5}, marks=needs_silero),
    ],
)
def test_bad_settings_are_rejected(kind: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        create_detector(kind, **kwargs)


# --- Silero ---------------------------------------------------------------------------------


def offline_probs(audio16: np.ndarray) -> np.ndarray:
    """The model over a whole 16 kHz float signal in one batch: the reference protocol.

    Each row is one 512-sample window after the previous window's last 64 samples (zeros for
    the first); in one batch the model carries its LSTM state from row to row itself.
    """
    from app.vad.silero import CONTEXT, STATE_SHAPE, WINDOW, load_session

    count = len(audio16) // WINDOW
    windows = audio16[: count * WINDOW].reshape(count, WINDOW).astype(np.float32)
    context = np.zeros((count, CONTEXT), dtype=np.float32)
    context[1:] = windows[:-1, -CONTEXT:]
    state = np.zeros(STATE_SHAPE, dtype=np.float32)
    probs, _, _ = load_session().run(
        None, {"input": np.concatenate([context, windows], axis=1), "h": state, "c": state}
    )
    return probs.reshape(-1)


def streamed_probs(detector, frame_list: list[bytes]) -> np.ndarray:
    """The probability of each window as the detector completes it (320 samples/frame at 16 kHz)."""
    from app.vad.silero import WINDOW

    probs, fed = [], 0
    for frame in frame_list:
        detector.is_speech(frame)
        if (fed + 320) // WINDOW > fed // WINDOW:
            probs.append(detector.probability)
        fed += 320
    return np.array(probs)


def as_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


@needs_silero
def test_silero_streaming_matches_the_model_run_offline(shared_data: Path) -> None:
    pcm, rate = read_wav(shared_data / "speech" / "jfk.wav")
    assert rate == 16000
    streamed = streamed_probs(create_detector("silero", sample_rate=rate), frames(pcm, rate))
    reference = offline_probs(as_float(pcm))
    assert len(streamed) == len(reference) > 300
    np.testing.assert_allclose(streamed, reference, atol=1e-4)


@needs_silero
def test_silero_at_8k_tracks_the_model_on_band_limited_upsampling(shared_data: Path) -> None:
    from app.vad.silero import UPSAMPLE_DELAY

    wide, rate = read_wav(shared_data / "speech" / "digits_phrase.wav")
    pcm = resample(wide, rate, RATE)
    streamed = streamed_probs(create_detector("silero"), frames(pcm))
    upsampled = np.concatenate(
        [np.zeros(UPSAMPLE_DELAY, dtype=np.float32), as_float(resample(pcm, RATE, 16000))]
    )
    reference = offline_probs(upsampled)
    count = min(len(streamed), len(reference))  # the stream's last frame is padded
    assert count > 200
    streamed, reference = streamed[:count], reference[:count]
    assert np.abs(streamed - reference).mean() <= 0.02
    assert ((streamed >= 0.5) == (reference >= 0.5)).mean() >= 0.97


@needs_silero
@pytest.mark.parametrize("speaker", ["george", "jackson", "nicolas", "yweweler"])
def test_silero_agrees_with_webrtc_on_where_the_speech_is(speaker: str, shared_data: Path) -> None:
    # One caller reading ten digits with 400 ms pauses; frames within 60 ms of a word edge are
    # left out, since each detector has its own onset lag and hangover.
    frame_list: list[bytes] = []
    truth: list[bool] = []
    for digit in range(10):
        word = frames(fsdd(shared_data, f"{digit}_{speaker}_7.wav"))
        frame_list += [SILENCE] * 20 + word
        truth += [False] * 20 + [True] * len(word)
    frame_list += [SILENCE] * 20
    truth += [False] * 20
    labels = np.array(truth)
    keep = np.ones(len(labels), dtype=bool)
    for edge in np.flatnonzero(np.diff(labels)) + 1:
        keep[max(edge - 3, 0) : edge + 4] = False

    silero = decide(create_detector("silero"), frame_list)[keep]
    webrtc = decide(create_detector("webrtc"), frame_list)[keep]
    assert (silero == webrtc).mean() >= 0.9
    assert (silero == labels[keep]).mean() >= 0.9


@needs_silero
def test_silero_detectors_share_the_model_but_not_their_state(shared_data: Path) -> None:
    from app.vad.silero import load_session

    assert load_session() is load_session()
    first = frames(fsdd(shared_data, "3_nicolas_12.wav"))
    second = frames(fsdd(shared_data, "8_yweweler_30.wav"))
    count = min(len(first), len(second))
    alone = [streamed_probs(create_detector("silero"), part[:count]) for part in (first, second)]

    # Two calls' frames arriving turn about, one detector each.
    one, two = create_detector("silero"), create_detector("silero")
    mixed: tuple[list[float], list[float]] = ([], [])
    for index in range(count):
        for detector, part, out in ((one, first, mixed[0]), (two, second, mixed[1])):
            detector.is_speech(part[index])
            if (index * 320 + 320) // 512 > index * 320 // 512:
                out.append(detector.probability)
    assert [list(trace) for trace in alone] == [mixed[0], mixed[1]]
    assert alone[0].tolist() != alone[1].tolist()


@needs_silero
def test_silero_holds_speech_until_the_probability_drops_below_the_hysteresis(
    shared_data: Path,
) -> None:
    # Silero's own rule: speech starts at p >= threshold and ends only at p < threshold - 0.15.
    wide, rate = read_wav(shared_data / "speech" / "digits_phrase.wav")
    detector = create_detector("silero", threshold=0.6)
    speaking, held = False, 0
    for frame in frames(resample(wide, rate, RATE)):
        decision = detector.is_speech(frame)
        if detector.probability >= 0.6:
            speaking = True
        elif detector.probability < 0.45:
            speaking = False
        else:
            held += speaking
        assert decision == speaking
    assert held >= 5, "the recording should exercise the hysteresis band"


@needs_silero
def test_silero_reset_replays_probabilities_exactly(shared_data: Path) -> None:
    word = frames(fsdd(shared_data, "5_george_3.wav"))
    fresh = streamed_probs(create_detector("silero"), word)
    detector = create_detector("silero")
    other = frames(fsdd(shared_data, "6_jackson_9.wav"))
    streamed_probs(detector, other[: len(other) // 2])
    detector.reset()
    assert streamed_probs(detector, word).tolist() == fresh.tolist()


@needs_silero
def test_silero_missing_model_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "silero_vad_v6.onnx"
    with pytest.raises(VadError, match="not found") as caught:
        create_detector("silero", model_path=path)
    assert str(path) in str(caught.value)


@needs_silero
def test_silero_without_onnxruntime_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(VadError, match=r"pip install 'switchboard\[silero\]'"):
        create_detector("silero", model_path=tmp_path / "not-loaded-yet.onnx")
