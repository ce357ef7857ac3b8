"""The SIP edge: a PJSIP module, registered through ctypes, that sees every request first.

pjsua2 hands Python only INVITEs that PJSIP has already taken up (a call object exists); the
OPTIONS, REGISTER and INVITE floods of a scanner never reach it. A `pjsip_module` with a
priority between the transport layer (8) and the transaction layer (16) sees every parsed
request before any transaction or dialog exists, so a banned or unlisted source costs one
callback, and a request can be dropped (nothing sent back) or refused statelessly. The same
module counts the responses the server sends, by status code.

`pjsip_rx_data` is a C struct whose size depends on PJSIP_MAX_PKT_LEN, a compile-time setting
of the wheel. Rather than trust a guess, `install()` calibrates: it sends one OPTIONS to the
server's own UDP port from a socket it knows, and finds the offsets at which PJSIP put that
socket's address, port and the message. If calibration fails the edge is not installed and
`install()` says why (the server refuses to start when an ACL depends on it).

Callbacks run on the SIP loop thread (PJSIP's only polling thread); they never raise into C.
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.sip.security import SecurityPolicy, read_request

log = logging.getLogger(__name__)

PRIORITY = 9  # after the transport layer (8), before the transaction layer (16)
_PKT_LEN_CANDIDATES = (2000, 4000, 6000, 8000, 12288, 16000, 32000, 65536)
_CALIBRATION_TIMEOUT_S = 2.0
_SWEEP_EVERY_S = 30.0

_RX_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_TX_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


class _PjsipModule(ctypes.Structure):
    """`struct pjsip_module` (pjsip/sip_module.h)."""

    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RX_CALLBACK),
        ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", _TX_CALLBACK),
        ("on_tsx_state", ctypes.c_void_p),
    ]


class _IoqueueOpKey(ctypes.Structure):
    _fields_ = [
        ("internal", ctypes.c_void_p * 32),
        ("activesock_data", ctypes.c_void_p),
        ("user_data", ctypes.c_void_p),
    ]


class _RxTpInfo(ctypes.Structure):
    """`pjsip_rx_data.tp_info`; its `op_key.rdata` points back at the rdata itself."""

    _fields_ = [
        ("pool", ctypes.c_void_p),
        ("transport", ctypes.c_void_p),
        ("tp_data", ctypes.c_void_p),
        ("op_key", _IoqueueOpKey),
        ("rdata", ctypes.c_void_p),
    ]


class _SockAddr(ctypes.Union):
    _fields_ = [("words", ctypes.c_uint32 * 7)]  # pj_sockaddr: 28 bytes, 4-aligned


def _pkt_info(packet_len: int) -> type[ctypes.Structure]:
    """`pjsip_rx_data.pkt_info` for a PJSIP built with PJSIP_MAX_PKT_LEN = `packet_len`."""

    class _PktInfo(ctypes.Structure):
        _fields_ = [
            ("sec", ctypes.c_long),
            ("msec", ctypes.c_long),
            ("packet", ctypes.c_char * packet_len),
            ("zero", ctypes.c_uint32),
            ("len", ctypes.c_ssize_t),
            ("src_addr", _SockAddr),
            ("src_addr_len", ctypes.c_int),
            ("src_name", ctypes.c_char * 46),
            ("src_port", ctypes.c_int),
        ]

    return _PktInfo


@dataclass(frozen=True, slots=True)
class _Layout:
    """Byte offsets into `pjsip_rx_data` for this build of PJSIP."""

    packet: int
    packet_len: int
    src_name: int
    src_port: int
    msg_buf: int

    @classmethod
    def for_packet_len(cls, packet_len: int) -> _Layout:
        pkt = _pkt_info(packet_len)
        base = ctypes.sizeof(_RxTpInfo)
        base += -base % ctypes.alignment(pkt)
        msg_info = base + ctypes.sizeof(pkt)
        msg_info += -msg_info % ctypes.sizeof(ctypes.c_void_p)
        return cls(
            packet=base + pkt.packet.offset,
            packet_len=packet_len,
            src_name=base + pkt.src_name.offset,
            src_port=base + pkt.src_port.offset,
            msg_buf=msg_info,
        )


def _read_source(rdata: int, layout: _Layout) -> tuple[str, int]:
    name = ctypes.string_at(rdata + layout.src_name)  # NUL-terminated in a 46-byte field
    port = ctypes.c_int.from_address(rdata + layout.src_port).value
    return name.decode("ascii", "replace"), port


def _read_message(rdata: int, layout: _Layout) -> bytes:
    buf = ctypes.c_void_p.from_address(rdata + layout.msg_buf).value
    length = ctypes.c_int.from_address(
        rdata + layout.msg_buf + ctypes.sizeof(ctypes.c_void_p)
    ).value
    if not buf or not 0 < length <= 65536:
        return b""
    return ctypes.string_at(buf, length)


class EdgeFilter:
    """The installed module. Keep the instance referenced until the endpoint is destroyed:
    PJSIP holds pointers to its struct and callbacks."""

    def __init__(
        self,
        policy: SecurityPolicy,
        on_response: Callable[[int], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        self._on_response = on_response
        self._on_refused = on_refused
        self._lib: ctypes.CDLL | None = None
        self._endpoint = 0
        self._layout: _Layout | None = None
        self._probe: tuple[str, int, bytes] | None = None
        self._probe_seen = False
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        self._module = _PjsipModule()
        self._name = ctypes.create_string_buffer(b"mod-switchboard-edge")
        self._module.name = _PjStr(ctypes.cast(self._name, ctypes.c_char_p), 20)
        self._module.id = -1
        self._module.priority = PRIORITY
        self._module.on_rx_request = _RX_CALLBACK(self._on_rx_request)
        self._module.on_tx_response = _TX_CALLBACK(self._on_tx_response)

    @property
    def active(self) -> bool:
        return self._layout is not None

    # --------------------------------------------------------------------- installing (loop)

    def install(self, poll: Callable[[], None], udp_host: str, udp_port: int) -> str | None:
        """Register the module and calibrate it against our own UDP port; call on the SIP
        loop thread after the transports exist. `poll` runs PJSIP's event loop once. Returns
        None when the edge is active, else why it is not."""
        from app.sip.native import library

        lib = library()
        if lib is None:
            return "PJSIP's C functions are not reachable through ctypes"
        self._lib = lib
        lib.pjsip_endpt_register_module.restype = ctypes.c_int
        lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsip_endpt_respond_stateless.restype = ctypes.c_int
        lib.pjsip_endpt_respond_stateless.argtypes = (
            [ctypes.c_void_p] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 3
        )
        lib.pjsip_tx_data_get_info.restype = ctypes.c_char_p
        lib.pjsip_tx_data_get_info.argtypes = [ctypes.c_void_p]
        self._endpoint = lib.pjsua_get_pjsip_endpt()
        status = lib.pjsip_endpt_register_module(self._endpoint, ctypes.addressof(self._module))
        if status != 0:
            return f"pjsip_endpt_register_module failed ({status})"
        return self._calibrate(poll, udp_host, udp_port)

    def _calibrate(self, poll: Callable[[], None], host: str, port: int) -> str | None:
        target = "127.0.0.1" if host in ("", "0.0.0.0") else host
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((target, 0))
            src_port = sock.getsockname()[1]
            tag = secrets.token_hex(8)
            host_part = f"[{target}]" if family == socket.AF_INET6 else target
            message = (
                f"OPTIONS sip:edge-probe@{host_part}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host_part}:{src_port};branch=z9hG4bK{tag};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:probe@{host_part}>;tag={tag}\r\n"
                f"To: <sip:edge-probe@{host_part}>\r\nCall-ID: edge-probe-{tag}\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            self._probe = (target, src_port, message)
            sock.sendto(message, (target, port))
            deadline = time.monotonic() + _CALIBRATION_TIMEOUT_S
            while not self._probe_seen and time.monotonic() < deadline:
                poll()
        self._probe = None
        if self._layout is None:
            return "could not locate the source address in PJSIP's rx data (unknown build)"
        log.debug("edge calibrated: PJSIP_MAX_PKT_LEN %d", self._layout.packet_len)
        return None

    def _calibrate_on(self, rdata: int) -> bool:
        """True when `rdata` is our probe (and the layout is now known)."""
        assert self._probe is not None
        ip, port, message = self._probe
        tp_info = _RxTpInfo.from_address(rdata)
        if tp_info.rdata != rdata:
            return False  # not the rdata layout we know; calibration fails by timeout
        packet_at = _Layout.for_packet_len(_PKT_LEN_CANDIDATES[0]).packet
        if ctypes.string_at(rdata + packet_at, len(message)) != message:
            return False
        for packet_len in _PKT_LEN_CANDIDATES:  # ascending: never read past the real struct
            layout = _Layout.for_packet_len(packet_len)
            if (
                _read_source(rdata, layout) == (ip, port)
                and _read_message(rdata, layout) == message
            ):
                self._layout = layout
                break
        self._probe_seen = True
        return True

    # --------------------------------------------------------------------- callbacks (loop)

    def _on_rx_request(self, rdata: int | None) -> int:
        try:
            if not rdata:
                return 0
            layout = self._layout
            if layout is None:
                return 1 if self._probe is not None and self._calibrate_on(rdata) else 0
            ip, port = _read_source(rdata, layout)
            request = read_request(ip, port, _read_message(rdata, layout))
            if request is None:
                return 0
            verdict = self.policy.inspect(request)
            self._sweep()
            if verdict.passed:
                return 0
            if self._on_refused is not None:
                self._on_refused(verdict.kind)
            if verdict.action == "reject" and request.method != "ACK":
                self._lib.pjsip_endpt_respond_stateless(
                    self._endpoint, rdata, verdict.status, None, None, None
                )
            return 1  # consumed: no transaction, no dialog, no further module sees it
        except Exception:  # never into C; a failure lets PJSIP handle the request normally
            log.exception("edge filter failed on a request")
            return 0

    def _on_tx_response(self, tdata: int | None) -> int:
        try:
            if tdata and self._on_response is not None and self._lib is not None:
                info = self._lib.pjsip_tx_data_get_info(tdata) or b""
                code = _status_of(info)
                if code:
                    self._on_response(code)
        except Exception:
            log.exception("edge filter failed on a response")
        return 0

    def _sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            self.policy.flood.sweep()


def _status_of(info: bytes) -> int:
    """The status code in PJSIP's tx description, 'Response msg 200/INVITE/cseq=1 (...)'."""
    if not info.startswith(b"Response msg "):
        return 0
    code = info[len(b"Response msg ") :].split(b"/", 1)[0]
    return int(code) if code.isdigit() else 0
