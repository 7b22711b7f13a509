"""trame-slicer views of the session: a 3D view (CT volume rendering, C-arm, DRR on its detector) and a
slice view showing the DRR as seen from the detector, streamed to the page as images."""

from __future__ import annotations

import asyncio

import numpy as np
import slicer
from NanoDRRLib import isocenter
from NanoDRRLib import views as drrViews
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

LAYOUT_ID = "NanoDRR"
THREED_TAG = "ThreeD"
DRR_TAG = "Red"
#: Volume rendering preset of the CT (trame-slicer's presets.xml).
CT_PRESET = "CT-Bone"
STILL_QUALITY = 90
#: Software OpenGL volume-renders the CT in ~450 ms at normal quality; adaptive quality aims at this rate.
VOLUME_RENDERING_FPS = 30.0
#: After a new DRR, the 3D view (held since the C-arm moved) renders this much later (s): the DRR view's
#: frame is rendered, encoded and sent first.
THREED_RELEASE_DELAY = 0.15
#: 3D camera: from the patient's right, anterior and above, far enough to see source and detector (mm).
CAMERA_DIRECTION = (1.0, 0.8, 0.6)
CAMERA_DISTANCE = 3600.0


class Viewer:
    """The app's two views on ``slicerApp``'s scene, with the layout placed in the page by :meth:`placeIn`."""

    def __init__(self, slicerApp: SlicerApp, server) -> None:
        self.app = slicerApp
        # one JPEG quality for moving and still frames: no second, "still" render of the 3D view after each change
        register_rca_factories(
            slicerApp.view_manager, server, target_fps=30.0, blur_fps=30.0, interactive_quality=STILL_QUALITY
        )
        self.layoutManager = LayoutManager(slicerApp.scene, slicerApp.view_manager, server)
        threeD = ViewLayoutDefinition.threed_view(name=THREED_TAG)
        drr = ViewLayoutDefinition.slice_view("Axial", label=DRR_TAG, color="#F34A33")
        self.layoutManager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [threeD, drr]))
        self.layoutManager.set_layout(LAYOUT_ID)
        for view in slicerApp.view_manager.get_views():
            # trame-slicer asks for 8× multisampling, which on software OpenGL (Mesa) hides the
            # transform handles and costs frames; the views are sharp enough without it.
            view.render_window().SetMultiSamples(0)
        threeDNode = self.threeD.get_view_node()
        threeDNode.SetVolumeRenderingQuality(slicer.vtkMRMLViewNode.Adaptive)
        threeDNode.SetExpectedFPS(VOLUME_RENDERING_FPS)
        self._fitted = None
        self._ctDisplay = None
        self._volume = None
        self._drr = None
        # refit the DRR when the page resizes the view (the first fit happens before any browser is there)
        self.sliceView.interactor().AddObserver("WindowResizeEvent", lambda *_: self._refit())

    def _refit(self) -> None:
        if self._drr is not None and self._drr.GetScene() is not None:
            self.sliceView.fit_view_to_content()

    def placeIn(self, layout) -> None:
        self.layoutManager.initialize_layout_grid(layout)

    @property
    def threeD(self):
        return self.app.view_manager.get_view(THREED_TAG)

    @property
    def sliceView(self):
        return self.app.view_manager.get_view(DRR_TAG)

    def showCT(self, volumeNode) -> None:
        """Volume-render the CT in 3D (the previous CT's rendering hidden) and frame the camera on it."""
        vr = self.app.volume_rendering
        if self._ctDisplay is not None and self._ctDisplay.GetScene() is not None:
            self._ctDisplay.SetVisibility(False)
        display = vr.create_display_node(volumeNode, CT_PRESET)
        display.SetVisibility(True)
        display.SetViewNodeIDs([self.threeD.get_view_node_id()])
        self._ctDisplay = display
        self.frame(volumeNode)

    def frame(self, volumeNode=None) -> None:
        """An oblique 3D view of the whole C-arm (source ~850 mm from the CT, detector beyond it)."""
        volumeNode = volumeNode or self._volume
        self._volume = volumeNode
        view = self.threeD
        view.reset_view()
        camera = view.get_camera_node()
        if camera is None or volumeNode is None:
            return
        center = np.asarray(isocenter(volumeNode))
        direction = np.array(CAMERA_DIRECTION) / np.linalg.norm(CAMERA_DIRECTION)
        camera.SetFocalPoint(*center)
        camera.SetPosition(*(center + CAMERA_DISTANCE * direction))
        camera.SetViewUp(0.0, 0.0, 1.0)
        camera.ResetClippingRange()
        view.schedule_render()

    def showDRR(self, drrNode, showIn3D: bool) -> None:
        """The DRR in the slice view (seen from the detector) and on its detector plane in 3D."""
        view = self.sliceView
        if drrNode is None or drrNode.GetImageData() is None:
            view.set_background_volume_id(None)
            return
        self._drr = drrNode
        view.set_background_volume_id(drrNode.GetID())
        view.set_foreground_volume_id(None)
        drrViews.alignSliceToImage(view.get_view_node(), drrNode)
        view.set_visible_in_3d(bool(showIn3D))
        size = (drrNode.GetImageData().GetDimensions(), drrNode.GetSpacing())
        if size != self._fitted:  # refit only when the detector changed (keeps the user's zoom otherwise)
            view.fit_view_to_content()
            self._fitted = size
        view.schedule_render()
        try:  # once the DRR view's frame is on its way (a software 3D frame would hold it back)
            asyncio.get_running_loop().call_later(THREED_RELEASE_DELAY, self._releaseAndRender)
        except RuntimeError:
            self._releaseAndRender()

    def _releaseAndRender(self) -> None:
        self.releaseThreeD()
        self.threeD.schedule_render()

    def deferThreeD(self, safety: float = 1.0) -> None:
        """Hold the 3D view's renders until the next DRR is shown, so that the DRR view is streamed first
        (a software-rendered 3D frame takes longer than the DRR); released after ``safety`` s regardless."""
        self.threeD.set_render_blocked(True)
        try:
            asyncio.get_running_loop().call_later(safety, self.releaseThreeD)
        except RuntimeError:
            self.releaseThreeD()

    def releaseThreeD(self) -> None:
        if self.threeD.is_render_blocked:
            self.threeD.set_render_blocked(False)

    def resetViews(self) -> None:
        self.frame()
        self._fitted = None
        self.sliceView.fit_view_to_content()
