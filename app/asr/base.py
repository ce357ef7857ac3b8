"""The streaming ASR interface every engine implements.

An engine holds the heavy, shared resources (a model, loaded once per process). Each turn of a
call opens its own `AsrStream` from it: feed PCM as it arrives, read partial results, and call
`finish()` at the endpoint for the final result. Streams are used by one thread at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AsrResult:
    """What the recogniser heard: text, a confidence in [0, 1], and whether it is final."""

    text: str
    confidence: float
    is_final: bool
    engine: str = ""


@dataclass(frozen=True, slots=True)
class RecognitionOptions:
    """Per-turn constraints from the dialplan.

    `grammar` names a built-in grammar (e.g. "digits"), `jsgf` is a grammar's text, `phrases` a
    list of accepted phrases; at most one of them. None of them means open vocabulary.
    `extra_phrases` are accepted besides the constraint (e.g. "agent" at any question).
    """

    grammar: str | None = None
    phrases: tuple[str, ...] = field(default_factory=tuple)
    jsgf: str | None = None
    extra_phrases: tuple[str, ...] = field(default_factory=tuple)
    language: str = "en-US"


class AsrError(RuntimeError):
    """An engine could not load or recognise; the message says why."""


class AsrStream(ABC):
    """One utterance being recognised. Fed 16-bit mono PCM at the engine's `sample_rate`."""

    @abstractmethod
    def feed(self, pcm: bytes) -> AsrResult | None:
        """Add audio; return a partial result when the hypothesis changed, else None."""

    @abstractmethod
    def finish(self) -> AsrResult:
        """End of input: return the final result (text may be empty). The stream is then done."""

    def close(self) -> None:  # noqa: B027 - optional hook, most streams hold nothing to free
        """Release the stream without a result (caller hung up, barge-in cancelled)."""


class AsrEngine(ABC):
    """A recogniser loaded once per process and shared by calls."""

    name: str = "asr"
    sample_rate: int = 16000

    @abstractmethod
    def open_stream(self, options: RecognitionOptions | None = None) -> AsrStream:
        """Start recognising one utterance under `options`."""
