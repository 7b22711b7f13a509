"""Property-based tests (Hypothesis) of the engine's validation contract (issue 13, "Beyond the list").

Random bad values for the public functions' parameters (``render``, ``DRR``, ``make_k_inv``,
``make_rt_inv``, ``carm_to_rt_inv``, ``rt_inv_to_carm``, ``Subject.from_array``) must raise ValueError
or TypeError whose message names the parameter, and must leave the inputs (the subject's buffers and
μ parameters, the pose and intrinsics tensors) as they were.

Fast and reproducible for CI: ``derandomize=True``, no example database, renders of at most 8×8
pixels. ``REFUSED`` lists single cases the properties do not draw (NumPy bools, overflowing detector
sides, assignment to a ``DRR``, devices); ``ACCEPTED`` the valid look-alikes that must keep working.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nanodrr_engine import DRR, Subject, carm_to_rt_inv, make_k_inv, make_rt_inv, render, rt_inv_to_carm

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INTRINSICS = dict(sdd=1020.0, delx=6.0, dely=6.0, x0=0.0, y0=0.0, height=8, width=8)
V2W = np.array([[5.0, 0, 0, -20.0], [0, 4.0, 0, 10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1.0]])


def _volume() -> np.ndarray:
    a = np.full((9, 10, 11), -1000.0, np.float32)
    a[2:7, 2:8, 2:9] = 0.0
    return a


@pytest.fixture(scope="module")
def scene():
    label = np.zeros((9, 10, 11), np.int64)
    label[3:6, 3:7, 3:8] = 1
    subject = Subject.from_array(_volume(), V2W, label)
    k_inv = make_k_inv(**INTRINSICS)
    rt_inv = make_rt_inv(torch.zeros(3), torch.tensor([0.0, 850.0, 0.0]), "AP", subject.isocenter)
    return subject, k_inv, rt_inv


def _digest(*things) -> str:
    h = hashlib.sha256()
    for t in things:
        if isinstance(t, Subject):
            for name, buf in sorted(t.named_buffers()):
                h.update(name.encode())
                h.update(buf.detach().cpu().contiguous().numpy().tobytes())
            h.update(repr((t.mu_water, t.mu_bone, t.hu_bone, t.convert_to_mu, t.n_classes)).encode())
        elif isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


def assertRefused(call, name, *inputs):
    before = _digest(*inputs)
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert name in str(info.value), f"{type(info.value).__name__}: {info.value} does not name {name!r}"
    assert _digest(*inputs) == before, "a refused call changed its inputs"


def _signed(strategy):
    return st.tuples(strategy, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])


NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
HUGE = _signed(st.floats(min_value=3.5e38, max_value=1e308))  # inf in float32
NOT_POSITIVE = st.one_of(st.floats(min_value=-1e30, max_value=0.0), st.integers(-(10**6), 0))
NOT_WHOLE = st.floats(min_value=0.01, max_value=1e5).filter(lambda v: not v.is_integer())
ANY_BAD_TYPE = st.sampled_from([True, False, np.True_, "8", "abc", 1j, None, [8], object()])
NOT_CHOICES = st.one_of(
    st.text(max_size=8), st.sampled_from([0, 1.5, None, b"auto", ("auto",), ["auto"], {"auto": 1}])
)
NOT_BOOLS = st.sampled_from(["yes", "no", "", 0, 1, 1.0, None, [True], torch.tensor(True), np.array([True])])
OVERFLOWING_PIXELS = st.sampled_from([2**31, 1e300, 10**400, np.float64(1e20)])


def positiveBad():
    """What make_k_inv's sdd/delx/dely (and render's sdd) refuse by name today."""
    return st.one_of(NON_FINITE, HUGE, NOT_POSITIVE, _signed(st.floats(min_value=1e-300, max_value=1e-46)))


def pixelsBad():
    return st.one_of(NON_FINITE, NOT_POSITIVE, NOT_WHOLE, ANY_BAD_TYPE, OVERFLOWING_PIXELS)


NOT_SCALARS = st.sampled_from([True, np.True_, "1", "abc", 1j, None, [1.0], np.array([1.0]), object()])
OFFSET_BAD = st.one_of(NON_FINITE, HUGE, NOT_SCALARS)
K_INV_PARAMS = {
    "sdd": st.one_of(positiveBad(), NOT_SCALARS),
    "delx": st.one_of(positiveBad(), NOT_SCALARS),
    "dely": st.one_of(positiveBad(), NOT_SCALARS),
    "x0": OFFSET_BAD,
    "y0": OFFSET_BAD,
    "height": pixelsBad(),
    "width": pixelsBad(),
}


@pytest.mark.parametrize("name", sorted(K_INV_PARAMS))
@FAST
@given(data=st.data())
def test_make_k_inv_and_drr_name_every_bad_intrinsic(name, data):
    value = data.draw(K_INV_PARAMS[name], label=name)
    kwargs = {**INTRINSICS, name: value}
    assertRefused(lambda: make_k_inv(**kwargs), name)
    assertRefused(lambda: DRR.from_carm_intrinsics(**kwargs), name)


def renderParams():
    return {
        "subject": st.sampled_from([None, 3, "subject", _volume(), torch.zeros(9, 10, 11)]),
        "k_inv": st.one_of(
            st.sampled_from(["k", None, torch.zeros(3), torch.zeros(2, 2), torch.full((3, 3), math.nan)]),
        ),
        "rt_inv": st.one_of(
            st.sampled_from(["pose", None, torch.zeros(4), torch.eye(3), torch.full((4, 4), math.inf)]),
            st.floats(min_value=1.01, max_value=10).map(
                lambda s: torch.diag(torch.tensor([s, 1.0, 1.0, 1.0]))
            ),
        ),
        "sdd": positiveBad(),
        "height": pixelsBad(),
        "width": pixelsBad(),
        "n_samples": st.one_of(NOT_POSITIVE, NOT_WHOLE, ANY_BAD_TYPE, st.sampled_from([8.0, np.float32(8)])),
        "backend": NOT_CHOICES.filter(lambda v: v not in ("auto", "numba", "torch", "triton")),
        "method": NOT_CHOICES.filter(lambda v: v not in ("raymarch", "joseph")),
        "progress": st.sampled_from([0, "print", [print], 1.5]),
        "soft_labels": NOT_BOOLS,
        "orthographic": NOT_BOOLS,
    }


@pytest.mark.parametrize("name", sorted(renderParams()))
@FAST
@given(data=st.data())
def test_render_names_every_bad_parameter_and_leaves_its_inputs(scene, name, data):
    subject, k_inv, rt_inv = scene
    value = data.draw(renderParams()[name], label=name)
    kwargs = dict(subject=subject, k_inv=k_inv, rt_inv=rt_inv, sdd=1020.0, height=8, width=8, n_samples=4)
    kwargs[name] = value
    assertRefused(lambda: render(**kwargs), name, subject, k_inv, rt_inv)


FORWARD_PARAMS = {
    "rt_inv": renderParams()["rt_inv"],
    "n_samples": renderParams()["n_samples"],
    "backend": renderParams()["backend"],
    "method": renderParams()["method"],
    "progress": renderParams()["progress"],
    "subject": renderParams()["subject"],
    "soft_labels": NOT_BOOLS,
}


@pytest.mark.parametrize("name", sorted(FORWARD_PARAMS))
@FAST
@given(data=st.data())
def test_drr_forward_names_every_bad_parameter_and_leaves_its_inputs(scene, name, data):
    subject, _, rt_inv = scene
    drr = DRR.from_carm_intrinsics(**INTRINSICS)
    value = data.draw(FORWARD_PARAMS[name], label=name)
    kwargs = dict(subject=subject, rt_inv=rt_inv, n_samples=4)
    kwargs[name] = value
    assertRefused(lambda: drr(**kwargs), name, subject, rt_inv, drr.k_inv, drr.tgt)


MATRIX_BAD = st.one_of(
    st.sampled_from(
        ["abc", None, object(), [True, False, True], np.zeros(3, np.complex64), torch.ones(3).bool()]
    ),
    st.sampled_from([torch.zeros(2), torch.zeros(4), np.zeros((3, 2))]),
    st.tuples(st.integers(0, 2), NON_FINITE).map(lambda t: [t[1] if i == t[0] else 0.0 for i in range(3)]),
)
RT_PARAMS = {
    "rotation": MATRIX_BAD,
    "translation": MATRIX_BAD,
    "orientation": NOT_CHOICES.filter(lambda v: v not in ("AP", "PA") and v is not None),
    "isocenter": MATRIX_BAD.filter(lambda v: v is not None),  # None: no isocenter, valid
}


@pytest.mark.parametrize("name", sorted(RT_PARAMS))
@FAST
@given(data=st.data())
def test_make_rt_inv_names_every_bad_parameter(name, data):
    value = data.draw(RT_PARAMS[name], label=name)
    kwargs = dict(rotation=[0.0, 0.0, 0.0], translation=[0.0, 850.0, 0.0], orientation="AP", isocenter=None)
    kwargs[name] = value
    assertRefused(lambda: make_rt_inv(**kwargs), name)


ANGLE_BAD_TYPES = st.sampled_from([True, "10", 1j, None, object(), [True]])
CARM_PARAMS = {
    "primary": st.one_of(
        NON_FINITE,
        ANGLE_BAD_TYPES,
        _signed(st.floats(min_value=180.0, max_value=1e300, exclude_min=True)),
        st.floats(min_value=180.0, max_value=1e6, exclude_min=True).map(
            lambda p: torch.tensor([0.0, p], dtype=torch.float64)
        ),
    ),
    "secondary": st.one_of(
        NON_FINITE,
        ANGLE_BAD_TYPES,
        _signed(st.floats(min_value=90.0, max_value=1e300, exclude_min=True)),
    ),
    "sod": st.one_of(NON_FINITE, HUGE, NOT_POSITIVE, st.sampled_from([True, "850", None])),
}


@pytest.mark.parametrize("name", sorted(CARM_PARAMS))
@FAST
@given(data=st.data())
def test_carm_to_rt_inv_names_every_bad_angle(name, data):
    value = data.draw(CARM_PARAMS[name], label=name)
    kwargs = dict(primary=10.0, secondary=-20.0, sod=850.0)
    kwargs[name] = value
    assertRefused(lambda: carm_to_rt_inv(**kwargs), name)


@FAST
@given(primary=st.floats(-180.0, 180.0), secondary=st.floats(-90.0, 90.0), sod=st.floats(1.0, 5000.0))
def test_rt_inv_to_carm_inverts_carm_to_rt_inv(primary, secondary, sod):
    iso = np.array([3.0, -7.0, 11.0])
    rt = carm_to_rt_inv(primary, secondary, sod, iso)
    p, s, d = rt_inv_to_carm(rt, iso)
    assert (-180.0 < p <= 180.0) and (-90.0 <= s <= 90.0)
    assert s == pytest.approx(secondary, abs=1e-9) and d == pytest.approx(sod, rel=1e-12)
    assert math.remainder(p - primary, 360.0) == pytest.approx(0.0, abs=1e-9)  # −180 reads as 180
    torch.testing.assert_close(carm_to_rt_inv(p, s, d, iso), rt, atol=1e-9 * max(1.0, sod), rtol=0)


@FAST
@given(
    m=st.one_of(
        st.sampled_from(
            ["pose", None, torch.zeros(4, 4), torch.eye(3), torch.eye(4).bool(), torch.zeros(2, 4, 4)]
        ),
        st.floats(min_value=1.01, max_value=10).map(lambda s: torch.diag(torch.tensor([1.0, s, 1.0, 1.0]))),
        NON_FINITE.map(
            lambda v: torch.eye(4).index_put_((torch.tensor([0]), torch.tensor([3])), torch.tensor(v))
        ),
    )
)
def test_rt_inv_to_carm_names_a_bad_matrix(m):
    assertRefused(lambda: rt_inv_to_carm(m), "rt_inv")


SUBJECT_PARAMS = {
    "volume": st.sampled_from(
        [np.zeros((9, 10)), np.zeros((0, 4, 4)), np.zeros((9, 10, 11), bool), np.zeros((9, 10, 11), complex)]
    ).map(lambda v: v)
    | st.sampled_from([math.nan, math.inf]).map(lambda v: np.full((9, 10, 11), v, np.float32))
    | st.sampled_from(["ct.nii", None, object(), np.full((2, 2, 2), "a"), np.full((2, 2, 2), None)]),
    "voxel_to_world": st.sampled_from(
        [
            *(
                "abc",
                None,
                np.zeros((4, 4)),
                np.eye(3),
                np.diag([1.0, 1.0, 0.0, 1.0]),
                np.full((4, 4), np.nan),
            ),
            *(np.eye(4, dtype=bool), torch.eye(4).bool(), np.eye(4, dtype=complex), np.full((4, 4), "1")),
        ]
    ),
    "label": st.sampled_from(
        [np.full((9, 10, 11), 1.5), np.full((9, 10, 11), -1), np.zeros((9, 10, 12), np.int32)]
    ),
    "mu_water": st.one_of(NON_FINITE, HUGE, NOT_POSITIVE),
    "mu_bone": st.one_of(NON_FINITE, HUGE, NOT_POSITIVE),
    "hu_bone": st.one_of(NON_FINITE, HUGE, NOT_POSITIVE),
    "max_label": st.one_of(
        st.integers(-(10**6), -1),
        NOT_WHOLE,
        NON_FINITE,
        OVERFLOWING_PIXELS,
        ANY_BAD_TYPE.filter(lambda v: v is not None),
    ),
    "convert_to_mu": NOT_BOOLS,
}


@pytest.mark.parametrize("name", sorted(SUBJECT_PARAMS))
@FAST
@given(data=st.data())
def test_subject_from_array_names_every_bad_parameter(name, data):
    value = data.draw(SUBJECT_PARAMS[name], label=name)
    kwargs = dict(volume=_volume(), voxel_to_world=V2W)
    kwargs[name] = value
    assertRefused(lambda: Subject.from_array(**kwargs), name)


# Single cases the properties above do not draw, each once a gap of issue 13 (defects 6/7).
REFUSED = {  # case: (the parameter the error must name, the call)
    "make_k_inv height=np.True_ (NumPy bools)": (
        "height",
        lambda s: make_k_inv(**{**INTRINSICS, "height": np.True_}),
    ),
    "make_k_inv sdd=np.True_": ("sdd", lambda s: make_k_inv(**{**INTRINSICS, "sdd": np.True_})),
    "make_k_inv x0=1e300 (k_inv overflows float32)": (
        "x0",
        lambda s: make_k_inv(**{**INTRINSICS, "x0": 1e300}),
    ),
    "make_k_inv y0=[1.0] (TypeError without the name)": (
        "y0",
        lambda s: make_k_inv(**{**INTRINSICS, "y0": [1.0]}),
    ),
    "make_k_inv width=1e300 (k_inv overflows float32)": (
        "width",
        lambda s: make_k_inv(**{**INTRINSICS, "width": 1e300}),
    ),
    "make_k_inv height=10**400 (beyond float64)": (
        "height",
        lambda s: make_k_inv(**{**INTRINSICS, "height": 10**400}),
    ),
    "make_k_inv dtype='float32' (AttributeError)": (
        "dtype",
        lambda s: make_k_inv(**INTRINSICS, dtype="float32"),
    ),
    "make_k_inv dtype=torch.int32 (a truncated K⁻¹)": (
        "dtype",
        lambda s: make_k_inv(**INTRINSICS, dtype=torch.int32),
    ),
    "make_k_inv device='tpu' (RuntimeError)": ("device", lambda s: make_k_inv(**INTRINSICS, device="tpu")),
    "render sdd=True": ("sdd", lambda s: render(s[0], s[1], s[2], True, 8, 8, 4)),
    "render sdd=np.True_": ("sdd", lambda s: render(s[0], s[1], s[2], np.True_, 8, 8, 4)),
    "render sdd='1020' (TypeError without the name)": (
        "sdd",
        lambda s: render(s[0], s[1], s[2], "1020", 8, 8, 4),
    ),
    "render k_inv all zero (defect 7: a zero image)": (
        "k_inv",
        lambda s: render(s[0], torch.zeros(3, 3), s[2], 1020.0, 8, 8, 4),
    ),
    "render k_inv of bools": ("k_inv", lambda s: render(s[0], torch.eye(3).bool(), s[2], 1020.0, 8, 8, 4)),
    "render soft_labels='yes'": (
        "soft_labels",
        lambda s: render(s[0], s[1], s[2], 1020.0, 8, 8, 4, soft_labels="yes"),
    ),
    "render orthographic='no'": (
        "orthographic",
        lambda s: render(s[0], s[1], s[2], 1020.0, 8, 8, 4, orthographic="no"),
    ),
    "render backend=['auto'] (unhashable: TypeError without the name)": (
        "backend",
        lambda s: render(s[0], s[1], s[2], 1020.0, 8, 8, 4, backend=["auto"]),
    ),
    "render backend={} (unhashable)": (
        "backend",
        lambda s: render(s[0], s[1], s[2], 1020.0, 8, 8, 4, backend={}),
    ),
    "DRR(height='8')": ("height", lambda s: DRR(s[1], torch.tensor([1020.0]), "8", 8)),
    "DRR(width=True)": ("width", lambda s: DRR(s[1], torch.tensor([1020.0]), 8, True)),
    "DRR(sdd=nan)": ("sdd", lambda s: DRR(s[1], torch.tensor([math.nan]), 8, 8)),
    "DRR(k_inv='x') (TypeError without the name)": (
        "k_inv",
        lambda s: DRR("x", torch.tensor([1020.0]), 8, 8),
    ),
    "DRR(k_inv=[3, 3] of zeros)": ("k_inv", lambda s: DRR(torch.zeros(3, 3), torch.tensor([1020.0]), 8, 8)),
    "DRR(orthographic='no')": ("orthographic", lambda s: DRR(s[1], torch.tensor([1020.0]), 8, 8, "no")),
    "DRR.width = '8' (assignment re-validates)": (
        "width",
        lambda s: setattr(DRR(s[1], torch.tensor([1020.0]), 8, 8), "width", "8"),
    ),
    "DRR.orthographic = 'no' (assignment)": (
        "orthographic",
        lambda s: setattr(DRR(s[1], torch.tensor([1020.0]), 8, 8), "orthographic", "no"),
    ),
    "DRR.from_carm_intrinsics(device='tpu') (RuntimeError)": (
        "device",
        lambda s: DRR.from_carm_intrinsics(**INTRINSICS, device="tpu"),
    ),
    "DRR.from_carm_intrinsics(device=0.5)": (
        "device",
        lambda s: DRR.from_carm_intrinsics(**INTRINSICS, device=0.5),
    ),
    "DRR.from_carm_intrinsics(orthographic='no')": (
        "orthographic",
        lambda s: DRR.from_carm_intrinsics(**INTRINSICS, orthographic="no"),
    ),
    "Subject convert_to_mu='no'": (
        "convert_to_mu",
        lambda s: Subject.from_array(_volume(), V2W, convert_to_mu="no"),
    ),
    "Subject.convert_to_mu = 'no' (assignment)": (
        "convert_to_mu",
        lambda s: setattr(s[0], "convert_to_mu", "no"),
    ),
    "Subject max_label=2.5": ("max_label", lambda s: Subject.from_array(_volume(), V2W, max_label=2.5)),
    "Subject max_label='3'": ("max_label", lambda s: Subject.from_array(_volume(), V2W, max_label="3")),
    "Subject max_label=True": ("max_label", lambda s: Subject.from_array(_volume(), V2W, max_label=True)),
    "Subject.with_labels max_label=2.5": ("max_label", lambda s: s[0].with_labels(None, max_label=2.5)),
    "Subject voxel_to_world of bools": (
        "voxel_to_world",
        lambda s: Subject.from_array(_volume(), np.eye(4, dtype=bool)),
    ),
    "Subject volume of strings (TypeError without the name)": (
        "volume",
        lambda s: Subject.from_array(np.full((2, 2, 2), "a"), V2W),
    ),
    "Subject label of strings": (
        "label",
        lambda s: Subject.from_array(_volume(), V2W, np.full((9, 10, 11), "1")),
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_single_bad_values_are_refused_by_name(scene, case):
    name, call = REFUSED[case]
    subject, k_inv, rt_inv = scene
    assertRefused(lambda: call(scene), name, subject, k_inv, rt_inv)


# Valid look-alikes of the refused values: the checks must not refuse these.
ACCEPTED = {
    "NumPy sizes and offsets": lambda s: make_k_inv(
        np.float32(1020.0), np.float64(6.0), 6, np.int64(1), np.array(-2.0), np.int32(8), 8.0
    ),
    "0-d tensors": lambda s: make_k_inv(
        torch.tensor(1020.0), 6.0, 6.0, torch.tensor(0.0), 0.0, torch.tensor(8), 8
    ),
    "device='cpu' and torch.device": lambda s: (
        DRR.from_carm_intrinsics(**INTRINSICS, device="cpu"),
        make_k_inv(**INTRINSICS, device=torch.device("cpu"), dtype=torch.float64),
    ),
    "NumPy bools as flags": lambda s: render(
        s[0], s[1], s[2], 1020.0, 8, 8, 4, soft_labels=np.False_, orthographic=np.True_
    ),
    "DRR(orthographic=np.True_) and a list k_inv": lambda s: DRR(s[1][0].tolist(), [1020.0], 8, 8, np.True_),
    "max_label 3.0 and np.int64(3)": lambda s: (
        Subject.from_array(_volume(), V2W, max_label=3.0),
        Subject.from_array(_volume(), V2W, max_label=np.int64(3)),
    ),
    "convert_to_mu=np.False_": lambda s: Subject.from_array(_volume(), V2W, convert_to_mu=np.False_),
    "a bool labelmap": lambda s: Subject.from_array(_volume(), V2W, np.zeros((9, 10, 11), bool)),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_look_alikes_are_accepted(scene, case):
    ACCEPTED[case](scene)


def test_accepted_values_mean_what_they_say(scene):
    """NumPy numbers give the same K⁻¹ as floats, and a NumPy True is orthographic (parallel rays)."""
    want = make_k_inv(**INTRINSICS)
    got = make_k_inv(np.float32(1020.0), np.float64(6.0), 6, np.int64(0), np.array(0.0), np.int32(8), 8.0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    drr = DRR.from_carm_intrinsics(**INTRINSICS, orthographic=np.True_)
    assert drr.orthographic is True
    dirs = drr.tgt - drr.src
    torch.testing.assert_close(dirs, dirs[:, :1].expand_as(dirs))  # every ray parallel to the first
    assert Subject.from_array(_volume(), V2W, max_label=3.0).n_classes == 4
    assert Subject.from_array(_volume(), V2W, convert_to_mu=np.False_).convert_to_mu is False
