"""Server configuration: one TOML file, then `SWITCHBOARD_<SECTION>__<KEY>` environment overrides.

Every key has a default, so a first run needs no file at all. Every bad value raises
`ConfigError` naming the key (`sip.udp_port: must be between 1 and 65535`): operators fix
configs from the error message, not from a stack trace.

Relative paths (`server.data_dir`, `sip.routes`, `dialplans.dir` and the file of a
`sqlite:///` store URL) are resolved against the directory of the config file, so a config
means the same thing whichever directory the server is started from. With no file they are
resolved against the current directory. Overrides from the environment follow the same rule.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import socket
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app import __version__

ENV_PREFIX = "SWITCHBOARD_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SUPPORTED_CODECS = ("PCMU", "PCMA")
ASR_ENGINES = ("pocketsphinx", "vosk", "whisper", "openai")
TTS_ENGINES = ("espeak", "piper", "openai")
AUTO = "auto"
"""An `engine` that is the best one installed, chosen at start (`app.models.choose`)."""


class ConfigError(ValueError):
    """A configuration value, file or override is invalid; the message names the key."""


Check = Callable[[Any], Any]
"""Validates a typed value; returns it (possibly normalised) or raises `ValueError(reason)`."""


def _check(check: Check) -> dict[str, Check]:
    return {"check": check}


def _between(low: int, high: int) -> Check:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def _one_of(choices: tuple[str, ...], *, upper: bool = False) -> Check:
    def check(value: str) -> str:
        normal = value.upper() if upper else value.lower()
        if normal not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return normal

    return check


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address such as 0.0.0.0, got {value!r}") from None


def _fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("must be between 0 and 1 (exclusive)")
    return value


def _aggressiveness(value: int) -> int:
    if not 0 <= value <= 3:
        raise ValueError("must be 0..3")
    return value


def _codecs(value: tuple[str, ...]) -> tuple[str, ...]:
    codecs = tuple(codec.strip().upper() for codec in value)
    if not codecs:
        raise ValueError(f"must name at least one of {', '.join(SUPPORTED_CODECS)}")
    for codec in codecs:
        if codec not in SUPPORTED_CODECS:
            raise ValueError(f"unsupported codec {codec!r} (use {' or '.join(SUPPORTED_CODECS)})")
    if len(set(codecs)) != len(codecs):
        raise ValueError("lists a codec twice")
    return codecs


def _url(schemes: tuple[str, ...], hint: str) -> Check:
    def check(value: str) -> str:
        value = value.strip()
        if "://" not in value:
            raise ValueError(f"expected a URL ({hint})")
        scheme = value.split("://", 1)[0].lower()
        if scheme not in schemes:
            raise ValueError(f"unsupported scheme {scheme!r} ({hint})")
        return value

    return check


@dataclass(frozen=True, slots=True)
class ServerConfig:
    node: str = field(default_factory=socket.gethostname, metadata=_check(_non_empty))
    log_level: str = field(default="INFO", metadata=_check(_one_of(LOG_LEVELS, upper=True)))
    data_dir: Path = Path("var")
    # "text" for a terminal, "json" (one object per line, with call_id) for a log pipeline.
    log_format: str = field(default="text", metadata=_check(_one_of(("text", "json"))))
    # Transcripts, prompts and secrets appear in logs only when this is true (debugging).
    log_sensitive: bool = False
    # SIGTERM / `switchboard drain`: new calls get 503, active calls get this long to finish.
    drain_timeout_s: int = field(default=60, metadata=_check(_between(0, 86400)))


@dataclass(frozen=True, slots=True)
class SipConfig:
    bind: str = field(default="0.0.0.0", metadata=_check(_ip_address))
    udp_port: int = field(default=5060, metadata=_check(_between(1, 65535)))
    tcp_port: int = field(default=5060, metadata=_check(_between(0, 65535)))
    public_address: str = ""
    max_calls: int = field(default=20, metadata=_check(_between(1, 10000)))
    routes: Path = Path("sip_config/routes.toml")
    user_agent: str = field(default=f"Switchboard/{__version__}", metadata=_check(_non_empty))
    rtp_port: int = field(default=10000, metadata=_check(_between(1024, 65534)))
    rtp_port_count: int = field(default=1000, metadata=_check(_between(2, 64511)))
    codecs: tuple[str, ...] = field(default=SUPPORTED_CODECS, metadata=_check(_codecs))
    # Retry-After (seconds) on 503 answers: at capacity, or draining.
    retry_after_s: int = field(default=30, metadata=_check(_between(1, 86400)))
    # SIP over TLS (0: off) with this certificate chain and key (PEM); CA file to verify
    # peers' certificates (empty: peers are not verified).
    tls_port: int = field(default=0, metadata=_check(_between(0, 65535)))
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # SRTP: off, optional (offered, plain RTP accepted) or mandatory (plain RTP refused).
    srtp: str = field(default="off", metadata=_check(_one_of(("off", "optional", "mandatory"))))
    # Peers, trunks, ACLs, flood limits, User-Agent blocklist, transfer allowlist.
    security: Path = Path("sip_config/security.toml")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The metrics and health listener: /metrics (Prometheus), /livez, /readyz."""

    bind: str = field(default="127.0.0.1", metadata=_check(_ip_address))
    # 0 disables the listener.
    port: int = field(default=9300, metadata=_check(_between(0, 65535)))


