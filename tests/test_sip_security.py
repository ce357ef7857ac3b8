"""The SIP edge: policy rules without a SIP stack, then the real server with sipp peers.

Loopback has a whole /8, so one machine plays several sources: the allowed PBX is 127.0.0.1,
a flooding "lab" peer 127.0.0.3, an unknown source 127.0.0.2.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import urllib.request
from pathlib import Path

import pytest

from app.sip.digest import DigestAuthenticator, parse_authorization
from app.sip.security import (
    EdgeRequest,
    FloodGuard,
    SecurityConfigError,
    SecurityLog,
    SecurityPolicy,
    load_policy,
    read_request,
)
from tests.server_process import ServerProcess
from tests.sip import sipp
from tests.sip.ports import HOST

REPO_ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(ip: str = "192.0.2.1", method: str = "INVITE", tagged: bool = False, ua: str = ""):
    return EdgeRequest(ip, 5060, method, not tagged, ua)


# ------------------------------------------------------------------------- policy (pure)


def test_flood_guard_bans_the_17th_request_in_the_window_and_lifts_the_ban_later() -> None:
    clock = Clock()
    guard = FloodGuard(requests=16, window_s=2.0, ban_s=300.0, clock=clock)
    assert not any(guard.count("192.0.2.1") for _ in range(16))
    assert guard.count("192.0.2.1")  # the 17th within 2 s
    assert guard.banned("192.0.2.1") and not guard.banned("192.0.2.2")
    clock.now += 299
    assert guard.banned("192.0.2.1")
    clock.now += 2
    assert not guard.banned("192.0.2.1")


def test_flood_guard_window_slides() -> None:
    clock = Clock()
    guard = FloodGuard(requests=16, window_s=2.0, ban_s=300.0, clock=clock)
    for _ in range(40):  # 8 per second: never 17 within 2 s
        assert not guard.count("192.0.2.1")
        clock.now += 0.125
    guard.sweep()
    clock.now += 10
    guard.sweep()
    assert not guard._seen  # idle sources are forgotten


def test_inspect_order_ban_scanner_acl() -> None:
    clock = Clock()
    policy = load_policy(Path("/nonexistent"))
    policy.flood = FloodGuard(requests=2, window_s=2, ban_s=60, clock=clock)
    assert policy.open
    assert policy.inspect(request(ua="friendly-scanner")).kind == "ua_blocked"
    assert policy.inspect(request(ua="SIPVicious 0.3")).action == "drop"
    assert policy.inspect(request(ip="192.0.2.9")).passed
    assert policy.inspect(request(ip="192.0.2.9")).passed
    verdict = policy.inspect(request(ip="192.0.2.9"))
    assert (verdict.action, verdict.kind) == ("drop", "flood_banned")
    assert policy.inspect(request(ip="192.0.2.9", tagged=True)).kind == "banned"
    # in-dialog requests (To tag) do not count towards the limit
    for _ in range(10):
        assert policy.inspect(request(ip="192.0.2.10", method="INFO", tagged=True)).passed
    multipart = EdgeRequest("192.0.2.11", 5060, "INVITE", True, "", multipart=True)
    assert (policy.inspect(multipart).kind, policy.inspect(multipart).status) == (
        "multipart_refused",
        415,
    )
    policy.multipart = True
    assert policy.inspect(EdgeRequest("192.0.2.12", 5060, "INVITE", True, "", True)).passed


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "security.toml"
    path.write_text(text)
    return path


PEERS = """
[acl]
action = "{action}"
[flood]
requests = 3
[[peer]]
name = "pbx"
cidrs = ["10.0.0.0/24", "2001:db8::/32"]
max_calls = 2
[[peer]]
name = "lab"
cidrs = ["10.9.9.9"]
flood_exempt = false
[transfer]
allow = ["sip:*@pbx.example.com", "sip:1???@10.0.0.5"]
"""


@pytest.mark.parametrize("action", ["reject", "drop"])
def test_acl_refuses_unlisted_sources_and_exempts_peers_from_the_flood_limit(
    tmp_path: Path, action: str
) -> None:
    policy = load_policy(write_policy(tmp_path, PEERS.format(action=action)))
    outsider = policy.inspect(request(ip="192.0.2.1"))
    assert outsider.kind == "acl_denied" and outsider.action == action
    assert outsider.status == (403 if action == "reject" else 0)
    assert policy.inspect(request(ip="192.0.2.1", method="ACK")).action == "drop"  # never answered
    assert all(policy.inspect(request(ip="10.0.0.7")).passed for _ in range(20))  # exempt
    assert policy.inspect(request(ip="2001:db8::1")).passed
    lab = [policy.inspect(request(ip="10.9.9.9")).kind for _ in range(5)]
    assert lab == ["", "", "", "flood_banned", "banned"]
    assert policy.peer_for("10.0.0.200").name == "pbx"
    assert policy.peer_for("10.0.1.1") is None


def test_transfer_allowlist_matches_whole_uris() -> None:
    policy = SecurityPolicy(transfer_allow=("sip:*@pbx.example.com", "sip:1???@10.0.0.5"))
    assert policy.transfer_allowed("sip:agent@pbx.example.com")
    assert policy.transfer_allowed("<SIP:Agent@PBX.example.com>")
    assert policy.transfer_allowed("sip:1234@10.0.0.5")
    assert not policy.transfer_allowed("sip:12345@10.0.0.5")
    assert not policy.transfer_allowed("sip:+900123@pbx.example.com.evil.net")
    assert not SecurityPolicy().transfer_allowed("sip:anyone@anywhere")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[acl]\naction = 'maybe'", "[acl] action: must be reject or drop"),
        ("[flood]\nrequests = -1", "[flood] requests: expected a number >= 0"),
        ("[flod]\n", "unknown table(s) flod"),
        ("[[peer]]\nname = 'a'\ncidrs = ['10.0.0.300/8']", "not an address or CIDR"),
        ("[[peer]]\nname = 'a'", "cidrs: list at least one"),
        ("[[peer]]\nname='a'\ncidrs=['10.0.0.1']\n[[peer]]\nname='a'\ncidrs=['10.0.0.2']", "twice"),
        ("[[peer]]\nname='a'\ncidrs=['10.0.0.1']\npassword_env='NOPE_UNSET'", "NOPE_UNSET"),
        ("[[peer]]\nname='a'\ncidrs=['10.0.0.1']\nusername='u'", "go together"),
        ("[[peer]]\nname='a'\ncidrs=['10.0.0.1']\nmax_cals=2", "unknown key(s) max_cals"),
        ("[acl\n", "security.toml"),
    ],
)
def test_bad_security_files_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(SecurityConfigError) as caught:
        load_policy(write_policy(tmp_path, text), environ={})
    assert error in str(caught.value)


def test_trunk_peer_registers_with_credentials_from_the_environment(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        "[[peer]]\nname = 'carrier'\ncidrs = ['203.0.113.0/24']\nmax_calls = 30\n"
        "register = 'sip:sip.carrier.example'\nusername = '4420712345'\n"
        "password_env = 'CARRIER_PW'\nexpires_s = 600\nretry_s = 20\n",
    )
    policy = load_policy(path, environ={"CARRIER_PW": "pw"})
    (registration,) = policy.registrations()
    assert (registration.registrar, registration.username, registration.password) == (
        "sip:sip.carrier.example",
        "4420712345",
        "pw",
    )
    assert (registration.expires_s, registration.retry_s, registration.transport) == (
        600,
        20,
        "udp",
    )
    assert policy.peers[0].username == ""  # it authenticates us; its INVITEs are not challenged
    bad = write_policy(tmp_path, path.read_text().replace("sip:sip.carrier", "http://carrier"))
    with pytest.raises(SecurityConfigError, match="registrar must be a sip"):
        load_policy(bad, environ={"CARRIER_PW": "pw"})


def test_shipped_security_file_loads_open_with_flood_and_scanner_rules() -> None:
    policy = load_policy(REPO_ROOT / "sip_config" / "security.toml")
    assert policy.open and policy.flood.requests == 16 and policy.flood.ban_s == 300
    assert "friendly-scanner" in policy.user_agents
    assert policy.transfer_allowed("sip:agent@127.0.0.1:5070")


def test_read_request_finds_method_user_agent_and_to_tag() -> None:
    raw = (
        b"BYE sip:1000@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"t: <sip:1000@h>;tag=abc\r\nUser-Agent: friendly-scanner\r\n"
        b"c: multipart/mixed;boundary=x\r\n\r\nbody: x;tag=1"
    )
    parsed = read_request("192.0.2.1", 5060, raw)
    assert parsed == EdgeRequest("192.0.2.1", 5060, "BYE", False, "friendly-scanner", True)
    untagged = read_request("192.0.2.1", 5060, b"INVITE sip:a@h SIP/2.0\r\nTo: <sip:a@h>\r\n\r\n")
    assert untagged is not None and untagged.starts_dialog
    assert read_request("192.0.2.1", 5060, b"SIP/2.0 200 OK\r\n\r\n") is None


def test_security_log_folds_repeats_per_source(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    kinds: list[str] = []
    events = SecurityLog(fold_s=10, clock=clock, on_event=kinds.append)
    with caplog.at_level(logging.WARNING, logger="switchboard.security"):
        for _ in range(5):
            events.event("acl_denied", "192.0.2.1", 5060, method="INVITE")
        events.event("acl_denied", "192.0.2.2", 5061, method="OPTIONS", ua="a b")
        clock.now += 11
        events.event("acl_denied", "192.0.2.1", 5060, method="INVITE")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "SECURITY kind=acl_denied src=192.0.2.1:5060 method=INVITE",
        'SECURITY kind=acl_denied src=192.0.2.2:5061 method=OPTIONS ua="a b"',
        "SECURITY kind=acl_denied src=192.0.2.1:5060 method=INVITE repeated=4",
    ]
    assert kinds == ["acl_denied"] * 7  # every event reaches the metrics


# ------------------------------------------------------------------------- digest


def client_response(challenge: str, user: str, password: str, uri: str) -> str:
    """What a UAC sends back (RFC 2617, qop=auth), computed independently of the server."""
    params = parse_authorization(challenge)
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{user}:{params['realm']}:{password}")
    ha2 = md5(f"INVITE:{uri}")
    nc, cnonce = "00000001", "0a4f113b"
    response = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def test_digest_challenge_and_verify() -> None:
    clock = Clock()
    auth = DigestAuthenticator(clock=clock)
    name, challenge = auth.challenge()
    assert name == "WWW-Authenticate" and 'qop="auth"' in challenge
    good = client_response(challenge, "pbx", "s3cret", "sip:1000@10.0.0.1")
    assert auth.verify(good, "INVITE", "pbx", "s3cret") == "ok"
    assert auth.verify("", "INVITE", "pbx", "s3cret") == "missing"
    assert auth.verify(good, "INVITE", "pbx", "wrong") == "failed"
    assert auth.verify(good, "INVITE", "other", "s3cret") == "failed"
    forged = good.replace(parse_authorization(good)["nonce"], "1000.deadbeef")
    assert auth.verify(forged, "INVITE", "pbx", "s3cret") == "failed"
    assert DigestAuthenticator(clock=clock).verify(good, "INVITE", "pbx", "s3cret") == "failed"
    clock.now += 301
    assert auth.verify(good, "INVITE", "pbx", "s3cret") == "stale"


# ------------------------------------------------------------------------- the real server


def options(port: int, n: int, ua: str = "probe") -> bytes:
    return (
        f"OPTIONS sip:1000@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {{src}};branch=z9hG4bK-flood-{n}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:probe@{HOST}>;tag=f{n}\r\nTo: <sip:1000@{HOST}>\r\n"
        f"Call-ID: flood-{n}-{port}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {ua}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def send_options(src_ip: str, port: int, count: int, ua: str = "probe") -> list[bytes | None]:
    """`count` OPTIONS from `src_ip`, one at a time; each answer's status line, or None."""
    answers: list[bytes | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src_ip, 0))
        sock.settimeout(0.5)
        src = f"{src_ip}:{sock.getsockname()[1]}"
        for n in range(count):
            sock.sendto(options(port, n, ua).replace(b"{src}", src.encode()), (HOST, port))
            try:
                answers.append(sock.recv(4096).split(b"\r\n", 1)[0])
            except TimeoutError:
                answers.append(None)
    return answers


