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
controller; it never raises from an event callback (invalid states are kept in ``lastError``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import slicer
import vtk

from .errors import NanoDRRError
from .geometry import CArmGeometry

_TRANSFORM_MODIFIED = slicer.vtkMRMLTransformableNode.TransformModifiedEvent


class LiveRenderController:
    """Keeps ``outputNode`` showing the DRR of the current C-arm pose.

    Args:
        logic: a :class:`~NanoDRRLib.logic.NanoDRRLogic`.
        volumeNode, carmNode, geometry, segmentationNode, nSamples, device: as for ``logic.render``.
        outputNode: node to keep updated (created by the first render when None; see ``outputNode``).
        previewScale: pixel scale of renders while moving (1 = always full resolution).
        schedule: ``schedule(callback)`` defers a flush; None renders synchronously per event.
        onRendered: ``onRendered(outputNode)`` after each render.
        **renderOptions: further keyword arguments of ``logic.render`` (muBone, displayMode, method, ...);
            ``method="joseph"`` is the fastest accurate choice for interactive CPU rendering.

    Attributes:
        isActive, renderCount, outputNode, isPreview (the last render was a preview), lastError.
        ``geometry``, ``nSamples``, ``device`` and ``renderOptions`` may be changed while running;
        call :meth:`requestRender` afterwards.
    """

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
        **renderOptions,
    ) -> None:
        if previewScale is None:
            previewScale = 1.0
        try:
            previewScale = float(previewScale)
        except (TypeError, ValueError):
            raise NanoDRRError(f"previewScale: expected a number in (0, 1], got {previewScale!r}") from None
        if not 0.0 < previewScale <= 1.0:
            raise NanoDRRError(f"previewScale: expected a number in (0, 1], got {previewScale!r}")
        if schedule is not None and not callable(schedule):
            raise NanoDRRError("schedule: must be callable (schedule(callback)) or None")
        if onRendered is not None and not callable(onRendered):
            raise NanoDRRError("onRendered: must be callable or None")
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
        self.isActive = False
        self.renderCount = 0
        self.isPreview = False
        self.lastError: NanoDRRError | None = None
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
            return
        self._scheduled = True
        if self._schedule is None:
            self.flush()
        else:
            self._schedule(self.flush)

    def flush(self) -> bool:
        """Render the latest state if a render is pending (a preview when ``previewScale < 1``)."""
        self._scheduled = False
        if not self.isActive or not self._pending:
            return False
        self._pending = False
        return self._render(preview=self.previewScale < 1.0)

    def finalize(self) -> bool:
        """Re-render at full resolution if the last render was a preview (or one is pending)."""
        if not self.isActive or not (self.isPreview or self._pending):
            return False
        self._pending = False
        return self._render(preview=False)

    def _render(self, preview: bool, raiseErrors: bool = False) -> bool:
        self._rendering = True
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
        except NanoDRRError as e:
            self.lastError = e
            if raiseErrors:
                raise
            logging.warning("NanoDRR live render skipped: %s", e)
            return False
        finally:
            self._rendering = False
        self.lastError = None
        self.isPreview = preview
        self.renderCount += 1
        if self._onRendered is not None:
            self._onRendered(self.outputNode)
        if self._pending and self.isActive:  # changes that arrived while rendering
            self._pending = False
            self.requestRender()
        return True

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
