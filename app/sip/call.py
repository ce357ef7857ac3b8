"""A pjsua2 Call whose callbacks only hand events to the agent.

PJSIP calls these from the agent's event-loop thread. They do no business work (STYLE.md: keep
PJSIP callbacks tiny) and never let an exception escape into C++, which would abort the process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pjsua2 as pj

from app.call.events import CallStarted

if TYPE_CHECKING:
    from app.sip.agent import CallHandle, SipAgent
    from app.sip.port import CallAudioPort
    from app.sip.transfer import CallTransfer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CallRecord:
    """What the agent knows about one call, kept from INVITE to the last cleanup."""

    call_id: str
    from_uri: str
    to_uri: str
    dialled: str
    source: str
    invited_at: float
    dialplan: str | None = None
    peer: str = ""
    """The `[[peer]]` of security.toml the INVITE came from ("" for none)."""
    codec: str = ""
    answered_at: float | None = None
    rejected: bool = False
    hangup_by: str = ""
    disconnected: bool = False
    extras: dict[str, str] = field(default_factory=dict)

    def started_event(self) -> CallStarted:
        """The record's `CallStarted` (answered_at None while unanswered or rejected)."""
        return CallStarted(
            self.call_id,
            self.from_uri,
            self.to_uri,
            self.dialled,
            self.dialplan or "",
            self.codec,
            self.invited_at,
            self.answered_at,
            self.source,
        )


class SipCall(pj.Call):
    """Owns, for as long as PJSIP may use them, the call's audio port, core handle and
    transfer (which holds the outbound leg of a bridged transfer)."""

    def __init__(self, account: pj.Account, pj_call_id: int, agent: SipAgent) -> None:
        super().__init__(account, pj_call_id)
        self.agent = agent
        self.record: CallRecord | None = None
        self.handle: CallHandle | None = None
        self.port: CallAudioPort | None = None
        self.transfer: CallTransfer | None = None
        self.last_info = ""
        """Content type and start of the body of the INFO being processed (for its log)."""
        self.info_refusals = 0

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            self.agent.on_call_state(self)
        except Exception:
            log.exception("call state handling failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            self.agent.on_call_media_state(self)
        except Exception:
            log.exception("call media handling failed")

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        """A key: RFC 2833 (on PJSIP's media thread) or SIP INFO dtmf-relay (loop thread)."""
        try:
            via = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
            self.agent.on_dtmf_digit(self, prm.digit, via)
        except Exception:
            log.exception("DTMF handling failed")

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        try:
            self.agent.on_call_tsx_state(self, prm)
        except Exception:
            log.exception("call transaction handling failed")

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        """A REFER from the far end. Unless answered here PJSIP accepts it (202) and dials
        the target itself: a toll-fraud door. The agent decides (403 by default)."""
        try:
            self.agent.on_transfer_request(self, prm)
        except Exception:
            prm.statusCode = 403
            log.exception("transfer request handling failed")

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        try:
            if self.transfer is not None:
                self.transfer.on_transfer_status(prm.statusCode, prm.reason, prm.finalNotify)
        except Exception:
            log.exception("transfer status handling failed")