def from_ip(ip: str) -> list[str]:
    """sipp arguments placing the call from another loopback address."""
    return ["-i", ip, "-mi", ip]


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("guarded")
    policy = workdir / "security.toml"
    policy.write_text(
        "[acl]\naction = 'reject'\n"
        "[flood]\nrequests = 16\nwindow_s = 2\nban_s = 300\n"
        "[[peer]]\nname = 'pbx'\ncidrs = ['127.0.0.1/32']\nmax_calls = 1\n"
        "[[peer]]\nname = 'lab'\ncidrs = ['127.0.0.3/32']\nflood_exempt = false\n"
        "[[peer]]\nname = 'authpbx'\ncidrs = ['127.0.0.4/32']\n"
        "username = 'pbx'\npassword_env = 'TEST_PBX_PASSWORD'\n"
        "[transfer]\nallow = ['sip:*@pbx.example.com']\n"
    )
    server = ServerProcess.start(
        {"SWITCHBOARD_SIP__SECURITY": str(policy), "TEST_PBX_PASSWORD": "s3cret"}, workdir
    )
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


def test_source_outside_the_acl_gets_403(guarded_server: ServerProcess, tmp_path: Path) -> None:
    result = sipp.expect_status(
        HOST, guarded_server.port, 403, workdir=tmp_path, extra_args=from_ip("127.0.0.2")
    )
    assert result.ok, result.describe()
    assert "SECURITY kind=acl_denied src=127.0.0.2:" in guarded_server.log
    assert " -> dialplan " not in guarded_server.log  # it never became a call


