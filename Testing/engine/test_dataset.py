"""nanodrr_engine.dataset: reproducible, resumable DRR datasets (issue 16).

A tiny phantom CT (33×31×44 voxels) written as NIfTI files, detectors of ~32² pixels, a few chunks.
References are independent of the code under test: the engine's own ``render`` / ``carm_to_rt_inv``
called directly on the stored poses, SciPy's Gaussian filter, Poisson statistics, and runs that
differ only in the engine, the worker count or the chunking (which must not change a single byte).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr", reason="nanodrr_engine.dataset needs zarr 3 (Python >= 3.11)")

import SimpleITK as sitk  # noqa: E402
from nanodrr_engine import Subject, budget, carm_to_rt_inv, render  # noqa: E402
from nanodrr_engine.data.phantom import make_chest_phantom  # noqa: E402
from nanodrr_engine.dataset import (  # noqa: E402
    Augment,
    CTReadError,
    DatasetError,
    DatasetMismatchError,
    DatasetSpec,
    DatasetTooLargeError,
    Detector,
    DRRDataset,
    DRRStream,
    IncompleteDatasetError,
    NotADatasetError,
    PoseRanges,
    generate,
    read_poses,
)
from nanodrr_engine.dataset.cli import main as cli_main  # noqa: E402
from nanodrr_engine.dataset.sampling import draw, pose  # noqa: E402

PY = sys.executable
ARRAYS = ("images", "rt_inv", "k_inv", "sdd", "subject", "params/primary", "params/secondary", "params/sod",
          "params/roll", "params/jitter", "params/mu_bone", "params/blur", "params/pose_row")  # fmt: skip


def _write(array: np.ndarray, v2w: np.ndarray, path: Path) -> None:
    """A NIfTI file whose voxels and IJK → RAS are ``array`` and ``v2w`` (ITK stores LPS)."""
    img = sitk.GetImageFromArray(array)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ v2w
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(img, str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cts")
    vol, labels, v2w, _ = make_chest_phantom(spacing=(8.0, 8.0, 10.0))
    _write(vol.astype(np.int16), v2w, d / "ct.nii.gz")
    _write(labels.astype(np.uint8), v2w, d / "labels.nii.gz")
    # a second CT: the phantom shifted and on another grid
    vol2, labels2, v2w2, _ = make_chest_phantom(spacing=(9.0, 8.0, 11.0), center=(15.0, -10.0, 5.0))
    _write(vol2.astype(np.int16), v2w2, d / "ct2.nii.gz")
    _write(labels2.astype(np.uint8), v2w2, d / "labels2.nii.gz")
    return d


def _spec(**kw) -> DatasetSpec:
    """Every augmentation on, a detector of 30 × 28 pixels (not a power of two: the call plan matters)."""
    base = dict(
        n=20, seed=11, chunk=4,
        detector=Detector(height=30, width=28, delx=13.0, dely=13.0, sdd=1020.0, x0=5.0, y0=-3.0),
        poses=PoseRanges(primary=(-40, 40), secondary=(-25, 25), sod=(780, 880), jitter=12.0, roll=(-15, 15)),
        augment=Augment(mu_bone=(0.03, 0.08), photons=2e4, blur=(0.0, 1.2), output="attenuation"),
    )  # fmt: skip
    base.update(kw)
    return DatasetSpec(**base)


def _arrays(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][:]) for k in ARRAYS}


def _assert_identical(a: dict, b: dict) -> None:
    for k in ARRAYS:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _cts(files, labels=True):
    names = [("ct.nii.gz", "labels.nii.gz"), ("ct2.nii.gz", "labels2.nii.gz")]
    return [(str(files / c), str(files / lab) if labels else None) for c, lab in names]


# --------------------------------------------------------------------------------------------------
# Sampling and poses
# --------------------------------------------------------------------------------------------------


def test_pose_is_the_engines_carm_pose_rolled_about_the_beam():
    spec = _spec().checked()
    iso = (3.5, -20.25, 7.0)
    for i in range(6):
        s = draw(spec, i, 1)
        rt = torch.as_tensor(pose(s, iso))
        ref = carm_to_rt_inv(
            s.primary,
            s.secondary,
            s.sod,
            torch.tensor(iso, dtype=torch.float64) + torch.tensor(s.jitter, dtype=torch.float64),
        )
        r = math.radians(s.roll)
        roll = torch.eye(4, dtype=torch.float64)
        roll[:2, :2] = torch.tensor(
            [[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]], dtype=torch.float64
        )
        torch.testing.assert_close(rt, ref @ roll, rtol=0, atol=1e-10)
        # the roll turns the detector about the beam: same source, same beam direction
        torch.testing.assert_close(rt[:3, 3], ref[:3, 3], rtol=0, atol=1e-10)
        torch.testing.assert_close(rt[:3, 2], ref[:3, 2], rtol=0, atol=1e-12)
        assert -40 <= s.primary <= 40 and -25 <= s.secondary <= 25 and 780 <= s.sod <= 880
        assert max(abs(j) for j in s.jitter) <= 12.0 and 0.03 <= s.mu_bone <= 0.08


def test_samples_depend_on_seed_and_index_only():
    spec = _spec().checked()
    assert draw(spec, 5, 2) == draw(spec, 5, 2)
    assert draw(spec, 5, 2) != draw(spec, 6, 2)
    other = _spec(seed=12).checked()
    assert draw(spec, 5, 2) != draw(other, 5, 2)
    assert draw(_spec(chunk=7).checked(), 5, 2) == draw(spec, 5, 2)  # the chunking is not an input


# --------------------------------------------------------------------------------------------------
# Byte-identical datasets whatever the engine, the worker count and the chunking
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """In-process, two threads: the dataset every other run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    summary = generate(_cts(files), out, spec=_spec(), threads=2)
    assert summary.images == 20 and summary.chunks == 5 and summary.threads == ((2, 2),)
    return out


