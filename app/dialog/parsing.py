"""One parser per step kind: marked YAML in, a step dataclass out, errors into the `Reader`.

`STEP_KINDS` is the table of kinds: the keys each allows beside its kind key, and its parser.
The JSON Schema (`dialplan.schema.json`) lists the same keys; a test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.asr.grammars import BUILTIN_GRAMMARS, DIGIT_WORDS
from app.dialog.actions import BARGE_IN_MODES, DTMF_KEYS
from app.dialog.reader import VARIABLE_NAME, Reader, kind_name, suggest
from app.dialog.slots import SLOT_TYPES
from app.dialog.steps import (
    CALL_VARIABLES,
    CONDITION_OPERATORS,
    AskStep,
    BranchRule,
    BranchStep,
    Collect,
    Condition,
    GotoStep,
    HangupStep,
    LlmStep,
    MenuOption,
    MenuStep,
    RecordStep,
    Retries,
    SayStep,
    SetStep,
    Step,
    TransferStep,
    WebhookStep,
)
from app.dialog.template import Template
from app.dialog.yamlsource import Mark, MarkedList, MarkedMap

MAX_DIGITS = 64
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_KEY_WORDS = {digit: word for word, digit in DIGIT_WORDS.items() if word not in ("oh", "o")}
_URI = re.compile(r"^(sips?|tel):\S+$")


class StepParser:
    """Turns one step's mapping into a `Step`; `base` is the dialplan's folder (grammar files)."""

    def __init__(self, reader: Reader, base: Path) -> None:
        self.r = reader
        self.base = base

    def parse(self, name: Any, body: Any, key_mark: Mark, mark: Mark) -> Step | None:
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            self.r.error(key_mark, f"a step name must be a plain word, got {name!r}")
            return None
        if not isinstance(body, MarkedMap):
            self.r.error(mark, f"step {name!r}: expected a mapping with one of {_kinds()}")
            return None
        kinds = [key for key in body if key in STEP_KINDS]
        if not kinds:
            unknown = [k for k in body if k != "next"]
            hint = suggest(unknown[0], STEP_KINDS) if unknown else ""
            self.r.error(body.mark, f"step {name!r}: needs one of {_kinds()}{hint}")
            return None
        if len(kinds) > 1:
            self.r.error(
                body.key_marks[kinds[1]],
                f"step {name!r}: has both {kinds[0]!r} and {kinds[1]!r}; a step does one thing",
            )
            return None
        kind = kinds[0]
        allowed, parse = STEP_KINDS[kind]
        self.r.unknown_keys(body, (kind, *allowed), f"step {name!r}: ", f"for a {kind!r} step")
        return parse(self, name, body, f"step {name!r}: ")

    # -- speaking and listening ---------------------------------------------------------------

    def say(self, name: str, body: MarkedMap, where: str) -> SayStep | None:
        text = self.r.template(body, "say", where)
        barge_in = self.r.one_of(body, "barge_in", where, BARGE_IN_MODES)
        next_ = self.r.text(body, "next", where)
        if text is None:
            return None
        return SayStep(
            name=name,
            line=body.mark.line,
            next=next_,
            text=text,
            barge_in=barge_in or "dtmf",  # type: ignore[arg-type]  # checked by one_of
        )

    def ask(self, name: str, body: MarkedMap, where: str) -> AskStep | None:
        prompt = self.r.template(body, "ask", where)
        slot_type, grammar = self._slot_type(body, where)
        phrases = self.r.list_of_text(body, "phrases", where)
        choices, keys = self._choices(body, where)
        if phrases and slot_type != "text":
            self.r.error(body.key_marks["phrases"], f"{where}phrases: only for 'type: text'")
        if slot_type == "choice" and not choices:
            self.r.error(body.mark, f"{where}'type: choice' needs 'choices'")
        if choices and slot_type != "choice":
            self.r.error(body.key_marks["choices"], f"{where}choices: needs 'type: choice'")
        min_len = self.r.integer(body, "min_digits", where, 1, MAX_DIGITS)
        max_len = self.r.integer(body, "max_digits", where, 1, MAX_DIGITS)
        if min_len is not None and max_len is not None and min_len > max_len:
            self.r.error(
                body.value_marks["min_digits"],
                f"{where}min_digits ({min_len}) is more than max_digits ({max_len})",
            )
        for key in ("min_digits", "max_digits"):
            if key in body and slot_type != "digits":
                self.r.error(body.key_marks[key], f"{where}{key} needs 'type: digits'")
        minimum = self.r.integer(body, "min", where, 0, 10**9)
        maximum = self.r.integer(body, "max", where, 0, 10**9)
        for key in ("min", "max"):
            if key in body and slot_type != "number":
                self.r.error(body.key_marks[key], f"{where}{key} needs 'type: number'")
        if minimum is not None and maximum is not None and minimum > maximum:
            self.r.error(body.value_marks["min"], f"{where}min ({minimum}) is more than max")
        into = self.r.variable(body, "into", where, CALL_VARIABLES)
        dtmf_default = slot_type in ("digits", "yes_no", "number", "date", "time") or bool(keys)
        collect = self._collect(body, where, dtmf_default=dtmf_default, max_digits=max_len)
        if collect.dtmf and not dtmf_default and "input" in body:
            self.r.error(
                body.value_marks["input"],
                f"{where}input: a {slot_type!r} answer cannot be typed on a keypad"
                + (" (give the choices 'dtmf' keys)" if slot_type == "choice" else ""),
            )
        retries = self._retries(body, where)
        next_ = self.r.text(body, "next", where)
        if prompt is None or slot_type is None:
            return None
        jsgf = grammar[5:] if grammar is not None and grammar.startswith("jsgf:") else None
        if jsgf is not None:
            grammar = None
        elif grammar is None and slot_type in BUILTIN_GRAMMARS:
            grammar = slot_type
        sensitive = self.r.boolean(body, "sensitive", where)
        hotwords = self.r.list_of_text(body, "hotwords", where)
        initial_prompt = self.r.text(body, "initial_prompt", where)
        return AskStep(
            name=name,
            line=body.mark.line,
            next=next_,
            prompt=prompt,
            slot_type=slot_type,
            grammar=grammar,
            phrases=phrases,
            choices=choices,
            choice_keys=keys,
            min_length=min_len,
            max_length=max_len,
            minimum=minimum,
            maximum=maximum,
            into=into,
            sensitive=bool(sensitive),
            jsgf=jsgf,
            collect=collect,
            retries=retries,
            hotwords=hotwords,
            initial_prompt=initial_prompt,
        )

    def _slot_type(self, body: MarkedMap, where: str) -> tuple[str | None, str | None]:
        """(slot type, ASR grammar): `grammar` is a built-in name or a .jsgf file beside the
        dialplan; a built-in grammar alone also sets the slot type ("grammar: digits")."""
        slot_type = self.r.one_of(body, "type", where, SLOT_TYPES)
        grammar = self.r.text(body, "grammar", where)
        if grammar is not None:
            if grammar.endswith(".jsgf"):
                path = (self.base / grammar).resolve()
                if not path.is_file():
                    self.r.error(body.value_marks["grammar"], f"{where}grammar: no file {path}")
                    grammar = None
                else:
                    grammar = "jsgf:" + path.read_text(encoding="utf-8")
            elif grammar not in BUILTIN_GRAMMARS:
                self.r.error(
                    body.value_marks["grammar"],
                    f"{where}unknown grammar {grammar!r}{suggest(grammar, BUILTIN_GRAMMARS)} "
                    f"(built-in: {', '.join(BUILTIN_GRAMMARS)}; or a .jsgf file, or `phrases`)",
                )
                grammar = None
            elif "type" not in body and grammar in SLOT_TYPES:
                slot_type = grammar
        if "type" in body and slot_type is None:
            return None, grammar
        return slot_type or "text", grammar

    def _choices(
        self, body: MarkedMap, where: str
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """`choices: {value: [synonyms]}` or `{value: {say: [...], dtmf: "1"}}`."""
        table = self.r.mapping(body, "choices", where)
        if table is None:
            return {}, {}
        choices: dict[str, tuple[str, ...]] = {}
        keys: dict[str, str] = {}
        for value, spec in table.items():
            value_text = str(value)
            here = f"{where}choices: {value_text}: "
            if isinstance(spec, MarkedMap):
                self.r.unknown_keys(spec, ("say", "dtmf"), here, "for a choice")
                synonyms = self.r.list_of_text(spec, "say", here)
                key = self._key(spec, "dtmf", here)
                if key is not None:
                    if key in keys:
                        self.r.error(spec.value_marks["dtmf"], f"{here}key {key!r} is taken")
                    keys[key] = value_text
            else:
                holder = MarkedMap(table.value_marks[value])
                holder["say"] = spec
                holder.value_marks["say"] = table.value_marks[value]
                synonyms = self.r.list_of_text(holder, "say", here)
            choices[value_text] = synonyms
        return choices, keys

    def _key(self, body: MarkedMap, key: str, where: str) -> str | None:
        value = self.r.text(body, key, where, scalar=True)
        if value is not None and (len(value) != 1 or value not in DTMF_KEYS):
            self.r.error(body.value_marks[key], f"{where}{key}: one key of {DTMF_KEYS}")
            return None
        return value

    def _collect(
        self, body: MarkedMap, where: str, *, dtmf_default: bool, max_digits: int | None
    ) -> Collect:
        mode = self.r.one_of(body, "input", where, ("speech", "dtmf", "both"))
        speech = mode != "dtmf"
        dtmf = mode in ("dtmf", "both") if mode is not None else dtmf_default
        terminator: str | None = "#"
        if "dtmf_terminator" in body:
            raw = body["dtmf_terminator"]
            terminator = (
                None if raw in ("none", False) else self._key(body, "dtmf_terminator", where)
            )
        dtmf_max = self.r.integer(body, "dtmf_max_digits", where, 1, MAX_DIGITS) or max_digits
        return Collect(
            speech=speech,
            dtmf=dtmf,
            dtmf_max_digits=dtmf_max,
            dtmf_terminator=terminator,
            inter_digit_ms=self.r.integer(body, "inter_digit_ms", where, 500, 30_000) or 3000,
            no_input_ms=self.r.integer(body, "no_input_ms", where, 500, 120_000),
            end_silence_ms=self.r.integer(body, "end_silence_ms", where, 200, 10_000),
            barge_in=self.r.one_of(body, "barge_in", where, BARGE_IN_MODES) or "speech",  # type: ignore[arg-type]
        )

    def _retries(self, body: MarkedMap, where: str) -> Retries:
        count = self.r.integer(body, "retries", where, 0, 10)
        reprompt = self.r.templates(body, "reprompt", where)
        no_input = self.r.templates(body, "no_input", where) or reprompt
        no_match = self.r.templates(body, "no_match", where) or reprompt
        return Retries(
            count=2 if count is None else count,
            no_input=no_input,
            no_match=no_match,
            on_no_input=self.r.text(body, "on_no_input", where),
            on_no_match=self.r.text(body, "on_no_match", where),
            on_fail=self.r.text(body, "on_fail", where),
        )

    def menu(self, name: str, body: MarkedMap, where: str) -> MenuStep | None:
        prompt = self.r.template(body, "menu", where)
        table = self.r.mapping(body, "options", where)
        if "options" not in body:
            self.r.error(body.mark, f"{where}missing 'options': value -> {{dtmf, say, goto}}")
        options: list[MenuOption] = []
        keys: dict[str, str] = {}
        spoken: dict[str, str] = {}
        for value, spec in (table or {}).items():
            here = f"{where}options: {value}: "
            mark = table.value_marks[value] if table is not None else body.mark
            if not isinstance(spec, MarkedMap):
                self.r.error(mark, f"{here}expected a mapping with 'goto' and 'dtmf' or 'say'")
                continue
            self.r.unknown_keys(spec, ("dtmf", "say", "goto"), here, "for a menu option")
            key = self._key(spec, "dtmf", here)
            synonyms = list(self.r.list_of_text(spec, "say", here))
            goto = self.r.required_text(spec, "goto", here, "the step this option leads to")
            if key is not None:
                if key in keys:
                    self.r.error(
                        spec.value_marks["dtmf"], f"{here}key {key!r} is taken by {keys[key]!r}"
                    )
                keys[key] = str(value)
                if key in _KEY_WORDS:
                    synonyms.append(_KEY_WORDS[key])  # "press or say one"
            synonyms.append(str(value).replace("_", " "))
            for phrase in dict.fromkeys(s.casefold() for s in synonyms):
                if phrase in spoken and spoken[phrase] != str(value):
                    self.r.error(
                        mark, f"{here}saying {phrase!r} already chooses {spoken[phrase]!r}"
                    )
                spoken[phrase] = str(value)
            if goto is not None:
                options.append(
                    MenuOption(
                        value=str(value),
                        dtmf=key,
                        synonyms=tuple(dict.fromkeys(synonyms)),
                        goto=goto,
                        line=mark.line,
                    )
                )
        into = self.r.variable(body, "into", where, CALL_VARIABLES)
        collect = self._collect(body, where, dtmf_default=bool(keys), max_digits=1)
        retries = self._retries(body, where)
        if prompt is None or not options:
            return None
        return MenuStep(
            name=name,
            line=body.mark.line,
            prompt=prompt,
            options=tuple(options),
            into=into,
            collect=collect,
            retries=retries,
        )

    # -- logic --------------------------------------------------------------------------------

    def branch(self, name: str, body: MarkedMap, where: str) -> BranchStep | None:
        rules_value = body["branch"]
        otherwise = self.r.required_text(body, "else", where, "the step when no rule matches")
        if not isinstance(rules_value, MarkedList) or not rules_value:
            self.r.error(body.value_marks["branch"], f"{where}branch: expected a list of rules")
            return None
        rules = []
        for index, (rule, mark) in enumerate(zip(rules_value, rules_value.item_marks, strict=True)):
            here = f"{where}branch: rule {index + 1}: "
            if not isinstance(rule, MarkedMap):
                self.r.error(mark, f"{here}expected a mapping with 'if' and 'goto'")
                continue
            self.r.unknown_keys(rule, ("if", "goto"), here, "in a rule")
            goto = self.r.required_text(rule, "goto", here, "the step when the rule holds")
            if "if" not in rule:
                self.r.error(rule.mark, f"{here}missing 'if': a condition or a list of them")
                continue
            raw = rule["if"]
            items = raw if isinstance(raw, MarkedList) else [raw]
            marks = raw.item_marks if isinstance(raw, MarkedList) else [rule.value_marks["if"]]
            conditions = [self._condition(c, m, here) for c, m in zip(items, marks, strict=True)]
            if goto is not None and conditions and all(c is not None for c in conditions):
                rules.append(
                    BranchRule(
                        conditions=tuple(c for c in conditions if c), goto=goto, line=mark.line
                    )
                )
        if otherwise is None or len(rules) != len(rules_value):
            return None
        return BranchStep(name=name, line=body.mark.line, rules=tuple(rules), otherwise=otherwise)

    def _condition(self, spec: Any, mark: Mark, where: str) -> Condition | None:
        if not isinstance(spec, MarkedMap):
            self.r.error(mark, f"{where}a condition is a mapping like {{var: x, equals: y}}")
            return None
        operators = [key for key in spec if key != "var"]
        self.r.unknown_keys(spec, ("var", "set", *CONDITION_OPERATORS), where, "in a condition")
        variable = self.r.required_text(spec, "var", where, "the variable to test")
        known = [op for op in operators if op in (*CONDITION_OPERATORS, "set")]
        if len(known) != 1:
            self.r.error(
                spec.mark,
                f"{where}a condition needs exactly one test of: set, "
                + ", ".join(CONDITION_OPERATORS),
            )
            return None
        operator = known[0]
        operand = spec[operator]
        op_mark = spec.value_marks[operator]
        if operator == "set":
            if not isinstance(operand, bool):
                self.r.error(op_mark, f"{where}set: write true or false")
                return None
        elif operator in ("in", "not_in"):
            if not isinstance(operand, list) or not operand or not all(_scalar(v) for v in operand):
                self.r.error(op_mark, f"{where}{operator}: expected a list of values")
                return None
            operand = tuple(_as_text(v) for v in operand)
        elif operator in ("lt", "le", "gt", "ge"):
            if not isinstance(operand, int | float) or isinstance(operand, bool):
                self.r.error(
                    op_mark, f"{where}{operator}: expected a number, got {kind_name(operand)}"
                )
                return None
        elif operator == "matches":
            if not isinstance(operand, str):
                self.r.error(op_mark, f"{where}matches: expected a regular expression")
                return None
            try:
                operand = re.compile(operand)
            except re.error as exc:
                self.r.error(op_mark, f"{where}matches: bad regular expression: {exc}")
                return None
        elif not _scalar(operand):
            self.r.error(op_mark, f"{where}{operator}: expected a value, got {kind_name(operand)}")
            return None
        else:
            operand = _as_text(operand)
        if variable is None:
            return None
        return Condition(variable=variable, operator=operator, operand=operand, line=mark.line)

    def set(self, name: str, body: MarkedMap, where: str) -> SetStep | None:
        table = self.r.mapping(body, "set", where)
        next_ = self.r.text(body, "next", where)
        if table is None:
            return None
        values = []
        for variable, value in table.items():
            mark = table.value_marks[variable]
            if not isinstance(variable, str) or not VARIABLE_NAME.fullmatch(variable):
                self.r.error(
                    table.key_marks[variable], f"{where}set: bad variable name {variable!r}"
                )
                continue
            if variable in CALL_VARIABLES:
                self.r.error(
                    table.key_marks[variable], f"{where}set: {variable!r} is set by the call"
                )
                continue
            if not _scalar(value):
                self.r.error(
                    mark, f"{where}set: {variable}: expected a value, got {kind_name(value)}"
                )
                continue
            template = self.r.template_of(_as_text(value), mark, f"{where}set: {variable}: ")
            if template is not None:
                values.append((variable, template))
        return SetStep(name=name, line=body.mark.line, next=next_, values=tuple(values))

    def goto(self, name: str, body: MarkedMap, where: str) -> GotoStep | None:
        target = self.r.text(body, "goto", where)
        return None if target is None else GotoStep(name=name, line=body.mark.line, next=target)

    def hangup(self, name: str, body: MarkedMap, where: str) -> HangupStep | None:
        if body["hangup"] is not True:
            self.r.error(body.value_marks["hangup"], f"{where}write 'hangup: true'")
            return None
        return HangupStep(name=name, line=body.mark.line)

    # -- the outside world --------------------------------------------------------------------

    def webhook(self, name: str, body: MarkedMap, where: str) -> WebhookStep | None:
        url = self.r.template(body, "webhook", where)
        if url is not None and not url.source.startswith(("http://", "https://", "{")):
            self.r.error(body.value_marks["webhook"], f"{where}webhook: expected an http(s) URL")
        method = (self.r.text(body, "method", where) or "POST").upper()
        if method not in HTTP_METHODS:
            self.r.error(
                body.value_marks["method"], f"{where}method: one of {', '.join(HTTP_METHODS)}"
            )
        headers = []
        for header, value in (self.r.mapping(body, "headers", where) or {}).items():
            mark = body["headers"].value_marks[header]
            if not isinstance(value, str):
                self.r.error(mark, f"{where}headers: {header}: expected text")
                continue
            template = self.r.template_of(value, mark, f"{where}headers: {header}: ")
            if template is not None:
                headers.append((str(header), template))
        request_body = (
            self._json_body(body["body"], body.value_marks["body"], where)
            if "body" in body
            else None
        )
        result = []
        for variable, path in (self.r.mapping(body, "result", where) or {}).items():
            mark = body["result"].key_marks[variable]
            if not isinstance(variable, str) or not VARIABLE_NAME.fullmatch(variable):
                self.r.error(mark, f"{where}result: bad variable name {variable!r}")
            elif variable in CALL_VARIABLES:
                self.r.error(mark, f"{where}result: {variable!r} is set by the call")
            elif not isinstance(path, str):
                self.r.error(mark, f"{where}result: {variable}: expected a field path like a.b.0")
            else:
                result.append((variable, path))
        timeout = self.r.integer(body, "timeout_ms", where, 100, 60_000)
        retries = self.r.integer(body, "retries", where, 0, 5)
        backoff = self.r.integer(body, "backoff_ms", where, 0, 10_000)
        on_error = self.r.text(body, "on_error", where)
        next_ = self.r.text(body, "next", where)
        if url is None:
            return None
        return WebhookStep(
            name=name,
            line=body.mark.line,
            next=next_,
            url=url,
            method=method,
            headers=tuple(headers),
            body=request_body,
            timeout_ms=timeout or 5000,
            retries=1 if retries is None else retries,
            backoff_ms=500 if backoff is None else backoff,
            result=tuple(result),
            on_error=on_error,
        )

    def _json_body(self, value: Any, mark: Mark, where: str) -> Any:
        """JSON as written; every text in it is a template."""
        if isinstance(value, str):
            return self.r.template_of(value, mark, f"{where}body: ")
        if isinstance(value, MarkedMap):
            return {
                str(k): self._json_body(v, value.value_marks[k], where) for k, v in value.items()
            }
        if isinstance(value, MarkedList):
            return [
                self._json_body(v, m, where) for v, m in zip(value, value.item_marks, strict=True)
            ]
        return value

    def llm(self, name: str, body: MarkedMap, where: str) -> LlmStep | None:
        message = self.r.template(body, "llm", where)
        if "url" not in body:
            self.r.error(body.mark, f"{where}missing 'url': the API base, e.g. http://llm:8000/v1")
        url = self.r.template(body, "url", where)
        if url is not None and not url.source.startswith(("http://", "https://", "{")):
            self.r.error(body.value_marks["url"], f"{where}url: expected an http(s) URL")
        model = self.r.required_text(body, "model", where, "the model name the endpoint serves")
        system = self.r.template(body, "system", where)
        api_key_env = self.r.text(body, "api_key_env", where)
        timeout = self.r.integer(body, "timeout_ms", where, 500, 60_000)
        max_tokens = self.r.integer(body, "max_tokens", where, 1, 1000)
        speak = self.r.boolean(body, "speak", where)
        into = self.r.variable(body, "into", where, CALL_VARIABLES)
        on_error = self.r.text(body, "on_error", where)
        next_ = self.r.text(body, "next", where)
        if message is None or url is None or model is None:
            return None
        return LlmStep(
            name=name,
            line=body.mark.line,
            next=next_,
            message=message,
            url=url,
            model=model,
            system=system,
            api_key_env=api_key_env,
            timeout_ms=timeout or 8000,
            max_tokens=max_tokens or 120,
            speak=speak is not False,
            into=into,
            on_error=on_error,
        )

    def transfer(self, name: str, body: MarkedMap, where: str) -> TransferStep | None:
        target = self.r.template(body, "transfer", where)
        if target is not None and not target.variables and not _URI.match(target.source):
            self.r.error(
                body.value_marks["transfer"],
                f"{where}transfer: expected a SIP URI like sip:agent@pbx.example.com",
            )
        prompt = self.r.template(body, "prompt", where)
        fallback = self.r.one_of(body, "fallback", where, ("bridge", "none"))
        timeout = self.r.integer(body, "timeout_ms", where, 1000, 120_000)
        on_error = self.r.text(body, "on_error", where)
        if target is None:
            return None
        return TransferStep(
            name=name,
            line=body.mark.line,
            target=target,
            prompt=prompt,
            fallback=fallback or "bridge",  # type: ignore[arg-type]
            timeout_ms=timeout or 30_000,
            on_error=on_error,
        )

    def record(self, name: str, body: MarkedMap, where: str) -> RecordStep | None:
        prompt = self.r.template(body, "record", where)
        max_s = self.r.integer(body, "max_s", where, 1, 3600)
        silence_s = self.r.integer(body, "silence_s", where, 1, 60)
        into = self.r.variable(body, "into", where, CALL_VARIABLES)
        next_ = self.r.text(body, "next", where)
        if prompt is None:
            return None
        return RecordStep(
            name=name,
            line=body.mark.line,
            next=next_,
            prompt=prompt,
            max_s=max_s or 60,
            silence_s=silence_s or 3,
            into=into,
        )


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kinds() -> str:
    return ", ".join(repr(kind) for kind in STEP_KINDS)


_RETRY_KEYS = (
    "retries",
    "reprompt",
    "no_input",
    "no_match",
    "on_no_input",
    "on_no_match",
    "on_fail",
)
_COLLECT_KEYS = ("input", "dtmf_terminator", "dtmf_max_digits", "inter_digit_ms", "no_input_ms",
                 "end_silence_ms", "barge_in")  # fmt: skip
KindParser = Callable[[StepParser, str, MarkedMap, str], Step | None]
STEP_KINDS: dict[str, tuple[tuple[str, ...], KindParser]] = {
    "say": (("barge_in", "next"), StepParser.say),
    "ask": (
        (
            "type",
            "grammar",
            "phrases",
            "choices",
            "min_digits",
            "max_digits",
            "min",
            "max",
            "into",
            "sensitive",
            "hotwords",
            "initial_prompt",
            *_COLLECT_KEYS,
            *_RETRY_KEYS,
            "next",
        ),
        StepParser.ask,
    ),
    "menu": (("options", "into", *_COLLECT_KEYS, *_RETRY_KEYS), StepParser.menu),
    "branch": (("else",), StepParser.branch),
    "set": (("next",), StepParser.set),
    "webhook": (
        (
            "method",
            "headers",
            "body",
            "timeout_ms",
            "retries",
            "backoff_ms",
            "result",
            "on_error",
            "next",
        ),
        StepParser.webhook,
    ),
    "llm": (
        (
            "url",
            "model",
            "system",
            "api_key_env",
            "timeout_ms",
            "max_tokens",
            "speak",
            "into",
            "on_error",
            "next",
        ),
        StepParser.llm,
    ),
    "transfer": (("prompt", "fallback", "timeout_ms", "on_error"), StepParser.transfer),
    "record": (("max_s", "silence_s", "into", "next"), StepParser.record),
    "goto": ((), StepParser.goto),
    "hangup": ((), StepParser.hangup),
}
"""Step kind -> (keys allowed beside the kind key, parser)."""

__all__ = ["MAX_DIGITS", "STEP_KINDS", "StepParser", "Template"]
