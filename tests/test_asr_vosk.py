"""Vosk engine: grammar mapping, model loading, result handling, and real speech with weights.

- `grammar_phrases` is pure: tested with option sets and a vocabulary predicate.
- Loading runs the real libvosk on missing and empty model directories.
- `VoskStream`'s result handling (segments Vosk closes mid-turn, "[unk]", confidence) is tested
  with `ScriptedRecognizer`, a stand-in for `vosk.KaldiRecognizer` at the model boundary: it
  tests our bookkeeping only, not recognition.
- Recognition runs only with real weights: set SWITCHBOARD_MODELS_DIR to a directory holding
  `vosk-model-small-en-us-0.15/` (from https://alphacephei.com/vosk/models).
"""

from __future__ import annotations

import json
import random
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from app.asr.base import AsrError, AsrResult, RecognitionOptions
from app.asr.grammars import NO_WORDS, YES_WORDS
from app.asr.numbers import spoken_digits
from app.asr.vosk import UNKNOWN, VoskEngine, VoskStream, grammar_phrases
from app.media.audio import CALL_RATE, frame_bytes
from app.media.g711 import pcm_to_ulaw, ulaw_to_pcm
from app.media.resample import resample
from tests.model_files import models_root

VOSK_MODEL = "vosk-model-small-en-us-0.15"
FRAME = frame_bytes(CALL_RATE)
DIGIT_VOCABULARY = ["eight", "five", "four", "nine", "oh", "one", "seven", "six", "three", "two"]


# --- grammar mapping -----------------------------------------------------------------------


def test_open_vocabulary_has_no_grammar() -> None:
    assert grammar_phrases(RecognitionOptions()) is None
    assert grammar_phrases(RecognitionOptions(extra_phrases=("agent",))) is None


def test_digits_grammar_is_a_loop_of_digit_words() -> None:
    phrases = grammar_phrases(RecognitionOptions(grammar="digits"))
    assert phrases == [*DIGIT_VOCABULARY, "zero", UNKNOWN]
    assert json.loads(json.dumps(phrases)) == phrases  # what KaldiRecognizer is given


def test_yes_no_and_extra_phrases() -> None:
    phrases = grammar_phrases(RecognitionOptions(grammar="yes_no", extra_phrases=("Agent!",)))
    assert phrases is not None
    assert set(phrases[:-2]) == {*YES_WORDS, *NO_WORDS}
    assert phrases[-2:] == ["agent", UNKNOWN]


def test_phrase_list_keeps_order_and_drops_duplicates() -> None:
    options = RecognitionOptions(
        phrases=("Checking account", "savings", "checking  account"),
        extra_phrases=("savings", "operator"),
    )
    assert grammar_phrases(options) == ["checking account", "savings", "operator", UNKNOWN]


def test_structured_grammar_is_its_vocabulary() -> None:
    phrases = grammar_phrases(RecognitionOptions(grammar="number"))
    assert phrases is not None
    assert {"hundred", "thousand", "and", "twenty", "nine"} <= set(phrases)
    assert phrases[-1] == UNKNOWN


def test_jsgf_is_approximated_by_its_words(caplog: pytest.LogCaptureFixture) -> None:
    jsgf = "#JSGF V1.0;\ngrammar g;\npublic <g> = ( red | green ) apple ;\n"
    assert grammar_phrases(RecognitionOptions(jsgf=jsgf)) == ["apple", "green", "red", UNKNOWN]
    assert "Vosk takes no JSGF" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RecognitionOptions(grammar="digits", phrases=("a",)), "only one of"),
        (RecognitionOptions(grammar="postcode"), "unknown grammar 'postcode'"),
        (RecognitionOptions(phrases=("yes", "  ")), "phrase '  ' has no words"),
        (RecognitionOptions(grammar="digits", extra_phrases=("?",)), "extra phrase"),
    ],
)
def test_bad_options_are_asr_errors(options: RecognitionOptions, message: str) -> None:
    with pytest.raises(AsrError, match=message):
        grammar_phrases(options)


def test_words_the_model_lacks() -> None:
    known = {"yes", "no", "agent", "zero", "one", "two"}.__contains__
    # A built-in grammar's missing words are left out...
    assert grammar_phrases(RecognitionOptions(grammar="digits"), known) == [
        "one",
        "two",
        "zero",
        UNKNOWN,
    ]
    # ...a dialplan's phrase with a missing word is refused, naming the word.
    with pytest.raises(AsrError, match="vocabulary: savings"):
        grammar_phrases(RecognitionOptions(phrases=("yes", "savings")), known)
    with pytest.raises(AsrError, match="vocabulary: operator"):
        grammar_phrases(RecognitionOptions(grammar="yes_no", extra_phrases=("operator",)), known)
    with pytest.raises(AsrError, match="none of the words of grammar 'date'"):
        grammar_phrases(RecognitionOptions(grammar="date"), {"zzz"}.__contains__)


