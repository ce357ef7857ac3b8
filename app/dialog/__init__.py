"""Dialogue: the dialplan language and the engine that walks it.

`dialplan.py` loads a YAML file (`parsing.py` per step kind, `reader.py` typed values with
file:line:col errors, `checks.py` cross-step checks) into `steps.py` dataclasses; `runner.py`
walks one call through it, using `slots.py` to read answers and `conditions.py` for branches;
`simulate.py` drives the same runner from a terminal. No module here imports PJSIP, an ASR
engine or a database: the call core and the SIP layer depend on this package, not the reverse.
"""
