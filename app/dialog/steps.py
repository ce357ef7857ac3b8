"""The step kinds of a dialplan, as loaded and checked.

A step is immutable data; the runner gives it meaning. A new kind adds a dataclass here, a
parser in `parsing.py`, a schema entry in `dialplan.schema.json` and a branch in `runner.py`.
`targets`, `assigns`, `templates`, `reads` and `takes_input` let the checks in `checks.py` work
without knowing the kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.dialog.actions import BargeIn
from app.dialog.template import Template

CALL_VARIABLES = ("caller", "dialled", "call_id")
"""Variables the call sets before the first step."""

Targets = tuple[tuple[str, str], ...]
"""(key, step name) pairs: where a step can lead, and under which key of the step it says so."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """Common to every kind: the step's name, where it is defined, and the step after it."""

    name: str
    line: int
    next: str | None = None

    def targets(self) -> Targets:
        return (("next", self.next),) if self.next is not None else ()

    def assigns(self) -> tuple[str, ...]:
        """Variables this step can set."""
        return ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        """(key, template) for every template of the step."""
        return ()

    def reads(self) -> tuple[tuple[str, str], ...]:
        """(key, variable) read outside templates (branch conditions)."""
        return ()

    @property
    def takes_input(self) -> bool:
        """True when the step waits for the caller: a loop through it cannot spin."""
        return False


def _optional(key: str, value: str | None) -> Targets:
    return ((key, value),) if value is not None else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SayStep(Step):
    """Speak `text`, then go to `next`."""

    text: Template
    barge_in: BargeIn = "dtmf"

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return (("say", self.text),)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    """How a question is asked again, and where the dialogue goes when it gives up.

    `no_input` / `no_match` are the reprompts for each retry in turn (the last one repeats; none:
    ask the question again). After `count` retries it goes to `on_no_input` / `on_no_match`
    depending on the last failure, else to `on_fail`; None everywhere: hang up.
    """

    count: int = 2
    no_input: tuple[Template, ...] = ()
    no_match: tuple[Template, ...] = ()
    on_no_input: str | None = None
    on_no_match: str | None = None
    on_fail: str | None = None

    def targets(self) -> Targets:
        return (
            _optional("on_no_input", self.on_no_input)
            + _optional("on_no_match", self.on_no_match)
            + _optional("on_fail", self.on_fail)
        )

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return tuple(("no_input", t) for t in self.no_input) + tuple(
            ("no_match", t) for t in self.no_match
        )

    def reprompt(self, failure: Literal["no_input", "no_match"], retry: int) -> Template | None:
        """The prompt for retry number `retry` (1-based) after `failure`, if one is written."""
        prompts = self.no_input if failure == "no_input" else self.no_match
        if not prompts:
            return None
        return prompts[min(retry, len(prompts)) - 1]

    def give_up(self, failure: Literal["no_input", "no_match"]) -> str | None:
        specific = self.on_no_input if failure == "no_input" else self.on_no_match
        return specific or self.on_fail


@dataclass(frozen=True, slots=True, kw_only=True)
class Collect:
    """How an answer is taken: by voice, keypad or both, and when the caller is done."""

    speech: bool = True
    dtmf: bool = True
    dtmf_max_digits: int | None = None
    dtmf_terminator: str | None = "#"
    inter_digit_ms: int = 3000
    no_input_ms: int | None = None
    end_silence_ms: int | None = None
    barge_in: BargeIn = "speech"


@dataclass(frozen=True, slots=True, kw_only=True)
class AskStep(Step):
    """Speak `prompt`, collect a slot of `slot_type`, store it in `into`, then go to `next`.

    `phrases` (a phrase list) and the slot's grammar constrain the recogniser; `choices` maps a
    value to its spoken synonyms (slot type "choice").
    """

    prompt: Template
    slot_type: str = "text"
    grammar: str | None = None
    """A built-in grammar name (None with `jsgf` set or open vocabulary)."""
    phrases: tuple[str, ...] = ()
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    choice_keys: dict[str, str] = field(default_factory=dict)
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    into: str | None = None
    sensitive: bool = False
    """A PIN or the like: kept out of call records, transcripts, logs and the LLM history."""
    jsgf: str | None = None
    """The text of a grammar file given as `grammar: file.jsgf`."""
    hotwords: tuple[str, ...] = ()
    """Words an open-vocabulary recogniser (Whisper, a vendor API) should favour."""
    initial_prompt: str | None = None
    """Text shown to such a recogniser as if said before the answer (style, spelling)."""
    collect: Collect = field(default_factory=Collect)
    retries: Retries = field(default_factory=Retries)

    def targets(self) -> Targets:
        return Step.targets(self) + self.retries.targets()

    def assigns(self) -> tuple[str, ...]:
        return (self.into,) if self.into is not None else ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return (("ask", self.prompt), *self.retries.templates())

    @property
    def takes_input(self) -> bool:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class MenuOption:
    """One menu entry: a key, spoken synonyms, and the step it leads to."""

    value: str
    dtmf: str | None
    synonyms: tuple[str, ...]
    goto: str
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MenuStep(Step):
    """Speak `prompt`; the caller presses an option's key or says one of its synonyms."""

    prompt: Template
    options: tuple[MenuOption, ...]
    into: str | None = None
    collect: Collect = field(default_factory=Collect)
    retries: Retries = field(default_factory=Retries)

    def targets(self) -> Targets:
        options = tuple((f"options {o.value}", o.goto) for o in self.options)
        return options + self.retries.targets()

    def assigns(self) -> tuple[str, ...]:
        return (self.into,) if self.into is not None else ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return (("menu", self.prompt), *self.retries.templates())

    @property
    def takes_input(self) -> bool:
        return True


