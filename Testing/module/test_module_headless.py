"""Runs NanoDRR.py's logic and its Slicer self-test (NanoDRRTest) without the Slicer application.

Real parts: MRML (the slicer-core wheel: nodes, scene, segmentations logic), NanoDRRLib and the torch engine.
Stand-ins (in a subprocess, so nothing leaks into other tests): the Qt-based modules Slicer provides to
scripted modules - ``qt``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
``slicer.i18n`` and ``slicer.app`` - reduced to what NanoDRR.py touches outside its widget. The widget test
of NanoDRRTest skips itself (no main window); everything else runs for real, so NanoDRRTest is known to
pass before anyone opens Slicer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "NanoDRRSlicer"

HARNESS = textwrap.dedent(
    r'''
    import json, math, sys, types, unittest, traceback
    import slicer, vtk

    # ---- stand-ins for what the Slicer application provides to scripted modules ----------------------
    qt = types.ModuleType("qt")
    class QTimer:
        pending = []
        @staticmethod
        def singleShot(msec, callback):
            QTimer.pending.append(callback)
    qt.QTimer = QTimer
    sys.modules["qt"] = qt

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = slicer.i18n = i18n

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum
    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)
    def parameterNodeWrapper(cls):
        # Plain attributes with the declared defaults (None for nodes, [] for lists); no MRML storage.
        def __init__(self, node=None):
            self.parameterNode = node
            for name, annotation in cls.__annotations__.items():
                default = getattr(cls, name, None)
                if default is None and getattr(annotation, "__origin__", None) is list:
                    default = []
                object.__setattr__(self, name, default)
        def StartModify(self):
            return 0
        def EndModify(self, wasModified):
            return None
        cls.__init__, cls.StartModify, cls.EndModify = __init__, StartModify, EndModify
        return cls
    pnw.WithinRange, pnw.Choice, pnw.parameterNodeWrapper = WithinRange, Choice, parameterNodeWrapper
    sys.modules["slicer.parameterNodeWrapper"] = slicer.parameterNodeWrapper = pnw

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()  # cooperative, as in Slicer >= 5.8
            self.moduleName = type(self).__name__.removesuffix("Logic")
        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
                node.SetSingletonTag(self.moduleName)
            return node
    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass
    for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
              ScriptedLoadableModuleTest):
        setattr(slm, c.__name__, c)
    slm.__all__ = [c.__name__ for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                       ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    sys.modules["slicer.ScriptedLoadableModule"] = slicer.ScriptedLoadableModule = slm

    class _App:
        def commandOptions(self):
            return types.SimpleNamespace(testingEnabled=True, noMainWindow=True)
        def layoutManager(self):
            return None
        def processEvents(self):
            pass
    slicer.app = _App()
    slicer.mrmlScene = slicer.vtkMRMLScene()

    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import NanoDRR
    import NanoDRRLib

    # ---- harness tests of the Slicer-side logic (parameter node -> NanoDRRLib) ------------------------
    class LogicTest(unittest.TestCase):
        def setUp(self):
            slicer.mrmlScene.Clear(0)
            self.logic = NanoDRR.NanoDRRLogic()
            self.logic.ensureDependencies()
            selftest = NanoDRR.NanoDRRTest()
            self.volume, self.labels, self.phantom = selftest._phantomVolume()
            self.p = NanoDRR.NanoDRRParameterNode()
            self.p.inputVolume = self.volume
            self.p.rows, self.p.columns, self.p.delx, self.p.dely = 24, 32, 12.0, 12.0
            self.p.quality, self.p.device = 64, "cpu"

        def _segmentation(self):
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            slicer.util.updateVolumeFromArray(labelmap, self.labels.astype(np.int16))
            m = vtk.vtkMatrix4x4()
            self.volume.GetIJKToRASMatrix(m)
            labelmap.SetIJKToRASMatrix(m)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
            return segmentation

        def test_logic_composes_nanodrrlib_and_the_workflow(self):
            self.assertNotIsInstance(self.logic, NanoDRRLib.NanoDRRLogic)  # composed, not inherited
            self.assertIsInstance(self.logic.headless, NanoDRRLib.NanoDRRLogic)
            self.assertEqual(self.logic.moduleName, "NanoDRR")
            node = self.logic.getParameterNode()
            self.assertIsInstance(node, NanoDRR.NanoDRRParameterNode)
            # the headless API is the module logic's too (scripts), and nothing else leaks through
            self.assertEqual(self.logic.render.__self__, self.logic.headless)
            self.assertIn("renderSegments", dir(self.logic))
            with self.assertRaises(AttributeError):
                self.logic._validate
            workflow = self.logic.bind(self.p)
            self.assertIsInstance(workflow, NanoDRRLib.NanoDRRWorkflow)
            self.assertIs(workflow.logic, self.logic.headless)
            self.assertIs(workflow.volumeNode, self.volume)
            self.assertEqual((workflow.geometry.height, workflow.geometry.width), (24, 32))
            self.assertIs(self.logic.bind(self.p), workflow)  # one session per parameter node

        def test_parameter_node_and_workflow_stay_in_step(self):
            workflow = self.logic.bind(self.p)
            carm = self.logic.createCArmFromParameters(self.p)
            self.p.primaryAngle, self.p.secondaryAngle = 30.0, -10.0  # what the sliders do
            self.logic.bind(self.p)
            np.testing.assert_allclose(self.logic.getCArmAngles(carm, self.volume), (30.0, -10.0, 850.0), atol=1e-6)
            # dragging the C-arm's handles (any move of the node) comes back into the parameter node
            self.logic.setCArmAngles(carm, self.volume, primary=-45.0, secondary=5.0, sod=900.0)
            self.assertAlmostEqual(self.p.primaryAngle, -45.0, places=6)
            self.assertAlmostEqual(self.p.secondaryAngle, 5.0, places=6)
            self.assertAlmostEqual(self.p.sod, 900.0, places=6)
            self.assertEqual(workflow.pose.primary, self.p.primaryAngle)
            # a refused value names itself, is put back, and the other changes still apply
            self.p.rows, self.p.boneContrast = -5, 2.0
            with self.assertRaises(NanoDRRLib.NanoDRRError) as raised:
                self.logic.bind(self.p)
            self.assertIn("height", str(raised.exception))
            self.assertEqual(self.p.rows, 24)
            self.assertEqual(workflow.settings.boneContrast, 2.0)
            # a detector preset through the workflow lands in the parameter node, named
            name = next(iter(NanoDRRLib.DETECTOR_PRESETS))
            workflow.applyPreset(name)
            self.assertEqual(self.p.detectorPreset, name)
            self.assertEqual(self.p.rows, int(NanoDRRLib.DETECTOR_PRESETS[name]["height"]))
            self.p.rows += 1
            self.logic.bind(self.p)
            self.assertEqual(self.p.detectorPreset, "")

        def test_selecting_another_xray_keeps_the_previous_one(self):
            self.logic.createCArmFromParameters(self.p)
            drr = self.logic.renderFromParameters(self.p)[0]
            first = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray 1")
            first.CopyContent(drr)
            second = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray 2")
            second.CopyContent(drr)
            self.p.xrayVolume = first
            self.assertIs(self.logic.bind(self.p).xrayNode, first)
            self.p.xrayVolume = second
            self.assertIs(self.logic.bind(self.p).xrayNode, second)
            self.assertIs(first.GetScene(), slicer.mrmlScene)  # the user's node: never removed
            self.p.outputVolume = second  # rendering into the X-ray would overwrite it: refused, put back
            with self.assertRaises(NanoDRRLib.NanoDRRError):
                self.logic.bind(self.p)
            self.assertIs(self.p.outputVolume, drr)

        def test_create_carm_orbits_the_isocenter(self):
            carm = self.logic.createCArmFromParameters(self.p)
            self.assertIs(self.p.carmTransform, carm)
            toWorld = vtk.vtkMatrix4x4()
            carm.GetMatrixTransformToWorld(toWorld)
            center = toWorld.MultiplyPoint([*carm.GetCenterOfTransformation(), 1.0])[:3]
            np.testing.assert_allclose(center, NanoDRRLib.isocenter(self.volume), atol=1e-6)
            display = carm.GetDisplayNode()
            self.assertTrue(display.GetEditorVisibility())
            self.assertFalse(display.GetEditorTranslationEnabled())
            self.assertTrue(display.GetEditorRotationEnabled())
            self.assertEqual(self.logic.getCArmAngles(carm, self.volume)[2], self.p.sod)

        def test_render_from_parameters_with_progress_and_segments(self):
            self.logic.createCArmFromParameters(self.p)
            segmentation = self._segmentation()
            self.p.segmentation, self.p.renderSegments = segmentation, True
            ids = vtk.vtkStringArray()
            segmentation.GetSegmentation().GetSegmentIDs(ids)
            self.p.segmentIds = [ids.GetValue(0), ids.GetValue(1), "no-such-segment"]
            fractions = []
            drr, parts = self.logic.renderFromParameters(self.p, lambda f, message="": fractions.append(f))
            self.assertIs(self.p.outputVolume, drr)
            self.assertEqual(slicer.util.arrayFromVolume(drr).shape, (1, 24, 32))
            self.assertEqual(len(parts), 2)
            self.assertEqual(fractions[0], 0.0)
            self.assertEqual(fractions[-1], 1.0)
            self.assertEqual(fractions, sorted(fractions))
            # Rendering again overwrites the per-segment DRRs instead of piling them up ...
            ids0 = sorted(n.GetID() for n in parts)
            parts1 = self.logic.renderFromParameters(self.p)[1]
            self.assertEqual(sorted(n.GetID() for n in parts1), ids0)
            # ... and drops those of segments no longer selected.
            self.p.segmentIds = [ids.GetValue(0)]
            parts2 = self.logic.renderFromParameters(self.p)[1]
            self.assertEqual(len(parts2), 1)
            self.assertEqual(len(NanoDRR.NanoDRRLogic.segmentDRRs(drr)), 1)

        def test_segment_drrs_are_found_after_import_into_a_busy_scene(self):
            import tempfile
            self.logic.createCArmFromParameters(self.p)
            self.p.segmentation, self.p.renderSegments = self._segmentation(), True
            drr, parts = self.logic.renderFromParameters(self.p)
            self.assertGreater(len(parts), 1)
            busy = slicer.vtkMRMLScene()
            for _ in range(8):  # its nodes take the IDs the saved scene uses: the import renames them
                busy.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
            with tempfile.TemporaryDirectory() as folder:
                NanoDRRLib.loadScene(NanoDRRLib.saveScene(slicer.mrmlScene, folder), scene=busy)
            drr2 = busy.GetFirstNodeByName(drr.GetName())
            self.assertNotEqual(drr2.GetID(), drr.GetID())
            found = NanoDRR.NanoDRRLogic.segmentDRRs(drr2)
            self.assertEqual(sorted(found), sorted(NanoDRR.NanoDRRLogic.segmentDRRs(drr)))
            self.assertEqual(sorted(n.GetName() for n in found.values()), sorted(n.GetName() for n in parts))
            self.assertTrue(all(n.GetScene() is busy for n in found.values()))

        def test_unselected_segments_default_to_the_visible_ones(self):
            self.logic.createCArmFromParameters(self.p)
            segmentation = self._segmentation()
            segmentation.CreateDefaultDisplayNodes()
            ids = vtk.vtkStringArray()
            segmentation.GetSegmentation().GetSegmentIDs(ids)
            allIds = [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]
            segmentation.GetDisplayNode().SetSegmentVisibility(allIds[0], False)
            self.p.segmentation, self.p.renderSegments = segmentation, True
            messages = []
            drr, parts = self.logic.renderFromParameters(self.p, lambda f, message="": messages.append(message))
            self.assertEqual(sorted(NanoDRR.NanoDRRLogic.segmentDRRs(drr)), sorted(allIds[1:]))
            self.assertTrue(any("segments" in m for m in messages))  # progress reported for the segment pass

        def test_cancel_unwinds_between_segments(self):
            self.logic.createCArmFromParameters(self.p)
            self.p.segmentation, self.p.renderSegments = self._segmentation(), True
            calls = []
            def progress(fraction, message=""):
                calls.append(fraction)
                if len(calls) == 2:
                    raise NanoDRR.RenderCancelled()
            with self.assertRaises(NanoDRR.RenderCancelled):
                self.logic.renderFromParameters(self.p, progress)

        def test_bone_contrast_and_transmission_change_the_render(self):
            self.logic.createCArmFromParameters(self.p)
            base = slicer.util.arrayFromVolume(self.logic.renderFromParameters(self.p)[0]).copy()
            self.p.boneContrast = 2.0
            self.assertAlmostEqual(self.logic.bind(self.p).muBone(), 2.0 * 0.0573)
            boosted = slicer.util.arrayFromVolume(self.logic.renderFromParameters(self.p)[0]).copy()
            self.assertGreater(boosted.max(), base.max())
            self.assertTrue(np.all(boosted >= base - 1e-5))
            self.p.boneContrast, self.p.displayMode = 1.0, "transmission"
            self.assertIsNone(self.logic.bind(self.p).muBone())
            transmitted = slicer.util.arrayFromVolume(self.logic.renderFromParameters(self.p)[0])
            np.testing.assert_allclose(transmitted, np.exp(-base), rtol=1e-4, atol=1e-6)

        def test_live_rendering_from_the_parameter_node(self):
            self.logic.createCArmFromParameters(self.p)
            self.p.displayMode = "transmission"
            self.p.live = True
            workflow = self.logic.bind(self.p)  # one full-resolution render
            self.assertTrue(workflow.live)
            self.assertEqual(workflow.renderCount, 1)
            self.assertIs(self.p.outputVolume, workflow.outputNode)
            qt.QTimer.pending.clear()
            self.logic.setCArmAngles(self.p.carmTransform, self.volume, primary=30.0, secondary=0.0, sod=self.p.sod)
            self.assertTrue(qt.QTimer.pending, "moving the C-arm scheduled nothing on Qt's loop")
            qt.QTimer.pending.pop(0)()  # the preview
            self.assertEqual(workflow.renderCount, 2)
            image = slicer.util.arrayFromVolume(self.p.outputVolume)
            self.assertEqual(image.shape, (1, 24, 32))  # 768 pixels: below the preview budget, full size
            self.assertTrue(np.all((image > 0.0) & (image <= 1.0)))  # the display mode reached the renderer
            self.assertEqual(self.p.primaryAngle, 30.0)
            # a sampling change re-renders live with the new method
            self.p.sampling = NanoDRR.SamplingMethod.RAYMARCH
            self.logic.bind(self.p)
            while qt.QTimer.pending:
                qt.QTimer.pending.pop(0)()
            self.assertEqual(NanoDRRLib.readAttributes(self.p.outputVolume)["method"], "raymarch")
            # a failing live render reaches the workflow's status (the widget's status label shows it)
            workflow._live.renderOptions["muBnoe"] = 1.0
            self.logic.setCArmAngles(self.p.carmTransform, self.volume, primary=40.0, secondary=0.0, sod=self.p.sod)
            while qt.QTimer.pending:
                qt.QTimer.pending.pop(0)()
            self.assertIsInstance(workflow.lastError, NanoDRRLib.NanoDRRError)
            self.assertIn("Live rendering", workflow.status)
            self.p.live = False
            self.logic.bind(self.p)
            self.assertFalse(workflow.live)

        def test_sampling_parameter_reaches_every_render(self):
            self.logic.createCArmFromParameters(self.p)
            self.assertIs(self.p.sampling, NanoDRR.SamplingMethod.JOSEPH)  # the GUI default: fastest
            self.assertEqual(
                [m.label() for m in NanoDRR.SamplingMethod],
                ["Joseph (one sample per voxel plane, fastest on CPU)", "Ray march (fixed samples per ray, as nanodrr)"],
            )
            self.p.segmentation, self.p.renderSegments = self._segmentation(), True
            drr, parts = self.logic.renderFromParameters(self.p)
            for node in (drr, *parts):
                attributes = NanoDRRLib.readAttributes(node)
                self.assertEqual(attributes["method"], "joseph")
                self.assertNotIn("nSamples", attributes)
            self.p.sampling = NanoDRR.SamplingMethod.RAYMARCH
            drr, parts = self.logic.renderFromParameters(self.p)
            for node in (drr, *parts):
                attributes = NanoDRRLib.readAttributes(node)
                self.assertEqual((attributes["method"], attributes["nSamples"]), ("raymarch", 64))
            self.p.sampling, self.p.live = NanoDRR.SamplingMethod.JOSEPH, True
            self.logic.bind(self.p)
            self.assertEqual(NanoDRRLib.readAttributes(self.p.outputVolume)["method"], "joseph")
            self.p.live = False
            self.logic.bind(self.p)

        def test_detector_presets_round_trip(self):
            workflow = self.logic.bind(self.p)
            for name in NanoDRRLib.DETECTOR_PRESETS:
                workflow.applyPreset(name)  # what the preset combo does
                self.assertEqual(self.p.detectorPreset, name)
            with self.assertRaises(NanoDRRLib.NanoDRRError):
                workflow.applyPreset("no such detector")

        def test_missing_requirements(self):
            missing = NanoDRR.NanoDRRLogic.missingRequirements(
                ["torch>=2.5", "numpy>=1.0", "numpy>=999", "surely-not-a-package-nanodrr>=1"]
            )
            self.assertEqual(missing, ["numpy>=999", "surely-not-a-package-nanodrr>=1"])

        def test_slice_aligned_to_the_drr(self):
            """Seen from the detector: row 0 at the top, column 0 on the right, patient's right on the left."""
            self.logic.createCArmFromParameters(self.p)
            self.logic.setCArmAngles(self.p.carmTransform, self.volume, primary=35.0, secondary=-20.0, sod=850.0)
            drr = self.logic.renderFromParameters(self.p)[0]
            sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
            NanoDRRLib.views.alignSliceToImage(sliceNode, drr)
            sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            rasToSlice = np.linalg.inv(sliceToRAS)
            ijkToWorld = NanoDRRLib.conversion.volumeToWorld(drr)
            def onSlice(i, j):
                return (rasToSlice @ ijkToWorld @ [i, j, 0, 1])[:3]
            first, last = onSlice(0, 0), onSlice(31, 23)
            np.testing.assert_allclose([first[2], last[2]], 0.0, atol=1e-6)  # in the slice plane
            self.assertGreater(first[0], 0.0)
            self.assertGreater(first[1], 0.0)  # top-right
            np.testing.assert_allclose(first[:2], -last[:2], atol=1e-6)  # centred
            np.testing.assert_allclose(np.linalg.det(sliceToRAS[:3, :3]), 1.0, atol=1e-9)
            # The viewer (on the slice's +normal side) is beyond the detector, looking back at the source.
            source = slicer.util.arrayFromTransformMatrix(self.p.carmTransform, toWorld=True)[:3, 3]
            self.assertAlmostEqual((rasToSlice @ [*source, 1.0])[2], -self.p.sdd, places=3)

        def test_frontal_view_is_displayed_with_the_patients_right_on_the_left(self):
            """AP (0, 0): in slice (screen) coordinates, the patient's right (+x RAS) is at negative x."""
            self.logic.createCArmFromParameters(self.p)
            drr = self.logic.renderFromParameters(self.p)[0]
            sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
            NanoDRRLib.views.alignSliceToImage(sliceNode, drr)
            sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            np.testing.assert_allclose(sliceToRAS[:3, 0], [-1.0, 0.0, 0.0], atol=1e-9)  # screen right = patient left
            np.testing.assert_allclose(sliceToRAS[:3, 1], [0.0, 0.0, 1.0], atol=1e-9)  # screen up = superior

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    suite.addTests(loader.loadTestsFromTestCase(LogicTest))
    selfTests = [name for name in loader.getTestCaseNames(NanoDRR.NanoDRRTest) if name.startswith("test_NanoDRR")]
    suite.addTests(NanoDRR.NanoDRRTest(name) for name in selfTests)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    print(json.dumps({
        "run": result.testsRun,
        "selfTests": selfTests,
        "failures": [(str(t), tb) for t, tb in result.failures + result.errors],
        "skipped": [(str(t), reason) for t, reason in result.skipped],
    }))
    '''
)


@pytest.mark.slow
def test_logic_and_selftest_run_on_real_mrml():
    result = subprocess.run(
        [sys.executable, "-c", HARNESS, str(MODULE_DIR)],
        capture_output=True,
        encoding="utf-8",  # the self-tests print non-ASCII (°, →) whatever the locale (CI runs with C)
        timeout=600,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["failures"], "\n\n".join(f"{name}\n{tb}" for name, tb in report["failures"])
    assert set(report["selfTests"]) >= {
        "test_NanoDRR_render_matches_phantom",
        "test_NanoDRR_clinical_angles",
        "test_NanoDRR_live",
        "test_NanoDRR_segments",
        "test_NanoDRR_registration",
        "test_NanoDRR_widget",
        "test_NanoDRR_widget_registration",
    }
    # Only the GUI tests may skip here (they need Slicer's main window).
    skipped = sorted(name.split(" ")[0] for name, _ in report["skipped"])
    assert skipped == ["test_NanoDRR_widget", "test_NanoDRR_widget_registration"], report["skipped"]
