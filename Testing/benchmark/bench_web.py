#!/usr/bin/env python
"""Latency of the web app: a C-arm change in the browser → the new DRR image shown in the page.

Starts ``python -m NanoDRRWeb`` on 127.0.0.1 (phantom, 256×256 detector, Joseph's sampling, live on),
drives Debian's chromium through Playwright, and for each repeat presses → on the LAO slider and times,
in the page's own clock, from the key press to the first load of a DRR-view image after the server's
DRR count went up and whose pixels differ from the image before the press. Prints the median and range.

    .venv/bin/python Testing/benchmark/bench_web.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

from webtestutils import WebServer, launchBrowser, openApp, skipReason, state, waitState

_INSTRUMENT = """() => {
  const img = document.querySelectorAll('img.image-display-area')[1];
  const canvas = document.createElement('canvas'); canvas.width = 64; canvas.height = 64;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const sig = () => { ctx.drawImage(img, 0, 0, 64, 64); const d = ctx.getImageData(0, 0, 64, 64).data;
    let h = 0; for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i]) % 1000000007; return h; };
  window.__bench = {loads: [], t0: null, sig: sig};
  img.addEventListener('load', () => window.__bench.loads.push(
    {t: performance.now(), count: window.trame.state.get('drr').count, sig: sig()}));
  window.addEventListener('keydown', () => { window.__bench.t0 = performance.now(); }, true);
}"""


def measure(page, timeout: float = 10.0) -> float:
    before = state(page, "drr")["count"]
    sig0 = page.evaluate("() => window.__bench.sig()")
    page.evaluate("() => { window.__bench.loads = []; }")
    page.keyboard.press("ArrowRight")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = page.evaluate(
            f"() => window.__bench.loads.find(l => l.count > {before} && l.sig !== {sig0}"
            " && l.t >= window.__bench.t0)"
        )
        if hit:
            return hit["t"] - page.evaluate("() => window.__bench.t0")
        time.sleep(0.01)
    raise RuntimeError("no new DRR image within the timeout")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.6, help="seconds between changes (the views settle)")
    args = p.parse_args(argv)
    reason = skipReason()
    if reason:
        print(f"bench_web: cannot run: {reason}")
        return 1
    from playwright.sync_api import sync_playwright

    server = WebServer()
    try:
        with sync_playwright() as pw:
            browser = launchBrowser(pw)
            page = openApp(browser, server.url)
            info = state(page, "drr")
            assert (info["height"], info["width"]) == (256, 256), info
            page.locator("#live").click()
            waitState(page, "s.get('live')")
            page.evaluate(_INSTRUMENT)
            page.locator(".v-input:has(#slider-primary) .v-slider-thumb").focus()
            times = []
            for i in range(args.warmup + args.repeats):
                ms = measure(page)
                if i >= args.warmup:
                    times.append(ms)
                time.sleep(args.pause)  # let the previous change settle (the 3D view's frame)
            browser.close()
    finally:
        server.stop()
    print(
        f"C-arm change → new 256×256 DRR in the page: median {statistics.median(times):.0f} ms "
        f"(min {min(times):.0f}, max {max(times):.0f}, {len(times)} repeats)"
    )
    print("each (ms):", " ".join(f"{t:.0f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
