"""`switchboard eval calls`: scenario checks, RFC 4733 keys, wire latency, and real calls.

The unit tests need no server: bad scenarios must be refused with an error that names the
file, call and action (before anything is dialled); keys must go out as RFC 4733 events in the
caller's own RTP stream; turn latency is read from hand-made packet logs. The end-to-end test
(`sip`) starts `switchboard serve` with the example dialplans and runs every scenario in
dialplans/scenarios/ through the CLI, then one whose expectation is wrong on purpose.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.eval.caller import Input, ScriptedCaller, turn_latencies
from app.eval.rtp import (
    RTP_HEADER,
    TELEPHONE_EVENT_PT,
    Received,
    RtpPeer,
    Sent,
    Silent,
    telephone_event,
)
from app.eval.scenario import Dtmf, Hangup, Matches, Say, ScenarioError, load_scenario
from tests.conftest import REPO_ROOT

SCENARIOS = REPO_ROOT / "dialplans" / "scenarios"


def write_wav(path: Path, seconds: float, rate: int = 8000, amplitude: int = 8000) -> Path:
    """A tone (voiced: well above -50 dBFS) as 16-bit mono WAV."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    folder = tmp_path / "audio"
    folder.mkdir()
    write_wav(folder / "a.wav", 0.5)
    write_wav(folder / "b.wav", 0.3)
    return folder


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def errors_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# -- scenarios --------------------------------------------------------------------------------


def test_a_scenario_loads_into_actions_and_expectations(tmp_path, audio):
    path = scenario(
        tmp_path,
        """
number: "1000"
audio_dir: audio
calls:
  - name: first
    actions:
      - say: {audio: [a.wav, b.wav], pause_ms: 250, text: "one two"}
      - dtmf: {keys: "12#", gap_ms: 200, wait_for_bot: false}
      - wait: 500
      - wait_for_bot: 700
      - hangup
    expect:
      variables: {account: "12", day: {matches: '\\d+'}, pin: null, flag: true, n: 3}
      steps: [ask]
      outcome: contained
      said: ["Hello"]
      max_turn_latency_ms: 2500
  - name: second
    number: 2000
    actions: [wait_for_bot]
""",
    )
    loaded = load_scenario(path)
    first, second = loaded.calls
    assert (first.number, second.number) == ("1000", "2000")
    say, keys, wait, wait_bot, hangup = first.actions
    assert isinstance(say, Say) and say.text == "one two" and say.wait_quiet_ms == 1000
    assert len(say.pcm) == 2 * (4000 + 2000 + 2400)  # 0.5 s + 250 ms + 0.3 s at 8 kHz
    assert isinstance(keys, Dtmf) and (keys.keys, keys.gap_ms, keys.wait_quiet_ms) == (
        "12#",
        200,
        None,
    )
    assert wait.ms == 500 and wait_bot.quiet_ms == 700 and isinstance(hangup, Hangup)
    variables = first.expect.variables
    assert variables["account"] == "12" and variables["pin"] is None
    assert (variables["flag"], variables["n"]) == ("true", "3")
    assert isinstance(variables["day"], Matches)
    assert (first.expect.outcome, first.expect.steps, first.expect.said) == (
        "contained",
        ("ask",),
        ("Hello",),
    )
    assert first.expect.max_turn_latency_ms == 2500


