"""``NanoDRRLogic``: the headless facade the module widget (and scripts) call.

Every public method validates all of its inputs first and raises :class:`NanoDRRError` (naming the
node or parameter) before creating or modifying any node, so a failed call leaves the scene as it was.

What ``render`` computes (docs/geometry.md): the line integral ∫μ ds along each detector pixel's ray,
μ from HU by the engine's bilinear model. With a segmentation, the CT is restricted to the union of
the selected (by default: visible) segments: each ray sample counts only if its nearest CT voxel is
inside a segment — the engine's labelmap semantics, so the restricted DRR plus the DRR of the rest
is the plain DRR. ``displayMode="transmission"`` stores I/I0 = exp(−∫μ ds) instead.

Sampling (``method``): "raymarch" takes ``nSamples`` evenly spaced samples per ray (the reference
semantics, as nanodrr); "joseph" takes one sample per voxel plane crossed along each ray's dominant axis
(``nSamples`` is ignored), as accurate against exact line integrals and faster for plain CPU renders.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import slicer
from nanodrr_engine.names import BACKEND_CHOICES, METHODS

from . import carm as _carm
from . import dataset as _dataset
from . import overlay as _overlay
from . import registration as _registration
from .conversion import (
    SubjectCache,
    checkVolumeNode,
    nodeLabel,
    volumeCenter,
    volumeShape,
    volumeToWorld,
)
from .errors import NanoDRRError
from .geometry import CArmGeometry, checkNumber
from .geometry_model import updateGeometryModel as _updateGeometryModel
from .output import (
    DISPLAY_MODES,
    GREY,
    INVERTED_GREY,
    checkFiniteImage,
    checkOutputNode,
    checkOutputNodes,
    detectorIJKToRAS,
    segmentColorNode,
    writeDRR,
)
from .segments import (
    channelGroups,
    checkBinaryLabelmaps,
    checkSegmentationNode,
    layersOnGrid,
    segmentationKey,
    segmentColor,
    segmentName,
    selectSegmentIds,
    unionMask,
    voxelCounts,
)

if TYPE_CHECKING:  # torch and the engine are imported lazily (Slicer may install torch on demand)
    import torch

#: What ``backend=`` accepts, and the sampling methods (torch-free: validation runs before torch exists).
BACKENDS = BACKEND_CHOICES


def resolveDevice(device) -> torch.device:
    """``None``/"auto" → CUDA if available, else MPS, else CPU; explicit devices must be available."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    mpsOk = bool(mps is not None and mps.is_available())
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mpsOk else torch.device("cpu")
    try:
        d = device if isinstance(device, torch.device) else torch.device(str(device).lower())
    except (RuntimeError, TypeError):
        raise NanoDRRError(f"device: expected 'auto', 'cpu', 'cuda' or 'mps', got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise NanoDRRError("device: 'cuda' was requested but no CUDA GPU is available")
    if d.type == "mps" and not mpsOk:
        raise NanoDRRError("device: 'mps' was requested but Apple MPS is not available")
    if d.type not in ("cpu", "cuda", "mps"):
        raise NanoDRRError(f"device: unsupported device type {d.type!r}")
    return d


@dataclass
class _Request:
    """A validated render request."""

    scene: object
    voxelToWorld: np.ndarray
    pose: np.ndarray
    geometry: CArmGeometry
    nSamples: int
    device: torch.device
    mu: dict
    displayMode: str
    backend: str
    method: str


class NanoDRRLogic:
    """Renders DRRs of MRML volume nodes through the ``nanodrr_engine``.

    Attributes:
        lastTimings: seconds spent in the last render call: ``validate``, ``convert`` (node → subject,
            cached), ``render`` (engine), ``output`` (array → node) and ``total``.
        lastRenderPasses: engine calls made by the last render call.
    """

    def __init__(self, maxCachedVolumes: int = 2) -> None:
        self._cache = SubjectCache(maxVolumes=maxCachedVolumes)
        self._drrs: OrderedDict[tuple, object] = OrderedDict()
        self.lastTimings: dict[str, float] = {}
        self.lastRenderPasses = 0

    # --- cache -------------------------------------------------------------------------------

    @property
    def conversionCount(self) -> int:
        """How many times a volume node's voxels were converted (cache misses)."""
        return self._cache.conversionCount

    @property
    def labelConversionCount(self) -> int:
        """How many times segment masks were rebuilt on the CT grid (cache misses)."""
        return self._cache.labelConversionCount

    def clearCache(self) -> None:
        """Drop converted volumes and masks (e.g. to free memory)."""
        self._cache.clear()
        self._drrs.clear()

    # --- C-arm pose ----------------------------------------------------------------------------

    def isocenter(self, volumeNode) -> np.ndarray:
        """World position of the volume's centre (parent transforms included), ``[3]`` mm."""
        return _carm.isocenter(volumeNode)

    def createCArmTransform(
        self, volumeNode, sod=850.0, orientation="AP", rotation=(0.0, 0.0, 0.0), name=None
    ):
        """New C-arm linear transform node; ToWorld = make_rt_inv(rotation, (0, sod, 0), "AP", isocenter).

        See :mod:`NanoDRRLib.carm` for the "PA"/None orientations and the clinical angles.
        """
        return _carm.createCArmTransform(volumeNode, sod, orientation, rotation, name)

    def setCArmAngles(self, carmNode, volumeNode, primary=0.0, secondary=0.0, sod=850.0) -> None:
        """Pose the C-arm at DICOM angles: primary + = LAO / − = RAO (−180…180), secondary + = CRAN / − = CAUD
        (−90…90); others are refused."""
        _carm.setCArmAngles(carmNode, volumeNode, primary, secondary, sod)

    def getCArmAngles(self, carmNode, volumeNode) -> tuple[float, float, float]:
        """``(primary, secondary, sod)`` of the C-arm about the volume's centre (inverts ``setCArmAngles``;
        poles, rolled and mirrored poses: see :mod:`NanoDRRLib.carm`)."""
        return _carm.getCArmAngles(carmNode, volumeNode)

    def updateGeometryModel(self, carmNode, geometry: CArmGeometry, modelNode=None):
        """Source, beam frustum and detector outline as a model under the C-arm transform."""
        return _updateGeometryModel(carmNode, geometry, modelNode)

    # --- registration ---------------------------------------------------------------------------

    def registerCArm(self, volumeNode, carmNode, xrayNode, geometry: CArmGeometry, **options) -> dict:
        """Move ``carmNode`` to the pose whose DRR matches ``xrayNode`` (see :mod:`NanoDRRLib.registration`)."""
        return _registration.registerCArm(self, volumeNode, carmNode, xrayNode, geometry, **options)

    def undoRegistration(self, carmNode) -> None:
        """Put the C-arm back where the last :meth:`registerCArm` found it."""
        _registration.undoRegistration(carmNode)

    def loadXray(self, scene, path, volumeNode=None, **geometry) -> tuple:
        """X-ray file → ``(volume node, CArmGeometry or None, C-arm node or None)`` from its tags."""
        return _registration.loadXray(scene, path, volumeNode, **geometry)

    def initializeFromXray(self, xrayNode, volumeNode, carmNode) -> tuple:
        """Move ``carmNode`` to the pose in ``xrayNode``'s DICOM tags: ``(geometry, (primary, secondary, sod))``."""
        return _registration.initializeFromXray(xrayNode, volumeNode, carmNode)

    def updateOverlay(self, drrNode, xrayNode, geometry: CArmGeometry, mode="blend", blend=0.5, **kw):
        """The DRR over the X-ray as an RGB node on the detector plane (see :mod:`NanoDRRLib.overlay`)."""
        return _overlay.updateOverlayNode(drrNode, xrayNode, geometry, mode, blend, **kw)

    # --- training data -------------------------------------------------------------------------

    def generateDataset(
        self, volumeNode, outputPath, n, segmentationNode=None, *, progressCallback=None, **options
    ):
        """Render ``n`` DRRs of the CT (and segments) into a Zarr dataset (see :mod:`NanoDRRLib.dataset`)."""
        return _dataset.generateDataset(
            volumeNode, outputPath, n, segmentationNode, progressCallback=progressCallback, **options
        )

    # --- validation ----------------------------------------------------------------------------

    def _validate(
        self, volumeNode, carmNode, geometry, nSamples, device, muBone, muWater, displayMode, backend, method
    ) -> _Request:
        checkVolumeNode(volumeNode)
        scene = volumeNode.GetScene()
        voxelToWorld = volumeToWorld(volumeNode)
        pose = _carm.cArmToWorld(carmNode)
        if carmNode.GetScene() is not scene:
            raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: is not in the volume's scene")
        if not isinstance(geometry, CArmGeometry):
            raise NanoDRRError(f"geometry: expected a CArmGeometry, got {type(geometry).__name__}")
        geometry = geometry.checked()
        nSamples = checkNumber(nSamples, "nSamples", positive=True, integer=True, unit="samples per ray")
        center = volumeCenter(voxelToWorld, volumeShape(volumeNode))
        depth = float((np.linalg.inv(pose) @ np.append(center, 1.0))[2])
        if not 0.0 < depth < geometry.sdd:
            raise NanoDRRError(
                f"carmNode {nodeLabel(carmNode)}: the volume's centre is {depth:.1f} mm along the beam from "
                f"the source; it must lie between the source and the detector (0 < sod < geometry.sdd = "
                f"{geometry.sdd:g} mm)"
            )
        from nanodrr_engine import MU_BONE, MU_WATER

        mu = {}
        for name, value, default, key in (
            ("muBone", muBone, MU_BONE, "mu_bone"),
            ("muWater", muWater, MU_WATER, "mu_water"),
        ):
            v = default if value is None else checkNumber(value, name, positive=True, unit="1/mm")
            mu[key] = float(v)
        if not isinstance(displayMode, str) or displayMode not in DISPLAY_MODES:
            raise NanoDRRError(f"displayMode: expected one of {DISPLAY_MODES}, got {displayMode!r}")
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise NanoDRRError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if not isinstance(method, str) or method not in METHODS:
            raise NanoDRRError(f"method: expected one of {METHODS}, got {method!r}")
        return _Request(
            scene,
            voxelToWorld,
            pose,
            geometry,
            nSamples,
            resolveDevice(device),
            mu,
            displayMode,
            backend,
            method,
        )

    # --- rendering -----------------------------------------------------------------------------

    def _drr(self, geometry: CArmGeometry, device: torch.device):
        from nanodrr_engine import DRR

        g = geometry
        key = (g.sdd, g.delx, g.dely, g.x0, g.y0, int(g.height), int(g.width), str(device))
        drr = self._drrs.get(key)
        if drr is None:
            drr = DRR.from_carm_intrinsics(
                float(g.sdd), float(g.delx), float(g.dely), float(g.x0), float(g.y0), int(g.height), int(g.width),
                device=device,
            )  # fmt: skip
            self._drrs[key] = drr
            while len(self._drrs) > 4:
                self._drrs.popitem(last=False)
        self._drrs.move_to_end(key)
        return drr

    def _renderTensor(self, subject, req: _Request, progress=None) -> np.ndarray:
        """Engine render ``[C, H, W]`` float32 (∫μ ds per channel). ``progress(fraction)`` runs after each
        chunk of rays (the engine then renders in chunks); what it raises (a cancel) propagates as is."""
        import torch

        drr = self._drr(req.geometry, req.device)
        pose = torch.as_tensor(req.pose, dtype=torch.float64, device=req.device)[None]
        raised = []

        def engineProgress(fraction):
            try:
                progress(fraction)
            except BaseException as e:
                raised.append(e)
                raise

        try:
            with torch.no_grad():
                out = drr(
                    subject, pose, n_samples=req.nSamples, backend=req.backend, method=req.method,
                    progress=engineProgress if progress is not None else None,
                )  # fmt: skip
        except NanoDRRError:
            raise
        except ValueError as e:
            if any(e is r for r in raised):
                raise
            raise NanoDRRError(f"render: {e}") from e
        self.lastRenderPasses += 1
        return out[0].float().cpu().numpy()

    @staticmethod
    def _checkBudget(req: _Request, volumeNode, nClasses: int) -> None:
        """The engine's work budget (``nanodrr_engine.budget``) for one render pass of ``nClasses``
        channels, checked before anything is converted or created."""
        from nanodrr_engine import budget

        g = req.geometry
        shape = volumeShape(volumeNode)
        cost = budget.estimate(1, int(g.height), int(g.width), req.nSamples, req.method, shape, nClasses, 8)
        try:
            budget.check(cost, "nSamples, geometry")
        except budget.WorkBudgetError as e:
            raise NanoDRRError(str(e).replace("n_samples=", "nSamples=")) from None

    @staticmethod
    def _attributes(req: _Request, volumeNode, carmNode, segmentationNode, segmentIds) -> dict:
        g = req.geometry
        # The input nodes are node references, not ID attributes (import renames IDs): see writeDRR.
        attrs = {
            "role": "DRR",
            "sdd": float(g.sdd), "delx": float(g.delx), "dely": float(g.dely),
            "x0": float(g.x0), "y0": float(g.y0), "height": int(g.height), "width": int(g.width),
            "rtInv": req.pose, "method": req.method,
            "nSamples": req.nSamples if req.method == "raymarch" else None,  # joseph ignores it
            "displayMode": req.displayMode,
            "muWater": req.mu["mu_water"], "muBone": req.mu["mu_bone"],
            "segmentIDs": list(segmentIds) if segmentationNode is not None else None,
        }  # fmt: skip
        return attrs

    @staticmethod
    def _display(image: np.ndarray, displayMode: str) -> tuple[np.ndarray, str]:
        if displayMode == "transmission":
            return np.exp(-image), INVERTED_GREY
        return image, GREY

    def render(
        self,
        volumeNode,
        carmNode,
        geometry: CArmGeometry,
        segmentationNode=None,
        outputNode=None,
        nSamples: int = 500,
        device=None,
        muBone: float | None = None,
        displayMode: str = "attenuation",
        *,
        segmentIds=None,
        muWater: float | None = None,
        name: str | None = None,
        autoWindowLevel: bool = True,
        backend: str = "auto",
        method: str = "raymarch",
        progressCallback=None,
    ):
        """Render a DRR of ``volumeNode`` from the C-arm pose into a scalar volume node.

        Args:
            volumeNode: CT (HU) scalar volume; a linear parent transform is applied.
            carmNode: C-arm linear transform node (ToWorld = camera-to-world).
            geometry: detector intrinsics.
            segmentationNode: optional; restricts the CT to the union of ``segmentIds`` (default: the
                visible segments), see the module docstring.
            outputNode: scalar volume node to write into (default: a new node); it gets new image data,
                never writing into voxels it may share with the CT or other nodes (see :mod:`.output`).
            nSamples: samples per ray (``method="raymarch"`` only). device: "auto", "cpu", "cuda", "mps".
            muBone, muWater: μ of bone / water (1/mm) for the HU → μ conversion (engine defaults).
            displayMode: "attenuation" stores ∫μ ds; "transmission" stores exp(−∫μ ds).
            name: name of a new output node (default "<volume> DRR").
            autoWindowLevel: set window/level from robust percentiles of the image.
            backend: engine ray-march backend ("auto" picks the fastest).
            method: "raymarch" (``nSamples`` samples per ray, the reference) or "joseph" (one sample per
                voxel plane crossed, ``nSamples`` ignored; fastest on the CPU without a segmentation:
                with one the labelmap render runs on the engine's slower torch path). Recorded in the
                node's ``NanoDRR.method`` attribute; ``NanoDRR.nSamples`` is recorded for "raymarch" only.
            progressCallback: ``progressCallback(fraction, message)`` between stages and, during the
                engine render, after each chunk of rays (each well under half a second); it may raise to
                cancel, which is safe until the outputs are written (the last report is before that).

        Returns:
            The output ``vtkMRMLScalarVolumeNode`` (array ``(1, H, W)`` float32 on the detector plane).
        """
        clock = _StageClock()
        req = self._validate(
            volumeNode, carmNode, geometry, nSamples, device, muBone, muWater, displayMode, backend, method
        )
        ids: list[str] = []
        segmentIds = _checkSegmentIds(segmentIds)
        if segmentationNode is not None:
            checkSegmentationNode(segmentationNode, req.scene)
            ids = selectSegmentIds(segmentationNode, segmentIds)
        elif segmentIds is not None:
            raise NanoDRRError("segmentIds: given without a segmentationNode")
        checkOutputNode(outputNode, req.scene, forbidden=(volumeNode,))
        if name is not None and not isinstance(name, str):
            raise NanoDRRError(f"name: expected a string, got {name!r}")
        _checkBool(autoWindowLevel, "autoWindowLevel")
        _checkCallable(progressCallback, "progressCallback")
        self._checkBudget(req, volumeNode, 1 if segmentationNode is None else 2)
        if segmentationNode is not None:
            checkBinaryLabelmaps(segmentationNode, ids)  # closed surfaces are converted on a copy
        clock.stage("validate")

        report = _reporter(progressCallback)
        report(0.0, "Preparing the volume")
        if segmentationNode is None:
            subject = self._cache.subject(volumeNode, req.voxelToWorld, req.device, req.mu)
            passes = [_Pass(subject, {0: "drr"}, "Rendering")]
        else:
            shape = volumeShape(volumeNode)

            def makeLabels():
                layers = layersOnGrid(segmentationNode, ids, volumeNode, req.voxelToWorld, shape)
                mask = unionMask(layers)
                return [(mask, 1, int(voxelCounts(mask, 1)[1]))]

            key = ("union", segmentationKey(segmentationNode, ids))
            ((subject, count),) = self._cache.labelledSubjects(
                volumeNode, req.voxelToWorld, req.device, req.mu, key, makeLabels
            )
            if count == 0:
                names = ", ".join(repr(segmentName(segmentationNode, s)) for s in ids)
                raise NanoDRRError(
                    f"segmentationNode {nodeLabel(segmentationNode)}: segments {names} are empty inside "
                    f"the volume {nodeLabel(volumeNode)}"
                )
            passes = [_Pass(subject, {1: "drr"}, "Rendering")]
        clock.stage("convert")

        image = self._renderPasses(req, passes, report, progressCallback is not None, RENDER_SPAN)["drr"]
        clock.stage("render")

        report(RENDER_SPAN[1], "Updating the DRR node")
        attrs = self._attributes(req, volumeNode, carmNode, segmentationNode, ids)
        inputs = {"sourceVolume": volumeNode, "cArm": carmNode, "segmentation": segmentationNode}
        name = name or f"{volumeNode.GetName()} DRR"
        node = self._writeOutput(req, image, outputNode, name, attrs, inputs, None, autoWindowLevel)
        self.lastTimings = clock.stage("output")
        return node

    def renderSegments(
        self,
        volumeNode,
        carmNode,
        geometry: CArmGeometry,
        segmentationNode,
        segmentIds=None,
        nSamples: int = 500,
        device=None,
        *,
        muBone: float | None = None,
        muWater: float | None = None,
        displayMode: str = "attenuation",
        outputNodes: dict | None = None,
        folderName: str | None = None,
        autoWindowLevel: bool = True,
        backend: str = "auto",
        method: str = "raymarch",
        progressCallback=None,
    ) -> dict:
        """One DRR per segment: the CT restricted to that segment (overlapping segments included).

        Args:
            segmentIds: segments to render; default the visible ones (all without a display node),
                skipping those with no voxel inside the CT. Explicitly requested empty segments are an
                error.
            outputNodes: ``{segmentId: volume node}`` to overwrite in place; others are created as
                "<volume> DRR <segment name>" in a subject hierarchy folder (``folderName``, default
                "<volume> DRR segments") with a black → segment-colour colour table.
            method: as in :meth:`render` (per-segment renders carry a labelmap; both methods have a fused
                CPU kernel for it).
            Other arguments as in :meth:`render`.

        Returns:
            ``{segmentId: vtkMRMLScalarVolumeNode}`` in segment order.
        """
        clock = _StageClock()
        req = self._validate(
            volumeNode, carmNode, geometry, nSamples, device, muBone, muWater, displayMode, backend, method
        )
        if segmentationNode is None:
            raise NanoDRRError("segmentationNode: no segmentation selected")
        checkSegmentationNode(segmentationNode, req.scene)
        segmentIds = _checkSegmentIds(segmentIds)
        ids = selectSegmentIds(segmentationNode, segmentIds)
        outputNodes = checkOutputNodes(outputNodes, segmentationNode, req.scene, forbidden=(volumeNode,))
        if folderName is not None and not isinstance(folderName, str):
            raise NanoDRRError(f"folderName: expected a string, got {folderName!r}")
        _checkBool(autoWindowLevel, "autoWindowLevel")
        _checkCallable(progressCallback, "progressCallback")
        self._checkBudget(req, volumeNode, len(ids) + 1)  # one pass of them all (overlaps: more, smaller)
        checkBinaryLabelmaps(segmentationNode, ids)
        clock.stage("validate")

        shape = volumeShape(volumeNode)

        def makeLabels():
            layers = layersOnGrid(segmentationNode, ids, volumeNode, req.voxelToWorld, shape)
            out = []
            for labels, groupIds in channelGroups(layers):
                counts = voxelCounts(labels, len(groupIds))
                out.append((labels, len(groupIds), (groupIds, counts[1:].tolist())))
            return out

        report = _reporter(progressCallback)
        report(0.0, "Resampling segments onto the volume")
        key = ("segments", segmentationKey(segmentationNode, ids))
        groups = self._cache.labelledSubjects(
            volumeNode, req.voxelToWorld, req.device, req.mu, key, makeLabels
        )
        counts = {sid: c for _, (gids, cs) in groups for sid, c in zip(gids, cs, strict=True)}
        empty = [sid for sid in ids if counts.get(sid, 0) == 0]
        if empty and (segmentIds is not None or len(empty) == len(ids)):
            names = ", ".join(repr(segmentName(segmentationNode, s)) for s in empty)
            raise NanoDRRError(
                f"segmentationNode {nodeLabel(segmentationNode)}: segment(s) {names} are empty inside the "
                f"volume {nodeLabel(volumeNode)}"
            )
        passes = [
            _Pass(subject, dict(enumerate(gids, start=1)), f"Rendering {len(gids)} segment(s), pass {n + 1} of "
                  f"{len(groups)}", n)
            for n, (subject, (gids, cs)) in enumerate(groups)
            if any(cs)
        ]  # fmt: skip
        clock.stage("convert")

        images = self._renderPasses(
            req, passes, report, progressCallback is not None, SEGMENTS_SPAN, len(groups)
        )
        clock.stage("render")

        report(SEGMENTS_SPAN[1], "Updating the DRR nodes")
        inputs = {"sourceVolume": volumeNode, "cArm": carmNode, "segmentation": segmentationNode}
        result: dict[str, object] = {}
        created = []
        for sid in ids:
            if sid not in images or counts.get(sid, 0) == 0:
                continue
            name = segmentName(segmentationNode, sid)
            color = segmentColor(segmentationNode, sid)
            node = outputNodes.get(sid)
            existingColor = node.GetDisplayNode().GetColorNodeID() if node and node.GetDisplayNode() else None
            colorNode = segmentColorNode(req.scene, name, color, existingColor)
            attrs = self._attributes(req, volumeNode, carmNode, segmentationNode, [sid])
            attrs.update(segmentID=sid, segmentName=name, segmentColor=" ".join(f"{c:.6g}" for c in color))
            newNode = self._writeOutput(
                req, images[sid], node, f"{volumeNode.GetName()} DRR {name}", attrs, inputs,
                colorNode.GetID(), autoWindowLevel,
            )  # fmt: skip
            if node is None:
                created.append(newNode)
            result[sid] = newNode
        _putInFolder(req.scene, created, folderName or f"{volumeNode.GetName()} DRR segments")
        self.lastTimings = clock.stage("output")
        return result

    # --- the pipeline both share: passes → images → nodes ---------------------------------------

    def _renderPasses(
        self, req: _Request, passes: list, report, withProgress: bool, span, of: int | None = None
    ):
        """``{output key: [H, W] image}`` of the engine passes, every image checked before any is written.

        Pass ``p.index`` of ``of`` (default: as many as given; empty ones are dropped before) takes its
        share of the progress ``span`` (start, end).
        """
        start, end = span
        total = of or len(passes)
        self.lastRenderPasses = 0
        images: dict[str, np.ndarray] = {}
        for p in passes:
            n = p.index
            report(start + (end - start) * n / total, p.message)
            progress = None
            if withProgress:

                def progress(f, n=n, message=p.message):
                    report(start + (end - start) * (n + f) / total, message)

            out = self._renderTensor(p.subject, req, progress)
            for channel, key in p.outputs.items():
                images[key] = out[channel]
        for image in images.values():
            checkFiniteImage(image)
        return images

    def _writeOutput(self, req: _Request, image, node, name, attrs, inputs, colorID, autoWindowLevel):
        """One DRR into ``node`` (or a new node ``name``) on the detector plane, in the display mode."""
        image, defaultColor = self._display(image, req.displayMode)
        return writeDRR(
            req.scene, image, detectorIJKToRAS(req.pose, req.geometry), node, name, attrs, inputs,
            colorID or defaultColor, autoWindowLevel,
        )  # fmt: skip


#: Progress spans of the engine passes (``render``, ``renderSegments``); the nodes are written after the end.
RENDER_SPAN = (0.1, 0.95)
SEGMENTS_SPAN = (0.1, 0.9)  # more nodes (and colour tables) to write


@dataclass
class _Pass:
    """One engine render of ``subject``: channel ``c`` of it is output ``outputs[c]``."""

    subject: object
    outputs: dict
    message: str
    index: int = 0


class _StageClock:
    """Seconds per stage of a render call (``lastTimings``: validate, convert, render, output, total)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def stage(self, name: str) -> dict[str, float]:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self.timings["total"] = now - self._start
        self._last = now
        return dict(self.timings)


def _reporter(progressCallback):
    return progressCallback or (lambda fraction, message="": None)


def _checkSegmentIds(segmentIds):
    """None, one segment ID string, or an iterable of them (not a number, not ``[None]``); as a list."""
    if segmentIds is None or isinstance(segmentIds, str):
        return segmentIds
    if isinstance(segmentIds, (bytes, Mapping)) or not isinstance(segmentIds, Iterable):
        raise NanoDRRError(
            f"segmentIds: expected a segment ID or a list of them, got a {type(segmentIds).__name__} "
            f"({segmentIds!r})"
        )
    ids = list(segmentIds)
    for sid in ids:
        if not isinstance(sid, str):
            raise NanoDRRError(f"segmentIds: segment IDs are strings, got {sid!r} in {ids!r}")
    return ids


def _checkBool(value, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise NanoDRRError(f"{name}: expected True or False, got {value!r}")


def _checkCallable(value, name: str) -> None:
    if value is not None and not callable(value):
        raise NanoDRRError(f"{name}: must be callable or None, got {type(value).__name__}")


def _putInFolder(scene, nodes: list, folderName: str) -> None:
    """Put new nodes in a subject hierarchy folder (skipped where no SH node can be had)."""
    if not nodes:
        return
    try:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    except Exception:  # pragma: no cover - SH is part of slicer-core and Slicer
        return
    if sh is None:
        return
    root = sh.GetSceneItemID()
    folder = sh.GetItemChildWithName(root, folderName)
    if not folder:
        folder = sh.CreateFolderItem(root, folderName)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, folder)
        else:
            sh.CreateItem(folder, node)


__all__ = ["NanoDRRLogic", "resolveDevice"]
