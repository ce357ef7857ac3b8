"""The SIP user agent: one PJSIP endpoint per process, driven by one event-loop thread.

Every pjsua2 call happens on that thread: the thread that creates the endpoint is registered
with PJSIP, and other threads (call workers, signal handlers) ask for work through `post()`.
PJSIP's own media threads only touch `CallAudioPort` and report RFC 2833 keys, which go
straight to the call core's non-blocking `push_dtmf`. Call and port objects stay referenced
until PJSIP is done with them and the call's worker has finished (and, after a bridged
transfer, the outbound leg has ended too); only then does the loop drop them, so no callback
ever reaches a freed object.

A call core may transfer its call (`CallContext.transfer`, blocking, see `app.sip.transfer`);
after a successful transfer the agent owns the call: it hangs up a REFERred caller, and keeps
a bridged one until either leg ends.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pjsua2 as pj

from app.call.events import CallEnded, EventBus
from app.config import SipConfig
from app.dialog.actions import TransferOutcome
from app.media.audio import CALL_RATE, FRAME_MS
from app.ops.logs import sensitive
from app.ops.metrics import rejection_reason
from app.sip import native
from app.sip.admission import Admission, Decision
from app.sip.call import CallRecord, SipCall
from app.sip.digest import DigestAuthenticator
from app.sip.dtmf import normalize_key
from app.sip.edge import EdgeFilter
from app.sip.info import on_info_transaction
from app.sip.port import FrameSink, PortPool
from app.sip.registration import Registration, TrunkRegistrations
from app.sip.sdp import SipRequest, parse_request
from app.sip.security import SecurityPolicy, split_source
from app.sip.transfer import CallTransfer

if TYPE_CHECKING:
    from app.ops.metrics import Metrics

log = logging.getLogger(__name__)

_PJ_CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1"}
_LOOP_POLL_MS = 10
_PJ_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


class SipAgentError(RuntimeError):
    """The SIP stack could not start (port in use, bad bind address, ...)."""


TransferFunction = Callable[[str, str, float], TransferOutcome]
"""`transfer(target_uri, fallback, timeout_s)`: see `CallContext.transfer`."""


def _transfer_unavailable(target: str, fallback: str, timeout_s: float) -> TransferOutcome:
    return TransferOutcome(ok=False, error="transfer is not available for this call")


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a new call's core needs to know about it, and what it may ask of the agent.

    `request_hangup()` returns at once (the hang-up happens on the SIP loop).

    `transfer(target_uri, fallback, timeout_s)` BLOCKS the calling thread (the call's worker;
    never the SIP loop) until the transfer is decided, at most about `timeout_s` + 2 s:
    REFER to `target_uri` (e.g. "sip:agent@pbx.example.com"); if the caller's side rejects it,
    does not answer it within 8 s, or reports the transfer failed, then with fallback
    "bridge" the server calls the target itself and bridges the two calls, with "none" it
    gives up. Returns `TransferOutcome(ok=True, method="refer"|"bridge", status)` or
    `TransferOutcome(ok=False, status, error)` (e.g. status 603, "REFER rejected: 603
    Decline"; "caller hung up"). After ok=True the agent owns the call (the core must not
    request a hang-up); after ok=False the call is as it was, the bot still connected.
    """

    call_id: str
    from_uri: str
    to_uri: str
    dialled: str
    dialplan: str
    request_hangup: Callable[[], None]
    transfer: TransferFunction = _transfer_unavailable


class CallHandle(FrameSink, Protocol):
    """The call core as the agent drives it (implemented by `CallSession`)."""

    def start(self) -> None: ...

    def caller_hung_up(self) -> None: ...

    def is_alive(self) -> bool: ...

    def push_dtmf(self, digit: str) -> None:
        """A key the caller pressed, one of "0123456789*#ABCD", once per press, in order.

        Must not block: it is called from PJSIP's media thread (RFC 2833) or the SIP loop
        (SIP INFO), possibly before `start()`.
        """


SessionFactory = Callable[[CallContext], CallHandle]