def test_flood_is_banned_while_the_pbx_keeps_calling(
    guarded_server: ServerProcess, tmp_path: Path
) -> None:
    answers = send_options("127.0.0.3", guarded_server.port, 30)
    assert answers[:16] == [b"SIP/2.0 200 OK"] * 16, answers
    assert answers[16:] == [None] * 14  # banned: dropped unanswered
    assert "SECURITY kind=flood_banned src=127.0.0.3:" in guarded_server.log
    banned_call = sipp.expect_status(
        HOST, guarded_server.port, 404, service="nobody", workdir=tmp_path / "lab",
        extra_args=from_ip("127.0.0.3"), timeout_s=4,
    )  # fmt: skip
    assert not banned_call.ok and not banned_call.responses  # no answer at all
    answered = sipp.speech_call(
        HOST, guarded_server.port, None, wait_s=2, bye_from="caller", workdir=tmp_path / "pbx"
    )
    assert answered.ok, answered.describe()
    assert send_options(HOST, guarded_server.port, 3) == [b"SIP/2.0 200 OK"] * 3


def test_scanner_user_agent_is_dropped(guarded_server: ServerProcess) -> None:
    assert send_options(HOST, guarded_server.port, 1, ua="friendly-scanner") == [None]
    assert "SECURITY kind=ua_blocked src=127.0.0.1:" in guarded_server.log
    assert send_options(HOST, guarded_server.port, 1) == [b"SIP/2.0 200 OK"]


