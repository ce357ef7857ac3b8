"""Keypresses and transfers through the real SIP agent, with real peers on loopback.

The agent runs in a subprocess (`tests.sip.agent_server`: one PJSIP endpoint per process) with a
scripted call core that reports the keys it gets and transfers its call on command. Callers
are sipp (RFC 4733 keys in its RTP, SIP INFO keys, REFER answered as each test needs) and
baresip (which follows a REFER by itself); transfer targets are sipp (reports who called it)
and baresip (records what it hears, so we can check the audio really is bridged).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sip import sipp
from tests.sip.agent_process import AgentProcess, start_agent
from tests.sip.audio_match import find_reference_pieces, telephone_reference
from tests.sip.baresip import run_baresip_call, start_baresip_target
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.sip.sipp import InfoKey
from tests.sip.target import SippTarget, target_factory
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

StartTarget = Callable[..., SippTarget]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = start_agent(tmp_path_factory.mktemp("agent"))
    yield process
    code = process.stop()
    log = process.log()
    assert code == 0, f"agent exited with {code}:\n{log[-4000:]}"
    assert "Traceback" not in log and "handling failed" not in log, log[-6000:]


@pytest.fixture
def target_phone(tmp_path: Path) -> Iterator[StartTarget]:
    """Factory: `target_phone(answer=..., ...)` starts a sipp target (see `start_target`)."""
    with target_factory(tmp_path / "targets") as start:
        yield start


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Runs callers in the background while the test drives the agent."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def started_call(agent: AgentProcess, mark: int) -> str:
    """The Call-ID of the next call the scripted core started after `mark`."""
    return agent.wait_event("started", after=mark, timeout_s=10)["call_id"]


def keys_of(agent: AgentProcess, call_id: str) -> str:
    return "".join(event["digit"] for event in agent.of_call(call_id, "dtmf"))


# ------------------------------------------------------------------------------- DTMF


def test_rfc2833_keys_reach_the_core_once_each_in_order(
    agent: AgentProcess, shared_data: Path, tmp_path: Path
) -> None:
    """Keys in the RTP stream between speech; each key's three end packets are one press."""
    speech = build_digit_utterance(shared_data, "jackson", "38", seed=5, pad_ms=200)
    keys = "1234#*0AD"
    presses = [(300 + 200 * i, key) for i, key in enumerate(keys)]
    mark = agent.mark()
    result = sipp.dtmf_call(
        HOST, agent.port, speech=speech, rfc2833=presses, wait_s=2.6, workdir=tmp_path
    )
    assert result.ok, result.describe()
    call_id = started_call(agent, mark)
    assert agent.wait_event("ended", call_id)["hangup_by"] == "caller"
    assert keys_of(agent, call_id) == keys


def test_sip_info_keys_and_malformed_bodies(agent: AgentProcess, tmp_path: Path) -> None:
    """dtmf-relay and bare application/dtmf keys arrive; a malformed body gets 400 Bad Request
    (PJSIP's answer for dtmf-relay, ours for application/dtmf), is logged once, and the call
    goes on taking keys."""
    info = [
        InfoKey(100, "5"),
        InfoKey(200, "*"),
        InfoKey(300, body="garbage", expect=400),
        InfoKey(400, "7", content_type="application/dtmf"),
        InfoKey(500, body="12", content_type="application/dtmf", expect=400),
        InfoKey(600, "#", duration_ms=250),
        InfoKey(700, "b", content_type="application/dtmf"),
    ]
    mark = agent.mark()
    result = sipp.dtmf_call(HOST, agent.port, info=info, wait_s=0.3, workdir=tmp_path)
    assert result.ok, result.describe()  # every INFO got the status it expected
    assert result.responses.count(400) == 2
    call_id = started_call(agent, mark)
    agent.wait_event("ended", call_id)
    assert keys_of(agent, call_id) == "5*7#B"
    call_log = [line for line in agent.log().splitlines() if call_id in line]
    refused = [line for line in call_log if "INFO" in line and "WARNING" in line]
    assert len(refused) == 1 and "400 Bad Request" in refused[0], refused
    assert any("2 INFO requests refused" in line for line in call_log), call_log