CONDITION_OPERATORS = ("equals", "not_equals", "in", "not_in", "lt", "le", "gt", "ge", "matches")
"""Plus `set: true|false` (the variable has a non-empty value, or not)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """`variable <operator> operand`. Comparisons are numeric; `matches` is a full regex match."""

    variable: str
    operator: str
    operand: Any
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchRule:
    """Go to `goto` when every condition holds."""

    conditions: tuple[Condition, ...]
    goto: str
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchStep(Step):
    """The first rule whose conditions all hold decides; none: go to `otherwise`."""

    rules: tuple[BranchRule, ...]
    otherwise: str

    def targets(self) -> Targets:
        rules = tuple((f"branch rule {i + 1}", rule.goto) for i, rule in enumerate(self.rules))
        return (*rules, ("else", self.otherwise))

    def reads(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (f"branch rule {i + 1}", c.variable)
            for i, rule in enumerate(self.rules)
            for c in rule.conditions
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SetStep(Step):
    """Assign each variable its rendered template, in order."""

    values: tuple[tuple[str, Template], ...]

    def assigns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.values)

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return tuple((f"set.{name}", template) for name, template in self.values)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookStep(Step):
    """HTTP request; on success map `result` paths into variables and go to `next`.

    `body` is JSON whose text leaves are templates. Failure (timeout, non-2xx, bad JSON, a
    missing result field) goes to `on_error` (None: hang up), and the error is recorded.
    """

    url: Template
    method: str = "POST"
    headers: tuple[tuple[str, Template], ...] = ()
    body: Any = None
    timeout_ms: int = 5000
    retries: int = 1
    backoff_ms: int = 500
    result: tuple[tuple[str, str], ...] = ()
    on_error: str | None = None

    def targets(self) -> Targets:
        return Step.targets(self) + _optional("on_error", self.on_error)

    def assigns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.result)

    def templates(self) -> tuple[tuple[str, Template], ...]:
        headers = tuple((f"headers.{name}", t) for name, t in self.headers)
        return (("webhook", self.url), *headers, *(("body", t) for t in _body_templates(self.body)))


def _body_templates(body: Any) -> list[Template]:
    if isinstance(body, Template):
        return [body]
    if isinstance(body, dict):
        return [t for value in body.values() for t in _body_templates(value)]
    if isinstance(body, list | tuple):
        return [t for value in body for t in _body_templates(value)]
    return []


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmStep(Step):
    """Ask a chat model with the call's history; speak the (short) reply, store it in `into`."""

    message: Template
    url: Template
    model: str
    system: Template | None = None
    api_key_env: str | None = None
    timeout_ms: int = 8000
    max_tokens: int = 120
    speak: bool = True
    into: str | None = None
    on_error: str | None = None

    def targets(self) -> Targets:
        return Step.targets(self) + _optional("on_error", self.on_error)

    def assigns(self) -> tuple[str, ...]:
        return (self.into,) if self.into is not None else ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        system = (("system", self.system),) if self.system is not None else ()
        return (("llm", self.message), ("url", self.url), *system)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStep(Step):
    """Play `prompt` fully, then transfer to `target`; on failure go to `on_error`."""

    target: Template
    prompt: Template | None = None
    fallback: Literal["bridge", "none"] = "bridge"
    timeout_ms: int = 30_000
    on_error: str | None = None

    def targets(self) -> Targets:
        return _optional("on_error", self.on_error)

    def templates(self) -> tuple[tuple[str, Template], ...]:
        prompt = (("prompt", self.prompt),) if self.prompt is not None else ()
        return (("transfer", self.target), *prompt)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordStep(Step):
    """Play `prompt`, record the caller to a WAV file; its path goes into `into`."""

    prompt: Template
    max_s: int = 60
    silence_s: int = 3
    into: str | None = None

    def assigns(self) -> tuple[str, ...]:
        return (self.into,) if self.into is not None else ()

    def templates(self) -> tuple[tuple[str, Template], ...]:
        return (("record", self.prompt),)

    @property
    def takes_input(self) -> bool:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class GotoStep(Step):
    """Go to `next` (written `goto: step`)."""

    def targets(self) -> Targets:
        return (("goto", self.next),) if self.next is not None else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HangupStep(Step):
    """End the call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHandler:
    """The caller may ask for a person anywhere: a key, or a phrase at any spoken question."""

    dtmf: str | None = "0"
    phrases: tuple[str, ...] = ("agent", "operator", "representative")
    goto: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Handlers:
    """Dialplan-wide handlers (the `global:` section)."""

    agent: AgentHandler | None = None
    max_duration_s: int | None = None
    on_max_duration: str | None = None

    def targets(self) -> Targets:
        agent = (("agent.goto", self.agent.goto),) if self.agent is not None else ()
        return agent + _optional("on_max_duration", self.on_max_duration)
