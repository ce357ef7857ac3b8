"""Dialogue: YAML dialplans (`dialplan.py`) and the engine that walks them (`runner.py`).

Import from the submodules; this package file stays empty so loading a dialplan (e.g. in
`switchboard dialplan validate`) does not pull in the recogniser grammars.
"""
