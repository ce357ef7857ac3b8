"""`switchboard dialplan simulate`: run a dialplan in the terminal with the call's own engine.

The `DialogRunner` that drives real calls drives this too; only the performer differs: prompts
are printed instead of spoken, and the caller's answers are typed. A typed line is speech (as
the recogniser would give it) unless it starts with `#`: `#1234` presses 1 2 3 4, `##` presses
the pound key. An empty line is silence (no input); `/hangup` or end of input hangs up.
Webhooks and LLM steps make their real HTTP requests; transfers and recordings are described.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TextIO

from app.asr.base import AsrResult
from app.dialog.actions import (
    Action,
    Ask,
    AskLlm,
    CallWebhook,
    DtmfInput,
    Hangup,
    Record,
    Recording,
    Reply,
    Say,
    StepOutcome,
    Transfer,
    TransferOutcome,
)
from app.dialog.dialplan import Dialplan
from app.dialog.runner import DialogRunner
from app.services.llm import ChatClient
from app.services.webhook import WebhookClient

HANGUP = "/hangup"


class Simulator:
    """Performs a dialogue's actions against typed input; everything it shows goes to `out`."""

    def __init__(
        self,
        plan: Dialplan,
        lines: Iterator[str],
        out: TextIO,
        *,
        echo: bool = True,
        caller: str = "sip:simulator@localhost",
        dialled: str = "simulator",
        transfer_ok: bool = True,
        today: dt.date | None = None,
        webhooks: WebhookClient | None = None,
        chat: ChatClient | None = None,
    ) -> None:
        self.plan = plan
        self._lines = lines
        self._echo = echo
        """Write typed lines into the transcript (not when a person types them in a terminal)."""
        self._out = out
        self._transfer_ok = transfer_ok
        self._webhooks = webhooks or WebhookClient()
        self._chat = chat or ChatClient()
        self.runner = DialogRunner(
            plan,
            {"caller": caller, "dialled": dialled, "call_id": "simulated"},
            today=today,
            on_variable=lambda step, name, value: self._show(f"  [set {name} = {value!r}]"),
            on_outcome=self._outcome,
            on_step=self._enter,
        )
        self.steps: list[str] = []
        self.hangup: Hangup | None = None

    def run(self) -> Hangup:
        dialogue = self.runner.run()
        action = next(dialogue)
        while True:
            if isinstance(action, Hangup):
                self._show(f"bot hangs up ({action.reason})")
                self.hangup = action
                dialogue.close()
                return action
            reply = self._perform(action)
            if reply is _CALLER_HUNG_UP:
                self._show("caller hangs up")
                self.hangup = Hangup(action.step, "caller hung up")
                dialogue.close()
                return self.hangup
            action = dialogue.send(reply)

    def _perform(self, action: Action) -> Reply | object:
        if isinstance(action, Say):
            self._show(f"bot: {action.text}")
            return None
        if isinstance(action, Ask):
            return self._ask(action)
        if isinstance(action, CallWebhook):
            request = action.request
            self._show(f"  [webhook {request.method} {request.url}]")
            return self._webhooks.call(request)
        if isinstance(action, AskLlm):
            self._show(f"  [llm {action.request.model} at {action.request.url}]")
            return self._chat.complete(action.request)
        if isinstance(action, Transfer):
            if action.prompt:
                self._show(f"bot: {action.prompt}")
            verdict = "succeeds" if self._transfer_ok else "fails (--transfer-fails)"
            self._show(f"  [transfer to {action.target} {verdict}]")
            if self._transfer_ok:
                return TransferOutcome(ok=True, method="simulated")
            return TransferOutcome(ok=False, status=603, error="REFER rejected: 603 Decline")
        if isinstance(action, Record):
            self._show(f"bot: {action.prompt}")
            line = self._read("caller's message (type it; empty: says nothing)")
            if line is None:
                return _CALLER_HUNG_UP
            if not line:
                return Recording("", 0, "no_input")
            return Recording(f"(simulated) {action.path}", 1000 * len(line.split()), "silence")
        raise TypeError(f"cannot simulate {type(action).__name__}")

    def _ask(self, ask: Ask) -> Reply | object:
        self._show(f"bot: {ask.prompt}")
        ways = [w for w, on in (("speech", ask.speech), ("#keys", ask.dtmf is not None)) if on]
        line = self._read(" or ".join(ways))
        if line is None:
            return _CALLER_HUNG_UP
        if not line:
            return None
        if line.startswith("#"):
            keys = line[1:].replace(" ", "")
            terminator = ask.dtmf.terminator if ask.dtmf else None
            if terminator and keys.endswith(terminator):
                return DtmfInput(keys[: -len(terminator)], terminated=True)
            return DtmfInput(keys)
        return AsrResult(line.lower(), 1.0, True, "typed")

    def _read(self, hint: str) -> str | None:
        self._out.write(f"caller ({hint})> ")
        self._out.flush()
        try:
            line = next(self._lines)
        except StopIteration:
            self._out.write("\n")
            return None
        line = line.rstrip("\n")
        if self._echo:
            self._out.write(line + "\n")
        return None if line.strip() == HANGUP else line.strip()

    def _enter(self, step: str) -> None:
        self.steps.append(step)
        self._show(f"-> step {step}")

    def _outcome(self, outcome: StepOutcome) -> None:
        state = "ok" if outcome.ok else "FAILED"
        self._show(f"  [{outcome.kind} {state}: {outcome.detail}]")

    def _show(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


_CALLER_HUNG_UP = object()
