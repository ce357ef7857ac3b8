"""Speech recognition: one streaming interface (`base.py`), one module per engine."""
