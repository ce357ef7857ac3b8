"""app.sip.dtmf: which keys reach the call core, and the SIP INFO bodies we parse ourselves."""

from __future__ import annotations

import pytest

from app.sip.dtmf import DtmfBodyError, content_type, normalize_key, parse_dtmf_body


@pytest.mark.parametrize(
    ("reported", "key"),
    [("5", "5"), ("*", "*"), ("#", "#"), ("a", "A"), ("D", "D"), (" 9 ", "9"),
     ("R", None), ("", None), ("12", None), ("E", None)],
)  # fmt: skip
def test_normalize_key(reported: str, key: str | None) -> None:
    assert normalize_key(reported) == key


def test_content_type_drops_parameters_and_case() -> None:
    assert content_type("Application/DTMF; charset=utf-8") == "application/dtmf"
    assert content_type("application/dtmf-relay") == "application/dtmf-relay"
    assert content_type("") == ""


@pytest.mark.parametrize(("body", "key"), [("5", "5"), ("#\r\n", "#"), (" b ", "B")])
def test_bare_dtmf_body(body: str, key: str) -> None:
    assert parse_dtmf_body(body) == key


@pytest.mark.parametrize("body", ["", "\r\n", "12", "x", "Signal=5", "5 6"])
def test_bad_bare_dtmf_body(body: str) -> None:
    with pytest.raises(DtmfBodyError):
        parse_dtmf_body(body)