def test_local_two_workers_equal_one(files, reference, tmp_path):
    summary = generate(_cts(files), tmp_path / "w2.zarr", spec=_spec(), workers=2)
    assert summary.threads == ((1, 1),)  # two workers on two cores: one thread each, no oversubscription
    _assert_identical(_arrays(tmp_path / "w2.zarr"), _arrays(reference))


def test_ray_local_cluster_equals_local(files, reference, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        summary = generate(
            _cts(files), tmp_path / "ray.zarr", spec=_spec(), engine="ray", workers=2, threads=1
        )
        assert ray.is_initialized()  # joined the caller's cluster and left it running
    finally:
        ray.shutdown()
    assert summary.threads == ((1, 1),)
    _assert_identical(_arrays(tmp_path / "ray.zarr"), _arrays(reference))


def test_other_chunking_same_bytes(files, reference, tmp_path):
    generate(_cts(files), tmp_path / "c3.zarr", spec=_spec(chunk=3), threads=1)
    _assert_identical(_arrays(tmp_path / "c3.zarr"), _arrays(reference))
    assert zarr.open_group(str(tmp_path / "c3.zarr"), mode="r")["images"].shards == (3, 10, 30, 28)


def test_store_layout_and_attributes(files, reference):
    g = zarr.open_group(str(reference), mode="r")
    rec = g.attrs["nanodrr_dataset"]
    import nanodrr_engine

    assert (
        rec["engine_version"] == nanodrr_engine.__version__ and rec["seed"] == 11 and rec["complete"] is True
    )
    assert rec["channels"] == 10 and set(rec["conventions"]) >= {"frames", "images", "angles"}
    assert [Path(c["ct"]).name for c in rec["cts"]] == ["ct.nii.gz", "ct2.nii.gz"]
    import hashlib

    for c in rec["cts"]:
        assert c["sha256"] == hashlib.sha256(Path(c["ct"]).read_bytes()).hexdigest()
        assert c["labels_sha256"] == hashlib.sha256(Path(c["labels"]).read_bytes()).hexdigest()
    assert "generate" in rec["command"] or rec["command"]
    assert g["images"].shape == (20, 10, 30, 28) and g["images"].dtype == np.float32
    assert g["images"].shards == (4, 10, 30, 28) and g["images"].chunks == (1, 10, 30, 28)
    assert g["rt_inv"].shape == (20, 4, 4) and g["k_inv"].shape == (20, 3, 3) and g["sdd"].shape == (20,)
    assert g["done"][:].tolist() == [1] * 5
    assert set(np.asarray(g["subject"][:]).tolist()) == {0, 1}  # both CTs drawn
    # one shard file per chunk (plus zarr.json): "one chunk per batch"
    shards = sorted((reference / "images" / "c").rglob("*"))
    assert len([f for f in shards if f.is_file()]) == 5


# --------------------------------------------------------------------------------------------------
# The stored images are what `render` gives for the stored poses
# --------------------------------------------------------------------------------------------------


def _rerender(files, arrays, i, subject_kw=None, method="joseph", labels=True):
    names = [("ct.nii.gz", "labels.nii.gz"), ("ct2.nii.gz", "labels2.nii.gz")][int(arrays["subject"][i])]
    sub = Subject.from_filepath(files / names[0], files / names[1] if labels else None, **(subject_kw or {}))
    d = arrays["images"].shape
    with torch.no_grad():
        return render(
            sub, torch.as_tensor(arrays["k_inv"][i]), torch.as_tensor(arrays["rt_inv"][i]), float(arrays["sdd"][i]),
            d[2], d[3], method=method, n_samples=500,
        )[0].numpy()  # fmt: skip


def test_plain_samples_rerender_to_the_same_bytes(files, tmp_path):
    spec = _spec(augment=Augment(), n=6, chunk=4)
    generate(_cts(files, labels=False), tmp_path / "p.zarr", spec=spec)
    a = _arrays(tmp_path / "p.zarr")
    for i in range(6):
        assert a["images"][i].tobytes() == _rerender(files, a, i, labels=False).tobytes()


def test_labelled_samples_rerender_to_the_same_bytes(files, tmp_path):
    spec = _spec(augment=Augment(), n=5, chunk=5, dtype="float16")
    generate(_cts(files), tmp_path / "l.zarr", spec=spec)
    a = _arrays(tmp_path / "l.zarr")
    assert a["images"].dtype == np.float16 and a["images"].shape[1] == 10
    for i in range(5):
        assert a["images"][i].tobytes() == _rerender(files, a, i).astype(np.float16).tobytes()


def test_bone_contrast_is_the_render_with_that_mu_bone(files, tmp_path):
    spec = _spec(augment=Augment(mu_bone=(0.03, 0.09)), n=4, method="raymarch", n_samples=500)
    generate(_cts(files, labels=False), tmp_path / "b.zarr", spec=spec)
    a = _arrays(tmp_path / "b.zarr")
    spread = []
    for i in range(4):
        m = float(a["params/mu_bone"][i])
        ref = _rerender(files, a, i, {"mu_bone": m}, "raymarch", labels=False)
        # two float32 renders summed in float64 against one float32 render: float32 rounding apart
        np.testing.assert_allclose(a["images"][i], ref, rtol=2e-6, atol=2e-6 * ref.max())
        spread.append(m)
    assert max(spread) - min(spread) > 0.01  # the contrast really varies


def test_transmission_noise_is_poisson_around_the_render(files, tmp_path):
    photons = 5e3
    spec = _spec(augment=Augment(photons=photons, output="transmission"), n=8)
    generate(_cts(files, labels=False), tmp_path / "t.zarr", spec=spec)
    a = _arrays(tmp_path / "t.zarr")
    counts = a["images"].astype(np.float64) * photons
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole photon counts
    z = []
    for i in range(8):
        lam = photons * np.exp(-_rerender(files, a, i, labels=False).astype(np.float64))
        z.append((counts[i] - lam) / np.sqrt(lam))
    z = np.concatenate([v.ravel() for v in z])
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1.0) < 0.08, (z.mean(), z.var())


