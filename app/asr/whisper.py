"""Whisper streaming ASR on faster-whisper (CTranslate2), partials by LocalAgreement-2.

Whisper is an offline model: it transcribes a buffer, it does not stream. A stream here keeps
the turn's audio (8 kHz from the call, upsampled to 16 kHz as it arrives) and, every
`partial_interval_s` of new audio, decodes the whole buffer again on a worker thread.
`app.asr.agreement.LocalAgreement` commits the words two decodes in a row agree on; a partial
result is the committed words plus the latest decode's tail. `finish()` decodes the whole
utterance once more, with the full beam, and that is the final result: the partials only show
progress. A turn is short (the endpointer caps it at 15 s by default) and Whisper's encoder
pads every input to 30 s anyway, so a re-decode of the whole buffer costs one fixed-size
encoder pass plus decoding the words so far, and ufal/whisper_streaming's buffer trimming is not
needed. Past `max_partial_s` (25 s, inside one 30 s window) partial decodes stop and only the
final one runs.

CPU: `feed()` never decodes on the caller's thread (the call worker must keep reading frames).
Decodes share the engine's `max_concurrent` slots (default `num_workers`, the model's parallel
CTranslate2 workers): a partial decode runs only when a slot is free at once and is skipped
otherwise, so partials never queue up behind each other or delay a final; a final waits for a
slot up to `acquire_timeout_s`. Partials decode greedily (beam 1), finals with `beam_size`.

Grammars: Whisper takes none. A turn's options become decoding hints (`hints_for`): phrase
lists, extra phrases and a JSGF grammar's words become `hotwords`. The digits grammar decodes
with no prompt and no hotwords at all: measured on 100 FSDD digit strings (tiny.en), any prompt
made Whisper worse at them (numerals 32%, "Account number 4 1 7 0..." 51%, digit words 56%
exact, against 83% with none): it continues the prompt's pattern and drops or merges digits.
Its text is then read by `app.asr.numbers` ("4-1-7", "double five", "four one to seven") into
spoken digit words ("four one seven"), as the PocketSphinx grammar would give them, or to an
extra phrase when the caller said one. Open-vocabulary text is Whisper's own, capitalised and
punctuated; `app.dialog.slots` reads both numerals and words.

The digits grammar is a real constraint: `suppress_tokens` leaves Whisper only digit tokens,
digit words, separators and the extra phrases' tokens (`DIGIT_TOKEN`). Unconstrained, tiny.en
wrote "Bye." for a lone "five" and "Hey." for "eight" (63% of 200 single FSDD digits right);
constrained 93%, and digit strings 82% -> 84%.

Noise: faster-whisper drops a segment whose no-speech probability is over 0.6 while its mean
log-probability is under -1; what is left of a turn that holds no word (only punctuation, or
only a non-lexical sound such as "Ahhh!" or "Hmm") is no text, so a noise-only turn is no input.
On the shared noise recordings (tap, dishes, bike, white, pink) the constrained decode writes
only punctuation. A voice-like sound can still become digits under the constraint (a cat's
miaow was "three two three"): the answer then fails its length check and is reprompted as not
understood. A second, unconstrained decode for unsure turns caught it offline but not on the
live path and cost 2.5 points on single digits, so it is not done.
The final decode gets `FINAL_PAD_S` of quiet after the audio: without it Whisper drops a last
word that ends right at the buffer's end (seen on Piper's "... nine two" read without a pause).

Why not the PyPI package `whisper-streaming` (0.1.0, read with `pip download --no-deps`): it
requires `pyalsaaudio` unconditionally, which is published as an sdist only (0.11.0) and
compiles a C extension against `<alsa/asoundlib.h>` (libasound2-dev), and it requires librosa,
opus-fast-mosestokenizer and websockets, none of which a server fed PCM by PJSIP uses; its
`faster-whisper` extra pins faster-whisper==1.1.1; and its `ASRProcessor` is built around its
own audio loop, an `AudioReceiver` thread (ALSA or a file) feeding a queue and an
`OutputSender` thread (print or websocket), where our call worker pushes 20 ms frames and pulls
results. The policy itself is small, so it is implemented here (`app.asr.agreement`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from app.asr.agreement import LocalAgreement
from app.asr.base import AsrEngine, AsrError, AsrResult, AsrStream, RecognitionOptions
from app.asr.grammars import BUILTIN_GRAMMARS, grammar_words, phrase_words
from app.asr.numbers import digit_words, spoken_digits, tokens
from app.media.audio import CALL_RATE
from app.media.resample import Resampler

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

T = TypeVar("T")
log = logging.getLogger(__name__)

ENGINE_NAME = "whisper"
MODEL_RATE = 16000
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
DEVICES = ("cpu", "cuda", "auto")

DIGIT_TOKEN = re.compile(
    r"[0-9]+|[,.\-]+|zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple|"
)
"""A token the digits grammar lets Whisper write (after strip and casefold): on single FSDD
digits unconstrained tiny.en wrote "Bye." for "five", "Hey." for "eight" (63% right)."""
COMPRESSION_LIMIT = 2.4
"""A segment whose text compresses better than this (gzip ratio) is a decoding loop, not
speech: Whisper's own threshold. Seen on a greedy partial of "two zero five": "two zero zero
zero ..." 60 times, which made a 5-digit answer look complete and ended the turn."""
FINAL_PAD_S = 0.3
"""Quiet appended to the audio of a final decode (see the module docstring)."""
INITIAL_FINAL_S = 0.6
"""A final decode's duration assumed before one was measured (tiny.en, 2 CPU threads: ~0.5 s)."""
FINAL_EWMA = 0.3
"""Weight of the latest final decode in the running estimate of their duration."""
FINAL_LEAD_MARGIN = 1.2
NON_LEXICAL = re.compile(r"^(?:a+h+|o+h+|u+h+|u+m+|h+m+|m+h*m+|h+a+h*|e+r+m*|s+h+)$")
"""A "word" that is a sound, not speech a dialogue can use: what Whisper writes for a sigh,
a cat or a clatter on the line."""
# A 15 s turn holds about 45 words; the cap stops a hallucination loop early and keeps
# prompt + output under Whisper's 448-token limit (hotwords are cut at 223 tokens).
MAX_NEW_TOKENS = 128

