"""``python -m flows.cli``: the ``selfheal`` command (used to start child processes with this interpreter)."""

import sys

from flows.cli.main import main

sys.exit(main())
