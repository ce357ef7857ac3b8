"""The systemd unit (checked by systemd-analyze), the real server speaking the notify protocol,
and the fail2ban filter for its security events."""

from __future__ import annotations

import configparser
import itertools
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import EXIT_CONFIG
from app.config import HttpConfig, ServerConfig, SipConfig
from tests.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO_ROOT / "systemd"
UNIT = SYSTEMD_DIR / "switchboard.service"
INSTALLED_SCRIPT = "/opt/switchboard/.venv/bin/switchboard"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not found")

ALLOWED_VERIFY_WARNINGS: tuple[str, ...] = ()
"""None. `verify` would report the missing /opt/switchboard script, which is why the test
points ExecStart at this checkout's script (the installed layout does not exist here); the
`switchboard` user is not looked up offline, and After= units that are not installed are
ordering hints only. Anything else it prints is a mistake in the unit."""

EXPOSURE_LIMIT = 1.5
"""`systemd-analyze security --offline=true` measured 1.2 ("OK") with systemd 252 (Debian
12); the limit leaves a little room for other versions' weights, not for looser settings."""


def installed_copy(tmp_path: Path, name: str) -> Path:
    """`systemd/<name>` in a folder of its own, ExecStart pointing at this checkout's
    `switchboard` script instead of the /opt one, which does not exist on a test machine."""
    script = Path(sys.executable).parent / "switchboard"
    assert script.exists(), f"{script} missing: install the package into the venv"
    unit = tmp_path / name
    unit.write_text((SYSTEMD_DIR / name).read_text().replace(INSTALLED_SCRIPT, str(script)))
    return unit


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the unit in order (a key may repeat, as SystemCallFilter= does)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


# -- the unit ---------------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize(
    "names",
    [("switchboard.service",), ("switchboard-prune.service", "switchboard-prune.timer")],
)
def test_units_verify_clean(tmp_path: Path, names: tuple[str, ...]) -> None:
    units = [installed_copy(tmp_path, name) for name in names]
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).splitlines()
    unexpected = [
        line for line in output if not any(allowed in line for allowed in ALLOWED_VERIFY_WARNINGS)
    ]
    assert done.returncode == 0, done.stderr
    assert unexpected == []


