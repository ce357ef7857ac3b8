"""The step kinds of a dialplan, as loaded and checked.

A step is immutable data; the runner gives it meaning. A new kind (menu, transfer, set, ...)
adds a dataclass here, a parser in `dialplan.py` and a branch in `runner.py`; `targets` and
`assigns` let the loader check references without knowing the kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.asr.base import RecognitionOptions
from app.dialog.template import Template

BUILTIN_GRAMMARS = ("digits", "yes_no")
CALL_VARIABLES = ("caller", "dialled")
"""Variables the call sets before the first step."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """Common to every kind: the step's name, where it is defined, and the step after it."""

    name: str
    line: int
    next: str | None = None

    def targets(self) -> tuple[tuple[str, str], ...]:
        """(key, step name) for every step this one can lead to."""
        return (("next", self.next),) if self.next is not None else ()

    def assigns(self) -> tuple[str, ...]:
        """Variables this step can set."""
        return ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        """(key, template) for every template of the step."""
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SayStep(Step):
    """Speak `text`, then go to `next`."""

    text: Template

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return (("say", self.text),)


@dataclass(frozen=True, slots=True, kw_only=True)
class AskStep(Step):
    """Speak `prompt`, listen, store the answer in `into`, then go to `next`.

    After no input or an answer that does not fit (`grammar`, `phrases`, digit limits) it asks
    again with `reprompt`, up to `retries` more times, then goes to `on_fail` (None: hang up).
    `no_input_ms` overrides the server's `vad.no_input_ms` for this question.
    """

    prompt: Template
    grammar: str | None = None
    phrases: tuple[str, ...] = ()
    into: str | None = None
    min_digits: int | None = None
    max_digits: int | None = None
    retries: int = 2
    reprompt: Template | None = None
    on_fail: str | None = None
    no_input_ms: int | None = None

    def targets(self) -> tuple[tuple[str, str], ...]:
        fail = (("on_fail", self.on_fail),) if self.on_fail is not None else ()
        return Step.targets(self) + fail

    def assigns(self) -> tuple[str, ...]:
        return (self.into,) if self.into is not None else ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        prompt = (("ask", self.prompt),)
        return prompt if self.reprompt is None else (*prompt, ("reprompt", self.reprompt))

    def recognition_options(self) -> RecognitionOptions:
        return RecognitionOptions(grammar=self.grammar, phrases=self.phrases)


@dataclass(frozen=True, slots=True, kw_only=True)
class HangupStep(Step):
    """End the call."""
