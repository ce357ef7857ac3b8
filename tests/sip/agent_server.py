"""The real `SipAgent` with a scripted call core, as a subprocess for SIP-layer tests.

Only one PJSIP endpoint may exist per process, so tests run the agent here and talk to it
over pipes (the client side is `tests.sip.agent_process.AgentProcess`):

- stdout, one JSON object per line: {"event": "ready", "port": P}, then per call "call",
  "started", "dtmf" (with "digit"), "transfer" (the `TransferOutcome` fields and
  "elapsed_s"), "caller_hung_up" (with "bot_frames_after_transfer": how many frames the
  bridge still took from the bot after a successful transfer), "worker_done", and "ended"
  (the `CallEnded` fields).
- stdin, one JSON command per line: {"cmd": "transfer", "call_id": ID, "target": URI,
  "fallback": "bridge"|"none", "timeout_s": S}, {"cmd": "hangup", "call_id": ID},
  {"cmd": "registration_status"} (answered by a "registration_status" event with "status":
  `SipAgent.registration_status()`), {"cmd": "quit"}.
- stderr: the agent's and PJSIP's log.

The scripted core (`ScriptedCall`) plays a quiet 440 Hz tone, records keys and, like
`CallSession`, ends its worker after a transfer, asking for a hang-up when it failed.
Every dialled number is accepted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import re
import struct
import sys
import threading
import time

from app.call.events import CallEnded, CallEvent, EventBus
from app.config import SipConfig
from app.sip.admission import Admission
from app.sip.agent import CallContext, SipAgent, SipAgentError
from app.sip.registration import Registration
from app.sip.routes import Route, RouteTable

_TONE = b"".join(
    struct.pack("<h", int(1000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(160)
)  # 20 ms of 440 Hz at 8 kHz: an integer number of periods, so frames join seamlessly

_out_lock = threading.Lock()


def emit(event: str, **fields: object) -> None:
    """One JSON line on stdout (thread-safe)."""
    line = json.dumps({"event": event, "t": time.time(), **fields})
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class ScriptedCall:
    """A fake call core: tone out, keys recorded, transfers and hang-ups on command."""

    def __init__(self, context: CallContext) -> None:
        self.context = context
        self._commands: queue.Queue[dict | None] = queue.Queue()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-call", daemon=True)
        self._pulls = 0  # bot frames taken by PJSIP's conference bridge
        self._pulls_at_transfer: int | None = None

    # media side (PJSIP threads): never blocks
    def push_frame(self, pcm: bytes) -> None:
        pass

    def pull_frame(self) -> bytes | None:
        self._pulls += 1
        return _TONE

    def push_dtmf(self, digit: str) -> None:
        emit("dtmf", call_id=self.context.call_id, digit=digit)

    # control
    def start(self) -> None:
        emit("started", call_id=self.context.call_id)
        self._thread.start()

    def caller_hung_up(self) -> None:
        self._ended.set()
        self._commands.put(None)
        after = None if self._pulls_at_transfer is None else self._pulls - self._pulls_at_transfer
        emit("caller_hung_up", call_id=self.context.call_id, bot_frames_after_transfer=after)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def command(self, command: dict) -> None:
        self._commands.put(command)

    def _run(self) -> None:
        try:
            while not self._ended.is_set():
                command = self._commands.get()
                if command is None:
                    continue
                if command["cmd"] == "hangup":
                    self.context.request_hangup()
                    return
                if command["cmd"] == "transfer":
                    self._transfer(command)
                    return
        finally:
            emit("worker_done", call_id=self.context.call_id)

    def _transfer(self, command: dict) -> None:
        started = time.monotonic()
        outcome = self.context.transfer(
            command["target"], command.get("fallback", "none"), float(command["timeout_s"])
        )
        emit(
            "transfer",
            call_id=self.context.call_id,
            ok=outcome.ok,
            method=outcome.method,
            status=outcome.status,
            error=outcome.error,
            elapsed_s=round(time.monotonic() - started, 3),
        )
        if outcome.ok:
            self._pulls_at_transfer = self._pulls
        elif not self._ended.is_set():
            self.context.request_hangup()  # as CallSession does when its worker ends


class _Observer:
    def on_call_event(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            emit(
                "ended",
                call_id=event.call_id,
                disposition=event.disposition,
                hangup_cause=event.hangup_cause,
                hangup_by=event.hangup_by,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="SIP UDP and TCP port")
    parser.add_argument("--rtp-port", type=int, required=True, help="first of 64 RTP ports")
    parser.add_argument("--pjsip-log-level", type=int, default=3)
    parser.add_argument(
        "--registration", action="append", default=[], help="a trunk to register: JSON fields"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s",
    )
    config = SipConfig(
        bind="127.0.0.1",
        udp_port=args.port,
        tcp_port=args.port,
        rtp_port=args.rtp_port,
        rtp_port_count=64,
        max_calls=2,
    )
    routes = RouteTable([Route(1, "scripted", pattern=re.compile(".+"))])
    calls: dict[str, ScriptedCall] = {}

    def new_call(context: CallContext) -> ScriptedCall:
        call = ScriptedCall(context)
        calls[context.call_id] = call
        emit("call", call_id=context.call_id, from_uri=context.from_uri, dialled=context.dialled)
        return call

    agent = SipAgent(
        config,
        admission_factory=lambda active: Admission(routes, config.codecs, 2, active),
        session_factory=new_call,
        bus=EventBus([_Observer()]),
        pjsip_log_level=args.pjsip_log_level,
        registrations=[Registration(**json.loads(text)) for text in args.registration],
    )
    try:
        agent.start()
    except SipAgentError as exc:
        print(f"cannot start: {exc}", file=sys.stderr, flush=True)
        return 3
    emit("ready", port=args.port)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "registration_status":
            emit("registration_status", status=agent.registration_status())
            continue
        call = calls.get(command.get("call_id", ""))
        if call is None:
            emit("error", message=f"no call {command.get('call_id')!r}")
            continue
        call.command(command)
    agent.stop(timeout=5.0)
    emit("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