def test_short_calls_back_to_back_reuse_the_audio_ports(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """Calls that end while the bot is talking give their bridge port back for the next call.

    Regression: freeing a port at the end of a call let PJSIP's media clock (whose port
    removal is asynchronous since 2.15) call into the freed object and crash the server."""
    call_ids = []
    for attempt in range(10):
        mark = agent.mark()
        result = sipp.dtmf_call(
            HOST, agent.port, wait_s=0.1 * (attempt % 3), workdir=tmp_path / str(attempt)
        )
        assert result.ok, result.describe()
        call_id = started_call(agent, mark)
        agent.wait_event("ended", call_id)
        call_ids.append(call_id)
    assert agent.proc.poll() is None, "the agent died"
    ports = {
        line.rsplit(" ", 1)[-1]
        for line in agent.log().splitlines()
        if "audio port switchboard" in line and any(c in line for c in call_ids)
    }
    assert 1 <= len(ports) <= 2, ports  # the agent holds at most 2 calls at once
    assert "media callback errors" not in agent.log()


# ------------------------------------------------------------------------------- REFER


def test_refer_followed_by_baresip(
    agent: AgentProcess, target_phone: StartTarget, pool: concurrent.futures.Executor,
    tmp_path: Path,
) -> None:  # fmt: skip
    """baresip takes the REFER, calls the target itself and reports 200 in its NOTIFY: the
    transfer is done, and we hang up our leg."""
    target = target_phone()
    speech = write_wav(tmp_path / "silence.wav", silence(500), 8000)
    mark = agent.mark()
    caller = pool.submit(run_baresip_call, agent.uri(), speech, "PCMU", 10, tmp_path / "caller")
    call_id = started_call(agent, mark)
    agent.transfer(call_id, target.uri("agent"), "bridge", 10)
    outcome = agent.wait_event("transfer", call_id, timeout_s=15)
    assert (outcome["ok"], outcome["method"], outcome["status"]) == (True, "refer", 200), outcome
    called = target.wait_called(5)
    assert called is not None and called.request_uri == target.uri("agent")
    assert called.from_uri == "sip:harness@127.0.0.1"  # the caller itself, not the server
    ended = agent.wait_event("ended", call_id)
    assert (ended["disposition"], ended["hangup_by"]) == ("ANSWERED", "transfer")
    result = caller.result(30)
    assert result.established and result.closed_by == "remote", result.describe()
    assert target.finish(10).ok
    assert f"transfer refer:{target.uri('agent')} 202/200" in agent.log()


@pytest.mark.parametrize(
    ("refer", "status", "error"),
    [
        (dict(refer="reject", refer_status=603, refer_reason="Decline"), 603,
         "REFER rejected: 603 Decline"),
        (dict(refer="accept", sipfrag="486 Busy Here"), 486, "transfer failed: 486 Busy Here"),
    ],
    ids=["refer-rejected", "notify-failed"],
)  # fmt: skip
def test_failed_refer_without_fallback(
    agent: AgentProcess, target_phone: StartTarget, pool: concurrent.futures.Executor,
    tmp_path: Path, refer: dict, status: int, error: str,
) -> None:  # fmt: skip
    target = target_phone(timeout_s=10)
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, **refer, bye_from="server", workdir=tmp_path
    )
    call_id = started_call(agent, mark)
    agent.transfer(call_id, target.uri("agent"), "none", 10)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["status"], outcome["error"]) == (False, status, error)
    assert outcome["elapsed_s"] < 2
    result = caller.result(30)
    assert result.ok, result.describe()  # and the bot hung up afterwards, as the core asked
    assert result.logged() == [f"REFER-TO {target.uri('agent')}"]
    assert agent.wait_event("ended", call_id)["hangup_by"] == "bot"
    assert target.called() is None


