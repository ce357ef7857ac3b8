"""Just enough SIP/SDP reading to decide on an INVITE before PJSIP answers it.

PJSIP negotiates the media itself; we read the offer first so that a caller offering no codec we
speak gets a clear 488 instead of a call that fails after answer.
"""

from __future__ import annotations

from dataclasses import dataclass

STATIC_PAYLOAD_TYPES = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 18: "G729"}


@dataclass(frozen=True, slots=True)
class SipRequest:
    """The parts of a raw SIP request that admission control needs."""

    method: str
    request_uri: str
    headers: dict[str, str]
    body: str


def parse_request(raw: str) -> SipRequest:
    """Split a raw SIP request into start line, headers (last value wins) and body.

    Raises ValueError on a message that is not a SIP request.
    """
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("SIP/"):
        raise ValueError(f"not a SIP request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[_canonical_header(name.strip())] = value.strip()
    return SipRequest(method=parts[0], request_uri=parts[1], headers=headers, body=body)


_COMPACT_HEADERS = {"f": "from", "t": "to", "i": "call-id", "c": "content-type", "m": "contact"}


def _canonical_header(name: str) -> str:
    lowered = name.lower()
    return _COMPACT_HEADERS.get(lowered, lowered)


def offered_audio_codecs(sdp: str) -> list[str] | None:
    """Encoding names (upper case) offered on the first active audio stream, in offer order.

    Returns None when there is no SDP offer at all (a late-offer INVITE: we will offer in the 200).
    Returns [] when there is SDP but no usable audio stream.
    """
    if "m=" not in sdp:
        return None
    payload_types: list[int] = []
    rtpmap: dict[int, str] = {}
    in_audio = False
    found_audio = False
    for raw_line in sdp.replace("\r\n", "\n").split("\n"):
        line = raw_line.strip()
        if line.startswith("m="):
            fields = line[2:].split()
            active = len(fields) >= 4 and fields[0] == "audio" and fields[1] != "0"
            in_audio = active and not found_audio
            if in_audio:
                found_audio = True
                payload_types = [int(pt) for pt in fields[3:] if pt.isdigit()]
        elif in_audio and line.startswith("a=rtpmap:"):
            pt_text, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            if pt_text.isdigit():
                rtpmap[int(pt_text)] = encoding.split("/")[0].upper()
    names = []
    for pt in payload_types:
        name = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
        if name:
            names.append(name)
    return names
