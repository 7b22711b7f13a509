"""The web app: one Slicer scene, one :class:`NanoDRRWorkflow`, its views and page, one user per process.

Actions from the page (Create/Reset C-arm, Render, Cancel, uploads) run here; every failure is shown in the
page (``state.error``), never as a traceback, and the server keeps running when a browser closes.
HTTP: ``GET /nanodrr/drr.npy`` is the current DRR (float32 ``[H, W]``, as stored: seen from the source) and
``GET /nanodrr/drr.json`` its description (pose, geometry, statistics), for scripts and tests.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

import numpy as np
import slicer
from NanoDRRLib import NanoDRRLogic
from NanoDRRLib.errors import NanoDRRError
from NanoDRRLib.workflow import NanoDRRWorkflow
from trame.app import get_server
from trame_slicer.core import SlicerApp

from . import data, ui
from .binding import StateBinding, drrInfo
from .gate import runGated
from .uploads import DEFAULT_MAX_UPLOAD_MB, XRAY_EXTENSIONS, UploadFolder, checkUpload
from .viewer import Viewer

_log = logging.getLogger("NanoDRRWeb")

#: The detector the app starts with: 256 × 256 pixels over the reference 400 mm field of view.
START_DETECTOR = {"height": 256, "width": 256, "delx": 1.5625, "dely": 1.5625, "sdd": 1020.0}


def preloadEngine() -> None:
    """Load the engine's compiled backends before any OpenGL context exists.

    Triton and numba bundle their own LLVM; loading Triton's after Mesa's software OpenGL (llvmpipe) has
    loaded the system LLVM crashes the process, loading it first does not.
    """
    import importlib

    for name in ("nanodrr_engine.drr.backends.numba", "nanodrr_engine.drr.backends.triton_gpu"):
        try:
            importlib.import_module(name)
        except ImportError:  # an optional backend that is not installed
            pass


class NanoDRRWebApp:
    """Builds the server, the scene, the workflow, the views and the page."""

    def __init__(self, server=None, ct=None, seg=None, maxUploadMB: float = DEFAULT_MAX_UPLOAD_MB) -> None:
        preloadEngine()
        self.server = server or get_server(client_type="vue3")
        self.slicerApp = SlicerApp()
        self.scene = self.slicerApp.scene
        self.workflow = NanoDRRWorkflow(self.scene, NanoDRRLogic(), schedule=self._schedule)
        self.viewer = Viewer(self.slicerApp, self.server)
        self.binding = StateBinding(
            self.server,
            self.workflow,
            onDrr=self._showDrr,
            onInputs=self.viewer.showCT,
            beforePose=self.viewer.deferThreeD,
        )
        self.maxUploadBytes = int(maxUploadMB * 2**20)
        self.uploads = UploadFolder()
        self.server.state.max_upload_mb = maxUploadMB
        ctrl = self.server.controller
        ctrl.create_carm = self.createCArm
        ctrl.reset_carm = self.resetCArm
        ctrl.render = self.render
        ctrl.cancel = self.workflow.cancel
        ctrl.upload_ct = self.uploadCT
        ctrl.upload_seg = self.uploadSeg
        ctrl.upload_xray = self.uploadXray
        ctrl.xray_from_drr = self.xrayFromDrr
        ctrl.register = self.register
        ctrl.undo_registration = self.undoRegistration
        ctrl.reset_views = self.viewer.resetViews
        ctrl.clear_error = self.binding.clearError
        ctrl.on_server_bind.add(self._addRoutes)
        ctrl.on_server_ready.add(self._onReady)
        ctrl.on_server_exited.add(self._onExit)
        ui.build(self.server, self.viewer)
        self._loadStart(ct, seg)

    # --- start-up ----------------------------------------------------------------------------

    def _loadStart(self, ct, seg) -> None:
        if ct is None:
            ctNode, segNode = data.addPhantom(self.scene)
        else:
            ctNode = data.loadCT(self.scene, ct)
            segNode = data.loadSeg(self.scene, seg, ctNode) if seg is not None else None
        w = self.workflow
        w.setInputs(ctNode, segNode)
        w.setDetector(**START_DETECTOR)
        w.createCArm()
        w.render()
        self.binding.flush()

    def _onReady(self, **_) -> None:
        self.binding.bindLoop(asyncio.get_running_loop())

    def _onExit(self, **_) -> None:
        self.workflow.close()
        self.uploads.cleanup()

    def _schedule(self, callback, delay: float) -> None:
        """The workflow's scheduling hook: the asyncio loop (synchronously before the server runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            callback()
            return
        loop.call_later(delay, self._safely, callback)

    def _safely(self, callback) -> None:
        try:
            callback()
        except Exception as e:
            self.binding.showError(e)

    def _showDrr(self, node) -> None:
        self.viewer.showDRR(node, self.workflow.showGeometry)

    # --- actions -----------------------------------------------------------------------------

    def _act(self, action) -> None:
        self.binding.clearError()
        self.binding.guarded(action, "pose", "carm")

    def createCArm(self) -> None:
        self._act(self.workflow.createCArm)

    def resetCArm(self) -> None:
        self._act(self.workflow.resetCArm)

    async def render(self) -> None:
        """Render (and per-segment DRRs) on a worker thread: progress and Cancel stay live in the page."""
        self.binding.clearError()
        if self.workflow.busy:
            self.binding.showError(NanoDRRError("render: a render is already running"))
            return
        try:
            await runGated(lambda progress: self.workflow.render(progress))
        except Exception as e:
            self.binding.showError(e)

    # --- registration ------------------------------------------------------------------------

    async def uploadXray(self, files) -> None:
        """An X-ray from the browser: checked, read (DICOM tags set the detector and the C-arm), selected."""
        self.binding.clearError()
        try:
            if self.workflow.busy:
                raise NanoDRRError("xray: wait for the render to finish")
            if isinstance(files, list):
                if len(files) != 1:
                    raise NanoDRRError(f"xray: choose one file (got {len(files)})")
                files = files[0]
            name, content = checkUpload(files, "xray", self.maxUploadBytes, XRAY_EXTENSIONS)
            self.workflow.loadXray(self.uploads.write(name, content))
            if not self.workflow.live:
                await runGated(lambda progress: self.workflow.render(progress))
        except Exception as e:
            self.binding.showError(e)

    def xrayFromDrr(self) -> None:
        self._act(self.workflow.xrayFromDrr)

    async def register(self) -> None:
        """Register the X-ray on a worker thread (progress and Cancel stay live), then render the result."""
        self.binding.clearError()
        w = self.workflow
        try:
            if w.busy:
                raise NanoDRRError("registration: a render is already running")
            wasLive = w.live
            if wasLive:
                w.setLive(False)  # no live render may touch the scene while the registration holds it
            try:
                result = await runGated(lambda progress: w.register(progress=progress))
            finally:
                if wasLive:
                    w.setLive(True)
            if result is not None:
                if not w.overlay["show"]:
                    w.setOverlay(show=True)  # show the fit
                if not wasLive:
                    await runGated(lambda progress: w.render(progress))
        except Exception as e:
            self.binding.showError(e)

    async def undoRegistration(self) -> None:
        self.binding.clearError()
        try:
            if self.workflow.busy:
                raise NanoDRRError("undo: wait for the render to finish")
            self.workflow.undoRegistration()
            if not self.workflow.live:
                await runGated(lambda progress: self.workflow.render(progress))
        except Exception as e:
            self.binding.showError(e)

    async def uploadCT(self, files) -> None:
        await self._upload(files, "ct")

    async def uploadSeg(self, files) -> None:
        await self._upload(files, "segmentation")

    async def _upload(self, files, role: str) -> None:
        """Check the file, load it, then (only then) make it the session's input; the old one is removed."""
        self.binding.clearError()
        try:
            if self.workflow.busy:
                raise NanoDRRError(f"{role}: wait for the render to finish")
            if isinstance(files, list):
                if len(files) != 1:
                    raise NanoDRRError(f"{role}: choose one file (got {len(files)})")
                files = files[0]
            name, content = checkUpload(files, role, self.maxUploadBytes)
            path = self.uploads.write(name, content)
            w = self.workflow
            if role == "ct":
                oldCT, oldSeg = w.volumeNode, w.segmentationNode
                node = data.loadCT(self.scene, path)
                try:
                    w.setInputs(node)
                except Exception:
                    _removeVolume(self.scene, node)
                    raise
                for old in (oldSeg, oldCT):
                    _removeVolume(self.scene, old)
            else:
                if w.volumeNode is None:
                    raise NanoDRRError("segmentation: load a CT first")
                oldSeg = w.segmentationNode
                node = data.loadSeg(self.scene, path, w.volumeNode)
                try:
                    w.setInputs(w.volumeNode, node)
                except Exception:
                    _removeVolume(self.scene, node)
                    raise
                _removeVolume(self.scene, oldSeg)
            if w.carmNode is not None:
                w.createCArm()  # re-posed about the new CT's centre
            await runGated(lambda progress: w.render(progress))
        except Exception as e:
            self.binding.showError(e)

    # --- HTTP --------------------------------------------------------------------------------

    def _addRoutes(self, wslink_server) -> None:
        from aiohttp import web

        async def drrNpy(request):
            node = self.workflow.outputNode
            if node is None or node.GetImageData() is None:
                return web.Response(status=404, text="no DRR yet")
            buffer = io.BytesIO()
            np.save(buffer, slicer.util.arrayFromVolume(node)[0].astype(np.float32))
            return web.Response(body=buffer.getvalue(), content_type="application/octet-stream")

        async def drrJson(request):
            return web.Response(text=json.dumps(drrInfo(self.workflow)), content_type="application/json")

        wslink_server.app.router.add_route("GET", "/nanodrr/drr.npy", drrNpy)
        wslink_server.app.router.add_route("GET", "/nanodrr/drr.json", drrJson)


def _removeVolume(scene, node) -> None:
    if node is None or node.GetScene() is None:
        return
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    for i in range(node.GetNumberOfDisplayNodes() - 1, -1, -1):
        display = node.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)
    if storage is not None and storage.GetScene() is not None:
        scene.RemoveNode(storage)
