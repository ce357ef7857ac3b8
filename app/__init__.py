"""Switchboard: a voice-bot telephony application server."""

__version__ = "0.1.0"
