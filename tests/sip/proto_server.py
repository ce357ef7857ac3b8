"""A minimal pjsua2 answering server used to prove the SIP test harness itself.

It is test infrastructure, not Switchboard: it answers every INVITE (a Request-URI user
containing 404 or 503 gets that status instead), plays a WAV file (or a constant low-level
signal) to the caller, can hang up once the WAV has played, and can save what the caller sent
as `<record-dir>/<Request-URI user>.wav` (then prints `SAVED <user>`).
Run it as a subprocess (`python -m tests.sip.proto_server --port 0 ...`): it prints
`READY <port>` once UDP and TCP listen on that same port, and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import wave
from pathlib import Path

import pjsua2 as pj

RATE = 8000
FRAME_BYTES = 320
SILENCE = b"\x00" * FRAME_BYTES
CONSTANT = b"\x00\x10" * (FRAME_BYTES // 2)
REFUSED_USERS = {"404": 404, "503": 503}


def read_pcm(path: Path) -> bytes:
    """16-bit mono 8 kHz PCM from a WAV file, or a clear error."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, RATE):
            raise SystemExit(f"{path}: need 8 kHz mono 16-bit WAV")
        return wav.readframes(wav.getnframes())


class MediaPort(pj.AudioMediaPort):
    """Plays `pcm` (then silence) and keeps what it receives."""

    def __init__(self, pcm: bytes | None) -> None:
        super().__init__()
        self.pcm = pcm
        self.pos = 0
        self.played = pcm is None
        self.received: list[bytes] = []

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        if self.pcm is None:
            chunk = CONSTANT
        else:
            chunk = self.pcm[self.pos : self.pos + FRAME_BYTES]
            self.pos += FRAME_BYTES
            if len(chunk) < FRAME_BYTES:
                self.played = True
                chunk = chunk + SILENCE[len(chunk) :]
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(chunk)
        frame.size = FRAME_BYTES

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.received.append(bytes(frame.buf))


class Call(pj.Call):
    """One answered call; the main loop inspects it (no work inside callbacks)."""

    def __init__(self, acc: pj.Account, call_id: int, pcm: bytes | None, user: str) -> None:
        super().__init__(acc, call_id)
        self.pcm = pcm
        self.user = user
        self.port: MediaPort | None = None
        self.disconnected = False
        self.hung_up = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        print(f"STATE {info.stateText} {info.lastStatusCode}", flush=True)
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            self._connect_media()
        except Exception as exc:  # a Python error here would be swallowed by SWIG
            print(f"MEDIA ERROR {exc!r}", flush=True)

    def _connect_media(self) -> None:
        info = self.getInfo()  # keep it alive: `media` points into it (SWIG)
        for i, media in enumerate(info.media):
            active = media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
            if media.type != pj.PJMEDIA_TYPE_AUDIO or not active or self.port:
                continue
            fmt = pj.MediaFormatAudio()
            fmt.type = pj.PJMEDIA_TYPE_AUDIO
            fmt.clockRate, fmt.channelCount, fmt.bitsPerSample = RATE, 1, 16
            fmt.frameTimeUsec = 20000
            self.port = MediaPort(self.pcm)
            self.port.createPort(f"call{self.getId()}", fmt)
            audio = self.getAudioMedia(i)
            audio.startTransmit(self.port)
            self.port.startTransmit(audio)
            print(f"CODEC {self.getStreamInfo(i).codecName}", flush=True)


class Account(pj.Account):
    def __init__(self, pcm: bytes | None) -> None:
        super().__init__()
        self.pcm = pcm
        self.calls: list[Call] = []

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        request_line = prm.rdata.wholeMsg.splitlines()[0]
        print(f"INVITE {request_line}", flush=True)
        user = request_line.split("sip:", 1)[-1].split("@", 1)[0]
        call = Call(self, prm.callId, self.pcm, user)
        self.calls.append(call)
        op = pj.CallOpParam()
        refused = next((code for key, code in REFUSED_USERS.items() if key in user), None)
        if refused:
            op.statusCode = refused
            call.hangup(op)
            return
        op.statusCode = 200
        call.answer(op)


def free_port_pair() -> int:
    """A port number currently free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def tend_calls(acc: Account, hangup_after_play: bool, record_dir: Path | None) -> None:
    """Hang up calls whose WAV has played; save and forget disconnected ones.

    Runs in the main loop, never in a PJSIP callback; dropping the last reference to a
    disconnected Call here (while the library lives) keeps its destructor safe.
    """
    for call in list(acc.calls):
        if call.disconnected:
            acc.calls.remove(call)
            if record_dir and call.port:
                save_received(call.port.received, record_dir / f"{safe_name(call.user)}.wav")
                print(f"SAVED {call.user}", flush=True)
        elif hangup_after_play and call.port and call.port.played and not call.hung_up:
            call.hung_up = True
            print("HANGUP", flush=True)
            call.hangup(pj.CallOpParam())


def safe_name(user: str) -> str:
    """A file name from a Request-URI user: letters, digits, '-' and '_' only."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in user) or "call"


def save_received(frames: list[bytes], path: Path) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(b"".join(frames))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free one")
    parser.add_argument("--wav", type=Path, help="8 kHz mono WAV to play (default: constant)")
    parser.add_argument("--lead-ms", type=int, default=0, help="silence before the WAV")
    parser.add_argument("--hangup-after-play", action="store_true", help="BYE once WAV ends")
    parser.add_argument(
        "--record-dir", type=Path, help="save received audio as <Request-URI user>.wav"
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="exit after this long")
    args = parser.parse_args(argv)
    pcm = None
    if args.wav:
        pcm = SILENCE * (args.lead_ms // 20) + read_pcm(args.wav)

    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.medConfig.clockRate = RATE
    cfg.medConfig.sndClockRate = RATE
    cfg.medConfig.noVad = True
    cfg.logConfig.level = 3
    cfg.logConfig.consoleLevel = 2
    ep.libInit(cfg)
    port = args.port or free_port_pair()
    transport = pj.TransportConfig()
    transport.port = port
    transport.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, transport)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 0)
    ep.codecSetPriority("PCMU/8000/1", 255)
    ep.codecSetPriority("PCMA/8000/1", 254)
    acc_cfg = pj.AccountConfig()
    acc_cfg.idUri = f"sip:proto@127.0.0.1:{port}"
    acc_cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = Account(pcm)
    acc.create(acc_cfg)
    print(f"READY {port}", flush=True)

    ticks = int(args.seconds * 50)
    while not stop and ticks > 0:
        ep.libHandleEvents(20)
        ticks -= 1
        tend_calls(acc, args.hangup_after_play, args.record_dir)
    if acc.calls:
        ep.hangupAllCalls()
    for _ in range(25):
        if not acc.calls:
            break
        ep.libHandleEvents(20)
        tend_calls(acc, False, args.record_dir)
    acc.calls.clear()
    del acc
    ep.libDestroy()
    print("EXIT", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
