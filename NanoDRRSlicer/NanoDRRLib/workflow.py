"""``NanoDRRWorkflow``: one NanoDRR session (inputs, C-arm, detector, rendering, live) and its actions.

The Slicer widget and the web app both bind their controls to this object and hold no workflow logic of
their own. It composes the headless pieces (:class:`~.logic.NanoDRRLogic`, :class:`~.live.LiveRenderController`,
:mod:`.views`) and knows nothing of Qt or trame: the host passes

- ``schedule(callback, delaySeconds)``, which runs ``callback`` later on the host's event loop (Qt:
  ``qt.QTimer.singleShot(int(1000 * delay), callback)``; asyncio: ``loop.call_later(delay, callback)``).
  Without it live changes render at once and the full-resolution re-render after a preview is left to
  :meth:`NanoDRRWorkflow.finalizeLive`.
- ``onChange(what)`` listeners, told which part of the state changed: one of :data:`CHANGES`.

Actions validate everything first and raise :class:`NanoDRRError` naming the bad value before anything
changes; the error is also kept in ``lastError`` and shown in ``status``. The C-arm node is the source of
truth for the pose: moving it elsewhere (its 3D handles) updates ``pose`` through an observer.

Render and cancel: :meth:`render` reports ``(fraction, message)`` to its ``progress`` callback, and
:meth:`cancel` (from a progress callback that processes GUI events, or from another thread) makes the next
report raise :class:`RenderCancelled`, which the logic lets through before it writes any node; the render
then returns None. A cancel during the plain DRR leaves the scene unchanged; one during the per-segment
DRRs leaves the new DRR and the previous segment DRRs.

Threads: MRML is not thread-safe. A host that runs :meth:`render` off its event loop (the web app, so that
Cancel and progress reach the page) must keep its loop away from the scene except while the logic computes:
:func:`renderStage` tells, from each progress message, whether the render is in the engine ("compute",
no MRML access until the next report) or reading/writing nodes ("scene").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import slicer

from . import views
from .carm import checkLinearTransformNode
from .conversion import checkVolumeNode, nodeLabel
from .errors import NanoDRRError
from .geometry import DETECTOR_PRESETS, CArmGeometry, checkNumber
from .live import LiveRenderController
from .logic import METHODS, NanoDRRLogic, resolveDevice
from .output import DISPLAY_MODES, checkOutputNode
from .segments import checkSegmentationNode

#: What ``onChange`` listeners are told changed.
CHANGES = (
    "inputs", "carm", "pose", "detector", "settings", "drr", "segments", "live", "busy", "status", "xray",
    "overlay",
)  # fmt: skip
#: The node reference from a per-segment DRR to the DRR it was rendered with.
SEGMENT_DRR_REFERENCE = "NanoDRR.SegmentDRROf"
#: How the DRR is shown over the X-ray (NanoDRRLib.overlay).
OVERLAY_MODES = ("blend", "edges", "checkerboard")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: The pose a new or reset C-arm gets: frontal (AP), DICOM angles 0/0, 850 mm from the isocenter.
DEFAULT_SOD = 850.0
#: Live: full-resolution re-render once the C-arm has been still this long after a preview (seconds).
LIVE_FINALIZE_DELAY = 0.4
#: Live previews keep at most this many detector pixels (the full detector when it is smaller).
LIVE_PREVIEW_PIXELS = 256 * 256


def segmentDRRsOf(drrNode) -> dict:
    """``{segmentId: node}`` of the per-segment DRRs rendered with ``drrNode`` (empty for None)."""
    if drrNode is None or drrNode.GetScene() is None:
        return {}
    scene, cls = drrNode.GetScene(), "vtkMRMLScalarVolumeNode"
    nodes = (scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls)))
    return {
        node.GetAttribute("NanoDRR.SegmentID"): node
        for node in nodes
        if node.GetNodeReferenceID(SEGMENT_DRR_REFERENCE) == drrNode.GetID()
    }


class RenderCancelled(Exception):
    """Raised from the progress callback after :meth:`NanoDRRWorkflow.cancel`; unwinds the render."""


@dataclass(frozen=True)
class Pose:
    """DICOM positioner angles (degrees: + LAO / − RAO, + CRAN / − CAUD) and the source-to-isocenter distance."""

    primary: float = 0.0
    secondary: float = 0.0
    sod: float = DEFAULT_SOD


@dataclass(frozen=True)
class RenderSettings:
    """How DRRs are rendered (the module's *Rendering* section).

    method: "joseph" (one sample per voxel plane; fastest on the CPU) or "raymarch" (``nSamples`` per ray).
    boneContrast: scale of μ_bone (1 = physical). displayMode: "attenuation" (∫μ ds) or "transmission".
    """

    device: str = "auto"
    method: str = "joseph"
    nSamples: int = 500
    boneContrast: float = 1.0
    displayMode: str = "attenuation"

    def checked(self) -> RenderSettings:
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise NanoDRRError(f"device: expected one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise NanoDRRError(f"method: expected one of {METHODS}, got {self.method!r}")
        if not isinstance(self.displayMode, str) or self.displayMode not in DISPLAY_MODES:
            raise NanoDRRError(f"displayMode: expected one of {DISPLAY_MODES}, got {self.displayMode!r}")
        nSamples = checkNumber(self.nSamples, "nSamples", positive=True, integer=True, unit="samples per ray")
        boneContrast = checkNumber(self.boneContrast, "boneContrast", positive=True)
        return replace(self, nSamples=nSamples, boneContrast=boneContrast)


#: Progress messages of ``NanoDRRLogic.render``/``renderSegments`` and of a registration's steps that start
#: or continue an engine pass (no MRML access).
COMPUTE_MESSAGE_PREFIXES = ("Rendering", "Registering")


def renderStage(message: str) -> str:
    """ "compute" while the logic runs the engine (after a "Rendering…"/"Registering…" report), else "scene"."""
    return "compute" if isinstance(message, str) and message.startswith(COMPUTE_MESSAGE_PREFIXES) else "scene"


def checkPose(primary, secondary, sod) -> Pose:
    """A :class:`Pose` from user values, each checked by name (DICOM ranges, sod > 0)."""
    return Pose(
        checkNumber(primary, "primary", minimum=-180.0, maximum=180.0, unit="degrees (DICOM)"),
        checkNumber(secondary, "secondary", minimum=-90.0, maximum=90.0, unit="degrees (DICOM)"),
        checkNumber(sod, "sod", positive=True, unit="mm"),
    )


def matchingPreset(geometry: CArmGeometry) -> str:
    """Name of the first detector preset equal to ``geometry`` (size, spacing, sdd), "" if none."""
    for name, p in DETECTOR_PRESETS.items():
        if (
            int(p["height"]) == geometry.height
            and int(p["width"]) == geometry.width
            and all(
                math.isclose(float(p[k]), float(getattr(geometry, k)), rel_tol=1e-6)
                for k in ("delx", "dely", "sdd")
            )
        ):
            return name
    return ""


def previewScaleFor(geometry: CArmGeometry, maxPixels: int = LIVE_PREVIEW_PIXELS) -> float:
    """Pixel scale of live previews: 1 for detectors of at most ``maxPixels`` pixels, else fewer pixels."""
    pixels = int(geometry.height) * int(geometry.width)
    return 1.0 if pixels <= maxPixels else math.sqrt(maxPixels / pixels)


class NanoDRRWorkflow:
    """State and actions of one NanoDRR session on one MRML scene.

    State (read it; change it through the actions): ``volumeNode``, ``segmentationNode``, ``segmentIds``
    (the selection; empty = the visible segments), ``carmNode``, ``geometryModel``, ``pose`` (:class:`Pose`),
    ``geometry`` (:class:`CArmGeometry`), ``settings`` (:class:`RenderSettings`), ``renderSegments``,
    ``showGeometry``, ``outputNode`` (the DRR), ``segmentOutputs`` ({segmentId: DRR node}), ``live``,
    ``busy``, ``progress`` (0…1), ``status`` (a line for the user), ``lastError``, ``lastResult``
    (registration), ``renderCount`` (DRR updates, live ones included), ``xrayNode`` (the X-ray to register),
    ``overlay`` ({"show", "mode", "blend"}) and ``overlayNode`` (the DRR over the X-ray).
    """

    def __init__(
        self,
        scene,
        logic: NanoDRRLogic | None = None,
        schedule: Callable[[Callable[[], object], float], object] | None = None,
        finalizeDelay: float = LIVE_FINALIZE_DELAY,
        previewPixels: int = LIVE_PREVIEW_PIXELS,
        removeReplacedXrays: bool = True,
    ) -> None:
        if scene is None or not hasattr(scene, "IsA") or not scene.IsA("vtkMRMLScene"):
            raise NanoDRRError(f"scene: expected a vtkMRMLScene, got {type(scene).__name__}")
        if schedule is not None and not callable(schedule):
            raise NanoDRRError("schedule: must be callable (schedule(callback, delaySeconds)) or None")
        self.scene = scene
        self.logic = logic if logic is not None else NanoDRRLogic()
        self._schedule = schedule
        self.finalizeDelay = checkNumber(finalizeDelay, "finalizeDelay", minimum=0.0, unit="seconds")
        self.previewPixels = checkNumber(previewPixels, "previewPixels", positive=True, integer=True)
        if not isinstance(removeReplacedXrays, bool):
            raise NanoDRRError(f"removeReplacedXrays: expected True or False, got {removeReplacedXrays!r}")
        self.removeReplacedXrays = removeReplacedXrays
        self._loadedXray = None  # the X-ray node this workflow made (loadXray / xrayFromDrr)
        self.volumeNode = None
        self.segmentationNode = None
        self.segmentIds: list[str] = []
        self.carmNode = None
        self.geometryModel = None
        self.pose = Pose()
        self.geometry = CArmGeometry()
        self.settings = RenderSettings()
        self.renderSegments = False
        self.showGeometry = True
        self.outputNode = None
        self.segmentOutputs: dict[str, object] = {}
        self.busy = False
        self.progress = 0.0
        self.status = ""
        self.lastError: NanoDRRError | None = None
        self.lastResult: dict | None = None
        self.renderCount = 0
        self.xrayNode = None
        self.overlay = {"show": False, "mode": "blend", "blend": 0.5}
        self.overlayNode = None
        self._live: LiveRenderController | None = None
        self._liveWanted = False
        self._cancel = threading.Event()
        self._listeners: list[Callable[[str], object]] = []
        self._carmObservation = None
        self._applyingPose = False
        self._finalizeToken = 0

    # --- listeners ---------------------------------------------------------------------------

    def addListener(self, listener: Callable[[str], object]) -> None:
        """``listener(what)`` after each change (``what`` in :data:`CHANGES`)."""
        if not callable(listener):
            raise NanoDRRError("listener: must be callable")
        self._listeners.append(listener)

    def removeListener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self, *what: str) -> None:
        for w in what:
            for listener in list(self._listeners):
                listener(w)

    def _setStatus(self, text: str, error: NanoDRRError | None = None) -> None:
        self.status = text
        self.lastError = error
        self._changed("status")

    def _fail(self, error: Exception, what: str) -> NanoDRRError:
        """Record ``error`` (a NanoDRRError as is, others wrapped naming ``what``) and return it."""
        if not isinstance(error, NanoDRRError):
            wrapped = NanoDRRError(f"{what} failed ({type(error).__name__}): {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._setStatus(f"{what}: {error}", error)
        return error

    # --- inputs ------------------------------------------------------------------------------

    def setInputs(self, volumeNode, segmentationNode=None) -> None:
        """Select the CT (and optionally its segmentation). A C-arm already placed keeps its angles about
        the new CT's centre; segment DRRs of the previous inputs are left in the scene. ``None``: no CT
        (live mode stops)."""
        if volumeNode is None:
            if segmentationNode is not None:
                raise NanoDRRError("segmentationNode: select a CT volume with it")
            self._liveWanted = False
            self._stopLive()
            self.volumeNode = self.segmentationNode = None
            self.segmentIds, self.segmentOutputs, self.renderSegments = [], {}, False
            self._changed("inputs", "segments", "live")
            return
        checkVolumeNode(volumeNode)
        if volumeNode.GetScene() is not self.scene:
            raise NanoDRRError(f"volumeNode {nodeLabel(volumeNode)}: is not in the workflow's scene")
        if segmentationNode is not None:
            checkSegmentationNode(segmentationNode, self.scene)
        wasLive = self._liveWanted
        self._stopLive()
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.segmentIds = []
        self.segmentOutputs = {}
        self._changed("inputs", "segments")
        if self.carmNode is not None:
            self._applyPose(self.pose)
            views.enableCArmInteraction(self.carmNode, volumeNode)
        if wasLive:
            self.setLive(True)

    def segments(self) -> list[tuple[str, str]]:
        """``[(segmentId, name)]`` of the segmentation, in order (empty without one)."""
        if self.segmentationNode is None:
            return []
        s = self.segmentationNode.GetSegmentation()
        return [(s.GetNthSegmentID(i), s.GetNthSegment(i).GetName()) for i in range(s.GetNumberOfSegments())]

    def setSegmentIds(self, segmentIds) -> None:
        """Segments for the per-segment DRRs (empty: the visible ones); unknown IDs are refused."""
        if isinstance(segmentIds, str) or not hasattr(segmentIds, "__iter__"):
            raise NanoDRRError(f"segmentIds: expected a list of segment IDs, got {segmentIds!r}")
        ids = list(segmentIds)
        known = {sid for sid, _ in self.segments()}
        for sid in ids:
            if not isinstance(sid, str) or sid not in known:
                raise NanoDRRError(f"segmentIds: no segment {sid!r} in the selected segmentation")
        self.segmentIds = list(dict.fromkeys(ids))
        self._changed("segments")

    def setRenderSegments(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise NanoDRRError(f"renderSegments: expected True or False, got {enabled!r}")
        if enabled and self.segmentationNode is None:
            raise NanoDRRError("renderSegments: select a segmentation first")
        self.renderSegments = enabled
        self._changed("segments")

    # --- C-arm -------------------------------------------------------------------------------

    def createCArm(self):
        """Place a C-arm at the CT's centre with the current pose (a new node the first time, the same node
        afterwards), with its 3D handles and source/beam/detector model; returns it."""
        self._requireVolume("create the C-arm")
        self.geometry.validate(self.pose.sod)
        if self.carmNode is None or self.carmNode.GetScene() is not self.scene:
            carm = self.logic.createCArmTransform(self.volumeNode, sod=self.pose.sod)
            self._observeCArm(carm)
            self.carmNode = carm
            self._changed("carm")
        self._applyPose(self.pose)
        views.enableCArmInteraction(self.carmNode, self.volumeNode)
        self._updateGeometryModel()
        return self.carmNode

    def resetCArm(self):
        """Back to the default pose (AP, 850 mm); creates the C-arm if there is none."""
        self.pose = Pose()
        self._changed("pose")
        return self.createCArm()

    def setCArmNode(self, carmNode) -> None:
        """Use an existing linear transform as the C-arm (its pose is read from it); None: no C-arm (live
        mode stops; the node stays in the scene)."""
        if carmNode is None:
            self._liveWanted = False
            self._stopLive()
            self._observeCArm(None)
            self.carmNode = self.geometryModel = None
            self._changed("carm", "live")
            return
        checkLinearTransformNode(carmNode)
        if carmNode.GetScene() is not self.scene:
            raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: is not in the workflow's scene")
        self._stopLive()
        self._observeCArm(carmNode)
        self.carmNode = carmNode
        self._changed("carm")
        self.syncPoseFromCArm()
        if self.volumeNode is not None:
            views.enableCArmInteraction(carmNode, self.volumeNode)
        self._updateGeometryModel()

    def setPose(self, primary=None, secondary=None, sod=None) -> None:
        """Move the C-arm to DICOM angles / SOD (omitted values are kept); live mode re-renders."""
        p = self.pose
        pose = checkPose(
            p.primary if primary is None else primary,
            p.secondary if secondary is None else secondary,
            p.sod if sod is None else sod,
        )
        self.geometry.validate(pose.sod)
        if self.carmNode is not None:
            self._requireVolume("move the C-arm")
            self._applyPose(pose)
        self.pose = pose
        self._changed("pose")

    def _applyPose(self, pose: Pose) -> None:
        self._applyingPose = True
        try:
            self.logic.setCArmAngles(self.carmNode, self.volumeNode, pose.primary, pose.secondary, pose.sod)
        finally:
            self._applyingPose = False

    def syncPoseFromCArm(self) -> None:
        """Read the pose back from the C-arm node (after it moved through its handles or a script)."""
        if self.carmNode is None or self.volumeNode is None:
            return
        try:
            primary, secondary, sod = self.logic.getCArmAngles(self.carmNode, self.volumeNode)
        except NanoDRRError as e:  # e.g. a transform that does not look at the volume: keep the pose
            self._setStatus(f"C-arm: {e}", e)
            return
        self.pose = Pose(float(primary), float(secondary), float(sod))
        self._changed("pose")

    def _observeCArm(self, carmNode) -> None:
        if self._carmObservation is not None:
            node, tag = self._carmObservation
            node.RemoveObserver(tag)
            self._carmObservation = None
        if carmNode is not None:
            tag = carmNode.AddObserver(
                slicer.vtkMRMLTransformableNode.TransformModifiedEvent, self._onCArmModified
            )
            self._carmObservation = (carmNode, tag)

    def _onCArmModified(self, caller=None, event=None) -> None:
        if not self._applyingPose:
            self.syncPoseFromCArm()

    def setShowGeometry(self, visible: bool) -> None:
        """Show or hide the source/beam/detector model and the C-arm's handles in 3D."""
        if not isinstance(visible, bool):
            raise NanoDRRError(f"showGeometry: expected True or False, got {visible!r}")
        self.showGeometry = visible
        self._updateGeometryModel()
        self._changed("carm")

    def _updateGeometryModel(self) -> None:
        if self.carmNode is None:
            return
        if self.showGeometry:
            self.geometryModel = self.logic.updateGeometryModel(
                self.carmNode, self.geometry, self.geometryModel
            )
        if self.geometryModel is not None:
            self.geometryModel.SetDisplayVisibility(self.showGeometry)
        views.setCArmHandlesVisible(self.carmNode, self.showGeometry)

    # --- detector and rendering options -------------------------------------------------------

    def setDetector(self, **values) -> None:
        """Change detector fields (sdd, height, width, delx, dely, x0, y0); checked with the current SOD."""
        names = {f.name for f in fields(CArmGeometry)}
        for key in values:
            if key not in names:
                raise NanoDRRError(f"detector: unknown field {key!r}; expected one of {sorted(names)}")
        geometry = replace(self.geometry, **values).checked(self.pose.sod)
        self.geometry = geometry
        self._updateGeometryModel()
        if self._live is not None:
            self._live.geometry = geometry
            self._live.previewScale = previewScaleFor(geometry, self.previewPixels)
            self._live.requestRender()
        self._changed("detector")

    def applyPreset(self, name: str) -> None:
        """A detector preset (:data:`~.geometry.DETECTOR_PRESETS`): size, spacing and sdd."""
        if not isinstance(name, str) or name not in DETECTOR_PRESETS:
            raise NanoDRRError(
                f"preset: unknown detector preset {name!r}; expected one of {list(DETECTOR_PRESETS)}"
            )
        p = DETECTOR_PRESETS[name]
        self.setDetector(
            height=int(p["height"]), width=int(p["width"]), delx=float(p["delx"]), dely=float(p["dely"]),
            sdd=float(p["sdd"]),
        )  # fmt: skip

    @property
    def detectorPreset(self) -> str:
        return matchingPreset(self.geometry)

    def setSettings(self, **values) -> None:
        """Change rendering settings (:class:`RenderSettings` fields), all checked before any is applied."""
        names = {f.name for f in fields(RenderSettings)}
        for key in values:
            if key not in names:
                raise NanoDRRError(f"settings: unknown field {key!r}; expected one of {sorted(names)}")
        settings = replace(self.settings, **values).checked()
        if settings.device != "auto":
            resolveDevice(settings.device)  # a device that is not there is refused now, not at render time
        self.settings = settings
        if self._live is not None:
            self._live.nSamples = settings.nSamples
            self._live.device = self._device()
            self._live.renderOptions = self._options()
            self._live.requestRender()
        self._changed("settings")

    def _device(self):
        return None if self.settings.device == "auto" else self.settings.device

    def method(self) -> str:
        """The logic's ``method``: Joseph's fast kernels are CPU ones, so a GPU renders its ray march."""
        if self.settings.method == "joseph" and resolveDevice(self._device()).type != "cpu":
            return "raymarch"
        return self.settings.method

    def muBone(self):
        """μ_bone (1/mm) for the bone contrast; None keeps the engine's physical value."""
        if abs(self.settings.boneContrast - 1.0) < 1e-9:
            return None
        from nanodrr_engine.data.preprocess import MU_BONE

        return MU_BONE * self.settings.boneContrast

    def _options(self) -> dict:
        return {"muBone": self.muBone(), "displayMode": self.settings.displayMode, "method": self.method()}

    # --- rendering ---------------------------------------------------------------------------

    def render(self, progress: Callable[[float, str], object] | None = None):
        """Render the DRR (and the per-segment DRRs when ``renderSegments``) at full resolution.

        Creates the C-arm if there is none. Returns ``(drr, {segmentId: node})``, or None when cancelled
        (the scene is then unchanged). Segment DRRs of a previous render are overwritten in place and those
        of segments no longer rendered removed.
        """
        if self.busy:
            raise NanoDRRError("render: a render is already running")
        self._requireVolume("render")
        if self.renderSegments and self.segmentationNode is None:
            raise NanoDRRError("renderSegments: select a segmentation first")
        if self.carmNode is None:
            self.createCArm()
        wasLive = self._liveWanted
        self._stopLive()
        self._cancel.clear()
        self.busy = True
        self.progress = 0.0
        self._changed("busy")
        withSegments = self.renderSegments
        share = 0.5 if withSegments else 1.0

        def report(offset):
            def callback(fraction, message=""):
                if self._cancel.is_set():
                    raise RenderCancelled()
                self.progress = min(max(offset + share * float(fraction), 0.0), 1.0)
                self.status = message
                if progress is not None:
                    progress(self.progress, message)
                if self._cancel.is_set():
                    raise RenderCancelled()

            return callback

        options = {"nSamples": self.settings.nSamples, "device": self._device(), **self._options()}
        try:
            try:
                drr = self.logic.render(
                    self.volumeNode, self.carmNode, self.geometry, outputNode=self._liveOutput(),
                    progressCallback=report(0.0), **options,
                )  # fmt: skip
                self._setOutput(drr)
                parts = {}
                if withSegments:
                    parts = self._renderSegments(report(share), options)
            except RenderCancelled:
                self._setStatus("Cancelled.")
                return None
            except Exception as e:
                raise self._fail(e, "Render") from None
        finally:
            self.busy = False
            self.progress = 0.0
            self._changed("busy")
            if wasLive:
                self._startLive(quiet=True)
        self._setStatus("Done.")
        return drr, parts

    def _renderSegments(self, progressCallback, options) -> dict:
        ids = list(self.segmentIds) or None
        previous = segmentDRRsOf(self.outputNode)
        previous.update({sid: n for sid, n in self.segmentOutputs.items() if n.GetScene() is self.scene})
        parts = self.logic.renderSegments(
            self.volumeNode, self.carmNode, self.geometry, self.segmentationNode, segmentIds=ids,
            outputNodes={sid: n for sid, n in previous.items() if ids is None or sid in ids},
            progressCallback=progressCallback, **options,
        )  # fmt: skip
        for sid, node in parts.items():
            # a node reference, not an ID attribute: MRML renames references when an import renames IDs
            node.SetNodeReferenceID(SEGMENT_DRR_REFERENCE, self.outputNode.GetID())
            node.RemoveAttribute(SEGMENT_DRR_REFERENCE)  # written by older versions
            node.SetAttribute("NanoDRR.SegmentID", sid)
        for sid, node in previous.items():
            if sid not in parts:
                self.scene.RemoveNode(node)
        self.segmentOutputs = dict(parts)
        self._changed("segments")
        return parts

    def cancel(self) -> None:
        """Stop the running render at its next progress report (safe from any thread)."""
        if self.busy:
            self._cancel.set()
            self.status = "Cancelling…"
            self._changed("status")

    def setOutputNode(self, node) -> None:
        """Render into ``node`` (a scalar volume of this scene, not the CT); None: a new node next time."""
        if node is not None:
            checkOutputNode(node, self.scene, forbidden=(self.volumeNode, self.xrayNode))
        if node is self.outputNode:
            return
        self.outputNode = node
        self.segmentOutputs = {}
        if self._live is not None:
            self._startLive(quiet=True)  # the live controller writes into its own output node
        self._changed("drr")

    def _liveOutput(self):
        if self.outputNode is not None and self.outputNode.GetScene() is not self.scene:
            self.outputNode = None  # removed from the scene
        return self.outputNode

    def _setOutput(self, node) -> None:
        self.outputNode = node
        self.renderCount += 1
        self._changed("drr")

    def _requireVolume(self, what: str) -> None:
        if self.volumeNode is None:
            raise NanoDRRError(f"{what}: select a CT volume first")
        if self.volumeNode.GetScene() is not self.scene:
            raise NanoDRRError(f"{what}: the CT volume was removed from the scene; select another")

    # --- live --------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._live is not None and self._live.isActive

    def setLive(self, enabled: bool) -> None:
        """Start (render once, then follow every change of the C-arm, CT or detector) or stop live mode."""
        if not isinstance(enabled, bool):
            raise NanoDRRError(f"live: expected True or False, got {enabled!r}")
        if not enabled:
            self._liveWanted = False
            self._stopLive()
            self._changed("live")
            return
        self._requireVolume("live rendering")
        if self.busy:
            raise NanoDRRError("live rendering: wait for the running render to finish")
        if self.carmNode is None:
            self.createCArm()
        self._liveWanted = True
        self._startLive(quiet=False)

    def _startLive(self, quiet: bool) -> None:
        self._stopLive()
        schedule = None if self._schedule is None else (lambda cb: self._schedule(cb, 0.0))
        live = LiveRenderController(
            self.logic, self.volumeNode, self.carmNode, self.geometry, outputNode=self._liveOutput(),
            nSamples=self.settings.nSamples, device=self._device(),
            previewScale=previewScaleFor(self.geometry, self.previewPixels), schedule=schedule,
            onRendered=self._onLiveRendered, onError=self._onLiveError, **self._options(),
        )  # fmt: skip
        try:
            live.start()
        except Exception as e:
            self._liveWanted = False
            self._changed("live")
            if quiet:
                self._fail(e, "Live rendering")
                return
            raise self._fail(e, "Live rendering") from None
        self._live = live
        self._changed("live")

    def _stopLive(self) -> None:
        self._finalizeToken += 1
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _onLiveRendered(self, node) -> None:
        first = self.outputNode is not node
        self.outputNode = node
        self.renderCount += 1
        if self.lastError is not None:
            self._setStatus("")
        if self.overlay["show"] and self.xrayNode is not None:  # the overlay follows the C-arm while dragged
            try:
                self.updateOverlay()
            except NanoDRRError as e:  # e.g. a detector that no longer fits the X-ray: said, not raised
                self._setStatus(f"Overlay: {e}", e)
        self._changed("drr")
        if first:
            self._changed("live")
        if self._live is not None and self._live.isPreview and self._schedule is not None:
            self._finalizeToken += 1
            token = self._finalizeToken
            self._schedule(lambda: self._finalizeIf(token), self.finalizeDelay)

    def _finalizeIf(self, token: int) -> None:
        if token == self._finalizeToken:
            self.finalizeLive()

    def finalizeLive(self) -> bool:
        """Full resolution after a live preview (scheduled by itself when the host gave ``schedule``)."""
        return self._live is not None and not self.busy and self._live.finalize()

    def _onLiveError(self, error: NanoDRRError) -> None:
        self._setStatus(f"Live rendering: {error}", error)

    # --- registration ------------------------------------------------------------------------

    def loadXray(self, path):
        """Read an X-ray file and select it. A DICOM's tags set the detector and, with the positioner
        angles, move the C-arm there; any other file sets the detector's size to the image's (its spacing
        stays). Everything is read and checked before the session changes."""
        node, geometry, _ = self.logic.loadXray(self.scene, path)
        try:
            dims = node.GetImageData().GetDimensions()
            if geometry is not None:
                values = {"sdd": geometry.sdd, "height": geometry.height, "width": geometry.width,
                          "delx": geometry.delx, "dely": geometry.dely, "x0": 0.0, "y0": 0.0}  # fmt: skip
            else:
                values = {"height": int(dims[1]), "width": int(dims[0])}
            replace(self.geometry, **values).checked(self.pose.sod)
            if geometry is not None and self.volumeNode is not None and self.carmNode is not None:
                try:
                    self.logic.initializeFromXray(node, self.volumeNode, self.carmNode)
                except NanoDRRError:
                    pass  # no positioner angles: the C-arm stays where the user put it
        except Exception:
            self.scene.RemoveNode(node)
            raise
        self._setXray(node)
        self.setDetector(**values)
        if self.carmNode is not None:
            self.syncPoseFromCArm()
        self._setStatus(f"X-ray {node.GetName()}: {values.get('height')}×{values.get('width')} pixels.")
        return node

    def xrayFromDrr(self):
        """Make the current DRR the X-ray to register (a copy: a target of known pose, to try registration)."""
        if self.outputNode is None or self.outputNode.GetImageData() is None:
            raise NanoDRRError("X-ray from DRR: render a DRR first")

        node = self.scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(f"X-ray (DRR #{self.renderCount})")
        )
        node.CopyContent(self.outputNode)  # geometry and a deep copy of the pixels
        for name in self.outputNode.GetAttributeNames() or ():  # NanoDRR.*: line integrals or transmission
            node.SetAttribute(name, self.outputNode.GetAttribute(name))
        node.CreateDefaultDisplayNodes()
        self._setXray(node)
        return node

    def setXrayNode(self, node) -> None:
        """Register against ``node`` (a scalar volume of this scene; None: no X-ray). It is never removed."""
        if node is not None:
            checkVolumeNode(node, "xrayNode")
            if node.GetScene() is not self.scene:
                raise NanoDRRError(f"xrayNode {nodeLabel(node)}: is not in the workflow's scene")
        if node is not self.xrayNode:
            self._setXray(node, loaded=False)

    def _setXray(self, node, loaded: bool = True) -> None:
        """Select ``node``; with ``removeReplacedXrays``, the X-ray this workflow loaded before is removed."""
        old = self.xrayNode
        self.xrayNode = node
        self.lastResult = None
        made = old is not None and old is self._loadedXray
        if made and self.removeReplacedXrays and old is not node and old.GetScene() is self.scene:
            self.scene.RemoveNode(old)
        self._loadedXray = node if loaded else None
        self._changed("xray")
        self.updateOverlay()

    def setOverlay(self, show=None, mode=None, blend=None) -> None:
        """Show the DRR over the X-ray (``mode`` one of :data:`OVERLAY_MODES`, ``blend`` the DRR's weight)."""
        overlay = dict(self.overlay)
        if show is not None:
            if not isinstance(show, bool):
                raise NanoDRRError(f"overlay: show must be True or False, got {show!r}")
            overlay["show"] = show
        if mode is not None:
            if mode not in OVERLAY_MODES:
                raise NanoDRRError(f"overlay: mode must be one of {OVERLAY_MODES}, got {mode!r}")
            overlay["mode"] = mode
        if blend is not None:
            overlay["blend"] = checkNumber(blend, "overlay blend", minimum=0.0, maximum=1.0)
        self.overlay = overlay
        self.updateOverlay()

    def updateOverlay(self):
        """Write the overlay node from the current DRR and X-ray when it is shown; returns it (or None)."""
        drr, xray = self.outputNode, self.xrayNode
        if not (self.overlay["show"] and xray is not None and drr is not None and drr.GetImageData()):
            self._changed("overlay")
            return None
        node = self.overlayNode if self.overlayNode is not None and self.overlayNode.GetScene() else None
        self.overlayNode = self.logic.updateOverlay(
            drr, xray, self.geometry, mode=self.overlay["mode"], blend=self.overlay["blend"], overlayNode=node
        )
        self._changed("overlay")
        return self.overlayNode

    def initializeFromXray(self):
        """Detector and C-arm pose from the selected X-ray's DICOM tags (the C-arm is created if needed)."""
        if self.xrayNode is None:
            raise NanoDRRError("initialize from X-ray: load or choose an X-ray first")
        self._requireVolume("initialize from X-ray")
        carm = self.carmNode if self.carmNode is not None else self.createCArm()
        geometry, _ = self.logic.initializeFromXray(self.xrayNode, self.volumeNode, carm)
        self.syncPoseFromCArm()
        self.setDetector(**{f.name: getattr(geometry, f.name) for f in fields(CArmGeometry)})
        self._setStatus("C-arm and detector set from the X-ray's DICOM tags.")
        return geometry

    def register(self, xrayNode=None, xrayGeometry: CArmGeometry | None = None, progress=None, **options):
        """Move the C-arm so that its DRR matches ``xrayNode`` (default: the selected X-ray, with the
        detector geometry) by :meth:`NanoDRRLogic.registerCArm`; returns its summary, or None if cancelled
        (the C-arm then stays where it was)."""
        xrayNode = xrayNode if xrayNode is not None else self.xrayNode
        xrayGeometry = xrayGeometry if xrayGeometry is not None else self.geometry
        if xrayNode is None:
            raise NanoDRRError("registration: load or choose an X-ray first")
        if self.busy:
            raise NanoDRRError("registration: a render is already running")
        self._requireVolume("registration")
        if self.carmNode is None:
            raise NanoDRRError("registration: create or select the C-arm to start from")
        self._cancel.clear()
        self.busy = True
        self._changed("busy")

        def callback(fraction, message=""):
            if self._cancel.is_set():
                raise RenderCancelled()
            self.progress = float(fraction)
            if progress is not None:
                # the engine's steps ("level ×4: loss …") touch no node; the logic's own reports do
                step = message.startswith("level")
                progress(self.progress, f"Registering… {message}" if step else message)

        try:
            result = self.logic.registerCArm(
                self.volumeNode, self.carmNode, xrayNode, xrayGeometry, progressCallback=callback, **options
            )
        except RenderCancelled:
            self._setStatus("Registration cancelled.")
            return None
        except Exception as e:
            raise self._fail(e, "Registration") from None
        finally:
            self.busy = False
            self.progress = 0.0
            self._changed("busy")
        self.lastResult = result
        self.syncPoseFromCArm()
        self._setStatus("Registered.")
        return result

    def undoRegistration(self) -> None:
        """Put the C-arm back where the last :meth:`register` found it."""
        if self.carmNode is None:
            raise NanoDRRError("undoRegistration: no C-arm")
        self.logic.undoRegistration(self.carmNode)
        self.lastResult = None
        self.syncPoseFromCArm()
        self._setStatus("Registration undone.")

    @property
    def canUndoRegistration(self) -> bool:
        return self.carmNode is not None and bool(
            self.carmNode.GetAttribute("NanoDRR.Registration.previousRtInv")
        )

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop live mode and remove the workflow's observers (the nodes stay in the scene)."""
        self._liveWanted = False
        self._stopLive()
        self._observeCArm(None)
        self._listeners.clear()


__all__ = [
    "CHANGES",
    "DEFAULT_SOD",
    "OVERLAY_MODES",
    "NanoDRRWorkflow",
    "Pose",
    "RenderCancelled",
    "RenderSettings",
    "checkPose",
    "matchingPreset",
    "previewScaleFor",
    "renderStage",
    "segmentDRRsOf",
]
