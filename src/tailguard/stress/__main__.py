"""``python -m tailguard.stress SCENARIO ...``: ``tailguard stress`` without the top-level CLI."""

import sys

from tailguard.stress.commands import main

sys.exit(main())