# --- model loading (real libvosk, no weights) ----------------------------------------------


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / VOSK_MODEL
    with pytest.raises(AsrError) as error:
        VoskEngine(missing)
    assert str(missing) in str(error.value)
    assert "alphacephei.com/vosk/models" in str(error.value)


def test_directory_without_a_model_is_an_asr_error(tmp_path: Path) -> None:
    with pytest.raises(AsrError, match=f"could not load a model from {tmp_path}"):
        VoskEngine(tmp_path)


# --- result handling, with a stand-in recognizer -------------------------------------------


class ScriptedRecognizer:
    """Stands in for `vosk.KaldiRecognizer`: replays results, one step per AcceptWaveform.

    A step is ("partial", text) or ("segment", [(word, conf)]), the latter as Vosk closes a
    segment at a pause; `final` is what FinalResult gives.
    """

    def __init__(self, steps: list[tuple[str, object]], final: list[tuple[str, float]]) -> None:
        self.steps = list(steps)
        self.final = final
        self.fed = 0

    def AcceptWaveform(self, data: bytes) -> bool:
        self.fed += len(data)
        self.current = self.steps.pop(0) if self.steps else ("partial", "")
        return self.current[0] == "segment"

    def PartialResult(self) -> str:
        return json.dumps({"partial": self.current[1]})

    def Result(self) -> str:
        return _result(self.current[1])  # type: ignore[arg-type] - a segment step

    def FinalResult(self) -> str:
        return _result(self.final)


def _result(words: list[tuple[str, float]]) -> str:
    if not words:
        return json.dumps({"text": ""})
    return json.dumps(
        {
            "result": [{"word": w, "conf": c, "start": 0.0, "end": 0.1} for w, c in words],
            "text": " ".join(w for w, _ in words),
        }
    )


def test_segments_closed_mid_turn_are_kept_and_unknown_dropped() -> None:
    recognizer = ScriptedRecognizer(
        [
            ("partial", "one"),
            ("partial", "one"),
            ("partial", "one two"),
            ("segment", [("one", 1.0), ("two", 0.8)]),
            ("partial", "[unk]"),
            ("partial", "[unk] three"),
        ],
        final=[("[unk]", 0.1), ("three", 0.6)],
    )
    stream = VoskStream(recognizer)
    partials = [stream.feed(b"\x00" * FRAME) for _ in range(6)]
    assert [p.text if p else None for p in partials] == [
        "one",
        None,  # unchanged
        "one two",
        None,  # the segment closed: same words
        None,
        "one two three",
    ]
    assert all(p.confidence == 0.0 and not p.is_final for p in partials if p)
    final = stream.finish()
    assert final == AsrResult("one two three", pytest.approx(0.8), True, "vosk")
    assert recognizer.fed == 6 * FRAME


def test_silence_gives_an_empty_final() -> None:
    stream = VoskStream(ScriptedRecognizer([], final=[]))
    assert stream.feed(b"\x00" * FRAME) is None
    assert stream.finish() == AsrResult("", 0.0, True, "vosk")


def test_stream_misuse_is_an_asr_error() -> None:
    stream = VoskStream(ScriptedRecognizer([], final=[]))
    with pytest.raises(AsrError, match="16-bit"):
        stream.feed(b"\x00\x00\x00")
    assert stream.feed(b"") is None
    stream.finish()
    with pytest.raises(AsrError, match="already finished"):
        stream.feed(b"\x00\x00")
    closed = VoskStream(ScriptedRecognizer([], final=[]))
    closed.close()
    with pytest.raises(AsrError, match="already finished"):
        closed.finish()


# --- real weights --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> VoskEngine:
    return VoskEngine(models_root(VOSK_MODEL) / VOSK_MODEL)


