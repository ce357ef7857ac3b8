"""Admission control and INVITE parsing, without a SIP stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.sip.admission import Admission
from app.sip.routes import RouteTable
from app.sip.sdp import offered_audio_codecs, parse_request

SDP_PCMU_PCMA = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)
SDP_G722 = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 9\r\n"
SDP_DYNAMIC_PCMU = "v=0\r\nm=audio 6000 RTP/AVP 96\r\na=rtpmap:96 pcmu/8000\r\n"
SDP_AUDIO_DISABLED = "v=0\r\nm=audio 0 RTP/AVP 0\r\nm=video 7000 RTP/AVP 96\r\n"


def invite(uri: str = "sip:1000@127.0.0.1:5060", sdp: str = SDP_PCMU_PCMA) -> str:
    return (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099\r\nf: <sip:caller@x>;tag=1\r\n"
        f"To: <{uri}>\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    )


def test_parse_request_reads_start_line_headers_and_body() -> None:
    request = parse_request(invite())
    assert request.method == "INVITE"
    assert request.request_uri == "sip:1000@127.0.0.1:5060"
    assert request.headers["from"] == "<sip:caller@x>;tag=1"  # compact form expanded
    assert request.headers["call-id"] == "abc"
    assert request.body.startswith("v=0")


@pytest.mark.parametrize("raw", ["", "garbage", "SIP/2.0 200 OK\r\n\r\n", "INVITE sip:x\r\n\r\n"])
def test_parse_request_rejects_non_requests(raw: str) -> None:
    with pytest.raises(ValueError, match="not a SIP request line"):
        parse_request(raw)


@pytest.mark.parametrize(
    ("sdp", "expected"),
    [
        (SDP_PCMU_PCMA, ["PCMA", "PCMU", "TELEPHONE-EVENT"]),
        (SDP_G722, ["G722"]),
        (SDP_DYNAMIC_PCMU, ["PCMU"]),
        (SDP_AUDIO_DISABLED, []),
        ("", None),
    ],
)
def test_offered_audio_codecs(sdp: str, expected: list[str] | None) -> None:
    assert offered_audio_codecs(sdp) == expected


@pytest.fixture
def routes(tmp_path: Path) -> RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text('[[route]]\nnumber = "1000"\ndialplan = "demo"\n')
    return RouteTable.load(path, {"demo"})


def admission(routes: RouteTable, active: int = 0, max_calls: int = 2) -> Admission:
    return Admission(routes, ["PCMU", "PCMA"], max_calls, lambda: active)


def test_known_number_with_g711_is_accepted(routes: RouteTable) -> None:
    decision = admission(routes).decide(parse_request(invite()))
    assert (decision.status, decision.dialplan, decision.dialled) == (200, "demo", "1000")


def test_late_offer_invite_is_accepted(routes: RouteTable) -> None:
    assert admission(routes).decide(parse_request(invite(sdp=""))).status == 200


def test_unknown_number_is_404(routes: RouteTable) -> None:
    decision = admission(routes).decide(parse_request(invite("sip:9999@127.0.0.1")))
    assert (decision.status, decision.reason) == (404, "Not Found")


def test_no_common_codec_is_488(routes: RouteTable) -> None:
    decision = admission(routes).decide(parse_request(invite(sdp=SDP_G722)))
    assert (decision.status, decision.reason) == (488, "Not Acceptable Here")


def test_full_server_is_503_with_retry_after(routes: RouteTable) -> None:
    decision = admission(routes, active=2, max_calls=2).decide(parse_request(invite()))
    assert decision.status == 503
    assert ("Retry-After", "30") in decision.headers


def test_wrong_number_is_404_even_when_busy(routes: RouteTable) -> None:
    decision = admission(routes, active=5).decide(parse_request(invite("sip:9@h")))
    assert decision.status == 404
