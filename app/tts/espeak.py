"""eSpeak NG as a TTS engine: one `espeak-ng` process per prompt, PCM streamed from its pipe.

A process per prompt keeps `synthesize` thread-safe without locks (eSpeak's library API is a
process-wide singleton) and lets a hung or abandoned synthesis be killed without touching other
calls. The text goes in on stdin, never on the command line, so no prompt can be read as an option.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from typing import IO

from app.tts.base import TtsEngine, TtsError

_READ_SIZE = 8192
_STDERR_LIMIT = 2000
_OTHER_LANGUAGE = re.compile(r"\(([^\s()]+)\s+\d+\)")


class EspeakEngine(TtsEngine):
    """Synthesises with the `espeak-ng` binary; `sample_rate` is read from its WAV header."""

    name = "espeak"

    def __init__(
        self,
        voice: str = "en-us",
        words_per_minute: int = 165,
        pitch: int = 50,
        binary: str = "espeak-ng",
        timeout_s: float = 10.0,
    ) -> None:
        if not 80 <= words_per_minute <= 500:
            raise TtsError(f"espeak words_per_minute must be 80..500, got {words_per_minute}")
        if not 0 <= pitch <= 99:
            raise TtsError(f"espeak pitch must be 0..99, got {pitch}")
        if timeout_s <= 0:
            raise TtsError(f"espeak timeout_s must be positive, got {timeout_s}")
        path = shutil.which(binary)
        if path is None:
            raise TtsError(
                f"eSpeak NG binary {binary!r} not found on PATH; "
                "install it with `apt-get install espeak-ng`"
            )
        self.binary = path
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.timeout_s = timeout_s
        self._voices, self._variants = self._catalog()
        self.voice = self._check_voice(voice)
        # The trial synthesis proves the listed voice loads and tells the rate it speaks at.
        self.sample_rate = self._probe_rate(self.voice)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        """Yield 16-bit mono PCM chunks as eSpeak writes them; nothing for blank text."""
        voice = self.voice if voice is None else self._check_voice(voice)
        if not text.strip():
            return
        with closing(self._run(text, voice)) as chunks:
            for rate, chunk in chunks:
                if rate != self.sample_rate:
                    raise TtsError(
                        f"espeak voice {voice!r} produced {rate} Hz audio, "
                        f"engine rate is {self.sample_rate} Hz"
                    )
                yield chunk

    def has_voice(self, voice: str) -> bool:
        try:
            self._check_voice(voice)
        except TtsError:
            return False
        return True

    def _catalog(self) -> tuple[set[str], set[str]]:
        """Voice names and variants the installed eSpeak knows.

        Checked up front because eSpeak falls back silently: `no-such-voice` speaks Norwegian
        (language prefix `no`) and an unknown `+variant` is ignored.
        """
        voices: set[str] = set()
        for fields, rest in self._list_voices("--voices"):
            voices.update(name.lower() for name in (fields[1], fields[3], fields[4]))
            voices.update(lang.lower() for lang in _OTHER_LANGUAGE.findall(rest))
        variants = {
            fields[4].rpartition("/")[2] for fields, _ in self._list_voices("--voices=variant")
        }
        if not voices:
            raise TtsError(f"{self.binary} --voices listed no voices; is espeak-ng-data installed?")
        return voices, variants

    def _list_voices(self, option: str) -> list[tuple[list[str], str]]:
        try:
            done = subprocess.run(
                [self.binary, option],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TtsError(f"could not run {self.binary} {option}: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()
            raise TtsError(f"{self.binary} {option} failed (exit {done.returncode}): {detail}")
        rows = []
        for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split(maxsplit=5)
            if len(fields) >= 5:
                rows.append((fields[:5], fields[5] if len(fields) > 5 else ""))
        return rows

    def _check_voice(self, voice: str) -> str:
        """Accept a listed language, voice name or voice file, with optional `+variant`."""
        if not voice or any(c.isspace() or c == "\0" for c in voice):
            raise TtsError(f"invalid espeak voice name {voice!r}")
        base, plus, variant = voice.partition("+")
        if base.lower() not in self._voices:
            raise TtsError(f"unknown espeak voice {voice!r} (see `espeak-ng --voices`)")
        if plus and variant not in self._variants:
            raise TtsError(
                f"unknown espeak voice variant {variant!r} in {voice!r} "
                "(see `espeak-ng --voices=variant`)"
            )
        return voice

    def _probe_rate(self, voice: str) -> int:
        try:
            with closing(self._run("a", voice)) as chunks:
                for rate, _chunk in chunks:
                    return rate
        except TtsError as exc:
            raise TtsError(
                f"espeak voice {voice!r} is not usable (see `espeak-ng --voices`): {exc}"
            ) from exc
        raise TtsError(f"espeak voice {voice!r} produced no audio for a trial synthesis")

    def _command(self, voice: str) -> list[str]:
        return [
            self.binary,
            "--stdout",
            "-b",
            "1",  # input is UTF-8
            "-v",
            voice,
            "-s",
            str(self.words_per_minute),
            "-p",
            str(self.pitch),
        ]

    def _run(self, text: str, voice: str) -> Iterator[tuple[int, bytes]]:
        """Run one synthesis and yield (sample_rate, pcm) chunks; the process never outlives it."""
        try:
            proc = subprocess.Popen(
                self._command(voice),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise TtsError(f"could not start {self.binary}: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        # Fed from a thread: a prompt larger than the pipe buffer must not deadlock against
        # eSpeak filling stdout before we read it.
        feeder = threading.Thread(
            target=_feed, args=(proc.stdin, text.encode("utf-8")), daemon=True, name="espeak-in"
        )
        feeder.start()
        stderr_buf = bytearray()
        header = _WavHeader()
        pending = b""
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                sel.register(proc.stderr, selectors.EVENT_READ)
                open_streams = 2
                deadline = time.monotonic() + self.timeout_s
                while open_streams:
                    remaining = deadline - time.monotonic()
                    events = sel.select(remaining) if remaining > 0 else []
                    if not events:
                        raise TtsError(
                            f"espeak produced nothing for {self.timeout_s:g} s; process killed"
                        )
                    for key, _mask in events:
                        data = os.read(key.fd, _READ_SIZE)
                        if not data:
                            sel.unregister(key.fileobj)
                            open_streams -= 1
                            continue
                        if key.fileobj is proc.stderr:
                            if len(stderr_buf) < _STDERR_LIMIT:
                                stderr_buf += data
                            continue
                        deadline = time.monotonic() + self.timeout_s
                        data = header.feed(data)
                        if not data:
                            continue
                        data = pending + data
                        cut = len(data) - len(data) % 2
                        pending = data[cut:]
                        if cut:
                            yield header.rate, data[:cut]
            rc = proc.wait(timeout=self.timeout_s)
            if rc != 0:
                detail = stderr_buf.decode("utf-8", "replace").strip() or "no message"
                raise TtsError(f"espeak-ng failed (exit {rc}) for voice {voice!r}: {detail}")
            if not header.done:
                raise TtsError("espeak-ng wrote no WAV data (truncated or missing header)")
        except subprocess.TimeoutExpired as exc:
            raise TtsError("espeak-ng did not exit after closing its output") from exc
        finally:
            _reap(proc)
            feeder.join(timeout=1.0)


class _WavHeader:
    """Incremental RIFF/WAVE parser: consumes header bytes, returns the audio bytes after it.

    eSpeak writes the header before it knows the length (0x7FFFF0xx or 0xFFFFFFFF in the size
    fields), so the sizes are ignored and everything after the `data` chunk id is audio.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.done = False
        self.rate = 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self.buf += data
        buf = self.buf
        if len(buf) < 12:
            return b""
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise TtsError(f"espeak-ng output is not a WAV stream (starts {buf[:12]!r})")
        pos = 12
        while len(buf) >= pos + 8:
            chunk_id, size = buf[pos : pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
            if chunk_id == b"data":
                if not self.rate:
                    raise TtsError("espeak-ng WAV stream has no fmt chunk before its data")
                self.done = True
                self.buf = b""
                return buf[pos + 8 :]
            if len(buf) < pos + 8 + size:
                return b""
            if chunk_id == b"fmt ":
                self._parse_fmt(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size + (size & 1)
            if pos > 4096:
                raise TtsError("espeak-ng WAV header is implausibly long")
        return b""

    def _parse_fmt(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise TtsError("espeak-ng WAV fmt chunk is truncated")
        audio_format, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
        if audio_format != 1 or channels != 1 or bits != 16:
            raise TtsError(
                f"espeak-ng wrote format {audio_format}, {channels} channel(s), {bits} bit; "
                "expected PCM mono 16-bit"
            )
        if rate <= 0:
            raise TtsError("espeak-ng WAV header has a zero sample rate")
        self.rate = rate


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the prompt and close stdin; a killed process just ends the write."""
    with suppress(OSError, ValueError):
        stdin.write(data)
    with suppress(OSError, ValueError):
        stdin.close()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process if it is still running and wait for it, so no zombie is left."""
    if proc.poll() is None:
        proc.kill()
    with suppress(subprocess.TimeoutExpired):  # a SIGKILLed child exits unless stuck in the kernel
        proc.wait(timeout=5.0)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
