"""Configuration: defaults, file, environment overrides, and the error messages operators see."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from app.config import SECTIONS, ConfigError, dump_config, load_config, redact_url

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "sip_config" / "switchboard.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str = "", environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ)
    return str(info.value)


def test_defaults_without_a_file_resolve_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.source is None
    assert config.sip.udp_port == 5060 and config.sip.tcp_port == 5060
    assert config.sip.codecs == ("PCMU", "PCMA")
    assert config.sip.user_agent.startswith("Switchboard/")
    assert config.vad.aggressiveness == 2 and config.vad.no_input_ms == 6000
    assert config.asr.engine == "auto" and config.tts.engine == "auto"  # app.models.choose
    assert config.server.node  # the host name
    assert config.sip.routes == tmp_path.resolve() / "sip_config" / "routes.toml"
    assert config.dialplans.dir == tmp_path.resolve() / "dialplans"
    assert config.store.url == f"sqlite:///{tmp_path.resolve()}/var/switchboard.db"
    assert config.state.url == "memory://"


def test_file_values_and_relative_paths_resolve_against_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    path = write(
        tmp_path,
        """
        [server]
        log_level = "debug"
        data_dir = "data"
        [sip]
        udp_port = 5070
        tcp_port = 0
        codecs = ["pcma"]
        routes = "/etc/switchboard/routes.toml"
        [store]
        url = "sqlite:///db/calls.db?timeout=5"
        """,
    )
    config = load_config(path)
    base = tmp_path.resolve()
    assert config.source == path.resolve()
    assert config.server.log_level == "DEBUG"
    assert config.server.data_dir == base / "data"
    assert (config.sip.udp_port, config.sip.tcp_port, config.sip.codecs) == (5070, 0, ("PCMA",))
    assert config.sip.routes == Path("/etc/switchboard/routes.toml")
    assert config.store.url == f"sqlite:///{base}/db/calls.db?timeout=5"


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "[sip]\nudp_port = 5070\nmax_calls = 4\n")
    environ = {
        "SWITCHBOARD_SIP__UDP_PORT": "5080",
        "SWITCHBOARD_SIP__CODECS": "PCMA, pcmu",
        "SWITCHBOARD_STORE__URL": "postgresql+psycopg://sb:secret@127.0.0.1/sb",
        "SWITCHBOARD_STATE__URL": "redis://127.0.0.1:6379/0",
        "SWITCHBOARD_VAD__AGGRESSIVENESS": " 3 ",
        "SWITCHBOARD_CONFIG": "ignored: no SECTION__KEY form",
        "HOME": "/root",
    }
    config = load_config(path, environ)
    assert config.sip.udp_port == 5080
    assert config.sip.max_calls == 4
    assert config.sip.codecs == ("PCMA", "PCMU")
    assert config.store.url == "postgresql+psycopg://sb:secret@127.0.0.1/sb"
    assert config.state.url == "redis://127.0.0.1:6379/0"
    assert config.vad.aggressiveness == 3


def test_memory_sqlite_and_absolute_sqlite_urls_are_kept(tmp_path):
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:////srv/sb.db"):
        config = load_config(None, {"SWITCHBOARD_STORE__URL": url})
        assert config.store.url == url


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("[sip]\nudp_port = 'abc'\n", None, "sip.udp_port: expected an integer, got 'abc'"),
        ("", {"SWITCHBOARD_SIP__UDP_PORT": "abc"}, "sip.udp_port: expected an integer, got 'abc'"),
        ("[sip]\nudp_port = 70000\n", None, "sip.udp_port: must be between 1 and 65535"),
        ("[sip]\nudp_port = true\n", None, "sip.udp_port: expected an integer, got True"),
        ("[sip]\ntcp_port = -1\n", None, "sip.tcp_port: must be between 0 and 65535"),
        ("[vad]\naggressiveness = 4\n", None, "vad.aggressiveness: must be 0..3"),
        (
            "[sip]\nudpport = 5060\n",
            None,
            "unknown key 'sip.udpport' (did you mean 'sip.udp_port'?)",
        ),
        ("[sips]\nudp_port = 5060\n", None, "unknown section 'sips' (did you mean 'sip'?)"),
        ("sip = 5\n", None, "sip: expected a [sip] table"),
        ("", {"SWITCHBOARD_SIPS__UDP_PORT": "1"}, "unknown section 'sips'"),
        (
            "[store]\nurl = 'mysql://db/x'\n",
            None,
            "store.url: unsupported scheme 'mysql' (use sqlite:/// or postgresql+psycopg://)",
        ),
        (
            "[state]\nurl = 'memcached://x'\n",
            None,
            "state.url: unsupported scheme 'memcached' (use memory:// or redis://)",
        ),
        ("[state]\nurl = 'localhost'\n", None, "state.url: expected a URL"),
        ("[sip]\ncodecs = ['PCMU', 'G729']\n", None, "sip.codecs: unsupported codec 'G729'"),
        ("[sip]\ncodecs = []\n", None, "sip.codecs: must name at least one of PCMU, PCMA"),
        ("[sip]\nbind = 'anywhere'\n", None, "sip.bind: expected an IP address"),
        ("[server]\nlog_level = 'LOUD'\n", None, "server.log_level: must be one of DEBUG"),
        ("[asr]\nengine = 'siri'\n", None, "asr.engine: must be one of auto, pocketsphinx"),
        ("[sip]\nrtp_port = 65000\n", None, "sip.rtp_port_count: ports 65000..65999 run past"),
        ("[vad]\nmax_utterance_ms = 1000\nmin_speech_ms = 2000\n", None, "vad.max_utterance_ms"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, text, environ, expected):
    assert expected in error_of(tmp_path, text, environ)


def test_environment_errors_name_the_variable(tmp_path):
    message = error_of(tmp_path, "", {"SWITCHBOARD_SIP__UDP_PORT": "abc"})
    assert "SWITCHBOARD_SIP__UDP_PORT" in message


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    message = error_of(tmp_path, "[sip]\nudp_port = 5060\nmax_calls = = 3\n")
    assert "invalid TOML" in message
    assert re.search(r"line 3, column \d+", message)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_example_lists_every_key_and_loads(tmp_path):
    text = EXAMPLE.read_text()
    tables = list(SECTIONS.items())
    while tables:  # every section and sub-table ([asr.whisper]) with every key of its own
        name, cls = tables.pop()
        assert f"\n[{name}]\n" in text, name
        body = text.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                tables.append((f"{name}.{field.name}", hints[field.name]))
            else:
                assert re.search(rf"^#? ?{field.name} = ", body, re.MULTILINE), (name, field.name)
    example = load_config(EXAMPLE)
    defaults = load_config(None)
    assert example.sip == dataclasses.replace(
        defaults.sip,
        routes=EXAMPLE.parent / "sip_config" / "routes.toml",
        security=EXAMPLE.parent / "sip_config" / "security.toml",
    )
    assert example.vad == defaults.vad and example.tts == defaults.tts


def test_dump_round_trips_and_redacts_passwords(tmp_path):
    environ = {"SWITCHBOARD_STORE__URL": "postgresql+psycopg://sb:secret@127.0.0.1/sb"}
    config = load_config(None, environ)
    dumped = dump_config(config)
    assert "secret" not in dumped and "sb:***@127.0.0.1" in dumped
    assert tomllib.loads(dumped)["sip"]["codecs"] == ["PCMU", "PCMA"]
    reloaded = load_config(write(tmp_path, dumped), environ)
    assert dataclasses.replace(reloaded, source=None) == config


def test_redact_url_keeps_urls_without_password():
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("redis://:pw@host:6379") == "redis://:***@host:6379"


def test_engine_tables_from_file_and_environment(tmp_path):
    path = write(
        tmp_path,
        '[asr]\nengine = "whisper"\nfallbacks = ["vosk", "pocketsphinx"]\n'
        '[asr.whisper]\nmodel = "faster-whisper-small.en"\nfinal_ms = 2500\n'
        '[models]\ndir = "weights"\n',
    )
    config = load_config(path, {"SWITCHBOARD_ASR__WHISPER__DEVICE": "cuda"})
    assert config.asr.chain == ("whisper", "vosk", "pocketsphinx")
    assert config.asr.whisper.model == "faster-whisper-small.en"
    assert config.asr.whisper.final_ms == 2500 and config.asr.whisper.device == "cuda"
    assert config.asr.vosk.final_ms == 2000  # untouched tables keep their defaults
    assert config.models.dir == tmp_path / "weights"


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (
            "[asr.whisper]\nmodle = 'x'\n",
            None,
            "unknown key 'asr.whisper.modle' (did you mean 'asr.whisper.model'?)",
        ),
        ("[asr]\nwhisper = 'tiny'\n", None, "asr.whisper: expected a [asr.whisper] table"),
        ("[asr]\nfallbacks = ['vosk', 'vosk']\n", None, "asr.fallbacks: lists an engine twice"),
        (
            "[tts]\nfallbacks = ['festival']\n",
            None,
            "tts.fallbacks: must be one of espeak, piper, openai",
        ),
        ("", {"SWITCHBOARD_ASR__WHISPER": "x"}, "'asr.whisper' is a table"),
        (
            "",
            {"SWITCHBOARD_ASR__WHISPER__BEAM_SIZE": "0"},
            "asr.whisper.beam_size: must be between 1 and 20",
        ),
    ],
)
def test_engine_table_errors_name_the_key(tmp_path, text, environ, expected):
    assert expected in error_of(tmp_path, text, environ)


def test_dump_redacts_api_keys_and_writes_engine_tables(tmp_path):
    config = load_config(None, {"SWITCHBOARD_ASR__OPENAI__API_KEY": "sk-test-123"})
    dumped = dump_config(config)
    assert "sk-test-123" not in dumped and 'api_key = "***"' in dumped
    assert tomllib.loads(dumped)["asr"]["openai"]["model"] == "whisper-1"
