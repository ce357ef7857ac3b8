"""Piper engine: voice files and errors, sentence streaming, and real synthesis with weights.

- Voice discovery and every load error run through the real loader (JSON, piper-tts, ONNX
  Runtime) on files made here.
- Sentence streaming, voice selection, caching and resampling are tested with a real
  `PiperVoice` (Piper's own eSpeak phonemiser and sentence splitting) whose ONNX session is
  `ToneSession`, a stand-in at the model boundary that returns a tone as long as the phoneme
  ids. These test the streaming logic only, not speech.
- Speech itself needs weights: set SWITCHBOARD_MODELS_DIR to a directory holding
  `en_US-joe-medium.onnx` and `en_US-joe-medium.onnx.json` (rhasspy/piper-voices).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from piper import PiperConfig, PiperVoice
from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

from app.media.audio import CALL_RATE, pcm_duration
from app.media.resample import resample
from app.tts.base import TtsError
from app.tts.piper import PiperEngine
from tests.model_files import models_root

PIPER_VOICE = "en_US-joe-medium"
SAMPLES_PER_ID = 200
THREE_SENTENCES = "Hello there. Your balance is five dollars! Is that right?"


def _config(rate: int) -> dict[str, Any]:
    """A voice config as Piper publishes them (the fields piper-tts reads)."""
    return {
        "audio": {"sample_rate": rate},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "num_symbols": 256,
        "num_speakers": 1,
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "phoneme_type": "espeak",
    }


def _voice_files(folder: Path, name: str, rate: int = 22050) -> Path:
    model = folder / f"{name}.onnx"
    model.write_bytes(b"stand-in: never given to ONNX Runtime")
    (folder / f"{name}.onnx.json").write_text(json.dumps(_config(rate)))
    return model


class ToneSession:
    """Stands in for the voice's `onnxruntime.InferenceSession`: a tone, length by input."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.inputs: list[dict[str, np.ndarray]] = []
        self.fail_on_call = fail_on_call

    def run(self, _outputs: Any, args: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.inputs.append(args)
        if self.fail_on_call == len(self.inputs):
            raise RuntimeError("ONNX Runtime: out of memory")
        n = args["input"].shape[1] * SAMPLES_PER_ID
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 22050)
        return [tone.astype(np.float32).reshape(1, 1, n)]


