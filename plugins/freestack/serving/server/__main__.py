"""``python -m freestack.serving.server run|supervise CONFIG.json`` and ``... hold HOME HOST PORT`` (see
:mod:`freestack.serving.server.app`)."""

import sys

from freestack.serving.server.app import main

sys.exit(main())