_INSTALL = "pip install 'switchboard[whisper]'"
_SAMPLE_BYTES = 2
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


@dataclass(frozen=True, slots=True)
class WhisperHints:
    """How one turn's `RecognitionOptions` are put to Whisper, which takes no grammar."""

    language: str
    initial_prompt: str | None = None
    hotwords: str | None = None
    digits: bool = False
    extra_phrases: tuple[str, ...] = ()


def whisper_language(language: str) -> str:
    """A dialplan language tag as Whisper's language code: "en-US" -> "en". AsrError if unknown."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # the model's own list
    except ImportError as exc:
        raise AsrError(f"faster-whisper is not installed ({exc}): {_INSTALL}") from exc
    code = re.split(r"[-_]", language.strip(), maxsplit=1)[0].lower()
    if code not in _LANGUAGE_CODES:
        raise AsrError(f"Whisper has no language {language!r} (codes such as en, de, fr, es)")
    return code


def hints_for(options: RecognitionOptions) -> WhisperHints:
    """Map a turn's options to prompt, hotwords and output normalisation. AsrError if bad.

    The step's own `hotwords` come first (hotwords are cut at 223 tokens); its
    `initial_prompt` replaces the built-in one (the digits prompt)."""
    hints = _constraint_hints(options)
    if not options.hotwords and not options.initial_prompt:
        return hints
    own = _phrases(options.hotwords, "hotword")
    words = ", ".join(part for part in (_hotwords(own), hints.hotwords) if part)
    return dataclasses.replace(
        hints,
        hotwords=words or None,
        initial_prompt=options.initial_prompt or hints.initial_prompt,
    )


def _constraint_hints(options: RecognitionOptions) -> WhisperHints:
    given = [name for name in ("grammar", "phrases", "jsgf") if getattr(options, name)]
    if len(given) > 1:
        raise AsrError(f"give only one of a grammar, a phrase list or a JSGF text, not {given}")
    language = whisper_language(options.language)
    extra = _phrases(options.extra_phrases, "extra phrase")
    if options.grammar:
        if options.grammar not in BUILTIN_GRAMMARS:
            known = ", ".join(sorted(BUILTIN_GRAMMARS))
            raise AsrError(f"unknown grammar {options.grammar!r} (built-in: {known})")
        if options.grammar == "digits":
            return WhisperHints(language, None, None, True, extra)
        if options.grammar == "yes_no":
            return WhisperHints(language, hotwords=_hotwords(("yes", "no", *extra)))
        # number, date, time: Whisper writes them as numerals, which the slots read.
        return WhisperHints(language, hotwords=_hotwords(extra))
    if options.phrases:
        phrases = _phrases(options.phrases, "phrase")
        return WhisperHints(language, hotwords=_hotwords((*phrases, *extra)))
    if options.jsgf:
        _warn_once("jsgf", "Whisper takes no grammar: a JSGF grammar's words are only hotwords")
        words = sorted(grammar_words(options.jsgf))
        return WhisperHints(language, hotwords=_hotwords((*words, *extra)))
    return WhisperHints(language, hotwords=_hotwords(extra))


def _phrases(phrases: Iterable[str], what: str) -> tuple[str, ...]:
    out = []
    for phrase in phrases:
        words = phrase_words(phrase)
        if not words:
            raise AsrError(f"{what} {phrase!r} has no words")
        out.append(" ".join(words))
    return tuple(dict.fromkeys(out))


def _hotwords(phrases: Sequence[str]) -> str | None:
    return ", ".join(dict.fromkeys(phrases)) or None


def normalise_digits(text: str, extra_phrases: Sequence[str] = ()) -> str:
    """Whisper's text under the digits grammar -> spoken digit words.

    "4170, 92." -> "four one seven zero nine two"; "double 5" -> "five five"; "twenty three"
    -> "two three"; other words are dropped (`app.asr.numbers.spoken_digits`). When the text
    holds one of `extra_phrases` (normalised, e.g. "agent") that phrase is the result, as a
    grammar with extra phrases would give it.
    """
    spoken = f" {' '.join(phrase_words(text.replace(',', ' ')))} "
    for phrase in extra_phrases:
        if f" {phrase} " in spoken:
            return phrase
    return digit_words(spoken_digits(text))


def lexical(text: str) -> str:
    """`text`, or "" when it holds no word of speech: only punctuation or non-lexical sounds."""
    words = tokens(text)
    if not words or all(NON_LEXICAL.match(word) for word in words):
        return ""
    return text


def _digits_only(model: Any, extra_phrases: Sequence[str]) -> list[int]:
    """Every ordinary token of `model`'s vocabulary that is not a digit, a digit word or a
    separator, nor a piece of one of `extra_phrases`: Whisper's digits grammar. [] when the
    model exposes no tokenizer (then it decodes unconstrained)."""
    tokenizer = getattr(model, "hf_tokenizer", None)
    if tokenizer is None:
        return []
    allowed: set[int] = set()
    for phrase in extra_phrases:
        for variant in (phrase, phrase.capitalize(), phrase.upper()):
            for text in (variant, f" {variant}"):
                allowed.update(tokenizer.encode(text, add_special_tokens=False).ids)
    suppressed = []
    for token in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token])
        if text.startswith("<|") or token in allowed:
            continue  # special tokens (end of text, timestamps) stay Whisper's own
        if not DIGIT_TOKEN.fullmatch(text.strip().casefold()):
            suppressed.append(token)
    return suppressed


def _load_model(
    path: Path, device: str, compute_type: str, cpu_threads: int, num_workers: int
) -> WhisperModel:
    fetch = (
        "e.g. on a machine with network: `hf download Systran/faster-whisper-tiny.en "
        f"--local-dir {path}` (or convert a model with ct2-transformers-converter)"
    )
    if not path.is_dir():
        raise AsrError(
            f"faster-whisper model directory {path} not found: put a CTranslate2 Whisper model "
            f"there ({', '.join(MODEL_FILES)}), {fetch}"
        )
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise AsrError(
            f"{path} is not a faster-whisper model directory: {', '.join(missing)} missing "
            f"(the server never downloads); {fetch}"
        )
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise AsrError(f"faster-whisper is not installed ({exc}): {_INSTALL}") from exc
    try:
        return WhisperModel(
            str(path),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise AsrError(
            f"faster-whisper could not load {path} on {device} ({compute_type}): {exc}"
        ) from exc


class WhisperEngine(AsrEngine):
    """faster-whisper loaded once per engine, decoding for every call's streams.

    `model` is a model directory (CTranslate2 conversion: model.bin, config.json,
    tokenizer.json), or an already loaded `faster_whisper.WhisperModel` to share between
    engines. `device` "cpu" (with compute_type "int8") or "cuda" ("float16"). `language` is used
    for streams opened without options; options carry their own ("en-US" -> "en").
    `partial_interval_s`: seconds of new audio between partial decodes (None: no partials).
    """

    name = ENGINE_NAME
    sample_rate = CALL_RATE

    def __init__(
        self,
        model: str | Path | WhisperModel,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str = "en",
        beam_size: int = 5,
        cpu_threads: int = 1,
        num_workers: int = 1,
        max_concurrent: int | None = None,
        partial_interval_s: float | None = 1.0,
        max_partial_s: float = 25.0,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        if device not in DEVICES:
            raise AsrError(f"whisper device must be one of {', '.join(DEVICES)}, got {device!r}")
        if beam_size < 1 or num_workers < 1:
            raise AsrError(
                f"whisper beam_size and num_workers must be >= 1, got {beam_size}, {num_workers}"
            )
        if cpu_threads < 0:  # 0: CTranslate2's default (4, or OMP_NUM_THREADS)
            raise AsrError(f"whisper cpu_threads must be >= 0, got {cpu_threads}")
        max_concurrent = num_workers if max_concurrent is None else max_concurrent
        if max_concurrent < 1:
            raise AsrError(f"whisper max_concurrent must be >= 1, got {max_concurrent}")
        if partial_interval_s is not None and partial_interval_s <= 0:
            raise AsrError(f"whisper partial_interval_s must be positive, got {partial_interval_s}")
        self.beam_size = beam_size
        self.partial_interval_s = partial_interval_s
        self.max_partial_s = max_partial_s
        self.acquire_timeout_s = acquire_timeout_s
        self.max_concurrent = max_concurrent
        if isinstance(model, (str, Path)):
            self.model_path: Path | None = Path(model).expanduser()
            self._model: Any = _load_model(
                self.model_path, device, compute_type, cpu_threads, num_workers
            )
        else:
            self.model_path = None
            self._model = model
        # English-only models (*.en) say so; a shared or stand-in model without the flag is
        # taken to be multilingual and left to faster-whisper.
        self.multilingual = bool(getattr(getattr(self._model, "model", None), "is_multilingual", 1))
        self.language = self._check_language(whisper_language(language))
        self._slots = threading.Semaphore(max_concurrent)
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="whisper-partial")
        # Finals started early wait for a slot on threads of their own: a partial (which never
        # waits) finishes first, and no partial starts while a final is waiting.
        self._final_executor = ThreadPoolExecutor(
            max(4, 2 * max_concurrent), thread_name_prefix="whisper-final"
        )
        self._finals_waiting = 0
        self._finals_lock = threading.Lock()
        self._final_s = INITIAL_FINAL_S  # running estimate of a final decode's duration
        self._suppressed: dict[tuple[str, ...], list[int]] = {}
        self._constraint_lock = threading.Lock()

    def open_stream(self, options: RecognitionOptions | None = None) -> WhisperStream:
        hints = WhisperHints(self.language) if options is None else hints_for(options)
        self._check_language(hints.language)
        return WhisperStream(self, hints)

    def check_options(self, options: RecognitionOptions) -> None:
        """Raise AsrError if `options` could not be recognised (for validating a dialplan)."""
        self._check_language(hints_for(options).language)

    def close(self) -> None:
        """Stop the partial-decode threads (a decode in progress finishes)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._final_executor.shutdown(wait=False, cancel_futures=True)

    def _check_language(self, language: str) -> str:
        if language != "en" and not self.multilingual:
            raise AsrError(f"the Whisper model {self.model_path} is English-only, not {language!r}")
        return language

    @property
    def final_lead_ms(self) -> int:
        """When to start a final before the turn's silence ends: the decodes measured so far
        (a running average), with a margin; 600 ms before any."""
        return int(1000 * self._final_s * FINAL_LEAD_MARGIN) + 40

    def _decode_partial(self, audio: bytes, hints: WhisperHints) -> Future[str] | None:
        """Start a greedy decode on a worker if a slot is free now and no final waits for
        one; else None (skip it)."""
        if self._finals_waiting:
            return None
        return self._submit(self._transcribe, audio, hints, 1)

    def _decode_final_soon(
        self, audio: bytes, hints: WhisperHints, cancelled: threading.Event
    ) -> Future[tuple[str, float]] | None:
        """Start the full-beam decode now, on a thread that waits for a slot (partials hold
        back meanwhile); None when the engine is closed. Setting `cancelled` before the slot
        is had skips the decode."""
        with self._finals_lock:
            self._finals_waiting += 1
        try:
            future = self._final_executor.submit(self._decode_final, audio, hints, cancelled)
        except RuntimeError:  # shut down
            self._final_done()
            return None
        future.add_done_callback(lambda _: self._final_done())  # run, failed or cancelled
        return future

    def _final_done(self) -> None:
        with self._finals_lock:
            self._finals_waiting -= 1

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T] | None:
        # The slot is taken before the task is queued, never inside it: a queued task waiting
        # for a slot held by another queued task would stall the executor.
        if not self._slots.acquire(blocking=False):
            return None
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down: no more background decodes
            self._slots.release()
            return None
        future.add_done_callback(lambda _: self._slots.release())  # run, failed or cancelled
        return future

    def _decode_final(
        self, audio: bytes, hints: WhisperHints, cancelled: threading.Event | None = None
    ) -> tuple[str, float]:
        """The full-beam decode, waiting up to `acquire_timeout_s` for a slot."""
        if not self._slots.acquire(timeout=self.acquire_timeout_s):
            raise AsrError(
                f"all {self.max_concurrent} Whisper decoding slots stayed busy for "
                f"{self.acquire_timeout_s:.1f} s (raise num_workers / max_concurrent?)"
            )
        try:
            if cancelled is not None and cancelled.is_set():
                return "", 0.0  # the caller went on talking: this audio is not the turn
            started = time.monotonic()
            result = self._transcribe_scored(audio, hints, self.beam_size)
            took = time.monotonic() - started
            self._final_s += FINAL_EWMA * (took - self._final_s)
            return result
        finally:
            self._slots.release()

    def _constraint(self, hints: WhisperHints) -> dict[str, Any]:
        """For the digits grammar, `suppress_tokens` leaving Whisper only digit tokens (and
        the extra phrases' own): see DIGIT_TOKEN."""
        if not hints.digits:
            return {}
        with self._constraint_lock:
            suppressed = self._suppressed.get(hints.extra_phrases)
            if suppressed is None:
                suppressed = self._suppressed[hints.extra_phrases] = _digits_only(
                    self._model, hints.extra_phrases
                )
        return {"suppress_tokens": suppressed} if suppressed else {}

    def _transcribe(self, audio: bytes, hints: WhisperHints, beam_size: int) -> str:
        return self._transcribe_scored(audio, hints, beam_size)[0]

    def _transcribe_scored(
        self, audio: bytes, hints: WhisperHints, beam_size: int
    ) -> tuple[str, float]:
        """(text, confidence) of 16 kHz PCM; confidence = exp(mean token log-probability)."""
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
        try:
            segments, _info = self._model.transcribe(
                samples,
                language=hints.language,
                beam_size=beam_size,
                temperature=0.0,  # no sampling fallback: bounded, repeatable latency
                condition_on_previous_text=False,
                initial_prompt=hints.initial_prompt,
                hotwords=hints.hotwords,
                without_timestamps=True,
                vad_filter=False,  # the call's endpointer already cut the turn
                max_new_tokens=MAX_NEW_TOKENS,
                **self._constraint(hints),
            )
            segments = list(segments)  # the decoding runs here, lazily
        except AsrError:
            raise
        except Exception as exc:
            raise AsrError(f"Whisper could not decode: {exc}") from exc
        kept = [(lexical(s.text.strip()), s) for s in segments]
        kept = [
            (text, s)
            for text, s in kept
            if text and getattr(s, "compression_ratio", 0.0) <= COMPRESSION_LIMIT
        ]
        text = " ".join(text for text, _ in kept)
        weights = [max(1, len(s.tokens)) for _, s in kept]
        if not text or not weights:
            return "", 0.0
        logprob = sum(s.avg_logprob * w for (_, s), w in zip(kept, weights, strict=True))
        confidence = math.exp(min(0.0, logprob / sum(weights)))
        return text, confidence

    def _words(self, text: str, hints: WhisperHints) -> list[str]:
        if hints.digits:
            text = normalise_digits(text, hints.extra_phrases)
        return text.split()


