"""Scripted-call scenarios: a YAML file of calls, each caller actions and expectations.

```yaml
description: "Demo line: an account number read back"
number: "1000"                        # dialled by calls that name none (else --target's)
audio_dir: ../../../shared/data/fsdd  # audio paths are relative to it (itself to this file)
quiet_ms: 1000                        # optional defaults, also per call: see below
calls:
  - name: account by voice
    actions:
      - say: {audio: [9_jackson_32.wav, 0_jackson_5.wav], pause_ms: 400, text: "nine zero"}
      - dtmf: "1234#"                 # or {keys: "1234#", key_ms: 100, gap_ms: 150}
      - wait_for_bot                  # the bot spoke, then was quiet for quiet_ms
      - wait: 500                     # milliseconds
      - hangup                        # else the caller listens until the bot hangs up
    expect:
      variables: {account: "90", day: {matches: "\\d{4}-12-03"}, pin: null}
      steps: [ask_account]            # steps the records show (turns and events)
      outcome: contained              # contained, transferred, abandoned, failed, rejected
      said: ["one digit at a time"]   # in a turn's prompt, case and spacing ignored
      max_turn_latency_ms: 3000       # on the wire, after every input
```

`say` plays WAV files (any rate, mono 16-bit; resampled to 8 kHz) joined by `pause_ms` (one
value, or one per gap); `text` is the reference for the live WER. `say` and `dtmf` first wait
for the bot's turn to be over (`wait_for_bot: false` starts at once, a number sets the quiet
milliseconds). `quiet_ms` (default 1000): bot silence after speech that ends its turn;
`bot_timeout_ms` (default 30000): the longest such wait before the call fails; `timeout_s`
(default 180): the longest call.

Everything is checked, and every audio file read, when the file is loaded, so a broken
scenario is one clear error (`file:line:column: call 'x': action 2 (say): ...`, all of them at
once) before anything is dialled. Booleans are only `true`/`false` (`yes` stays text), as in
dialplans.
"""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.dialog.reader import suggest
from app.dialog.yamlsource import Mark, MarkedList, MarkedMap, YamlSourceError, load_marked
from app.eval.rtp import DTMF_EVENTS, KEY_MS
from app.media.audio import CALL_RATE, SAMPLE_WIDTH
from app.media.resample import resample

OUTCOMES = ("contained", "transferred", "abandoned", "failed", "rejected")
QUIET_MS = 1000
"""Bot silence after speech that makes its turn over (a pause between two prompts is shorter)."""
BOT_TIMEOUT_MS = 30000
"""The longest wait for the bot to speak and fall silent before a caller action."""
TIMEOUT_S = 180.0
"""The longest call: then the caller hangs up and the call fails."""
PAUSE_MS = 300
GAP_MS = 150
"""Between two keys of one `dtmf` action."""

_TOP_KEYS = (
    "description",
    "number",
    "audio_dir",
    "quiet_ms",
    "bot_timeout_ms",
    "timeout_s",
    "calls",
)
_CALL_KEYS = ("name", "number", "quiet_ms", "bot_timeout_ms", "timeout_s", "actions", "expect")
_ACTIONS = ("say", "dtmf", "wait", "wait_for_bot", "hangup")
_SAY_KEYS = ("audio", "pause_ms", "text", "wait_for_bot")
_DTMF_KEYS = ("keys", "key_ms", "gap_ms", "wait_for_bot")
_EXPECT_KEYS = ("variables", "steps", "outcome", "said", "max_turn_latency_ms")