def test_peer_over_its_cap_gets_503_with_retry_after(
    guarded_server: ServerProcess, tmp_path: Path
) -> None:
    log = lambda: guarded_server.log  # noqa: E731
    with sipp.call_in_progress(HOST, guarded_server.port, log, tmp_path / "first", hold_s=5):
        busy = sipp.expect_status(HOST, guarded_server.port, 503, workdir=tmp_path / "second")
        assert busy.ok, busy.describe()
        assert "Retry-After: 30" in busy.message_log.read_text()


def auth_refer_call(server: ServerProcess, workdir: Path, password: str) -> sipp.SippResult:
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = sipp.render_scenario(
        "uac_auth_refer", workdir, {"REFER_TO": "sip:+881999123456@premium.example.net"}
    )
    return sipp.run_sipp(
        scenario, HOST, server.port, workdir, timeout_s=15,
        extra_args=[*from_ip("127.0.0.4"), "-au", "pbx", "-ap", password],
    )  # fmt: skip


def test_peer_with_credentials_is_challenged_and_a_refer_elsewhere_is_refused(
    guarded_server: ServerProcess, tmp_path: Path
) -> None:
    mark = len(guarded_server.log)
    result = auth_refer_call(guarded_server, tmp_path / "good", "s3cret")
    assert result.ok, result.describe()
    assert result.responses.index(401) < result.responses.index(200), result.responses
    assert 403 in result.responses  # the REFER
    log = guarded_server.log[mark:]
    assert "SECURITY kind=refer_denied src=127.0.0.4:" in log
    assert "target=<sip:+881999123456@premium.example.net>" in log, log
    assert "auth_failed" not in log

    wrong = auth_refer_call(guarded_server, tmp_path / "wrong", "guess")
    assert not wrong.ok and 200 not in wrong.responses, wrong.responses
    assert wrong.responses.count(401) >= 2  # challenged again, never let in
    assert "SECURITY kind=auth_failed src=127.0.0.4:" in guarded_server.log


