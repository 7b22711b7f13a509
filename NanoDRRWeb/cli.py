"""``./scripts/web.sh [--host 127.0.0.1] [--port 8080] [--ct CT] [--seg SEG]``: serve NanoDRR in a browser.

Serves on 127.0.0.1 unless told otherwise. There is no authentication and one process serves one user
(one scene, one C-arm): to reach a remote GPU server, keep it on 127.0.0.1 there and tunnel the port
(``ssh -L 8080:127.0.0.1:8080 gpu-host``). Binding another address prints a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from .uploads import DEFAULT_MAX_UPLOAD_MB


def parseArgs(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="web.sh", description="NanoDRR in the browser (trame-slicer).")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--ct", type=Path, help="CT volume (NIfTI, NRRD, MHA, ...); default: the built-in phantom")
    p.add_argument("--seg", type=Path, help="labelmap or .seg.nrrd segmentation of the CT")
    p.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest file accepted from the browser, MB (default {DEFAULT_MAX_UPLOAD_MB})",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.seg is not None and args.ct is None:
        p.error("--seg needs --ct (the segmentation belongs to a CT)")
    for name in ("ct", "seg"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            p.error(f"--{name}: no such file {path}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port: {args.port} is not a port number")
    if not args.max_upload_mb > 0:
        p.error("--max-upload-mb must be positive")
    return args


def isLoopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    args = parseArgs(argv)
    if not os.environ.get("DISPLAY"):
        # headless: VTK's X window would fail first and fall back; ask for surfaceless EGL directly
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    if not isLoopback(args.host):
        print(
            f"[web] WARNING: binding {args.host}: anyone who can reach this address controls the session "
            "(no authentication, one user per process). Prefer 127.0.0.1 and an SSH tunnel.",
            file=sys.stderr,
        )
    sys.argv = sys.argv[:1]  # trame reads its own options from the command line; ours are parsed
    from NanoDRRLib.errors import NanoDRRError

    from .app import NanoDRRWebApp

    try:
        app = NanoDRRWebApp(ct=args.ct, seg=args.seg, maxUploadMB=args.max_upload_mb)
    except NanoDRRError as e:
        print(f"[web] error: {e}", file=sys.stderr)
        return 2
    server = app.server

    def announce(**_):
        port = server.port
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"[web] NanoDRR is at http://{host}:{port}/", flush=True)

    server.controller.on_server_ready.add(announce)
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    return 0
