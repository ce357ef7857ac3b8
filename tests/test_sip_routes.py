"""Routes: dialled number -> dialplan, and the user part of Request-URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.sip.routes import RoutesError, RouteTable, request_uri_user

REPO_ROOT = Path(__file__).resolve().parent.parent
KNOWN = {"demo", "claims", "sales"}
ONE = '[[route]]\nnumber = "1"\ndialplan = "demo"\n'


def table(tmp_path: Path, text: str, known: set[str] = KNOWN) -> RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return RouteTable.load(path, known)


def errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(RoutesError) as info:
        table(tmp_path, text)
    return str(info.value)


def test_shipped_routes_reach_the_demo():
    routes = RouteTable.load(REPO_ROOT / "sip_config" / "routes.toml", {"demo"})
    assert routes.lookup("1000") == "demo"
    assert routes.lookup("demo") == "demo"
    assert routes.lookup("1001") is None


def test_exact_numbers_win_over_patterns_then_file_order(tmp_path):
    routes = table(
        tmp_path,
        r"""
        [[route]]
        pattern = '^\+?4420\d+$'
        dialplan = "claims"
        [[route]]
        pattern = '^\+?44\d+$'
        dialplan = "sales"
        [[route]]
        number = "+442079460000"
        dialplan = "demo"
        """,
    )
    assert routes.lookup("+442079460000") == "demo"
    assert routes.lookup("442079460001") == "claims"
    assert routes.lookup("+441612345678") == "sales"
    assert routes.lookup("x+441612345678") is None


def test_pattern_must_match_the_whole_user_part(tmp_path):
    routes = table(tmp_path, '[[route]]\npattern = "44"\ndialplan = "demo"\n')
    assert routes.lookup("44") == "demo"
    assert routes.lookup("4420") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[route]]\ndialplan = "demo"\n', "route #1: needs exactly one of 'number' or 'pattern'"),
        (
            '[[route]]\nnumber = "1"\npattern = "1"\ndialplan = "demo"\n',
            "route #1: needs exactly one of",
        ),
        ('[[route]]\npattern = "(12"\ndialplan = "demo"\n', "route #1: bad pattern '(12'"),
        (
            ONE + '[[route]]\nnumber = "2"\ndialplan = "dmo"\n',
            "route #2: unknown dialplan 'dmo' (did you mean 'demo'?)",
        ),
        ('[[route]]\nnumber = 1000\ndialplan = "demo"\n', 'quote it: "1000"'),
        ('[[route]]\nnumber = "1"\n', "route #1: needs 'dialplan'"),
        ('[[route]]\nnumber = "1"\ndialpan = "demo"\n', "unknown key 'dialpan'"),
        ('[[routes]]\nnumber = "1"\ndialplan = "demo"\n', "unknown key 'routes'"),
        ("", "no [[route]] entries"),
        (
            ONE + '[[route]]\nnumber = "1"\ndialplan = "sales"\n',
            "route #2: number '1' already routed by route #1",
        ),
        ('[[route]\nnumber = "1"\n', "invalid TOML"),
    ],
)
def test_bad_routes_name_file_and_route(tmp_path, text, expected):
    message = errors(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "routes.toml") in message


def test_every_bad_route_is_reported(tmp_path):
    with pytest.raises(RoutesError) as info:
        table(tmp_path, '[[route]]\ndialplan = "x"\n[[route]]\npattern = "["\ndialplan = "demo"\n')
    assert len(info.value.errors) == 3  # route 1: no number/pattern, unknown dialplan; route 2


def test_missing_routes_file(tmp_path):
    with pytest.raises(RoutesError, match="routes file not found"):
        RouteTable.load(tmp_path / "routes.toml", KNOWN)


@pytest.mark.parametrize(
    ("uri", "user"),
    [
        ("sip:1000@127.0.0.1", "1000"),
        ("sip:1000@host;transport=tcp", "1000"),
        ("SIPS:demo@host:5061", "demo"),
        ("<sip:1000@host>", "1000"),
        ("sip:alice:secret@host", "alice"),
        ("sip:%2B4420@host", "+4420"),
        ("sip:+4420;isub=12@host;user=phone", "+4420"),
        ("tel:+442079460000", "+442079460000"),
        ("tel:+44-20-7946-0000;phone-context=example.com", "+442079460000"),
    ],
)
def test_request_uri_user(uri, user):
    assert request_uri_user(uri) == user


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "1000",
        "http://host/1000",
        "sip:host",
        "sip:@host",
        "sip:1000@",
        "sip:10%zz@host",
        "sip:a%20b@host",
        "tel:",
        "sip:%FF@host",
    ],
)
def test_request_uri_user_rejects_garbage(uri):
    with pytest.raises(ValueError):
        request_uri_user(uri)
