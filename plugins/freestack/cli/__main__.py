"""``python -m freestack.cli``: the ``freestack`` command."""

import sys

from freestack.cli import main

sys.exit(main())