@dataclass(frozen=True, slots=True)
class VadConfig:
    aggressiveness: int = field(default=2, metadata=_check(_aggressiveness))
    min_speech_ms: int = field(default=160, metadata=_check(_between(20, 10_000)))
    end_silence_ms: int = field(default=400, metadata=_check(_between(100, 10_000)))
    incomplete_silence_ms: int = field(default=1000, metadata=_check(_between(100, 10_000)))
    complete_silence_ms: int = field(default=300, metadata=_check(_between(100, 10_000)))
    max_utterance_ms: int = field(default=15_000, metadata=_check(_between(1000, 300_000)))
    pre_roll_ms: int = field(default=300, metadata=_check(_between(0, 2000)))
    no_input_ms: int = field(default=6000, metadata=_check(_between(500, 120_000)))
    detector: str = field(default="webrtc", metadata=_check(_one_of(("webrtc", "silero"))))
    silero_threshold: float = field(default=0.5, metadata=_check(_fraction))
    barge_in_min_speech_ms: int = field(default=80, metadata=_check(_between(20, 2000)))
    echo_margin_db: float = field(default=6.0, metadata=_check(_between(0, 40)))

    def __post_init__(self) -> None:
        if self.complete_silence_ms > self.incomplete_silence_ms:
            raise ConfigError(
                "vad.complete_silence_ms must not exceed vad.incomplete_silence_ms "
                f"({self.complete_silence_ms} > {self.incomplete_silence_ms})"
            )


def _engine_chain(engines: tuple[str, ...]) -> Check:
    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        chain = tuple(_one_of(engines)(name) for name in value)
        if len(set(chain)) != len(chain):
            raise ValueError("lists an engine twice")
        return chain

    return check


def _secret(value: str) -> str:
    return value.strip()


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """How long a fallback chain waits for an engine, and how many calls it serves at once.

    `first_result_ms`: audio an ASR engine may fall behind (a hung or overloaded engine) before
    the turn moves to the next engine; for TTS, the wait for the first audio of a sentence.
    `final_ms`: the wait for an ASR engine's final result once the caller stopped speaking.
    `max_streams`: turns or prompts the engine serves at once (0: no limit); the next one
    goes to the next engine instead of queueing.
    """

    first_result_ms: int = field(default=1500, metadata=_check(_between(50, 120_000)))
    final_ms: int = field(default=2000, metadata=_check(_between(50, 120_000)))
    max_streams: int = field(default=0, metadata=_check(_between(0, 10_000)))


