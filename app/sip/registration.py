"""Outbound registration to SIP trunks: REGISTER with digest auth, refreshed, retried.

A trunk that sends us calls only while we are registered with it gets one pjsua2 account per
`Registration`. PJSIP does the protocol work: it answers the digest challenge, refreshes the
binding `delayBeforeRefreshSec` before the expiry the registrar granted (PJSIP 2.15.1: never
sooner than 5 s after the answer, and a grant no longer than that delay is only refreshed
after `expires_s`; real registrars grant a minute or more), and after a timeout, a transport
error, 480, 500, 502, 503, 504 or 6xx it retries by itself (`firstRetryIntervalSec`, then
every `retryIntervalSec`, each randomised by +/- `randomRetryIntervalSec`). Other final
failures (403, 404, a 401 to our own credentials) PJSIP treats as permanent; a trunk that
refuses us for a while (an account not yet enabled, a registrar restarted with an old user
list) should not be given up on, so for those we ask again ourselves, after `retry_s` and then
twice as long each time up to `_MAX_OWN_RETRY_S`.

An INVITE whose Request-URI names a trunk account's user lands on that account; it goes to
the agent's `on_incoming_call` exactly like a call on the main account.

Everything that touches pjsua2 runs on the agent's SIP loop thread; `status()` may be read
from any thread. The password goes to PJSIP only: it is never logged nor in any repr.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pjsua2 as pj

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp", "tls")
_PJSIP_RETRIED = frozenset({408, 480, 500, 502, 503, 504})
"""Final REGISTER failures after which pjsua schedules the retry itself (and 6xx)."""
_MAX_OWN_RETRY_S = 900
_REGISTRAR = re.compile(r"^(sips?):(?:[^@;?]*@)?(\[[^\]]+\]|[^:;?]+)(?::(\d+))?([;?].*)?$")

Post = Callable[[Callable[[], None]], None]


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True, slots=True)
class Registration:
    """One trunk we register with: REGISTER `registrar` as `username`, every `expires_s`."""

    name: str
    registrar: str
    """The registrar's SIP URI, e.g. "sip:pbx.example.com" or "sip:10.0.0.5:5070"."""
    username: str
    password: str = field(repr=False)
    realm: str = "*"
    """The digest realm the credentials are for; "*" answers any realm's challenge."""
    expires_s: int = 300
    retry_s: int = 30
    transport: str = "udp"
    contact_user: str = ""
    """User part of our Contact (where the trunk sends calls); empty: `username`."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a registration needs a name")
        match = _REGISTRAR.match(self.registrar)
        if match is None:
            raise ValueError(f"registration {self.name}: registrar must be a sip: or sips: URI")
        if not self.username:
            raise ValueError(f"registration {self.name}: username is empty")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"registration {self.name}: transport must be udp, tcp or tls")
        if match.group(1) == "sips" and self.transport != "tls":
            raise ValueError(f"registration {self.name}: a sips: registrar needs transport tls")
        _positive(f"registration {self.name}: expires_s", self.expires_s)
        _positive(f"registration {self.name}: retry_s", self.retry_s)

    @property
    def domain(self) -> str:
        """The registrar's host: the domain of our address of record."""
        match = _REGISTRAR.match(self.registrar)
        assert match is not None  # checked in __post_init__
        return match.group(2)

    @property
    def refresh_margin_s(self) -> int:
        """How long before the binding runs out PJSIP refreshes it (`delayBeforeRefreshSec`)."""
        return max(1, min(5, self.expires_s // 10))

    @property
    def aor(self) -> str:
        """Our address of record at the trunk (From/To of the REGISTER)."""
        scheme = "sips" if self.registrar.startswith("sips:") else "sip"
        return f"{scheme}:{self.username}@{self.domain}"

    def registrar_uri(self) -> str:
        """`registrar` with a transport parameter for TCP/TLS, so PJSIP connects as asked."""
        if self.transport == "udp" or ";transport=" in self.registrar.lower():
            return self.registrar
        if self.registrar.startswith("sips:"):
            return self.registrar  # sips: is TLS already
        base, question, headers = self.registrar.partition("?")
        return f"{base};transport={self.transport}{question}{headers}"

    def account_config(self, transport_id: int, local_name: str) -> pj.AccountConfig:
        """pjsua2 settings for this trunk's account, bound to our SIP transport
        `transport_id` whose published address is `local_name` ("host:port")."""
        cfg = pj.AccountConfig()
        cfg.idUri = self.aor
        reg = cfg.regConfig
        reg.registrarUri = self.registrar_uri()
        reg.registerOnAdd = True
        reg.timeoutSec = self.expires_s
        reg.delayBeforeRefreshSec = self.refresh_margin_s
        reg.firstRetryIntervalSec = self.retry_s
        reg.retryIntervalSec = self.retry_s
        reg.randomRetryIntervalSec = self.retry_s // 10  # spread a fleet's retries a little
        reg.dropCallsOnFail = False  # a registration hiccup must not cut calls in progress
        sip = cfg.sipConfig
        sip.authCreds.append(pj.AuthCredInfo("digest", self.realm, self.username, 0, self.password))
        sip.transportId = transport_id
        if self.contact_user:
            scheme = "sips" if self.registrar.startswith("sips:") else "sip"
            sip.contactForced = (
                f"<{scheme}:{self.contact_user}@{local_name};transport={self.transport}>"
            )
        return cfg


@dataclass(slots=True)
class _State:
    registered: bool = False
    code: int = 0
    expires: int = 0
    reason: str = ""
    own_retries: int = 0
    timer: threading.Timer | None = None


class TrunkRegistrations:
    """The trunk accounts of one agent: made and dropped on its SIP loop, `status()` anywhere.

    The agent makes the accounts (its `_Account` kind, so a trunk's calls and SUBSCRIBEs are
    handled like the main account's) and forwards their `onRegState` to `on_reg_state`.
    `post` runs a command on the SIP loop thread (`SipAgent.post`): our own retry timers fire
    on timer threads and must not call pjsua2 there.
    """

    def __init__(self, registrations: Sequence[Registration], post: Post) -> None:
        names = [registration.name for registration in registrations]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"registrations named twice: {', '.join(duplicates)}")
        self._registrations = tuple(registrations)
        self._post = post
        self._lock = threading.Lock()
        self._states = {registration.name: _State() for registration in registrations}
        self._accounts: dict[str, pj.Account] = {}
        self._closed = False

    @property
    def registrations(self) -> tuple[Registration, ...]:
        return self._registrations

    def start(
        self,
        configure: Callable[[Registration], pj.AccountConfig],
        make_account: Callable[[Registration], pj.Account],
    ) -> None:
        """Create every trunk account (loop thread); registering starts at once."""
        for registration in self._registrations:
            account = make_account(registration)
            self._accounts[registration.name] = account  # referenced before PJSIP can call it
            try:
                account.create(configure(registration))
            except pj.Error as exc:
                raise ValueError(
                    f"registration {registration.name}: PJSIP refused the account: {exc.info()}"
                ) from None
            log.info(
                "registration %s: registering %s at %s over %s every %d s",
                registration.name,
                registration.aor,
                registration.registrar,
                registration.transport,
                registration.expires_s,
            )

    def close(self) -> None:
        """Stop retrying and drop the accounts (loop thread, before the endpoint goes)."""
        with self._lock:
            self._closed = True
            for state in self._states.values():
                if state.timer is not None:
                    state.timer.cancel()
                    state.timer = None
        self._accounts.clear()  # pjsua2 unregisters each account as it is deleted

    def status(self) -> dict[str, dict[str, object]]:
        """name -> {"registered": bool, "code": last final status (0: none yet), "expires":
        seconds granted by the last successful REGISTER (0 when not registered)}; a copy."""
        with self._lock:
            return {
                name: {"registered": s.registered, "code": s.code, "expires": s.expires}
                for name, s in self._states.items()
            }

    # ----------------------------------------------------------------- loop thread

    def on_reg_state(
        self, registration: Registration, code: int, reason: str, expires: int
    ) -> None:
        """A trunk account's `onRegState`: a final REGISTER outcome (loop thread)."""
        name = registration.name
        registered = 200 <= code < 300 and expires > 0
        with self._lock:
            if self._closed:
                return
            state = self._states[name]
            changed = (state.registered, state.code) != (registered, code)
            state.registered, state.code, state.reason = registered, code, reason
            state.expires = expires if registered else 0
            own_delay = 0
            if registered or 200 <= code < 300:
                state.own_retries = 0
            elif not _pjsip_retries(code):
                own_delay = min(registration.retry_s * 2**state.own_retries, _MAX_OWN_RETRY_S)
                own_delay = max(own_delay, registration.retry_s)
                state.own_retries += 1
                self._schedule(registration, state, own_delay)
        level = logging.INFO if changed else logging.DEBUG
        if registered:
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + expires))
            log.log(level, "registration %s: registered until %s (%d s)", name, until, expires)
            if changed and expires <= max(5, registration.refresh_margin_s):
                log.warning(
                    "registration %s: the registrar granted only %d s; PJSIP refreshes no "
                    "sooner than 5 s after an answer, so the binding may lapse",
                    name,
                    expires,
                )
        elif 200 <= code < 300:
            log.log(level, "registration %s: unregistered", name)
        else:
            delay = own_delay or registration.retry_s
            jitter = 0 if own_delay else registration.retry_s // 10  # PJSIP's randomisation
            spread = f" (+/- {jitter} s)" if jitter else ""
            log.log(
                logging.WARNING if changed else logging.DEBUG,
                "registration %s: failed with %d %s, next retry in %d s%s",
                name,
                code,
                reason,
                delay,
                spread,
            )

    def _schedule(self, registration: Registration, state: _State, delay_s: int) -> None:
        """Register again in `delay_s` (caller holds the lock)."""
        if state.timer is not None:
            state.timer.cancel()
        timer = threading.Timer(delay_s, self._post, args=(lambda: self._retry(registration.name),))
        timer.name = f"register-retry-{registration.name}"
        timer.daemon = True
        state.timer = timer
        timer.start()

    def _retry(self, name: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._states[name].timer = None
        account = self._accounts.get(name)
        if account is None:
            return
        log.debug("registration %s: registering again", name)
        try:
            account.setRegistration(True)
        except pj.Error as exc:
            registration = next(r for r in self._registrations if r.name == name)
            log.warning(
                "registration %s: could not send REGISTER (%s), next retry in %d s",
                name,
                exc.info(),
                registration.retry_s,
            )
            with self._lock:
                if not self._closed:
                    self._schedule(registration, self._states[name], registration.retry_s)


def _pjsip_retries(code: int) -> bool:
    """Whether pjsua retries a REGISTER that failed with `code` on its own."""
    return code in _PJSIP_RETRIED or 600 <= code < 700
