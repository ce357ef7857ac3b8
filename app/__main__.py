"""`python -m app`: the same as the `switchboard` command."""

import sys

from app.cli import main

sys.exit(main())