@dataclass(frozen=True, slots=True)
class PocketSphinxConfig(EngineLimits):
    pass


@dataclass(frozen=True, slots=True)
class VoskConfig(EngineLimits):
    # A model name in [models] dir (`switchboard models list`) or a path to a model folder.
    model: str = field(default="vosk-model-small-en-us-0.15", metadata=_check(_non_empty))


@dataclass(frozen=True, slots=True)
class WhisperConfig(EngineLimits):
    model: str = field(default="faster-whisper-base.en", metadata=_check(_non_empty))
    device: str = field(default="cpu", metadata=_check(_one_of(("cpu", "cuda", "auto"))))
    compute_type: str = field(default="int8", metadata=_check(_non_empty))
    beam_size: int = field(default=5, metadata=_check(_between(1, 20)))
    cpu_threads: int = field(default=1, metadata=_check(_between(0, 256)))
    workers: int = field(default=1, metadata=_check(_between(1, 64)))
    partial_interval_ms: int = field(default=1000, metadata=_check(_between(0, 30_000)))
    final_ms: int = field(default=4000, metadata=_check(_between(50, 120_000)))


@dataclass(frozen=True, slots=True)
class OpenAiAsrConfig(EngineLimits):
    """An OpenAI-compatible `/v1/audio/transcriptions` service (OpenAI, or a self-hosted
    Whisper server). `api_key` empty: taken from the environment variable `api_key_env`."""

    url: str = field(
        default="http://127.0.0.1:8000/v1", metadata=_check(_url(("http", "https"), "http(s)://"))
    )
    model: str = field(default="whisper-1", metadata=_check(_non_empty))
    api_key: str = field(default="", metadata=_check(_secret))
    api_key_env: str = "OPENAI_API_KEY"
    final_ms: int = field(default=5000, metadata=_check(_between(50, 120_000)))


@dataclass(frozen=True, slots=True)
class AsrConfig:
    """`engine` answers first; `fallbacks` take over in order when it fails, hangs or is full.
    "auto": Whisper, Vosk or PocketSphinx, the best installed, with PocketSphinx as fallback."""

    engine: str = field(default=AUTO, metadata=_check(_one_of((AUTO, *ASR_ENGINES))))
    fallbacks: tuple[str, ...] = field(default=(), metadata=_check(_engine_chain(ASR_ENGINES)))
    breaker_failures: int = field(default=3, metadata=_check(_between(1, 1000)))
    breaker_cooldown_s: float = field(default=30.0, metadata=_check(_positive))
    pocketsphinx: PocketSphinxConfig = field(default_factory=PocketSphinxConfig)
    vosk: VoskConfig = field(default_factory=VoskConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)
    openai: OpenAiAsrConfig = field(default_factory=OpenAiAsrConfig)

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.engine, *(name for name in self.fallbacks if name != self.engine))


@dataclass(frozen=True, slots=True)
class EspeakConfig(EngineLimits):
    voice: str = field(default="en-us", metadata=_check(_non_empty))
    words_per_minute: int = field(default=165, metadata=_check(_between(80, 450)))


@dataclass(frozen=True, slots=True)
class PiperConfig(EngineLimits):
    # A folder of voices (<name>.onnx + <name>.onnx.json): a path, or "" for [models] dir.
    voices: str = ""
    voice: str = field(default="en_US-lessac-medium", metadata=_check(_non_empty))
    # Phoneme duration: 1.0 the voice's own pace, 0.8 faster, 1.25 slower.
    length_scale: float = field(default=1.0, metadata=_check(_between(0.25, 4.0)))
    # Variation in the voice (Piper's noise_scale, noise_w_scale); -1 keeps the voice's own.
    # 0 makes every rendering of a text the same bytes (benchmarks that find prompts by
    # waveform), at some cost in liveliness.
    noise_scale: float = field(default=-1.0, metadata=_check(_between(-1.0, 2.0)))
    noise_w_scale: float = field(default=-1.0, metadata=_check(_between(-1.0, 2.0)))
    cpu_threads: int = field(default=1, metadata=_check(_between(0, 256)))


