"""``python -m nanodrr_engine.dataset generate …``: see :mod:`.cli`."""

from .cli import main

raise SystemExit(main())
