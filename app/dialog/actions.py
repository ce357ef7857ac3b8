"""What the dialogue asks the call to do. The runner yields these; the call performs them.

Each action names the step it comes from, so the call can publish `StepEntered` and
`TurnCompleted` events without knowing the dialplan.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.asr.base import RecognitionOptions


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text`. The call sends back None when it has been played."""

    step: str
    text: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Speak `prompt`, then listen under `options`.

    The call sends back the final `AsrResult`, or None when the caller said nothing within
    `no_input_ms` (None: the server's `vad.no_input_ms`). `attempt` counts from 1 (reprompts).
    """

    step: str
    prompt: str
    options: RecognitionOptions
    no_input_ms: int | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call; `reason` is for the call record (e.g. "hangup step", "retries exhausted")."""

    step: str
    reason: str


Action = Say | Ask | Hangup