@needs_analyze
def test_security_exposure(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    unit = installed_copy(tmp_path, "switchboard.service")
    command = [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"Overall exposure level for switchboard\.service: ([\d.]+) (\w+)", done.stdout
    )
    assert found, done.stdout
    score, verdict = float(found[1]), found[2]
    print(f"{' '.join(command[1:])}: exposure {score} {verdict}")
    record_property("systemd_exposure", score)
    assert score <= EXPOSURE_LIMIT, done.stdout
    assert verdict == "OK"

    done = subprocess.run([*command, "--json=short"], capture_output=True, text=True, timeout=60)
    checks = {check["name"]: check["set"] for check in json.loads(done.stdout)}
    for essential in (
        "User=/DynamicUser=",
        "NoNewPrivileges=",
        "ProtectSystem=",
        "PrivateDevices=",
        "NotifyAccess=",
        "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "SystemCallFilter=~@privileged",
        "RestrictNamespaces=~user",
        "RestrictAddressFamilies=~AF_PACKET",
    ):
        assert checks[essential] is True, essential


def test_unit_matches_the_server() -> None:
    """The settings that must agree with the code: notify readiness and watchdog, a stop
    timeout longer than the drain, SIGHUP reload, and no capability for default ports."""
    settings = unit_settings(UNIT)
    one = {key: values[-1] for key, values in settings.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) == 30
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == str(EXIT_CONFIG)  # a bad config stays down
    assert one["User"] == one["Group"] == "switchboard"
    assert one["ExecStart"] == (
        f"{INSTALLED_SCRIPT} serve --config /etc/switchboard/switchboard.toml"
    )
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillSignal"] == "SIGTERM"
    assert one["KillMode"] == "mixed"  # espeak-ng children keep speaking through the drain
    assert int(one["TimeoutStopSec"]) > ServerConfig().drain_timeout_s
    assert one["StateDirectory"] == "switchboard"
    assert one["Environment"] == "SWITCHBOARD_SERVER__DATA_DIR=/var/lib/switchboard"
    assert one["UMask"] == "0027"
    assert "MemoryDenyWriteExecute" not in one  # oneDNN's JIT in CTranslate2 needs W+X
    # Ports below 1024 need CAP_NET_BIND_SERVICE; the defaults are all above, so none is held.
    assert one["CapabilityBoundingSet"] == one["AmbientCapabilities"] == ""
    sip = SipConfig()
    assert min(sip.udp_port, sip.tcp_port, sip.rtp_port, HttpConfig().port) >= 1024


def test_env_example_names_real_settings() -> None:
    """Every SWITCHBOARD_* line of the env example (commented or not) is a real config key."""
    from app.config import load_config

    text = (SYSTEMD_DIR / "switchboard.env.example").read_text()
    pairs = re.findall(r"^#?(SWITCHBOARD_[A-Z0-9_]+)=(\S+)$", text, re.MULTILINE)
    environ = dict(pairs)
    assert "SWITCHBOARD_SERVER__LOG_FORMAT" in environ
    assert "SWITCHBOARD_STORE__URL" in environ and "SWITCHBOARD_STATE__URL" in environ
    environ["SWITCHBOARD_STORE__URL"] = "sqlite:////var/lib/switchboard/switchboard.db"
    config = load_config(None, environ)
    assert config.server.log_format == "json"
    assert config.server.data_dir == Path("/var/lib/switchboard")
    assert "OPENAI_API_KEY=" in text


# -- the notify protocol with the real server ----------------------------------------------


class NotifyListener:
    """A fake service manager: the notify socket, with every datagram and when it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [at for at, fields in self.messages if key in fields and at >= since]

    def first(self, key: str, timeout: float = 5.0) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, fields in list(self.messages):
                if key in fields:
                    return at, fields
            time.sleep(0.02)
        raise AssertionError(f"no {key} in {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._socket.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def test_real_server_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, listener: NotifyListener
) -> None:
    """`switchboard serve` under a fake systemd: READY=1 once it answers calls, WATCHDOG=1
    from the SIP loop every WATCHDOG_USEC/2 (0.1 s here), STOPPING=1 on SIGTERM, exit 0."""
    overrides = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}
    server = ServerProcess.start(overrides, tmp_path / "data")
    try:
        ready_at, ready = listener.first("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("answering calls")
        time.sleep(1.5)
        stop_at = time.monotonic()
        code = server.stop()
    finally:
        server.stop()
    assert code == 0, server.log
    pings = [at for at in listener.times("WATCHDOG", since=ready_at) if at < stop_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert len(pings) >= 8, f"{len(pings)} pings in 1.5 s"
    assert 0.09 <= statistics.median(gaps) <= 0.15, gaps
    assert max(gaps) < 0.2, gaps  # never as long as the watchdog timeout itself
    stopping_at, stopping = listener.first("STOPPING")
    assert stopping_at >= stop_at
    assert stopping["STATUS"] == "draining 0 call(s)"


# -- fail2ban -----------------------------------------------------------------------------------

FILTER = SYSTEMD_DIR / "fail2ban" / "filter.d" / "switchboard.conf"
JAIL = SYSTEMD_DIR / "fail2ban" / "jail.d" / "switchboard.conf"

# fail2ban 1.0's <ADDR> (fail2ban/server/failregex.py, R_HOST[RI_ADDR]) with its IPv4/IPv6
# expressions (fail2ban/server/ipdns.py, IPAddr.IP_4_RE / IP_6_RE).
_IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP6 = r"(?:[0-9a-fA-F]{1,4}::?|:){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
F2B_ADDR = rf"\[?(?:(?:::f{{4,6}}:)?(?P<ip4>{_IP4})|(?P<ip6>{_IP6}))\]?"

JOURNAL = "myhost switchboard[4242]: "
"""What fail2ban's systemd backend puts before MESSAGE: "<_HOSTNAME> <identifier>[<pid>]:"."""

BANNED = [
    (
        "2026-11-21 10:00:00,123 WARNING switchboard.security: "
        "SECURITY kind=acl_denied src=203.0.113.5:5060 method=INVITE",
        "acl_denied",
        "203.0.113.5",
    ),
    (
        "2026-11-21 10:00:00,123 WARNING switchboard.security [a84b2@10.0.0.1]: "
        'SECURITY kind=refer_denied src=192.0.2.44:5060 target="sip:900@evil"',
        "refer_denied",
        "192.0.2.44",
    ),
    (
        '{"ts": "2026-11-21T10:00:00.123+00:00", "level": "WARNING", "logger": '
        '"switchboard.security", "message": "SECURITY kind=acl_denied src=203.0.113.5:5060 '
        'method=INVITE"}',
        "acl_denied",
        "203.0.113.5",
    ),
    (
        '{"ts": "x", "level": "WARNING", "logger": "switchboard.security", '
        '"message": "SECURITY kind=flood_banned src=198.51.100.23:5060 repeated=40"}',
        "flood_banned",
        "198.51.100.23",
    ),
    (
        "2026-11-21 10:00:00,123 WARNING switchboard.security: "
        "SECURITY kind=auth_failed src=2001:db8::7:5062 user=1000",
        "auth_failed",
        "2001:db8::7",
    ),
    (
        '{"message": "SECURITY kind=torture/malformed src=[2001:db8::7]:5062", "level": "WARNING"}',
        "torture/malformed",
        "2001:db8::7",
    ),
    (
        "2026-11-21 10:00:00,123 WARNING switchboard.security: "
        "SECURITY kind=ua_blocked src=::ffff:192.0.2.8:5060 ua=friendly-scanner",
        "ua_blocked",
        "192.0.2.8",
    ),
]

NOT_BANNED = [
    # A caller's User-Agent quoted in another logger's line must not ban the address in it.
    "2026-11-21 10:00:01,000 INFO switchboard.sip: INVITE from UA "
    "x SECURITY kind=acl_denied src=198.51.100.9:5060",
    # The same inside a JSON value: its quotes are escaped, so it is not a "message" field.
    '{"ts": "x", "level": "INFO", "logger": "switchboard.sip", "message": "INVITE ua=\\"x\\", '
    '\\"message\\": \\"SECURITY kind=acl_denied src=198.51.100.9:5060\\""}',
    "2026-11-21 10:00:01,000 INFO switchboard: switchboard ready: 1 dialplan(s)",
]


def filter_definition() -> dict[str, str]:
    """The filter's [Definition] with %(name)s references expanded, as fail2ban reads it."""
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    parser.read(FILTER)
    return dict(parser["Definition"])


def approximate_failregex() -> re.Pattern[str]:
    """The failregex as Python `re`, after fail2ban's tag substitution done by hand.

    An APPROXIMATION of fail2ban (used when `fail2ban-regex` is not installed): <ADDR> is
    replaced by fail2ban 1.0's own expression (copied above) and <F-KIND>...</F-KIND> by a
    named group, as fail2ban does; fail2ban's other machinery (its config reader, date
    detection, multi-line buffers) is not reproduced. A line as the systemd backend builds it
    is searched, without a date to cut out, as fail2ban does for journal entries."""
    regex = filter_definition()["failregex"].strip()
    assert "\n" not in regex, "one failregex expected"
    regex = regex.replace("<ADDR>", F2B_ADDR)
    regex = regex.replace("<F-KIND>", "(?P<kind>").replace("</F-KIND>", ")")
    assert "<" not in regex.replace("(?P<", "").replace("(?<=", ""), f"unreplaced tag: {regex}"
    return re.compile(regex)


@pytest.mark.parametrize(("message", "kind", "ip"), BANNED)
def test_failregex_matches_security_events(message: str, kind: str, ip: str) -> None:
    found = approximate_failregex().search(JOURNAL + message)
    assert found, message
    assert found["kind"] == kind
    assert (found["ip4"] or found["ip6"]) == ip


@pytest.mark.parametrize("message", NOT_BANNED)
def test_failregex_ignores_other_lines(message: str) -> None:
    assert approximate_failregex().search(JOURNAL + message) is None


def test_filter_and_jail_read_the_journal() -> None:
    assert filter_definition()["journalmatch"] == "_SYSTEMD_UNIT=switchboard.service"
    jail = configparser.ConfigParser(interpolation=None)
    jail.read(JAIL)
    section = jail["switchboard"]
    assert section["backend"] == "systemd"
    assert section["filter"] == "switchboard"
    assert section["journalmatch"] == "_SYSTEMD_UNIT=switchboard.service"
    assert section["banaction"] == "%(banaction_allports)s"
    assert section["protocol"] == "tcp,udp"  # SIP and RTP over UDP are banned too


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban not installed")
def test_fail2ban_regex_on_the_filter(tmp_path: Path) -> None:
    """With fail2ban installed, its own tool on the same lines (from a file: it cuts the
    text format's timestamp out before matching, which the filter allows for)."""
    log = tmp_path / "switchboard.log"
    log.write_text("".join(JOURNAL + line + "\n" for line in [m for m, _, _ in BANNED]))
    log.write_text(log.read_text() + "".join(JOURNAL + line + "\n" for line in NOT_BANNED))
    done = subprocess.run(
        ["fail2ban-regex", str(log), str(FILTER)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(BANNED)} matched, {len(NOT_BANNED)} missed" in done.stdout, done.stdout
