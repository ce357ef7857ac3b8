"""The SIP edge policy of `sip_config/security.toml`: who may talk to the server, how fast.

Pure Python, so every rule is unit-tested without a SIP stack; `app.sip.edge` applies it to
every request PJSIP receives, before PJSIP's transaction layer sees it, and the agent applies
the per-peer parts (call caps, digest authentication) when an INVITE is admitted.

- Peers (`[[peer]]`, PBXs and trunks) are named sets of source CIDRs. With at least one peer
  configured, requests from any other source are refused (403 or silently dropped, `[acl]
  action`); with none, any source may call (a first run, a lab) and the server says so at
  start.
- Flood limit (`[flood]`): more than `requests` dialog-starting requests (no To tag: what
  scanners and floods send) from one source IP within `window_s` bans that IP for `ban_s`;
  a banned source's packets are dropped unanswered. Peers are exempt unless they opt in.
- User-Agent blocklist (`[user_agents] block`): requests from known scanners are dropped
  unanswered (an answer tells them a SIP server lives here).
- Multipart bodies (`[acl] multipart`): refused with 415 unless allowed. A voice bot needs
  only SDP, and PJSIP 2.15.1's multipart parser has a known out-of-bounds read
  (GHSA-x5pq-qrp4-fmrj, fixed upstream after 2.15.1): refusing here keeps such a body from
  ever reaching it.
- Transfers (`[transfer] allow`): shell-style patterns of target URIs a call may be transferred
  to, by its dialplan or by a REFER from the far end; anything else is refused (no toll fraud
  through REFER).

Every refusal is one structured log line, `SECURITY kind=<kind> src=<ip>:<port> ...`, which
the shipped fail2ban filter matches; repeats from one source are folded into one line per
`LOG_FOLD_S` with a count, so a flood cannot flood the log as well.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.sip.registration import Registration

log = logging.getLogger("switchboard.security")

LOG_FOLD_S = 10.0
DEFAULT_SCANNERS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "sundayddr",
    "iwar",
    "sivus",
    "smap",
    "vaxsipuseragent",
    "vaxipuseragent",
    "pplsip",
    "siparmyknife",
    "sippts",
    "voipbuster",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SecurityConfigError(ValueError):
    """`security.toml` is invalid; the message names the file, table and key."""


@dataclass(frozen=True, slots=True)
class Peer:
    """A PBX or trunk: where its requests come from and what it may do."""

    name: str
    networks: tuple[Network, ...]
    max_calls: int = 0
    """Concurrent calls from this peer (0: only the global cap applies)."""
    username: str = ""
    password: str = ""
    """Inbound digest credentials: when set, this peer's INVITEs must authenticate."""
    flood_exempt: bool = True
    registration: Registration | None = None

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the edge does with a request: pass it on, answer it with `status`, or drop it."""

    action: str  # "pass" | "reject" | "drop"
    kind: str = ""  # the security event kind, e.g. "acl_denied"
    status: int = 0

    @property
    def passed(self) -> bool:
        return self.action == "pass"


PASS = Verdict("pass")


@dataclass
class FloodGuard:
    """Sliding-window request counter per source IP with temporary bans (Kamailio's pike)."""

    requests: int = 16
    window_s: float = 2.0
    ban_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, deque[float]] = field(default_factory=dict)
    _banned: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.requests > 0

    def banned(self, ip: str) -> bool:
        until = self._banned.get(ip)
        if until is None:
            return False
        if self.clock() >= until:
            del self._banned[ip]
            return False
        return True

    def count(self, ip: str) -> bool:
        """Count one request from `ip`; True when this one crosses the limit (ban starts)."""
        now = self.clock()
        seen = self._seen.setdefault(ip, deque())
        seen.append(now)
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        if len(seen) <= self.requests:
            return False
        self._banned[ip] = now + self.ban_s
        del self._seen[ip]
        return True

    def sweep(self) -> None:
        """Forget idle sources (call now and then: a scan from many IPs must not grow memory)."""
        now = self.clock()
        for ip in [
            ip for ip, seen in self._seen.items() if not seen or seen[-1] <= now - self.window_s
        ]:
            del self._seen[ip]
        for ip in [ip for ip, until in self._banned.items() if until <= now]:
            del self._banned[ip]


