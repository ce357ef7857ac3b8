"""The bot's voice for one call: prompts rendered on their own thread into the playout buffer.

Synthesis runs beside the call's worker, not in it, so the worker can listen for barge-in while
a prompt is still being rendered (Piper takes a few hundred milliseconds a sentence on a CPU;
a worker blocked in it would hear an interruption late). Text is synthesised piece by piece
(`split_for_speech`): the first sentence plays while the next is rendered. A prompt without
variables is taken from the shared `PromptCache` when it is there, and put there after its
first full rendering.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from app.media.audio import CALL_RATE
from app.media.playout import PlayoutBuffer
from app.media.resample import Resampler
from app.tts.base import TtsEngine
from app.tts.cache import PromptCache, PromptKey
from app.tts.fallback import Render
from app.tts.sentences import split_for_speech

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Prompt:
    """One prompt on its way out. `rendered` is set once all its audio is queued for playout
    (or it was stopped, or synthesis failed: then `error` says why)."""

    text: str
    cacheable: bool
    stopped: threading.Event = field(default_factory=threading.Event)
    rendered: threading.Event = field(default_factory=threading.Event)
    tts_ready_at: float | None = None
    """Epoch seconds the first audio of the prompt was ready for playout."""
    from_cache: bool = False
    error: BaseException | None = None
    engine: str | None = None
    """The TTS engine that spoke it ("cache" when it came from the prompt cache)."""
    fallback_notes: list[str] = field(default_factory=list)
    """Why engines of a fallback chain did not speak a sentence of it."""


class Speaker:
    """Renders one call's prompts, in order, on a thread of its own."""

    def __init__(
        self,
        tts: TtsEngine,
        playout: PlayoutBuffer,
        voice: str | None = None,
        cache: PromptCache | None = None,
        name: str = "speaker",
    ) -> None:
        self._tts = tts
        self._playout = playout
        self._voice = voice
        self._cache = cache
        self.codec = "PCMU"
        """The call's G.711 law: cached prompts are kept encoded in it."""
        self._queue: queue.SimpleQueue[Prompt | None] = queue.SimpleQueue()
        self._current: Prompt | None = None
        # runs in its creator's context: the call worker's, so its log lines name the call
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name=name, daemon=True
        )
        self._thread.start()

    def say(self, text: str, cacheable: bool = False) -> Prompt:
        """Start rendering `text` after what is queued; returns at once."""
        prompt = Prompt(text, cacheable)
        self._playout.mark_prompt_start()
        self._queue.put(prompt)
        return prompt

    def stop(self, prompt: Prompt) -> int:
        """Stop `prompt` now: nothing more of it is rendered, its queued audio is dropped.
        Returns the frames dropped."""
        prompt.stopped.set()
        return self._playout.clear()

    def played(self, prompt: Prompt) -> bool:
        """All of `prompt` has gone out to the caller (or it was stopped or failed)."""
        return prompt.rendered.is_set() and self._playout.pending_frames == 0

    def close(self) -> None:
        """End the thread after the current prompt (call it once the call is over)."""
        current = self._current
        if current is not None:
            current.stopped.set()
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            prompt = self._queue.get()
            if prompt is None:
                return
            self._current = prompt
            try:
                if not prompt.stopped.is_set():
                    self._render(prompt)
            except Exception as exc:  # the worker re-raises it: the dialogue decides
                prompt.error = exc
            finally:
                self._current = None
                prompt.rendered.set()

    def _render(self, prompt: Prompt) -> None:
        key = None
        if prompt.cacheable and self._cache is not None:
            key = PromptKey(self._tts.name, self._voice or "", prompt.text, self.codec)
            pcm = self._cache.get_pcm(key)
            if pcm is not None:
                prompt.from_cache = True
                prompt.engine = "cache"
                prompt.tts_ready_at = time.time()
                if self._playout.write(pcm, cancel=prompt.stopped):
                    self._playout.end_of_prompt()
                return
        kept = bytearray() if key is not None else None
        resampler = Resampler(self._tts.sample_rate, CALL_RATE)
        for piece in split_for_speech(prompt.text):
            for chunk in self._tts.synthesize(piece, self._voice):
                pcm = resampler.process(chunk)
                if not pcm:
                    continue
                if prompt.tts_ready_at is None:
                    prompt.tts_ready_at = time.time()
                    self._note_first_engine(prompt)
                if not self._playout.write(pcm, cancel=prompt.stopped):
                    return
                if kept is not None:
                    kept += pcm
            if not self._note_engine(prompt):
                kept = None  # a fallback engine's audio is not cached as the first engine's
        tail = resampler.flush()
        if not self._playout.write(tail, cancel=prompt.stopped):
            return
        self._playout.end_of_prompt()
        if kept is not None and key is not None and self._cache is not None:
            self._cache.put_pcm(key, bytes(kept + tail))

    def _note_first_engine(self, prompt: Prompt) -> None:
        """Who speaks the prompt, and why others did not, known when its first audio is ready
        (the call's turn record is written when that audio is heard)."""
        render = self._last_render()
        prompt.engine = render.engine if render is not None else self._tts.name
        if render is not None:
            prompt.fallback_notes.extend(render.notes)

    def _note_engine(self, prompt: Prompt) -> bool:
        """Record why a fallback chain's first engine did not speak the last sentence; False
        when it did not (its audio must not be cached under the first engine's name)."""
        render = self._last_render()
        if render is None:
            return True
        prompt.fallback_notes.extend(n for n in render.notes if n not in prompt.fallback_notes)
        return render.engine == self._tts.name and not render.notes

    def _last_render(self) -> Render | None:
        last_render = getattr(self._tts, "last_render", None)
        return last_render() if last_render is not None else None
