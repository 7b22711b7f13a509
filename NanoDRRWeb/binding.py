"""The page's state (trame keys) bound to one :class:`NanoDRRWorkflow`; the workflow holds every rule.

Every state key is declared with its value at start-up (:data:`DEFAULTS`). A key the page changes calls the
matching workflow action; a refused value (:class:`NanoDRRError`) is shown in the page and the key is put
back to the workflow's value, so nothing changes. The workflow's changes (from the page, the 3D handles,
live renders, a render thread) are copied into the state on the event loop, coalesced into one flush.
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np
from NanoDRRLib import DETECTOR_PRESETS
from NanoDRRLib.errors import NanoDRRError
from NanoDRRLib.output import readAttributes
from NanoDRRLib.workflow import NanoDRRWorkflow

CUSTOM = "Custom"
POSE_KEYS = {"primary": "primary", "secondary": "secondary", "sod": "sod"}
#: state key → CArmGeometry field
DETECTOR_KEYS = {
    "rows": "height",
    "columns": "width",
    "delx": "delx",
    "dely": "dely",
    "sdd": "sdd",
    "x0": "x0",
    "y0": "y0",
}
#: state key → RenderSettings field
SETTINGS_KEYS = {
    "method": "method",
    "n_samples": "nSamples",
    "bone_contrast": "boneContrast",
    "display_mode": "displayMode",
    "device": "device",
}
INTEGER_KEYS = {"rows", "columns", "n_samples"}

DEFAULTS = {
    "primary": 0.0, "secondary": 0.0, "sod": 850.0, "has_carm": False, "show_geometry": True,
    "preset": CUSTOM, "presets": [CUSTOM, *DETECTOR_PRESETS],
    "rows": 200, "columns": 200, "delx": 2.0, "dely": 2.0, "sdd": 1020.0, "x0": 0.0, "y0": 0.0,
    "method": "joseph", "n_samples": 500, "bone_contrast": 1.0, "display_mode": "attenuation", "device": "auto",
    "methods": [
        {"title": "Joseph (one sample per voxel plane, fastest on CPU)", "value": "joseph"},
        {"title": "Ray march (fixed samples per ray, as nanodrr)", "value": "raymarch"},
    ],
    "display_modes": [
        {"title": "Line integral (∫μ ds, bone bright)", "value": "attenuation"},
        {"title": "Transmission (I/I0 = e^(−∫μ ds))", "value": "transmission"},
    ],
    "devices": ["auto", "cpu"],
    "live": False, "busy": False, "progress": 0, "status": "", "error": "", "error_count": 0,
    "render_segments": False, "segments": [], "segment_ids": [],
    "ct_name": "", "seg_name": "", "max_upload_mb": 0,
    "drr": {"count": 0},
    "xray_name": "", "similarity": "", "can_undo": False,
    "show_overlay": False, "overlay_mode": "blend", "overlay_blend": 0.5,
    "overlay_modes": [
        {"title": "Blend", "value": "blend"},
        {"title": "DRR edges (green) on the X-ray", "value": "edges"},
        {"title": "Checkerboard", "value": "checkerboard"},
    ],
}  # fmt: skip
#: state key → NanoDRRWorkflow.setOverlay argument
OVERLAY_KEYS = {"show_overlay": "show", "overlay_mode": "mode", "overlay_blend": "blend"}

_log = logging.getLogger("NanoDRRWeb")


def asNumber(value, key: str, integer: bool = False):
    """A number typed in the page (a text field may send a string): parsed here, range-checked by the workflow."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise NanoDRRError(f"{key}: expected a number, got {value!r}") from None
    if integer and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value


def drrInfo(workflow: NanoDRRWorkflow) -> dict:
    """What the page (and the tests) know of the current DRR: count, size, pose and statistics."""
    node = workflow.outputNode
    if node is None or node.GetImageData() is None:
        return {"count": workflow.renderCount}
    import slicer

    a = slicer.util.arrayFromVolume(node)[0]
    attrs = readAttributes(node)
    return {
        "count": workflow.renderCount,
        "height": int(a.shape[0]), "width": int(a.shape[1]),
        "rtInv": [float(v) for v in np.asarray(attrs.get("rtInv", np.eye(4))).ravel()],
        "geometry": {k: attrs.get(k) for k in ("sdd", "delx", "dely", "x0", "y0", "height", "width")},
        "method": attrs.get("method"), "displayMode": attrs.get("displayMode"),
        "muBone": attrs.get("muBone"), "nSamples": attrs.get("nSamples"),
        "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
        "xray": workflow.xrayNode.GetName() if workflow.xrayNode is not None else None,
        "registration": workflow.lastResult,
        "overlayShown": shownNode(workflow) is workflow.overlayNode and workflow.overlayNode is not None,
    }  # fmt: skip