class ScenarioError(ValueError):
    """A scenario that cannot be run; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# -- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """The caller speaks `pcm` (8 kHz 16-bit: the files joined by the pauses)."""

    audio: tuple[Path, ...]
    pcm: bytes = field(repr=False)
    text: str | None
    """The reference words: what a perfect recogniser would transcribe (for WER)."""
    wait_quiet_ms: int | None
    """Wait for the bot to speak and then be quiet this long first (None: start at once)."""

    @property
    def label(self) -> str:
        more = f" +{len(self.audio) - 1}" if len(self.audio) > 1 else ""
        return f"say {self.audio[0].name}{more}"


@dataclass(frozen=True)
class Dtmf:
    """The caller presses `keys` as RFC 4733 events, `gap_ms` apart."""

    keys: str
    key_ms: int
    gap_ms: int
    wait_quiet_ms: int | None

    @property
    def label(self) -> str:
        return f"dtmf {self.keys}"


@dataclass(frozen=True)
class Wait:
    ms: int

    @property
    def label(self) -> str:
        return f"wait {self.ms}"


@dataclass(frozen=True)
class WaitForBot:
    quiet_ms: int

    @property
    def label(self) -> str:
        return "wait_for_bot"


@dataclass(frozen=True)
class Hangup:
    @property
    def label(self) -> str:
        return "hangup"


Action = Say | Dtmf | Wait | WaitForBot | Hangup


@dataclass(frozen=True)
class Matches:
    """A variable expectation by regular expression (whole value)."""

    pattern: re.Pattern[str]

    def __str__(self) -> str:
        return f"matching {self.pattern.pattern!r}"


@dataclass(frozen=True)
class Expect:
    variables: dict[str, str | Matches | None] = field(default_factory=dict)
    """None: the variable must not be set."""
    steps: tuple[str, ...] = ()
    outcome: str | None = None
    said: tuple[str, ...] = ()
    max_turn_latency_ms: float | None = None


@dataclass(frozen=True)
class CallSpec:
    name: str
    number: str
    actions: tuple[Action, ...]
    expect: Expect
    quiet_ms: int
    bot_timeout_ms: int
    timeout_s: float
    scenario: Path


@dataclass(frozen=True)
class Scenario:
    path: Path
    description: str
    calls: tuple[CallSpec, ...]


# -- loading ----------------------------------------------------------------------------------


def load_scenario(
    path: Path, audio_dir: Path | None = None, default_number: str | None = None
) -> Scenario:
    """Read and check `path`; `audio_dir` overrides the file's own, `default_number` is dialled
    by calls that name no number (neither they nor the file). Raises `ScenarioError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([f"{path}: scenario file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{path}: cannot read: {exc}"]) from None
    try:
        document, problems = load_marked(text)
    except YamlSourceError as exc:
        raise ScenarioError([f"{path}:{exc.mark.line}:{exc.mark.column}: {exc.message}"]) from None
    loader = _Loader(path, audio_dir, default_number)
    for mark, message in problems:
        loader.error(mark, "", message)
    scenario = loader.scenario(document)
    if loader.errors:
        raise ScenarioError(loader.errors)
    return scenario


class _Loader:
    def __init__(self, path: Path, audio_dir: Path | None, default_number: str | None) -> None:
        self.path = path
        self.audio_override = audio_dir
        self.default_number = default_number
        self.audio_dir = path.parent
        self._problems: list[tuple[Mark, str]] = []
        self._audio: dict[Path, bytes] = {}

    @property
    def errors(self) -> list[str]:
        ordered = sorted(self._problems, key=lambda p: (p[0].line, p[0].column))
        return [f"{self.path}:{m.line}:{m.column}: {text}" for m, text in ordered]

    def error(self, mark: Mark, where: str, message: str) -> None:
        self._problems.append((mark, f"{where}{message}"))

    # ---------------------------------------------------------------- the file

    def scenario(self, document: Any) -> Scenario:
        top = Mark(1, 1)
        if not isinstance(document, MarkedMap):
            self.error(top, "", "a scenario is a mapping with a `calls:` list")
            return Scenario(self.path, "", ())
        self._unknown(document, _TOP_KEYS, "")
        description = self._text(document, "description", "", required=False) or ""
        number = self._number(document, "number", "")
        base = self.path.parent
        audio_dir = base
        if self.audio_override is not None:
            audio_dir = self.audio_override
        elif "audio_dir" in document:
            value = self._text(document, "audio_dir", "")
            if value:
                audio_dir = base / value
                if not audio_dir.is_dir():
                    self.error(
                        document.value_marks["audio_dir"], "", f"audio_dir: no folder {audio_dir}"
                    )
        if self.audio_override is not None and not audio_dir.is_dir():
            self.error(top, "", f"--audio-dir: no folder {audio_dir}")
        self.audio_dir = audio_dir
        defaults = {
            "quiet_ms": self._int(document, "quiet_ms", "", QUIET_MS, 100, 10000),
            "bot_timeout_ms": self._int(
                document, "bot_timeout_ms", "", BOT_TIMEOUT_MS, 1000, 600000
            ),
            "timeout_s": self._int(document, "timeout_s", "", int(TIMEOUT_S), 5, 3600),
        }
        calls_value = document.get("calls")
        calls: list[CallSpec] = []
        if not isinstance(calls_value, MarkedList) or not calls_value:
            mark = document.value_marks.get("calls", top)
            self.error(mark, "", "calls: expected a non-empty list of calls")
        else:
            names: dict[str, Mark] = {}
            for index, item in enumerate(calls_value, start=1):
                mark = calls_value.item_marks[index - 1]
                call = self._call(item, index, mark, number, defaults)
                if call is None:
                    continue
                if call.name in names:
                    self.error(mark, "", f"call {call.name!r}: a second call of this name")
                names[call.name] = mark
                calls.append(call)
        return Scenario(self.path, description, tuple(calls))

    def _call(
        self, item: Any, index: int, mark: Mark, number: str | None, defaults: dict[str, int]
    ) -> CallSpec | None:
        if not isinstance(item, MarkedMap):
            self.error(mark, "", f"call {index}: expected a mapping with `actions:`")
            return None
        name = str(item.get("name") or f"call {index}")
        where = f"call {name!r}: "
        self._unknown(item, _CALL_KEYS, where)
        own = self._number(item, "number", where)
        number = own or number or self.default_number
        if not number:
            self.error(
                mark, where, "no number to dial: give `number:` (here or at the top) or --target"
            )
        settings = {
            key: self._int(item, key, where, defaults[key], low, high)
            for key, low, high in (
                ("quiet_ms", 100, 10000),
                ("bot_timeout_ms", 1000, 600000),
                ("timeout_s", 5, 3600),
            )
        }
        actions_value = item.get("actions")
        actions: list[Action] = []
        if not isinstance(actions_value, MarkedList) or not actions_value:
            self.error(
                item.value_marks.get("actions", mark), where, "actions: expected a non-empty list"
            )
        else:
            hangup = None
            for position, value in enumerate(actions_value, start=1):
                action_mark = actions_value.item_marks[position - 1]
                if hangup is not None:
                    self.error(
                        action_mark,
                        where,
                        f"action {position}: comes after the hangup "
                        f"(action {hangup}) and would never be done",
                    )
                action = self._action(value, action_mark, where, position, settings)
                if action is not None:
                    actions.append(action)
                    if isinstance(action, Hangup):
                        hangup = position
        expect = self._expect(item.get("expect"), item.value_marks.get("expect", mark), where)
        return CallSpec(
            name,
            number or "",
            tuple(actions),
            expect,
            settings["quiet_ms"],
            settings["bot_timeout_ms"],
            float(settings["timeout_s"]),
            self.path,
        )

    # ---------------------------------------------------------------- actions

    def _action(
        self, value: Any, mark: Mark, call: str, number: int, settings: dict[str, int]
    ) -> Action | None:
        if isinstance(value, str):
            if value in ("hangup", "wait_for_bot"):
                return Hangup() if value == "hangup" else WaitForBot(settings["quiet_ms"])
            self.error(
                mark,
                call,
                f"action {number}: {value!r} is not an action on its own; actions are "
                f"{', '.join(_ACTIONS)}{suggest(value, _ACTIONS)}",
            )
            return None
        if not isinstance(value, MarkedMap) or len(value) != 1:
            self.error(
                mark,
                call,
                f"action {number}: expected one of {', '.join(_ACTIONS)} "
                "(a mapping with one key, or `hangup` / `wait_for_bot` alone)",
            )
            return None
        (kind,) = value.keys()
        where = f"{call}action {number} ({kind}): "
        body, body_mark = value[kind], value.value_marks[kind]
        if kind == "say":
            return self._say(body, body_mark, where, settings["quiet_ms"])
        if kind == "dtmf":
            return self._dtmf(body, body_mark, where, settings["quiet_ms"])
        if kind == "wait":
            if isinstance(body, bool) or not isinstance(body, int) or not 0 < body <= 600000:
                self.error(body_mark, where, f"expected milliseconds 1-600000, got {body!r}")
                return None
            return Wait(body)
        if kind == "wait_for_bot":
            quiet = self._quiet(body, body_mark, where, settings["quiet_ms"], allow_false=False)
            return WaitForBot(quiet or settings["quiet_ms"])
        if kind == "hangup":
            if body not in (True, None):
                self.error(body_mark, where, "write `hangup` alone (or `hangup: true`)")
            return Hangup()
        self.error(
            value.key_marks[kind],
            call,
            f"action {number}: unknown action {kind!r}{suggest(kind, _ACTIONS)}; "
            f"actions are {', '.join(_ACTIONS)}",
        )
        return None

    def _quiet(
        self, value: Any, mark: Mark, where: str, default: int, allow_false: bool = True
    ) -> int | None:
        """`wait_for_bot`: true (default quiet), false (no wait), or the quiet milliseconds."""
        if value is None or value is True:
            return default
        if value is False and allow_false:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 10000:
            return value
        allowed = "true, false or " if allow_false else ""
        self.error(
            mark, where, f"wait_for_bot: expected {allowed}milliseconds 100-10000, got {value!r}"
        )
        return default

    def _say(self, body: Any, mark: Mark, where: str, quiet_ms: int) -> Say | None:
        if isinstance(body, str | MarkedList):
            body_map: dict[str, Any] = {"audio": body}
            marks: dict[str, Mark] = {"audio": mark}
        elif isinstance(body, MarkedMap):
            self._unknown(body, _SAY_KEYS, where)
            body_map, marks = body, body.value_marks
        else:
            self.error(
                mark,
                where,
                "expected an audio file, a list of them, or a mapping "
                "with `audio:` (and `pause_ms`, `text`, `wait_for_bot`)",
            )
            return None
        audio = body_map.get("audio")
        files = [audio] if isinstance(audio, str) else audio
        audio_mark = marks.get("audio", mark)
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            self.error(audio_mark, where, "audio: expected a file name or a list of file names")
            return None
        pauses = self._pauses(
            body_map.get("pause_ms", PAUSE_MS), marks.get("pause_ms", mark), where, len(files)
        )
        text = body_map.get("text")
        if text is not None and (not isinstance(text, str | int) or isinstance(text, bool)):
            self.error(marks.get("text", mark), where, "text: expected the words said, as text")
            text = None
        wait = self._quiet(
            body_map.get("wait_for_bot"), marks.get("wait_for_bot", mark), where, quiet_ms
        )
        paths, parts = [], []
        for position, name in enumerate(files):
            path = Path(name) if Path(name).is_absolute() else self.audio_dir / name
            pcm = self._read_audio(path, audio_mark, where)
            if pcm is None:
                continue
            if position and pauses is not None:
                parts.append(bytes(CALL_RATE * SAMPLE_WIDTH * pauses[position - 1] // 1000))
            paths.append(path)
            parts.append(pcm)
        if len(paths) != len(files) or pauses is None:
            return None
        return Say(tuple(paths), b"".join(parts), None if text is None else str(text), wait)

    def _pauses(self, value: Any, mark: Mark, where: str, files: int) -> list[int] | None:
        """`pause_ms`: one pause for every gap, or one per gap."""
        gaps = max(0, files - 1)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10000:
            return [value] * gaps
        if (
            isinstance(value, list)
            and len(value) == gaps
            and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10000 for v in value
            )
        ):
            return list(value)
        self.error(
            mark,
            where,
            f"pause_ms: expected milliseconds 0-10000, or a list of {gaps} "
            f"(one per gap between the files), got {value!r}",
        )
        return None

    def _read_audio(self, path: Path, mark: Mark, where: str) -> bytes | None:
        """A WAV file as 8 kHz 16-bit mono PCM (resampled when recorded at another rate)."""
        if path in self._audio:
            return self._audio[path]
        if not path.is_file():
            self.error(mark, where, f"audio file not found: {path}")
            return None
        try:
            with wave.open(str(path), "rb") as wav:
                if wav.getnchannels() != 1 or wav.getsampwidth() != SAMPLE_WIDTH:
                    self.error(
                        mark,
                        where,
                        f"{path}: need mono 16-bit PCM WAV, got "
                        f"{wav.getnchannels()} channel(s) of {8 * wav.getsampwidth()} "
                        "bit",
                    )
                    return None
                pcm, rate = wav.readframes(wav.getnframes()), wav.getframerate()
        except (OSError, EOFError, wave.Error) as exc:
            self.error(mark, where, f"{path}: not a readable WAV file: {exc}")
            return None
        if not pcm:
            self.error(mark, where, f"{path}: no audio in it")
            return None
        if rate != CALL_RATE:
            pcm = resample(pcm, rate, CALL_RATE)
        self._audio[path] = pcm
        return pcm

    def _dtmf(self, body: Any, mark: Mark, where: str, quiet_ms: int) -> Dtmf | None:
        if isinstance(body, str | int) and not isinstance(body, bool):
            body_map: dict[str, Any] = {"keys": body}
            marks: dict[str, Mark] = {"keys": mark}
        elif isinstance(body, MarkedMap):
            self._unknown(body, _DTMF_KEYS, where)
            body_map, marks = body, body.value_marks
        else:
            self.error(
                mark,
                where,
                'expected the keys as text ("1234#") or a mapping with '
                "`keys:` (and `key_ms`, `gap_ms`, `wait_for_bot`)",
            )
            return None
        keys = body_map.get("keys")
        keys = str(keys) if isinstance(keys, str | int) and not isinstance(keys, bool) else ""
        bad = sorted({k for k in keys.upper() if k not in DTMF_EVENTS})
        if not keys or bad:
            shown = f" (not keys: {' '.join(bad)})" if bad else ""
            self.error(
                marks.get("keys", mark),
                where,
                f"keys: expected keys 0-9 * # A-D, got {body_map.get('keys')!r}{shown}",
            )
            return None
        key_ms = self._value_int(
            body_map.get("key_ms", KEY_MS), marks.get("key_ms", mark), where, "key_ms", 40, 2000
        )
        gap_ms = self._value_int(
            body_map.get("gap_ms", GAP_MS), marks.get("gap_ms", mark), where, "gap_ms", 0, 10000
        )
        wait = self._quiet(
            body_map.get("wait_for_bot"), marks.get("wait_for_bot", mark), where, quiet_ms
        )
        if key_ms is None or gap_ms is None:
            return None
        return Dtmf(keys.upper(), key_ms, gap_ms, wait)

    # ---------------------------------------------------------------- expectations

    def _expect(self, value: Any, mark: Mark, where: str) -> Expect:
        if value is None:
            return Expect()
        where = f"{where}expect: "
        if not isinstance(value, MarkedMap):
            self.error(mark, where, f"expected a mapping of {', '.join(_EXPECT_KEYS)}")
            return Expect()
        self._unknown(value, _EXPECT_KEYS, where)
        variables: dict[str, str | Matches | None] = {}
        found = value.get("variables")
        if found is not None:
            if not isinstance(found, MarkedMap):
                self.error(
                    value.value_marks["variables"],
                    where,
                    "variables: expected a mapping of name: value",
                )
            else:
                for name, expected in found.items():
                    parsed = self._variable(expected, found.value_marks[name], where, str(name))
                    if parsed is not _BAD:
                        variables[str(name)] = parsed  # type: ignore[assignment]
        steps = self._texts(value, "steps", where)
        said = self._texts(value, "said", where)
        outcome = value.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            self.error(
                value.value_marks["outcome"],
                where,
                f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}"
                f"{suggest(outcome, OUTCOMES)}",
            )
            outcome = None
        latency = value.get("max_turn_latency_ms")
        if latency is not None and (
            isinstance(latency, bool) or not isinstance(latency, int | float) or latency <= 0
        ):
            self.error(
                value.value_marks["max_turn_latency_ms"],
                where,
                f"max_turn_latency_ms: expected milliseconds > 0, got {latency!r}",
            )
            latency = None
        return Expect(
            variables,
            tuple(steps),
            outcome,
            tuple(said),
            None if latency is None else float(latency),
        )

    def _variable(self, value: Any, mark: Mark, where: str, name: str) -> object:
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        if isinstance(value, MarkedMap) and list(value) == ["matches"]:
            try:
                return Matches(re.compile(str(value["matches"])))
            except re.error as exc:
                self.error(mark, where, f"variables: {name}: bad regular expression: {exc}")
                return _BAD
        self.error(
            mark,
            where,
            f"variables: {name}: expected a value, null (not set) or {{matches: REGEX}}",
        )
        return _BAD

    def _texts(self, table: MarkedMap, key: str, where: str) -> list[str]:
        value = table.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.error(table.value_marks[key], where, f"{key}: expected a list of texts")
            return []
        return [v.strip() for v in value]

    # ---------------------------------------------------------------- small readers

    def _unknown(self, table: MarkedMap, known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                self.error(
                    table.key_marks[key],
                    where,
                    f"unknown key {key!r}{suggest(key, known)}; known: {', '.join(known)}",
                )

    def _text(self, table: MarkedMap, key: str, where: str, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.error(table.value_marks[key], where, f"{key}: expected text, got {value!r}")
            return None
        return value

    def _number(self, table: MarkedMap, key: str, where: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            self.error(table.value_marks[key], where, f"{key}: expected the number to dial")
            return None
        return str(value).strip()

    def _int(
        self, table: MarkedMap, key: str, where: str, default: int, low: int, high: int
    ) -> int:
        if key not in table:
            return default
        found = self._value_int(table[key], table.value_marks[key], where, key, low, high)
        return default if found is None else found

    def _value_int(
        self, value: Any, mark: Mark, where: str, key: str, low: int, high: int
    ) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(mark, where, f"{key}: expected a whole number {low}-{high}, got {value!r}")
            return None
        return value


_BAD = object()
"""What `_variable` returns after reporting an error: no expectation."""
