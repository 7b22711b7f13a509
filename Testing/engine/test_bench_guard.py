"""``Testing/benchmark/bench_guard.py`` loads a git revision of the engine beside this one: check that the
copy is a separate package whose custom ops register under their own namespace and that it renders as
this engine does (torch backend, no JIT, so the test stays quick)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None
    or subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="bench_guard needs a git checkout of the project",
)

CHILD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import bench_guard
    bench_guard.extract_baseline("HEAD", Path(sys.argv[3]), "guard_copy")
    sys.path.insert(0, sys.argv[3])
    import torch

    def load(name):
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, name + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
        return pkg

    new, old = load("nanodrr_engine"), load("guard_copy")
    ops = {ns: sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith(ns + "::"))
           for ns in ("nanodrr_engine", "guard_copy")}
    from nanodrr_engine.data.phantom import make_chest_phantom
    vol, _, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 5.0))
    images = []
    for m in (new, old):
        subject = m.Subject.from_array(vol, v2w)
        drr = m.DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 16, 18)
        rt = m.make_rt_inv(torch.tensor([[20.0, 10.0, 0.0]]), torch.tensor([[0.0, 850.0, 0.0]]), "AP",
                           subject.isocenter)
        images.append(drr(subject, rt, backend="torch", n_samples=64))
    print("RESULT " + json.dumps({
        "files": [new.__file__, old.__file__], "ops": ops,
        "max_diff": float((images[0] - images[1]).abs().max()), "scale": float(images[0].abs().max()),
        "shape": list(images[0].shape),
    }))
    """
)


def test_baseline_copy_loads_beside_the_engine_and_renders_the_same(tmp_path):
    bench = REPO / "Testing" / "benchmark"
    engine = REPO / "NanoDRREngine"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(bench), str(engine), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    new_file, old_file = map(Path, res["files"])
    assert old_file.is_relative_to(tmp_path / "guard_copy")
    assert not new_file.is_relative_to(tmp_path)
    # every fused op of this engine also exists, renamed, in the copy (HEAD has the same ops)
    assert res["ops"]["nanodrr_engine"], "no custom ops registered by the engine"
    assert res["ops"]["guard_copy"] == res["ops"]["nanodrr_engine"]
    assert res["shape"] == [1, 1, 16, 18]
    assert res["scale"] > 0
    assert res["max_diff"] <= 1e-5 * res["scale"]
