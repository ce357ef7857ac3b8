"""`switchboard serve`: wires config, engines, dialplans, records and the SIP agent together.

Heavy resources (ASR model, TTS engine) are created once here and shared by every call; each
call gets a light `CallSession`. Records and live state are observers of call events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.asr.base import AsrEngine, AsrError
from app.asr.fallback import FallbackAsrEngine
from app.call.bargein import BargeInConfig
from app.call.endpointing import EndpointerConfig, FrameClassifier
from app.call.events import EventBus
from app.call.hangover import Hangover
from app.call.session import CallServices, CallSession, SessionConfig
from app.config import Config, EngineLimits, redact_url
from app.dialog.dialplan import Dialplan, DialplanError, load_dialplans
from app.drain import StopSignals, drain_calls
from app.media.audio import CALL_RATE
from app.models import ModelMissing, resolve_model, resolve_piper_voices
from app.models.choose import choose_engines
from app.ops.health import Liveness, Readiness, chain, server_checks
from app.ops.http import ListenerError, OpsHttpServer
from app.ops.logs import setup_logging
from app.ops.metrics import Metrics
from app.ops.notify import Notifier, Watchdog
from app.resilience import CircuitBreaker, EngineGuard, Limits
from app.services.llm import ChatClient
from app.services.webhook import WebhookClient
from app.sip.admission import Admission
from app.sip.edge import EdgeFilter
from app.sip.routes import RoutesError, RouteTable
from app.sip.security import SecurityConfigError, SecurityPolicy, load_policy
from app.state import open_state
from app.state.base import LiveState
from app.store.migrate import SchemaError, ensure_schema
from app.store.recorder import CallRecorder
from app.store.redaction import Redactor
from app.store.spool import SpoolError
from app.tts.base import TtsEngine, TtsError
from app.tts.cache import PromptCache
from app.tts.fallback import FallbackTtsEngine

log = logging.getLogger("switchboard")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_CONFIG = 2


class StartupError(RuntimeError):
    """The server cannot start; the message says what to fix."""


def create_asr(config: Config, environ: Mapping[str, str] | None = None) -> AsrEngine:
    """The ASR chain of `[asr]` (engine, then fallbacks), each engine loaded once, guarded.

    Any engine that cannot load stops the server here, naming what to install or pull."""
    environ = os.environ if environ is None else environ
    config = choose_engines(config).config
    return FallbackAsrEngine(
        _guarded("asr", config.asr, lambda name: build_asr_engine(name, config, environ), AsrError)
    )


def _guarded(
    service: str, section: Any, build: Callable[[str], Any], error: type[Exception]
) -> list[tuple[Any, EngineGuard]]:
    """Each engine of `section.chain` built, with its limits and its own circuit breaker."""
    chain = []
    for name in section.chain:
        try:
            engine = build(name)
        except (error, ModelMissing) as exc:
            raise StartupError(f"{service}.{name}: {exc}") from None
        breaker = CircuitBreaker(
            f"{service} {name}", section.breaker_failures, section.breaker_cooldown_s
        )
        chain.append((engine, EngineGuard(name, _limits(getattr(section, name)), breaker)))
    return chain


def build_asr_engine(name: str, config: Config, environ: Mapping[str, str]) -> AsrEngine:
    """One engine of `[asr]` by name with its configured settings (the server's chain and
    `switchboard eval asr` build engines the same way)."""
    asr, models = config.asr, config.models.dir
    if name == "pocketsphinx":
        from app.asr.pocketsphinx import PocketSphinxEngine

        streams = asr.pocketsphinx.max_streams
        return PocketSphinxEngine(pool_size=streams) if streams else PocketSphinxEngine()
    if name == "vosk":
        from app.asr.vosk import VoskEngine

        return VoskEngine(resolve_model(models, "vosk", asr.vosk.model))
    if name == "whisper":
        from app.asr.whisper import WhisperEngine

        whisper = asr.whisper
        return WhisperEngine(
            resolve_model(models, "whisper", whisper.model),
            device=whisper.device,
            compute_type=whisper.compute_type,
            beam_size=whisper.beam_size,
            cpu_threads=whisper.cpu_threads,
            num_workers=whisper.workers,
            partial_interval_s=whisper.partial_interval_ms / 1000 or None,
        )
    if name == "openai":
        from app.asr.openai import OpenAiSttEngine

        vendor = asr.openai
        return OpenAiSttEngine(
            vendor.url,
            vendor.model,
            api_key=_api_key(vendor.api_key, vendor.api_key_env, environ),
            timeout_s=vendor.final_ms / 1000,
        )
    raise StartupError(f"asr.engine: unknown engine {name!r}")


def _limits(settings: EngineLimits) -> Limits:
    return Limits(
        first_result_s=settings.first_result_ms / 1000,
        final_s=settings.final_ms / 1000,
        max_streams=settings.max_streams,
    )


def _api_key(configured: str, variable: str, environ: Mapping[str, str]) -> str | None:
    """The configured key, else the environment's; never logged."""
    return configured or environ.get(variable) or None


