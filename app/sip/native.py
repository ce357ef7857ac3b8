"""The few PJSIP C functions that pjsua2 does not wrap, called through ctypes.

pjsua2 gives no way to answer an in-dialog request that PJSIP itself does not handle (such as
an INFO with `application/dtmf`): unanswered, the dialog layer replies 500. The C functions
that answer it are exported by the very library pjsua2 loaded, so we call them on the
transaction PJSIP hands to `Call.onCallTsxState`, on the SIP loop thread, while PJSIP still
holds that transaction (the callback runs inside PJSIP's processing of the request).

Everything here degrades: if the symbols cannot be found, the functions return False/None and
the caller falls back to PJSIP's default behaviour.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

import pjsua2 as pj

log = logging.getLogger(__name__)


@cache
def library() -> ctypes.CDLL | None:
    try:
        import pjsua2._pjsua2 as binding  # the extension module that embeds PJSIP

        lib = ctypes.CDLL(binding.__file__)
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsua_get_pjsip_endpt.argtypes = []
        lib.pjsip_endpt_create_response.restype = ctypes.c_int
        lib.pjsip_endpt_create_response.argtypes = [
            ctypes.c_void_p,  # pjsip_endpoint*
            ctypes.c_void_p,  # const pjsip_rx_data*
            ctypes.c_int,  # status code
            ctypes.c_void_p,  # const pj_str_t* reason (NULL: the standard one)
            ctypes.POINTER(ctypes.c_void_p),  # pjsip_tx_data** out
        ]
        lib.pjsip_tsx_send_msg.restype = ctypes.c_int
        lib.pjsip_tsx_send_msg.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsua_call_get_max_count.restype = ctypes.c_uint
        lib.pjsua_call_get_max_count.argtypes = []
        return lib
    except (ImportError, OSError, AttributeError) as exc:
        log.warning("PJSIP C functions unavailable (%s): some INFO requests will get 500", exc)
        return None


def _address(swig_pointer: object) -> int | None:
    """The C address behind a pjsua2 `void *` attribute (None when it is NULL)."""
    if swig_pointer is None:
        return None
    try:
        return int(swig_pointer)  # SWIG pointer objects convert to their address
    except (TypeError, ValueError):
        return None


def answer_request(tsx: pj.SipTransaction, rdata: pj.SipRxData, status: int) -> bool:
    """Send a final response with `status` on the incoming request's transaction.

    Only call it from `Call.onCallTsxState` for a UAS transaction in TRYING state with the
    event's `rdata`, on the SIP loop thread. Returns False when it could not be sent (PJSIP
    then answers 500 itself).
    """
    lib = library()
    tsx_ptr = _address(tsx.pjTransaction)
    rdata_ptr = _address(rdata.pjRxData)
    if lib is None or tsx_ptr is None or rdata_ptr is None:
        return False
    tdata = ctypes.c_void_p()
    endpoint = lib.pjsua_get_pjsip_endpt()
    if lib.pjsip_endpt_create_response(endpoint, rdata_ptr, status, None, ctypes.byref(tdata)):
        return False
    return lib.pjsip_tsx_send_msg(tsx_ptr, tdata) == 0


def max_calls() -> int | None:
    """How many calls PJSIP can hold at once (its compile-time cap may be below ours)."""
    lib = library()
    return None if lib is None else int(lib.pjsua_call_get_max_count())
