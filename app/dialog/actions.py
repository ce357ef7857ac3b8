"""What the dialogue asks the call to do, and what the call answers. The runner yields actions;
the call (or the terminal simulator) performs them and sends back the reply named on each.

Each action names the step it comes from, so the call can publish `StepEntered` and
`TurnCompleted` events without knowing the dialplan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.asr.base import AsrResult, RecognitionOptions
from app.services.llm import ChatReply, ChatRequest
from app.services.webhook import WebhookRequest, WebhookResponse

DTMF_KEYS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class DtmfOptions:
    """How keypad input is collected for one question.

    Collection ends at `terminator` (not part of the value), at `max_digits`, or when no key
    came for `inter_digit_ms` after the last one.
    """

    max_digits: int = 32
    terminator: str | None = "#"
    inter_digit_ms: int = 3000


@dataclass(frozen=True, slots=True)
class DtmfInput:
    """Keys the caller pressed for a question; `terminated` when it ended with the terminator."""

    digits: str
    terminated: bool = False


Heard = AsrResult | DtmfInput | None
"""The reply to an `Ask`: speech, keys, or None for no input before the timeout."""


BargeIn = Literal["speech", "dtmf", "off"]
"""What may stop a prompt: the caller's speech or a key ("speech"), only a key ("dtmf"), nothing
("off"). Keys that stop a prompt stay queued for the next question (type-ahead); speech that
stops it is kept, from its first syllable, and answers the question."""

BARGE_IN_MODES: tuple[BargeIn, ...] = ("speech", "dtmf", "off")


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text`. Reply: None.

    `cacheable`: the text is the same on every call (no variables), so its audio may be kept
    and reused across calls; never set for text that carries a caller's data.
    """

    step: str
    text: str
    barge_in: BargeIn = "dtmf"
    cacheable: bool = False


@dataclass(frozen=True, slots=True)
class Ask:
    """Speak `prompt`, then collect speech (when `speech`) and/or keys (when `dtmf` is set).

    Reply: `Heard`. `no_input_ms` / `end_silence_ms` override the server's VAD settings (None:
    use them). `attempt` counts from 1 (reprompts).
    """

    step: str
    prompt: str
    options: RecognitionOptions
    speech: bool = True
    dtmf: DtmfOptions | None = None
    no_input_ms: int | None = None
    end_silence_ms: int | None = None
    attempt: int = 1
    slot: str = "text"
    """The answer's type (`app.dialog.slots`), for endpointing: "digits", "number", ..."""
    min_length: int | None = None
    max_length: int | None = None
    barge_in: BargeIn = "speech"
    cacheable: bool = False
    """The prompt is the same on every call (see `Say.cacheable`)."""
    sensitive: bool = False
    """The answer (a PIN) must not reach records or logs."""


@dataclass(frozen=True, slots=True)
class CallWebhook:
    """Make an HTTP request. Reply: `WebhookResponse`."""

    step: str
    request: WebhookRequest


@dataclass(frozen=True, slots=True)
class AskLlm:
    """Ask a chat model. Reply: `ChatReply`."""

    step: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class Transfer:
    """Play `prompt` to the end, then transfer the caller to `target` (a SIP URI).

    Blind transfer by REFER first; when the caller's side rejects REFER or the transfer fails,
    `fallback="bridge"` has the server call `target` itself and bridge the two calls.
    Reply: `TransferOutcome`. After a successful transfer the dialogue is over.
    """

    step: str
    target: str
    prompt: str = ""
    fallback: Literal["bridge", "none"] = "bridge"
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """`method` is how the caller reached the target ("refer" or "bridge"); `error` why not."""

    ok: bool
    method: str | None = None
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """Play `prompt`, then record the caller to a WAV file (8 kHz 16-bit mono) at `path`.

    Recording stops after `max_ms`, after `silence_ms` of silence following speech, or at a
    keypress. Reply: `Recording`.
    """

    step: str
    prompt: str
    path: str
    max_ms: int = 60_000
    silence_ms: int = 3000
    no_input_ms: int = 5000


@dataclass(frozen=True, slots=True)
class Recording:
    """`ended_by`: "silence", "max_length", "dtmf", "no_input" or "hangup"."""

    path: str
    duration_ms: int
    ended_by: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call; `reason` is for the call record (e.g. "hangup step", "retries exhausted")."""

    step: str
    reason: str


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """Not an action: a fact for the call record that the runner reports through its
    `on_outcome` hook (a webhook error, a transfer, a recording, a variable set)."""

    step: str
    kind: str
    ok: bool
    detail: str


Action = Say | Ask | CallWebhook | AskLlm | Transfer | Record | Hangup
Reply = Heard | WebhookResponse | ChatReply | TransferOutcome | Recording


class CallTimeLimit(Exception):
    """Thrown into the dialogue generator when the call reaches its maximum duration."""
