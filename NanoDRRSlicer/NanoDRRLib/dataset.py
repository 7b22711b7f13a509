"""``generateDataset``: a training dataset (Zarr store) of the CT and segments already in the scene.

The volume node (with its parent transforms) and the chosen segments become an in-memory CT for
:func:`nanodrr_engine.dataset.generate`, run in this process (Slicer's Python should not spawn worker
processes: they would start the Slicer application). Segment ``k`` of ``segmentIds`` (default: the
visible ones) is image channel ``k + 1``; channel 0 holds what no segment covers. The segments must
not overlap, since one labelmap carries them. The scene is read, never changed.
"""

from __future__ import annotations

import numpy as np

from .conversion import checkVolumeNode, nodeLabel, volumeArray, volumeShape, volumeToWorld
from .errors import NanoDRRError
from .geometry import CArmGeometry
from .segments import (
    channelGroups,
    checkBinaryLabelmaps,
    checkSegmentationNode,
    layersOnGrid,
    segmentName,
    selectSegmentIds,
)


def _labels(volumeNode, voxelToWorld, segmentationNode, segmentIds):
    """``(labels [K, J, I], [segment names])`` for non-overlapping segments."""
    checkSegmentationNode(segmentationNode, volumeNode.GetScene())
    ids = selectSegmentIds(segmentationNode, segmentIds)
    checkBinaryLabelmaps(segmentationNode, ids)
    layers = layersOnGrid(segmentationNode, ids, volumeNode, voxelToWorld, volumeShape(volumeNode))
    groups = channelGroups(layers)
    if len(groups) != 1:
        names = [[segmentName(segmentationNode, s) for s in g] for _, g in groups]
        raise NanoDRRError(
            f"segmentationNode {nodeLabel(segmentationNode)}: the segments overlap ({names} cannot share one "
            "labelmap); a dataset's channels need non-overlapping segments: choose segmentIds that do not overlap"
        )
    labels, order = groups[0]
    index = {sid: n for n, sid in enumerate(order, start=1)}
    lut = np.zeros(len(order) + 1, dtype=np.uint8 if len(order) < 255 else np.int32)
    for n, sid in enumerate(ids, start=1):
        lut[index[sid]] = n  # channels in segmentIds order
    return lut[labels], [segmentName(segmentationNode, s) for s in ids]


def generateDataset(
    volumeNode,
    outputPath,
    n: int,
    segmentationNode=None,
    *,
    segmentIds=None,
    geometry: CArmGeometry | None = None,
    primary=(-30.0, 30.0),
    secondary=(-20.0, 20.0),
    sod=(800.0, 900.0),
    jitter: float = 10.0,
    roll=(0.0, 0.0),
    muBone=None,
    photons: float | None = None,
    blur=None,
    output: str = "attenuation",
    dtype: str = "float32",
    method: str = "joseph",
    seed: int = 0,
    chunk: int = 64,
    overwrite: bool = False,
    device: str = "cpu",
    progressCallback=None,
):
    """Render ``n`` DRRs of ``volumeNode`` into the Zarr store ``outputPath`` (resumed if it exists).

    Args:
        volumeNode: the CT (HU) scalar volume; linear parent transforms apply.
        outputPath: the store's folder: new, an existing dataset to resume, or (``overwrite``) to replace.
        n: number of images. segmentationNode, segmentIds: optional labelmap channels (see the module).
        geometry: the detector (default ``CArmGeometry()``, the reference 200 × 200 at 2 mm).
        primary, secondary, sod, jitter, roll: the pose distribution (DICOM degrees, mm; ranges ``(lo, hi)``).
        muBone: bone-contrast range (1/mm), photons: Poisson noise, blur: Gaussian sigma range (pixels),
            output: "attenuation" or "transmission" (see ``nanodrr_engine.dataset.Augment``).
        progressCallback: ``progressCallback(fraction, message)`` after each chunk; raising stops the run
            (finished chunks stay; calling again resumes).

    Returns:
        The engine's ``Summary`` (images, bytes on disk, seconds).

    Raises:
        NanoDRRError: naming the bad node or parameter, before anything is written (a full disk: during
        the run, the store staying resumable).
    """
    checkVolumeNode(volumeNode)
    voxelToWorld = volumeToWorld(volumeNode)
    if geometry is None:
        geometry = CArmGeometry()
    if not isinstance(geometry, CArmGeometry):
        raise NanoDRRError(f"geometry: expected a CArmGeometry, got {type(geometry).__name__}")
    g = geometry.checked()
    if progressCallback is not None and not callable(progressCallback):
        raise NanoDRRError(
            f"progressCallback: must be callable or None, got {type(progressCallback).__name__}"
        )
    labels, names = None, None
    if segmentationNode is not None:
        labels, names = _labels(volumeNode, voxelToWorld, segmentationNode, segmentIds)
        names = ["(no segment)", *names]
    elif segmentIds is not None:
        raise NanoDRRError("segmentIds: given without a segmentationNode")

    from nanodrr_engine.dataset import (
        Augment,
        CTArray,
        DatasetSpec,
        Detector,
        DiskFullError,
        PoseRanges,
        generate,
    )

    report = progressCallback or (lambda fraction, message="": None)
    raised = []

    def progress(done, total):
        try:
            report(done / total, f"{done:,} of {total:,} images")
        except BaseException as e:  # a cancel: passed on as it is
            raised.append(e)
            raise

    try:
        spec = DatasetSpec(
            n=n, seed=seed, chunk=chunk,
            detector=Detector(g.height, g.width, g.delx, g.dely, g.sdd, g.x0, g.y0),
            poses=PoseRanges(primary=primary, secondary=secondary, sod=sod, jitter=jitter, roll=roll),
            augment=Augment(mu_bone=muBone, photons=photons, blur=blur, output=output),
            dtype=dtype, method=method, max_label=None if labels is None else len(names) - 1,
        ).checked()  # fmt: skip
        ct = CTArray(volumeArray(volumeNode), voxelToWorld, labels, volumeNode.GetName())
        report(0.0, "Preparing the dataset")
        summary = generate(
            ct, outputPath, spec=spec, overwrite=overwrite, device=device, channel_names=names,
            progress=progress,
            command=f"NanoDRRLogic.generateDataset({volumeNode.GetName()!r}, {str(outputPath)!r}, n={n})",
        )  # fmt: skip
    except DiskFullError as e:
        raise NanoDRRError(e.strerror) from e
    except (ValueError, TypeError) as e:  # the engine's named errors
        if any(e is r for r in raised):
            raise
        raise NanoDRRError(str(e)) from e
    report(1.0, f"{summary.total:,} images in {outputPath}")
    return summary


__all__ = ["generateDataset"]
