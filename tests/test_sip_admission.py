"""Admission control and INVITE parsing, without a SIP stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.sip.admission import Admission
from app.sip.routes import RouteTable
from app.sip.sdp import offered_audio_codecs, parse_request
from app.state import MemoryState

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


class Slots:
    """A cluster-wide cap stand-in that records which Call-IDs asked for a slot."""

    def __init__(self, free: bool) -> None:
        self.free = free
        self.asked: list[str] = []

    def reserve(self, call_id: str) -> bool:
        self.asked.append(call_id)
        return self.free


def clustered(routes: RouteTable, slots: Slots, active: int = 0) -> Admission:
    return Admission(routes, ["PCMU", "PCMA"], 2, lambda: active, reserve=slots.reserve)


def test_cluster_slot_is_taken_with_the_call_id(routes: RouteTable) -> None:
    slots = Slots(free=True)
    decision = clustered(routes, slots).decide(parse_request(invite()))
    assert (decision.status, decision.dialplan) == (200, "demo")
    assert slots.asked == ["abc"]


def test_full_cluster_is_503_with_retry_after(routes: RouteTable) -> None:
    slots = Slots(free=False)
    decision = clustered(routes, slots).decide(parse_request(invite()))
    assert (decision.status, decision.reason) == (503, "Service Unavailable")
    assert ("Retry-After", "30") in decision.headers
    assert decision.dialled == "1000"
    assert slots.asked == ["abc"]


@pytest.mark.parametrize(
    ("uri", "sdp", "active", "status"),
    [
        ("sip:9999@127.0.0.1", SDP_PCMU_PCMA, 0, 404),
        ("sip:1000@127.0.0.1", SDP_G722, 0, 488),
        ("sip:1000@127.0.0.1", SDP_PCMU_PCMA, 2, 503),  # this node is full
    ],
)
def test_rejected_invite_takes_no_cluster_slot(
    routes: RouteTable, uri: str, sdp: str, active: int, status: int
) -> None:
    slots = Slots(free=True)
    decision = clustered(routes, slots, active).decide(parse_request(invite(uri, sdp)))
    assert decision.status == status
    assert slots.asked == []


def test_non_invite_takes_no_cluster_slot(routes: RouteTable) -> None:
    slots = Slots(free=True)
    options = invite().replace("INVITE sip:", "OPTIONS sip:", 1)
    assert clustered(routes, slots).decide(parse_request(options)).status == 405
    assert slots.asked == []


def test_invite_without_call_id_takes_no_cluster_slot(routes: RouteTable) -> None:
    slots = Slots(free=True)
    raw = invite().replace("Call-ID: abc\r\n", "")
    assert clustered(routes, slots).decide(parse_request(raw)).status == 400
    assert slots.asked == []


def test_cluster_slot_with_a_real_live_state(routes: RouteTable) -> None:
    state = MemoryState("node-a")
    admission = Admission(
        routes, ["PCMU"], 10, lambda: 0, reserve=lambda call_id: state.reserve(call_id, 1)
    )
    assert admission.decide(parse_request(invite())).status == 200
    other = invite().replace("Call-ID: abc", "Call-ID: def")
    assert admission.decide(parse_request(other)).status == 503
    state.release("abc")  # the first INVITE was never answered
    assert admission.decide(parse_request(other)).status == 200
