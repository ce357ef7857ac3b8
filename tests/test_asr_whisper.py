"""Whisper engine: LocalAgreement, option mapping, model loading, streaming, real speech.

Three kinds of test, kept apart:
- `LocalAgreement` and the option/normalisation functions are pure: tested with word lists.
- The stream's cadence, threading and agreement wiring are tested with `ScriptedWhisper`, a
  stand-in for `faster_whisper.WhisperModel` at the model boundary (it returns text by audio
  length). These test the streaming logic only, not recognition.
- Recognition itself runs only with real weights: set SWITCHBOARD_MODELS_DIR to a directory
  holding `faster-whisper-tiny.en/` (a CTranslate2 conversion, e.g. Systran/faster-whisper-tiny.en).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jiwer
import numpy as np
import pytest

from app.asr.agreement import LocalAgreement, word_key
from app.asr.base import AsrError, AsrResult, RecognitionOptions
from app.asr.numbers import spoken_digits
from app.asr.whisper import (
    FINAL_LEAD_MARGIN,
    FINAL_PAD_S,
    INITIAL_FINAL_S,
    WhisperEngine,
    WhisperHints,
    hints_for,
    lexical,
    normalise_digits,
    whisper_language,
)
from app.media.audio import CALL_RATE, frame_bytes
from app.media.g711 import pcm_to_ulaw, ulaw_to_pcm
from app.media.resample import resample
from tests.model_files import models_root

WHISPER_MODEL = "faster-whisper-tiny.en"
FRAME = frame_bytes(CALL_RATE)
SILENCE_FRAME = b"\x00" * FRAME


# --- LocalAgreement ------------------------------------------------------------------------


def _feed(agreement: LocalAgreement, *hypotheses: str) -> list[list[str]]:
    return [agreement.insert(h.split()) for h in hypotheses]


def test_agreement_needs_two_hypotheses_to_commit() -> None:
    agreement = LocalAgreement()
    assert agreement.insert(["my", "number"]) == []
    assert agreement.committed == ()
    assert agreement.tentative == ("my", "number")
    assert agreement.text == "my number"


def test_agreement_commits_the_common_prefix_of_two_decodes() -> None:
    agreement = LocalAgreement()
    commits = _feed(agreement, "my num", "my number is", "my number is four", "my number is for")
    assert commits == [[], ["my"], ["number", "is"], []]
    assert agreement.committed == ("my", "number", "is")
    assert agreement.tentative == ("for",)
    assert agreement.text == "my number is for"


def test_agreement_follows_whisper_streaming_example() -> None:
    # Growing audio, each decode a full hypothesis; the last word flickers until confirmed.
    agreement = LocalAgreement()
    commits = _feed(
        agreement,
        "and so",
        "and so my fell",
        "and so my fellow americans",
        "and so my fellow americans ask not",
        "and so my fellow americans ask not what",
    )
    assert commits == [[], ["and", "so"], ["my"], ["fellow", "americans"], ["ask", "not"]]
    assert agreement.text == "and so my fellow americans ask not what"


def test_agreement_ignores_case_and_punctuation_and_shows_the_latest_form() -> None:
    agreement = LocalAgreement()
    assert _feed(agreement, "hello, world", "Hello world. And") == [[], ["Hello", "world."]]
    assert agreement.tentative == ("And",)
    assert agreement.insert(["Hello", "World!", "and", "then"]) == ["and"]
    assert agreement.text == "Hello world. and then"


def test_agreement_drops_tokens_that_are_not_words() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "one - two ...", "one two three")
    assert agreement.committed == ("one", "two")


def test_agreement_never_takes_back_a_committed_word() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "call me at four", "call me at four five")
    assert agreement.committed == ("call", "me", "at", "four")
    # The model revises a settled word: the committed text stays, and the revised word is not
    # shown a second time.
    assert agreement.insert(["call", "me", "at", "for", "five", "six"]) == ["five"]
    assert agreement.committed == ("call", "me", "at", "four", "five")
    assert agreement.tentative == ("six",)


def test_agreement_aligns_a_decode_that_drops_or_adds_a_committed_word() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "one two three four", "one two three four")
    assert agreement.committed == ("one", "two", "three", "four")
    agreement.insert(["one", "three", "four", "five"])  # "two" lost
    assert agreement.tentative == ("five",)
    agreement.insert(["one", "two", "two", "three", "four", "five", "six"])  # "two" doubled
    assert agreement.committed == ("one", "two", "three", "four", "five")
    assert agreement.tentative == ("six",)


def test_agreement_with_a_decode_shorter_than_the_committed_text() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "a b c", "a b c d")
    assert agreement.insert(["a", "b"]) == []
    assert agreement.committed == ("a", "b", "c")
    assert agreement.tentative == ()
    assert agreement.insert([]) == []
    assert agreement.text == "a b c"


def test_agreement_with_an_unrelated_decode_keeps_the_word_count() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "yes please", "yes please")
    agreement.insert(["no", "thanks", "goodbye"])
    assert agreement.committed == ("yes", "please")
    assert agreement.tentative == ("goodbye",)


def test_agreement_of_three_needs_three_decodes() -> None:
    agreement = LocalAgreement(n=3)
    assert _feed(agreement, "a b", "a b c", "a b c d", "a x") == [[], [], ["a", "b"], []]
    assert agreement.committed == ("a", "b")
    assert agreement.insert(["a", "b", "c", "d", "e"]) == []  # the "a x" decode broke the run
    assert agreement.insert(["a", "b", "c", "d", "e"]) == []
    assert agreement.insert(["a", "b", "c", "d", "e"]) == ["c", "d", "e"]


def test_agreement_reset_and_bad_n() -> None:
    agreement = LocalAgreement()
    _feed(agreement, "a b", "a b")
    agreement.reset()
    assert agreement.words == ()
    assert agreement.insert(["c"]) == []
    with pytest.raises(ValueError, match="n >= 2"):
        LocalAgreement(n=1)


def test_agreement_committed_only_grows_over_random_decodes() -> None:
    rng = random.Random(7)
    vocabulary = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "zero",
        "oh",
    ]
    truth = [rng.choice(vocabulary) for _ in range(30)]
    for _ in range(200):
        agreement = LocalAgreement()
        previous: tuple[str, ...] = ()
        for length in range(1, len(truth) + 1):
            hypothesis = list(truth[:length])
            for _ in range(rng.randint(0, 2)):  # noise: a substitution, deletion or insertion
                i = rng.randrange(len(hypothesis) + 1)
                op = rng.choice("sdi")
                if op == "i" or i == len(hypothesis):
                    hypothesis.insert(i, rng.choice(vocabulary))
                elif op == "s":
                    hypothesis[i] = rng.choice(vocabulary)
                else:
                    del hypothesis[i]
            committed_now = agreement.insert(hypothesis)
            assert agreement.committed == (*previous, *committed_now)
            previous = agreement.committed
            assert agreement.words[: len(previous)] == previous


def test_word_key() -> None:
    assert word_key("Four,") == "four"
    assert word_key("1,234") == "1234"
    assert word_key("don't") == "don't"
    assert word_key("...") == ""


# --- option mapping and normalisation ------------------------------------------------------


def test_language_tags_map_to_whisper_codes() -> None:
    assert whisper_language("en-US") == "en"
    assert whisper_language("de_DE") == "de"
    assert whisper_language("FR") == "fr"
    with pytest.raises(AsrError, match="no language 'xx-YY'"):
        whisper_language("xx-YY")


def test_hints_for_open_vocabulary_and_extra_phrases() -> None:
    assert hints_for(RecognitionOptions()) == WhisperHints("en")
    hints = hints_for(RecognitionOptions(extra_phrases=("Agent!", "operator")))
    assert hints.hotwords == "agent, operator"
    assert hints.initial_prompt is None and not hints.digits


def test_hints_for_digits_decode_without_any_prompt() -> None:
    # any prompt or hotword made Whisper drop and merge digits (see app.asr.whisper)
    hints = hints_for(RecognitionOptions(grammar="digits", extra_phrases=("agent",)))
    assert hints.initial_prompt is None and hints.hotwords is None
    assert hints.digits
    assert hints.extra_phrases == ("agent",)


def test_hints_for_phrases_yes_no_and_structured_grammars() -> None:
    hints = hints_for(RecognitionOptions(phrases=("Checking account", "savings")))
    assert hints.hotwords == "checking account, savings"
    assert hints_for(RecognitionOptions(grammar="yes_no")).hotwords == "yes, no"
    date = hints_for(RecognitionOptions(grammar="date", language="en-GB"))
    assert date == WhisperHints("en")  # numerals are what the date slot reads best


def test_hints_for_jsgf_uses_its_words_as_hotwords() -> None:
    jsgf = "#JSGF V1.0;\ngrammar g;\npublic <g> = ( red | green ) apple ;\n"
    assert hints_for(RecognitionOptions(jsgf=jsgf)).hotwords == "apple, green, red"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RecognitionOptions(grammar="digits", phrases=("a",)), "only one of"),
        (RecognitionOptions(grammar="postcode"), "unknown grammar 'postcode'"),
        (RecognitionOptions(phrases=("yes", "  ")), "has no words"),
        (RecognitionOptions(extra_phrases=("!",)), "extra phrase '!' has no words"),
        (RecognitionOptions(language="klingon"), "no language"),
    ],
)
def test_hints_for_rejects_bad_options(options: RecognitionOptions, message: str) -> None:
    with pytest.raises(AsrError, match=message):
        hints_for(options)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("4170, 92.", "four one seven zero nine two"),
        ("My number is 1-2-3.", "one two three"),
        ("one two three", "one two three"),
        ("Double 5, triple oh.", "five five zero zero zero"),
        ("4 O 7", "four zero seven"),
        ("Uh, the PIN is zero zero seven", "zero zero seven"),
        ("twenty three", "two three"),
        ("7 to 0, 3, 0.", "seven two zero three zero"),
        ("Thank you.", ""),
    ],
)
def test_normalise_digits(text: str, spoken: str) -> None:
    assert normalise_digits(text) == spoken


def test_normalised_digits_read_back_as_the_dialogue_does() -> None:
    assert spoken_digits(normalise_digits("4170 92")) == "417092"
    assert spoken_digits(normalise_digits("599-341-511")) == "599341511"


@pytest.mark.parametrize("text", ["Ahhh!", "Hmm.", "...", "Uh, um.", "  "])
def test_non_lexical_text_is_no_text(text: str) -> None:
    assert lexical(text) == ""


def test_lexical_text_is_kept() -> None:
    assert lexical("Oh, it's four.") == "Oh, it's four."
    assert lexical("Uh, yes") == "Uh, yes"


def test_normalise_digits_gives_an_extra_phrase_said() -> None:
    assert normalise_digits("I want an Agent, please.", ("agent",)) == "agent"
    assert normalise_digits("Talk to a live agent", ("live agent",)) == "live agent"
    assert normalise_digits("1 2 3", ("agent",)) == "one two three"


# --- model loading (real faster-whisper and CTranslate2, no weights) -----------------------


def test_missing_model_directory_says_where_and_how(tmp_path: Path) -> None:
    missing = tmp_path / "faster-whisper-tiny.en"
    with pytest.raises(AsrError) as error:
        WhisperEngine(missing)
    message = str(error.value)
    assert str(missing) in message
    assert "model.bin" in message and "hf download" in message


def test_model_directory_without_files_names_them(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AsrError, match=r"model\.bin, tokenizer\.json missing"):
        WhisperEngine(tmp_path)


def test_corrupt_model_is_an_asr_error(tmp_path: Path) -> None:
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / name).write_text("not a model")
    with pytest.raises(AsrError, match="could not load"):
        WhisperEngine(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device"),
        ({"beam_size": 0}, "beam_size"),
        ({"cpu_threads": -1}, "cpu_threads"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"partial_interval_s": 0}, "partial_interval_s"),
    ],
)
def test_bad_settings_are_asr_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AsrError, match=message):
        WhisperEngine(ScriptedWhisper([]), **kwargs)


# --- streaming logic, with a stand-in model ------------------------------------------------


@dataclass
class _Segment:
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float = 0.1


class ScriptedWhisper:
    """Stands in for `faster_whisper.WhisperModel`: the text depends on the audio's length.

    `script` is [(seconds, text)]: a decode of at least `seconds` of audio returns `text` (the
    last such entry). Like the real model it decodes lazily, when the segments are iterated.
    """

    def __init__(
        self,
        script: list[tuple[float, str]],
        delay_s: float = 0.0,
        multilingual: bool = True,
        fail: str | None = None,
    ) -> None:
        self.model = SimpleNamespace(is_multilingual=multilingual)
        self.script = script
        self.delay_s = delay_s
        self.fail = fail  # "partial" or "final": raise on decodes with that beam
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Condition(self._lock)

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Any, None]:
        assert audio.dtype == np.float32 and np.abs(audio).max(initial=0) <= 1.0
        seconds = len(audio) / 16000
        with self._lock:
            self.calls.append({"seconds": seconds, **kwargs})
            self._running += 1
            self._idle.notify_all()
        return self._decode(seconds, kwargs["beam_size"]), None

    def _decode(self, seconds: float, beam: int) -> Any:
        try:
            time.sleep(self.delay_s)
            if self.fail == ("partial" if beam == 1 else "final"):
                raise RuntimeError("CUDA out of memory")
            text = ""
            for at, said in self.script:
                if seconds >= at:
                    text = said
            if text:
                yield _Segment(f" {text}", [1] * len(text.split()), -0.2)
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()

    def wait_calls(self, count: int) -> None:
        with self._lock:
            assert self._idle.wait_for(lambda: len(self.calls) >= count, timeout=5)

    def wait_idle(self) -> None:
        """Wait for the decodes that have started to end."""
        with self._lock:
            self._idle.wait_for(lambda: self._running == 0, timeout=5)


def _speech_frames(seconds: float) -> list[bytes]:
    """Frames of a tone (any audio will do for the stand-in model)."""
    n = int(CALL_RATE * seconds)
    t = np.arange(n) / CALL_RATE
    pcm = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    return [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]


def _feed_waiting(stream: Any, model: ScriptedWhisper, seconds: float) -> list[AsrResult]:
    """Feed frames; after each, let a started decode finish (as if it were instant)."""
    partials = []
    for frame in _speech_frames(seconds):
        result = stream.feed(frame)
        if result is not None:
            partials.append(result)
        deadline = time.monotonic() + 5
        while stream.decoding and time.monotonic() < deadline:
            time.sleep(0.001)
    return partials


def test_stream_partials_follow_local_agreement() -> None:
    model = ScriptedWhisper(
        [
            (0.9, "My number"),
            (1.9, "My number is four"),
            (2.9, "My number is for one"),
            (3.9, "My number is four one seven"),
        ]
    )
    engine = WhisperEngine(model)
    stream = engine.open_stream()
    partials = _feed_waiting(stream, model, 4.2)
    assert [p.text for p in partials] == [
        "My number",
        "My number is four",
        "My number is for one",
        "My number is four one seven",
    ]
    assert all(not p.is_final and p.confidence == 0.0 and p.engine == "whisper" for p in partials)
    final = stream.finish()
    assert final.is_final
    assert final.text == "My number is four one seven"
    assert final.confidence == pytest.approx(np.exp(-0.2))


def test_stream_decodes_once_per_interval_greedily_and_finally_with_the_beam() -> None:
    model = ScriptedWhisper([(0.0, "hello")])
    engine = WhisperEngine(model, beam_size=4, partial_interval_s=1.0)
    stream = engine.open_stream(RecognitionOptions(extra_phrases=("agent",)))
    _feed_waiting(stream, model, 5.3)  # the resampler's output lags its input a little
    partial_calls = list(model.calls)
    assert [int(c["seconds"]) for c in partial_calls] == [1, 2, 3, 4, 5]
    seconds = [c["seconds"] for c in partial_calls]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(seconds))
    assert {c["beam_size"] for c in partial_calls} == {1}
    stream.finish()
    final = model.calls[-1]
    assert final["beam_size"] == 4
    assert final["hotwords"] == "agent" and final["language"] == "en"
    assert final["without_timestamps"] and not final["condition_on_previous_text"]
    # 5 s at 8 kHz, upsampled: the final decode sees all of it at 16 kHz.
    assert final["seconds"] == pytest.approx(5.3 + FINAL_PAD_S, abs=0.01)


def test_stream_without_partials_decodes_only_at_the_end() -> None:
    model = ScriptedWhisper([(0.0, "yes")])
    engine = WhisperEngine(model, partial_interval_s=None)
    stream = engine.open_stream()
    assert _feed_waiting(stream, model, 3.0) == []
    assert model.calls == []
    assert stream.finish().text == "yes"
    assert len(model.calls) == 1


def test_partials_stop_past_the_window_and_the_final_covers_everything() -> None:
    model = ScriptedWhisper([(0.0, "words")])
    engine = WhisperEngine(model, max_partial_s=2.5)
    stream = engine.open_stream()
    _feed_waiting(stream, model, 6.0)
    assert [int(c["seconds"]) for c in model.calls] == [1, 2]
    stream.finish()
    assert model.calls[-1]["seconds"] == pytest.approx(6.0 + FINAL_PAD_S, abs=0.01)


def test_feed_never_waits_for_a_decode() -> None:
    model = ScriptedWhisper([(0.0, "slow")], delay_s=1.0)
    engine = WhisperEngine(model)
    stream = engine.open_stream()
    started = time.monotonic()
    for frame in _speech_frames(3.0):
        stream.feed(frame)
    assert time.monotonic() - started < 0.5
    model.wait_calls(1)
    assert len(model.calls) == 1  # one decode in flight at a time; the others were skipped
    model.wait_idle()


def test_partials_skip_when_every_slot_is_busy_and_finals_wait() -> None:
    model = ScriptedWhisper([(0.0, "one")], delay_s=0.3)
    engine = WhisperEngine(model, max_concurrent=1)
    first, second = engine.open_stream(), engine.open_stream()
    for frame in _speech_frames(1.2):
        first.feed(frame)
        second.feed(frame)
    model.wait_calls(1)
    assert len(model.calls) == 1  # the second stream found no free slot
    assert second.finish().text == "one"  # waited for the first stream's partial
    assert [c["beam_size"] for c in model.calls] == [1, 5]
    first.close()


def test_final_gives_up_when_slots_stay_busy() -> None:
    model = ScriptedWhisper([(0.0, "one")], delay_s=1.0)
    engine = WhisperEngine(model, max_concurrent=1, acquire_timeout_s=0.05)
    busy, waiting = engine.open_stream(), engine.open_stream()
    for frame in _speech_frames(1.2):
        busy.feed(frame)
    waiting.feed(_speech_frames(0.1)[0])
    with pytest.raises(AsrError, match="slots stayed busy"):
        waiting.finish()
    model.wait_idle()


def test_prepared_final_decodes_during_the_pause_and_finish_takes_it() -> None:
    model = ScriptedWhisper([(0.0, "four one"), (2.5, "four one seven two")], delay_s=0.2)
    engine = WhisperEngine(model, partial_interval_s=None, beam_size=3)
    stream = engine.open_stream()
    for frame in _speech_frames(2.0):
        stream.feed(frame)
    assert stream.prepare_final() is None  # on its way, on a worker
    model.wait_calls(1)
    assert model.calls[0]["beam_size"] == 3
    started = time.monotonic()
    final = stream.finish()
    assert final.text == "four one" and final.is_final
    assert time.monotonic() - started < 0.2 + 0.15  # waited for that decode, did not start one
    assert len(model.calls) == 1


def test_speech_after_a_prepared_final_is_decoded_with_it() -> None:
    model = ScriptedWhisper([(0.0, "four one"), (2.5, "four one seven two")], delay_s=0.1)
    engine = WhisperEngine(model, partial_interval_s=None)
    stream = engine.open_stream()
    for frame in _speech_frames(2.0):
        stream.feed(frame)
    stream.prepare_final()
    for frame in _speech_frames(1.0):  # the caller goes on after the pause
        stream.feed(frame)
    assert stream.finish().text == "four one seven two"
    assert model.calls[-1]["seconds"] == pytest.approx(3.0 + FINAL_PAD_S, abs=0.01)
    model.wait_idle()


def test_a_prepared_final_waits_for_the_busy_slot_and_holds_partials_back() -> None:
    model = ScriptedWhisper([(0.0, "one")], delay_s=0.3)
    engine = WhisperEngine(model, max_concurrent=1, partial_interval_s=0.2)
    busy, paused = engine.open_stream(), engine.open_stream()
    for frame in _speech_frames(0.3):
        busy.feed(frame)
    model.wait_calls(1)  # busy's partial holds the only slot
    for frame in _speech_frames(0.5):
        paused.feed(frame)
    assert paused.prepare_final() is None  # queued behind it, not dropped
    for frame in _speech_frames(1.0):  # busy goes on talking: its partials must wait
        busy.feed(frame)
    model.wait_calls(2)
    assert [c["beam_size"] for c in model.calls] == [1, 5]  # partial, then the final
    assert paused.finish().text == "one"
    assert len(model.calls) == 2
    busy.close()
    model.wait_idle()


def test_prepared_result_is_there_during_the_pause() -> None:
    model = ScriptedWhisper([(0.0, "4 1 7 0")], delay_s=0.05)
    engine = WhisperEngine(model, partial_interval_s=None)
    stream = engine.open_stream(RecognitionOptions(grammar="digits"))
    for frame in _speech_frames(1.0):
        stream.feed(frame)
    assert stream.prepared_result() is None
    stream.prepare_final()
    model.wait_idle()
    deadline = time.monotonic() + 2
    while stream.prepared_result() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    prepared = stream.prepared_result()
    assert prepared is not None and prepared.is_final
    assert prepared.text == "four one seven zero"  # normalised as the final will be
    assert stream.finish().text == "four one seven zero"
    assert len(model.calls) == 1


def test_speech_after_the_pause_cancels_a_final_still_waiting() -> None:
    model = ScriptedWhisper([(0.0, "one"), (1.0, "one two")], delay_s=0.3)
    engine = WhisperEngine(model, max_concurrent=1, partial_interval_s=None)
    other, stream = engine.open_stream(), engine.open_stream()
    for frame in _speech_frames(0.2):
        other.feed(frame)
    other.prepare_final()  # takes the slot for 0.3 s
    model.wait_calls(1)
    for frame in _speech_frames(0.5):
        stream.feed(frame)
    stream.prepare_final()  # waits for the slot...
    for frame in _speech_frames(0.6):  # ...while the caller goes on
        stream.feed(frame)
    assert stream.prepared_result() is None
    assert stream.finish().text == "one two"
    other.close()
    model.wait_idle()
    # other's final, then the whole of stream's turn: its early final was never decoded
    assert len(model.calls) == 2
    assert model.calls[1]["seconds"] - FINAL_PAD_S == pytest.approx(1.1, abs=0.05)


def test_final_lead_follows_the_measured_decodes() -> None:
    model = ScriptedWhisper([(0.0, "one")], delay_s=0.1)
    engine = WhisperEngine(model, partial_interval_s=None)
    assert engine.final_lead_ms == int(1000 * INITIAL_FINAL_S * FINAL_LEAD_MARGIN) + 40
    for _ in range(12):
        stream = engine.open_stream()
        stream.feed(_speech_frames(0.1)[0])
        stream.finish()
    assert 120 <= engine.final_lead_ms <= 260  # 0.1 s decodes, with the margin
    assert stream.final_lead_ms == engine.final_lead_ms


def test_digits_are_normalised_in_partials_and_final() -> None:
    model = ScriptedWhisper([(0.9, "4 1"), (1.9, "417"), (2.9, "4170, 9")])
    engine = WhisperEngine(model)
    stream = engine.open_stream(RecognitionOptions(grammar="digits"))
    partials = _feed_waiting(stream, model, 3.3)
    assert [p.text for p in partials] == [
        "four one",
        "four one seven",
        "four one seven zero nine",
    ]
    assert model.calls[0]["initial_prompt"] is None  # no prompt: it cost digits
    assert stream.finish().text == "four one seven zero nine"


def test_failed_partial_is_skipped_and_failed_final_is_an_asr_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = ScriptedWhisper([(0.0, "hi")], fail="partial")
    stream = WhisperEngine(model).open_stream()
    assert _feed_waiting(stream, model, 2.1) == []
    assert "partial decode failed" in caplog.text
    assert stream.finish().text == "hi"

    model = ScriptedWhisper([(0.0, "hi")], fail="final")
    stream = WhisperEngine(model).open_stream()
    stream.feed(SILENCE_FRAME)
    with pytest.raises(AsrError, match="CUDA out of memory"):
        stream.finish()


def test_empty_utterance_is_empty_without_a_decode() -> None:
    model = ScriptedWhisper([(0.0, "hallucinated")])
    result = WhisperEngine(model).open_stream().finish()
    assert result == AsrResult("", 0.0, True, "whisper")
    assert model.calls == []


def test_stream_misuse_is_an_asr_error() -> None:
    engine = WhisperEngine(ScriptedWhisper([]))
    stream = engine.open_stream()
    with pytest.raises(AsrError, match="16-bit"):
        stream.feed(b"\x00")
    stream.feed(SILENCE_FRAME)
    assert stream.finish().text == ""
    with pytest.raises(AsrError, match="already finished"):
        stream.finish()
    closed = engine.open_stream()
    closed.close()
    with pytest.raises(AsrError, match="already finished"):
        closed.feed(SILENCE_FRAME)


def test_english_only_model_refuses_other_languages() -> None:
    engine = WhisperEngine(ScriptedWhisper([], multilingual=False))
    engine.open_stream(RecognitionOptions(language="en-AU"))
    with pytest.raises(AsrError, match="English-only"):
        engine.open_stream(RecognitionOptions(language="de-DE"))
    with pytest.raises(AsrError, match="English-only"):
        WhisperEngine(ScriptedWhisper([], multilingual=False), language="fr")


def test_check_options_validates_without_decoding() -> None:
    model = ScriptedWhisper([])
    engine = WhisperEngine(model)
    engine.check_options(RecognitionOptions(grammar="digits"))
    with pytest.raises(AsrError):
        engine.check_options(RecognitionOptions(grammar="nope"))
    assert model.calls == []
    engine.close()


# --- real weights --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine() -> WhisperEngine:
    return WhisperEngine(models_root(WHISPER_MODEL) / WHISPER_MODEL, cpu_threads=2)


def _telephone(path: Path) -> bytes:
    """A recording as a call delivers it: 8 kHz, through G.711 mu-law and back."""
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        pcm, rate = wav.readframes(wav.getnframes()), wav.getframerate()
    return ulaw_to_pcm(pcm_to_ulaw(resample(pcm, rate, CALL_RATE)))


def _recognise(
    engine: WhisperEngine, pcm: bytes, options: RecognitionOptions | None = None
) -> tuple[AsrResult, list[AsrResult]]:
    """Feed 20 ms frames at about 5x real time, so some partial decodes run."""
    stream = engine.open_stream(options)
    partials = []
    for i, start in enumerate(range(0, len(pcm), FRAME)):
        result = stream.feed(pcm[start : start + FRAME])
        if result is not None:
            partials.append(result)
        if i % 10 == 9:
            time.sleep(0.04)
    return stream.finish(), partials


def test_real_sentence_over_the_telephone(real_engine: WhisperEngine, shared_data: Path) -> None:
    reference = _manifest_text(shared_data / "speech", "jfk.wav")
    result, partials = _recognise(real_engine, _telephone(shared_data / "speech" / "jfk.wav"))
    hypothesis = " ".join(w for w in jiwer.RemovePunctuation()(result.text.lower()).split())
    wer = jiwer.wer(reference, hypothesis)
    print(f"\nwhisper jfk: {result.text!r} WER {wer:.0%}, {len(partials)} partials")
    assert wer <= 0.25
    assert 0.3 <= result.confidence <= 1.0
    assert partials, "no partial result while 11 s of speech were fed"


def test_real_digit_phrase(real_engine: WhisperEngine, shared_data: Path) -> None:
    pcm = _telephone(shared_data / "speech" / "digits_phrase.wav")
    result, _ = _recognise(real_engine, pcm, RecognitionOptions(grammar="digits"))
    heard = spoken_digits(result.text)
    reference = spoken_digits(_manifest_text(shared_data / "speech", "digits_phrase.wav"))
    errors = jiwer.process_words(" ".join(reference), " ".join(heard) or "-")
    rate = (errors.substitutions + errors.deletions + errors.insertions) / len(reference)
    print(f"\nwhisper digits: {result.text!r} -> {heard} (digit error rate {rate:.0%})")
    assert rate <= 0.3


def test_real_fsdd_digit_strings(
    real_engine: WhisperEngine, shared_data: Path, fsdd_manifest: list[dict]
) -> None:
    rng = random.Random(3)
    rows_by_speaker: dict[str, list[dict]] = {}
    for row in fsdd_manifest:
        rows_by_speaker.setdefault(row["speaker"], []).append(row)
    exact = 0
    strings = 8
    for i in range(strings):
        rows = [rng.choice(rows_by_speaker[sorted(rows_by_speaker)[i % 4]]) for _ in range(4)]
        noise = np.random.default_rng(i)
        parts = [noise.normal(0, 10, 2400)]
        for row in rows:
            _, clip = _read(shared_data / "fsdd" / row["audio"])
            parts += [clip, noise.normal(0, 10, int(CALL_RATE * 0.3))]
        pcm = np.clip(np.concatenate(parts), -32768, 32767).astype("<i2").tobytes()
        result, _ = _recognise(real_engine, pcm, RecognitionOptions(grammar="digits"))
        try:
            heard = spoken_digits(result.text)
        except ValueError:
            heard = ""
        exact += heard == "".join(row["audio"][0] for row in rows)
    print(f"\nwhisper FSDD 4-digit strings exact: {exact}/{strings}")
    assert exact >= strings // 4


def _read(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    return rate, samples - samples.mean()


def _manifest_text(folder: Path, audio: str) -> str:
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        if line.strip() and json.loads(line)["audio"] == audio:
            return json.loads(line)["text"]
    raise AssertionError(f"{audio} not in {folder}/manifest.jsonl")


def test_digits_grammar_leaves_whisper_digit_tokens_and_extra_phrases_only() -> None:
    from tokenizers import Tokenizer

    from app.asr.whisper import _digits_only

    root = models_root(WHISPER_MODEL)
    tokenizer = Tokenizer.from_file(str(root / WHISPER_MODEL / "tokenizer.json"))
    suppressed = set(_digits_only(SimpleNamespace(hf_tokenizer=tokenizer), ("agent",)))

    def allowed(text: str) -> bool:
        return not set(tokenizer.encode(text, add_special_tokens=False).ids) & suppressed

    for text in (" 4", " 417", " five", " Five", ",", " double", " agent", " Agent"):
        assert allowed(text), text
    for text in (" Bye", " Hey", " Thanks", " hello"):
        assert not allowed(text), text
    end = tokenizer.token_to_id("<|endoftext|>")
    assert end not in suppressed  # Whisper must still be able to stop
    assert _digits_only(SimpleNamespace(), ()) == []  # no tokenizer: unconstrained


def test_a_decoding_loop_is_no_text() -> None:
    @dataclass
    class Looping(_Segment):
        compression_ratio: float = 9.0

    model = ScriptedWhisper([])
    engine = WhisperEngine(model, partial_interval_s=None)
    model._decode = lambda seconds, beam: iter(  # type: ignore[method-assign]
        [Looping("two zero" + " zero" * 60, [1] * 62, -0.2)]
    )
    stream = engine.open_stream(RecognitionOptions(grammar="digits"))
    for frame in _speech_frames(0.5):
        stream.feed(frame)
    assert stream.finish().text == ""
