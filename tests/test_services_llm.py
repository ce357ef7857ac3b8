"""The chat client against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from app.services.llm import ChatClient, ChatMessage, ChatRequest, speakable
from tests.http_backends import FakeChatServer, JsonBackend, Reply, unused_url

HISTORY = (
    ChatMessage("system", "You are a bank's phone assistant. Answer briefly."),
    ChatMessage("user", "What is my balance?"),
    ChatMessage("assistant", "Your balance is 12 euros."),
    ChatMessage("user", "And my savings?"),
)


@pytest.fixture
def chat() -> Iterator[FakeChatServer]:
    with FakeChatServer() as server:
        yield server


@pytest.fixture
def client() -> Iterator[ChatClient]:
    with ChatClient() as chat_client:
        yield chat_client


def ask(url: str, **overrides) -> ChatRequest:
    fields = {"url": url, "model": "tiny-model", "messages": HISTORY, **overrides}
    return ChatRequest(**fields)


def test_request_is_openai_chat_format(client):
    with FakeChatServer(api_key="sk-test") as chat:
        reply = client.complete(ask(chat.url + "/", api_key="sk-test", max_tokens=60))

    assert reply.ok, reply.error
    assert reply.text == "You said: And my savings?"
    assert reply.error is None and reply.elapsed_s > 0
    (seen,) = chat.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {
        "model": "tiny-model",
        "messages": [{"role": m.role, "content": m.content} for m in HISTORY],
        "max_tokens": 60,
        "temperature": 0.3,
        "stream": False,
    }


def test_no_api_key_sends_no_authorization(chat, client):
    assert client.complete(ask(chat.url)).ok
    assert "authorization" not in chat.requests[0].headers


def test_wrong_api_key_reports_the_server_message_without_the_key(client):
    with FakeChatServer(api_key="sk-right") as chat:
        reply = client.complete(ask(chat.url, api_key="sk-wrong"))

    assert not reply.ok
    assert reply.error == "HTTP 401: Incorrect API key provided."


def test_reply_is_made_fit_to_speak(chat, client):
    chat.reply = lambda messages: (
        "<think>The user wants savings.</think>\n"
        "## Your savings\n\n"
        "You have **340 euros** in *savings*.\n"
        "- Interest: `1.5%`\n"
        "- Next payment: [1 July](https://bank.example/x)\n"
        "```\nignored fence\n```\n"
    )

    reply = client.complete(ask(chat.url))

    assert reply.text == (
        "Your savings. You have 340 euros in savings. Interest: 1.5%. "
        "Next payment: 1 July. ignored fence"
    )


@pytest.mark.parametrize(
    ("text", "max_chars", "spoken"),
    [
        ("  Hello there.  ", 400, "Hello there."),
        ("Line one\nline two", 400, "Line one line two"),
        ("# Title\nBody.", 400, "Title. Body."),
        ("* a\n* b", 400, "a. b."),
        ("1. first\n2. second", 400, "1. first 2. second"),
        ("Press 1 or # to confirm, my_account and 5 * 3.", 400, None),
        ("__bold__ and _it_ and ~~gone~~", 400, "bold and it and gone"),
        ("> quoted", 400, "quoted."),
        ("One. Two three four. Five six seven eight.", 25, "One. Two three four."),
        ("Is it? Yes! And then some more words here", 20, "Is it? Yes!"),
        ("It costs 3.50 euros today for you", 12, "It costs."),
        ("Averyveryverylongwordwithoutspaces", 10, "Averyvery."),
        ("Short.", 6, "Short."),
    ],
)
def test_speakable(text, max_chars, spoken):
    assert speakable(text, max_chars) == (text if spoken is None else spoken)


def test_speakable_cap_never_exceeds_max_chars():
    text = "word " * 500
    for limit in (1, 5, 17, 400):
        assert len(speakable(text, limit)) <= limit


def test_reply_is_capped_at_a_sentence(chat):
    chat.reply = lambda _: "First sentence here. " + "Second one goes on and on. " * 30
    with ChatClient(max_chars=60) as client:
        reply = client.complete(ask(chat.url))

    assert reply.text == "First sentence here. Second one goes on and on."


def test_reply_cut_by_max_tokens_drops_the_unfinished_sentence(chat, client):
    chat.reply = lambda _: "Your balance is 12 euros. Your savings are"
    chat.finish_reason = "length"

    assert client.complete(ask(chat.url)).text == "Your balance is 12 euros."


def test_server_error_reports_its_message(chat, client):
    chat.fail("500", "The model is overloaded, try again.")

    reply = client.complete(ask(chat.url))

    assert (reply.ok, reply.text) == (False, "")
    assert reply.error == "HTTP 500: The model is overloaded, try again."
    assert len(chat.requests) == 1  # no retries: a caller is waiting


def test_error_status_without_json(client):
    with JsonBackend({("POST", "/v1/chat/completions"): Reply.text("oops", 502)}) as server:
        reply = client.complete(ask(f"{server.url}/v1"))
    assert reply.error == "HTTP 502"


def test_timeout_is_for_the_whole_request(chat, client):
    chat.fail("hang")

    reply = client.complete(ask(chat.url, timeout_s=0.5))

    assert (reply.ok, reply.error) == (False, "timed out after 0.5 s")
    assert 0.4 < reply.elapsed_s < 3


def test_malformed_responses(chat, client):
    chat.fail("no_choices")
    assert client.complete(ask(chat.url)).error == "malformed response: no choices"

    chat.fail("malformed")
    error = client.complete(ask(chat.url)).error
    assert error.startswith("response is not JSON: <html>")

    chat.fail(None)
    chat.reply = lambda _: "  \n** **\n"
    assert client.complete(ask(chat.url)).error == "empty reply"


def test_error_object_in_a_200_answer(client):
    body = {"error": {"message": "model 'tiny-model' not found"}}
    with JsonBackend({("POST", "/v1/chat/completions"): Reply.json(body)}) as server:
        reply = client.complete(ask(f"{server.url}/v1"))
    assert reply.error == "server error: model 'tiny-model' not found"


def test_connection_refused(client):
    reply = client.complete(ask(f"{unused_url()}/v1"))
    assert (reply.ok, reply.error) == (False, "connection refused")


def test_cancelled_call_sends_nothing(chat, client):
    cancel = threading.Event()
    cancel.set()

    reply = client.complete(ask(chat.url), cancel)

    assert (reply.ok, reply.error) == (False, "cancelled")
    assert chat.requests == []
