"""SIP INFO requests on an answered call: the DTMF ones PJSIP leaves to us, and a log line for
those that were refused.

PJSIP answers `application/dtmf-relay` itself (200 and the key through `onDtmfDigit`, or 400
Bad Request for a body it cannot read). An `application/dtmf` INFO (a bare key) it would
answer 500, so we read and answer it here, while PJSIP still holds its transaction: 200 and
the key to the call core, or 400 Bad Request when the body is not one key. Any INFO answered
with an error is logged once per call (then only counted), never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import pjsua2 as pj

from app.sip import native
from app.sip.dtmf import DTMF_BARE, DtmfBodyError, content_type, parse_dtmf_body
from app.sip.sdp import parse_request

if TYPE_CHECKING:
    from app.sip.call import SipCall

log = logging.getLogger(__name__)

DeliverKey = Callable[["SipCall", str, str], None]
"""(call, key, "info"): hands a key to the call core."""


def on_info_transaction(call: SipCall, tsx_event: pj.TsxStateEvent, deliver: DeliverKey) -> None:
    """An incoming INFO's transaction changed state (loop thread, from `onCallTsxState`)."""
    tsx = tsx_event.tsx
    if tsx.state == pj.PJSIP_TSX_STATE_TRYING and tsx_event.type == pj.PJSIP_EVENT_RX_MSG:
        _on_request(call, tsx, tsx_event.src.rdata, deliver)
    elif tsx.state == pj.PJSIP_TSX_STATE_COMPLETED and tsx.statusCode >= 300:
        _on_refused(call, tsx.statusCode, tsx.statusText)


def _on_request(
    call: SipCall, tsx: pj.SipTransaction, rdata: pj.SipRxData, deliver: DeliverKey
) -> None:
    try:
        request = parse_request(rdata.wholeMsg)
    except ValueError:
        return
    kind = content_type(request.headers.get("content-type", ""))
    call.last_info = f"{kind or 'without body'} {request.body[:40]!r}"
    if kind != DTMF_BARE:
        return  # dtmf-relay: PJSIP's; anything else: PJSIP's 500
    try:
        key = parse_dtmf_body(request.body)
    except DtmfBodyError:
        native.answer_request(tsx, rdata, 400)  # our error answer is logged in _on_refused
        return
    native.answer_request(tsx, rdata, 200)
    deliver(call, key, "info")


def _on_refused(call: SipCall, status: int, reason: str) -> None:
    call.info_refusals += 1
    if call.info_refusals == 1 and call.record is not None:
        log.warning(
            "call %s: INFO %s answered %d %s and ignored (further ones are only counted)",
            call.record.call_id,
            call.last_info,
            status,
            reason,
        )