def test_audio_at_another_rate_is_resampled_and_audio_dir_can_be_overridden(tmp_path, audio):
    other = tmp_path / "other"
    other.mkdir()
    write_wav(other / "a.wav", 1.0, rate=16000)
    path = scenario(tmp_path, 'number: "1"\naudio_dir: audio\ncalls: [{actions: [{say: a.wav}]}]')
    (say,) = load_scenario(path, audio_dir=other).calls[0].actions
    assert abs(len(say.pcm) - 16000) <= 64  # 1 s at 8 kHz, 16-bit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("calls: [", ":1:9: expected the node content"),  # YAML syntax: where it gave up
        ("- just a list", ":1:1: a scenario is a mapping with a `calls:` list"),
        ("number: '1'\ncalls: []", ":2:8: calls: expected a non-empty list of calls"),
        (
            "numbr: '1'\ncalls: [{actions: [hangup]}]",
            "unknown key 'numbr' (did you mean 'number'?)",
        ),
        (
            "calls: [{name: x, actions: [hangup]}]",
            "call 'x': no number to dial: give `number:` (here or at the top) or --target",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [{sya: a.wav}]}]",
            "call 'x': action 1: unknown action 'sya' (did you mean 'say'?)",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [hang_up]}]",
            "call 'x': action 1: 'hang_up' is not an action on its own",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [{dtmf: '12x'}]}]",
            "call 'x': action 1 (dtmf): keys: expected keys 0-9 * # A-D, got '12x' (not keys: X)",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [{wait: -5}]}]",
            "call 'x': action 1 (wait): expected milliseconds 1-600000, got -5",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [hangup, {wait: 5}]}]",
            "call 'x': action 2: comes after the hangup (action 1) and would never be done",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [{say: {audio: a.wav, pause_ms: [1, 2]}}]}]",
            "call 'x': action 1 (say): pause_ms: expected milliseconds 0-10000, or a list of 0",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [hangup], expect: {outcome: contaned}}]",
            "call 'x': expect: outcome: expected one of contained, transferred, abandoned, "
            "failed, rejected, got 'contaned' (did you mean 'contained'?)",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [hangup], expect: {variables: {a: {matches: '('}}}}]",  # noqa: E501
            "call 'x': expect: variables: a: bad regular expression",
        ),
        (
            "number: '1'\ncalls: [{name: x, actions: [hangup]}, {name: x, actions: [hangup]}]",
            "call 'x': a second call of this name",
        ),
    ],
)
def test_bad_scenarios_are_refused_with_file_line_call_and_action(tmp_path, text, expected):
    path = scenario(tmp_path, text)
    message = errors_of(path)
    assert message.startswith(str(path) + ":"), message
    assert expected in message, message


