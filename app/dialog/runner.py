"""The dialogue engine: walks a dialplan, yielding actions and receiving what happened.

No threads, no I/O, no clock: the call drives the generator, so a whole conversation can be
tested by sending scripted `AsrResult`s.

    runner = DialogRunner(plan, {"caller": "alice", "dialled": "1000"})
    dialogue = runner.run()
    action = next(dialogue)
    while not isinstance(action, Hangup):
        action = dialogue.send(perform(action))   # None after Say; AsrResult | None after Ask
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

from app.asr.base import AsrResult
from app.asr.grammars import digits_from_words
from app.dialog.actions import Action, Ask, Hangup, Say
from app.dialog.dialplan import MAX_DIGITS, Dialplan
from app.dialog.steps import AskStep, HangupStep, SayStep

YES_WORDS = frozenset({"yes", "yeah", "yep", "yup", "correct", "right", "sure", "affirmative"})
NO_WORDS = frozenset({"no", "nope", "nah", "wrong", "incorrect", "negative"})

Dialogue = Generator[Action, AsrResult | None, None]


class DialogRunner:
    """One call's walk through a dialplan. `variables` starts with what the call set."""

    def __init__(
        self, dialplan: Dialplan, variables: Mapping[str, str] | None = None, max_steps: int = 500
    ) -> None:
        self.dialplan = dialplan
        self.variables: dict[str, str] = dict(variables or {})
        self.current_step: str | None = None
        self.max_steps = max_steps
        """Steps entered before hanging up: stops a loop of `say` steps playing forever."""
        self._started = False

    def run(self) -> Dialogue:
        """Yield `Say`/`Ask` actions and finally one `Hangup`; see the module docstring."""
        if self._started:
            raise RuntimeError("DialogRunner.run() can only be used once per call")
        self._started = True
        name = self.dialplan.start
        for _ in range(self.max_steps):
            step = self.dialplan.steps[name]
            self.current_step = name
            if isinstance(step, HangupStep):
                yield Hangup(name, "hangup step")
                return
            if isinstance(step, SayStep):
                _expect_nothing((yield Say(name, step.text.render(self.variables))))
                following, reason = step.next, "no next step"
            elif isinstance(step, AskStep):
                following, reason = yield from self._ask(step)
            else:
                raise TypeError(f"step {name!r}: no runner for {type(step).__name__}")
            if following is None:
                yield Hangup(name, reason)
                return
            name = following
        yield Hangup(name, f"step limit ({self.max_steps}) reached")

    def _ask(self, step: AskStep) -> Generator[Action, AsrResult | None, tuple[str | None, str]]:
        options = step.recognition_options()
        reprompt = step.reprompt or step.prompt
        for attempt in range(1, step.retries + 2):
            prompt = (step.prompt if attempt == 1 else reprompt).render(self.variables)
            result = yield Ask(step.name, prompt, options, step.no_input_ms, attempt)
            if result is not None and not isinstance(result, AsrResult):
                raise TypeError(f"Ask expects an AsrResult or None, got {type(result).__name__}")
            value = interpret(step, result)
            if value is not None:
                if step.into is not None:
                    self.variables[step.into] = value
                return step.next, "no next step"
        return step.on_fail, "retries exhausted"


def interpret(step: AskStep, result: AsrResult | None) -> str | None:
    """The value an answer gives the step's variable, or None for no input / no match."""
    if result is None:
        return None
    text = " ".join(result.text.split())
    if not text:
        return None
    if step.grammar == "digits":
        return _digits(step, text)
    if step.grammar == "yes_no":
        return _yes_no(text)
    if step.phrases:
        wanted = text.casefold()
        return next((p for p in step.phrases if p.casefold() == wanted), None)
    return text


def _digits(step: AskStep, text: str) -> str | None:
    try:
        digits = digits_from_words(text)
    except ValueError:
        return None
    if not digits or not digits.isdigit():
        return None
    low = step.min_digits or 1
    high = step.max_digits or MAX_DIGITS
    return digits if low <= len(digits) <= high else None


def _yes_no(text: str) -> str | None:
    words = set(text.casefold().split())
    yes, no = bool(words & YES_WORDS), bool(words & NO_WORDS)
    if yes == no:
        return None
    return "yes" if yes else "no"


def _expect_nothing(reply: object) -> None:
    if reply is not None:
        raise TypeError(f"Say expects None back, got {type(reply).__name__}")
