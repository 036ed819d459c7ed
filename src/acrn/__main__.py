"""``python -m acrn`` is the ``acrn`` command."""

import sys

from acrn.cli import main

sys.exit(main())
