"""One benchmark case, run in its own process by ``bench_render.py`` (so peak memory is per case).

Usage: ``python _bench_case.py '<json spec>'``. The spec names the implementation, detector size,
labelmap on/off, mode (``fwd`` or ``fwdbwd``), device, repeats, time budget and where to save the
rendered image (and pose gradients) for the accuracy comparison. The last stdout line is
``BENCH_RESULT <json>``.

Protocol: load the subject (untimed), one warm-up render (timed separately: it includes numba /
Triton / ``torch.compile`` JIT compilation), then up to ``repeats`` timed renders. Peak extra memory
is the largest resident set size during the timed renders minus the RSS just before them, from both a
background sampler (``/proc/self/statm`` every ~2 ms) and the kernel's high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs``) so that kernels holding the GIL cannot hide a peak. On CUDA
it is the ``torch.cuda.max_memory_allocated`` increase instead.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: Reference view (docs/geometry.md): sdd, source-to-isocenter distance, detector field of view (mm).
SDD = 1020.0
SOD = 850.0
FOV = 400.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS growth shows what a render really needs
    rather than what the warm-up left cached in malloc's free lists."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Largest RSS while active: a 2 ms sampler thread plus the kernel's high-water mark."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hwm_ok = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.hwm_ok = _reset_hwm()
        self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        if self.hwm_ok:
            self.peak = max(self.peak, _hwm())


# --------------------------------------------------------------------------------------------------
# torch-based implementations (ours and nanodrr)
# --------------------------------------------------------------------------------------------------


def _torch_impl(spec: dict) -> dict:
    import torch

    impl = spec["impl"]
    family, backend = impl.split("+")[0].split("-", 1)  # "ours-numba+compile" -> ("ours", "numba")
    method = "raymarch"
    if backend == "joseph":  # "ours-joseph": Joseph's slice-wise sampling, fastest backend
        backend, method = "auto", "joseph"
    if family == "ours":
        from nanodrr_engine import DRR, Subject, make_rt_inv
    elif family == "nanodrr":
        from nanodrr.camera import make_rt_inv
        from nanodrr.data import Subject
        from nanodrr.drr import DRR
    else:
        raise ValueError(f"impl: unknown implementation family {family!r} in {impl!r}")

    device = torch.device(spec["device"])
    size = int(spec["size"])
    t0 = time.perf_counter()
    subject = Subject.from_filepath(spec["ct"], spec["labels"] if spec["labelmap"] else None)
    subject = subject.to(device)
    _ = subject.image  # build the μ cache outside the timing (both libraries cache it)
    drr = DRR.from_carm_intrinsics(SDD, FOV / size, FOV / size, 0.0, 0.0, size, size, device=device)
    iso = subject.isocenter
    load_s = time.perf_counter() - t0

    rot0 = torch.zeros(1, 3, device=device)
    trans0 = torch.tensor([[0.0, SOD, 0.0]], device=device)
    n_samples = int(spec["n_samples"])
    grad = spec["mode"] == "fwdbwd"

    extra = {"method": method} if method != "raymarch" else {}  # nanodrr has no method argument

    def render(rotation, translation):
        return drr(
            subject,
            make_rt_inv(rotation, translation, "AP", iso),
            n_samples=n_samples,
            backend=backend,
            **extra,
        )

    if spec.get("compile"):
        render = torch.compile(render)

    def step():
        if grad:
            rot = rot0.clone().requires_grad_(True)
            trans = trans0.clone().requires_grad_(True)
            img = render(rot, trans)
            img.sum().backward()
            return img.detach(), rot.grad, trans.grad
        with torch.no_grad():
            return render(rot0, trans0), None, None

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    img, g_rot, g_trans = step()
    sync()
    warmup_s = time.perf_counter() - t0
    _save(spec, img.float().cpu().numpy(), g_rot, g_trans)
    del img, g_rot, g_trans

    def timed_loop():
        return _timed_renders(spec, lambda: step(), sync, warmup_s)

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        times = timed_loop()
        peak_extra = torch.cuda.max_memory_allocated(device) - base
        mem_kind = "cuda"
    else:
        _trim_heap()
        base = _rss()
        with PeakRSS() as peak:
            times = timed_loop()
        peak_extra = peak.peak - base
        mem_kind = "rss" if peak.hwm_ok else "rss-sampled"

    return {
        "load_s": load_s,
        "warmup_s": warmup_s,
        "times_ms": times,
        "peak_extra_bytes": max(0, int(peak_extra)),
        "mem_kind": mem_kind,
        "n_classes": int(subject.n_classes),
        "threads": torch.get_num_threads(),
    }


def _timed_renders(spec: dict, step, sync, warmup_s: float) -> list[float]:
    """Up to ``repeats`` renders (ms each); stops before one that would overrun the case's budget.

    The next render is assumed to take as long as the slowest so far (the warm-up before the first),
    so a case whose warm-up alone used the budget reports its warm-up and no timed render.
    """
    deadline = spec["t_start"] + float(spec["max_seconds"]) * 0.9
    times: list[float] = []
    for _ in range(int(spec["repeats"])):
        expected = max(times) / 1000 if times else warmup_s
        if time.time() + expected > deadline:
            break
        t0 = time.perf_counter()
        out = step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
        del out
    return times


def _save(spec: dict, img: np.ndarray, g_rot, g_trans) -> None:
    if not spec.get("save"):
        return
    arrays = {"image": np.asarray(img, dtype=np.float32)}
    if g_rot is not None:
        arrays["grad"] = np.concatenate(
            [g_rot.detach().double().cpu().numpy().ravel(), g_trans.detach().double().cpu().numpy().ravel()]
        )
    np.savez(spec["save"], **arrays)


# --------------------------------------------------------------------------------------------------
# plastimatch
# --------------------------------------------------------------------------------------------------

#: RAS ↔ LPS (plastimatch, like ITK and DICOM, works in LPS).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def plastimatch_geometry(rt_inv: np.ndarray, iso_ras: np.ndarray, size: int, delta: float) -> dict:
    """Map our camera (``rt_inv`` camera-to-world, RAS) onto ``plastimatch drr`` options.

    plastimatch places the source at ``isocenter + sad · nrm`` and the detector centre at
    ``source − sid · nrm``; ``vup`` points from the detector centre to the first row and columns run
    along ``−(nrm × vup)`` (``proj_matrix_set``). With nrm = −beam and vup = −(camera y) the columns run
    along camera x, so the images need no flip. Its "isocenter" is the point of the principal ray
    closest to ours, so any pose whose principal ray misses the CT centre still maps exactly.
    """
    src = rt_inv[:3, 3]
    cam_y, beam = rt_inv[:3, 1], rt_inv[:3, 2]
    sad = float(np.dot(iso_ras - src, beam))
    pm_iso = src + sad * beam
    return {
        "sad": sad,
        "sid": SDD,
        "isocenter": _RAS_TO_LPS @ pm_iso,
        "nrm": _RAS_TO_LPS @ (-beam),
        "vup": _RAS_TO_LPS @ (-cam_y),
        "dim": (size, size),  # rows, cols
        "detector_mm": (size * delta, size * delta),
        "image_center": ((size - 1) / 2, (size - 1) / 2),  # principal point at pixel centre (x0 = y0 = 0)
    }


def _fmt(v) -> str:
    return " ".join(str(x) if isinstance(x, int) else f"{x:.6f}" for x in v)


def _read_pfm(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        kind = f.readline().strip()
        if kind != b"Pf":
            raise ValueError(f"{path}: not a greyscale PFM file (header {kind!r})")
        w, h = (int(x) for x in f.readline().split())
        scale = float(f.readline())
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4", count=w * h).reshape(h, w)
    # PFM stores rows bottom-to-top, but plastimatch writes its first detector row first (checked
    # against our renders: see the README); read as written.
    return data.astype(np.float32)


def _run_plastimatch(cmd: list[str], timeout: float) -> tuple[float, float, int]:
    """Run one ``plastimatch drr``: (render ms from its log, wall ms, peak RSS bytes of its process).

    The peak is polled from ``/proc/<pid>/status`` (VmHWM, monotone) every ~2 ms: ``ru_maxrss`` of a
    child would also count the pages it shared with this (large) Python process before ``exec``.
    Render time is plastimatch's "Total time" (from after reading the volume to after writing the
    image) minus its "I/O time" (writing the image); wall time where it prints neither.
    """
    with tempfile.TemporaryFile("w+") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
                        break
            except (OSError, ValueError):
                pass
            if time.perf_counter() - t > timeout:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"plastimatch did not finish in {timeout:.0f} s")
            time.sleep(0.002)
        wall = (time.perf_counter() - t) * 1000
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"plastimatch failed ({proc.returncode}): {out.strip()[:300]}")
    total = re.search(r"Total time:\s*([0-9.eE+-]+)", out)
    io = re.search(r"I/O time:\s*([0-9.eE+-]+)", out)
    if total is None:
        return wall, wall, peak
    return (float(total.group(1)) - (float(io.group(1)) if io else 0.0)) * 1000, wall, peak


def _plastimatch_impl(spec: dict) -> dict:
    import shutil

    import SimpleITK as sitk
    import torch
    from nanodrr_engine import Subject, hu_to_mu, make_rt_inv

    exe = shutil.which("plastimatch")
    if exe is None:
        raise RuntimeError("plastimatch is not installed (run Testing/benchmark/setup_bench.sh)")
    if spec["labelmap"] or spec["mode"] != "fwd":
        raise RuntimeError("plastimatch renders plain forward DRRs only")
    size = int(spec["size"])
    timeout = float(spec["max_seconds"])
    tmp = Path(tempfile.mkdtemp(prefix="bench_pm_"))
    try:
        t0 = time.perf_counter()
        # The same μ as ours, in 1/cm: plastimatch integrates over path lengths in cm, so its output
        # is then the dimensionless ∫μ ds, directly comparable. Reoriented to identity direction
        # cosines (a pure axis flip, no resampling) so no plastimatch version can mis-read them.
        image = sitk.ReadImage(spec["ct"], sitk.sitkFloat32)
        mu = hu_to_mu(torch.from_numpy(sitk.GetArrayFromImage(image))).numpy() * 10.0
        mu_img = sitk.GetImageFromArray(mu.astype(np.float32))
        mu_img.CopyInformation(image)
        mu_img = sitk.DICOMOrient(mu_img, "LPS")
        vol = tmp / "mu_per_cm.mha"
        sitk.WriteImage(mu_img, str(vol))
        del image, mu, mu_img
        iso = Subject.from_filepath(spec["ct"]).isocenter
        rt_inv = make_rt_inv(torch.zeros(1, 3), torch.tensor([[0.0, SOD, 0.0]]), "AP", iso)[0]
        load_s = time.perf_counter() - t0

        def command(n_pix: int, prefix: str) -> list[str]:
            geo = plastimatch_geometry(rt_inv.double().numpy(), iso.double().numpy(), n_pix, FOV / size)
            return [
                exe, "drr", "-A", "cpu", "-i", spec.get("pm_algorithm", "exact"), "-P", "none", "-t", "pfm",
                "--sad", f"{geo['sad']:.6f}", "--sid", f"{geo['sid']:.6f}",
                "-r", _fmt(geo["dim"]), "-z", _fmt(geo["detector_mm"]), "-c", _fmt(geo["image_center"]),
                "-o", _fmt(geo["isocenter"]), "-n", _fmt(geo["nrm"]), "--vup", _fmt(geo["vup"]),
                "-O", str(tmp / prefix), str(vol),
            ]  # fmt: skip

        cmd = command(size, "drr_")
        # A 1-pixel render of the same view: what plastimatch needs just to start and hold the
        # volume, so that (its peak − this peak) is the memory the render adds, like our columns.
        _, _, base_peak = _run_plastimatch(command(1, "one_"), timeout)

        t0 = time.perf_counter()
        _run_plastimatch(cmd, timeout)
        warmup_s = time.perf_counter() - t0
        img = _read_pfm(tmp / "drr_0000.pfm")
        _save(spec, img[None, None], None, None)

        deadline = spec["t_start"] + timeout * 0.9
        times: list[float] = []
        walls: list[float] = []
        peak = 0
        for _ in range(int(spec["repeats"])):
            if time.time() + (max(walls) / 1000 if walls else warmup_s) > deadline:
                break
            ms, wall, p = _run_plastimatch(cmd, timeout)
            times.append(ms)
            walls.append(wall)
            peak = max(peak, p)
        return {
            "load_s": load_s,
            "warmup_s": warmup_s,
            "times_ms": times,
            "wall_ms": walls,
            "peak_extra_bytes": max(0, peak - base_peak),
            "peak_process_bytes": peak,
            "mem_kind": "proc-delta",
            "n_classes": 1,
            "threads": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------


def run_case(spec: dict) -> dict:
    spec.setdefault("t_start", time.time())
    if spec["impl"].startswith("plastimatch"):
        return _plastimatch_impl(spec)
    return _torch_impl(spec)


def main() -> None:
    spec = json.loads(sys.argv[1])
    spec["t_start"] = time.time()
    try:
        result = {"ok": True, **run_case(spec)}
    except Exception as exc:  # reported in the table, not fatal to the whole benchmark
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    if result.get("ok") and result["times_ms"]:
        result["median_ms"] = statistics.median(result["times_ms"])
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
