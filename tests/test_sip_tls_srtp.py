"""SIP over TLS and SRTP, end to end: baresip dials a running `switchboard serve` on loopback.

Two servers with a self-signed certificate: one with `srtp = "optional"` (plain RTP or SRTP,
over any transport) and one with `srtp = "mandatory"` (SRTP only, keys only over TLS). We
check what a caller would notice: the call is up over TLS, the media is encrypted when it
should be, the bot's speech is heard and the caller's is understood, offers the server must
not take are refused with 488, and the call is on record.

The startup checks of the certificate files need no PJSIP endpoint, so they run in-process.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.asr.numbers import spoken_digits
from app.call.events import EventBus
from app.config import SipConfig
from app.dialog.template import parse_template
from app.media.resample import resample
from app.sip.agent import SipAgent, SipAgentError
from app.store import get_call, get_turns, open_engine
from app.tts.espeak import EspeakEngine
from tests.server_process import ServerProcess
from tests.sip.audio_match import find_reference_pieces, telephone_reference
from tests.sip.baresip import BaresipResult, run_baresip_call
from tests.sip.ports import HOST, free_port
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

OPENSSL = "/usr/bin/openssl"
SPEAKER = "jackson"
PROMPTS_MS = 7500  # greeting + question (dialplans/demo.yaml): the caller answers after them
GREETING = "Welcome to the Switchboard demo."
REPLY = parse_template("You said {account | digits}. Thank you.")
SRTP_ON = "SRTP is Enabled"
"""baresip's srtp module logs this once the keys from the answer are in use."""


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM), valid for a day."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The server's certificate and key."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def caller_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """baresip's own certificate and key in one file (it accepts TLS for the server's BYE)."""
    cert, key = make_certificate(tmp_path_factory.mktemp("caller-tls"))
    pem = cert.with_name("caller.pem")
    pem.write_text(cert.read_text() + key.read_text())
    return pem


class TlsServer:
    """A server with TLS on `tls_port`, and where its call records are."""

    def __init__(self, process: ServerProcess, tls_port: int, store_url: str) -> None:
        self.process = process
        self.tls_port = tls_port
        self.store_url = store_url

    def tls_uri(self, user: str = "1000") -> str:
        """Where to dial with transport="tls" (baresip adds ";transport=tls" itself)."""
        return f"sip:{user}@{HOST}:{self.tls_port}"

    def call_record(self, call_id: str, timeout_s: float = 10.0) -> tuple[dict, list[dict]]:
        """The call's row once its end is recorded (the writer is asynchronous), and turns."""
        engine = open_engine(self.store_url)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                row = get_call(engine, call_id)
                if row and row["ended_at"] is not None:
                    return row, get_turns(engine, call_id)
                if time.monotonic() > deadline:
                    raise AssertionError(f"no ended call record for {call_id}: {row}")
                time.sleep(0.2)
        finally:
            engine.dispose()

    def call_id_after(self, mark: int) -> str:
        """The Call-ID of the call the server accepted after log position `mark`."""
        log = self.process.log[mark:]
        for line in log.splitlines():
            if " -> dialplan " in line:
                return line.split("call ", 1)[1].split(" ", 1)[0]
        raise AssertionError(f"server logged no accepted call:\n{log}")


def _start_server(workdir: Path, certificate: tuple[Path, Path], srtp: str) -> TlsServer:
    cert, key = certificate
    tls_port = free_port(udp=False)
    store_url = f"sqlite:///{workdir / 'switchboard.db'}"
    process = ServerProcess.start(
        {
            "SWITCHBOARD_SIP__TLS_PORT": str(tls_port),
            "SWITCHBOARD_SIP__TLS_CERT": str(cert),
            "SWITCHBOARD_SIP__TLS_KEY": str(key),
            "SWITCHBOARD_SIP__SRTP": srtp,
            "SWITCHBOARD_SIP__MAX_CALLS": "2",
            "SWITCHBOARD_STORE__URL": store_url,
        },
        workdir,
    )
    assert f"tls:{tls_port} (srtp {srtp})" in process.log, process.log[-3000:]
    return TlsServer(process, tls_port, store_url)


