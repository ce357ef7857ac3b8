"""Keypad digits from SIP: which keys we pass on, and the SIP INFO bodies PJSIP leaves to us.

Pure Python (no pjsua2), so the parsing is unit-tested without a SIP stack.

How digits reach us (PJSIP 2.15, checked against sipp on loopback):
- RFC 2833/4733 telephone-events: PJSIP's stream reports each event once, when it starts;
  the three end-of-event retransmissions and the duration updates are not reported again.
- SIP INFO `application/dtmf-relay` (`Signal=5\\r\\nDuration=160`): PJSIP parses it itself,
  reports the digit and answers 200; a body it cannot parse gets 400 Bad Request from PJSIP.
  PJSIP reads one character after `Signal=`, so a numeric event code such as `Signal=10` is
  taken as "1" (a PJSIP limitation; `Signal=*` is the usual form).
- SIP INFO `application/dtmf` (a bare key as the body): PJSIP does not handle it (it would
  answer 500), so `app.sip.info` parses it with `parse_dtmf_body` and answers 200, or 400 when
  the body is not one key.
"""

from __future__ import annotations

from app.dialog.actions import DTMF_KEYS

DTMF_RELAY = "application/dtmf-relay"
DTMF_BARE = "application/dtmf"


class DtmfBodyError(ValueError):
    """A SIP INFO DTMF body that names no key."""


def normalize_key(digit: str) -> str | None:
    """The key as the call core wants it ("a" -> "A"), or None for anything else (e.g. the
    flash event "R" that PJSIP reports for telephone-event 16)."""
    key = digit.strip().upper()
    if len(key) == 1 and key in DTMF_KEYS:
        return key
    return None


def content_type(value: str) -> str:
    """A `Content-Type` value without parameters, in lower case ('Application/DTMF; x=1' ->
    'application/dtmf')."""
    return value.split(";", 1)[0].strip().lower()


def parse_dtmf_body(body: str) -> str:
    """The key in an `application/dtmf` body: one key, optionally with surrounding white space.

    Raises `DtmfBodyError` for anything else (empty, several characters, not a key).
    """
    key = normalize_key(body) if len(body.strip()) == 1 else None
    if key is None:
        raise DtmfBodyError(f"not a DTMF key: {body[:40]!r}")
    return key