class WhisperStream(AsrStream):
    """One utterance: the audio so far, a partial decode in flight at most, the agreement."""

    def __init__(self, engine: WhisperEngine, hints: WhisperHints) -> None:
        self._engine = engine
        self.hints = hints
        self._resampler = Resampler(CALL_RATE, MODEL_RATE)
        self._audio = bytearray()  # 16 kHz PCM
        self._agreement = LocalAgreement(2)
        self._pending: Future[str] | None = None
        self._final: Future[tuple[str, float]] | None = None  # from prepare_final()
        self._final_cancelled = threading.Event()
        self._prepared: AsrResult | None = None
        self._decoded_bytes = 0
        self._partial = ""
        self._open = True

    def feed(self, pcm: bytes) -> AsrResult | None:
        """Buffer `pcm`; a partial (confidence 0) when a finished decode changed the text."""
        self._check_open("feed")
        if len(pcm) % _SAMPLE_BYTES:
            raise AsrError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        if self._final is not None:  # the caller went on after the pause
            self._drop_final()
        self._audio += self._resampler.process(pcm)
        changed = self._collect()
        self._maybe_decode()
        text = self._agreement.text
        if not changed or text == self._partial:
            return None
        self._partial = text
        return AsrResult(text, 0.0, is_final=False, engine=ENGINE_NAME)

    def finish(self) -> AsrResult:
        """Decode the whole utterance with the full beam: the final text and its confidence."""
        self._check_open("finish")
        self._open = False
        self._pending = None  # a partial still running frees its own slot
        final, self._final = self._final, None
        self._audio += self._resampler.flush()
        if not self._audio:
            return AsrResult("", 0.0, is_final=True, engine=ENGINE_NAME)
        if final is not None and not final.cancelled():
            # decoding since the pause; only the turn's closing silence came after it
            try:
                text, confidence = final.result()
            except AsrError:
                raise
            except Exception as exc:
                raise AsrError(f"Whisper could not decode: {exc}") from exc
        else:
            text, confidence = self._engine._decode_final(self._final_audio(), self.hints)
        text = " ".join(self._engine._words(text, self.hints))
        return AsrResult(text, confidence if text else 0.0, is_final=True, engine=ENGINE_NAME)

    def prepare_final(self) -> None:
        """Start the full-beam decode of the audio so far on a worker (when a decoding slot is
        free; else finish() decodes as usual). Returns None: the result is on its way."""
        self._check_open("prepare_final")
        if self._final is None and self._audio:
            self._final_cancelled = threading.Event()
            self._prepared = None
            final = self._engine._decode_final_soon(
                self._final_audio(), self.hints, self._final_cancelled
            )
            self._final = final
            if final is not None:
                final.add_done_callback(self._keep_prepared)
        return None

    def prepared_result(self) -> AsrResult | None:
        return self._prepared

    @property
    def final_lead_ms(self) -> int:
        return self._engine.final_lead_ms

    def _keep_prepared(self, final: Future[tuple[str, float]]) -> None:
        """On the decoding thread: the early final's result, for `prepared_result`."""
        if final is not self._final or final.cancelled() or final.exception() is not None:
            return
        text, confidence = final.result()
        text = " ".join(self._engine._words(text, self.hints))
        self._prepared = AsrResult(text, confidence if text else 0.0, True, ENGINE_NAME)

    def _drop_final(self) -> None:
        if self._final is not None:
            self._final_cancelled.set()
            self._final.cancel()
            self._final = None
        self._prepared = None

    def _final_audio(self) -> bytes:
        return bytes(self._audio) + bytes(int(FINAL_PAD_S * MODEL_RATE) * _SAMPLE_BYTES)

    def close(self) -> None:
        self._open = False
        self._pending = None
        self._drop_final()

    @property
    def decoding(self) -> bool:
        """True while a partial decode of this stream is running."""
        return self._pending is not None and not self._pending.done()

    @property
    def buffered_s(self) -> float:
        """Seconds of audio in the utterance so far (at the model's rate)."""
        return len(self._audio) / (MODEL_RATE * _SAMPLE_BYTES)

    def _check_open(self, verb: str) -> None:
        if not self._open:
            raise AsrError(f"{verb}() on a stream that is already finished or closed")

    def _collect(self) -> bool:
        """Take a finished partial decode into the agreement; True if one was taken."""
        pending = self._pending
        if pending is None or not pending.done():
            return False
        self._pending = None
        try:
            text = pending.result()
        except Exception as exc:  # a partial is best effort; finish() reports real failures
            log.warning("Whisper partial decode failed: %s", exc)
            return False
        self._agreement.insert(self._engine._words(text, self.hints))
        return True

    def _maybe_decode(self) -> None:
        interval = self._engine.partial_interval_s
        if interval is None or self._pending is not None:
            return
        size = len(self._audio)
        if size - self._decoded_bytes < interval * MODEL_RATE * _SAMPLE_BYTES:
            return
        if size > self._engine.max_partial_s * MODEL_RATE * _SAMPLE_BYTES:
            return
        future = self._engine._decode_partial(bytes(self._audio), self.hints)
        if future is not None:
            self._pending = future
            self._decoded_bytes = size
