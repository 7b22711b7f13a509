"""NanoDRR in the browser: a trame-slicer web app over NanoDRRLib's workflow controller.

Start it with ``./scripts/web.sh`` (see ``NanoDRRWeb.cli``). The modules each have one job: ``cli``
(arguments, start-up), ``app`` (wiring), ``binding`` (trame state ⇄ ``NanoDRRWorkflow``), ``gate`` (renders
off the event loop without sharing MRML), ``viewer`` (trame-slicer views), ``ui`` (the page), ``data``
(phantom and files), ``uploads`` (validating files from the browser).

NanoDRRLib is a plain package inside the Slicer module folder, as Slicer puts it on ``sys.path``; importing
this package puts that folder on the path too.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MODULE_DIR = str(REPO / "NanoDRRSlicer")
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)