def classifier_factory(config: Config) -> Callable[[], FrameClassifier] | None:
    """New per-turn speech classifiers as `[vad] detector` says (None: webrtcvad default).
    Builds one up front so a missing model fails at start-up, not on the first call."""
    vad = config.vad
    if vad.detector == "webrtc":
        return None
    from app.vad import VadError, create_detector

    def make() -> FrameClassifier:
        return create_detector(
            vad.detector, CALL_RATE, vad.aggressiveness, threshold=vad.silero_threshold
        )

    try:
        make()
    except VadError as exc:
        raise StartupError(f"vad.detector: {exc}") from None
    return make


def create_tts(config: Config, environ: Mapping[str, str] | None = None) -> TtsEngine:
    """The TTS chain of `[tts]` (engine, then fallbacks), each engine loaded once, guarded."""
    environ = os.environ if environ is None else environ
    config = choose_engines(config).config
    return FallbackTtsEngine(
        _guarded("tts", config.tts, lambda name: build_tts_engine(name, config, environ), TtsError)
    )


def build_tts_engine(name: str, config: Config, environ: Mapping[str, str]) -> TtsEngine:
    """One engine of `[tts]` by name with its configured settings (the chain, `eval tts`)."""
    tts = config.tts
    if name == "espeak":
        from app.tts.espeak import EspeakEngine

        return EspeakEngine(voice=tts.espeak.voice, words_per_minute=tts.espeak.words_per_minute)
    if name == "piper":
        from app.tts.piper import PiperEngine

        piper = tts.piper
        return PiperEngine(
            resolve_piper_voices(config.models.dir, piper.voices, piper.voice),
            voice=piper.voice,
            length_scale=piper.length_scale,
            noise_scale=piper.noise_scale if piper.noise_scale >= 0 else None,
            noise_w_scale=piper.noise_w_scale if piper.noise_w_scale >= 0 else None,
            cpu_threads=piper.cpu_threads,
        )
    if name == "openai":
        from app.tts.openai import OpenAiTtsEngine

        vendor = tts.openai
        return OpenAiTtsEngine(
            vendor.url,
            vendor.model,
            voice=vendor.voice,
            api_key=_api_key(vendor.api_key, vendor.api_key_env, environ),
            speed=vendor.speed,
            timeout_s=vendor.first_result_ms / 1000,
        )
    raise StartupError(f"tts.engine: unknown engine {name!r}")


