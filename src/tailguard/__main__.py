"""``python -m tailguard``: the same as the ``tailguard`` command."""

import sys

from tailguard.cli import main

sys.exit(main())