class ToneLoader:
    """A `load_voice` that builds a real PiperVoice around a ToneSession; counts loads."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.loads: list[str] = []
        self.sessions: dict[str, ToneSession] = {}
        self.fail_on_call = fail_on_call
        self._lock = threading.Lock()

    def __call__(self, model: Path, config: Path) -> PiperVoice:
        with self._lock:
            self.loads.append(model.stem)
        session = ToneSession(self.fail_on_call)
        self.sessions[model.stem] = session
        config_dict = json.loads(config.read_text())
        # The session is the stand-in; everything else is piper-tts's own.
        return PiperVoice(session=session, config=PiperConfig.from_dict(config_dict))  # type: ignore[arg-type]


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    _voice_files(tmp_path, "amy", 22050)
    _voice_files(tmp_path, "kathleen-low", 16000)
    return tmp_path


# --- voice files and errors (real loader) --------------------------------------------------


def test_missing_voices_directory(tmp_path: Path) -> None:
    with pytest.raises(TtsError) as error:
        PiperEngine(tmp_path / "voices", voice="amy")
    assert str(tmp_path / "voices") in str(error.value)
    assert "rhasspy/piper-voices" in str(error.value)


def test_missing_voice_lists_the_installed_ones(voices: Path) -> None:
    with pytest.raises(TtsError, match=r"voice 'bob' not found.*installed: amy, kathleen-low"):
        PiperEngine(voices, voice="bob", load_voice=ToneLoader())


def test_model_without_its_config(tmp_path: Path) -> None:
    (tmp_path / "amy.onnx").write_bytes(b"x")
    with pytest.raises(TtsError, match=r"no config .*amy\.onnx\.json"):
        PiperEngine(tmp_path / "amy.onnx")


def test_default_voice_needed_when_several_are_installed(voices: Path) -> None:
    with pytest.raises(TtsError, match=r"name the default Piper voice.*amy, kathleen-low"):
        PiperEngine(voices, load_voice=ToneLoader())
    (voices / "kathleen-low.onnx").unlink()
    assert PiperEngine(voices, load_voice=ToneLoader()).voice == "amy"


def test_corrupt_model_is_a_tts_error(tmp_path: Path) -> None:
    model = _voice_files(tmp_path, "amy")
    with pytest.raises(TtsError, match=f"could not load the voice model {model}"):
        PiperEngine(model)


@pytest.mark.parametrize(
    ("config", "message"),
    [("{not json", "not readable JSON"), ('{"audio": {}}', "config .* is not usable")],
)
def test_bad_config_is_a_tts_error(tmp_path: Path, config: str, message: str) -> None:
    model = _voice_files(tmp_path, "amy")
    (tmp_path / "amy.onnx.json").write_text(config)
    with pytest.raises(TtsError, match=message):
        PiperEngine(model)


def test_voice_names_cannot_leave_the_directory(voices: Path) -> None:
    engine = PiperEngine(voices, voice="amy", load_voice=ToneLoader())
    for name in ("../amy", "/etc/passwd", "", ".hidden", "a b"):
        with pytest.raises(TtsError, match="invalid Piper voice name"):
            list(engine.synthesize("hi", voice=name))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length_scale": 10.0}, "length_scale"),
        ({"volume": 0.0}, "volume"),
        ({"sentence_silence_s": -1.0}, "sentence_silence_s"),
        ({"cpu_threads": -1}, "cpu_threads"),
    ],
)
def test_bad_settings(voices: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TtsError, match=message):
        PiperEngine(voices, voice="amy", load_voice=ToneLoader(), **kwargs)


def test_model_file_and_voice_name_must_agree(voices: Path) -> None:
    engine = PiperEngine(voices / "amy.onnx", load_voice=ToneLoader())
    assert (engine.voice, engine.voices_dir, engine.sample_rate) == ("amy", voices, 22050)
    with pytest.raises(TtsError, match="given with the model file"):
        PiperEngine(voices / "amy.onnx", voice="kathleen-low", load_voice=ToneLoader())


# --- streaming logic (real PiperVoice, stand-in ONNX session) ------------------------------


def test_each_sentence_is_yielded_as_soon_as_it_is_rendered(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", load_voice=loader)
    session = loader.sessions["amy"]
    chunks = engine.synthesize(THREE_SENTENCES)
    first = next(chunks)
    assert len(session.inputs) == 1  # the later sentences are not rendered yet
    rest = list(chunks)
    assert len(session.inputs) == 3
    # In order: each chunk is the audio of the session call made for it.
    lengths = [len(c) // 2 for c in (first, *rest)]
    assert lengths == [a["input"].shape[1] * SAMPLES_PER_ID for a in session.inputs]


def test_output_is_16_bit_pcm_at_the_voice_rate_with_headroom(voices: Path) -> None:
    engine = PiperEngine(voices, voice="amy", load_voice=ToneLoader())
    assert engine.name == "piper" and engine.sample_rate == 22050
    pcm = b"".join(engine.synthesize("One two three."))
    samples = np.frombuffer(pcm, "<i2")
    # Piper normalises each sentence to full scale; volume 0.9 leaves 10 % headroom.
    assert np.abs(samples).max() == pytest.approx(0.9 * 32767, rel=0.01)


def test_synthesis_settings_reach_the_model(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", length_scale=1.25, noise_scale=0.5, load_voice=loader)
    list(engine.synthesize("Hello."))
    noise, length, noise_w = loader.sessions["amy"].inputs[0]["scales"]
    assert (noise, length, noise_w) == (pytest.approx(0.5), 1.25, pytest.approx(0.8))


def test_sentence_silence_follows_each_sentence(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", sentence_silence_s=0.25, load_voice=loader)
    chunks = list(engine.synthesize("Hello there. Goodbye now."))
    for chunk, args in zip(chunks, loader.sessions["amy"].inputs, strict=True):
        speech = args["input"].shape[1] * SAMPLES_PER_ID
        assert len(chunk) // 2 == speech + round(0.25 * 22050)
        assert chunk[speech * 2 :] == b"\x00" * (len(chunk) - speech * 2)


def test_another_voice_is_resampled_to_the_engine_rate(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", load_voice=loader)
    assert loader.loads == ["amy"]  # the default voice loads at start-up, others on demand
    pcm = b"".join(engine.synthesize(THREE_SENTENCES, voice="kathleen-low"))
    assert loader.loads == ["amy", "kathleen-low"]
    rendered = sum(a["input"].shape[1] for a in loader.sessions["kathleen-low"].inputs)
    seconds = rendered * SAMPLES_PER_ID / 16000
    assert pcm_duration(len(pcm), engine.sample_rate) == pytest.approx(seconds, abs=0.01)
    # The session's tone, 440 * 16000 / 22050 = 319 Hz as the 16 kHz voice plays it, keeps its
    # pitch: resampled, not merely relabelled (which would make it 440 Hz and too short).
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    peak = np.fft.rfftfreq(len(samples), 1 / 22050)[np.abs(np.fft.rfft(samples)).argmax()]
    assert peak == pytest.approx(440 * 16000 / 22050, abs=3)


def test_voices_load_once_under_concurrent_calls(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", load_voice=loader)
    with ThreadPoolExecutor(8) as pool:
        outputs = list(
            pool.map(lambda _: b"".join(engine.synthesize("Hi.", "kathleen-low")), range(16))
        )
    list(engine.synthesize("Hi.", "kathleen-low.onnx"))  # the file name is the same voice
    assert loader.loads == ["amy", "kathleen-low"]
    assert len(set(outputs)) == 1


def test_blank_text_yields_nothing_but_a_bad_voice_still_fails(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", load_voice=loader)
    assert list(engine.synthesize("  \n")) == []
    assert loader.sessions["amy"].inputs == []
    with pytest.raises(TtsError, match="not found"):
        list(engine.synthesize("", voice="bob"))


def test_raw_phoneme_markup_is_read_as_text(voices: Path) -> None:
    loader = ToneLoader()
    engine = PiperEngine(voices, voice="amy", load_voice=loader)
    list(engine.synthesize("Code [[ ʘʘʘ ]] ok"))  # Piper would send the click phoneme as is
    ids = loader.sessions["amy"].inputs[0]["input"][0].tolist()
    assert DEFAULT_PHONEME_ID_MAP["ʘ"][0] not in ids


def test_a_failure_mid_prompt_is_a_tts_error_after_the_audio_so_far(voices: Path) -> None:
    engine = PiperEngine(voices, voice="amy", load_voice=ToneLoader(fail_on_call=2))
    chunks = engine.synthesize(THREE_SENTENCES)
    assert next(chunks)
    with pytest.raises(TtsError, match="failed to synthesise: ONNX Runtime: out of memory"):
        next(chunks)


# --- real weights --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine() -> PiperEngine:
    # the layout `switchboard models pull en_US-joe-medium` installs: <models>/piper/
    root = models_root(f"piper/{PIPER_VOICE}.onnx", f"piper/{PIPER_VOICE}.onnx.json")
    return PiperEngine(root / "piper" / f"{PIPER_VOICE}.onnx", cpu_threads=2)


def test_real_sentence_of_plausible_duration_and_energy(real_engine: PiperEngine) -> None:
    assert real_engine.sample_rate == 22050
    pcm = b"".join(real_engine.synthesize("Your account balance is one hundred dollars."))
    seconds = pcm_duration(len(pcm), real_engine.sample_rate)
    assert 1.5 <= seconds <= 6.0, seconds
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 1000, f"near-silent synthesis (rms {rms:.0f})"
    assert np.abs(samples).max() <= 0.9 * 32767 + 1


def test_real_sentences_stream_one_by_one(real_engine: PiperEngine) -> None:
    chunks = list(real_engine.synthesize(THREE_SENTENCES))
    assert len(chunks) == 3
    assert all(pcm_duration(len(c), 22050) > 0.4 for c in chunks)


def test_real_length_scale_slows_speech(real_engine: PiperEngine) -> None:
    slow = PiperEngine(real_engine.voices_dir, voice=PIPER_VOICE, length_scale=1.5)
    text = "Please hold the line."
    normal_s = len(b"".join(real_engine.synthesize(text)))
    slow_s = len(b"".join(slow.synthesize(text)))
    assert slow_s > 1.25 * normal_s


def test_real_speech_is_recognised_by_whisper(real_engine: PiperEngine) -> None:
    """Piper's voice, through the call's 8 kHz, is read back exactly by real Whisper weights."""
    root = models_root("faster-whisper-tiny.en")
    from app.asr.base import RecognitionOptions
    from app.asr.numbers import spoken_digits
    from app.asr.whisper import WhisperEngine

    asr = WhisperEngine(root / "faster-whisper-tiny.en", cpu_threads=2, partial_interval_s=None)
    pcm = b"".join(real_engine.synthesize("four one seven zero nine two"))
    pcm = resample(pcm, real_engine.sample_rate, CALL_RATE)
    stream = asr.open_stream(RecognitionOptions(grammar="digits"))
    for start in range(0, len(pcm), 320):
        stream.feed(pcm[start : start + 320])
    assert spoken_digits(stream.finish().text) == "417092"