def _read(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        return wav.readframes(wav.getnframes()), wav.getframerate()


def _telephone(path: Path) -> bytes:
    """A recording as a call delivers it: 8 kHz, through G.711 mu-law and back."""
    pcm, rate = _read(path)
    return ulaw_to_pcm(pcm_to_ulaw(resample(pcm, rate, CALL_RATE)))


def _recognise(
    engine: VoskEngine, pcm: bytes, options: RecognitionOptions | None = None
) -> tuple[AsrResult, list[AsrResult]]:
    stream = engine.open_stream(options)
    partials = []
    for start in range(0, len(pcm), FRAME):
        result = stream.feed(pcm[start : start + FRAME])
        if result is not None:
            partials.append(result)
    return stream.finish(), partials


def _manifest_text(folder: Path, audio: str) -> str:
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        if line.strip() and json.loads(line)["audio"] == audio:
            return json.loads(line)["text"]
    raise AssertionError(f"{audio} not in {folder}/manifest.jsonl")


def test_real_model_takes_runtime_grammars(engine: VoskEngine) -> None:
    assert engine.sample_rate == CALL_RATE
    assert engine.runtime_grammars  # the small models have graph/HCLr.fst and Gr.fst
    assert engine.knows("seven") and not engine.knows("qqqzzx")
    with pytest.raises(AsrError, match="qqqzzx"):
        engine.check_options(RecognitionOptions(phrases=("yes", "qqqzzx")))
    with pytest.raises(AsrError, match="not 'de-DE'"):
        engine.open_stream(RecognitionOptions(language="de-DE"))


def test_real_sentence_over_the_telephone(engine: VoskEngine, shared_data: Path) -> None:
    speech = shared_data / "speech"
    reference = _manifest_text(speech, "jfk.wav")
    result, partials = _recognise(engine, _telephone(speech / "jfk.wav"))
    wer = jiwer.wer(reference, result.text or "-")
    print(f"\nvosk jfk: {result.text!r} WER {wer:.0%} confidence {result.confidence:.2f}")
    assert wer <= 0.35
    assert 0.3 <= result.confidence <= 1.0
    assert partials and all(not p.is_final for p in partials)


def test_real_digit_phrase_under_the_digits_grammar(engine: VoskEngine, shared_data: Path) -> None:
    speech = shared_data / "speech"
    reference = spoken_digits(_manifest_text(speech, "digits_phrase.wav"))
    pcm = _telephone(speech / "digits_phrase.wav")
    result, _ = _recognise(engine, pcm, RecognitionOptions(grammar="digits"))
    heard = spoken_digits(result.text)
    errors = jiwer.process_words(" ".join(reference), " ".join(heard) or "-")
    rate = (errors.substitutions + errors.deletions + errors.insertions) / len(reference)
    print(f"\nvosk digits: {result.text!r} -> {heard} (digit error rate {rate:.0%})")
    assert set(result.text.split()) <= {*DIGIT_VOCABULARY, "zero"}
    assert rate <= 0.3


def test_real_fsdd_digit_strings(
    engine: VoskEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    rng = random.Random(3)
    by_speaker: dict[str, list[dict]] = {}
    for row in fsdd_manifest:
        by_speaker.setdefault(row["speaker"], []).append(row)
    exact = 0
    strings = 16
    for i in range(strings):
        rows = [rng.choice(by_speaker[sorted(by_speaker)[i % 4]]) for _ in range(4)]
        noise = np.random.default_rng(i)
        parts = [noise.normal(0, 10, 2400)]
        for row in rows:
            pcm, _ = _read(shared_data / "fsdd" / row["audio"])
            clip = np.frombuffer(pcm, "<i2").astype(np.float64)
            parts += [clip - clip.mean(), noise.normal(0, 10, int(CALL_RATE * 0.3))]
        pcm = np.clip(np.concatenate(parts), -32768, 32767).astype("<i2").tobytes()
        result, _ = _recognise(engine, pcm, RecognitionOptions(grammar="digits"))
        exact += spoken_digits(result.text) == "".join(row["audio"][0] for row in rows)
    print(f"\nvosk FSDD 4-digit strings exact: {exact}/{strings}")
    assert exact >= strings // 4


def test_real_phrase_list_only_gives_listed_phrases(
    engine: VoskEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    options = RecognitionOptions(phrases=("seven", "eight"))
    heard = []
    for row in [r for r in fsdd_manifest if r["text"] in ("seven", "eight")][:20]:
        pcm, _ = _read(shared_data / "fsdd" / row["audio"])
        result, _ = _recognise(engine, pcm, options)
        assert result.text in ("", "seven", "eight", "seven seven", "eight eight")
        heard.append(result.text.split()[:1] == [row["text"]])
    assert sum(heard) >= len(heard) // 2
