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

        def test_logic_combines_slicer_and_nanodrrlib(self):
            self.assertIsInstance(self.logic, NanoDRRLib.NanoDRRLogic)
            self.assertEqual(self.logic.moduleName, "NanoDRR")
            node = self.logic.getParameterNode()
            self.assertIsInstance(node, NanoDRR.NanoDRRParameterNode)

        def test_create_carm_orbits_the_isocenter(self):
            carm = self.logic.createCArmFromParameters(self.p)
            self.assertIs(self.p.carmTransform, carm)
            toWorld = vtk.vtkMatrix4x4()
            carm.GetMatrixTransformToWorld(toWorld)
            center = toWorld.MultiplyPoint([*carm.GetCenterOfTransformation(), 1.0])[:3]
            np.testing.assert_allclose(center, NanoDRR.NanoDRRLogic.volumeCenterWorld(self.volume), atol=1e-6)
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
            self.assertEqual(NanoDRR.NanoDRRLogic.segmentIdsToRender(self.p), allIds[1:])
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
            self.assertAlmostEqual(NanoDRR.NanoDRRLogic.muBoneFromParameters(self.p), 2.0 * 0.0573)
            boosted = slicer.util.arrayFromVolume(self.logic.renderFromParameters(self.p)[0]).copy()
            self.assertGreater(boosted.max(), base.max())
            self.assertTrue(np.all(boosted >= base - 1e-5))
            self.p.boneContrast, self.p.displayMode = 1.0, "transmission"
            self.assertIsNone(NanoDRR.NanoDRRLogic.muBoneFromParameters(self.p))
            transmitted = slicer.util.arrayFromVolume(self.logic.renderFromParameters(self.p)[0])
            np.testing.assert_allclose(transmitted, np.exp(-base), rtol=1e-4, atol=1e-6)

        def test_live_renderer_from_parameters(self):
            self.logic.createCArmFromParameters(self.p)
            scheduled = []
            self.p.displayMode = "transmission"
            errors = []
            live = self.logic.createLiveRenderer(self.p, schedule=scheduled.append, onError=errors.append)
            live.start()  # one full-resolution render
            self.assertEqual(live.renderCount, 1)
            self.logic.setCArmAngles(self.p.carmTransform, self.volume, primary=30.0, secondary=0.0, sod=self.p.sod)
            while scheduled:
                scheduled.pop(0)()
            self.assertEqual(live.renderCount, 2)
            image = slicer.util.arrayFromVolume(self.p.outputVolume)
            self.assertEqual(image.shape, (1, 12, 16))  # preview at half resolution
            self.assertTrue(np.all((image > 0.0) & (image <= 1.0)))  # the display mode reached the renderer
            live.renderOptions["muBnoe"] = 1.0  # a failing live render reaches the GUI's error callback
            self.logic.setCArmAngles(self.p.carmTransform, self.volume, primary=40.0, secondary=0.0, sod=self.p.sod)
            while scheduled:
                scheduled.pop(0)()
            self.assertEqual(len(errors), 1)
            self.assertIs(errors[0], live.lastError)
            self.assertIsInstance(errors[0], NanoDRRLib.NanoDRRError)
            live.stop()

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
            self.p.sampling = NanoDRR.SamplingMethod.JOSEPH
            live = self.logic.createLiveRenderer(self.p, schedule=None)
            live.start()
            self.assertEqual(NanoDRRLib.readAttributes(self.p.outputVolume)["method"], "joseph")
            live.stop()

        def test_detector_presets_round_trip(self):
            for name in NanoDRRLib.DETECTOR_PRESETS:
                NanoDRR.NanoDRRLogic.applyDetectorPreset(self.p, name)
                self.assertEqual(NanoDRR.NanoDRRLogic.matchingDetectorPreset(self.p), name)
                self.assertEqual(self.p.detectorPreset, name)
            self.p.rows += 1
            self.assertEqual(NanoDRR.NanoDRRLogic.matchingDetectorPreset(self.p), "")
            with self.assertRaises(NanoDRRLib.NanoDRRError):
                NanoDRR.NanoDRRLogic.applyDetectorPreset(self.p, "no such detector")

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
            NanoDRR.NanoDRRLogic.alignSliceToImage(sliceNode, drr)
            sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            rasToSlice = np.linalg.inv(sliceToRAS)
            ijkToWorld = slicer.util.arrayFromVTKMatrix(NanoDRR.NanoDRRLogic.ijkToWorldMatrix(drr))
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
            NanoDRR.NanoDRRLogic.alignSliceToImage(sliceNode, drr)
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
