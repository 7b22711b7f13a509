"""Start the web app on 127.0.0.1 and drive Debian's chromium through Playwright (tests and bench_web.py).

:func:`skipReason` says why browser tests cannot run here (no chromium, no Playwright, no EGL), or None.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("NANODRR_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT = 120.0


def skipReason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; scripts/install_system_deps.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (requirements-dev.txt)"
    if ctypes.util.find_library("EGL") is None:
        return "no libEGL for headless OpenGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)"
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        return "trame-slicer is not installed (requirements-dev.txt)"
    return None


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """``python -m NanoDRRWeb`` in a subprocess on a free loopback port; its output kept in ``log``."""

    def __init__(self, *args: str) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "NanoDRRWeb", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.log: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the web app did not start:\n" + "".join(self.log[-40:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            if re.search(r"NanoDRR is at http://", line):
                self._ready.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launchBrowser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def state(page, key: str):
    return page.evaluate("(k) => window.trame.state.get(k)", key)


def waitState(page, predicate_js: str, timeout: float = 30.0) -> None:
    """Wait until the JS expression (over ``s = window.trame.state``) is true."""
    page.wait_for_function(
        f"() => {{ const s = window.trame.state; return !!({predicate_js}); }}", timeout=timeout * 1000
    )


def openApp(browser, url: str, width: int = 1400, height: int = 850):
    """A new page on the app, once both views show images and the first DRR is there."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_function(
        "() => { const i = document.querySelectorAll('img.image-display-area');"
        " return i.length === 2 && [...i].every(x => x.complete && x.naturalWidth > 0)"
        " && window.trame && window.trame.state.get('drr') && window.trame.state.get('drr').count > 0; }",
        timeout=60000,
    )
    return page


def viewImages(page):
    """The 3D view's and the DRR slice view's ``<img>``, in layout order."""
    imgs = page.locator("img.image-display-area")
    return imgs.nth(0), imgs.nth(1)


def expectedSource(center, primary: float, secondary: float, sod: float):
    """docs/geometry.md: source = c + sod·(sin P·cos S, −cos P·cos S, −sin S) (RAS)."""
    import numpy as np

    p, s = np.radians(primary), np.radians(secondary)
    return np.asarray(center) + sod * np.array([np.sin(p) * np.cos(s), -np.cos(p) * np.cos(s), -np.sin(s)])


def phantom():
    """The volume the app starts on (NanoDRRWeb.data.addPhantom): HU [K, J, I], voxel-to-world, isocenter."""
    import numpy as np
    from nanodrr_engine.data.phantom import make_chest_phantom

    sys.path.insert(0, str(REPO))
    from NanoDRRWeb.data import PHANTOM_SPACING

    s = PHANTOM_SPACING
    vol, _, voxelToWorld, _ = make_chest_phantom(spacing=(s, s, s * 1.25))
    k, j, i = vol.shape
    center = (voxelToWorld @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    return vol, voxelToWorld, center


def engineDRR(vol, voxelToWorld, rtInv, geometry: dict, method: str = "joseph"):
    """The engine's own DRR ``[H, W]`` of ``vol`` from ``rtInv``: the reference for the page's DRR."""
    import numpy as np
    import torch
    from nanodrr_engine import DRR, Subject

    g = geometry
    drr = DRR.from_carm_intrinsics(
        g["sdd"], g["delx"], g["dely"], g["x0"], g["y0"], int(g["height"]), int(g["width"])
    )
    subject = Subject.from_array(np.asarray(vol, dtype=np.float32), voxelToWorld)
    pose = torch.as_tensor(np.asarray(rtInv, dtype=np.float64).reshape(4, 4))[None]
    with torch.no_grad():
        return drr(subject, pose, method=method)[0, 0].numpy()


def fetchDRR(url: str):
    """The server's current DRR as float32 ``[H, W]`` (``/nanodrr/drr.npy``) and its description."""
    import io
    import json
    import urllib.request

    import numpy as np

    with urllib.request.urlopen(url + "nanodrr/drr.npy", timeout=30) as r:
        image = np.load(io.BytesIO(r.read()))
    with urllib.request.urlopen(url + "nanodrr/drr.json", timeout=30) as r:
        info = json.loads(r.read())
    return image, info


def saveArtifact(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