def test_blur_matches_scipy(files, tmp_path):
    ndimage = pytest.importorskip("scipy.ndimage")
    spec = _spec(augment=Augment(blur=(0.6, 1.8), output="transmission"), n=4)
    generate(_cts(files, labels=False), tmp_path / "bl.zarr", spec=spec)
    a = _arrays(tmp_path / "bl.zarr")
    for i in range(4):
        sigma = float(a["params/blur"][i])
        t = np.exp(-_rerender(files, a, i, labels=False)[0].astype(np.float64))
        ref = ndimage.gaussian_filter(t, sigma, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(a["images"][i, 0], ref, rtol=0, atol=1e-6)
        assert np.abs(a["images"][i, 0] - t).max() > 1e-3  # it did blur


def test_pose_table(files, tmp_path):
    table = tmp_path / "poses.csv"
    table.write_text("primary,secondary,sod,roll,dx\n0,0,850,0,0\n90,10,800,5,4.5\n-30,-20,820,,\n")
    spec = _spec(poses=read_poses(table), augment=Augment(), n=5)
    generate(_cts(files, labels=False), tmp_path / "pt.zarr", spec=spec)
    a = _arrays(tmp_path / "pt.zarr")
    assert a["params/pose_row"].tolist() == [0, 1, 2, 0, 1]
    assert a["params/primary"].tolist() == [0.0, 90.0, -30.0, 0.0, 90.0]
    g = zarr.open_group(str(tmp_path / "pt.zarr"), mode="r")
    iso = Subject.from_filepath(files / ["ct.nii.gz", "ct2.nii.gz"][a["subject"][1]]).isocenter.double()
    ref = carm_to_rt_inv(90.0, 10.0, 800.0, iso + torch.tensor([4.5, 0.0, 0.0], dtype=torch.float64))
    assert np.allclose(ref[:3, 3].numpy(), np.asarray(g["rt_inv"][1])[:3, 3], atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Resumption
# --------------------------------------------------------------------------------------------------


#: Images of the CLI runs that get interrupted: enough 2-image chunks of 32² (~1 ms an image) that the signal,
#: sent once the first chunks are done, lands mid-run (96 finished before a SIGINT did).
CLI_N = 960


def _cli_generate(files, out, *extra) -> list[str]:
    return [
        PY, "-m", "nanodrr_engine.dataset", "generate", "--ct", str(files / "ct.nii.gz"), "--out", str(out),
        "--n", str(CLI_N), "--chunk", "2", "--size", "32", "--seed", "3", "--mu-bone", "0.03", "0.08", "--photons", "1e4",
        "--quiet", *extra,
    ]  # fmt: skip


def _done(out) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(out), mode="r")["done"][:]).sum())
    except Exception:
        return 0