def test_caller_hangs_up_while_refer_is_pending(
    agent: AgentProcess, pool: concurrent.futures.Executor, tmp_path: Path
) -> None:
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="ignore", wait_s=0.8, bye_from="caller",
        workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, "sip:agent@127.0.0.1:9", "bridge", 10)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["error"]) == (False, "caller hung up")
    assert outcome["elapsed_s"] < 3
    assert caller.result(30).ok
    assert agent.wait_event("ended", call_id)["hangup_by"] == "caller"


def test_unanswered_refer_times_out(
    agent: AgentProcess, pool: concurrent.futures.Executor, tmp_path: Path
) -> None:
    """No answer to the REFER within the timeout: the worker gets its answer in time."""
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="ignore", wait_s=8, bye_from="server",
        workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, "sip:agent@127.0.0.1:9", "none", 2)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["error"]) == (False, "REFER not answered in 2 s")
    assert 1.9 < outcome["elapsed_s"] < 2.5
    assert caller.result(30).ok
    assert agent.wait_event("ended", call_id)["hangup_by"] == "bot"


def test_refer_accepted_then_caller_leaves(
    agent: AgentProcess, pool: concurrent.futures.Executor, tmp_path: Path
) -> None:
    """REFER accepted, and the transferee hangs up before any final NOTIFY: a transfer done."""
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="accept", sipfrag=None, wait_s=0.5,
        bye_from="caller", workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, "sip:agent@127.0.0.1:9", "bridge", 10)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["method"], outcome["status"]) == (True, "refer", 202)
    assert caller.result(30).ok
    assert agent.wait_event("ended", call_id)["hangup_by"] == "transfer"


# ------------------------------------------------------------------------------- bridge


def test_bridge_carries_the_callers_speech_and_ends_with_the_caller(
    agent: AgentProcess, shared_data: Path, pool: concurrent.futures.Executor, tmp_path: Path
) -> None:
    """REFER refused: the server calls the target (baresip) and bridges; the target hears the
    caller's speech; when the caller hangs up, the server hangs up the target."""
    speech = build_digit_utterance(shared_data, "jackson", "472", seed=3, pad_ms=200)
    lead_ms = 1000  # the caller starts talking after the REFER answer: bridge up by then
    target = start_baresip_target(tmp_path / "target")
    try:
        mark = agent.mark()
        caller = pool.submit(
            sipp.transfer_call, HOST, agent.port, refer="reject", refer_status=603,
            speech=silence(lead_ms) + speech, wait_s=lead_ms / 1000 + len(speech) / 16000 + 0.3,
            bye_from="caller", workdir=tmp_path / "caller",
        )  # fmt: skip
        call_id = started_call(agent, mark)
        agent.transfer(call_id, target.uri, "bridge", 10)
        outcome = agent.wait_event("transfer", call_id)
        assert (outcome["ok"], outcome["method"], outcome["status"]) == (True, "bridge", 200)
        assert caller.result(30).ok
        assert agent.wait_event("ended", call_id)["hangup_by"] == "caller"
        closed = target.wait_event("CALL_CLOSED", 5)  # the server hung up the target's leg
    finally:
        heard = target.stop()
    assert closed is not None, heard.describe()
    assert heard.established
    match = find_reference_pieces(heard.received_pcm(), telephone_reference(speech, 8000))
    assert match.correlation > 0.9, match
    assert abs(match.offset_s - lead_ms / 1000) < 0.3, match
    assert f"transfer refer:{target.uri} 603 failed, bridge 200" in agent.log()