def send_one(port: int, method: str, extra: str, body: str = "") -> bytes | None:
    """One out-of-dialog request from 127.0.0.1; the status line of the answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(1.0)
        src = f"{HOST}:{sock.getsockname()[1]}"
        message = (
            f"{method} sip:1000@{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK-"
            f"{method}-{port}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{HOST}>;tag=p1\r\n"
            f"To: <sip:1000@{HOST}>\r\nCall-ID: {method}-{port}@probe\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:probe@{src}>\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        sock.sendto(message.encode(), (HOST, port))
        while True:
            try:
                status = sock.recv(4096).split(b"\r\n", 1)[0]
            except TimeoutError:
                return None
            if not status.startswith(b"SIP/2.0 1"):
                return status


def test_presence_is_off_and_multipart_bodies_are_refused(guarded_server: ServerProcess) -> None:
    port = guarded_server.port
    subscribe = send_one(port, "SUBSCRIBE", "Event: presence\r\nExpires: 600\r\n")
    assert subscribe is not None and subscribe.startswith(b"SIP/2.0 403"), subscribe
    body = "--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b--\r\n"
    invite = send_one(port, "INVITE", "Content-Type: multipart/mixed;boundary=b\r\n", body)
    assert invite == b"SIP/2.0 415 Unsupported Media Type", invite
    assert "SECURITY kind=multipart_refused src=127.0.0.1:" in guarded_server.log


def test_refusals_are_counted_in_metrics(guarded_server: ServerProcess) -> None:
    """Runs after the tests above on the same server: their refusals are on /metrics."""
    send_options("127.0.0.2", guarded_server.port, 1)  # at least one ACL refusal of our own
    url = f"http://{HOST}:{guarded_server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("switchboard_rejected_total{", "switchboard_sip_responses_total{"))
    }
    assert values['switchboard_rejected_total{reason="acl"}'] >= 2
    assert values['switchboard_rejected_total{reason="flood"}'] >= 14
    assert values['switchboard_rejected_total{reason="user_agent"}'] >= 1
    assert values['switchboard_rejected_total{reason="multipart"}'] >= 1
    assert values['switchboard_sip_responses_total{code="403"}'] >= 2  # ACL, SUBSCRIBE, REFER
    assert values['switchboard_sip_responses_total{code="200"}'] >= 16
