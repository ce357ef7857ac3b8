"""`switchboard serve`: wires config, engines, dialplans, records and the SIP agent together.

Heavy resources (ASR model, TTS engine) are created once here and shared by every call; each
call gets a light `CallSession`. Records and live state are observers of call events.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from app.asr.base import AsrEngine
from app.call.endpointing import EndpointerConfig
from app.call.events import EventBus
from app.call.session import CallSession, SessionConfig
from app.config import Config, redact_url
from app.dialog.dialplan import Dialplan, DialplanError, load_dialplans
from app.sip.admission import Admission
from app.sip.routes import RoutesError, RouteTable
from app.state import open_state
from app.state.base import LiveState
from app.store.recorder import CallRecorder
from app.tts.base import TtsEngine

log = logging.getLogger("switchboard")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_CONFIG = 2


class StartupError(RuntimeError):
    """The server cannot start; the message says what to fix."""


def create_asr(config: Config) -> AsrEngine:
    name = config.asr.engine
    if name == "pocketsphinx":
        from app.asr.pocketsphinx import PocketSphinxEngine

        return PocketSphinxEngine()
    raise StartupError(f"asr.engine: unknown engine {name!r} (available: pocketsphinx)")


def create_tts(config: Config) -> TtsEngine:
    name = config.tts.engine
    if name == "espeak":
        from app.tts.espeak import EspeakEngine

        return EspeakEngine(voice=config.tts.voice, words_per_minute=config.tts.words_per_minute)
    raise StartupError(f"tts.engine: unknown engine {name!r} (available: espeak)")


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
            no_input_ms=vad.no_input_ms,
            tts_voice=self.config.tts.voice,
        )

    def start_sip(self) -> None:
        from app.sip.agent import CallContext, SipAgent

        session_config = self.session_config()

        def new_session(context: CallContext) -> CallSession:
            return CallSession(
                call_id=context.call_id,
                dialplan=self.dialplans[context.dialplan],
                asr=self.asr,
                tts=self.tts,
                bus=self.bus,
                config=session_config,
                request_hangup=context.request_hangup,
                variables={"caller": context.from_uri, "dialled": context.dialled},
            )

        sip = self.config.sip
        agent = SipAgent(
            sip,
            admission_factory=lambda active: Admission(
                self.routes, sip.codecs, sip.max_calls, active
            ),
            session_factory=new_session,
            bus=self.bus,
        )
        agent.start()
        self.agent = agent

    def close(self, drain_timeout: float = 10.0) -> None:
        if self.agent is not None:
            self.agent.stop(drain_timeout)
            self.agent = None
        self.recorder.close()
        self.state.close()


def build_server(config: Config) -> Server:
    """Load everything a call needs; raise `StartupError` naming what is wrong."""
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
    asr = create_asr(config)
    tts = create_tts(config)
    recorder = CallRecorder(config.store.url, node=config.server.node)
    recorder.start()
    state = open_state(config.state.url, node=config.server.node)
    bus = EventBus([recorder, state])
    return Server(config, dialplans, routes, asr, tts, recorder, state, bus)


def serve(config: Config) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    logging.basicConfig(
        level=config.server.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = build_server(config)
        server.start_sip()
    except Exception as exc:  # startup errors are the operator's to fix: say what, not a trace
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info(
        "switchboard ready: %d dialplan(s) [%s], store %s, state %s",
        len(server.dialplans),
        ", ".join(sorted(server.dialplans)),
        redact_url(config.store.url),
        redact_url(config.state.url),
    )
    while not stop.wait(1.0):
        pass
    server.close()
    log.info("stopped")
    return EXIT_OK
