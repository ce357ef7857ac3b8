"""Calls out of a dialogue to other systems: business webhooks and LLM chat endpoints.

Blocking clients, run on the call's worker thread (never on PJSIP's threads). Each returns a
result object instead of raising, so the dialogue can take its `on_error` path and the call
record can say what went wrong.
"""