@dataclass(frozen=True, slots=True)
class OpenAiTtsConfig(EngineLimits):
    """An OpenAI-compatible `/v1/audio/speech` service."""

    url: str = field(
        default="http://127.0.0.1:8000/v1", metadata=_check(_url(("http", "https"), "http(s)://"))
    )
    model: str = field(default="tts-1", metadata=_check(_non_empty))
    voice: str = field(default="alloy", metadata=_check(_non_empty))
    speed: float = field(default=1.0, metadata=_check(_between(0.25, 4.0)))
    api_key: str = field(default="", metadata=_check(_secret))
    api_key_env: str = "OPENAI_API_KEY"
    first_result_ms: int = field(default=3000, metadata=_check(_between(50, 120_000)))


@dataclass(frozen=True, slots=True)
class TtsConfig:
    """`engine` speaks first; `fallbacks` take over in order. A dialplan's `voice` goes to the
    engine that has it; the others speak in their own configured voice. "auto": Piper when a
    voice is installed, with eSpeak NG as fallback, else eSpeak NG."""

    engine: str = field(default=AUTO, metadata=_check(_one_of((AUTO, *TTS_ENGINES))))
    fallbacks: tuple[str, ...] = field(default=(), metadata=_check(_engine_chain(TTS_ENGINES)))
    prompt_cache_mb: int = field(default=32, metadata=_check(_between(0, 4096)))
    breaker_failures: int = field(default=3, metadata=_check(_between(1, 1000)))
    breaker_cooldown_s: float = field(default=30.0, metadata=_check(_positive))
    espeak: EspeakConfig = field(default_factory=EspeakConfig)
    piper: PiperConfig = field(default_factory=PiperConfig)
    openai: OpenAiTtsConfig = field(default_factory=OpenAiTtsConfig)

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.engine, *(name for name in self.fallbacks if name != self.engine))


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """Where model files live (`switchboard models pull` installs there; engines load there)."""

    dir: Path = Path("models")


