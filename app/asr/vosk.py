"""Vosk (Kaldi) streaming ASR: one model per engine, one `KaldiRecognizer` per utterance.

Rate: streams take the call's 8 kHz PCM as it is. A recognizer is created at rate 8000 and
Kaldi's feature pipeline resamples to the model's own rate (16 kHz for vosk-model-small-en-us),
so no resampler runs here.

Grammars: Vosk takes a runtime grammar as a JSON list of phrases and compiles it into a loop:
any sequence of the listed phrases is heard; "[unk]" in the list lets other speech out as
"[unk]", which is dropped from the text. `grammar_phrases` maps a turn's options to that list:
a phrase list and the extra phrases as they are; a built-in grammar and a JSGF text (which Vosk
does not take) as a loop over the grammar's words. That is exact for "digits" (a loop of digit
words) and a superset for the structured grammars ("number", "date", "time"), whose word order
the dialogue's slots check afterwards; a JSGF text is approximated the same way, logged once.
Only models with a dynamic graph (graph/HCLr.fst and graph/Gr.fst: the "small" models) take
runtime grammars; with a static graph (HCLG.fst) every turn is open vocabulary, logged once.

Words: a phrase a dialplan gives with a word the model does not know is an AsrError, as with
PocketSphinx (it would never be heard). A built-in grammar's word the model lacks is left out.

Cost: the model (~40 MB small, GBs big) loads once; a recognizer is cheap to create (a grammar
compiles in milliseconds). libvosk is called through cffi, which releases the GIL, so streams
on several threads decode in parallel.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.asr.base import AsrEngine, AsrError, AsrResult, AsrStream, RecognitionOptions
from app.asr.grammars import BUILTIN_GRAMMARS, grammar_words, phrase_words
from app.media.audio import CALL_RATE

log = logging.getLogger(__name__)

ENGINE_NAME = "vosk"
UNKNOWN = "[unk]"
_INSTALL = "pip install 'switchboard[vosk]'"
_GRAPH_FILES = ("HCLr.fst", "Gr.fst")
_GRAMMAR_CACHE = 256  # options seen, per engine; phrase lists built at run time could be many
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


def _language(tag: str) -> str:
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()


def grammar_phrases(
    options: RecognitionOptions, known: Callable[[str], bool] | None = None
) -> list[str] | None:
    """The Vosk grammar for `options`: phrases then "[unk]"; None for open vocabulary.

    `known(word)` says whether the model has a word (None: every word is known). A dialplan's
    phrase with an unknown word raises AsrError; a built-in grammar's unknown word is dropped.
    """
    given = [name for name in ("grammar", "phrases", "jsgf") if getattr(options, name)]
    if len(given) > 1:
        raise AsrError(f"give only one of a grammar, a phrase list or a JSGF text, not {given}")
    if options.grammar:
        jsgf = BUILTIN_GRAMMARS.get(options.grammar)
        if jsgf is None:
            known_names = ", ".join(sorted(BUILTIN_GRAMMARS))
            raise AsrError(f"unknown grammar {options.grammar!r} (built-in: {known_names})")
        base = [w for w in sorted(grammar_words(jsgf)) if known is None or known(w)]
    elif options.phrases:
        base = _phrases(options.phrases, "phrase", known)
    elif options.jsgf:
        _warn_once("jsgf", "Vosk takes no JSGF: a JSGF grammar is heard as a loop of its words")
        base = _phrases(sorted(grammar_words(options.jsgf)), "JSGF word", known)
    else:
        return None  # open vocabulary: extra phrases are in the model's language model anyway
    extra = _phrases(options.extra_phrases, "extra phrase", known)
    phrases = list(dict.fromkeys((*base, *extra)))
    if not phrases:
        raise AsrError(f"none of the words of grammar {options.grammar!r} is in the Vosk model")
    return [*phrases, UNKNOWN]


def _phrases(phrases: Iterable[str], what: str, known: Callable[[str], bool] | None) -> list[str]:
    out = []
    for phrase in phrases:
        words = phrase_words(phrase)
        if not words:
            raise AsrError(f"{what} {phrase!r} has no words")
        unknown = [w for w in words if known is not None and not known(w)]
        if unknown:
            raise AsrError(
                f"not in the Vosk model's vocabulary: {', '.join(unknown)} (in {what} "
                f"{phrase!r}); use other words (or spell numbers as words)"
            )
        out.append(" ".join(words))
    return out


class VoskEngine(AsrEngine):
    """A Vosk model directory loaded once; `open_stream` gives each utterance a recognizer.

    `language` is the model's language: a turn asking for another one is an AsrError.
    `log_level` is Kaldi's (-1 quiet but errors, 0 info).
    """

    name = ENGINE_NAME
    sample_rate = CALL_RATE

    def __init__(
        self, model_path: str | Path, language: str = "en-US", log_level: int = -1
    ) -> None:
        self.model_path = Path(model_path).expanduser()
        self.language = language
        self._vosk, self._model = _load(self.model_path, log_level)
        self.runtime_grammars = any(
            all((self.model_path / folder / name).is_file() for name in _GRAPH_FILES)
            for folder in ("graph", ".")
        )
        self._grammars: dict[RecognitionOptions, str | None] = {}
        self._lock = threading.Lock()

    def open_stream(self, options: RecognitionOptions | None = None) -> VoskStream:
        grammar = self._grammar(options or RecognitionOptions(language=self.language))
        try:
            if grammar is None:
                recognizer = self._vosk.KaldiRecognizer(self._model, float(CALL_RATE))
            else:
                recognizer = self._vosk.KaldiRecognizer(self._model, float(CALL_RATE), grammar)
        except Exception as exc:  # libvosk only says "Failed to create a recognizer"
            raise AsrError(f"Vosk could not create a recognizer ({exc})") from exc
        recognizer.SetWords(True)
        return VoskStream(recognizer)

    def check_options(self, options: RecognitionOptions) -> None:
        """Raise AsrError if `options` could not be recognised (for validating a dialplan)."""
        self._grammar(options)

    def knows(self, word: str) -> bool:
        """Whether the model's vocabulary has `word`."""
        return int(self._model.vosk_model_find_word(word)) >= 0

    def _grammar(self, options: RecognitionOptions) -> str | None:
        """The grammar JSON for `options` (None: open vocabulary), cached per options."""
        with self._lock:
            if options in self._grammars:
                return self._grammars[options]
        if _language(options.language) != _language(self.language):
            raise AsrError(
                f"the Vosk model {self.model_path} is for {self.language!r}, "
                f"not {options.language!r}"
            )
        phrases = grammar_phrases(options, self.knows)
        if phrases is not None and not self.runtime_grammars:
            _warn_once(
                str(self.model_path),
                f"the Vosk model {self.model_path} has a static graph (no graph/HCLr.fst, "
                "Gr.fst): grammars and phrase lists run as open vocabulary",
            )
            phrases = None
        grammar = None if phrases is None else json.dumps(phrases)
        with self._lock:
            if len(self._grammars) >= _GRAMMAR_CACHE:
                self._grammars.clear()
            self._grammars[options] = grammar
        return grammar