@dataclass
class SecurityLog:
    """Writes security events, folding repeats of one (kind, source IP) into one line per
    `fold_s` with a count; `on_event(kind)` is told of every event (metrics)."""

    fold_s: float = LOG_FOLD_S
    clock: Callable[[], float] = time.monotonic
    on_event: Callable[[str], None] | None = None
    _last: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def event(self, kind: str, ip: str, port: int, **details: object) -> None:
        if self.on_event is not None:
            self.on_event(kind)
        now = self.clock()
        key = (kind, ip)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.fold_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        folded = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        if len(self._last) > 10_000:  # a scan from many addresses: start folding afresh
            self._last = {key: (now, 0)}
        fields = "".join(f" {name}={_quote(value)}" for name, value in details.items())
        more = f" repeated={folded}" if folded else ""
        log.warning("SECURITY kind=%s src=%s:%d%s%s", kind, ip, port, fields, more)


def _quote(value: object) -> str:
    text = str(value).replace("\n", " ").replace("\r", " ")[:120]
    return f'"{text}"' if (" " in text or not text or '"' in text) else text


@dataclass
class SecurityPolicy:
    """The loaded `security.toml`; `inspect()` runs on the SIP loop thread for every request."""

    peers: tuple[Peer, ...] = ()
    acl_action: str = "reject"  # reject: 403; drop: no answer
    multipart: bool = False
    flood: FloodGuard = field(default_factory=FloodGuard)
    user_agents: tuple[str, ...] = DEFAULT_SCANNERS
    transfer_allow: tuple[str, ...] = ()
    events: SecurityLog = field(default_factory=SecurityLog)
    source: Path | None = None

    @property
    def open(self) -> bool:
        """No peers configured: any source may call."""
        return not self.peers

    def peer_for(self, ip: str) -> Peer | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        return next((peer for peer in self.peers if peer.contains(address)), None)

    def inspect(self, request: EdgeRequest) -> Verdict:
        """The edge's verdict on one request (banned, flooding, scanner, outside the ACL)."""
        ip, port = request.ip, request.port
        if self.flood.enabled and self.flood.banned(ip):
            return Verdict("drop", "banned")
        peer = self.peer_for(ip)
        if (
            self.flood.enabled
            and request.starts_dialog
            and not (peer is not None and peer.flood_exempt)
            and self.flood.count(ip)
        ):
            self.events.event(
                "flood_banned",
                ip,
                port,
                method=request.method,
                limit=f"{self.flood.requests}/{self.flood.window_s:g}s",
                ban_s=f"{self.flood.ban_s:g}",
            )
            return Verdict("drop", "flood_banned")
        agent = request.user_agent.lower()
        if agent and any(scanner in agent for scanner in self.user_agents):
            self.events.event("ua_blocked", ip, port, method=request.method, ua=request.user_agent)
            return Verdict("drop", "ua_blocked")
        if peer is None and not self.open:
            action = "drop" if self.acl_action == "drop" or request.method == "ACK" else "reject"
            self.events.event("acl_denied", ip, port, method=request.method, action=action)
            return Verdict(action, "acl_denied", 403 if action == "reject" else 0)
        if request.multipart and not self.multipart:
            self.events.event("multipart_refused", ip, port, method=request.method)
            return Verdict("reject", "multipart_refused", 415)
        return PASS

    def transfer_allowed(self, target: str) -> bool:
        """May a call be transferred to `target`? Patterns match the whole URI, case-blind."""
        uri = target.strip().strip("<>").lower()
        return any(fnmatch.fnmatchcase(uri, pattern.lower()) for pattern in self.transfer_allow)

    def registrations(self) -> tuple[Registration, ...]:
        return tuple(peer.registration for peer in self.peers if peer.registration is not None)

    def describe(self) -> str:
        """One line for the start-up log."""
        flood = (
            f"flood {self.flood.requests}/{self.flood.window_s:g}s ban {self.flood.ban_s:g}s"
            if self.flood.enabled
            else "flood limit off"
        )
        peers = (
            "no peers: INVITEs accepted from ANY source"
            if self.open
            else f"{len(self.peers)} peer(s) [{', '.join(peer.name for peer in self.peers)}], "
            f"others {'dropped' if self.acl_action == 'drop' else 'get 403'}"
        )
        transfers = ", ".join(self.transfer_allow) or "none"
        agents = f"{len(self.user_agents)} blocked user agents"
        return f"{peers}; {flood}; {agents}; transfers to {transfers}"


