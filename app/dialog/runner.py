"""The dialogue engine: walks a dialplan, yielding actions and receiving what happened.

No threads, no I/O, no clock: whoever drives the generator performs the actions — the call
worker on a real call, `switchboard dialplan simulate` in a terminal, a test with scripted
replies. The same engine runs in all three.

    runner = DialogRunner(plan, {"caller": "alice", "dialled": "1000"})
    dialogue = runner.run()
    action = next(dialogue)
    while not isinstance(action, Hangup):
        action = dialogue.send(perform(action))   # the reply each action names

When the call reaches its maximum duration, the driver throws `CallTimeLimit` into the
generator; the dialogue goes to the plan's `on_max_duration` step (once) or hangs up.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import quote

from app.asr.base import AsrResult, RecognitionOptions
from app.asr.grammars import BUILTIN_GRAMMARS, phrase_words
from app.dialog import slots
from app.dialog.actions import (
    Action,
    Ask,
    AskLlm,
    BargeIn,
    CallTimeLimit,
    CallWebhook,
    DtmfInput,
    DtmfOptions,
    Hangup,
    Heard,
    Record,
    Recording,
    Reply,
    Say,
    StepOutcome,
    Transfer,
    TransferOutcome,
)
from app.dialog.conditions import holds
from app.dialog.dialplan import Dialplan
from app.dialog.steps import (
    AskStep,
    BranchStep,
    Collect,
    GotoStep,
    HangupStep,
    LlmStep,
    MenuStep,
    RecordStep,
    Retries,
    SayStep,
    SetStep,
    Step,
    TransferStep,
    WebhookStep,
)
from app.dialog.template import Field, Template
from app.services.llm import ChatMessage, ChatReply, ChatRequest
from app.services.webhook import WebhookRequest, WebhookResponse, extract, render_value

log = logging.getLogger(__name__)

Dialogue = Generator[Action, Reply, None]
Failure = Literal["no_input", "no_match"]
AnswerResult = Literal["matched", "no_input", "no_match"]
"""What an answer to a question came to; `on_answer` hears it after each attempt."""
REDACTED = "[redacted]"
HISTORY_LIMIT = 24
"""Messages of the call kept for `llm` steps (the system prompt comes on top)."""


class _AgentRequested(Exception):
    """The caller asked for a person (the global agent key or phrase)."""


class _Done(Exception):
    """The dialogue ended inside a step (hang up, transfer)."""


class DialogRunner:
    """One call's walk through a dialplan. `variables` starts with what the call set."""

    def __init__(
        self,
        dialplan: Dialplan,
        variables: Mapping[str, str] | None = None,
        *,
        max_steps: int = 500,
        today: dt.date | None = None,
        environ: Mapping[str, str] | None = None,
        on_variable: Callable[[str, str, str], None] | None = None,
        on_outcome: Callable[[StepOutcome], None] | None = None,
        on_step: Callable[[str], None] | None = None,
        on_answer: Callable[[AnswerResult], None] | None = None,
    ) -> None:
        self.dialplan = dialplan
        self.variables: dict[str, str] = {**dialplan.variables, **(variables or {})}
        self.history: list[ChatMessage] = []
        self.current_step: str | None = None
        self.max_steps = max_steps
        """Steps entered before hanging up: a safety net behind the load-time loop check."""
        self.today = today or dt.date.today()
        self._environ = os.environ if environ is None else environ
        self._on_variable = on_variable
        self._on_outcome = on_outcome
        self._on_step = on_step
        self._on_answer = on_answer
        self._sensitive: set[str] = set()
        self._recordings = 0
        self._started = False

    # -- driving ------------------------------------------------------------------------------

    def run(self) -> Dialogue:
        """Yield actions and finally one `Hangup`; see the module docstring."""
        if self._started:
            raise RuntimeError("DialogRunner.run() can only be used once per call")
        self._started = True
        handlers = self.dialplan.handlers
        timed_out = False
        name: str | None = self.dialplan.start
        reason = ""
        for _ in range(self.max_steps):
            if name is None:
                yield Hangup(self.current_step or self.dialplan.start, reason)
                return
            step = self.dialplan.steps[name]
            self.current_step = name
            if self._on_step is not None:
                self._on_step(name)
            try:
                name, reason = yield from self._step(step)
            except _Done:
                return
            except _AgentRequested:
                assert handlers.agent is not None
                name, reason = handlers.agent.goto, ""
            except CallTimeLimit:
                if timed_out or handlers.on_max_duration is None:
                    yield Hangup(step.name, "maximum call duration reached")
                    return
                timed_out = True
                name, reason = handlers.on_max_duration, ""
        yield Hangup(name or self.dialplan.start, f"step limit ({self.max_steps}) reached")

    def _step(self, step: Step) -> Generator[Action, Reply, tuple[str | None, str]]:
        """Perform one step; return the next step's name (None: hang up) and why."""
        if isinstance(step, HangupStep):
            yield Hangup(step.name, "hangup step")
            raise _Done
        if isinstance(step, SayStep):
            text = step.text.render(self.variables)
            yield from self._say(step.name, text, step.barge_in, not step.text.variables)
            return step.next, "no next step"
        if isinstance(step, AskStep):
            return (yield from self._ask(step))
        if isinstance(step, MenuStep):
            return (yield from self._menu(step))
        if isinstance(step, BranchStep):
            for rule in step.rules:
                if all(holds(c, self.variables) for c in rule.conditions):
                    return rule.goto, ""
            return step.otherwise, ""
        if isinstance(step, SetStep):
            for name, template in step.values:
                self._assign(step.name, name, template.render(self.variables))
            return step.next, "no next step"
        if isinstance(step, GotoStep):
            return step.next, ""
        if isinstance(step, WebhookStep):
            return (yield from self._webhook(step))
        if isinstance(step, LlmStep):
            return (yield from self._llm(step))
        if isinstance(step, TransferStep):
            return (yield from self._transfer(step))
        if isinstance(step, RecordStep):
            return (yield from self._record(step))
        raise TypeError(f"step {step.name!r}: no runner for {type(step).__name__}")

    # -- speaking and listening ---------------------------------------------------------------

    def _say(
        self, step: str, text: str, barge_in: BargeIn, cacheable: bool = False
    ) -> Generator[Action, Reply, None]:
        if text.strip():
            self._remember("assistant", text)
        reply = yield Say(step, text, barge_in, cacheable)
        if reply is not None:
            raise TypeError(f"Say expects None back, got {type(reply).__name__}")

    def _ask(self, step: AskStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        if step.sensitive and step.into is not None:
            self._sensitive.add(step.into)
        dtmf = self._dtmf(step.collect, step.max_length)
        question = replace(
            self._question(step.name, self._recognition(step), step.collect, dtmf, step.sensitive),
            slot=step.slot_type,
            min_length=step.min_length,
            max_length=step.max_length,
        )
        value, failure = yield from self._until_answered(
            question, step.prompt, step.retries, lambda heard: self._interpret(step, heard)
        )
        if value is None:
            return step.retries.give_up(failure), _gave_up(failure, step.retries)
        if step.into is not None:
            self._assign(step.name, step.into, value)
        return step.next, "no next step"

    def _menu(self, step: MenuStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        synonyms = tuple(s for option in step.options for s in option.synonyms)
        options = RecognitionOptions(phrases=synonyms, extra_phrases=self._agent_phrases())
        dtmf = self._dtmf(step.collect, 1)
        if dtmf is not None:
            dtmf = DtmfOptions(max_digits=1, terminator=None, inter_digit_ms=dtmf.inter_digit_ms)
        by_value = {option.value: option for option in step.options}
        choices = {option.value: option.synonyms for option in step.options}
        keys = {option.dtmf: option.value for option in step.options if option.dtmf}

        def choose(heard: AsrResult | DtmfInput) -> str | None:
            text, digits = _parts(heard)
            return slots.choice(text=text, dtmf=digits, choices=choices, keys=keys)

        question = replace(
            self._question(step.name, options, step.collect, dtmf, sensitive=False), slot="choice"
        )
        value, failure = yield from self._until_answered(
            question, step.prompt, step.retries, choose, options_first=True
        )
        if value is None:
            return step.retries.give_up(failure), _gave_up(failure, step.retries)
        if step.into is not None:
            self._assign(step.name, step.into, value)
        return by_value[value].goto, ""

    def _until_answered(
        self,
        question: Ask,
        prompt: Template,
        retries: Retries,
        read: Callable[[AsrResult | DtmfInput], str | None],
        *,
        options_first: bool = False,
    ) -> Generator[Action, Reply, tuple[str | None, Failure]]:
        """Ask (and reprompt) until `read` makes a value of an answer or the retries run out:
        (value, _) or (None, the last failure). The agent key/phrase is heard before the
        answer, or for a menu (`options_first`) only when it is not one of the options."""
        failure: Failure = "no_input"
        misses = {"no_input": 0, "no_match": 0}
        for attempt in range(1, retries.count + 2):
            template = self._prompt(prompt, retries, failure, attempt, misses)
            text = template.render(self.variables)
            if text.strip():
                self._remember("assistant", text)
            cacheable = not template.variables
            heard = self._heard(
                (yield replace(question, prompt=text, attempt=attempt, cacheable=cacheable))
            )
            if not options_first:
                self._check_agent(heard, question.step)
            value = None if heard is None else read(heard)
            if value is None and options_first:
                self._check_agent(heard, question.step)
            if heard is not None:
                self._remember("user", REDACTED if question.sensitive else _said(heard))
            if self._on_answer is not None:
                self._on_answer(
                    "matched" if value is not None else "no_input" if heard is None else "no_match"
                )
            if value is not None:
                return value, failure
            failure = "no_input" if heard is None else "no_match"
            misses[failure] += 1
        return None, failure

    @staticmethod
    def _heard(reply: Reply) -> Heard:
        if reply is not None and not isinstance(reply, AsrResult | DtmfInput):
            raise TypeError(f"Ask expects an AsrResult, a DtmfInput or None, got {reply!r}")
        return reply

    @staticmethod
    def _question(
        step: str,
        options: RecognitionOptions,
        collect: Collect,
        dtmf: DtmfOptions | None,
        sensitive: bool,
    ) -> Ask:
        """The question without its prompt text (that changes with each attempt)."""
        return Ask(
            step=step,
            prompt="",
            options=options,
            speech=collect.speech,
            dtmf=dtmf,
            no_input_ms=collect.no_input_ms,
            end_silence_ms=collect.end_silence_ms,
            barge_in=collect.barge_in,
            sensitive=sensitive,
        )

    def _prompt(
        self,
        first: Template,
        retries: Retries,
        failure: Failure,
        attempt: int,
        misses: Mapping[str, int],
    ) -> Template:
        """The question, or after a failure the reprompt for the how-many-th failure of that
        kind (a no-match after a no-input gets the first no-match reprompt)."""
        if attempt == 1:
            return first
        return retries.reprompt(failure, misses[failure]) or first

    def _recognition(self, step: AskStep) -> RecognitionOptions:
        return dataclasses.replace(
            self._constraint(step),
            language=self.dialplan.language,
            hotwords=step.hotwords,
            initial_prompt=step.initial_prompt,
        )

    def _constraint(self, step: AskStep) -> RecognitionOptions:
        if not step.collect.speech:
            return RecognitionOptions()
        extra = self._agent_phrases()
        if step.jsgf is not None:
            return RecognitionOptions(jsgf=step.jsgf, extra_phrases=extra)
        if step.slot_type == "choice":
            phrases = tuple(s for value, syn in step.choices.items() for s in (value, *syn))
            return RecognitionOptions(phrases=tuple(dict.fromkeys(phrases)), extra_phrases=extra)
        if step.phrases:
            return RecognitionOptions(phrases=step.phrases, extra_phrases=extra)
        grammar = step.grammar if step.grammar in BUILTIN_GRAMMARS else None
        return RecognitionOptions(grammar=grammar, extra_phrases=extra if grammar else ())

    def _dtmf(self, collect: Collect, max_digits: int | None) -> DtmfOptions | None:
        if not collect.dtmf:
            return None
        return DtmfOptions(
            max_digits=collect.dtmf_max_digits or max_digits or 32,
            terminator=collect.dtmf_terminator,
            inter_digit_ms=collect.inter_digit_ms,
        )

    def _agent_phrases(self) -> tuple[str, ...]:
        agent = self.dialplan.handlers.agent
        return agent.phrases if agent is not None else ()

    def _check_agent(self, heard: Heard, step: str) -> None:
        agent = self.dialplan.handlers.agent
        if agent is None or heard is None:
            return
        if isinstance(heard, DtmfInput):
            asked = agent.dtmf is not None and heard.digits == agent.dtmf
        else:
            words = f" {' '.join(phrase_words(heard.text))} "
            asked = any(f" {' '.join(phrase_words(p))} " in words for p in agent.phrases)
        if asked:
            log.info("step %s: the caller asked for an agent", step)
            self._outcome(StepOutcome(step, "agent", True, "caller asked for an agent"))
            raise _AgentRequested

    def _interpret(self, step: AskStep, heard: AsrResult | DtmfInput) -> str | None:
        text, digits = _parts(heard)
        kind = step.slot_type
        if kind == "digits":
            return slots.digits(
                text=text, dtmf=digits, min_len=step.min_length or 1, max_len=step.max_length or 64
            )
        if kind == "yes_no":
            return slots.yes_no(text=text, dtmf=digits)
        if kind == "number":
            return slots.number(text=text, dtmf=digits, minimum=step.minimum, maximum=step.maximum)
        if kind == "date":
            return slots.date(text=text, dtmf=digits, today=self.today)
        if kind == "time":
            return slots.time_of_day(text=text, dtmf=digits)
        if kind == "choice":
            return slots.choice(text=text, dtmf=digits, choices=step.choices, keys=step.choice_keys)
        if text is None:
            return None
        if step.phrases:
            return slots.phrase(text, step.phrases)
        cleaned = " ".join(text.split())
        return cleaned or None

    # -- the outside world --------------------------------------------------------------------

    def _webhook(self, step: WebhookStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        request = WebhookRequest(
            method=step.method,
            url=_render_url(step.url, self.variables),
            headers={name: t.render(self.variables) for name, t in step.headers},
            body=_render_json(step.body, self.variables),
            timeout_s=step.timeout_ms / 1000,
            retries=step.retries,
            backoff_s=step.backoff_ms / 1000,
        )
        response = yield CallWebhook(step.name, request)
        if not isinstance(response, WebhookResponse):
            raise TypeError(f"CallWebhook expects a WebhookResponse, got {response!r}")
        error = response.error if not response.ok else None
        values: list[tuple[str, str]] = []
        if error is None:
            try:
                values = [
                    (name, render_value(extract(response.data, path))) for name, path in step.result
                ]
            except (KeyError, IndexError, TypeError) as exc:
                error = f"result: {exc.args[0] if exc.args else exc}"
        if error is not None:
            return self._failed(
                step,
                "webhook",
                f"{request.method} {_without_query(request.url)}: {error}",
                step.on_error,
            )
        for name, value in values:
            self._assign(step.name, name, value)
        self._outcome(StepOutcome(step.name, "webhook", True, f"HTTP {response.status}"))
        return step.next, "no next step"

    def _llm(self, step: LlmStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        message = step.message.render(self.redacted_variables())
        messages = []
        if step.system is not None:
            messages.append(ChatMessage("system", step.system.render(self.redacted_variables())))
        history = list(self.history)
        if message.strip() and not (history and history[-1] == ChatMessage("user", message)):
            history.append(ChatMessage("user", message))
        messages.extend(history)
        api_key = self._environ.get(step.api_key_env) if step.api_key_env else None
        request = ChatRequest(
            url=step.url.render(self.variables),
            model=step.model,
            messages=tuple(messages),
            timeout_s=step.timeout_ms / 1000,
            max_tokens=step.max_tokens,
            api_key=api_key,
        )
        reply = yield AskLlm(step.name, request)
        if not isinstance(reply, ChatReply):
            raise TypeError(f"AskLlm expects a ChatReply, got {reply!r}")
        if not reply.ok or not reply.text.strip():
            return self._failed(step, "llm", reply.error or "empty reply", step.on_error)
        self._outcome(StepOutcome(step.name, "llm", True, f"{len(reply.text)} characters"))
        if step.into is not None:
            self._assign(step.name, step.into, reply.text)
        if step.speak:
            yield from self._say(step.name, reply.text, "speech")
        else:
            self._remember("assistant", reply.text)
        return step.next, "no next step"

    def _transfer(self, step: TransferStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        target = step.target.render(self.variables)
        prompt = step.prompt.render(self.variables) if step.prompt is not None else ""
        outcome = yield Transfer(step.name, target, prompt, step.fallback, step.timeout_ms / 1000)
        if not isinstance(outcome, TransferOutcome):
            raise TypeError(f"Transfer expects a TransferOutcome, got {outcome!r}")
        if not outcome.ok:
            detail = f"{target}: {outcome.error or 'failed'}"
            return self._failed(step, "transfer", detail, step.on_error)
        self._outcome(StepOutcome(step.name, "transfer", True, f"{target} by {outcome.method}"))
        yield Hangup(step.name, f"transferred to {target} ({outcome.method})")
        raise _Done

    def _record(self, step: RecordStep) -> Generator[Action, Reply, tuple[str | None, str]]:
        self._recordings += 1
        name = f"{step.name}-{self._recordings}.wav"
        result = yield Record(
            step.name,
            step.prompt.render(self.variables),
            name,
            max_ms=step.max_s * 1000,
            silence_ms=step.silence_s * 1000,
        )
        if not isinstance(result, Recording):
            raise TypeError(f"Record expects a Recording, got {result!r}")
        detail = f"{result.path} {result.duration_ms} ms, ended by {result.ended_by}"
        self._outcome(StepOutcome(step.name, "record", result.duration_ms > 0, detail))
        if step.into is not None:
            self._assign(step.name, step.into, result.path if result.duration_ms > 0 else "")
        return step.next, "no next step"

    # -- bookkeeping --------------------------------------------------------------------------

    def _failed(
        self, step: Step, kind: str, error: str, on_error: str | None
    ) -> tuple[str | None, str]:
        log.warning("step %s: %s failed: %s", step.name, kind, error)
        self._outcome(StepOutcome(step.name, kind, False, error))
        return on_error, f"{kind} failed"

    def _assign(self, step: str, name: str, value: str) -> None:
        self.variables[name] = value
        if self._on_variable is not None:
            self._on_variable(step, name, REDACTED if name in self._sensitive else value)

    def _outcome(self, outcome: StepOutcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _remember(self, role: str, content: str) -> None:
        self.history.append(ChatMessage(role, content))
        del self.history[:-HISTORY_LIMIT]

    def redacted_variables(self) -> dict[str, str]:
        """The call's variables fit for records, logs and text sent off the server (the LLM):
        sensitive values are redacted."""
        return {k: (REDACTED if k in self._sensitive else v) for k, v in self.variables.items()}


def _gave_up(failure: Failure, retries: Retries) -> str:
    return f"{failure.replace('_', ' ')} after {retries.count + 1} tries"


def _parts(heard: Heard) -> tuple[str | None, str | None]:
    if isinstance(heard, DtmfInput):
        return None, heard.digits
    if isinstance(heard, AsrResult):
        return heard.text, None
    return None, None


def _said(heard: Heard) -> str:
    if isinstance(heard, DtmfInput):
        return f"(pressed {heard.digits})"
    return heard.text if heard is not None else ""


def _render_json(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, Template):
        return value.render(variables)
    if isinstance(value, dict):
        return {k: _render_json(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_json(v, variables) for v in value]
    return value


def _render_url(template: Template, variables: Mapping[str, str]) -> str:
    """Values are URL-quoted ("12 34" -> "12%2034"), except a field the URL starts with: that
    one is the base ("{backend}/accounts/{account}")."""
    parts = template.parts
    base = ""
    if parts and isinstance(parts[0], Field):
        base, parts = Template(template.source, parts[:1]).render(variables), parts[1:]
    return base + Template(template.source, parts).render(variables, escape=_url_quote)


def _url_quote(value: str) -> str:
    return quote(value, safe="")


def _without_query(url: str) -> str:
    """A URL for records: no query string (it may carry tokens or caller data)."""
    return url.split("?", 1)[0]