def _kill_after(cmd, out, chunks: int, sig) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a shell without job control starts background jobs with SIGINT ignored, and the child would inherit
        # that (a CI runner can): give it the default, as a terminal's Ctrl-C finds it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    while _done(out) < chunks and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    return proc


@pytest.fixture(scope="module")
def cli_reference(files, tmp_path_factory):
    """An uninterrupted run of the same command, in a fresh process like the interrupted ones.

    (Rendered in the pytest process instead, after the whole suite had run, it differed from the CLI's in
    one sample of 960 in one CI run: a process-state dependence under investigation, see issue 16.)
    """
    out = tmp_path_factory.mktemp("cliref") / "ref.zarr"
    run = subprocess.run(_cli_generate(files, out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out


def test_resume_after_sigkill_equals_an_uninterrupted_run(files, cli_reference, tmp_path):
    out = tmp_path / "k.zarr"
    proc = _kill_after(_cli_generate(files, out, "--workers", "2"), out, 3, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = _done(out)
    assert 3 <= before < CLI_N // 2, before  # killed mid-run
    g = zarr.open_group(str(out), mode="r")
    ref = _arrays(cli_reference)
    done = np.asarray(g["done"][:]).astype(bool)
    for c in np.flatnonzero(done):  # every chunk counted as done is complete and right
        assert (
            np.asarray(g["images"][2 * c : 2 * c + 2]).tobytes() == ref["images"][2 * c : 2 * c + 2].tobytes()
        )
    run = subprocess.run(_cli_generate(files, out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "resumed" in run.stdout and f"{CLI_N - 2 * before:,} images in" in run.stdout
    _assert_identical(_arrays(out), ref)
    assert zarr.open_group(str(out), mode="r").attrs["nanodrr_dataset"]["complete"] is True


def test_ctrl_c_leaves_a_resumable_store(files, cli_reference, tmp_path):
    out = tmp_path / "i.zarr"
    proc = _kill_after(_cli_generate(files, out), out, 2, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    before = _done(out)
    assert before < CLI_N // 2
    run = subprocess.run(_cli_generate(files, out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "resumed" in run.stdout and f"{CLI_N - 2 * before:,} images in" in run.stdout
    _assert_identical(_arrays(out), _arrays(cli_reference))


def test_a_finished_dataset_is_left_alone_and_overwrite_restarts(files, reference):
    before = _arrays(reference)
    stamps = {f: f.stat().st_mtime_ns for f in reference.rglob("*") if f.is_file() and f.name != "zarr.json"}
    summary = generate(_cts(files), reference, spec=_spec())
    assert summary.images == 0 and summary.resumed
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # no chunk rewritten
    _assert_identical(_arrays(reference), before)


def test_resuming_with_other_settings_is_refused(files, reference):
    with pytest.raises(DatasetMismatchError, match="seed: stored 11, asked 12"):
        generate(_cts(files), reference, spec=_spec(seed=12))
    with pytest.raises(DatasetMismatchError, match="SHA-256"):
        generate([(str(files / "ct2.nii.gz"), str(files / "labels2.nii.gz"))] * 2, reference, spec=_spec())


def test_overwrite(files, tmp_path):
    out = tmp_path / "o.zarr"
    generate(_cts(files, labels=False), out, spec=_spec(n=4, augment=Augment()))
    first = _arrays(out)
    summary = generate(
        _cts(files, labels=False), out, spec=_spec(n=4, seed=99, augment=Augment()), overwrite=True
    )
    assert not summary.resumed and summary.images == 4
    assert _arrays(out)["images"].tobytes() != first["images"].tobytes()


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def test_drrdataset_items_are_the_stored_arrays(reference):
    ds = DRRDataset(reference)
    a = _arrays(reference)
    assert len(ds) == 20
    item = ds[13]
    assert item["index"] == 13 and item["image"].dtype == torch.float32
    assert torch.equal(item["image"], torch.from_numpy(a["images"][13]))
    assert torch.equal(item["rt_inv"], torch.from_numpy(a["rt_inv"][13]))
    assert float(item["mu_bone"]) == a["params/mu_bone"][13] and item["jitter"].shape == (3,)
    assert ds.spec == _spec().checked()


def test_drrdataset_in_a_dataloader_with_two_workers(reference):
    a = _arrays(reference)
    loader = torch.utils.data.DataLoader(DRRDataset(reference), batch_size=3, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    seen = {}
    for batch in loader:
        for k, i in enumerate(batch["index"].tolist()):
            seen[i] = (batch["image"][k], batch["sdd"][k], batch["subject"][k])
    assert sorted(seen) == list(range(20))
    for i, (img, sdd, sub) in seen.items():
        assert torch.equal(img, torch.from_numpy(a["images"][i])) and float(sdd) == 1020.0
        assert int(sub) == a["subject"][i]


def test_drrstream_on_the_cpu_yields_the_stored_bytes(files, reference):
    stream = DRRStream(_cts(files), _spec(), batch_size=6)
    a = _arrays(reference)
    # spawned workers: numba's OpenMP threads (used by this process already) do not survive fork()
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=2, multiprocessing_context="spawn"
    )
    batches = list(loader)
    assert sorted(len(b["index"]) for b in batches) == [2, 6, 6, 6]
    for b in batches:
        i = b["index"].numpy()
        assert b["image"].numpy().tobytes() == a["images"][i].tobytes()
        assert b["rt_inv"].numpy().tobytes() == a["rt_inv"][i].tobytes()


def test_incomplete_datasets_are_refused_by_the_reader(files, tmp_path):
    out = tmp_path / "inc.zarr"

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(_cts(files, labels=False), out, spec=_spec(augment=Augment()), progress=stop)
    with pytest.raises(IncompleteDatasetError, match="1 of 5 chunks done"):
        DRRDataset(out)
    assert len(DRRDataset(out, allow_incomplete=True)) == 4


# --------------------------------------------------------------------------------------------------
# Bad input: named errors, nothing written
# --------------------------------------------------------------------------------------------------


def test_cli_errors_in_a_subprocess(files, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    cases = [
        (["--ct", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "a.zarr")], "ct: cannot read", "a.zarr"),
        (["--ct", str(files / "ct.nii.gz"), "--out", str(folder)], "is not a NanoDRR dataset", None),
        (["--ct", str(files / "ct.nii.gz"), "--out", str(folder), "--overwrite"], "is not a NanoDRR dataset", None),
        (["--ct", str(files / "ct.nii.gz"), "--out", str(tmp_path / "b.zarr"), "--primary", "30", "-30"],
         "primary: the range is inverted", "b.zarr"),
    ]  # fmt: skip
    for args, message, created in cases:
        r = subprocess.run(
            [PY, "-m", "nanodrr_engine.dataset", "generate", "--n", "4", "--size", "16", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        if created:
            assert not (tmp_path / created).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    r = subprocess.run(
        [str(Path(PY).parent / "nanodrr-dataset"), "generate", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--ray-address" in r.stdout and "--gpus-per-worker" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0", "--size", "16"], "n: must be in [1,"),
        (["--n", "-5", "--size", "16"], "n: must be in [1,"),
        (["--n", "2000000000", "--size", "1024"], "need up to"),
        (["--n", "4", "--sod", "900", "1100", "--size", "16"], "sod: up to 1100 mm must stay below sdd"),
        (["--n", "4", "--mu-bone", "0.01", "0.05", "--size", "16"], "mu_bone: the range starts at 0.01"),
        (["--n", "4", "--height", "31", "--width", "31"], "multiple of 4"),
        (["--n", "4", "--secondary", "-100", "0", "--size", "16"], "secondary[0]: must be in [-90, 90]"),
        (["--n", "4", "--chunk", "4096", "--size", "16384"], "chunk (one batch of images)"),
        (["--n", "4", "--blur", "3", "1", "--size", "16"], "blur: the range is inverted"),
    ],
)
def test_cli_refuses_bad_values_before_writing(files, tmp_path, capsys, args, message):
    out = tmp_path / "x.zarr"
    code = cli_main(["generate", "--ct", str(files / "ct.nii.gz"), "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists()


def test_absurd_size_names_the_estimated_bytes(files, tmp_path):
    spec = _spec(n=2_000_000_000, detector=Detector.preset("reference", 1024), augment=Augment())
    with pytest.raises(DatasetTooLargeError) as e:
        generate(_cts(files, labels=False), tmp_path / "big.zarr", spec=spec)
    assert e.value.estimated_bytes >= 2_000_000_000 * 1024 * 1024 * 4
    assert not (tmp_path / "big.zarr").exists()


def test_python_api_errors(files, tmp_path):
    with pytest.raises(CTReadError, match="labels: cannot read"):
        generate(str(files / "ct.nii.gz"), tmp_path / "a.zarr", 4, labels=str(tmp_path / "none.nii.gz"))
    with pytest.raises(DatasetError, match="engine: expected one of"):
        generate(str(files / "ct.nii.gz"), tmp_path / "a.zarr", 4, engine="spark")
    with pytest.raises(DatasetError, match="labels: give a labelmap for every CT or for none"):
        generate([(str(files / "ct.nii.gz"), str(files / "labels.nii.gz")), str(files / "ct2.nii.gz")],
                 tmp_path / "a.zarr", 4)  # fmt: skip
    with pytest.raises(NotADatasetError, match="does not exist"):
        generate(str(files / "ct.nii.gz"), tmp_path / "no" / "such" / "a.zarr", 4)
    with pytest.raises(TypeError, match="seed"):
        generate(str(files / "ct.nii.gz"), tmp_path / "a.zarr", 4, seed=True)
    with pytest.raises(budget.WorkBudgetError):
        with budget.limits(max_bytes=1e6):
            generate(str(files / "ct.nii.gz"), tmp_path / "a.zarr", 64, chunk=64)
    assert not (tmp_path / "a.zarr").exists()


# --------------------------------------------------------------------------------------------------
# Full disk: a named error, then the same run resumes once there is space
# --------------------------------------------------------------------------------------------------

_DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, shutil
    import numpy as np, zarr
    from nanodrr_engine.dataset import Augment, DatasetSpec, Detector, DiskFullError, generate
    mnt, ct, ref = sys.argv[1], sys.argv[2], sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    spec = DatasetSpec(n=96, seed=3, chunk=2, detector=Detector.preset("reference", 32),
                       augment=Augment(mu_bone=(0.03, 0.08), photons=1e4))
    out = os.path.join(mnt, "d.zarr")
    def fill(done, total):
        if done == 4:  # after two chunks, something else fills the disk
            with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"x" * 4096)
                except OSError:
                    pass
    result = {}
    try:
        generate(ct, out, spec=spec, progress=fill)
    except DiskFullError as e:
        result["error"] = str(e.strerror)
    g = zarr.open_group(out, mode="r")
    result["done_after_full"] = int(np.asarray(g["done"][:]).sum())
    os.remove(os.path.join(mnt, "filler"))
    s = generate(ct, out, spec=spec)
    result["resumed_images"] = s.images
    a, b = zarr.open_group(out, mode="r"), zarr.open_group(ref, mode="r")
    # ref has more samples of the same spec: sample i depends only on (seed, i), so its first 96 are these
    result["equal"] = all(np.asarray(a[k][:]).tobytes() == np.asarray(b[k][:96]).tobytes()
                          for k in ("images", "rt_inv", "params/mu_bone")) and bool(np.asarray(a["done"][:]).all())
    print("RESULT " + json.dumps(result))
    """
)


def test_full_disk_is_a_named_error_and_the_store_stays_resumable(files, cli_reference, tmp_path):
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode
    ):
        pytest.skip("needs unshare -rm (user and mount namespaces) for a small private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_DISK_FULL_SCRIPT)
    r = subprocess.run(
        ["unshare", "-rm", PY, str(script), str(mnt), str(files / "ct.nii.gz"), str(cli_reference)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.split("RESULT ")[-1])
    assert "disk" in result["error"] and "full" in result["error"] and "re-run" in result["error"]
    assert 2 <= result["done_after_full"] < 48
    assert result["resumed_images"] == 96 - 2 * result["done_after_full"]
    assert result["equal"]
