"""`switchboard eval tts`: prompts of the dialplans, and voices heard through the phone line by
real Whisper weights (the TTS voices are the speech here: synthetic by design)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.dialog.template import parse_template
from app.eval.tts import SAMPLE_NUMBERS, dialplan_prompts, evaluate_voice
from app.tts.espeak import EspeakEngine
from tests.conftest import REPO_ROOT
from tests.model_files import models_root


def test_dialplan_prompts_fill_digit_fields_and_skip_other_variables() -> None:
    templates = [
        parse_template("Welcome."),
        parse_template("You said {account | digits}. Thank you."),
        parse_template("Hello {name}."),
        parse_template("Welcome."),
    ]
    prompts = dialplan_prompts(templates)
    assert prompts == ["Welcome.", f"You said {' '.join(SAMPLE_NUMBERS[0])}. Thank you."]


def test_espeak_through_the_line_is_scored_against_whisper() -> None:
    root = models_root("faster-whisper-tiny.en")
    from app.asr.whisper import WhisperEngine

    listener = WhisperEngine(
        root / "faster-whisper-tiny.en", cpu_threads=2, partial_interval_s=None
    )
    prompts = ["Your account number is 4 0 7 1 9.", "Goodbye."]
    report = evaluate_voice("espeak", EspeakEngine(), None, prompts, listener, "PCMA")
    summary = report.summary()
    assert summary["prompts"] == 2 and summary["digit_prompts"] == 1
    assert 0 < summary["first_audio_ms_p50"] < 2000
    assert summary["wer"] is not None and summary["wer"] < 0.5, report.prompts


def test_command_reads_piper_and_espeak_and_writes_json(tmp_path: Path) -> None:
    root = models_root("faster-whisper-tiny.en", "piper/en_US-joe-medium.onnx")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# read-backs\nYou said 8 3 1 6. Thank you.\nPlease hold.\n")
    out = tmp_path / "tts.json"
    env = {**os.environ, "SWITCHBOARD_MODELS__DIR": str(root),
           "SWITCHBOARD_ASR__WHISPER__CPU_THREADS": "2"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "app", "eval", "tts", "--prompts", str(prompts), "--json", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["engine"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"piper", "espeak"}  # auto: Piper first, eSpeak behind it
    assert results["piper"]["voice"] == "en_US-joe-medium"
    assert results["piper"]["digits_exact"] == 1.0, results["piper"]["detail"]
    assert "Whisper faster-whisper-tiny.en" in done.stdout


def test_command_without_whisper_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHBOARD_MODELS__DIR": str(tmp_path / "none")}
    done = subprocess.run(
        [sys.executable, "-m", "app", "eval", "tts"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "models pull faster-whisper-tiny.en" in done.stderr
