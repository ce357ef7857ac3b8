"""Speech synthesis: one interface (`base.py`), one module per engine."""
