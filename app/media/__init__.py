"""Telephone audio at the edge: G.711, resampling and 20 ms framing.

Everything past this package (VAD, ASR, dialogue, TTS) sees plain 16-bit mono PCM.
"""
