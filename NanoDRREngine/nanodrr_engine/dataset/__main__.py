"""``python -m nanodrr_engine.dataset generate …``: see :mod:`.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