@dataclass
class Server:
    """Everything a running Switchboard holds; `close()` releases it in the right order."""

    config: Config
    dialplans: dict[str, Dialplan]
    routes: RouteTable
    asr: AsrEngine
    tts: TtsEngine
    recorder: CallRecorder
    state: LiveState
    bus: EventBus
    agent: object | None = None
    webhooks: WebhookClient = field(default_factory=WebhookClient)
    chat: ChatClient = field(default_factory=ChatClient)
    prompt_cache: PromptCache | None = None
    security: SecurityPolicy = field(default_factory=SecurityPolicy)
    metrics: Metrics | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)
    _draining: threading.Event = field(default_factory=threading.Event)

    @property
    def draining(self) -> bool:
        """True from the first SIGTERM (or `switchboard drain`) on: new calls get 503 and
        the server is not ready for traffic, while the calls in progress go on."""
        return self._draining.is_set()

    def begin_drain(self) -> None:
        """Refuse new calls from now on; the calls in progress continue (`app.drain`)."""
        self._draining.set()
        if self.agent is not None:
            self.agent.begin_drain()

    def active_calls(self) -> int:
        """Calls answered (or being answered) and not yet ended on this node."""
        return self.agent.active_call_count() if self.agent is not None else 0

    def reload_dialplans(self) -> bool:
        """Load the dialplans and routes again and switch to them if all are valid.

        Calls in progress keep the `Dialplan` they started with; new calls get the new ones.
        On any error the running set stays and the errors are logged; returns whether it
        switched.
        """
        with self._reload_lock:
            try:
                dialplans, routes = load_plans_and_routes(self.config)
                check_voices(dialplans, self.tts)
            except StartupError as exc:
                log.error("dialplan reload refused, keeping the running set: %s", exc)
                return False
            changed = sorted(
                name
                for name, plan in dialplans.items()
                if name not in self.dialplans or self.dialplans[name].version != plan.version
            )
            self.dialplans, self.routes = dialplans, routes  # each swap is atomic for readers
        log.info(
            "dialplans reloaded: %d loaded, changed or new: %s",
            len(dialplans),
            ", ".join(changed) or "none",
        )
        return True

    def session_config(self) -> SessionConfig:
        vad = self.config.vad
        return SessionConfig(
            endpointer=EndpointerConfig(
                aggressiveness=vad.aggressiveness,
                min_speech_ms=vad.min_speech_ms,
                end_silence_ms=vad.end_silence_ms,
                max_utterance_ms=vad.max_utterance_ms,
                pre_roll_ms=vad.pre_roll_ms,
            ),
            barge_in=BargeInConfig(
                min_speech_ms=vad.barge_in_min_speech_ms,
                echo_margin_db=vad.echo_margin_db,
                pre_roll_ms=vad.pre_roll_ms,
            ),
            hangover=Hangover(
                incomplete_ms=vad.incomplete_silence_ms, complete_ms=vad.complete_silence_ms
            ),
            classifier=classifier_factory(self.config),
            no_input_ms=vad.no_input_ms,
            tts_voice=None,
            recordings_dir=self.config.server.data_dir / "recordings",
        )

    def start_sip(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Start answering calls; `heartbeat` runs on every SIP loop turn (the watchdog)."""
        from app.sip.agent import CallContext, SipAgent

        session_config = self.session_config()

        def new_session(context: CallContext) -> CallSession:
            services = CallServices(
                self.webhooks, self.chat, context.transfer, prompt_cache=self.prompt_cache
            )
            return CallSession(
                call_id=context.call_id,
                dialplan=self.dialplans[context.dialplan],  # this call keeps this version
                asr=self.asr,
                tts=self.tts,
                bus=self.bus,
                config=session_config,
                request_hangup=context.request_hangup,
                variables={"caller": context.from_uri, "dialled": context.dialled},
                services=services,
            )

        sip = self.config.sip
        agent = SipAgent(
            sip,
            admission_factory=lambda active: Admission(
                _CurrentRoutes(self),
                sip.codecs,
                sip.max_calls,
                active,
                retry_after_s=sip.retry_after_s,
                reserve=self._reserve if self.config.state.max_calls else None,
            ),
            session_factory=new_session,
            bus=self.bus,
            heartbeat=heartbeat,
            edge=EdgeFilter(
                self.security,
                on_response=self.metrics.sip_response if self.metrics else None,
                on_refused=self.metrics.edge_refused if self.metrics else None,
            ),
            metrics=self.metrics,
            registrations=self.security.registrations(),
        )
        agent.start()
        self.agent = agent

    def _reserve(self, call_id: str) -> bool:
        """A slot under the cluster-wide cap (`[state] max_calls`), taken at INVITE time."""
        return self.state.reserve(call_id, self.config.state.max_calls)

    def health(self) -> dict[str, object]:
        """What a health check reports: degraded while records are spooled or live state is
        local only (calls go on either way)."""
        state = self.state.status()
        return {
            "degraded": self.recorder.degraded or bool(state["degraded"]),
            "store": {
                "degraded": self.recorder.degraded,
                "spool_depth": self.recorder.spool_depth,
                "dropped": self.recorder.dropped,
            },
            "state": dict(state),
            "active_calls": self.active_calls(),
            "draining": self.draining,  # `switchboard drain` shows the calls left from here
        }

    def close(self, drain_timeout: float = 10.0) -> None:
        if self.agent is not None:
            self.agent.stop(drain_timeout)
            self.agent = None
        self.recorder.close()
        self.state.close()
        self.webhooks.close()
        self.chat.close()
        for engine in (self.asr, self.tts):
            close = getattr(engine, "close", None)
            if close is not None:
                close()


class _CurrentRoutes(RouteTable):
    """The server's route table of the moment, so a reload reaches admission at once."""

    def __init__(self, server: Server) -> None:
        super().__init__(())
        self._server = server

    def lookup(self, user_part: str) -> str | None:
        return self._server.routes.lookup(user_part)


def load_plans_and_routes(config: Config) -> tuple[dict[str, Dialplan], RouteTable]:
    """The dialplans and the routes to them; `StartupError` with every problem found."""
    try:
        dialplans = load_dialplans(config.dialplans.dir)
    except DialplanError as exc:
        raise StartupError("invalid dialplan:\n  " + "\n  ".join(exc.errors)) from None
    if not dialplans:
        raise StartupError(f"no dialplans found in {config.dialplans.dir}")
    try:
        routes = RouteTable.load(config.sip.routes, set(dialplans))
    except RoutesError as exc:
        raise StartupError(str(exc)) from None
    return dialplans, routes


def check_voices(dialplans: dict[str, Dialplan], tts: TtsEngine) -> None:
    """A dialplan's `voice` must be one some TTS engine has; StartupError naming each that is
    not (caught at start-up or reload, not on a call)."""
    unknown = [
        f"dialplan {name}: voice {plan.voice!r} is not a voice of any TTS engine of [tts]"
        for name, plan in sorted(dialplans.items())
        if plan.voice and not tts.has_voice(plan.voice)
    ]
    if unknown:
        raise StartupError("\n  ".join(unknown))


def load_security(config: Config) -> SecurityPolicy:
    """The SIP edge policy of `[sip] security`; a missing file means an open server."""
    try:
        policy = load_policy(config.sip.security, os.environ)
    except SecurityConfigError as exc:
        raise StartupError(str(exc)) from None
    if policy.source is None:
        log.warning(
            "no security file at %s: INVITEs are accepted from any source", config.sip.security
        )
    return policy


def spool_dir(config: Config) -> Path:
    """Where call records wait while the database is unreachable (and across a restart)."""
    return config.server.data_dir / "spool"


def open_recorder(config: Config) -> CallRecorder:
    """The started call recorder. The schema is migrated (or checked, `[store] migrate`) now
    when the database answers; when it does not, the server starts anyway and records are
    spooled until it does: a database outage must not keep calls from being answered."""
    try:
        recorder = CallRecorder(
            config.store.url,
            node=config.server.node,
            spool_dir=spool_dir(config),
            migrate=config.store.migrate,
        )
    except SpoolError as exc:
        raise StartupError(str(exc)) from None
    try:
        found = ensure_schema(recorder.engine, config.store.migrate)
    except SchemaError as exc:
        recorder.close(0)
        raise StartupError(str(exc)) from None
    except SQLAlchemyError as exc:
        log.warning(
            "call-record database %s unreachable at start, spooling records in %s until it "
            "answers: %s",
            redact_url(config.store.url),
            spool_dir(config),
            str(exc).splitlines()[0],
        )
    else:
        log.info("call-record schema at revision %s", found.current)
    recorder.start()
    return recorder


def build_server(config: Config) -> Server:
    """Load everything a call needs; raise `StartupError` naming what is wrong. `auto` engines
    are the best installed ones (`app.models.choose`)."""
    config = choose_engines(config).config
    dialplans, routes = load_plans_and_routes(config)
    security = load_security(config)
    classifier_factory(config)  # a missing VAD model fails here, before any call
    asr = create_asr(config)
    tts = create_tts(config)
    check_voices(dialplans, tts)
    recorder = open_recorder(config)
    state = open_state(
        config.state.url,
        node=config.server.node,
        ttl_s=config.state.ttl_s,
        channel=config.state.channel,
    )
    state.start()
    redactor = Redactor.from_config(config.privacy)
    metrics = Metrics()
    metrics.watch_store(recorder)
    metrics.watch_state(state)
    for service, chain_engine in (("asr", asr), ("tts", tts)):
        metrics.watch_engines(service, [guard for _e, guard in getattr(chain_engine, "chain", ())])
    bus = EventBus([recorder, state, metrics], transform=redactor.redact_event)
    cache_mb = config.tts.prompt_cache_mb
    prompt_cache = PromptCache(cache_mb * 1024 * 1024) if cache_mb else None
    return Server(
        config,
        dialplans,
        routes,
        asr,
        tts,
        recorder,
        state,
        bus,
        prompt_cache=prompt_cache,
        security=security,
        metrics=metrics,
    )


def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then drain (`app.drain`; a second signal stops at once);
    return the process exit code."""
    setup_logging(config.server.log_level, config.server.log_format, config.server.log_sensitive)
    notifier = Notifier()  # systemd Type=notify; does nothing outside systemd
    watchdog = Watchdog(notifier)  # fed by the SIP loop: a hung loop stops the pings
    liveness = Liveness()  # /livez: both loops must keep turning
    sip_beat = liveness.heartbeat("sip_loop", stale_after_s=5.0)
    main_beat = liveness.heartbeat("main_loop", stale_after_s=10.0)
    try:
        server = build_server(config)
        ops = start_ops_listener(server, liveness)  # before SIP: a port in use fails first
        server.start_sip(
            heartbeat=chain(sip_beat.beat, watchdog.feed if watchdog.enabled else None)
        )
    except Exception as exc:  # startup errors are the operator's to fix: say what, not a trace
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    stop = StopSignals()  # SIGINT drains too: a second Ctrl-C stops at once

    def request_stop(signum: int, frame: object) -> None:
        stop.on_signal(signum, frame)

    reload = threading.Event()

    def request_reload(_signum: int, _frame: object) -> None:
        reload.set()  # the reload runs on the main loop below, not inside the signal handler

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    pid_file = write_pid_file(config)
    log.info(
        "switchboard ready: %d dialplan(s) [%s], %s, store %s, state %s",
        len(server.dialplans),
        ", ".join(sorted(server.dialplans)),
        choose_engines(server.config).summary,
        redact_url(config.store.url),
        redact_url(config.state.url),
    )
    notifier.ready(f"answering calls: {len(server.dialplans)} dialplan(s)")
    health = HealthFile(health_file_path(config))

    def tick() -> None:
        """Every turn of the main loop, and of the drain: alive, and the health file."""
        main_beat.beat()
        health.update(server.health())

    while not stop.drain.wait(0.2):
        if reload.is_set():
            reload.clear()
            log.info("SIGHUP: reloading dialplans from %s", config.dialplans.dir)
            server.reload_dialplans()
        tick()
    notifier.stopping(f"draining {server.active_calls()} call(s)")
    timeout_s = config.server.drain_timeout_s
    drain_calls(server, timeout_s, stop.now, on_tick=tick)
    if ops is not None:
        ops.stop()  # /readyz said 503 (draining) while calls finished; nothing to serve now
    server.close()  # hangs up what is left (by "system"), then flushes the records
    _remove(pid_file)
    _remove(health.path)
    log.info("stopped")
    return EXIT_OK


def start_ops_listener(server: Server, liveness: Liveness) -> OpsHttpServer | None:
    """/metrics, /livez and /readyz on `[http]` (None with port 0); a port in use is a
    `StartupError` naming the address."""
    http = server.config.http
    if not http.port or server.metrics is None:
        return None
    readiness = Readiness(server_checks(server), draining=lambda: server.draining)
    try:
        listener = OpsHttpServer(http.bind, http.port, server.metrics, liveness, readiness)
    except ListenerError as exc:
        raise StartupError(str(exc)) from None
    listener.start()
    return listener


def health_file_path(config: Config) -> Path:
    """Where a running server keeps its health (`Server.health()`) for monitoring scripts."""
    return config.server.data_dir / "health.json"


class HealthFile:
    """Writes the server's health to a file every `interval_s` and logs each change of the
    degraded flag once (calls keep working while degraded: records spool, state is local)."""

    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self._interval_s = interval_s
        self._next = 0.0
        self._degraded = False

    def update(self, health: dict[str, object]) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval_s
        degraded = bool(health["degraded"])
        if degraded != self._degraded:
            self._degraded = degraded
            if degraded:
                log.warning("switchboard degraded (calls continue): %s", json.dumps(health))
            else:
                log.warning("switchboard healthy again")
        tmp = self.path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({**health, "at": time.time()}))
            tmp.replace(self.path)


def pid_file_path(config: Config) -> Path:
    """Where a running server writes its process id (`switchboard dialplan reload` reads it)."""
    return config.server.data_dir / "switchboard.pid"


def write_pid_file(config: Config) -> Path:
    path = pid_file_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
