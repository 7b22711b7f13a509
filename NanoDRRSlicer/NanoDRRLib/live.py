"""Live re-rendering: follow the C-arm, the volume and the segmentation as they change.

Events are coalesced: the first change after a render asks ``schedule(callback)`` to call
:meth:`LiveRenderController.flush` later; further changes before then only mark a render as pending,
and ``flush`` renders the latest state once. In the GUI ``schedule`` is
``lambda cb: qt.QTimer.singleShot(0, cb)``, so a burst of slider events costs one render; tests pass a
list's ``append`` and call the collected callbacks. Without ``schedule`` each change renders at once.

Preview: with ``previewScale < 1`` the renders triggered by changes use ``geometry.scaled(previewScale)``
(same field of view, fewer pixels); :meth:`finalize` re-renders the last state at full resolution.
Call it when the interaction ends (slider release, or an idle timer restarted by ``onRendered``).

Removing an observed node (volume, C-arm, segmentation or the output) or closing the scene stops the
controller.

Failures: nothing raises out of an event callback (a VTK observer would only print a traceback). Any
failure of a live render (bad input, an engine error, an allocation failure, a failing ``onRendered``)
is kept in ``lastError`` as a :class:`NanoDRRError` (wrapping the original as ``__cause__``), passed to
``onError`` and logged, each once until a render succeeds or the error changes; only :meth:`start`
raises. Re-entrancy: changes that arrive while a render runs, including those made by ``onRendered``,
mark one follow-up render of the latest state, run after the current one returns (through ``schedule``,
or in a loop capped at ``MAX_FOLLOW_UPS`` without it), never nested inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import slicer
import vtk

from .errors import NanoDRRError
from .geometry import CArmGeometry, checkNumber

_TRANSFORM_MODIFIED = slicer.vtkMRMLTransformableNode.TransformModifiedEvent
_log = logging.getLogger(__name__)


def _asNanoDRRError(error: Exception, what: str) -> NanoDRRError:
    """``error`` itself if it is a NanoDRRError, else one that names ``what`` failed and how."""
    if isinstance(error, NanoDRRError):
        return error
    wrapped = NanoDRRError(f"{what} failed ({type(error).__name__}): {error}")
    wrapped.__cause__ = error
    return wrapped


class LiveRenderController:
    """Keeps ``outputNode`` showing the DRR of the current C-arm pose.

    Args:
        logic: a :class:`~NanoDRRLib.logic.NanoDRRLogic`.
        volumeNode, carmNode, geometry, segmentationNode, nSamples, device: as for ``logic.render``.
        outputNode: node to keep updated (created by the first render when None; see ``outputNode``).
        previewScale: pixel scale of renders while moving (1 = always full resolution).
        schedule: ``schedule(callback)`` defers a flush; None renders synchronously per event.
        onRendered: ``onRendered(outputNode)`` after each render.
        onError: ``onError(error)`` with each new ``lastError`` (e.g. to show it in a status line).
        **renderOptions: further keyword arguments of ``logic.render`` (muBone, displayMode, method, ...);
            ``method="joseph"`` is the fastest accurate choice for interactive CPU rendering.

    Attributes:
        isActive, renderCount, outputNode, isPreview (the last render was a preview), lastError (the
        failure of the last live render or of its ``onRendered``, None after a clean render).
        ``geometry``, ``nSamples``, ``device`` and ``renderOptions`` may be changed while running;
        call :meth:`requestRender` afterwards.
    """

    #: Synchronous follow-ups one change may cause (an ``onRendered`` that always moves the C-arm).
    MAX_FOLLOW_UPS = 16

    def __init__(
        self,
        logic,
        volumeNode,
        carmNode,
        geometry: CArmGeometry,
        outputNode=None,
        segmentationNode=None,
        nSamples: int = 500,
        device=None,
        previewScale: float = 0.5,
        schedule: Callable[[Callable[[], object]], object] | None = None,
        onRendered: Callable[[object], object] | None = None,
        onError: Callable[[NanoDRRError], object] | None = None,
        **renderOptions,
    ) -> None:
        # the logic's one numeric check: True, "0.5" and float32-underflowing scales are refused
        previewScale = (
            1.0
            if previewScale is None
            else checkNumber(previewScale, "previewScale", positive=True, maximum=1.0)
        )
        if schedule is not None and not callable(schedule):
            raise NanoDRRError("schedule: must be callable (schedule(callback)) or None")
        if onRendered is not None and not callable(onRendered):
            raise NanoDRRError("onRendered: must be callable or None")
        if onError is not None and not callable(onError):
            raise NanoDRRError("onError: must be callable or None")
        self.logic = logic
        self.volumeNode = volumeNode
        self.carmNode = carmNode
        self.geometry = geometry
        self.outputNode = outputNode
        self.segmentationNode = segmentationNode
        self.nSamples = nSamples
        self.device = device
        self.previewScale = previewScale
        self.renderOptions = renderOptions
        self._schedule = schedule
        self._onRendered = onRendered
        self._onError = onError
        self.isActive = False
        self.renderCount = 0
        self.isPreview = False
        self.lastError: NanoDRRError | None = None
        self._reported: tuple | None = None  # the error last logged (logged again only when it changes)
        self._pending = False
        self._scheduled = False
        self._rendering = False
        self._observations: list[tuple[object, int]] = []

        def onNodeRemoved(caller, event, node=None):
            if node is not None and self._watches(node):
                self.stop()

        onNodeRemoved.CallDataType = vtk.VTK_OBJECT
        self._onNodeRemoved = onNodeRemoved  # the observer holds a reference; keep ours too

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Render once at full resolution (raising NanoDRRError on bad input), then follow changes."""
        if self.isActive:
            return
        self._render(preview=False, raiseErrors=True)
        self.isActive = True
        self._observe(self.carmNode, (_TRANSFORM_MODIFIED,))
        self._observe(
            self.volumeNode,
            (
                vtk.vtkCommand.ModifiedEvent,
                slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                _TRANSFORM_MODIFIED,
            ),
        )
        if self.segmentationNode is not None:
            seg = slicer.vtkSegmentation
            self._observe(
                self.segmentationNode,
                (
                    vtk.vtkCommand.ModifiedEvent, _TRANSFORM_MODIFIED, seg.SegmentModified, seg.SegmentAdded,
                    seg.SegmentRemoved, seg.RepresentationModified,
                    slicer.vtkMRMLDisplayableNode.DisplayModifiedEvent,
                ),
            )  # fmt: skip
        scene = self.volumeNode.GetScene()
        self._observations.append(
            (scene, scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._onNodeRemoved))
        )
        self._observations.append(
            (scene, scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose))
        )

    def stop(self) -> None:
        """Remove all observers; pending renders are dropped. Safe to call repeatedly."""
        for obj, tag in self._observations:
            obj.RemoveObserver(tag)
        self._observations.clear()
        self.isActive = False
        self._pending = False

    # --- rendering -----------------------------------------------------------------------------

    def requestRender(self) -> None:
        """Ask for a render of the current state (coalesced with other requests until the flush)."""
        if not self.isActive:
            return
        self._pending = True
        if self._rendering or self._scheduled:
            return  # the running render's follow-up, or the scheduled flush, will show this state
        if self._schedule is None:
            self.flush()
        else:
            self._scheduled = True
            self._schedule(self.flush)

    def flush(self) -> bool:
        """Render the latest state if a render is pending (a preview when ``previewScale < 1``)."""
        self._scheduled = False
        if self._rendering or not self.isActive or not self._pending:
            return False
        ok = False
        for _ in range(1 + self.MAX_FOLLOW_UPS):
            self._pending = False
            ok = self._render(preview=self.previewScale < 1.0)
            if not (self._pending and self.isActive) or self._schedule is not None:
                break
        else:
            self._pending = False
            self._fail(
                NanoDRRError(
                    f"live render: the inputs kept changing during {self.MAX_FOLLOW_UPS} follow-up renders "
                    "(does onRendered modify the C-arm, volume or segmentation every time?); stopped"
                )
            )
        self._followUp()
        return ok

    def finalize(self) -> bool:
        """Re-render at full resolution if the last render was a preview or failed (or one is pending)."""
        if self._rendering or not self.isActive or not (self.isPreview or self._pending or self.lastError):
            return False
        self._pending = False
        ok = self._render(preview=False)
        self._followUp()
        return ok

    def _followUp(self) -> None:
        """Changes made during the last render: one more render of the latest state, after it."""
        if self._pending and self.isActive and not self._scheduled:
            self._pending = False
            self.requestRender()

    def _render(self, preview: bool, raiseErrors: bool = False) -> bool:
        """One render; never raises unless ``raiseErrors``, and never runs inside another one."""
        if self._rendering:
            self._pending = True
            return False
        self._rendering = True
        try:
            try:
                geometry = self.geometry.scaled(self.previewScale) if preview else self.geometry
                self.outputNode = self.logic.render(
                    self.volumeNode,
                    self.carmNode,
                    geometry,
                    segmentationNode=self.segmentationNode,
                    outputNode=self.outputNode,
                    nSamples=self.nSamples,
                    device=self.device,
                    **self.renderOptions,
                )
            except Exception as e:  # anything: an observer must not raise (KeyboardInterrupt passes)
                error = _asNanoDRRError(e, "live render")
                if raiseErrors:
                    self.lastError = error
                    if error is e:
                        raise
                    raise error from e
                self._fail(error)
                return False
            self.isPreview = preview
            self.renderCount += 1
            if self._onRendered is not None:
                try:
                    self._onRendered(self.outputNode)
                except Exception as e:
                    self._fail(_asNanoDRRError(e, "live render: onRendered callback"))
                    return True  # the image is up to date
            self.lastError = None
            self._reported = None
            return True
        finally:
            self._rendering = False

    def _fail(self, error: NanoDRRError) -> None:
        """Keep ``error`` in ``lastError``; log it and tell ``onError`` only if it is news."""
        self.lastError = error
        key = (type(error.__cause__ or error), str(error))
        if key == self._reported:
            return
        self._reported = key
        cause = error.__cause__
        if cause is None:
            _log.warning("NanoDRR live render skipped: %s", error)
        else:  # not a validation error: keep the traceback, once
            _log.error(
                "NanoDRR live render skipped: %s", error, exc_info=(type(cause), cause, cause.__traceback__)
            )
        if self._onError is not None:
            try:
                self._onError(error)
            except Exception:
                _log.exception("NanoDRR live render: the onError callback failed")

    # --- observers -----------------------------------------------------------------------------

    def _observe(self, node, events) -> None:
        for event in events:
            self._observations.append((node, node.AddObserver(event, self._onModified)))

    def _onModified(self, caller, event) -> None:
        self.requestRender()

    def _onSceneClose(self, caller, event) -> None:
        self.stop()

    def _watches(self, node) -> bool:
        for mine in (self.volumeNode, self.carmNode, self.segmentationNode, self.outputNode):
            if mine is not None and (node is mine or node.GetID() == mine.GetID()):
                return True
        return False
