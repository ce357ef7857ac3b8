"""Blind transfer of an answered call: REFER first, the server's own bridged call as fallback.

The call core's worker asks through `CallContext.transfer(target, fallback, timeout_s)` and
blocks in `CallTransfer.wait()`. Everything PJSIP does happens on the SIP loop thread, driven
by the callbacks of the caller's call (REFER response, NOTIFY progress, hang-up), by those of
the outbound bridge leg, and by `tick()`, which the loop calls for the deadlines.

    REFER ──2xx──► ACCEPTED ──NOTIFY 2xx, or caller leaves──► done: ok, "refer" (we hang up)
      │                │
      │ 3xx-6xx,       │ NOTIFY 3xx-6xx
      │ no answer      ▼
      └──────────► failed ──fallback "bridge"──► DIALING ──answered──► BRIDGED: ok, "bridge"
                     │                               │ fails, times out
                     └──fallback "none"──► not ok    └──► not ok

A bridged call lives on after `wait()` returns: the caller's audio and the target's are
connected in PJSIP's conference bridge (the bot's port no longer feeds the caller), and when
either leg ends the agent hangs up the other. The outbound leg stays referenced here until
PJSIP has disconnected it; the agent keeps the caller's call (and so this object) until then.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pjsua2 as pj

from app.dialog.actions import TransferOutcome
from app.sip.dtmf import normalize_key

if TYPE_CHECKING:
    from app.sip.call import SipCall

log = logging.getLogger(__name__)

FALLBACKS = ("bridge", "none")
REFER_ANSWER_S = 8.0
"""How long the caller's side may take to answer the REFER before we call it a failure (PJSIP
itself would wait 32 s, the whole non-INVITE transaction timeout)."""
WORKER_GRACE_S = 2.0
"""How much longer than `timeout_s` the worker waits for the loop before giving up itself."""
MIN_BRIDGE_S = 1.0
"""Below this much time left, a failed REFER is not followed by a bridge attempt."""


class Phase(enum.Enum):
    PENDING = "pending"  # created on the worker, not started by the loop yet
    REFER = "refer"  # REFER sent, no final response yet
    ACCEPTED = "accepted"  # REFER accepted, waiting for the final NOTIFY
    DIALING = "dialing"  # calling the target ourselves
    BRIDGED = "bridged"  # caller and target connected through our conference bridge
    DONE = "done"  # nothing more to do for the transfer itself


class BridgeLeg(pj.Call):
    """Our outbound call to the transfer target; its callbacks only report to the transfer."""

    def __init__(self, account: pj.Account, transfer: CallTransfer) -> None:
        super().__init__(account)
        self.transfer: CallTransfer | None = transfer
        self.confirmed = False
        self.disconnected = False
        self.hangup_sent = False
        self.last_status = 0
        self.last_reason = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            if self.transfer is not None:
                self.transfer.on_leg_state(self)
        except Exception:
            log.exception("bridge leg state handling failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            if self.transfer is not None:
                self.transfer.on_leg_media(self)
        except Exception:
            log.exception("bridge leg media handling failed")

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        try:  # may run on PJSIP's media thread: no pjsua2 calls here
            transfer = self.transfer
            if transfer is not None:
                transfer.relay_dtmf(prm.digit, to_target=False)
        except Exception:
            log.exception("bridge leg DTMF handling failed")


class CallTransfer:
    """One transfer request for one call. Created on the worker, then driven on the loop."""

    def __init__(
        self,
        target: str,
        fallback: str,
        timeout_s: float,
        *,
        hangup: Callable[[SipCall, str], None],
        post: Callable[[Callable[[], None]], None],
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.target = target.strip()
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self._hangup = hangup
        self._post = post
        self._started_at = time.monotonic()
        self._deadline = self._started_at + self.timeout_s
        self._refer_deadline = self._started_at + min(REFER_ANSWER_S, self.timeout_s)
        self.phase = Phase.PENDING
        self.call: SipCall | None = None
        self._account: pj.Account | None = None
        self.leg: BridgeLeg | None = None
        self.refer_status: int | None = None
        self.notify_status: int | None = None
        self._refer_error = ""
        self._refer_note = ""
        self.outcome: TransferOutcome | None = None
        self._resolved = threading.Event()

    # ------------------------------------------------------------ worker thread

    def wait(self) -> TransferOutcome:
        """Block until the transfer has an outcome; never much longer than `timeout_s`."""
        if not self._resolved.wait(self.timeout_s + WORKER_GRACE_S):
            self._post(lambda: self.abandon("transfer timed out"))
            self._resolved.wait(0.5)
        if self.outcome is not None:
            return self.outcome
        return TransferOutcome(ok=False, error="transfer timed out")

    # ------------------------------------------------------------ state seen by the agent

    @property
    def bridged(self) -> bool:
        """Caller and target are (or were, until a leg ended) connected through our bridge."""
        return self.phase is Phase.BRIDGED

    @property
    def succeeded(self) -> bool:
        """The agent owns the call now: the call core must not act on it any more."""
        return self.outcome is not None and self.outcome.ok

    @property
    def finished(self) -> bool:
        """PJSIP no longer needs anything this object holds (the outbound leg)."""
        return self.leg is None or self.leg.disconnected

    # ------------------------------------------------------------ loop thread

    def start(self, call: SipCall, account: pj.Account) -> None:
        """Send the REFER for `call` (on the loop, once the agent has attached us to it)."""
        self.call = call
        self._account = account
        self.phase = Phase.REFER
        log.info("call %s: transferring to %s (fallback %s)", self._id, self.target, self.fallback)
        try:
            call.xfer(self.target, pj.CallOpParam())
        except pj.Error as exc:
            self._refer_failed(None, f"REFER not sent: {exc.reason or exc.info()}")

    def fail_early(self, error: str) -> None:
        """The transfer could not even start (the caller is gone, another transfer runs)."""
        self.phase = Phase.DONE
        self._resolve(TransferOutcome(ok=False, error=error))

    def on_refer_response(self, status: int) -> None:
        """The final response to our REFER, from the transaction (for the record)."""
        if self.refer_status is None:
            self.refer_status = status

    def on_transfer_status(self, code: int, reason: str, final: bool) -> None:
        """PJSIP's `onCallTransferStatus`: the REFER's answer, then each NOTIFY's sipfrag.

        PJSIP reports a 2xx to the REFER as "100 Accepted" (not final), a rejected REFER with
        its status (final), and each NOTIFY with the sipfrag's status line (final when the
        subscription ends).
        """
        if self.phase is Phase.REFER:
            if code >= 300:
                self.refer_status = code
                self._refer_failed(code, f"REFER rejected: {code} {reason}".strip())
                return
            if self.refer_status is None:
                self.refer_status = 202
            self.phase = Phase.ACCEPTED
            if 200 <= code < 300 and code != 202:  # a sipfrag already (unusual, but final)
                self._refer_succeeded(code)
            return
        if self.phase is not Phase.ACCEPTED:
            return  # late NOTIFYs after we gave up or moved on to a bridge
        self.notify_status = code
        if 200 <= code < 300:
            self._refer_succeeded(code)
        elif code >= 300:
            self._refer_failed(code, f"transfer failed: {code} {reason}".strip())
        elif final:
            self._refer_failed(code, f"transfer ended without a final status ({code})")

    def on_caller_disconnected(self) -> None:
        """The caller's leg is gone (BYE from them, or our hang-up)."""
        record = self.call.record if self.call is not None else None
        if self.phase is Phase.ACCEPTED:
            # REFER accepted and then the transferee left: the usual end of a blind transfer.
            if record is not None and not record.hangup_by:
                record.hangup_by = "transfer"
            self._refer_succeeded(self.refer_status or 202, via_bye=True)
        elif self.phase in (Phase.PENDING, Phase.REFER):
            self.phase = Phase.DONE
            status = self.refer_status
            self._resolve(TransferOutcome(ok=False, status=status, error="caller hung up"))
        elif self.phase is Phase.DIALING:
            self.phase = Phase.DONE
            self._hangup_leg()
            self._resolve(TransferOutcome(ok=False, error="caller hung up"))
        elif self.phase is Phase.BRIDGED:
            self._hangup_leg()

    def on_caller_media(self) -> bool:
        """The caller's media changed (e.g. a re-INVITE). True when the bot must stay off it
        (the call is transferred: bridged, or being hung up)."""
        if self.phase is Phase.BRIDGED:
            self._connect_audio()
        return self.succeeded

    def on_leg_state(self, leg: BridgeLeg) -> None:
        info = leg.getInfo()
        leg.last_status, leg.last_reason = info.lastStatusCode, info.lastReason
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            leg.confirmed = True
            self._try_bridge()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not leg.disconnected:
            leg.disconnected = True
            self._on_leg_ended(leg)

    def on_leg_media(self, leg: BridgeLeg) -> None:
        if self.phase is Phase.DIALING:
            self._try_bridge()
        elif self.phase is Phase.BRIDGED:
            self._connect_audio()

    def relay_dtmf(self, digit: str, to_target: bool) -> None:
        """Pass a key pressed on one bridged leg to the other (any thread: posts to the loop)."""
        key = normalize_key(digit)
        if self.phase is not Phase.BRIDGED or key is None:
            return
        self._post(lambda: self._dial_dtmf(key, to_target))

    def tick(self, now: float) -> None:
        """Deadlines, checked by the loop on every turn while the transfer is undecided."""
        if self.phase is Phase.REFER and now > self._refer_deadline:
            waited = self._refer_deadline - self._started_at
            self._refer_failed(None, f"REFER not answered in {waited:.0f} s")
        elif self.phase is Phase.ACCEPTED and now > self._deadline:
            self.phase = Phase.DONE
            self._resolve(
                TransferOutcome(
                    ok=False,
                    status=self.notify_status or self.refer_status,
                    error=f"REFER accepted, but no result in {self.timeout_s:.0f} s",
                )
            )
        elif self.phase is Phase.DIALING and now > self._deadline:
            self.phase = Phase.DONE
            self._hangup_leg()
            self._resolve(
                self._failure(None, f"bridge call not answered in {self.timeout_s:.0f} s")
            )

    def abandon(self, error: str) -> None:
        """Stop an undecided transfer (the worker gave up waiting, or the agent is stopping)."""
        if self.outcome is not None:
            return
        if self.phase is Phase.DIALING:
            self._hangup_leg()
        self.phase = Phase.DONE
        self._resolve(TransferOutcome(ok=False, error=error))

    def hangup_leg(self) -> None:
        """Hang up the outbound leg if it is up (agent shutdown)."""
        self._hangup_leg()

    def release(self) -> None:
        """Drop the outbound leg and the caller's call, on the loop, when the agent reaps the
        call. They refer to each other through this object, so without this the garbage
        collector would destroy them later, on any thread, maybe after PJSIP is gone."""
        leg, self.leg, self.call = self.leg, None, None
        if leg is not None:
            leg.transfer = None

    # ------------------------------------------------------------ internals (loop thread)

    @property
    def _id(self) -> str:
        record = self.call.record if self.call is not None else None
        return record.call_id if record is not None else "?"

    def _note(self, text: str) -> None:
        """`record.extras["transfer"]`, logged when the call ends: "refer:<target> 202/200",
        "refer:<target> 603 failed, bridge 200", "refer:<target> - failed, bridge 486 failed"."""
        record = self.call.record if self.call is not None else None
        if record is not None:
            record.extras["transfer"] = text

    def _resolve(self, outcome: TransferOutcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self._resolved.set()
        elapsed = time.monotonic() - self._started_at
        if outcome.ok:
            log.info(
                "call %s: transferred to %s by %s (%s) in %.1f s",
                self._id, self.target, outcome.method, outcome.status, elapsed,
            )  # fmt: skip
        else:
            log.info(
                "call %s: transfer to %s failed after %.1f s: %s",
                self._id, self.target, elapsed, outcome.error,
            )  # fmt: skip

    def _refer_succeeded(self, status: int, via_bye: bool = False) -> None:
        self.phase = Phase.DONE
        final = "bye" if via_bye else str(status)
        self._note(f"refer:{self.target} {self.refer_status or 202}/{final}")
        self._resolve(TransferOutcome(ok=True, method="refer", status=status))
        call = self.call
        if call is not None and call.record is not None and not call.record.disconnected:
            self._hangup(call, "transfer")

    def _refer_failed(self, status: int | None, error: str) -> None:
        self.phase = Phase.DONE
        self._refer_error = error
        self._refer_note = f"refer:{self.target} {status if status is not None else '-'} failed"
        self._note(self._refer_note)
        call = self.call
        caller_up = call is not None and call.record is not None and not call.record.disconnected
        time_left = self._deadline - time.monotonic()
        if self.fallback == "bridge" and caller_up and time_left >= MIN_BRIDGE_S:
            self.phase = Phase.DIALING
            log.info("call %s: %s; calling %s to bridge", self._id, error, self.target)
            self._post(self._dial_target)  # a new call: not from inside this PJSIP callback
            return
        if self.fallback == "bridge" and caller_up:
            error += "; no time left for a bridge call"
        self._resolve(TransferOutcome(ok=False, status=status, error=error))

    def _failure(self, status: int | None, error: str) -> TransferOutcome:
        """A failed bridge attempt, with the REFER's failure in front."""
        self._note(f"{self._refer_note}, bridge {status if status is not None else '-'} failed")
        return TransferOutcome(ok=False, status=status, error=f"{self._refer_error}; {error}")

    def _dial_target(self) -> None:
        if self.phase is not Phase.DIALING or self.call is None:
            return  # the caller left (or the deadline passed) before we got to it
        leg = BridgeLeg(self._account, self)
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        try:
            leg.makeCall(self.target, prm)
        except pj.Error as exc:
            self.phase = Phase.DONE
            reason = exc.reason or exc.info()
            self._resolve(self._failure(None, f"bridge call not placed: {reason}"))
            return
        self.leg = leg

    def _try_bridge(self) -> None:
        leg = self.leg
        if self.phase is not Phase.DIALING or leg is None or not leg.confirmed:
            return
        if not self._connect_audio():
            return  # media not active yet: onCallMediaState will bring us back
        self.phase = Phase.BRIDGED
        self._note(f"{self._refer_note}, bridge {leg.last_status or 200}")
        self._resolve(TransferOutcome(ok=True, method="bridge", status=leg.last_status or 200))

    def _connect_audio(self) -> bool:
        """Caller audio <-> target audio; the bot's port cut off from the caller."""
        call, leg = self.call, self.leg
        if call is None or leg is None or leg.disconnected:
            return False
        try:
            caller_audio = call.getAudioMedia(-1)
            target_audio = leg.getAudioMedia(-1)
        except pj.Error:
            return False
        port = call.port
        if port is not None:
            with contextlib.suppress(pj.Error):  # not connected (any more): fine
                port.stopTransmit(caller_audio)
            with contextlib.suppress(pj.Error):
                caller_audio.stopTransmit(port)
        caller_audio.startTransmit(target_audio)
        target_audio.startTransmit(caller_audio)
        return True

    def _on_leg_ended(self, leg: BridgeLeg) -> None:
        status, reason = leg.last_status, leg.last_reason
        log.debug("call %s: bridge leg to %s ended: %s %s", self._id, self.target, status, reason)
        if self.phase is Phase.DIALING:
            self.phase = Phase.DONE
            self._resolve(self._failure(status, f"bridge call failed: {status} {reason}".strip()))
        elif self.phase is Phase.BRIDGED:
            self.phase = Phase.DONE
            call = self.call
            if call is not None and call.record is not None and not call.record.disconnected:
                log.info("call %s: transfer target hung up (%s %s)", self._id, status, reason)
                self._hangup(call, "transfer")

    def _hangup_leg(self) -> None:
        leg = self.leg
        if leg is None or leg.disconnected or leg.hangup_sent:
            return
        leg.hangup_sent = True
        try:
            leg.hangup(pj.CallOpParam())
        except pj.Error as exc:
            log.warning("call %s: bridge leg hangup failed: %s", self._id, exc.info())

    def _dial_dtmf(self, digit: str, to_target: bool) -> None:
        destination = self.leg if to_target else self.call
        if self.phase is not Phase.BRIDGED or destination is None:
            return
        try:
            destination.dialDtmf(digit)
        except pj.Error as exc:
            log.debug("call %s: DTMF %s not relayed: %s", self._id, digit, exc.info())
