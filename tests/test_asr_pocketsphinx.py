"""PocketSphinx engine on real telephone speech (FSDD, 8 kHz), as a call feeds it.

Audio takes the call's path: 8 kHz PCM fed in 20 ms frames at the engine's `sample_rate`.
Digit strings are FSDD files of one speaker joined by 250-400 ms pauses; each file gets its DC
offset removed and 10 ms fades, because FSDD cuts are abrupt and a click between two clips is a
artefact no caller produces. Accuracy bounds are set from measured figures, with headroom: the
bundled model is wideband US English, and FSDD is telephone band with three accented speakers.
"""

from __future__ import annotations

import itertools
import random
import threading
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from app.asr.base import AsrError, AsrResult, RecognitionOptions
from app.asr.grammars import NO_WORDS, YES_WORDS
from app.asr.numbers import spoken_digits
from app.asr.pocketsphinx import PocketSphinxEngine
from app.media.audio import CALL_RATE, frame_bytes
from app.media.resample import resample
from app.tts.espeak import EspeakEngine

DIGITS = RecognitionOptions(grammar="digits")


@pytest.fixture(scope="module")
def engine() -> PocketSphinxEngine:
    return PocketSphinxEngine(pool_size=3, preload=1)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2"), wav.getframerate()


def _clip(path: Path) -> np.ndarray:
    """One FSDD file at 8 kHz as float, DC removed, 10 ms fade in and out."""
    samples, rate = _read_wav(path)
    assert rate == CALL_RATE
    x = samples.astype(np.float64)
    x -= x.mean()
    ramp = np.linspace(0.0, 1.0, CALL_RATE // 100)
    x[: ramp.size] *= ramp
    x[-ramp.size :] *= ramp[::-1]
    return x


def _pause(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Line noise at about -70 dBFS: telephone silence is never digital zero for long."""
    return rng.normal(0.0, 10.0, int(CALL_RATE * seconds))


def _utterance(paths: list[Path], seed: int) -> bytes:
    """Clips joined by 250-400 ms pauses, with 300 ms either side as the endpointer keeps."""
    rng = np.random.default_rng(seed)
    parts = [_pause(rng, 0.3)]
    for path in paths:
        parts += [_clip(path), _pause(rng, rng.uniform(0.25, 0.4))]
    parts[-1] = _pause(rng, 0.3)
    return np.clip(np.round(np.concatenate(parts)), -32768, 32767).astype("<i2").tobytes()


def _recognise(
    engine: PocketSphinxEngine, pcm: bytes, options: RecognitionOptions | None = DIGITS
) -> tuple[AsrResult, list[AsrResult]]:
    """Feed 8 kHz `pcm` as a call does: 20 ms frames at the engine's rate."""
    pcm = resample(pcm, CALL_RATE, engine.sample_rate)
    frame = frame_bytes(engine.sample_rate)
    stream = engine.open_stream(options)
    partials = []
    for start in range(0, len(pcm), frame):
        partial = stream.feed(pcm[start : start + frame])
        if partial is not None:
            partials.append(partial)
    return stream.finish(), partials


def _by_speaker(manifest: list[dict]) -> dict[str, list[dict]]:
    speakers: dict[str, list[dict]] = {}
    for row in manifest:
        speakers.setdefault(row["speaker"], []).append(row)
    return speakers


def _digit_strings(fsdd: Path, manifest: list[dict], count: int) -> list[tuple[str, str, bytes]]:
    """`count` strings of 4-6 digits, speakers in turn: (speaker, reference digits, 8 kHz PCM)."""
    rng = random.Random(5)
    speakers = _by_speaker(manifest)
    names = sorted(speakers)
    out = []
    for i in range(count):
        speaker = names[i % len(names)]
        rows = [rng.choice(speakers[speaker]) for _ in range(rng.randint(4, 6))]
        reference = "".join(row["audio"].split("_", 1)[0] for row in rows)
        out.append((speaker, reference, _utterance([fsdd / row["audio"] for row in rows], i)))
    return out


def test_digit_strings_mixed_speakers(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    strings = _digit_strings(shared_data / "fsdd", fsdd_manifest, 32)
    exact: dict[str, list[bool]] = {}
    confidence: dict[bool, list[float]] = {True: [], False: []}
    errors = words = 0
    for speaker, reference, pcm in strings:
        result, _ = _recognise(engine, pcm)
        assert result.is_final and result.engine == "pocketsphinx"
        assert 0.0 <= result.confidence <= 1.0
        heard = spoken_digits(result.text)
        exact.setdefault(speaker, []).append(heard == reference)
        confidence[heard == reference].append(result.confidence)
        measures = jiwer.process_words(" ".join(reference), " ".join(heard) or "-")
        errors += measures.substitutions + measures.deletions + measures.insertions
        words += len(reference)
    rate = sum(sum(v) for v in exact.values()) / len(strings)
    per = {speaker: f"{sum(v)}/{len(v)}" for speaker, v in sorted(exact.items())}
    print(
        f"\ndigit strings exact {rate:.0%} of {len(strings)}, digit error rate "
        f"{errors / words:.0%}, by speaker {per}"
    )
    # Measured on this sample: 22 % exact (7/32), 35 % digit errors; the exact ones all from the
    # US and German speakers. Over other samples of 32: 9-31 % exact, 35-49 % digit errors.
    # The model is wideband US English: "six" loses its /s/ above 4 kHz and reads as "eight".
    assert rate >= 0.12
    assert errors / words <= 0.5
    # Confidence means something: right strings score higher than wrong ones on average.
    assert np.mean(confidence[True]) > np.mean(confidence[False])


def test_single_digits_by_speaker(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    rng = random.Random(3)
    correct: dict[str, list[bool]] = {}
    for speaker, rows in sorted(_by_speaker(fsdd_manifest).items()):
        for i, row in enumerate(rng.sample(rows, 25)):
            result, _ = _recognise(engine, _utterance([shared_data / "fsdd" / row["audio"]], i))
            correct.setdefault(speaker, []).append(spoken_digits(result.text) == row["audio"][0])
    per = {speaker: sum(v) / len(v) for speaker, v in correct.items()}
    overall = sum(sum(v) for v in correct.values()) / sum(len(v) for v in correct.values())
    print(f"\nsingle digits {overall:.0%}; " + ", ".join(f"{k} {v:.0%}" for k, v in per.items()))
    # Measured: this sample 55 % (jackson 64 %); all 2,000 files 57 %: jackson 78 %, yweweler
    # 82 %, george 39 %, nicolas 28 %.
    assert overall >= 0.45
    assert per["jackson"] >= 0.5


def test_phrase_list_picks_the_spoken_phrase(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    options = RecognitionOptions(phrases=("One", "two", "three"))
    rows = [r for r in fsdd_manifest if r["text"] in ("one", "two", "three")]
    sample = random.Random(1).sample(rows, 30)
    hits = 0
    for i, row in enumerate(sample):
        result, _ = _recognise(
            engine, _utterance([shared_data / "fsdd" / row["audio"]], i), options
        )
        assert result.text in ("one", "two", "three")
        hits += result.text == row["text"]
    print(f"\nphrase list one/two/three: {hits}/{len(sample)}")
    assert hits / len(sample) >= 0.7


def test_streaming_equals_one_feed_and_partials_arrive(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    _, _, pcm = _digit_strings(shared_data / "fsdd", fsdd_manifest, 2)[1]
    streamed, partials = _recognise(engine, pcm)
    stream = engine.open_stream(DIGITS)
    stream.feed(resample(pcm, CALL_RATE, engine.sample_rate))
    whole = stream.finish()
    assert streamed.text and streamed.text == whole.text
    assert streamed.confidence == whole.confidence  # bit-exact: chunking changes nothing
    assert partials and all(not p.is_final and p.engine == "pocketsphinx" for p in partials)
    assert all(a.text != b.text for a, b in itertools.pairwise(partials))
    assert partials[-1].text.split()[0] == streamed.text.split()[0]


def test_prepared_final_is_the_final_and_speech_after_it_carries_on(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    """prepare_final() during a pause gives what finish() would; if the caller goes on, the
    utterance continues and its final covers all of it, as if there had been no pause."""
    strings = _digit_strings(shared_data / "fsdd", fsdd_manifest, 3)
    first, second = strings[1][2], strings[2][2]
    whole, _ = _recognise(engine, first + second)
    alone, _ = _recognise(engine, first)
    assert whole.text and alone.text and whole.text != alone.text

    frame = frame_bytes(engine.sample_rate)
    stream = engine.open_stream(DIGITS)

    def feed(pcm: bytes) -> None:
        pcm = resample(pcm, CALL_RATE, engine.sample_rate)
        for start in range(0, len(pcm), frame):
            stream.feed(pcm[start : start + frame])

    feed(first)
    prepared = stream.prepare_final()
    assert prepared.is_final and (prepared.text, prepared.confidence) == (
        alone.text,
        alone.confidence,
    )
    assert stream.prepare_final() is prepared  # asked twice, computed once
    feed(second)
    assert stream.finish().text == whole.text

    stream = engine.open_stream(DIGITS)
    feed(first)
    prepared = stream.prepare_final()
    assert stream.finish() is prepared
    with pytest.raises(AsrError, match="already finished"):
        stream.prepare_final()


def test_concurrent_streams_from_threads(
    engine: PocketSphinxEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    strings = _digit_strings(shared_data / "fsdd", fsdd_manifest, 3)
    expected = [_recognise(engine, pcm)[0].text for _, _, pcm in strings]
    got: dict[int, str] = {}

    def work(i: int) -> None:
        got[i] = _recognise(engine, strings[i][2])[0].text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(strings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [got.get(i) for i in range(len(strings))] == expected


def test_digits_phrase_recording(engine: PocketSphinxEngine, shared_data: Path) -> None:
    samples, rate = _read_wav(shared_data / "speech" / "digits_phrase.wav")
    telephone = resample(samples.tobytes(), rate, CALL_RATE)
    reference = "one zero zero zero one nine oh two one oh zero one eight zero three"
    result, _ = _recognise(engine, telephone)
    wer = jiwer.wer(reference, result.text)
    print(f"\ndigits_phrase.wav via 8 kHz, digits grammar: WER {wer:.0%} ({result.text!r})")
    assert wer <= 0.5  # measured 0 %; a loose bound, the figure is the report


def test_open_vocabulary_uses_the_language_model(
    engine: PocketSphinxEngine, shared_data: Path
) -> None:
    samples, rate = _read_wav(shared_data / "speech" / "digits_phrase.wav")
    telephone = resample(samples.tobytes(), rate, CALL_RATE)
    result, _ = _recognise(engine, telephone, None)
    reference = "one zero zero zero one nine oh two one oh zero one eight zero three"
    print(f"\nopen vocabulary: WER {jiwer.wer(reference, result.text):.0%} ({result.text!r})")
    assert result.text == result.text.lower()
    assert len(result.text.split()) >= 5
    assert "<" not in result.text and "(" not in result.text


@pytest.mark.parametrize(
    ("said", "polarity"), [("yes", True), ("sure", True), ("no", False), ("nope", False)]
)
def test_yes_no_grammar_on_synthetic_speech(
    engine: PocketSphinxEngine, said: str, polarity: bool
) -> None:
    # No recorded yes/no set exists in shared data; eSpeak NG (the TTS stage) speaks instead.
    tts = EspeakEngine()
    pcm = resample(b"".join(tts.synthesize(said)), tts.sample_rate, CALL_RATE)
    padded = bytes(2400) + pcm + bytes(2400)  # 150 ms of digital silence either side
    result, _ = _recognise(engine, padded, RecognitionOptions(grammar="yes_no"))
    assert result.text in (YES_WORDS if polarity else NO_WORDS), result


def test_bad_options_are_clear_errors(engine: PocketSphinxEngine) -> None:
    with pytest.raises(AsrError, match=r"unknown grammar 'pin'.*digits.*yes_no"):
        engine.open_stream(RecognitionOptions(grammar="pin"))
    with pytest.raises(AsrError, match="not in the PocketSphinx dictionary: 42, zxqv"):
        engine.open_stream(RecognitionOptions(phrases=("zxqv please", "42")))
    with pytest.raises(AsrError, match="only one of"):
        engine.open_stream(RecognitionOptions(grammar="digits", phrases=("one",)))
    with pytest.raises(AsrError, match="not in the PocketSphinx dictionary: zxqv"):
        engine.open_stream(RecognitionOptions(grammar="digits", extra_phrases=("zxqv",)))
    with pytest.raises(AsrError, match="en-US model only"):
        engine.open_stream(RecognitionOptions(grammar="digits", language="de-DE"))
    engine.check_options(RecognitionOptions(grammar="yes_no"))  # fine: no exception
    engine.check_options(RecognitionOptions(grammar="digits", extra_phrases=("agent",)))
    jsgf = "#JSGF V1.0;\ngrammar colours;\npublic <colour> = red | green | blue ;\n"
    engine.check_options(RecognitionOptions(jsgf=jsgf, extra_phrases=("operator",)))


def test_stream_misuse_is_reported(engine: PocketSphinxEngine) -> None:
    stream = engine.open_stream(DIGITS)
    with pytest.raises(AsrError, match="whole 16-bit samples"):
        stream.feed(b"\x00\x00\x00")
    empty = stream.finish()
    assert (empty.text, empty.confidence, empty.is_final) == ("", 0.0, True)
    with pytest.raises(AsrError, match="already finished"):
        stream.feed(bytes(frame_bytes(engine.sample_rate)))
    stream.close()  # closing a finished stream is harmless


def test_pool_is_bounded_and_reused() -> None:
    engine = PocketSphinxEngine(pool_size=1, acquire_timeout_s=0.05)
    first = engine.open_stream(DIGITS)
    with pytest.raises(AsrError, match="all 1 PocketSphinx decoders stayed busy"):
        engine.open_stream(DIGITS)
    first.close()
    second = engine.open_stream()  # the closed stream's decoder, now on the language model
    second.feed(bytes(frame_bytes(engine.sample_rate) * 10))
    assert second.finish().is_final
    del second
    dropped = engine.open_stream(DIGITS)
    del dropped  # never finished: the decoder still comes back
    engine.open_stream(DIGITS).close()
