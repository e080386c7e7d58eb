"""``python -m freestack_server [--env-file FILE]``: the model server, the same command in every target
(see :mod:`freestack_server.app` and :mod:`freestack_server.core.config`)."""

import sys

from freestack_server.app import main

sys.exit(main())