@dataclass(frozen=True, slots=True)
class DialplansConfig:
    dir: Path = Path("dialplans")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Call records. `migrate`: "auto" brings the schema up to date at start; "check" refuses
    to start on an out-of-date schema (run `switchboard db upgrade`). `retention_days`: what
    `switchboard db prune` deletes (calls, turns, events, recordings older than this); 0 keeps
    everything. Records wait in `<server.data_dir>/spool` while the database is unreachable."""

    url: str = field(
        default="sqlite:///var/switchboard.db",
        metadata=_check(
            _url(("sqlite", "postgresql+psycopg"), "use sqlite:/// or postgresql+psycopg://")
        ),
    )
    migrate: str = field(default="auto", metadata=_check(_one_of(("auto", "check"))))
    retention_days: int = field(default=0, metadata=_check(_between(0, 36500)))


def _redaction_rules(value: tuple[str, ...]) -> tuple[str, ...]:
    from app.store.redaction import BUILTIN_RULES  # the rules live with the code that applies them

    for name in value:
        if name not in BUILTIN_RULES:
            raise ValueError(f"unknown rule {name!r} (known: {', '.join(sorted(BUILTIN_RULES))})")
    return value


def _regexes(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return value


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """PII redaction applied to transcripts, prompts, variables and event details before any
    record is written (spool included). `redact`: built-in rules; `patterns`: extra regular
    expressions whose matches are replaced."""

    redact: tuple[str, ...] = field(
        default=("card", "iban", "national_id"), metadata=_check(_redaction_rules)
    )
    patterns: tuple[str, ...] = field(default=(), metadata=_check(_regexes))


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Live call state. With Redis: entries of a node that died expire after `ttl_s`;
    `max_calls` caps concurrent calls across all nodes (0: no cluster cap, only each node's
    `sip.max_calls`); call events are published on `channel` for dashboards."""

    url: str = field(
        default="memory://",
        metadata=_check(_url(("memory", "redis", "rediss"), "use memory:// or redis://")),
    )
    ttl_s: int = field(default=30, metadata=_check(_between(3, 3600)))
    max_calls: int = field(default=0, metadata=_check(_between(0, 1_000_000)))
    channel: str = field(default="switchboard:events", metadata=_check(_non_empty))


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration. `source` is the file it came from (None: defaults only)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    dialplans: DialplansConfig = field(default_factory=DialplansConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    state: StateConfig = field(default_factory=StateConfig)
    source: Path | None = None


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None: defaults only), apply overrides from `environ`, validate, resolve paths.

    `environ` defaults to no overrides, so tests and tools stay deterministic; the server passes
    `os.environ`.
    """
    raw: dict[str, dict[str, tuple[Any, str]]] = {}
    base = Path.cwd()
    source: Path | None = None
    if path is not None:
        source = Path(path).expanduser().resolve()
        base = source.parent
        for section, key, value in _read_file(source):
            raw.setdefault(section, {})[key] = (value, f"in {source}")
    for section, key, value, variable in _read_environ(environ or {}):
        raw.setdefault(section, {})[key] = (value, f"from environment {variable}")

    sections = {
        name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()
    }
    config = Config(**sections, source=source)
    _check_consistency(config)
    return _resolve_paths(config, base)


def _read_file(path: Path) -> list[tuple[str, str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    entries: list[tuple[str, str, Any]] = []
    for section, table in document.items():
        _known_section(section, f"in {path}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a [{section}] table (in {path})")
        _table_entries(section, table, "", f"in {path}", entries)
    return entries


def _table_entries(section: str, table: dict[str, Any], prefix: str, where: str, out: list) -> None:
    """Flatten a section's table: `[asr.whisper] model = ...` -> ("asr", "whisper.model", ...)."""
    for key, value in table.items():
        kind = _field_type(section, SECTIONS[section], prefix + key, where)
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{section}.{prefix}{key}: expected a [{section}.{prefix}{key}] table ({where})"
                )
            _table_entries(section, value, f"{prefix}{key}.", where, out)
        else:
            out.append((section, prefix + key, value))