@dataclass(frozen=True, slots=True)
class EdgeRequest:
    """The parts of a received request the edge policy looks at."""

    ip: str
    port: int
    method: str
    starts_dialog: bool
    user_agent: str = ""
    multipart: bool = False


def split_source(source: str) -> tuple[str, int]:
    """ "203.0.113.5:5060" or "[2001:db8::1]:5060" -> (ip, port); port 0 when absent."""
    ip, _, port = source.rpartition(":")
    return ip.strip("[]"), int(port) if port.isdigit() else 0


def read_request(ip: str, port: int, message: bytes) -> EdgeRequest | None:
    """Method, User-Agent and whether the To header has a tag, from a raw request (None: not
    a request line PJSIP would accept either; PJSIP deals with it)."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.split(b"\n")
    method = lines[0].split(b" ", 1)[0].strip().decode("ascii", "replace")
    if not method or method.startswith("SIP/"):
        return None
    user_agent = ""
    to_tagged = multipart = False
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"user-agent":
            user_agent = value.strip().decode("utf-8", "replace")
        elif name in (b"to", b"t"):
            to_tagged = b";tag=" in value.lower().replace(b" ", b"")
        elif name in (b"content-type", b"c"):
            multipart = value.strip().lower().startswith(b"multipart/")
    return EdgeRequest(ip, port, method, not to_tagged, user_agent, multipart)


# ------------------------------------------------------------------------- loading the file

_TOP_KEYS = {"acl", "flood", "user_agents", "transfer", "peer"}


def load_policy(
    path: Path,
    environ: Mapping[str, str] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> SecurityPolicy:
    """Read `security.toml`; a missing file is the open default (logged at start by the
    server). Raises `SecurityConfigError` naming the key for anything invalid."""
    environ = os.environ if environ is None else environ
    events = SecurityLog(on_event=on_event)
    if not path.exists():
        return SecurityPolicy(events=events)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SecurityConfigError(f"{path}: {exc}") from None
    where = str(path)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SecurityConfigError(f"{where}: unknown table(s) {', '.join(sorted(unknown))}")
    acl = _table(data, "acl", where)
    flood = _table(data, "flood", where)
    agents = _table(data, "user_agents", where)
    transfer = _table(data, "transfer", where)
    _only(acl, {"action", "multipart"}, f"{where} [acl]")
    _only(flood, {"requests", "window_s", "ban_s"}, f"{where} [flood]")
    _only(agents, {"block", "extra"}, f"{where} [user_agents]")
    _only(transfer, {"allow"}, f"{where} [transfer]")
    action = acl.get("action", "reject")
    if action not in ("reject", "drop"):
        raise SecurityConfigError(f"{where} [acl] action: must be reject or drop, got {action!r}")
    guard = FloodGuard(
        requests=_number(flood, "requests", 16, f"{where} [flood]", int),
        window_s=_number(flood, "window_s", 2.0, f"{where} [flood]", float),
        ban_s=_number(flood, "ban_s", 300.0, f"{where} [flood]", float),
    )
    block = tuple(
        item.lower()
        for item in _strings(agents, "block", DEFAULT_SCANNERS, f"{where} [user_agents]")
    ) + tuple(item.lower() for item in _strings(agents, "extra", (), f"{where} [user_agents]"))
    peers_raw = data.get("peer", [])
    if not isinstance(peers_raw, list):
        raise SecurityConfigError(f"{where}: peer must be an array of tables ([[peer]])")
    peers = tuple(
        _peer(raw, f"{where} [[peer]] #{n}", environ) for n, raw in enumerate(peers_raw, 1)
    )
    names = [peer.name for peer in peers]
    duplicate = {name for name in names if names.count(name) > 1}
    if duplicate:
        raise SecurityConfigError(
            f"{where}: peer name(s) used twice: {', '.join(sorted(duplicate))}"
        )
    return SecurityPolicy(
        peers=peers,
        acl_action=action,
        multipart=bool(acl.get("multipart", False)),
        flood=guard,
        user_agents=block,
        transfer_allow=_strings(transfer, "allow", (), f"{where} [transfer]"),
        events=events,
        source=path,
    )


_PEER_KEYS = {
    "name",
    "cidrs",
    "max_calls",
    "username",
    "password",
    "password_env",
    "flood_exempt",
    "register",
    "register_transport",
    "expires_s",
    "retry_s",
    "realm",
}


def _peer(raw: Any, where: str, environ: Mapping[str, str]) -> Peer:
    if not isinstance(raw, dict):
        raise SecurityConfigError(f"{where}: must be a table")
    _only(raw, _PEER_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SecurityConfigError(f"{where} name: required, a non-empty string")
    where = f"{where} ({name})"
    networks = []
    for cidr in _strings(raw, "cidrs", (), where):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise SecurityConfigError(
                f"{where} cidrs: {cidr!r} is not an address or CIDR"
            ) from None
    if not networks:
        raise SecurityConfigError(f"{where} cidrs: list at least one source address or CIDR")
    password = raw.get("password", "")
    variable = raw.get("password_env", "")
    if variable:
        password = environ.get(variable, "")
        if not password:
            raise SecurityConfigError(
                f"{where} password_env: environment variable {variable} is not set"
            )
    username = raw.get("username", "")
    if bool(username) != bool(password) and "register" not in raw:
        raise SecurityConfigError(f"{where}: username and password go together")
    registration = None
    if "register" in raw:
        from app.sip.registration import Registration

        if not (username and password):
            raise SecurityConfigError(
                f"{where} register: needs username and password (or password_env)"
            )
        transport = raw.get("register_transport", "udp")
        if transport not in ("udp", "tcp", "tls"):
            raise SecurityConfigError(f"{where} register_transport: udp, tcp or tls")
        try:
            registration = Registration(
                name=name,
                registrar=str(raw["register"]),
                username=username,
                password=password,
                realm=str(raw.get("realm", "*")),
                expires_s=_number(raw, "expires_s", 300, where, int),
                retry_s=_number(raw, "retry_s", 30, where, int),
                transport=transport,
            )
        except ValueError as exc:
            raise SecurityConfigError(f"{where}: {exc}") from None
    return Peer(
        name=name,
        networks=tuple(networks),
        max_calls=_number(raw, "max_calls", 0, where, int),
        # a registering trunk authenticates US; inbound digest is for peers that call in
        username=username if registration is None else "",
        password=password if registration is None else "",
        flood_exempt=bool(raw.get("flood_exempt", True)),
        registration=registration,
    )


def _table(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise SecurityConfigError(f"{where}: [{name}] must be a table")
    return table


def _only(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = set(table) - keys
    if unknown:
        raise SecurityConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _number(table: dict[str, Any], key: str, default: Any, where: str, kind: type) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SecurityConfigError(f"{where} {key}: expected a number >= 0, got {value!r}")
    return kind(value)


def _strings(
    table: dict[str, Any], key: str, default: Iterable[str], where: str
) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SecurityConfigError(f"{where} {key}: expected a list of strings")
    return tuple(value)
