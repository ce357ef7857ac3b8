"""Evaluation: recognition on telephone audio (`eval asr`), scripted calls (`eval calls`)."""
