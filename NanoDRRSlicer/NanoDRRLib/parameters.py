"""The module's parameter node bound to a :class:`~.workflow.NanoDRRWorkflow`, both ways.

The Slicer widget shows the parameter node (``parameterNodeWrapper`` binds the ``.ui`` to its fields) and
the workflow holds every rule; this binding is all that connects them, so the widget holds no workflow logic.
It works on any object with the fields of ``NanoDRR.NanoDRRParameterNode`` (the names below), so it runs and
is tested on slicer-core without Qt.

- :meth:`ParameterBinding.pull`: the fields the user changed since the last sync become workflow actions, in
  dependency order (inputs, C-arm, pose, detector, settings, segments, outputs, X-ray, overlay, live). A value
  the workflow refuses is put back to the workflow's value and its :class:`NanoDRRError` raised once the other
  groups are applied, so one bad field changes nothing and blocks nothing else.
- The workflow's changes (a render's output node, a pose read back from the C-arm's handles, a detector
  from an X-ray's tags, live stopping after a failure) are pushed into the fields as they happen.

A pose read back from the C-arm is clamped to the fields' ranges without moving the C-arm: only a field the
user changed moves it.
"""

from __future__ import annotations

import logging
import math

from .errors import NanoDRRError
from .workflow import NanoDRRWorkflow

_log = logging.getLogger("NanoDRR")

#: parameter field → NanoDRRWorkflow.pose field
POSE_FIELDS = {"primaryAngle": "primary", "secondaryAngle": "secondary", "sod": "sod"}
#: parameter field → CArmGeometry field
DETECTOR_FIELDS = {"rows": "height", "columns": "width", "delx": "delx", "dely": "dely", "sdd": "sdd",
                   "x0": "x0", "y0": "y0"}  # fmt: skip
#: parameter field → RenderSettings field
SETTINGS_FIELDS = {"device": "device", "sampling": "method", "quality": "nSamples",
                   "boneContrast": "boneContrast", "displayMode": "displayMode"}  # fmt: skip
#: parameter field → NanoDRRWorkflow.setOverlay argument
OVERLAY_FIELDS = {"showOverlay": "show", "overlayMode": "mode", "overlayBlend": "blend"}
#: The parameter node's ranges for a pose read back from the C-arm.
POSE_RANGES = {"primaryAngle": (-180.0, 180.0), "secondaryAngle": (-90.0, 90.0), "sod": (100.0, 3000.0)}
#: Fields in the order they are pulled (each group's actions may depend on those before).
GROUPS = (
    ("inputs", ("inputVolume", "segmentation")),
    ("carm", ("carmTransform",)),
    ("pose", tuple(POSE_FIELDS)),
    ("detector", tuple(DETECTOR_FIELDS)),
    ("settings", tuple(SETTINGS_FIELDS)),
    ("segments", ("segmentIds", "renderSegments")),
    ("geometry", ("showGeometry",)),
    ("output", ("outputVolume",)),
    ("xray", ("xrayVolume",)),
    ("overlay", tuple(OVERLAY_FIELDS)),
    ("live", ("live",)),
)


def _key(value):
    """A comparable snapshot of a field: nodes by ID, enums by value, lists as tuples."""
    if hasattr(value, "GetID"):
        return ("node", value.GetID())
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    if isinstance(value, list):
        return tuple(value)
    return value


def _same(a, b) -> bool:
    """The same node (or both None), whichever Python wrapper holds it."""
    return _key(a) == _key(b)


def _plain(value):
    """A field as the workflow takes it (an enum member's value)."""
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str)) else value


