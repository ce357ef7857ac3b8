"""The webhook client against real HTTP servers on loopback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from app.services.webhook import (
    PathNotFound,
    WebhookClient,
    WebhookRequest,
    extract,
    render_value,
)
from tests.http_backends import JsonBackend, Reply, unused_url


@pytest.fixture
def backend() -> Iterator[JsonBackend]:
    with JsonBackend() as server:
        yield server


@pytest.fixture
def client() -> Iterator[WebhookClient]:
    with WebhookClient() as webhook:
        yield webhook


def test_post_sends_json_body_and_headers_as_given(backend, client):
    backend.route("POST", "/accounts/lookup", Reply.json({"account": {"balance": 12.5}}))
    body = {"account": "1234", "caller": "+3222", "digits": [1, 2, 3], "name": "Zoë"}

    response = client.call(
        WebhookRequest(
            "POST",
            f"{backend.url}/accounts/lookup",
            headers={"Authorization": "Bearer s3cret", "X-Call-Id": "call-1"},
            body=body,
        )
    )

    assert response.ok, response.error
    assert (response.status, response.data, response.error) == (
        200,
        {"account": {"balance": 12.5}},
        None,
    )
    assert response.attempts == 1
    assert 0 < response.elapsed_s < 5
    (seen,) = backend.requests
    assert (seen.method, seen.path) == ("POST", "/accounts/lookup")
    assert seen.json == body
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["x-call-id"] == "call-1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"].startswith("Switchboard/")


def test_get_sends_no_body(backend, client):
    backend.route("GET", "/balance", Reply.json([{"name": "savings"}]))

    response = client.call(WebhookRequest("get", f"{backend.url}/balance?account=7"))

    assert response.ok and response.data == [{"name": "savings"}]
    (seen,) = backend.requests
    assert (seen.method, seen.path, seen.query) == ("GET", "/balance", {"account": ["7"]})
    assert seen.body == b""
    assert "content-type" not in seen.headers


def test_empty_2xx_body_is_ok_without_data(backend, client):
    backend.route("POST", "/notify", Reply.empty(204))

    response = client.call(WebhookRequest("POST", f"{backend.url}/notify", body={"x": 1}))

    assert (response.ok, response.status, response.data) == (True, 204, None)


def test_slow_answer_within_the_timeout_is_ok(backend, client):
    backend.route("GET", "/slow", Reply.slow(0.3, {"done": True}))

    response = client.call(WebhookRequest("GET", f"{backend.url}/slow", timeout_s=3.0))

    assert response.ok and response.data == {"done": True}
    assert response.elapsed_s >= 0.3


def test_hanging_server_times_out_every_attempt(backend, client):
    backend.route("POST", "/hang", Reply.hang())
    request = WebhookRequest(
        "POST", f"{backend.url}/hang", body={}, timeout_s=0.4, retries=2, backoff_s=0.1
    )

    response = client.call(request)

    assert not response.ok
    assert response.status is None
    assert response.error == "timed out after 0.4 s (3 attempts)"
    assert response.attempts == 3
    assert len(backend.requests) == 3
    # three timeouts plus backoffs of 0.1 and 0.2 s: 1.5 s; generous bounds, no tight timing
    assert 1.4 <= response.elapsed_s < 5


def test_500_then_success_is_retried(backend, client):
    backend.route("POST", "/flaky", [Reply.error(500), Reply.json({"balance": 3})])

    response = client.call(
        WebhookRequest("POST", f"{backend.url}/flaky", body={"a": 1}, retries=2, backoff_s=0.05)
    )

    assert response.ok and response.data == {"balance": 3}
    assert response.attempts == 2
    assert [r.json for r in backend.requests] == [{"a": 1}, {"a": 1}]


def test_500_exhausting_retries(backend, client):
    backend.route("POST", "/down", Reply.error(500))

    response = client.call(WebhookRequest("POST", f"{backend.url}/down", retries=2, backoff_s=0.05))

    assert (response.ok, response.status, response.error) == (False, 500, "HTTP 500")
    assert response.attempts == 3
    assert len(backend.requests) == 3


def test_404_is_not_retried(backend, client):
    response = client.call(
        WebhookRequest("GET", f"{backend.url}/missing", retries=3, backoff_s=0.05)
    )

    assert (response.ok, response.status, response.error) == (False, 404, "HTTP 404")
    assert response.attempts == 1
    assert len(backend.requests) == 1


def test_malformed_json_is_an_error_and_not_retried(backend, client):
    backend.route("GET", "/bad", Reply.malformed())
    backend.route("GET", "/html", Reply.text("<html>" + "x" * 200, content_type="text/html"))

    bad = client.call(WebhookRequest("GET", f"{backend.url}/bad", retries=2))
    html = client.call(WebhookRequest("GET", f"{backend.url}/html"))

    assert (bad.ok, bad.status, bad.attempts) == (False, 200, 1)
    assert bad.error == 'response is not JSON: {"balance": 12.5,'
    assert html.error == "response is not JSON: " + ("<html>" + "x" * 200)[:80]


def test_response_over_the_size_limit_is_refused(backend):
    backend.route("GET", "/big", Reply.json({"blob": "x" * 5000}))

    with WebhookClient(max_response_bytes=1000) as small:
        response = small.call(WebhookRequest("GET", f"{backend.url}/big"))

    assert (response.ok, response.error) == (False, "response too large (over 1000 bytes)")


def test_connection_refused(client):
    response = client.call(
        WebhookRequest("POST", f"{unused_url()}/hook", body={}, retries=1, backoff_s=0.05)
    )

    assert (response.ok, response.status) == (False, None)
    assert response.error == "connection refused (2 attempts)"
    assert response.attempts == 2


def test_invalid_url_is_reported_not_raised(client):
    response = client.call(WebhookRequest("GET", "ftp://example.invalid/x", retries=2))

    assert (response.ok, response.error, response.attempts) == (False, "invalid URL", 1)


def test_cancel_during_backoff_returns_quickly(backend, client):
    backend.route("POST", "/down", Reply.error(503))
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()

    started = time.monotonic()
    response = client.call(
        WebhookRequest("POST", f"{backend.url}/down", retries=3, backoff_s=5.0), cancel
    )

    assert time.monotonic() - started < 2.5
    assert (response.ok, response.error, response.attempts) == (False, "cancelled", 1)
    assert response.status == 503


def test_cancelled_before_the_first_attempt_sends_nothing(backend, client):
    cancel = threading.Event()
    cancel.set()

    response = client.call(WebhookRequest("GET", f"{backend.url}/x"), cancel)

    assert (response.ok, response.error, response.attempts) == (False, "cancelled", 0)
    assert backend.requests == []


def test_failed_call_logs_one_line_without_secrets(backend, client, caplog):
    backend.route("POST", "/down", Reply.error(500))
    caplog.set_level(logging.DEBUG, logger="app.services.webhook")

    response = client.call(
        WebhookRequest(
            "POST",
            f"{backend.url}/down?token=query-secret",
            headers={"Authorization": "Bearer header-secret"},
            body={"pin": "1234"},
            retries=2,
            backoff_s=0.01,
        )
    )

    assert response.error == "HTTP 500"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1
    assert "/down" in lines[0] and "HTTP 500" in lines[0]
    everything = " ".join(r.getMessage() for r in caplog.records) + response.error
    assert "secret" not in everything
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 3


def test_cookies_do_not_travel_between_calls(backend, client):
    backend.route(
        "GET", "/login", Reply.json({}, headers={"Set-Cookie": "session=caller-a; Path=/"})
    )
    backend.route("GET", "/next", Reply.json({}))

    client.call(WebhookRequest("GET", f"{backend.url}/login"))
    client.call(WebhookRequest("GET", f"{backend.url}/next"))

    assert "cookie" not in backend.requests_to("/next")[0].headers


def test_one_client_serves_many_threads(backend, client):
    backend.route("POST", "/hook", lambda request: {"echo": request.json["n"]})
    results: dict[int, object] = {}

    def one(n: int) -> None:
        response = client.call(WebhookRequest("POST", f"{backend.url}/hook", body={"n": n}))
        results[n] = response.data

    threads = [threading.Thread(target=one, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert results == {n: {"echo": n} for n in range(12)}


DATA = {
    "account": {"balance": 12.5, "owner": {"name": "Ann"}},
    "items": [{"name": "first"}, {"name": "second"}],
    "active": True,
    "note": None,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("account.balance", 12.5),
        ("account.owner.name", "Ann"),
        ("items.0.name", "first"),
        ("items.-1.name", "second"),
        ("active", True),
        ("note", None),
        ("items", DATA["items"]),
        ("", DATA),
    ],
)
def test_extract(path, expected):
    assert extract(DATA, path) == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("account.missing", "'account.missing': no field 'missing' in account"),
        ("nothing", "'nothing': no field 'nothing' in the response"),
        ("items.2.name", "'items.2.name': no item 2 in items (it has 2)"),
        ("items.first", "'items.first': items is a list, and 'first' is not an index"),
        ("account.balance.cents", "'account.balance.cents': account.balance is a number"),
        ("note.x", "'note.x': note is null, not an object"),
        ("account..balance", "'account..balance': empty segment in the path"),
    ],
)
def test_extract_missing_raises_key_error_saying_what(path, message):
    with pytest.raises(KeyError) as caught:
        extract(DATA, path)
    assert isinstance(caught.value, PathNotFound)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("hello", "hello"),
        ("", ""),
        (42, "42"),
        (12.0, "12"),
        (12.5, "12.5"),
        (-0.25, "-0.25"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ({"a": [1, "b"]}, '{"a":[1,"b"]}'),
        (["é", 2.5], '["é",2.5]'),
    ],
)
def test_render_value(value, text):
    assert render_value(value) == text