def test_bridge_carries_audio_both_ways_and_cuts_the_bot_off(
    agent: AgentProcess, shared_data: Path, pool: concurrent.futures.Executor, tmp_path: Path
) -> None:
    """The caller echoes everything it hears (sipp -rtp_echo): the target (baresip) hears its
    own speech come back through caller and bridge, and the bot is no longer asked for audio."""
    speech = build_digit_utterance(shared_data, "nicolas", "915", seed=4, pad_ms=200)
    lead_ms = 1000
    wav = write_wav(tmp_path / "target.wav", silence(lead_ms) + speech, 8000)
    target = start_baresip_target(tmp_path / "target", speech_wav=wav)
    try:
        mark = agent.mark()
        caller = pool.submit(
            sipp.transfer_call, HOST, agent.port, refer="reject", refer_status=405,
            refer_reason="Method Not Allowed", rtp_echo=True,
            wait_s=lead_ms / 1000 + len(speech) / 16000 + 0.3, bye_from="caller",
            workdir=tmp_path / "caller",
        )  # fmt: skip
        call_id = started_call(agent, mark)
        agent.transfer(call_id, target.uri, "bridge", 10)
        outcome = agent.wait_event("transfer", call_id)
        assert (outcome["ok"], outcome["method"]) == (True, "bridge"), outcome
        assert caller.result(30).ok
        hung_up = agent.wait_event("caller_hung_up", call_id)
        target.wait_event("CALL_CLOSED", 5)
    finally:
        heard = target.stop()
    assert hung_up["bot_frames_after_transfer"] <= 2  # a frame in flight at most
    match = find_reference_pieces(heard.received_pcm(), telephone_reference(speech, 8000))
    assert match.correlation > 0.9, match
    assert lead_ms / 1000 <= match.offset_s < lead_ms / 1000 + 0.4, match  # plus the round trip


def test_bridge_ends_when_the_target_hangs_up(
    agent: AgentProcess, target_phone: StartTarget, pool: concurrent.futures.Executor,
    tmp_path: Path,
) -> None:  # fmt: skip
    target = target_phone(hangup_after_ms=600)
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="reject", refer_status=501,
        refer_reason="Not Implemented", wait_s=5, bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, target.uri("agent"), "bridge", 10)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["method"]) == (True, "bridge"), outcome
    called = target.wait_called(1)
    assert called is not None and called.from_uri.startswith("sip:switchboard@")
    result = caller.result(30)
    assert result.ok, result.describe()  # the server hung up the caller after the target left
    ended = agent.wait_event("ended", call_id)
    assert (ended["disposition"], ended["hangup_by"]) == ("ANSWERED", "transfer")
    assert target.finish(10).ok


def test_bridge_to_a_busy_target_fails(
    agent: AgentProcess, target_phone: StartTarget, pool: concurrent.futures.Executor,
    tmp_path: Path,
) -> None:  # fmt: skip
    target = target_phone(answer=False, status=486, reason="Busy Here", ring_ms=300)
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="reject", refer_status=603, wait_s=5,
        bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, target.uri("agent"), "bridge", 10)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["status"]) == (False, 486), outcome
    assert outcome["error"] == "REFER rejected: 603 Decline; bridge call failed: 486 Busy Here"
    assert caller.result(30).ok  # the bot hung up after the failure
    assert agent.wait_event("ended", call_id)["hangup_by"] == "bot"
    assert target.finish(10).ok


def test_bridge_call_not_answered_in_time_is_cancelled(
    agent: AgentProcess, target_phone: StartTarget, pool: concurrent.futures.Executor,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The target rings past the transfer's timeout: we cancel our call to it and report the
    failure in time; the caller is still there for the bot (which then hangs up)."""
    target = target_phone(ring_ms=20_000)
    mark = agent.mark()
    caller = pool.submit(
        sipp.transfer_call, HOST, agent.port, refer="reject", refer_status=603, wait_s=6,
        bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    call_id = started_call(agent, mark)
    agent.transfer(call_id, target.uri("agent"), "bridge", 2)
    outcome = agent.wait_event("transfer", call_id)
    assert (outcome["ok"], outcome["status"]) == (False, None), outcome
    assert outcome["error"] == "REFER rejected: 603 Decline; bridge call not answered in 2 s"
    assert 1.9 < outcome["elapsed_s"] < 2.5
    assert caller.result(30).ok
    assert agent.wait_event("ended", call_id)["hangup_by"] == "bot"
    result = target.finish(10)
    assert result.ok and target.cancelled(), result.describe()
