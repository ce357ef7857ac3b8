"""The SIP test harness against a real pjsua2 answering server (the prototype, not ours).

Proves that sipp scenarios pass and fail by exit code, that the caller's speech reaches the
server through the pcap, and that baresip records what the server played.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.media.g711 import Codec
from tests.sip import sipp
from tests.sip.audio_match import find_reference, find_reference_pieces
from tests.sip.baresip import run_baresip_call
from tests.sip.conftest import ProtoServer
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, write_rtp_pcap
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

BOT_LEAD_MS = 500


@pytest.fixture(scope="module")
def audio(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Caller speech (2 digits, ~2 s) and a longer bot prompt (3 digits, ~3 s), as PCM,
    WAV files and caller pcaps for both codecs."""
    root = tmp_path_factory.mktemp("audio")
    caller = build_digit_utterance(shared_data, "jackson", "47", seed=1, pad_ms=300)
    bot = build_digit_utterance(shared_data, "nicolas", "902", seed=2, pad_ms=300)
    return {
        "caller": caller,
        "bot": bot,
        "caller_wav": write_wav(root / "caller.wav", caller, 8000),
        "bot_wav": write_wav(root / "bot.wav", bot, 8000),
        "PCMU": write_rtp_pcap(caller, root / "caller_pcmu.pcap", "PCMU"),
        "PCMA": write_rtp_pcap(caller, root / "caller_pcma.pcap", "PCMA"),
    }


Start = Callable[..., ProtoServer]


def test_sipp_unknown_number_gets_404(proto_server: Start, tmp_path: Path) -> None:
    server = proto_server()
    result = sipp.expect_status(HOST, server.port, 404, service="404", workdir=tmp_path)
    assert result.ok, result.describe()
    assert result.responses[-1] == 404
    assert result.requests_sent == ["INVITE", "ACK"]


def test_sipp_refused_codec_gets_488(proto_server: Start, tmp_path: Path) -> None:
    server = proto_server()
    result = sipp.expect_status(HOST, server.port, 488, codec="G722", workdir=tmp_path)
    assert result.ok, result.describe()
    assert result.responses[-1] == 488


def test_sipp_expect_fails_when_the_call_is_answered(proto_server: Start, tmp_path: Path) -> None:
    server = proto_server()
    result = sipp.expect_status(HOST, server.port, 404, service="1000", workdir=tmp_path)
    assert not result.ok
    assert result.returncode == 1
    assert 200 in result.responses


@pytest.mark.parametrize(("transport", "codec"), [("udp", "PCMU"), ("tcp", "PCMA")])
def test_sipp_speech_call_server_hangs_up(
    proto_server: Start, audio: dict, tmp_path: Path, transport: str, codec: str
) -> None:
    server = proto_server(wav=audio["bot_wav"], lead_ms=BOT_LEAD_MS, hangup_after_play=True)
    user = f"speech-{transport}"
    result = sipp.speech_call(
        HOST, server.port, audio[codec], codec=codec, wait_s=15, bye_from="server",
        transport=transport, service=user, workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe()
    assert result.requests_received == ["BYE"]
    assert f"CODEC {codec}" in server.log()
    heard = find_reference_pieces(server.recording(user), audio["caller"])
    assert heard.correlation > 0.9, heard


def test_sipp_caller_hangs_up(proto_server: Start, audio: dict, tmp_path: Path) -> None:
    server = proto_server(wav=audio["bot_wav"])
    result = sipp.speech_call(
        HOST, server.port, audio["PCMU"], wait_s=1.0, bye_from="caller", workdir=tmp_path
    )
    assert result.ok, result.describe()
    assert result.requests_sent == ["INVITE", "ACK", "BYE"]
    assert result.responses[-1] == 200


def test_sipp_missing_server_bye_fails(proto_server: Start, tmp_path: Path) -> None:
    server = proto_server()  # never hangs up
    result = sipp.speech_call(HOST, server.port, None, wait_s=1.0, workdir=tmp_path)
    assert not result.ok
    assert result.returncode == 1
    assert "BYE" not in result.requests_received


def test_sipp_hangup_early_mid_prompt(proto_server: Start, audio: dict, tmp_path: Path) -> None:
    server = proto_server(wav=audio["bot_wav"], lead_ms=BOT_LEAD_MS, hangup_after_play=True)
    result = sipp.hangup_early(HOST, server.port, 800, transport="tcp", workdir=tmp_path)
    assert result.ok, result.describe()
    assert result.requests_sent[-1] == "BYE"
    assert "HANGUP" not in server.log()  # we hung up before the prompt ended


@pytest.mark.parametrize(("transport", "codec"), [("udp", "PCMU"), ("tcp", "PCMA")])
def test_baresip_hears_what_the_server_played(
    proto_server: Start, audio: dict, tmp_path: Path, transport: str, codec: str
) -> None:
    server = proto_server(wav=audio["bot_wav"], lead_ms=BOT_LEAD_MS, hangup_after_play=True)
    result = run_baresip_call(
        f"sip:hear@{HOST}:{server.port}", audio["caller_wav"], codec, duration_s=15,
        workdir=tmp_path, transport=transport,
    )  # fmt: skip
    assert result.established and result.closed_by == "remote", result.describe()
    law = Codec.from_name(codec)
    reference = law.decode(law.encode(audio["bot"]))
    match = find_reference(result.received_pcm(), reference)
    assert match.correlation > 0.8, (match, result.describe())
    assert abs(match.offset_s - BOT_LEAD_MS / 1000) < 0.3, match
    sent = find_reference_pieces(server.recording("hear"), audio["caller"])
    assert sent.correlation > 0.9, sent


def test_baresip_refused_call(proto_server: Start, tmp_path: Path, audio: dict) -> None:
    server = proto_server()
    result = run_baresip_call(
        f"sip:404@{HOST}:{server.port}", audio["caller_wav"], "PCMU", 5, tmp_path
    )
    assert not result.established
    assert result.closed_by == "remote"
    assert "404" in result.close_reason
    assert result.received_wav is None
