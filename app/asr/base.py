"""The streaming ASR interface every engine implements.

An engine holds the heavy, shared resources (a model, loaded once per process). Each turn of a
call opens its own `AsrStream` from it: feed PCM as it arrives, read partial results, and call
`finish()` at the endpoint for the final result. Streams are used by one thread at a time.

The final pass is where some engines spend their time (PocketSphinx's lattice for word
posteriors, Whisper's full-beam decode), and it used to start only once the end-of-turn silence
had run out. `prepare_final()` lets the listener start it earlier, when the caller has been
quiet for a while: the silence still running hides its cost. If the caller goes on talking,
the next `feed()` carries on the utterance as if nothing happened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

DEFAULT_FINAL_LEAD_MS = 100
"""`AsrStream.final_lead_ms` of an engine whose final pass is quick (PocketSphinx)."""


@dataclass(frozen=True, slots=True)
class AsrResult:
    """What the recogniser heard: text, a confidence in [0, 1], and whether it is final."""

    text: str
    confidence: float
    is_final: bool
    engine: str = ""
    notes: tuple[str, ...] = ()
    """Why engines before `engine` did not answer (a fallback chain's record for the turn)."""


@dataclass(frozen=True, slots=True)
class RecognitionOptions:
    """Per-turn constraints from the dialplan.

    `grammar` names a built-in grammar (e.g. "digits"), `jsgf` is a grammar's text, `phrases` a
    list of accepted phrases; at most one of them. None of them means open vocabulary.
    `extra_phrases` are accepted besides the constraint (e.g. "agent" at any question).
    `hotwords` and `initial_prompt` bias an open-vocabulary engine (Whisper, a vendor API)
    towards the step's words without constraining it; grammar engines ignore them.
    `language` is a BCP 47 tag (the dialplan's).
    """

    grammar: str | None = None
    phrases: tuple[str, ...] = field(default_factory=tuple)
    jsgf: str | None = None
    extra_phrases: tuple[str, ...] = field(default_factory=tuple)
    language: str = "en-US"
    hotwords: tuple[str, ...] = field(default_factory=tuple)
    initial_prompt: str | None = None


class AsrError(RuntimeError):
    """An engine could not load or recognise; the message says why.

    `retry_after_s`: the engine said when to try again (a vendor's 429 Retry-After); a
    fallback chain keeps the engine's circuit open at least that long.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AsrStream(ABC):
    """One utterance being recognised. Fed 16-bit mono PCM at the engine's `sample_rate`."""

    @abstractmethod
    def feed(self, pcm: bytes) -> AsrResult | None:
        """Add audio; return a partial result when the hypothesis changed, else None."""

    @abstractmethod
    def finish(self) -> AsrResult:
        """End of input: return the final result (text may be empty). The stream is then done."""

    def prepare_final(self) -> AsrResult | None:
        """The caller has paused: start computing the final result for the audio so far.

        Returns it when it is ready at once (else None: it is on its way). Feeding more audio
        afterwards is allowed and extends the utterance; `finish()` without any gives the
        prepared result. The default does nothing (a cheap final pass needs no head start).
        """
        return None

    def prepared_result(self) -> AsrResult | None:
        """The final `prepare_final` started, once it is ready; None before (never blocks).

        The listener reads it during the pause, so an engine whose final arrives later than
        `prepare_final` returns (Whisper) can still end a complete answer early."""
        return None

    @property
    def final_lead_ms(self) -> int:
        """How long before the end of the turn's silence `prepare_final` should start: about
        what the engine's final pass takes (PocketSphinx 25-50 ms; Whisper measures its own)."""
        return DEFAULT_FINAL_LEAD_MS

    def close(self) -> None:  # noqa: B027 - optional hook, most streams hold nothing to free
        """Release the stream without a result (caller hung up, barge-in cancelled)."""


class AsrEngine(ABC):
    """A recogniser loaded once per process and shared by calls."""

    name: str = "asr"
    sample_rate: int = 16000

    @abstractmethod
    def open_stream(self, options: RecognitionOptions | None = None) -> AsrStream:
        """Start recognising one utterance under `options`."""
