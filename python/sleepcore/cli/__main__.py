"""``python -m sleepcore.cli``: the same as the ``sleepcore`` command."""

import sys

from sleepcore.cli import main

sys.exit(main())
