"""Log setup: JSON lines, the call id on a call's lines (worker and speaker threads), caller data
hidden unless `log_sensitive`. A real `CallSession` runs a small dialplan on a virtual line."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.call.events import EventBus
from app.call.session import CallSession, SessionConfig
from app.dialog.dialplan import load_dialplan
from app.ops import logs
from app.ops.logs import bind_call_id, sensitive, setup_logging
from app.resilience import CircuitBreaker, EngineGuard, Limits
from app.tts.base import TtsEngine, TtsError
from app.tts.espeak import EspeakEngine
from app.tts.fallback import FallbackTtsEngine
from tests.virtual_call import VirtualLine

CALLER_SAID = "my pin is four two"
DIALPLAN = f"""
description: "logs test"
start: remember
steps:
  remember:
    set: {{said: "{CALLER_SAID}"}}
    next: check
  check:
    branch:
      - if: {{var: said, ge: 3}}
        goto: greet
    else: greet
  greet:
    say: "Hello."
    next: end
  end:
    hangup: true
"""

Capture = Callable[..., io.StringIO]


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """`capture(fmt=..., show_sensitive=...)`: the process log setup, writing to a buffer;
    the root logger and the sensitivity switch are restored afterwards."""
    root = logging.getLogger()
    level = root.level
    monkeypatch.setattr(logs, "_show_sensitive", False)
    handlers: list[logging.Handler] = []

    def start(fmt: str = "json", show_sensitive: bool = False) -> io.StringIO:
        stream = io.StringIO()
        handlers.append(setup_logging("INFO", fmt, show_sensitive, stream=stream))
        return stream

    yield start
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class BrokenTts(TtsEngine):
    """A TTS engine that always fails, so the fallback chain logs from the speaker thread."""

    name = "broken"
    sample_rate = 22050

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        raise TtsError("engine is down")
        yield b""


def run_call(tmp_path: Path, call_id: str) -> None:
    plan = tmp_path / "logs_test.yaml"
    plan.write_text(DIALPLAN)
    espeak = EspeakEngine()
    tts = FallbackTtsEngine(
        [
            (BrokenTts(), EngineGuard("broken", Limits(), CircuitBreaker("tts broken"))),
            (espeak, EngineGuard("espeak", Limits(), CircuitBreaker("tts espeak"))),
        ]
    )
    line = VirtualLine([], speed=4.0, max_call_s=20)
    session = CallSession(
        call_id=call_id,
        dialplan=load_dialplan(plan),
        asr=None,  # the plan never listens
        tts=tts,
        bus=EventBus([]),
        config=SessionConfig(),
        request_hangup=line.hangup,
    )
    line.run(session)
    assert session.error is None and line.bot_hung_up.is_set()


def test_json_lines_carry_level_logger_message_and_extras(capture: Capture) -> None:
    stream = capture("json")
    log = logging.getLogger("switchboard.test")
    log.info("multi\nline %s", "message", extra={"peer": "trunk-a", "attempt": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = json_lines(stream)
    assert first["level"] == "INFO" and first["logger"] == "switchboard.test"
    assert first["message"] == "multi\nline message"
    assert first["peer"] == "trunk-a" and first["attempt"] == 2
    assert "call_id" not in first  # logged outside any call
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_call_id_on_a_calls_worker_and_speaker_lines(capture: Capture, tmp_path: Path) -> None:
    stream = capture("json")
    logging.getLogger("switchboard.test").info("before the call")
    run_call(tmp_path, "call-abc@10.0.0.1")
    lines = json_lines(stream)
    condition = [line for line in lines if "is not a number" in line["message"]]
    assert condition and condition[0]["logger"] == "app.dialog.conditions"
    assert condition[0]["call_id"] == "call-abc@10.0.0.1"  # the call's worker thread
    dropped = [line for line in lines if "TTS engine broken dropped" in line["message"]]
    assert dropped, lines
    assert all(line["call_id"] == "call-abc@10.0.0.1" for line in dropped)  # speaker thread
    assert "call_id" not in lines[0]


def test_explicit_call_id_wins_and_text_format_shows_it(capture: Capture) -> None:
    stream = capture("text")
    log = logging.getLogger("switchboard.test")
    done = threading.Event()

    def worker() -> None:
        bind_call_id("c-42")
        log.info("worker line")
        log.info("about another", extra={"call_id": "c-7"})
        log.info("call c-42 says its own id")
        done.set()

    threading.Thread(target=worker).start()
    assert done.wait(5)
    log.info("main thread line")
    worker_line, other, own, main = stream.getvalue().splitlines()
    assert "INFO switchboard.test [c-42]: worker line" in worker_line
    assert "switchboard.test [c-7]: about another" in other
    assert "switchboard.test: call c-42 says its own id" in own  # no duplicate tag
    assert "switchboard.test: main thread line" in main  # other threads are not tagged


def test_caller_data_hidden_by_default(capture: Capture, tmp_path: Path) -> None:
    stream = capture("json", show_sensitive=False)
    run_call(tmp_path, "hidden-call")
    text = stream.getvalue()
    assert CALLER_SAID not in text
    assert f"[hidden: {len(CALLER_SAID)} chars]" in text
    assert sensitive("1234") == "[hidden: 4 chars]"


def test_caller_data_shown_with_log_sensitive(capture: Capture, tmp_path: Path) -> None:
    stream = capture("json", show_sensitive=True)
    run_call(tmp_path, "shown-call")
    assert CALLER_SAID in stream.getvalue()
    assert sensitive("1234") == "1234"
