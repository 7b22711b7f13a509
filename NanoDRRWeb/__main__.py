"""``python -m NanoDRRWeb``: see :mod:`NanoDRRWeb.cli`."""

import sys

from .cli import main

sys.exit(main())