def test_a_missing_or_broken_audio_file_names_the_call_and_action(tmp_path, audio):
    (audio / "broken.wav").write_bytes(b"RIFF nonsense")
    with wave.open(str(audio / "stereo.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(3200))
    path = scenario(
        tmp_path,
        """number: "1"
audio_dir: audio
calls:
  - name: speaker
    actions:
      - say: a.wav
      - say: [b.wav, nowhere.wav]
      - say: broken.wav
      - say: stereo.wav
""",
    )
    lines = errors_of(path).splitlines()
    assert len(lines) == 3, lines
    assert f"{path}:7:14: call 'speaker': action 2 (say): audio file not found: " in lines[0]
    assert str(audio / "nowhere.wav") in lines[0]
    assert "action 3 (say): " in lines[1] and "broken.wav: not a readable WAV file" in lines[1]
    assert (
        "action 4 (say): " in lines[2] and "need mono 16-bit PCM WAV, got 2 channel(s)" in lines[2]
    )
    missing_dir = errors_of(path, audio_dir=tmp_path / "nope")
    assert f"--audio-dir: no folder {tmp_path / 'nope'}" in missing_dir


def test_the_cli_refuses_a_bad_scenario_before_dialling(tmp_path, capsys):
    path = scenario(tmp_path, "number: '1'\ncalls: [{name: x, actions: [{say: gone.wav}]}]")
    config = tmp_path / "server.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "none.db"}"\n')
    code = cli.main(["eval", "calls", str(path), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "call 'x': action 1 (say): audio file not found" in err
    assert "nothing was dialled" in err
    # a good scenario but no call records where the config says: refused before dialling too
    good = scenario(tmp_path, "number: '1'\ncalls: [{name: x, actions: [hangup]}]")
    assert cli.main(["eval", "calls", str(good), "--config", str(config)]) == 2
    assert "no call records at sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_the_example_scenarios_load(shared_data):
    names = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    assert names == ["appointments", "bank", "demo", "survey"]
    for path in SCENARIOS.glob("*.yaml"):
        assert load_scenario(path, audio_dir=shared_data / "fsdd").calls


# -- RFC 4733 keys ----------------------------------------------------------------------------


def test_a_key_is_updates_with_growing_duration_then_three_end_packets():
    packets = telephone_event("#", 100)
    assert len(packets) == 5 + 3
    fields = [struct.unpack("!BBH", p.payload) for p in packets]
    assert [f[0] for f in fields] == [11] * 8  # "#" is event 11
    assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800, 800]
    assert [bool(f[1] & 0x80) for f in fields] == [False] * 5 + [True] * 3  # E bit
    assert {f[1] & 0x3F for f in fields} == {10}  # volume -10 dBm0
    assert [p.marker for p in packets] == [True] + [False] * 7
    assert [p.new_seq for p in packets] == [True] * 6 + [False, False]
    with pytest.raises(ValueError, match="not a DTMF key: 'x'"):
        telephone_event("x")


@pytest.fixture
def far_end() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def _answer(peer: RtpPeer, far: socket.socket) -> None:
    """The far end's first packet: the peer learns where to send (symmetric RTP)."""
    header = RTP_HEADER.pack(0x80, 0, 1, 0, 0x1234)
    far.sendto(header + bytes(160), ("127.0.0.1", peer.port))
    for _ in range(100):
        peer.read()
        if peer.remote is not None:
            return
        time.sleep(0.01)
    raise AssertionError("the peer never heard the far end")


def test_keys_go_out_in_the_audio_stream_with_one_ssrc_and_sequence(far_end):
    peer = RtpPeer("keys", Silent())
    try:
        _answer(peer, far_end)
        peer.tick(0.0)  # one audio packet first
        peer.press("1", 60)
        peer.press("#", 40)
        assert peer.dtmf_busy
        for k in range(1, 14):
            peer.tick(k * 0.02)
        assert not peer.dtmf_busy
        headers = []
        for _ in range(14):
            data = far_end.recv(2048)
            _, second, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
            headers.append((second & 0x7F, bool(second & 0x80), seq, timestamp, ssrc, data[12:]))
    finally:
        peer.close()
    kinds = [h[0] for h in headers]
    # audio, "1": 3 updates + 3 ends, "#": 2 updates + 3 ends, audio again
    assert kinds == [0] + [TELEPHONE_EVENT_PT] * 6 + [TELEPHONE_EVENT_PT] * 5 + [0, 0]
    assert len({h[4] for h in headers}) == 1  # one SSRC
    base_seq, base_ts = headers[0][2], headers[0][3]
    seqs = [(h[2] - base_seq) & 0xFFFF for h in headers]
    assert seqs == [0, 1, 2, 3, 4, 4, 4, 5, 6, 7, 7, 7, 8, 9]  # the end repeats share one
    stamps = [(h[3] - base_ts) & 0xFFFFFFFF for h in headers]
    assert stamps[1:7] == [160] * 6  # the event's start timestamp throughout
    assert stamps[7:12] == [160 * 7] * 5
    assert stamps[12:] == [160 * 12, 160 * 13]  # the RTP clock ran on during the keys
    markers = [h[1] for h in headers]
    assert markers == [True, True] + [False] * 5 + [True] + [False] * 4 + [True, False]
    assert (headers[1][5][0], headers[7][5][0]) == (1, 11)  # events "1" and "#"
    assert [(k, i) for k, i in peer.key_starts] == [("1", 1), ("#", 7)]
    assert [s.kind for s in peer.sent[1:12]] == ["dtmf"] * 11


# -- wire latency -----------------------------------------------------------------------------


def _sent(times: list[float]) -> list[Sent]:
    return [Sent(t, t, n, "speech", -20.0) for n, t in enumerate(times)]


def _received(spec: list[tuple[float, float]]) -> list[Received]:
    return [
        Received(t, n, 0, 1, 0, False, b"", dbfs, dbfs < -100) for n, (t, dbfs) in enumerate(spec)
    ]


def test_turn_latency_is_last_voiced_packet_sent_to_first_voiced_packet_heard():
    sent = _sent([10.0 + 0.02 * k for k in range(300)])  # 10.00 .. 15.98
    inputs = [
        Input(1, "say", 0, 50),  # speech 10.00-11.00
        Input(2, "dtmf", 100, 104),  # keys 12.00-12.08
        Input(3, "say", 150, 200),  # speech 13.00-14.00: the bot talks over it
        Input(4, "say", 250, 260),  # 15.00-15.20: no reply before the call ends
    ]
    received = _received(
        [
            (10.5, -70.0),  # quiet while the caller speaks
            (11.2, -60.0),  # below the voiced threshold
            (11.65, -30.0),  # the reply: 650 ms
            (12.2, -120.0),
            (12.48, -25.0),  # reply to the keys: 400 ms after the last key started
            (13.5, -25.0),  # during input 3
            (14.3, -25.0),
        ]
    )
    turns = turn_latencies(inputs, sent, received)
    assert [(t.action, t.kind, t.latency_ms, t.overlap) for t in turns] == [
        (1, "say", 650.0, False),
        (2, "dtmf", 400.0, False),
        (3, "say", 300.0, True),
        (4, "say", None, False),
    ]
    assert [t.counted for t in turns] == [True, True, False, False]


def test_a_reply_after_the_next_input_started_is_not_this_turns():
    sent = _sent([k * 0.02 for k in range(200)])
    inputs = [Input(1, "dtmf", 0, 0), Input(2, "say", 100, 120)]
    received = _received([(2.1, -20.0)])  # only during/after input 2
    first, second = turn_latencies(inputs, sent, received)
    assert first.latency_ms is None and second.overlap


# -- the scripted caller ----------------------------------------------------------------------


def test_the_caller_waits_for_the_bot_to_finish_then_speaks_and_hangs_up(tmp_path, audio, far_end):
    path = scenario(
        tmp_path,
        "number: '1'\naudio_dir: audio\nquiet_ms: 500\ncalls: [{actions: [{say: b.wav}, hangup]}]",
    )
    spec = load_scenario(path).calls[0]
    caller = ScriptedCaller(spec)
    peer = RtpPeer("caller", caller)
    try:
        _answer(peer, far_end)
        voice = _received([(0.0, -20.0)])[0]
        kinds = []
        for k in range(60):  # 1.2 s on the caller's clock
            at = 100.0 + 0.02 * k
            if k < 20:  # the bot speaks for 0.4 s, then is quiet
                voice.arrival = at
                caller.on_received(peer, voice)
            peer.tick(at)
            kinds.append(peer.sent[-1].kind)
    finally:
        peer.close()
    speech = [k for k, kind in enumerate(kinds) if kind == "speech"]
    assert 44 <= speech[0] <= 45  # 500 ms of quiet after the bot's last voice (at tick 19)
    assert len(speech) == 15  # b.wav: 300 ms
    assert caller.hangup_requested and caller.finished and not caller.failures
    (item,) = caller.inputs
    assert (item.action, item.kind) == (1, "say")
    assert (item.first_sent, item.last_sent) == (speech[0], speech[-1])


def test_a_bot_that_never_speaks_fails_the_call_and_the_caller_hangs_up(tmp_path, audio, far_end):
    path = scenario(
        tmp_path,
        "number: '1'\naudio_dir: audio\nbot_timeout_ms: 1000\n"
        "calls: [{name: x, actions: [{dtmf: '1'}, {say: a.wav}]}]",
    )
    caller = ScriptedCaller(load_scenario(path).calls[0])
    peer = RtpPeer("caller", caller)
    try:
        _answer(peer, far_end)
        for k in range(60):
            peer.tick(50.0 + 0.02 * k)
    finally:
        peer.close()
    assert caller.failures == [
        "action 1 (dtmf 1): the bot did not speak and fall silent within 1 s"
    ]
    assert caller.hangup_requested
    assert caller.unperformed() == ["action 1 (dtmf 1)", "action 2 (say a.wav)"]


# -- real calls -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`switchboard serve` with the example dialplans (routes 2001-2003, and 1000 for the demo),
    the banking and scheduling backends answering as the scenarios' comments say."""
    from tests.http_backends import JsonBackend, Reply
    from tests.test_e2e_dialplans import install_dialplans, start_server, stop_server

    workdir = tmp_path_factory.mktemp("eval-site")
    with JsonBackend() as backend:
        backend.route(
            "POST",
            "/accounts/9075/balance",
            Reply.json({"status": "ok", "balance": 1250, "currency": "dollars"}),
        )
        backend.route("GET", "/slots", Reply.json({"free": False, "nearest": "11:00"}))
        backend.route("POST", "/bookings", Reply.json({"reference": 5150}))
        plans, routes = install_dialplans(
            workdir, {"backend": backend.url, "agent_uri": "sip:nobody@127.0.0.1:9"}
        )
        with routes.open("a") as file:
            file.write('[[route]]\nnumber = "1000"\ndialplan = "demo"\n')
        server = start_server(workdir, plans, routes)
        config = workdir / "server.toml"
        config.write_text(
            f'[sip]\nbind = "127.0.0.1"\nudp_port = {server.port}\n\n'
            f'[store]\nurl = "sqlite:///{workdir / "switchboard.db"}"\n'
        )
        try:
            yield {"server": server, "config": config, "backend": backend}
        finally:
            stop_server(server)


@pytest.mark.sip
def test_every_example_scenario_passes_over_real_calls(site, shared_data, tmp_path, capsys):
    out = tmp_path / "result.json"
    files = sorted(str(p) for p in SCENARIOS.glob("*.yaml"))
    argv = ["eval", "calls", *files, "--config", str(site["config"]), "--concurrency", "2"]
    code = cli.main([*argv, "--audio-dir", str(shared_data / "fsdd"), "--json", str(out)])
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    failed = {c["name"]: c["reasons"] for c in result["calls"] if not c["passed"]}
    assert code == 0 and not failed, (failed, printed.out, site["server"].log[-4000:])
    summary = result["summary"]
    assert summary["calls"] == summary["passed"] == 5
    assert summary["contained"] == 4  # the demo caller who hangs up is abandoned
    assert summary["turn_latency_ms"]["n"] >= 4 and summary["key_latency_ms"]["n"] >= 6
    assert 0 < summary["turn_latency_ms"]["p50"] < 4000
    assert summary["live_wer"]["utterances"] == 4 and summary["live_wer"]["wer"] == 0.0
    assert "calls passed 5/5; containment 80.0% (4/5 contained)" in printed.out
    (request,) = site["backend"].requests_to("/accounts/9075/balance")
    assert request.json == {"account": "9075", "pin": "2468"}  # the keys reached the dialogue


@pytest.mark.sip
def test_a_wrong_expectation_fails_the_call_and_says_why(
    site, shared_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")  # the table's reasons column unwrapped
    path = scenario(
        tmp_path,
        f"""number: "1000"
audio_dir: {shared_data / "fsdd"}
calls:
  - name: hangs up but expected contained
    actions: [wait_for_bot, hangup]
    expect:
      outcome: contained
      variables: {{account: "1234"}}
      said: ["Welcome to the moon"]
""",
    )
    out = tmp_path / "result.json"
    code = cli.main(
        ["eval", "calls", str(path), "--config", str(site["config"]), "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 1
    (call,) = json.loads(out.read_text())["calls"]
    assert call["reasons"] == [
        "outcome: expected contained, got abandoned",
        "variable account: expected '1234', got not set",
        "the bot did not say 'Welcome to the moon' (in the prompts of its turns)",
    ]
    assert "FAIL" in printed and "outcome: expected contained, got abandoned" in printed
    assert "calls passed 0/1; containment 0.0% (0/1 contained)" in printed
