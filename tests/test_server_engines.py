"""The engines the server builds from `[asr]`, `[tts]` and `[models]`: chains, start-up errors.

An engine whose model is missing stops the server at start-up with the command that fixes it;
a vendor engine that cannot be reached hands its turns to the local engine behind it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.asr.base import RecognitionOptions
from app.asr.fallback import FallbackAsrEngine
from app.config import load_config
from app.dialog.dialplan import load_dialplan
from app.media.audio import CALL_RATE, iter_frames
from app.models.choose import choose_engines
from app.server import StartupError, check_voices, create_asr, create_tts
from app.tts.fallback import FallbackTtsEngine
from tests.conftest import REPO_ROOT
from tests.http_backends import JsonBackend, Reply, unused_url
from tests.model_files import models_root
from tests.sip.rtp_pcap import build_digit_utterance, silence


def config_with(tmp_path: Path, **environ: str):
    env = {f"SWITCHBOARD_{key.upper()}": value for key, value in environ.items()}
    env["SWITCHBOARD_MODELS__DIR"] = str(tmp_path / "models")
    return load_config(None, env)


def test_default_chains_are_the_engines_that_work_out_of_the_box(tmp_path):
    config = config_with(tmp_path)
    asr, tts = create_asr(config), create_tts(config)
    assert isinstance(asr, FallbackAsrEngine) and asr.name == "pocketsphinx"
    assert [guard.name for _engine, guard in asr.chain] == ["pocketsphinx"]
    assert isinstance(tts, FallbackTtsEngine) and tts.name == "espeak"
    assert tts.sample_rate == tts.chain[0][0].sample_rate


@pytest.mark.parametrize(
    ("service", "environ", "command"),
    [
        ("asr", {"asr__engine": "whisper"}, "switchboard models pull faster-whisper-base.en"),
        ("asr", {"asr__fallbacks": "vosk"}, "switchboard models pull vosk-model-small-en-us-0.15"),
        ("tts", {"tts__engine": "piper"}, "switchboard models pull en_US-lessac-medium"),
    ],
)
def test_a_missing_model_stops_start_up_naming_the_command(tmp_path, service, environ, command):
    config = config_with(tmp_path, **environ)
    create = create_asr if service == "asr" else create_tts
    with pytest.raises(StartupError) as info:
        create(config)
    assert command in str(info.value)
    assert str(tmp_path / "models") in str(info.value)


def test_the_api_key_comes_from_the_environment_when_not_configured(tmp_path):
    with JsonBackend() as backend:
        backend.route("POST", "/v1/audio/transcriptions", Reply.json({"text": "two"}))
        config = config_with(
            tmp_path,
            asr__engine="openai",
            asr__openai__url=f"{backend.url}/v1",
            asr__openai__api_key_env="VENDOR_KEY",
        )
        asr = create_asr(config, environ={"VENDOR_KEY": "sk-from-env-42"})
        stream = asr.open_stream()
        stream.feed(bytes(3200))
        result = stream.finish()
        asr.close()
    assert result.engine == "openai" and result.text == "two"
    assert backend.requests[0].headers["authorization"] == "Bearer sk-from-env-42"
    assert "sk-from-env-42" not in repr(asr.chain[0][0])


def test_an_unreachable_vendor_hands_the_turn_to_pocketsphinx(tmp_path, shared_data):
    config = config_with(
        tmp_path,
        asr__engine="openai",
        asr__fallbacks="pocketsphinx",
        asr__openai__url=f"{unused_url()}/v1",
    )
    asr = create_asr(config, environ={})
    audio = build_digit_utterance(shared_data, "jackson", "52", seed=5) + silence(300)
    stream = asr.open_stream(RecognitionOptions(grammar="digits"))
    for frame in iter_frames([audio], CALL_RATE):
        stream.feed(frame)
    result = stream.finish()
    asr.close()
    assert result.engine == "pocketsphinx" and result.text
    assert len(result.notes) == 1 and result.notes[0].startswith("openai: ")


def test_a_dialplan_voice_no_engine_has_stops_start_up(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("voice: xx-no-such-voice\nstart: end\nsteps:\n  end:\n    hangup: true\n")
    plan = load_dialplan(path)
    tts = create_tts(config_with(tmp_path))
    with pytest.raises(StartupError, match="dialplan plan: voice 'xx-no-such-voice'"):
        check_voices({"plan": plan}, tts)
    check_voices({"plan": dataclasses.replace(plan, voice="en-gb")}, tts)  # eSpeak has it


def test_serve_with_a_missing_whisper_model_exits_with_the_fix(tmp_path):
    env = {
        **os.environ,
        "SWITCHBOARD_ASR__ENGINE": "whisper",
        "SWITCHBOARD_MODELS__DIR": str(tmp_path / "models"),
        "SWITCHBOARD_SERVER__DATA_DIR": str(tmp_path),
        "SWITCHBOARD_STORE__URL": f"sqlite:///{tmp_path / 'calls.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    output = done.stderr + done.stdout
    assert "cannot start: asr.whisper:" in output
    assert "switchboard models pull faster-whisper-base.en" in output


# --- engine = "auto": the best installed (app.models.choose) --------------------------------


def _fake_whisper(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (folder / name).write_text("{}")


def _fake_voice(voices: Path, name: str) -> None:
    voices.mkdir(parents=True, exist_ok=True)
    (voices / f"{name}.onnx").write_bytes(b"onnx")
    (voices / f"{name}.onnx.json").write_text('{"audio": {"sample_rate": 22050}}')


def test_auto_without_models_is_the_zero_download_floor(tmp_path):
    choice = choose_engines(config_with(tmp_path))
    assert choice.config.asr.chain == ("pocketsphinx",)
    assert choice.config.tts.chain == ("espeak",)
    assert choice.summary == "asr pocketsphinx, tts espeak (en-us)"


def test_auto_takes_installed_whisper_and_piper_with_the_floor_behind(tmp_path):
    _fake_whisper(tmp_path / "models" / "faster-whisper-base")
    _fake_whisper(tmp_path / "models" / "faster-whisper-tiny.en")
    _fake_voice(tmp_path / "models" / "piper", "en_US-joe-medium")
    choice = choose_engines(config_with(tmp_path))
    asr, tts = choice.config.asr, choice.config.tts
    # English-only and lighter first on a CPU: tiny.en before the multilingual base
    assert asr.chain == ("whisper", "pocketsphinx")
    assert asr.whisper.model == "faster-whisper-tiny.en"
    assert tts.chain == ("piper", "espeak") and tts.piper.voice == "en_US-joe-medium"
    assert choice.summary == (
        "asr whisper (faster-whisper-tiny.en) > pocketsphinx, "
        "tts piper (en_US-joe-medium) > espeak (en-us)"
    )


def test_auto_prefers_the_configured_model_and_voice_when_installed(tmp_path):
    _fake_whisper(tmp_path / "models" / "faster-whisper-tiny.en")
    _fake_whisper(tmp_path / "models" / "my-whisper")
    _fake_voice(tmp_path / "models" / "piper", "en_US-joe-medium")
    _fake_voice(tmp_path / "models" / "piper", "de_DE-thorsten-medium")
    config = config_with(
        tmp_path, asr__whisper__model="my-whisper", tts__piper__voice="de_DE-thorsten-medium"
    )
    chosen = choose_engines(config).config
    assert chosen.asr.whisper.model == "my-whisper"
    assert chosen.tts.piper.voice == "de_DE-thorsten-medium"


def test_an_explicit_engine_is_kept_even_with_better_models_installed(tmp_path):
    _fake_whisper(tmp_path / "models" / "faster-whisper-tiny.en")
    _fake_voice(tmp_path / "models" / "piper", "en_US-joe-medium")
    config = config_with(tmp_path, asr__engine="pocketsphinx", tts__engine="espeak")
    chosen = choose_engines(config).config
    assert chosen.asr.chain == ("pocketsphinx",) and chosen.tts.chain == ("espeak",)


def test_auto_keeps_configured_fallbacks(tmp_path):
    _fake_whisper(tmp_path / "models" / "faster-whisper-tiny.en")
    config = config_with(tmp_path, asr__fallbacks="openai")
    assert choose_engines(config).config.asr.chain == ("whisper", "openai")


def test_auto_loads_the_real_weights_scripts_test_installs(tmp_path):
    root = models_root("faster-whisper-tiny.en", "piper/en_US-joe-medium.onnx")
    config = load_config(None, {"SWITCHBOARD_MODELS__DIR": str(root)})
    asr, tts = create_asr(config), create_tts(config)
    assert [guard.name for _e, guard in asr.chain] == ["whisper", "pocketsphinx"]
    assert [guard.name for _e, guard in tts.chain] == ["piper", "espeak"]
    assert tts.sample_rate == 22050  # Piper's voice leads the chain