def _load(path: Path, log_level: int) -> tuple[Any, Any]:
    if not path.is_dir():
        raise AsrError(
            f"Vosk model directory {path} not found: unpack a model there, e.g. "
            "vosk-model-small-en-us-0.15 from https://alphacephei.com/vosk/models "
            "(the server never downloads)"
        )
    try:
        import vosk
    except ImportError as exc:
        raise AsrError(f"vosk is not installed ({exc}): {_INSTALL}") from exc
    vosk.SetLogLevel(log_level)
    try:
        model = vosk.Model(str(path))
    except Exception as exc:  # libvosk returns NULL; the Python binding raises Exception
        raise AsrError(
            f"Vosk could not load a model from {path} ({exc}): expected a Vosk model "
            "directory (am/final.mdl, conf/, graph/ ...)"
        ) from exc
    return vosk, model


class VoskStream(AsrStream):
    """One utterance on its own recognizer.

    Vosk ends a segment by itself at a pause inside the turn; such segments are kept and the
    turn's text is all of them, since the call's endpointer decides where a turn ends.
    """

    def __init__(self, recognizer: Any) -> None:
        self._recognizer: Any | None = recognizer
        self._words: list[dict[str, Any]] = []  # words of segments Vosk already closed
        self._partial = ""

    def feed(self, pcm: bytes) -> AsrResult | None:
        """Decode `pcm`; a partial (confidence 0) when the text so far changed."""
        recognizer = self._live("feed")
        if len(pcm) % 2:
            raise AsrError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        if not pcm:
            return None
        try:
            if recognizer.AcceptWaveform(pcm):
                self._take(recognizer.Result())
                tail = ""
            else:
                tail = json.loads(recognizer.PartialResult()).get("partial", "")
        except AsrError:
            raise
        except Exception as exc:
            raise AsrError(f"Vosk failed on the audio: {exc}") from exc
        text = " ".join([*_text(self._words).split(), *_drop_unknown(tail.split())])
        if text == self._partial:
            return None
        self._partial = text
        return AsrResult(text, 0.0, is_final=False, engine=ENGINE_NAME)

    def finish(self) -> AsrResult:
        """Final text; confidence = mean word confidence (Vosk's word posteriors)."""
        recognizer = self._live("finish")
        self._recognizer = None
        try:
            self._take(recognizer.FinalResult())
        except AsrError:
            raise
        except Exception as exc:
            raise AsrError(f"Vosk failed to finish the utterance: {exc}") from exc
        words = [w for w in self._words if w.get("word") != UNKNOWN]
        text = _text(words)
        confs = [min(1.0, max(0.0, float(w.get("conf", 0.0)))) for w in words]
        confidence = sum(confs) / len(confs) if confs else 0.0
        return AsrResult(text, confidence, is_final=True, engine=ENGINE_NAME)

    def close(self) -> None:
        self._recognizer = None

    def _live(self, verb: str) -> Any:
        if self._recognizer is None:
            raise AsrError(f"{verb}() on a stream that is already finished or closed")
        return self._recognizer

    def _take(self, result_json: str) -> None:
        try:
            result = json.loads(result_json)
        except json.JSONDecodeError as exc:
            raise AsrError(f"Vosk returned a result that is not JSON: {exc}") from exc
        words = result.get("result")
        if words is None and result.get("text"):  # no word list: confidence unknown
            words = [{"word": w, "conf": 0.0} for w in result["text"].split()]
        self._words.extend(words or ())


def _drop_unknown(words: Iterable[str]) -> list[str]:
    return [w for w in words if w != UNKNOWN]


def _text(words: Iterable[dict[str, Any]]) -> str:
    return " ".join(_drop_unknown(str(w.get("word", "")) for w in words if w.get("word")))