def shownNode(workflow: NanoDRRWorkflow):
    """What the slice view shows: the DRR over the X-ray when the overlay is on, else the DRR."""
    if workflow.overlay["show"] and workflow.xrayNode is not None and workflow.overlayNode is not None:
        return workflow.overlayNode
    return workflow.outputNode


class StateBinding:
    """Binds ``server.state`` to ``workflow``; ``onDrr(node)`` shows a new DRR in the views."""

    def __init__(self, server, workflow: NanoDRRWorkflow, onDrr=None, onInputs=None, beforePose=None) -> None:
        self.server = server
        self.state = server.state
        self.workflow = workflow
        self._onDrr = onDrr
        self._onInputs = onInputs
        self._beforePose = beforePose
        self._dirty: set[str] = set()
        self._flushScheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state.update(DEFAULTS)
        workflow.addListener(self._workflowChanged)
        s = self.state
        s.change(*POSE_KEYS)(self._onPose)
        s.change(*DETECTOR_KEYS)(self._onDetector)
        s.change("preset")(self._onPreset)
        s.change(*SETTINGS_KEYS)(self._onSettings)
        s.change("live")(self._onLive)
        s.change("show_geometry")(self._onShowGeometry)
        s.change("render_segments")(self._onRenderSegments)
        s.change("segment_ids")(self._onSegmentIds)
        s.change(*OVERLAY_KEYS)(self._onOverlay)

    # --- errors ------------------------------------------------------------------------------

    def showError(self, error: Exception) -> None:
        """An error for the page: the message of a NanoDRRError, a short line for anything else (logged)."""
        if isinstance(error, NanoDRRError):
            text = str(error)
        else:
            _log.exception("NanoDRR web: unexpected error", exc_info=error)
            text = f"Unexpected error ({type(error).__name__}): {error}"
        with self.state:
            self.state.error = text
            self.state.error_count += 1

    def clearError(self) -> None:
        self.state.error = ""

    def guarded(self, action, *groups: str) -> bool:
        """Run ``action()``; on failure show the error and put ``groups`` back to the workflow's values."""
        try:
            if self.workflow.busy:
                raise NanoDRRError("busy: wait for the render to finish (or cancel it)")
            action()
        except Exception as e:
            self.showError(e)
            self._dirty.update(groups)
            self._scheduleFlush()
            return False
        return True

    # --- page → workflow ---------------------------------------------------------------------

    def _onPose(self, **_) -> None:
        p = self.workflow.pose
        values = {field: self.state[key] for key, field in POSE_KEYS.items()}
        if all(_same(values[f], getattr(p, f)) for f in values):
            return

        def move():
            if self._beforePose is not None:
                self._beforePose()
            self.workflow.setPose(**{f: asNumber(v, f) for f, v in values.items()})

        self.guarded(move, "pose")

    def _onDetector(self, **_) -> None:
        g = self.workflow.geometry
        values = {f: self.state[k] for k, f in DETECTOR_KEYS.items()}
        if all(_same(values[f], getattr(g, f)) for f in values):
            return
        keys = {f: k for k, f in DETECTOR_KEYS.items()}
        self.guarded(
            lambda: self.workflow.setDetector(
                **{f: asNumber(v, keys[f], keys[f] in INTEGER_KEYS) for f, v in values.items()}
            ),
            "detector",
        )

    def _onPreset(self, preset, **_) -> None:
        if preset == CUSTOM or preset == (self.workflow.detectorPreset or CUSTOM):
            return
        self.guarded(lambda: self.workflow.applyPreset(preset), "detector")

    def _onSettings(self, **_) -> None:
        st = self.workflow.settings
        values = {f: self.state[k] for k, f in SETTINGS_KEYS.items()}
        if all(_same(values[f], getattr(st, f)) for f in values):
            return
        keys = {f: k for k, f in SETTINGS_KEYS.items()}

        def apply():
            numeric = {"nSamples", "boneContrast"}
            self.workflow.setSettings(
                **{
                    f: asNumber(v, keys[f], keys[f] in INTEGER_KEYS) if f in numeric else v
                    for f, v in values.items()
                }
            )

        self.guarded(apply, "settings")

    def _onLive(self, live, **_) -> None:
        if bool(live) == self.workflow.live:
            return
        self.guarded(lambda: self.workflow.setLive(live), "live")

    def _onShowGeometry(self, show_geometry, **_) -> None:
        if show_geometry == self.workflow.showGeometry:
            return
        if self.guarded(lambda: self.workflow.setShowGeometry(show_geometry), "carm"):
            self._dirty.add("drr")  # the DRR's slice in 3D follows the geometry's visibility
            self._scheduleFlush()

    def _onRenderSegments(self, render_segments, **_) -> None:
        if render_segments == self.workflow.renderSegments:
            return
        self.guarded(lambda: self.workflow.setRenderSegments(render_segments), "segments")

    def _onSegmentIds(self, segment_ids, **_) -> None:
        if list(segment_ids or []) == self.workflow.segmentIds:
            return
        self.guarded(lambda: self.workflow.setSegmentIds(list(segment_ids or [])), "segments")

    def _onOverlay(self, **_) -> None:
        values = {f: self.state[k] for k, f in OVERLAY_KEYS.items()}
        current = self.workflow.overlay
        if all(_same(values[f], current[f]) for f in values):
            return
        self.guarded(
            lambda: self.workflow.setOverlay(
                show=bool(values["show"]),
                mode=values["mode"],
                blend=asNumber(values["blend"], "overlay_blend"),
            ),
            "overlay",
        )

    # --- workflow → page ---------------------------------------------------------------------

    def bindLoop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _workflowChanged(self, what: str) -> None:
        """A workflow listener: may run on the render thread, so it only schedules a flush on the loop."""
        self._dirty.add(what)
        self._scheduleFlush()

    def _scheduleFlush(self) -> None:
        if self._flushScheduled:
            return
        self._flushScheduled = True
        if self._loop is None:
            self._flushScheduled = False
            self.flush()
        else:
            self._loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        """Copy the changed parts of the workflow into the state (on the loop thread)."""
        self._flushScheduled = False
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        w, s = self.workflow, self.state
        try:
            with s:
                if dirty & {"pose", "carm"}:
                    s.primary, s.secondary, s.sod = w.pose.primary, w.pose.secondary, w.pose.sod
                    s.has_carm = w.carmNode is not None
                    s.show_geometry = w.showGeometry
                if "detector" in dirty:
                    for key, f in DETECTOR_KEYS.items():
                        s[key] = getattr(w.geometry, f)
                    s.preset = w.detectorPreset or CUSTOM
                if "settings" in dirty:
                    for key, f in SETTINGS_KEYS.items():
                        s[key] = getattr(w.settings, f)
                if dirty & {"inputs", "segments"}:
                    s.ct_name = w.volumeNode.GetName() if w.volumeNode is not None else ""
                    s.seg_name = w.segmentationNode.GetName() if w.segmentationNode is not None else ""
                    s.segments = [{"title": name, "value": sid} for sid, name in w.segments()]
                    s.segment_ids = list(w.segmentIds)
                    s.render_segments = w.renderSegments
                if dirty & {"live", "drr"}:
                    s.live = w.live
                if dirty & {"busy", "status"}:
                    s.busy = w.busy
                    s.progress = round(100 * w.progress)
                    s.status = w.status
                if dirty & {"xray", "overlay", "carm", "pose", "status"}:
                    s.xray_name = w.xrayNode.GetName() if w.xrayNode is not None else ""
                    s.can_undo = w.canUndoRegistration
                    r = w.lastResult
                    s.similarity = (
                        f"{r['similarityBefore']:.3f} → {r['similarityAfter']:.3f} "
                        f"({r['iterations']} steps, {r['seconds']:.1f} s)"
                        if r
                        else ""
                    )
                    for key, f in OVERLAY_KEYS.items():
                        s[key] = w.overlay[f]
                if "inputs" in dirty and self._onInputs is not None:
                    self._onInputs(w.volumeNode)
                if dirty & {"drr", "carm", "overlay", "xray"} and not w.busy:
                    shown = None
                    if "drr" in dirty and w.overlay["show"] and w.xrayNode is not None and not w.live:
                        try:
                            w.updateOverlay()  # the overlay follows the DRR (live ones: the workflow did)
                        except NanoDRRError as e:  # e.g. a detector that no longer fits the X-ray
                            self.showError(e)
                            shown = w.outputNode
                    s.drr = drrInfo(w)
                    if self._onDrr is not None:
                        self._onDrr(shown or shownNode(w))
                elif dirty & {"drr", "overlay", "xray"}:
                    self._dirty.add("drr")  # shown once the render thread is done with the scene
        except Exception as e:  # a flush must never take the server down
            self.showError(e)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b