def _stop_server(server: TlsServer) -> None:
    code = server.process.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{server.process.log[-3000:]}"
    assert "Traceback" not in server.process.log, server.process.log[-5000:]
    # PJSIP's "no CA list" complaint on every TLS connection is silenced (see _tls_config)
    assert "Error reading CA certificates" not in server.process.log


@pytest.fixture(scope="module")
def optional_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[TlsServer]:
    server = _start_server(tmp_path_factory.mktemp("srtp-optional"), certificate, "optional")
    yield server
    _stop_server(server)


@pytest.fixture(scope="module")
def mandatory_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[TlsServer]:
    server = _start_server(tmp_path_factory.mktemp("srtp-mandatory"), certificate, "mandatory")
    yield server
    _stop_server(server)


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()  # the server's default voice and pace


def heard(result: BaresipResult, tts: EspeakEngine, text: str) -> float:
    """How well the bot's rendering of `text` matches what the caller received (0..1)."""
    rendered = b"".join(tts.synthesize(text))
    reference = telephone_reference(resample(rendered, tts.sample_rate, 8000), 8000, "PCMU")
    return find_reference_pieces(result.received_pcm(), reference).correlation


def signalled_over_tls(result: BaresipResult) -> bool:
    """baresip's SIP trace shows our INVITE leaving over TLS."""
    return "INVITE sip:" in result.log and "Via: SIP/2.0/TLS " in result.log


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_listener_takes_tls_1_2_only(optional_server: TlsServer, certificate: tuple) -> None:
    """TLS 1.2 with our certificate; 1.1 is refused (no 1.3: the wheel's OpenSSL is 1.0.2)."""
    cert, _ = certificate

    def handshake(version: ssl.TLSVersion) -> tuple[str | None, bytes]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cert)
        context.minimum_version = context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer 1.1 at all
        with (
            socket.create_connection((HOST, optional_server.tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            return tls.version(), tls.getpeercert(binary_form=True) or b""

    version, peer = handshake(ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert peer == ssl.PEM_cert_to_DER_cert(cert.read_text())
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        handshake(ssl.TLSVersion.TLSv1_1)
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value).upper()  # sent, and refused


def test_call_over_tls_is_answered_heard_and_recorded(
    optional_server: TlsServer, tts: EspeakEngine, caller_pem: Path, tmp_path: Path
) -> None:
    """Plain RTP over a TLS-signalled call (srtp optional): the caller hears the greeting."""
    speech = write_wav(tmp_path / "quiet.wav", silence(500), 8000)
    mark = len(optional_server.process.log)
    result = run_baresip_call(
        optional_server.tls_uri(), speech, "PCMU", 3.0, tmp_path / "baresip",
        transport="tls", tls_cert=caller_pem,
    )  # fmt: skip
    assert result.established, result.describe()
    assert result.closed_by == "caller", result.describe()
    assert signalled_over_tls(result), result.describe()
    assert "a=crypto" not in result.log, result.describe()  # plain RTP: no SDES keys either way
    assert heard(result, tts, GREETING) > 0.8, result.describe()

    call_id = optional_server.call_id_after(mark)
    call, _ = optional_server.call_record(call_id)
    assert call["disposition"] == "ANSWERED" and call["hangup_by"] == "caller", call
    assert call["dst"] == "1000" and call["codec"] == "PCMU", call


def test_optional_srtp_works_over_udp(
    optional_server: TlsServer, tts: EspeakEngine, tmp_path: Path
) -> None:
    """srtp = "optional" takes SDES keys over plain UDP signalling too."""
    speech = write_wav(tmp_path / "quiet.wav", silence(500), 8000)
    result = run_baresip_call(
        optional_server.process.uri(), speech, "PCMU", 3.0, tmp_path / "baresip",
        mediaenc="srtp",
    )  # fmt: skip
    assert result.established, result.describe()
    assert SRTP_ON in result.log, result.describe()
    assert heard(result, tts, GREETING) > 0.8, result.describe()  # decrypted: the greeting


def test_srtp_call_over_tls_understood_both_ways(
    mandatory_server: TlsServer, tts: EspeakEngine, caller_pem: Path, shared_data: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The whole demo dialog with SRTP over TLS: the bot understands the caller's digits
    (SRTP in) and the caller hears them read back (SRTP out)."""
    digits = "4072"
    utterance = build_digit_utterance(shared_data, SPEAKER, digits, seed=int(digits))
    speech = write_wav(
        tmp_path / "caller.wav", silence(PROMPTS_MS) + utterance + silence(1000), 8000
    )
    mark = len(mandatory_server.process.log)
    result = run_baresip_call(
        mandatory_server.tls_uri(), speech, "PCMU", 30.0, tmp_path / "baresip",
        transport="tls", mediaenc="srtp-mand", tls_cert=caller_pem,
    )  # fmt: skip
    assert result.established, result.describe()
    assert result.closed_by == "remote", result.describe()  # the bot said goodbye and hung up
    assert signalled_over_tls(result), result.describe()
    assert SRTP_ON in result.log, result.describe()
    assert heard(result, tts, REPLY.render({"account": digits})) > 0.8, result.describe()

    call_id = mandatory_server.call_id_after(mark)
    call, turns = mandatory_server.call_record(call_id)
    assert call["disposition"] == "ANSWERED" and call["hangup_by"] == "bot", call
    assert len(turns) == 1 and spoken_digits(turns[0]["transcript"]) == digits, turns


@pytest.mark.parametrize(
    ("transport", "mediaenc", "status"),
    [("tls", "", "488"), ("udp", "srtp-mand", "406")],
    ids=["plain-rtp-over-tls", "srtp-keys-over-udp"],
)
def test_mandatory_srtp_refuses_insecure_offers(
    mandatory_server: TlsServer, caller_pem: Path, tmp_path: Path, transport: str,
    mediaenc: str, status: str,
) -> None:  # fmt: skip
    """srtp = "mandatory": PJSIP refuses, before any call is set up, an offer without SDES
    keys with 488 Not Acceptable Here, and keys that came in the clear (SIP over UDP; secure
    signalling is required) with 406 Not Acceptable."""
    speech = write_wav(tmp_path / "quiet.wav", silence(500), 8000)
    uri = mandatory_server.tls_uri() if transport == "tls" else mandatory_server.process.uri()
    mark = len(mandatory_server.process.log)
    result = run_baresip_call(
        uri, speech, "PCMU", 1.0, tmp_path / "baresip", transport=transport, mediaenc=mediaenc,
        tls_cert=caller_pem if transport == "tls" else None, answer_timeout_s=5.0,
    )  # fmt: skip
    assert not result.established, result.describe()
    assert result.closed_by == "remote", result.describe()
    assert result.close_reason.startswith(status), result.describe()
    assert " -> dialplan " not in mandatory_server.process.log[mark:]


def _agent(config: SipConfig) -> SipAgent:
    """An agent that can only fail to start (no admission, no call cores)."""
    return SipAgent(config, lambda active: None, lambda context: None, EventBus([]))  # type: ignore[arg-type]


def test_unreadable_certificate_is_a_clear_startup_error(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """Checked before PJSIP is started: the error names the setting and the file."""
    cert, key = certificate
    missing = tmp_path / "missing.pem"
    base = {"bind": HOST, "udp_port": free_port(), "tcp_port": 0, "tls_port": free_port()}
    with pytest.raises(SipAgentError, match=rf"sip\.tls_cert: cannot read {missing}"):
        _agent(SipConfig(**base, tls_cert=str(missing), tls_key=str(key))).start()
    with pytest.raises(SipAgentError, match=rf"sip\.tls_key: {cert} holds no PEM private key"):
        _agent(SipConfig(**base, tls_cert=str(cert), tls_key=str(cert))).start()
    with pytest.raises(SipAgentError, match=r"sip\.tls_cert and sip\.tls_key are needed"):
        _agent(SipConfig(**base)).start()