class ParameterBinding:
    """Keeps ``parameters`` (a parameter node) and ``workflow`` in step; :meth:`close` unbinds."""

    def __init__(self, workflow: NanoDRRWorkflow, parameters) -> None:
        if not isinstance(workflow, NanoDRRWorkflow):
            raise NanoDRRError(f"workflow: expected a NanoDRRWorkflow, got {type(workflow).__name__}")
        self.workflow = workflow
        self.parameters = parameters
        self._synced: dict[str, object] = {}  # field → its value at the last sync
        self._pushed: dict[str, object] = {}  # field → the workflow's value for it at the last sync
        self._busy = False  # pulling or pushing: changes this binding makes are not the user's
        workflow.addListener(self._onChange)
        self._adopt()

    # --- parameter node → workflow ------------------------------------------------------------

    def _adopt(self) -> None:
        """First sync: a scene's saved parameters (inputs, C-arm, outputs) become the workflow's."""
        p, wf = self.parameters, self.workflow
        if wf.geometryModel is None and getattr(p, "geometryModel", None) is not None:
            wf.geometryModel = p.geometryModel
        if wf.overlayNode is None and getattr(p, "overlayVolume", None) is not None:
            wf.overlayNode = p.overlayVolume
        self.pull(force=True)

    def changedFields(self) -> set[str]:
        """Fields whose values differ from the last sync."""
        p = self.parameters
        return {
            name for _, names in GROUPS for name in names if _key(getattr(p, name)) != self._synced.get(name)
        }

    def pull(self, force: bool = False) -> None:
        """Apply the fields the user changed (every field with ``force``) to the workflow."""
        if self._busy:
            return
        changed = self.changedFields() if not force else {n for _, names in GROUPS for n in names}
        if not changed:
            return
        p, wf = self.parameters, self.workflow
        errors, refused = [], set()
        self._busy = True
        try:
            for group, names in GROUPS:
                if changed.isdisjoint(names):
                    continue
                try:
                    getattr(self, f"_pull_{group}")(p, wf, force)
                except NanoDRRError as e:
                    errors.append(e)
                    refused.update(names)
                for name in names:
                    self._synced[name] = _key(getattr(p, name))
        finally:
            self._busy = False
        # what the workflow made of it (a new C-arm, a clamped pose); refused fields get its values back
        self._push(refused if not force else {n for _, names in GROUPS for n in names})
        if errors:
            raise errors[0]

    def _pull_inputs(self, p, wf, force) -> None:
        if not _same(p.inputVolume, wf.volumeNode) or not _same(p.segmentation, wf.segmentationNode):
            wf.setInputs(p.inputVolume, p.segmentation if p.inputVolume is not None else None)

    def _pull_carm(self, p, wf, force) -> None:
        if not _same(p.carmTransform, wf.carmNode):
            wf.setCArmNode(p.carmTransform)  # the C-arm is the source of truth: its pose is read back

    def _pull_pose(self, p, wf, force) -> None:
        if force and wf.carmNode is not None:
            return  # a saved scene's C-arm keeps its pose (read back from it)
        values = {POSE_FIELDS[name]: float(getattr(p, name)) for name in POSE_FIELDS}
        current = {k: getattr(wf.pose, k) for k in values}
        if any(not math.isclose(values[k], current[k], abs_tol=1e-9) for k in values):
            wf.setPose(**values)

    def _pull_detector(self, p, wf, force) -> None:
        values = {DETECTOR_FIELDS[name]: getattr(p, name) for name in DETECTOR_FIELDS}
        if any(values[k] != getattr(wf.geometry, k) for k in values):
            wf.setDetector(**values)

    def _pull_settings(self, p, wf, force) -> None:
        values = {SETTINGS_FIELDS[name]: _plain(getattr(p, name)) for name in SETTINGS_FIELDS}
        if any(values[k] != getattr(wf.settings, k) for k in values):
            wf.setSettings(**values)

    def _pull_segments(self, p, wf, force) -> None:
        known = {sid for sid, _ in wf.segments()}
        ids = [sid for sid in p.segmentIds if sid in known]  # segments deleted since are dropped
        if ids != wf.segmentIds:
            wf.setSegmentIds(ids)
        enabled = bool(p.renderSegments) and wf.segmentationNode is not None
        if enabled != wf.renderSegments:
            wf.setRenderSegments(enabled)

    def _pull_geometry(self, p, wf, force) -> None:
        if bool(p.showGeometry) != wf.showGeometry or force:
            wf.setShowGeometry(bool(p.showGeometry))

    def _pull_output(self, p, wf, force) -> None:
        if not _same(p.outputVolume, wf.outputNode):
            wf.setOutputNode(p.outputVolume)

    def _pull_xray(self, p, wf, force) -> None:
        if not _same(p.xrayVolume, wf.xrayNode):
            wf.setXrayNode(p.xrayVolume)

    def _pull_overlay(self, p, wf, force) -> None:
        values = {OVERLAY_FIELDS[name]: _plain(getattr(p, name)) for name in OVERLAY_FIELDS}
        values["show"] = bool(values["show"])
        if force or values != wf.overlay:
            wf.setOverlay(**values)

    def _pull_live(self, p, wf, force) -> None:
        if bool(p.live) != wf.live:
            wf.setLive(bool(p.live))

    # --- workflow → parameter node ------------------------------------------------------------

    def _onChange(self, what: str) -> None:
        if not self._busy:
            self._push()

    def _push(self, force=()) -> None:
        """Copy what the workflow changed since the last sync (and the ``force`` fields) into the node.

        Only the workflow's changes: a field the user set that is not pulled yet keeps its value.
        """
        p, wf = self.parameters, self.workflow
        values = {
            "inputVolume": wf.volumeNode, "segmentation": wf.segmentationNode, "carmTransform": wf.carmNode,
            "outputVolume": wf.outputNode, "xrayVolume": wf.xrayNode, "geometryModel": wf.geometryModel,
            "overlayVolume": wf.overlayNode, "renderSegments": wf.renderSegments, "live": wf.live,
            "showGeometry": wf.showGeometry, "detectorPreset": wf.detectorPreset,
        }  # fmt: skip
        known = {sid for sid, _ in wf.segments()}
        if [sid for sid in p.segmentIds if sid in known] != wf.segmentIds:  # else keep deleted ones listed
            values["segmentIds"] = list(wf.segmentIds)
        for name, field in POSE_FIELDS.items():
            lo, hi = POSE_RANGES[name]
            values[name] = min(max(float(getattr(wf.pose, field)), lo), hi)
        for name, field in DETECTOR_FIELDS.items():
            values[name] = getattr(wf.geometry, field)
        for name, field in OVERLAY_FIELDS.items():
            values[name] = wf.overlay[field]
        for name, field in SETTINGS_FIELDS.items():
            if name != "sampling":  # an enum: set only when it differs in value
                values[name] = getattr(wf.settings, field)
        if _plain(p.sampling) != wf.settings.method:
            values["sampling"] = type(p.sampling)(wf.settings.method)
        changed = {
            name: v for name, v in values.items() if name in force or _key(v) != self._pushed.get(name)
        }
        self._pushed.update({name: _key(v) for name, v in values.items()})
        writes = {name: v for name, v in changed.items() if _key(getattr(p, name)) != _key(v)}
        self._busy = True
        try:
            if writes:
                wasModifying = p.StartModify() if hasattr(p, "StartModify") else None
                try:
                    for name, value in writes.items():
                        try:
                            setattr(p, name, value)
                        except ValueError as e:  # outside the field's range (the workflow's value stands)
                            _log.warning("NanoDRR: parameter %s cannot hold %r: %s", name, value, e)
                finally:
                    if wasModifying is not None:
                        p.EndModify(wasModifying)
            for name in writes:
                self._synced[name] = _key(getattr(p, name))
        finally:
            self._busy = False

    def close(self) -> None:
        """Stop following the workflow (the parameter node and the workflow stay as they are)."""
        self.workflow.removeListener(self._onChange)


__all__ = [
    "DETECTOR_FIELDS",
    "GROUPS",
    "OVERLAY_FIELDS",
    "POSE_FIELDS",
    "SETTINGS_FIELDS",
    "ParameterBinding",
]
