"""``python -m update_server`` is the same as the ``update-server`` command."""

import sys

from .cli import main

sys.exit(main())