class _PjLogWriter(pj.LogWriter):
    """Routes PJSIP's log lines into Python logging (PJSIP logs rarely at the levels we use)."""

    def write(self, entry: pj.LogEntry) -> None:
        with contextlib.suppress(Exception):  # never let logging raise into PJSIP
            logging.getLogger("pjsip").log(
                _PJ_LOG_LEVELS.get(entry.level, logging.DEBUG), entry.msg.rstrip()
            )


class _Account(pj.Account):
    def __init__(self, agent: SipAgent) -> None:
        super().__init__()
        self._agent = agent

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self._agent.on_incoming_call(self, prm)
        except Exception:
            log.exception("incoming call handling failed")

    def onIncomingSubscribe(self, prm: pj.OnIncomingSubscribeParam) -> None:
        """Presence is off: a SUBSCRIBE would otherwise be accepted by PJSIP's presence."""
        prm.code = 403
        prm.reason = "Presence not available"


class _TrunkAccount(_Account):
    """A registered trunk's account: its calls go the main account's way; the outcome of
    each REGISTER goes to the agent's `TrunkRegistrations`."""

    def __init__(self, agent: SipAgent, trunks: TrunkRegistrations, trunk: Registration) -> None:
        super().__init__(agent)
        self._trunks = trunks
        self._trunk = trunk

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        log.debug("incoming call on trunk account %s", self._trunk.name)
        super().onIncomingCall(prm)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        try:
            self._trunks.on_reg_state(self._trunk, prm.code, prm.reason, prm.expiration)
        except Exception:
            log.exception("registration %s: state handling failed", self._trunk.name)