def _read_environ(environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """`SWITCHBOARD_SIP__UDP_PORT=5070` -> ("sip", "udp_port", "5070", variable name);
    `SWITCHBOARD_ASR__WHISPER__MODEL` -> ("asr", "whisper.model", ...)."""
    entries = []
    for variable, value in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or "__" not in variable:
            continue
        section, _, key = variable[len(ENV_PREFIX) :].lower().partition("__")
        key = key.replace("__", ".")
        where = f"from environment {variable}"
        _known_section(section, where)
        if dataclasses.is_dataclass(_field_type(section, SECTIONS[section], key, where)):
            raise ConfigError(f"'{section}.{key}' is a table: set one of its keys ({where})")
        entries.append((section, key, value, variable))
    return entries


def _known_section(section: str, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r}{_suggest(section, SECTIONS)} ({where})")


def _field_type(section: str, cls: type, key: str, where: str, scope: str = "") -> Any:
    """The type of `key` (dotted for a sub-table) in `cls`; ConfigError naming it if unknown."""
    head, _, rest = key.partition(".")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    scope = scope or section
    if head not in names or (rest and not dataclasses.is_dataclass(hints[head])):
        guess = _suggest(f"{scope}.{head}", [f"{scope}.{name}" for name in names])
        raise ConfigError(f"unknown key '{scope}.{key}'{guess} ({where})")
    if rest:
        return _field_type(section, hints[head], rest, where, f"{scope}.{head}")
    return hints[head]


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_section(name: str, cls: type, raw: dict[str, tuple[Any, str]]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            prefix = f"{f.name}."
            nested = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
            if nested:
                values[f.name] = _build_section(f"{name}.{f.name}", kind, nested)
            continue
        if f.name not in raw:
            continue
        value, where = raw[f.name]
        key = f"{name}.{f.name}"
        try:
            typed = _coerce(value, kind)
            check = f.metadata.get("check")
            values[f.name] = check(typed) if check else typed
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc} ({where})") from None
    try:
        return cls(**values)
    except ValueError as exc:  # a default_factory failed (cannot happen today; keep it named)
        raise ConfigError(f"{name}: {exc}") from None


def _coerce(value: Any, kind: Any) -> Any:
    """Turn a TOML value or an environment string into `kind`; ValueError says what was wrong."""
    textual = isinstance(value, str) and kind is not str
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if textual:
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if textual:
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if kind is str or kind is Path:
        if isinstance(value, str):
            return Path(value) if kind is Path else value
        raise ValueError(f"expected a string, got {value!r}")
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ValueError(f"expected a list of strings, got {value!r}")
    raise TypeError(f"no coercion to {kind!r}")  # a field type this module forgot to handle


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _check_consistency(config: Config) -> None:
    sip, vad = config.sip, config.vad
    if sip.rtp_port + sip.rtp_port_count - 1 > 65535:
        raise ConfigError(
            f"sip.rtp_port_count: ports {sip.rtp_port}..{sip.rtp_port + sip.rtp_port_count - 1}"
            " run past 65535"
        )
    if sip.tls_port and not (sip.tls_cert and sip.tls_key):
        raise ConfigError("sip.tls_port: TLS needs sip.tls_cert and sip.tls_key (PEM files)")
    if sip.srtp == "mandatory" and not sip.tls_port:
        raise ConfigError(
            "sip.srtp: mandatory SRTP needs sip.tls_port (SDES keys travel in the SDP, which "
            "must not cross the network in clear)"
        )
    if vad.max_utterance_ms <= vad.min_speech_ms:
        raise ConfigError("vad.max_utterance_ms: must be greater than vad.min_speech_ms")


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(path: Path) -> Path:
        return (base / path.expanduser()).resolve()

    return dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, data_dir=resolve(config.server.data_dir)),
        sip=dataclasses.replace(
            config.sip,
            routes=resolve(config.sip.routes),
            security=resolve(config.sip.security),
            **{
                name: str(resolve(Path(value))) if (value := getattr(config.sip, name)) else ""
                for name in ("tls_cert", "tls_key", "tls_ca")
            },
        ),
        dialplans=dataclasses.replace(config.dialplans, dir=resolve(config.dialplans.dir)),
        models=dataclasses.replace(config.models, dir=resolve(config.models.dir)),
        store=dataclasses.replace(config.store, url=_resolve_sqlite_url(config.store.url, base)),
    )


def _resolve_sqlite_url(url: str, base: Path) -> str:
    """`sqlite:///var/x.db` -> `sqlite:////base/var/x.db`; memory and absolute URLs unchanged."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        return url
    rest = url[len(prefix) :]
    file, sep, query = rest.partition("?")
    if not file or file.startswith("/") or file == ":memory:":
        return url
    return f"{prefix}{(base / file).resolve()}{sep}{query}"


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, for logs and `config check` output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def dump_config(config: Config) -> str:
    """The effective configuration as TOML, passwords and API keys redacted (for
    `switchboard config check`)."""
    lines = [f"# source: {config.source or '(defaults, no file)'}"]
    for name in SECTIONS:
        _dump_table(name, getattr(config, name), lines)
    return "\n".join(lines) + "\n"


def _dump_table(name: str, section: Any, lines: list[str]) -> None:
    lines.append(f"\n[{name}]")
    tables = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f"{name}.{f.name}", value))
            continue
        if f.name == "url":
            value = redact_url(value)
        elif f.name == "api_key" and value:
            value = "***"
        lines.append(f"{f.name} = {_toml_value(value)}")
    for table_name, table in tables:
        _dump_table(table_name, table, lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
