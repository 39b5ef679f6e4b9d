"""``python -m dutybridge_sandbox``: run both sandboxes until interrupted."""

import sys

from .runner import main

sys.exit(main())