class SipAgent:
    """Answers inbound calls per `Admission` and runs a call core for each accepted one."""

    def __init__(
        self,
        config: SipConfig,
        admission_factory: Callable[[Callable[[], int]], Admission],
        session_factory: SessionFactory,
        bus: EventBus,
        pjsip_log_level: int = 2,
        heartbeat: Callable[[], None] | None = None,
        edge: EdgeFilter | None = None,
        metrics: Metrics | None = None,
        registrations: Sequence[Registration] = (),
    ) -> None:
        """`heartbeat`, when given, is called on every turn of the SIP loop (every ~10 ms
        while it is healthy): a watchdog fed from it notices a hung loop. It must be cheap.
        `metrics` counts rejections (and SIP responses) for /metrics. `registrations`: trunks
        to REGISTER with (see `app.sip.registration`); their calls are handled like any."""
        self._config = config
        self._trunks = TrunkRegistrations(registrations, self.post)
        self._metrics = metrics
        self._heartbeat = heartbeat
        self._edge = edge
        # no edge: an agent embedded without a security policy (tests, tools) transfers freely
        self._policy = edge.policy if edge is not None else SecurityPolicy(transfer_allow=("*",))
        self._digest = DigestAuthenticator()
        self._admission = admission_factory(self.active_call_count)
        self._session_factory = session_factory
        self._bus = bus
        self._pjsip_log_level = pjsip_log_level
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._calls: dict[int, SipCall] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: pj.Endpoint | None = None
        self._account: _Account | None = None
        self._log_writer: _PjLogWriter | None = None
        self._drain_deadline = 0.0
        self._ports = PortPool()

    # ----------------------------------------------------------------- lifecycle (any thread)

    def start(self, timeout: float = 10.0) -> None:
        """Start the endpoint and its loop; raise `SipAgentError` if the transports fail."""
        self._thread = threading.Thread(target=self._run, name="sip-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipAgentError("SIP stack did not start in time")
        if self._startup_error is not None:
            raise SipAgentError(str(self._startup_error)) from self._startup_error

    def stop(self, timeout: float = 10.0) -> None:
        """Hang up every call, wait for them to end (up to `timeout`), destroy the endpoint."""
        if self._thread is None:
            return
        self._drain_deadline = time.monotonic() + timeout
        self._stop_requested.set()
        self._thread.join(timeout + 5.0)
        if self._thread.is_alive():
            log.error("SIP loop did not stop within %.0f s", timeout + 5.0)

    def begin_drain(self) -> None:
        """Refuse new calls from now on (503 with Retry-After) while calls in progress go on
        and the loop keeps serving them; `stop()` later hangs up whatever is left. Any
        thread: it only sets the flag admission reads."""
        self._admission.drain()

    @property
    def draining(self) -> bool:
        return self._admission.draining

    def post(self, command: Callable[[], None]) -> None:
        """Run `command` on the SIP loop thread (the only thread that may call pjsua2)."""
        self._commands.put(command)

    def active_call_count(self) -> int:
        """Calls holding a slot: admitted and not yet disconnected (rejections excluded)."""
        with self._lock:
            return sum(
                1
                for call in self._calls.values()
                if call.record is not None
                and not call.record.rejected
                and not call.record.disconnected
            )

    def registration_status(self) -> dict[str, dict[str, object]]:
        """Per trunk name: {"registered": bool, "code": int, "expires": int} (a copy, any
        thread), for readiness and metrics."""
        return self._trunks.status()

    # ----------------------------------------------------------------- loop thread

    def _run(self) -> None:
        try:
            self._create_endpoint()
        except Exception as exc:
            self._startup_error = exc
            self._destroy_endpoint()
            self._ready.set()
            return
        self._ready.set()
        hung_up_all = False
        try:
            while True:
                self._endpoint.libHandleEvents(_LOOP_POLL_MS)
                self._run_commands()
                self._tick_transfers()
                self._reap_finished_calls()
                if self._heartbeat is not None:
                    self._heartbeat()
                if self._stop_requested.is_set():
                    if not hung_up_all:
                        self._hangup_all()
                        hung_up_all = True
                    if not self._calls or time.monotonic() > self._drain_deadline:
                        break
        except Exception:
            log.exception("SIP loop failed")
        finally:
            self._destroy_endpoint()
            self._stopped.set()

    def _create_endpoint(self) -> None:
        cfg = self._config
        _check_secure_setup(cfg, self._trunks.registrations)  # clear errors, before PJSIP's
        ep = pj.Endpoint()
        self._endpoint = ep
        ep.libCreate()
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.threadCnt = 0  # events are polled by this loop thread alone
        ep_cfg.uaConfig.mainThreadOnly = False
        # room to reject, and for the outbound legs of bridged transfers
        ep_cfg.uaConfig.maxCalls = 2 * cfg.max_calls + max(8, cfg.max_calls // 4)
        ep_cfg.uaConfig.userAgent = cfg.user_agent
        med = ep_cfg.medConfig
        med.clockRate = CALL_RATE
        med.sndClockRate = CALL_RATE
        med.audioFramePtime = FRAME_MS
        med.ptime = FRAME_MS
        med.noVad = True
        med.ecTailLen = 0
        self._log_writer = _PjLogWriter()
        ep_cfg.logConfig.writer = self._log_writer
        ep_cfg.logConfig.level = self._pjsip_log_level
        ep_cfg.logConfig.consoleLevel = self._pjsip_log_level
        ep_cfg.logConfig.msgLogging = self._pjsip_log_level >= 4
        ep_cfg.logConfig.decor = 0
        ep.libInit(ep_cfg)
        pj_max_calls = native.max_calls()
        if pj_max_calls is not None and pj_max_calls < cfg.max_calls:
            log.warning(
                "PJSIP holds at most %d calls at once (PJSUA_MAX_CALLS of this pjsua2 build), "
                "fewer than sip.max_calls=%d: calls beyond that are refused by PJSIP",
                pj_max_calls,
                cfg.max_calls,
            )

        bound = "" if cfg.bind in ("", "0.0.0.0") else cfg.bind
        transports: dict[str, int] = {}  # "udp"/"tcp"/"tls" -> PJSIP transport id
        for kind, port in (
            (pj.PJSIP_TRANSPORT_UDP, cfg.udp_port),
            (pj.PJSIP_TRANSPORT_TCP, cfg.tcp_port),
            (pj.PJSIP_TRANSPORT_TLS, cfg.tls_port),
        ):
            if not port:
                continue
            tcfg = pj.TransportConfig()
            tcfg.port = port
            tcfg.boundAddress = bound
            if cfg.public_address:
                tcfg.publicAddress = cfg.public_address
            if kind == pj.PJSIP_TRANSPORT_TLS:
                tcfg.tlsConfig = _tls_config(cfg)
            name = {pj.PJSIP_TRANSPORT_UDP: "udp", pj.PJSIP_TRANSPORT_TCP: "tcp"}.get(kind, "tls")
            try:
                transports[name] = ep.transportCreate(kind, tcfg)
            except pj.Error as exc:
                raise SipAgentError(
                    f"cannot listen on SIP {name.upper()} {cfg.bind}:{port}: {exc.info()}"
                ) from None
        ep.libStart()
        self._install_edge(ep, bound)
        ep.audDevManager().setNullDev()  # no sound card: the conference bridge runs on a clock
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        for rank, name in enumerate(cfg.codecs):
            ep.codecSetPriority(_PJ_CODEC_IDS[name.upper()], 255 - rank)

        acc_cfg = pj.AccountConfig()
        host = cfg.public_address or bound or "127.0.0.1"
        acc_cfg.idUri = f"sip:switchboard@{host}"
        # features a voice bot does not use are attack surface: presence, ICE/STUN/TURN
        acc_cfg.presConfig.publishEnabled = False
        acc_cfg.natConfig.iceEnabled = False
        acc_cfg.natConfig.turnEnabled = False
        acc_cfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        acc_cfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        acc_cfg.videoConfig.autoTransmitOutgoing = False
        acc_cfg.videoConfig.autoShowIncoming = False
        rtp = acc_cfg.mediaConfig.transportConfig
        rtp.port = cfg.rtp_port
        rtp.portRange = cfg.rtp_port_count
        rtp.boundAddress = bound
        if cfg.public_address:
            rtp.publicAddress = cfg.public_address
        _configure_srtp(acc_cfg.mediaConfig, cfg.srtp)
        self._account = _Account(self)
        self._account.create(acc_cfg, True)

        def trunk_config(registration: Registration) -> pj.AccountConfig:
            """The trunk's registration settings, with the main account's media and NAT."""
            tid = transports[registration.transport]
            trunk = registration.account_config(tid, ep.transportGetInfo(tid).localName)
            trunk.mediaConfig = acc_cfg.mediaConfig
            trunk.natConfig = acc_cfg.natConfig
            trunk.presConfig = acc_cfg.presConfig
            trunk.videoConfig = acc_cfg.videoConfig
            return trunk

        self._trunks.start(trunk_config, lambda trunk: _TrunkAccount(self, self._trunks, trunk))
        log.info(
            "SIP listening on %s udp:%s tcp:%s tls:%s (srtp %s), RTP %d-%d, codecs %s",
            cfg.bind,
            cfg.udp_port or "off",
            cfg.tcp_port or "off",
            cfg.tls_port or "off",
            cfg.srtp,
            cfg.rtp_port,
            cfg.rtp_port + cfg.rtp_port_count - 1,
            ",".join(cfg.codecs),
        )

    def _destroy_endpoint(self) -> None:
        for call in list(self._calls.values()):
            self._drop_transfer(call, "SIP agent stopped")
        with self._lock:
            self._calls.clear()
        self._trunks.close()  # unregisters while the endpoint is still there
        self._account = None
        if self._endpoint is not None:
            self._ports.close()
            try:
                self._endpoint.libDestroy()
            except Exception:
                log.exception("PJSIP shutdown failed")
            self._endpoint = None

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception:
                log.exception("SIP command failed")

    def _hangup_all(self) -> None:
        for call in list(self._calls.values()):
            if call.record is not None and not call.record.disconnected:
                self._hangup(call, by="system")
            if call.transfer is not None:
                call.transfer.hangup_leg()

    def _tick_transfers(self) -> None:
        now = time.monotonic()
        for call in list(self._calls.values()):
            if call.transfer is not None and call.transfer.outcome is None:
                call.transfer.tick(now)

    def _reap_finished_calls(self) -> None:
        """Drop disconnected calls once their worker has ended and their transfer's outbound
        leg is gone too (PJSIP no longer uses any of them)."""
        done = [
            key
            for key, call in self._calls.items()
            if call.record is None
            or (
                call.record.disconnected
                and (call.handle is None or not call.handle.is_alive())
                and (call.transfer is None or call.transfer.finished)
            )
        ]
        if not done:
            return
        with self._lock:
            for key in done:
                call = self._calls.pop(key)
                if call.port is not None:
                    self._ports.release(call.port, call.record.call_id if call.record else "")
                call.port = None
                call.handle = None
                self._drop_transfer(call)  # and with it the outbound leg, if there was one

    @staticmethod
    def _drop_transfer(call: SipCall, reason: str = "") -> None:
        """Release a call's transfer (and its outbound leg) now, on the loop thread."""
        transfer, call.transfer = call.transfer, None
        if transfer is not None:
            if reason:
                transfer.abandon(reason)
            transfer.release()

    # ----------------------------------------------------------------- PJSIP callbacks (loop)

    def on_incoming_call(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        now = time.time()
        call = SipCall(account, prm.callId, self)
        with self._lock:
            self._calls[prm.callId] = call
        info = call.getInfo()
        record = CallRecord(
            call_id=info.callIdString,
            from_uri=info.remoteUri,
            to_uri=info.localUri,
            dialled="",
            source=prm.rdata.srcAddress,
            invited_at=now,
        )
        try:
            request = parse_request(prm.rdata.wholeMsg)
            decision = self._authenticate(request, record) or self._admission.decide(request)
        except ValueError as exc:
            log.warning("malformed INVITE from %s: %s", record.source, exc)
            decision = Decision(400, "Bad Request")
        if decision.accepted:
            decision = self._peer_capacity(record, decision)
        record.dialled = decision.dialled
        call.record = record
        if not decision.accepted:
            self._reject(call, decision)
            return
        record.dialplan = decision.dialplan
        context = CallContext(
            call_id=record.call_id,
            from_uri=record.from_uri,
            to_uri=record.to_uri,
            dialled=record.dialled,
            dialplan=decision.dialplan or "",
            request_hangup=lambda key=prm.callId: self.post(lambda: self._hangup_key(key)),
            transfer=lambda target, fallback, timeout_s, key=prm.callId: self._transfer(
                key, target, fallback, timeout_s
            ),
        )
        try:
            call.handle = self._session_factory(context)
        except Exception:
            log.exception("call %s: could not create its session", record.call_id)
            self._reject(call, Decision(500, "Server Internal Error", record.dialled))
            return
        op = pj.CallOpParam()
        op.statusCode = 200
        op.opt.videoCount = 0  # audio only, whatever the offer
        call.answer(op)
        log.info(
            "call %s from %s to %s -> dialplan %s",
            record.call_id,
            record.from_uri,
            record.dialled,
            record.dialplan,
            extra={"call_id": record.call_id},
        )

    def _authenticate(self, request: SipRequest, record: CallRecord) -> Decision | None:
        """Which peer sent this INVITE; for a peer with credentials, a 401 challenge until it
        proves them (None: go on to admission)."""
        ip, port = split_source(record.source)
        peer = self._policy.peer_for(ip)
        record.peer = peer.name if peer is not None else ""
        if peer is None or not peer.username:
            return None
        result = self._digest.verify(
            request.headers.get("authorization", ""), "INVITE", peer.username, peer.password
        )
        if result == "ok":
            return None
        if result == "failed":
            self._policy.events.event("auth_failed", ip, port, peer=peer.name)
        challenge = self._digest.challenge(stale=result == "stale")
        return Decision(401, "Unauthorized", headers=(challenge,))

    def _peer_capacity(self, record: CallRecord, decision: Decision) -> Decision:
        """503 when the calling peer is at its own cap (`max_calls` of its [[peer]])."""
        peer = next((p for p in self._policy.peers if p.name == record.peer), None)
        if peer is None or not peer.max_calls:
            return decision
        with self._lock:
            active = sum(
                1
                for call in self._calls.values()
                if call.record is not None
                and call.record.peer == peer.name
                and not call.record.rejected
                and not call.record.disconnected
                and call.record is not record
            )
        if active < peer.max_calls:
            return decision
        retry = (("Retry-After", str(self._config.retry_after_s)),)
        return Decision(503, "Service Unavailable", decision.dialled, headers=retry)

    def _install_edge(self, ep: pj.Endpoint, bound: str) -> None:
        """The edge filter before PJSIP's transaction layer (see `app.sip.edge`). Without it
        an ACL cannot be enforced, so then the agent refuses to start."""
        if self._edge is None:
            return
        problem = self._edge.install(lambda: ep.libHandleEvents(10), bound, self._config.udp_port)
        if problem is None:
            log.info("SIP edge: %s", self._policy.describe())
        elif self._policy.open:
            log.warning(
                "SIP edge filter unavailable (%s): no flood limit, no UA blocklist", problem
            )
        else:
            raise SipAgentError(
                f"SIP edge filter unavailable, cannot enforce the peer ACL: {problem}"
            )

    def on_transfer_request(self, call: SipCall, prm: pj.OnCallTransferRequestParam) -> None:
        """A REFER from the far end is refused (403), never dialled by PJSIP on its own; one
        to a target off the `[transfer] allow` list is also a security event (toll fraud)."""
        record = call.record
        target = prm.dstUri
        if record is not None and not self._policy.transfer_allowed(target):
            ip, port = split_source(record.source)
            self._policy.events.event("refer_denied", ip, port, target=target)
        # even an allowed target is not dialled by PJSIP from here: a REFER asks the bot to
        # leave the call, which a dialplan decides; refuse it so the caller's side keeps it
        prm.statusCode = 403

    def _reject(self, call: SipCall, decision: Decision) -> None:
        record = call.record
        assert record is not None
        record.rejected = True
        record.hangup_by = "system"
        op = pj.CallOpParam()
        op.statusCode = decision.status
        op.reason = decision.reason
        for name, value in decision.headers:
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            op.txOption.headers.append(header)
        log.info(
            "call %s from %s to %r rejected: %d %s",
            record.call_id,
            record.source,
            record.dialled,
            decision.status,
            decision.reason,
            extra={"call_id": record.call_id},
        )
        if self._metrics is not None:
            draining = decision.status == 503 and self.draining
            self._metrics.rejected("draining" if draining else rejection_reason(decision.status))
        self._bus.publish(record.started_event())
        self._bus.publish(
            CallEnded(
                record.call_id,
                time.time(),
                _disposition_for(decision.status),
                f"{decision.status} {decision.reason}",
                "system",
            )
        )
        # answer(), not hangup(): inside onIncomingCall PJSIP defers both, and its deferred
        # hangup sends the final response WITHOUT our headers (Retry-After, a challenge)
        # while a deferred answer keeps them (pjsua_call.c process_pending_call_hangup).
        call.answer(op)

    def on_call_media_state(self, call: SipCall) -> None:
        if call.handle is None or call.record is None:
            return
        if call.transfer is not None and call.transfer.on_caller_media():
            return  # bridged to a transfer target: the bot's port stays out
        info = call.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = call.getAudioMedia(index)
            if call.port is None:
                call.port = self._ports.acquire(call.handle)
                log.debug("call %s: audio port %s", call.record.call_id, call.port.name)
            audio.startTransmit(call.port)
            call.port.startTransmit(audio)
            call.record.codec = call.getStreamInfo(index).codecName
            set_codec = getattr(call.handle, "set_codec", None)
            if set_codec is not None:
                set_codec(call.record.codec)
            return

    def on_call_state(self, call: SipCall) -> None:
        record = call.record
        if record is None:
            return
        info = call.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and record.answered_at is None:
            record.answered_at = time.time()
            self._bus.publish(record.started_event())
            if call.handle is not None:
                call.handle.start()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not record.disconnected:
            record.disconnected = True
            if record.rejected:
                return
            if call.transfer is not None:
                call.transfer.on_caller_disconnected()  # may set hangup_by="transfer"
            if not record.hangup_by:
                record.hangup_by = "caller"
            if call.handle is not None:
                call.handle.caller_hung_up()
            cause = f"{info.lastStatusCode} {info.lastReason}".strip()
            answered = record.answered_at is not None
            self._bus.publish(
                CallEnded(
                    record.call_id,
                    time.time(),
                    "ANSWERED" if answered else "NO ANSWER",
                    cause,
                    record.hangup_by,
                )
            )
            extras = "".join(f", {key} {value}" for key, value in record.extras.items())
            log.info(
                "call %s ended (%s, by %s%s)",
                record.call_id,
                cause,
                record.hangup_by,
                extras,
                extra={"call_id": record.call_id},
            )
            if call.info_refusals > 1:
                log.info("call %s: %d INFO requests refused", record.call_id, call.info_refusals)

    # ----------------------------------------------------------------- DTMF

    def on_dtmf_digit(self, call: SipCall, digit: str, via: str) -> None:
        """A key from the caller. Any thread: PJSIP reports RFC 2833 keys on its media thread,
        so this touches no pjsua2 object, only the call core's non-blocking `push_dtmf`."""
        record, handle, transfer = call.record, call.handle, call.transfer
        if record is None or handle is None or record.disconnected:
            return
        key = normalize_key(digit)
        if key is None:
            log.debug("call %s: ignored DTMF event %r (%s)", record.call_id, digit, via)
            return
        if transfer is not None and transfer.bridged:
            transfer.relay_dtmf(key, to_target=True)
            return
        if transfer is not None and transfer.succeeded:
            return  # transferred: the call core is done with this call
        log.debug("call %s: DTMF %s (%s)", record.call_id, sensitive(key), via)
        handle.push_dtmf(key)

    def on_call_tsx_state(self, call: SipCall, prm: pj.OnCallTsxStateParam) -> None:
        """In-dialog transactions: INFO requests (DTMF PJSIP leaves to us) and our REFER."""
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE or call.record is None:
            return
        tsx_event = event.body.tsxState
        tsx = tsx_event.tsx
        if tsx.method == "INFO" and tsx.role == pj.PJSIP_ROLE_UAS:
            on_info_transaction(call, tsx_event, self.on_dtmf_digit)
        elif (
            tsx.method == "REFER"
            and tsx.role == pj.PJSIP_ROLE_UAC
            and tsx.statusCode >= 200
            and call.transfer is not None
        ):
            call.transfer.on_refer_response(tsx.statusCode)

    # ----------------------------------------------------------------- transfers

    def _transfer(self, key: int, target: str, fallback: str, timeout_s: float) -> TransferOutcome:
        """`CallContext.transfer` for the call PJSIP knows as `key` (worker thread, blocks)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("transfer() blocks: call it from the call's worker thread")
        if not self._policy.transfer_allowed(target):
            return TransferOutcome(
                ok=False,
                status=403,
                error=f"transfer target {target} is not on the allowlist ([transfer] allow)",
            )
        transfer = CallTransfer(target, fallback, timeout_s, hangup=self._hangup, post=self.post)
        if self._stop_requested.is_set() or self._stopped.is_set():
            return TransferOutcome(ok=False, error="SIP agent stopping")
        self.post(lambda: self._begin_transfer(key, transfer))
        return transfer.wait()

    def _begin_transfer(self, key: int, transfer: CallTransfer) -> None:
        call = self._calls.get(key)
        if call is None or call.record is None or call.record.disconnected:
            transfer.fail_early("caller hung up")
            return
        previous = call.transfer
        if previous is not None and (previous.outcome is None or not previous.finished):
            transfer.fail_early("another transfer of this call is still in progress")
            return
        if previous is not None and previous.succeeded:
            transfer.fail_early("the call was already transferred")
            return
        if previous is not None:
            previous.release()  # its finished leg goes now, on this thread
        call.transfer = transfer
        transfer.start(call, self._account)

    # ----------------------------------------------------------------- hangups (loop)

    def _hangup_key(self, key: int) -> None:
        call = self._calls.get(key)
        if call is not None:
            self._hangup(call, by="bot")

    def _hangup(self, call: SipCall, by: str) -> None:
        record = call.record
        if record is None or record.disconnected:
            return
        if not record.hangup_by:
            record.hangup_by = by
        op = pj.CallOpParam()
        op.statusCode = 603 if record.answered_at is None else 200
        try:
            call.hangup(op)
        except pj.Error as exc:
            log.warning("call %s: hangup failed: %s", record.call_id, exc.info())


def _disposition_for(status: int) -> str:
    """Map a rejection to an Asterisk CDR disposition."""
    if status in (486, 503, 600):
        return "BUSY"
    return "FAILED"


_SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}


def _configure_srtp(media: pj.AccountMediaConfig, mode: str) -> None:
    """SRTP per `sip.srtp`, keyed by SDES (a=crypto) only: DTLS-SRTP is not offered.

    "optional" takes keys whatever the SIP transport, so SRTP works over UDP too (the keys are
    then readable on the wire: it only stops passive RTP capture); "mandatory" takes them only
    over a secure hop (TLS; secure signalling level 1) and refuses an offer without them.
    """
    media.srtpUse = _SRTP_USE[mode]
    media.srtpSecureSignaling = 1 if mode == "mandatory" else 0
    keyings = pj.IntVector()
    keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
    media.srtpOpt.keyings = keyings


def _tls_config(cfg: SipConfig) -> pj.TlsConfig:
    """TLS 1.2 and newer (the pjsua2 wheel's OpenSSL 1.0.2 has no 1.3: 1.2 only there), our
    certificate; peers are verified against `tls_ca` when it is set (mutual TLS inbound)."""
    tls = pj.TlsConfig()
    tls.certFile = cfg.tls_cert
    tls.privKeyFile = cfg.tls_key
    tls.method = pj.PJSIP_TLSV1_2_METHOD
    tls.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3  # overrides method
    # With no CA list PJSIP logs "Error reading CA certificates from buffer" on every TLS
    # connection; our own certificate as the list silences that and verifies nothing more.
    tls.CaListFile = cfg.tls_ca or cfg.tls_cert
    if cfg.tls_ca:
        tls.verifyClient = True
        tls.requireClientCert = True  # without it a client that sends no certificate passes
        tls.verifyServer = True  # our outbound TLS (trunk registration, transfers) too
    return tls


def _check_secure_setup(cfg: SipConfig, registrations: Sequence[Registration]) -> None:
    """Refuse to start with a message naming the file or setting, rather than PJSIP's code."""
    if cfg.tls_port:
        if not (cfg.tls_cert and cfg.tls_key):
            raise SipAgentError("sip.tls_port is set: sip.tls_cert and sip.tls_key are needed")
        _check_pem("sip.tls_cert", cfg.tls_cert, b"CERTIFICATE-----")
        _check_pem("sip.tls_key", cfg.tls_key, b"PRIVATE KEY-----")
        if cfg.tls_ca:
            _check_pem("sip.tls_ca", cfg.tls_ca, b"CERTIFICATE-----")
    ports = {"udp": cfg.udp_port, "tcp": cfg.tcp_port, "tls": cfg.tls_port}
    for registration in registrations:
        if not ports[registration.transport]:
            raise SipAgentError(
                f"registration {registration.name} uses {registration.transport.upper()}, "
                f"but sip.{registration.transport}_port is 0"
            )


def _check_pem(setting: str, path: str, marker: bytes) -> None:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SipAgentError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in text or marker not in text:
        kind = marker.decode().strip("-").lower()
        raise SipAgentError(f"{setting}: {path} holds no PEM {kind}")
