"""Property-based tests (Hypothesis) of the logic's validation contract (issue 13, "Beyond the list").

For every public parameter of ``render``, ``renderSegments``, ``createCArmTransform``,
``setCArmAngles``, ``getCArmAngles``, ``CArmGeometry`` and the ``LiveRenderController`` constructor,
random bad values (wrong types, bools, strings, complex, NaN/inf, beyond float32, out of range, wrong
node classes, nodes from another scene or removed from theirs) must raise :class:`NanoDRRError`
naming the parameter and leave both scenes byte-for-byte as they were (``scene_snapshot``).

Fast and reproducible for CI: a few dozen examples per parameter, ``derandomize=True`` and no example
database; the scene is built once per module (each refused call must leave it as it was anyway).
Valid renders here are 8×8 pixels of a 9×10×11 volume.

Left out: huge but finite work (``nSamples`` from 10**6 up to float32's range), which the work budget
refuses (``test_slicer_budget.py``); drawing it here would cost a budget estimate per example only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import slicer
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from NanoDRRLib import CArmGeometry, LiveRenderController, NanoDRRError, NanoDRRLogic
from scene_snapshot import sceneSnapshot, snapshotDiff
from slicer_testutils import addSegmentation, addTransform, addVolume, affine, rotation

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLOAT32_MAX = float(np.finfo(np.float32).max)
GEOMETRY = CArmGeometry(sdd=1020.0, height=8, width=8, delx=6.0, dely=6.0)
SHAPE = (9, 10, 11)
IJK = affine((5.0, 4.0, 3.0), (-20.0, 10.0, 5.0), rotation(5.0, -10.0, 15.0))


def _ct() -> np.ndarray:
    a = np.full(SHAPE, -1000.0, np.float32)
    a[2:7, 2:8, 2:9] = 0.0
    a[4:6, 4:6, 4:7] = 1000.0
    return a


@dataclass
class World:
    scene: object
    other: object
    logic: NanoDRRLogic
    ct: object
    carm: object
    seg: object
    segIds: dict
    drr: object
    parts: dict
    spare: object  # a plain scalar volume usable as an output
    pools: dict = field(default_factory=dict)

    def snapshot(self):
        return sceneSnapshot(self.scene), sceneSnapshot(self.other)


@pytest.fixture(scope="module")
def world():
    scene, other = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()
    logic = NanoDRRLogic()
    ct = addVolume(scene, _ct(), IJK, "ct")
    carm = logic.createCArmTransform(ct)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:7, 2:8, 2:9] = 1
    inner = np.zeros(SHAPE, np.uint8)
    inner[4:6, 4:6, 4:7] = 1
    seg, segIds = addSegmentation(scene, {"body": mask, "bone": inner}, IJK, name="seg")
    drr = logic.render(ct, carm, GEOMETRY, nSamples=4)
    parts = logic.renderSegments(ct, carm, GEOMETRY, seg, nSamples=4)
    spare = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "spare")

    def removed(cls, name):
        node = scene.AddNewNodeByClass(cls, name)
        scene.RemoveNode(node)  # the Python object lives on, outside any scene
        return node

    # wrong classes, broken volumes and transforms, all made once
    lab = addVolume(scene, mask, IJK, "labels", "vtkMRMLLabelMapVolumeNode")
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vec, np.zeros((*SHAPE, 3), np.float32))
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    nanCT = addVolume(scene, np.where(_ct() > 500, np.nan, _ct()).astype(np.float32), IJK, "nan voxels")
    nanOrigin = addVolume(scene, _ct(), IJK, "nan origin")
    nanOrigin.SetOrigin(0.0, float("nan"), 0.0)
    hugeOrigin = addVolume(scene, _ct(), IJK, "huge origin")
    hugeOrigin.SetOrigin(1e300, 0.0, 0.0)
    flat = addTransform(scene, np.diag([1.0, 0.0, 1.0, 1.0]), "flat")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    squashedCT = addVolume(scene, _ct(), IJK, "squashed ct")
    squashedCT.SetAndObserveTransformNodeID(flat.GetID())
    warpedCT = addVolume(scene, _ct(), IJK, "warped ct")
    warpedCT.SetAndObserveTransformNodeID(grid.GetID())
    scaled = addTransform(scene, np.diag([2.0, 2.0, 2.0, 1.0]), "scaled")
    iso = logic.isocenter(ct)
    atIso = addTransform(scene, affine((1, 1, 1), iso), "source on the isocenter")
    behind = addTransform(
        scene, affine((1, 1, 1), iso + np.array([0.0, 0.0, 5000.0])), "beam away from the CT"
    )
    carmFlatParent = addTransform(scene, np.eye(4), "carm under flat")
    carmFlatParent.SetAndObserveTransformNodeID(flat.GetID())
    carmWarpParent = addTransform(scene, np.eye(4), "carm under warp")
    carmWarpParent.SetAndObserveTransformNodeID(grid.GetID())
    outFlat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out under flat")
    outFlat.SetAndObserveTransformNodeID(flat.GetID())
    outWarp = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out under warp")
    outWarp.SetAndObserveTransformNodeID(grid.GetID())
    noSegments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segments")
    emptySeg, _ = addSegmentation(scene, {"nothing": np.zeros(SHAPE, np.uint8)}, IJK, name="empty segment")
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "model")
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "table")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "sequence")
    dti = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
    bspline = scene.AddNewNodeByClass("vtkMRMLBSplineTransformNode", "bspline")

    # the same roles in another scene
    ct2 = addVolume(other, _ct(), IJK, "foreign ct")
    carm2 = logic.createCArmTransform(ct2)
    seg2, _ = addSegmentation(other, {"body": mask}, IJK, name="foreign seg")
    out2 = other.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "foreign out")

    objects = [None, 0, 3.5, "ct", b"ct", object(), [ct], {"node": ct}, np.zeros(3)]
    notVolumes = [lab, vec, dti, empty, seg, carm, grid, model, markups, table, sequence]
    gone = [
        removed(cls, f"gone {i}")
        for i, cls in enumerate(("vtkMRMLScalarVolumeNode", "vtkMRMLLinearTransformNode"))
    ]
    goneSeg = removed("vtkMRMLSegmentationNode", "gone seg")
    pools = {
        "volume": [*objects, *notVolumes, ct2, nanCT, nanOrigin, hugeOrigin, squashedCT, warpedCT, gone[0]],
        "carm": [
            *objects,
            ct,
            seg,
            model,
            markups,
            grid,
            bspline,
            scaled,
            atIso,
            behind,
            carm2,
            carmWarpParent,
            gone[1],
        ],
        "segmentation": [
            0,
            "seg",
            object(),
            [seg],
            ct,
            lab,
            model,
            carm,
            noSegments,
            emptySeg,
            seg2,
            goneSeg,
        ],
        "output": [
            0,
            "out",
            object(),
            [spare],
            lab,
            vec,
            dti,
            model,
            seg,
            carm,
            ct,
            out2,
            outFlat,
            outWarp,
            gone[0],
        ],
        # for setCArmAngles, whose C-arm must be a linear transform node it can set
        "settableCarm": [
            None,
            0,
            "carm",
            object(),
            ct,
            seg,
            grid,
            bspline,
            carm2,
            carmFlatParent,
            carmWarpParent,
            gone[1],
        ],
    }
    # poses need only the volume's geometry: NaN voxels are fine there, and a foreign CT makes a foreign C-arm
    pools["poseVolume"] = [v for v in pools["volume"] if v is not nanCT]
    pools["createVolume"] = [v for v in pools["poseVolume"] if v is not ct2]
    pools["readableCarm"] = [
        c for c in pools["carm"] if c is not behind
    ]  # a pose away from the CT has angles
    w = World(scene, other, logic, ct, carm, seg, segIds, drr, parts, spare, pools)
    yield w
    scene.Clear(1)
    other.Clear(1)


# --- bad values ------------------------------------------------------------------------------------


def _signed(strategy):
    return st.tuples(strategy, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])


NOT_NUMBERS = st.one_of(
    st.booleans(),
    st.just(np.bool_(True)),
    st.from_regex(r"\A-?[0-9]{1,5}(\.[0-9]{1,3})?\Z"),  # numeric strings: never parsed
    st.sampled_from(["nan", "inf", "", "1e3", " 12 "]),
    st.text(max_size=5),
    st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=1e6).filter(
        lambda z: z.imag != 0
    ),
    st.lists(st.floats(-10, 10), min_size=1, max_size=3),
    st.sampled_from([None, object(), {"v": 1.0}, b"12", np.zeros(2), torch.zeros(2)]),
)
NON_FINITE_OR_OUT_OF_RANGE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, np.float64("nan")]),
    _signed(st.floats(min_value=FLOAT32_MAX * 1.001, max_value=1e308)),  # overflows float32
    _signed(st.floats(min_value=1e-300, max_value=1e-39)),  # underflows float32 to 0
    _signed(st.integers(min_value=10**39, max_value=10**400)),
)


def badNumbers(positive=False, integer=False, lo=None, hi=None, allowNone=False):
    """Values a numeric parameter must refuse (``allowNone``: None means "default" there)."""
    parts = [NOT_NUMBERS, NON_FINITE_OR_OUT_OF_RANGE]
    if allowNone:
        parts[0] = NOT_NUMBERS.filter(lambda v: v is not None)
    if positive:
        parts.append(st.floats(min_value=-1e30, max_value=0.0))
        parts.append(st.integers(min_value=-(10**6), max_value=0))
    if integer:
        parts.append(st.floats(min_value=0.01, max_value=1e5).filter(lambda v: not v.is_integer()))
    if lo is not None:
        parts.append(st.floats(min_value=-1e30, max_value=lo, exclude_max=True))
    if hi is not None:
        parts.append(st.floats(min_value=hi, max_value=1e30, exclude_min=True))
    return st.one_of(parts)


def badChoice(valid):
    return st.one_of(
        st.text(max_size=8).filter(lambda v: v not in valid),
        st.sampled_from([0, 1.5, True, b"raymarch", ["auto"], object()]),
    )


NOT_STRINGS = st.sampled_from([0, 1.5, True, b"name", ["name"], object()])
NOT_CALLABLES = st.sampled_from([0, "print", 1.5, [print], object()])
NOT_BOOLS = st.sampled_from([0, 1, "no", "", None, 1.0, [True]])


def badGeometries():
    """Not a CArmGeometry, a CArmGeometry with one bad field, or an absurd detector."""
    fields = {
        "sdd": badNumbers(positive=True),
        "delx": badNumbers(positive=True),
        "dely": badNumbers(positive=True),
        "x0": badNumbers(),
        "y0": badNumbers(),
        "height": badNumbers(positive=True, integer=True),
        "width": badNumbers(positive=True, integer=True),
    }
    oneField = st.sampled_from(sorted(fields)).flatmap(
        lambda f: fields[f].map(lambda v, f=f: CArmGeometry(**{**GEOMETRY.toDict(), f: v}))
    )
    absurd = st.one_of(
        _signed(st.floats(min_value=1e5, max_value=1e30)).map(
            lambda x: CArmGeometry(**{**GEOMETRY.toDict(), "x0": x})
        ),
        _signed(st.floats(min_value=1e5, max_value=1e30)).map(
            lambda y: CArmGeometry(**{**GEOMETRY.toDict(), "y0": y})
        ),
        st.floats(min_value=1e4, max_value=1e30).map(
            lambda d: CArmGeometry(**{**GEOMETRY.toDict(), "delx": d})
        ),
        st.floats(min_value=1e-30, max_value=10.0).map(
            lambda s: CArmGeometry(**{**GEOMETRY.toDict(), "sdd": s})
        ),
    )
    notGeometry = st.sampled_from(
        [None, 1020.0, "geometry", GEOMETRY.toDict(), tuple(GEOMETRY.toDict().values())]
    )
    return st.one_of(oneField, absurd, notGeometry)


def badSegmentIds(world):
    valid = set(world.segIds.values())
    return st.one_of(
        st.integers(-5, 5),
        st.floats(allow_nan=True),
        st.sampled_from([[None], [1, 2], [], (), b"seg", {"a": 1}, object(), [["x"]]]),
        st.text(max_size=10).filter(lambda v: v not in valid),
        st.lists(st.text(max_size=6).filter(lambda v: v not in valid), min_size=1, max_size=3),
    )


def badOutputNodes(world):
    a, b = world.segIds["body"], world.segIds["bone"]
    return st.one_of(
        st.sampled_from([[world.spare], (world.spare,), "spare", 3, world.spare, object()]),
        st.sampled_from(world.pools["output"]).map(lambda node: {a: node}),
        st.just({a: world.spare, b: world.spare}),  # one node for two segments
        st.just({a: world.parts[b], b: world.parts[b]}),
        st.text(max_size=8).filter(lambda k: k not in (a, b)).map(lambda k: {k: world.spare}),
        st.sampled_from([1, None, ("x",)]).map(lambda k: {k: world.spare}),
    )


VOLUME_NAMES = ("volumeNode", "carmNode")  # a foreign CT: the C-arm is then "not in the volume's scene"


def renderParameters(world, segments: bool):
    p = world.pools
    params = {
        "volumeNode": (st.sampled_from(p["volume"]), VOLUME_NAMES),
        "carmNode": (st.sampled_from(p["carm"]), ("carmNode",)),
        "geometry": (badGeometries(), ("geometry", "carmNode")),  # sdd below the C-arm's sod names both
        "nSamples": (badNumbers(positive=True, integer=True), ("nSamples",)),
        "device": (
            st.sampled_from(["tpu", "gpu", "cuda:x", "", "CPU:x", 3, 1.5, True, object(), ["cpu"], b"cpu"]),
            ("device",),
        ),
        "muBone": (badNumbers(positive=True, allowNone=True), ("muBone",)),
        "muWater": (badNumbers(positive=True, allowNone=True), ("muWater",)),
        "displayMode": (badChoice(("attenuation", "transmission")), ("displayMode",)),
        "backend": (badChoice(("auto", "numba", "triton", "torch")), ("backend",)),
        "method": (badChoice(("raymarch", "joseph")), ("method",)),
        "autoWindowLevel": (NOT_BOOLS, ("autoWindowLevel",)),
        "progressCallback": (NOT_CALLABLES, ("progressCallback",)),
        "segmentIds": (badSegmentIds(world), ("segmentIds",)),
    }
    if not torch.cuda.is_available():
        params["device"] = (st.one_of(params["device"][0], st.just("cuda")), ("device",))
    if segments:
        # a segmentation without the outputs' segments: outputNodes is named first
        params["segmentationNode"] = (
            st.sampled_from([None, *p["segmentation"]]),
            ("segmentationNode", "outputNodes"),
        )
        params["outputNodes"] = (badOutputNodes(world), ("outputNodes",))
        params["folderName"] = (NOT_STRINGS, ("folderName",))
    else:
        params["segmentationNode"] = (st.sampled_from(p["segmentation"]), ("segmentationNode",))
        params["outputNode"] = (st.sampled_from(p["output"]), ("outputNode",))
        params["name"] = (NOT_STRINGS, ("name",))
    return params


def assertRefused(world, call, names):
    before = world.snapshot()
    with pytest.raises(NanoDRRError) as info:
        call()
    message = str(info.value)
    assert any(n in message for n in names), f"{message!r} names none of {names}"
    after = world.snapshot()
    diff = snapshotDiff(before[0], after[0]) + snapshotDiff(before[1], after[1])
    assert not diff, diff


# --- properties ------------------------------------------------------------------------------------

RENDER_PARAMS = (
    "volumeNode carmNode geometry segmentationNode outputNode nSamples device muBone muWater displayMode "
    "segmentIds name autoWindowLevel backend method progressCallback"
).split()
SEGMENT_PARAMS = (
    "volumeNode carmNode geometry segmentationNode segmentIds nSamples device muBone muWater displayMode "
    "outputNodes folderName autoWindowLevel backend method progressCallback"
).split()


@pytest.mark.parametrize("param", RENDER_PARAMS)
@FAST
@given(data=st.data())
def test_render_refuses_every_bad_parameter_before_anything_changes(world, param, data):
    strategy, names = renderParameters(world, segments=False)[param]
    value = data.draw(strategy, label=param)
    kwargs = dict(
        volumeNode=world.ct, carmNode=world.carm, geometry=GEOMETRY, nSamples=4, outputNode=world.drr
    )
    if param == "segmentIds":
        kwargs["segmentationNode"] = world.seg
    kwargs[param] = value
    assertRefused(world, lambda: world.logic.render(**kwargs), names)


@pytest.mark.parametrize("param", SEGMENT_PARAMS)
@FAST
@given(data=st.data())
def test_render_segments_refuses_every_bad_parameter_before_anything_changes(world, param, data):
    strategy, names = renderParameters(world, segments=True)[param]
    value = data.draw(strategy, label=param)
    kwargs = dict(
        volumeNode=world.ct,
        carmNode=world.carm,
        geometry=GEOMETRY,
        segmentationNode=world.seg,
        nSamples=4,
        outputNodes=dict(world.parts),
    )
    kwargs[param] = value
    assertRefused(world, lambda: world.logic.renderSegments(**kwargs), names)


CREATE_PARAMS = {
    "volumeNode": (lambda w: st.sampled_from(w.pools["createVolume"]), ("volumeNode",)),
    "sod": (lambda w: badNumbers(positive=True), ("sod",)),
    "orientation": (lambda w: badChoice(("AP", "PA")).filter(lambda v: v is not None), ("orientation",)),
    "rotation": (
        lambda w: st.one_of(
            NOT_NUMBERS.filter(lambda v: not (isinstance(v, list) and len(v) == 3)),
            st.lists(st.floats(-90, 90), min_size=0, max_size=5).filter(lambda v: len(v) != 3),
            st.tuples(st.integers(0, 2), badNumbers()).map(
                lambda t: [t[1] if i == t[0] else 0.0 for i in range(3)]
            ),
        ),
        ("rotation",),
    ),
    "name": (lambda w: NOT_STRINGS, ("name",)),
}


@pytest.mark.parametrize("param", sorted(CREATE_PARAMS))
@FAST
@given(data=st.data())
def test_create_carm_refuses_every_bad_parameter_before_anything_changes(world, param, data):
    make, names = CREATE_PARAMS[param]
    value = data.draw(make(world), label=param)
    kwargs = dict(volumeNode=world.ct, sod=850.0, orientation="AP", rotation=(0.0, 0.0, 0.0), name=None)
    kwargs[param] = value
    assertRefused(world, lambda: world.logic.createCArmTransform(**kwargs), names)


SET_PARAMS = {
    "carmNode": (lambda w: st.sampled_from(w.pools["settableCarm"]), ("carmNode",)),
    "volumeNode": (lambda w: st.sampled_from(w.pools["poseVolume"]), VOLUME_NAMES),
    "primary": (lambda w: badNumbers(lo=-180.0, hi=180.0), ("primary",)),
    "secondary": (lambda w: badNumbers(lo=-90.0, hi=90.0), ("secondary",)),
    "sod": (lambda w: badNumbers(positive=True), ("sod",)),
}


@pytest.mark.parametrize("param", sorted(SET_PARAMS))
@FAST
@given(data=st.data())
def test_set_carm_angles_refuses_every_bad_parameter_before_anything_changes(world, param, data):
    make, names = SET_PARAMS[param]
    value = data.draw(make(world), label=param)
    kwargs = dict(carmNode=world.carm, volumeNode=world.ct, primary=10.0, secondary=-20.0, sod=850.0)
    kwargs[param] = value
    assertRefused(world, lambda: world.logic.setCArmAngles(**kwargs), names)


@pytest.mark.parametrize("param", ["carmNode", "volumeNode"])
@FAST
@given(data=st.data())
def test_get_carm_angles_refuses_bad_nodes_and_changes_nothing(world, param, data):
    pool = world.pools["readableCarm" if param == "carmNode" else "poseVolume"]
    value = data.draw(st.sampled_from(pool), label=param)
    kwargs = dict(carmNode=world.carm, volumeNode=world.ct)
    kwargs[param] = value
    assertRefused(
        world,
        lambda: world.logic.getCArmAngles(**kwargs),
        VOLUME_NAMES if param == "volumeNode" else (param,),
    )


GEOMETRY_FIELDS = {
    "sdd": badNumbers(positive=True),
    "delx": badNumbers(positive=True),
    "dely": badNumbers(positive=True),
    "x0": badNumbers(),
    "y0": badNumbers(),
    "height": badNumbers(positive=True, integer=True),
    "width": badNumbers(positive=True, integer=True),
}


@pytest.mark.parametrize("name", sorted(GEOMETRY_FIELDS))
@FAST
@given(data=st.data())
def test_carm_geometry_names_every_bad_field(name, data):
    value = data.draw(GEOMETRY_FIELDS[name], label=name)
    with pytest.raises(NanoDRRError, match=rf"^geometry\.{name}: "):
        CArmGeometry(**{**GEOMETRY.toDict(), name: value}).validate()
    with pytest.raises(NanoDRRError, match=r"^geometry\."):
        CArmGeometry(**{**GEOMETRY.toDict(), name: value}).scaled(0.5)


@FAST
@given(factor=badNumbers(positive=True), sod=badNumbers(positive=True))
def test_carm_geometry_scaled_and_sod_name_their_argument(factor, sod):
    with pytest.raises(NanoDRRError, match=r"^factor: "):
        GEOMETRY.scaled(factor)
    with pytest.raises(NanoDRRError, match=r"^sod: "):
        GEOMETRY.validate(sod=sod)


@FAST
@given(
    x0=_signed(st.floats(min_value=0.0, max_value=1e6).filter(lambda v: v == 0 or v > 1e-6)),
    width=st.integers(1, 4000),
)
def test_carm_geometry_accepts_exactly_the_detectors_within_80_degrees(x0, width):
    g = CArmGeometry(sdd=1000.0, height=4, width=width, delx=1.0, dely=1.0, x0=x0)
    # the corner rays, by hand: the farthest corner is |x0| + width/2 (columns), 2 (rows) from the axis
    tangent = math.hypot(abs(x0) + width / 2.0, 2.0) / 1000.0
    if math.degrees(math.atan(tangent)) <= 80.0 - 1e-9:
        assert g.validate() is g
    elif math.degrees(math.atan(tangent)) > 80.0 + 1e-9:
        with pytest.raises(NanoDRRError, match=r"^geometry: .*80° is allowed"):
            g.validate()


LIVE_PARAMS = {
    "schedule": (NOT_CALLABLES, ("schedule",)),
    "onRendered": (NOT_CALLABLES, ("onRendered",)),
    "onError": (NOT_CALLABLES, ("onError",)),
    "previewScale": (
        st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, 1j, object(), [0.5], "half"]),
            st.floats(max_value=0.0),
            st.floats(min_value=1.0, exclude_min=True, allow_infinity=False),
            # once parsed by float(): float(True) is 1.0, "0.5" a string, 1e-300 zero in float32
            st.sampled_from([True, False, np.True_, "0.5", b"0.5", 1e-300, -1e-300]),
            st.floats(min_value=1e-300, max_value=1e-39),
        ),
        ("previewScale",),
    ),
}


@pytest.mark.parametrize("param", sorted(LIVE_PARAMS))
@FAST
@given(data=st.data())
def test_live_controller_constructor_refuses_bad_settings(world, param, data):
    strategy, names = LIVE_PARAMS[param]
    value = data.draw(strategy, label=param)
    assertRefused(
        world,
        lambda: LiveRenderController(world.logic, world.ct, world.carm, GEOMETRY, **{param: value}),
        names,
    )


@pytest.mark.parametrize(
    "value", [True, np.True_, "0.5", 1e-300], ids=["True", "np.True_", "'0.5'", "1e-300 (zero in float32)"]
)
def test_live_controller_refuses_what_float_would_parse(world, value):
    """Once read with ``float()``: ``True`` was a full-resolution preview, ``"0.5"`` a half one."""
    assertRefused(
        world,
        lambda: LiveRenderController(world.logic, world.ct, world.carm, GEOMETRY, previewScale=value),
        ("previewScale",),
    )


@pytest.mark.parametrize(
    "value, want", [(None, 1.0), (1, 1.0), (np.float32(0.25), 0.25), (torch.tensor(0.5), 0.5)]
)
def test_live_controller_accepts_numeric_scales(world, value, want):
    live = LiveRenderController(world.logic, world.ct, world.carm, GEOMETRY, previewScale=value)
    assert type(live.previewScale) is float and live.previewScale == want


@pytest.mark.parametrize("param", ["volumeNode", "carmNode", "geometry", "outputNode", "nSamples", "muBone"])
@FAST
@given(data=st.data())
def test_live_controller_start_refuses_bad_render_input_and_stays_inactive(world, param, data):
    strategy, names = renderParameters(world, segments=False)[param]
    value = data.draw(strategy, label=param)
    kwargs = dict(
        volumeNode=world.ct, carmNode=world.carm, geometry=GEOMETRY, nSamples=4, outputNode=world.drr
    )
    kwargs[param] = value
    live = LiveRenderController(world.logic, **kwargs, schedule=lambda callback: None)
    assertRefused(world, live.start, names)
    assert not live.isActive
