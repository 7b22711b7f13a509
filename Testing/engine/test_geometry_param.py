"""``nanodrr_engine.geometry``: rotation parameterizations ↔ SE(3), against nanodrr 0.1.7 (values and
gradients, float64) and against independent constructions (elementary rotations, the matrix exponential,
round trips through every pair of parameterizations)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from nanodrr_engine.geometry import Parameterization, convert, to_parameters, transform_point
from nanodrr_engine.geometry.se3 import matrix_to_rotation, se3_exp_map, se3_log_map

F64 = torch.float64
INTRINSIC = ["".join(c) for c in itertools.product("XYZ", repeat=3) if c[0] != c[1] and c[1] != c[2]]
CONVENTIONS = INTRINSIC + [c.lower() for c in INTRINSIC]  # 12 Tait–Bryan/proper Euler, both kinds


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_rotation(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """Generic (non-degenerate) parameters of each kind."""
    if kind == "euler":
        return (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * 140.0  # degrees, away from gimbal lock
    if kind == "quaternion":
        return torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=F64), dim=-1)
    if kind == "quaternion_adjugate":
        return torch.randn(n, 10, generator=g, dtype=F64)
    if kind == "rotation_9d":
        return torch.randn(n, 9, generator=g, dtype=F64)
    v = torch.randn(n, 3, generator=g, dtype=F64)  # rotation vectors, |ω| in (0.3, 2.5)
    return v / v.norm(dim=-1, keepdim=True) * (0.3 + 2.2 * torch.rand(n, 1, generator=g, dtype=F64))


def elementary(axis: str, deg: float) -> torch.Tensor:
    """Right-handed rotation about a coordinate axis, written out by hand."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = {
        "X": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "Y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "Z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }[axis]
    return torch.tensor(m, dtype=F64)


def test_parameterization_names_and_dims_are_nanodrr_s():
    peer = pytest.importorskip("nanodrr.geometry")
    assert [p.value for p in Parameterization] == [p.value for p in peer.Parameterization]
    for p in Parameterization:
        assert p.dim == peer.Parameterization(p.value).dim
    assert Parameterization("so3_log") is Parameterization.SO3_LOG and Parameterization.EULER == "euler"


@pytest.mark.parametrize("kind", [p.value for p in Parameterization])
def test_convert_matches_nanodrr_values_and_gradients(kind):
    peer = pytest.importorskip("nanodrr.geometry")
    g = gen(1)
    conventions = ["ZXY", "xyz", "XZX", "zyz", "YXZ"] if kind == "euler" else [None]
    for convention, iso in itertools.product(
        conventions, [None, torch.tensor([3.0, -40.0, 12.5], dtype=F64)]
    ):
        rot = random_rotation(kind, 6, g)
        trans = torch.randn(6, 3, generator=g, dtype=F64) * 80.0
        weights = torch.randn(6, 4, 4, generator=g, dtype=F64)
        outs = []
        for fn in (convert, peer.convert):
            r, t = rot.clone().requires_grad_(), trans.clone().requires_grad_()
            pose = fn(r, t, kind, convention, isocenter=iso)
            (pose * weights).sum().backward()
            outs.append((pose.detach(), r.grad, t.grad))
        for ours, theirs in zip(*outs, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_rotation_9d_gradient_is_defined_at_a_rotation():
    # autograd through an SVD divides by differences of singular values (all 1 here); the projection's
    # derivative only needs their sums, as roma's (nanodrr's) hand-written one
    peer = pytest.importorskip("nanodrr.geometry")
    R = convert(torch.tensor([[0.3, -0.7, 1.1]], dtype=F64), torch.zeros(1, 3, dtype=F64), "so3_log")[
        :, :3, :3
    ]
    weights = torch.randn(1, 4, 4, generator=gen(2), dtype=F64)
    grads = []
    for fn in (convert, peer.convert):
        m = R.reshape(1, 9).clone().requires_grad_()
        (fn(m, torch.zeros(1, 3, dtype=F64), "rotation_9d") * weights).sum().backward()
        grads.append(m.grad)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("convention", INTRINSIC)
def test_euler_angles_are_products_of_elementary_rotations(convention):
    angles = (23.0, -41.0, 67.0)
    hand = elementary(convention[0], angles[0]) @ elementary(convention[1], angles[1])
    hand = hand @ elementary(convention[2], angles[2])
    t = torch.tensor([[5.0, -7.0, 11.0]], dtype=F64)
    got = convert(torch.tensor([angles], dtype=F64), t, "euler", convention)
    torch.testing.assert_close(got[0, :3, :3], hand, rtol=0, atol=1e-14)
    torch.testing.assert_close(got[0, :3, 3], hand @ t[0], rtol=0, atol=1e-12)  # t = R·translation
    torch.testing.assert_close(got[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64))
    # extrinsic (lower case) = the reversed intrinsic sequence with the angles reversed
    ext = convert(torch.tensor([angles[::-1]], dtype=F64), t, "euler", convention[::-1].lower())
    torch.testing.assert_close(ext[0, :3, :3], hand, rtol=0, atol=1e-14)
    # radians when asked
    rad = convert(torch.tensor([angles], dtype=F64) * math.pi / 180, t, "euler", convention, degrees=False)
    torch.testing.assert_close(rad, got, rtol=0, atol=1e-13)


def test_so3_and_se3_logs_are_the_matrix_exponential_including_zero_and_tiny_angles():
    # independent oracle: expm of the twist [[hat(ω), ρ], [0, 0]]. nanodrr 0.1.7's se3_log is NaN at
    # ω = 0 and off by ~5 mm at |ω| = 1e-3 rad (its V matrix clamps θ but not θ²); ours is exact there
    def twist(w, r):
        m = torch.zeros(4, 4, dtype=F64)
        m[0, 1], m[0, 2], m[1, 2] = -w[2], w[1], -w[0]
        m[1, 0], m[2, 0], m[2, 1] = w[2], -w[1], w[0]
        m[:3, 3] = r
        return m

    g = gen(3)
    rho = torch.tensor([20.0, 100.0, -35.0], dtype=F64)
    for size in (0.0, 1e-12, 1e-6, 1e-3, 0.02, 0.7, 3.0):
        axis = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=F64), dim=0)
        w = axis * size
        expm = torch.linalg.matrix_exp(twist(w, rho))
        torch.testing.assert_close(se3_exp_map(w[None], rho[None])[0], expm, rtol=1e-12, atol=1e-13)
        so3 = convert(w[None], rho[None], "so3_log")[0]
        torch.testing.assert_close(so3[:3, :3], expm[:3, :3], rtol=0, atol=1e-13)
        # gradients: against the (differentiable) matrix exponential, at these angles too
        wv = w.clone().requires_grad_()
        weights = torch.randn(4, 4, generator=g, dtype=F64)
        (se3_exp_map(wv[None], rho[None])[0] * weights).sum().backward()
        wr = w.clone().requires_grad_()
        (torch.linalg.matrix_exp(twist(wr, rho)) * weights).sum().backward()
        torch.testing.assert_close(wv.grad, wr.grad, rtol=1e-9, atol=1e-9)


def test_se3_log_map_inverts_the_exponential_and_matches_nanodrr():
    peer = pytest.importorskip("nanodrr.geometry.se3")
    g = gen(4)
    w = random_rotation("so3_log", 8, g)
    r = torch.randn(8, 3, generator=g, dtype=F64) * 50
    T = se3_exp_map(w, r)
    lw, lr = se3_log_map(T)
    torch.testing.assert_close(lw, w, rtol=0, atol=1e-12)
    torch.testing.assert_close(lr, r, rtol=0, atol=1e-10)
    pw, pr = peer.se3_log_map(T)
    torch.testing.assert_close(lw, pw, rtol=0, atol=1e-12)
    torch.testing.assert_close(lr, pr, rtol=0, atol=1e-10)


KINDS = [p.value for p in Parameterization]


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(KINDS, KINDS)))
def test_round_trips_between_every_pair_of_parameterizations(src, dst):
    g = gen(5)
    iso = torch.tensor([10.0, -4.0, 7.0], dtype=F64)
    conv = {"euler": "ZXY"}
    rot = random_rotation(src, 5, g)
    trans = torch.randn(5, 3, generator=g, dtype=F64) * 60
    pose = convert(rot, trans, src, conv.get(src), isocenter=iso)
    r2, t2 = to_parameters(pose, dst, conv.get(dst), isocenter=iso)
    assert r2.shape == (5, Parameterization(dst).dim)
    back = convert(r2, t2, dst, conv.get(dst), isocenter=iso)
    torch.testing.assert_close(back, pose, rtol=0, atol=1e-10)
    if src == dst and src in ("euler", "so3_log", "se3_log", "quaternion"):  # unique parameters
        sign = torch.where(rot[:, 3:] < 0, -1.0, 1.0).to(F64) if src == "quaternion" else 1.0
        torch.testing.assert_close(r2, rot * sign, rtol=0, atol=1e-9)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_euler_round_trips_for_every_convention_including_gimbal_lock(convention):
    g = gen(6)
    proper = convention[0].upper() == convention[2].upper()
    angles = random_rotation("euler", 10, g)
    if proper:  # the middle angle's principal range is [0°, 180°] there
        angles[:, 1] = angles[:, 1].abs() + 5.0
    R = convert(angles, torch.zeros(10, 3, dtype=F64), "euler", convention)[:, :3, :3]
    back = matrix_to_rotation(R, "euler", convention, degrees=True)
    torch.testing.assert_close(back, angles, rtol=0, atol=1e-9)
    # gimbal lock: the middle angle at ±90° (Tait–Bryan) or 0°/180° (proper Euler)
    lock = torch.tensor(
        [[30.0, 0.0 if proper else 90.0, 20.0], [-50.0, 180.0 if proper else -90.0, 10.0]], dtype=F64
    )
    R = convert(lock, torch.zeros(2, 3, dtype=F64), "euler", convention)[:, :3, :3]
    again = convert(
        matrix_to_rotation(R, "euler", convention, True), torch.zeros(2, 3, dtype=F64), "euler", convention
    )
    torch.testing.assert_close(again[:, :3, :3], R, rtol=0, atol=1e-12)


def test_quaternion_round_trip_near_180_degrees_and_identity():
    for angle in (0.0, 1e-9, math.pi - 1e-9, math.pi):
        w = torch.tensor([[0.6, -0.8, 0.0]], dtype=F64) * angle
        pose = convert(w, torch.zeros(1, 3, dtype=F64), "so3_log")
        for kind in ("quaternion", "so3_log", "quaternion_adjugate"):
            r, t = to_parameters(pose, kind)
            torch.testing.assert_close(convert(r, t, kind), pose, rtol=0, atol=1e-12)


def test_transform_point_matches_nanodrr_and_broadcasts():
    peer = pytest.importorskip("nanodrr.geometry")
    g = gen(7)
    x = torch.randn(3, 4, 4, generator=g, dtype=F64)
    for v in (torch.randn(3, 6, 3, generator=g, dtype=F64), torch.randn(1, 3, generator=g, dtype=F64)):
        torch.testing.assert_close(transform_point(x, v), peer.transform_point(x, v), rtol=1e-12, atol=1e-12)
    xs = x[:, None].expand(3, 5, 4, 4)
    v = torch.randn(3, 3, generator=g, dtype=F64)
    torch.testing.assert_close(transform_point(xs, v), peer.transform_point(xs, v), rtol=1e-12, atol=1e-12)


def test_transform_point_by_hand():
    pose = convert(torch.tensor([[90.0, 0.0, 0.0]], dtype=F64), torch.zeros(1, 3, dtype=F64), "euler", "ZXY")
    pose[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    p = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]], dtype=F64)  # Rz(90°): x → y
    torch.testing.assert_close(
        transform_point(pose, p), torch.tensor([[[1.0, 3.0, 3.0], [1.0, 2.0, 8.0]]], dtype=F64)
    )
    proj = torch.eye(4, dtype=F64)[None].clone()
    proj[0, 3] = torch.tensor([0.0, 0.0, 0.5, 0.0], dtype=F64)  # w = z / 2
    torch.testing.assert_close(
        transform_point(proj, torch.tensor([[2.0, 4.0, 8.0]], dtype=F64)),
        torch.tensor([[0.5, 1.0, 2.0]], dtype=F64),
    )


def test_bad_input_is_named():
    z3 = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="parameterization"):
        convert(z3, z3, "axis_angle")
    with pytest.raises(ValueError, match="rotation"):
        convert(torch.zeros(1, 4), z3, "so3_log")
    with pytest.raises(ValueError, match="translation"):
        convert(z3, torch.zeros(1, 2), "so3_log")
    with pytest.raises(ValueError, match="convention"):
        convert(z3, z3, "euler")
    for bad in ("XXY", "XyZ", "XY", "ABC"):
        with pytest.raises(ValueError, match="convention"):
            convert(z3, z3, "euler", bad)
    with pytest.raises(ValueError, match="pose"):
        to_parameters(torch.zeros(3, 3), "so3_log")
    with pytest.raises(ValueError, match="xform"):
        transform_point(torch.eye(3)[None], z3)
    with pytest.raises(TypeError, match="rotation"):
        convert([[0.0, 0.0, 0.0]], z3, "so3_log")


# --- camera.resample ---------------------------------------------------------------------------------


def _linear_image(k_inv: torch.Tensor, sdd: float, h: int, w: int) -> torch.Tensor:
    """f = 0.3·x − 0.2·y + 5 at each pixel centre's detector point (x, y) in mm: bilinear resampling
    reproduces a linear function exactly, so a correct homography leaves no error."""
    v, u = torch.meshgrid(torch.arange(h, dtype=F64) + 0.5, torch.arange(w, dtype=F64) + 0.5, indexing="ij")
    p = sdd * (torch.stack([u, v, torch.ones_like(u)], -1) @ k_inv[0].T)
    return (0.3 * p[..., 0] - 0.2 * p[..., 1] + 5.0)[None, None]


def test_resample_with_the_same_intrinsics_is_the_identity():
    from nanodrr_engine.camera import make_k_inv, resample

    k = make_k_inv(1000.0, 1.3, 1.1, 2.0, -1.0, 20, 24, dtype=F64)
    img = torch.rand(2, 3, 20, 24, generator=gen(8), dtype=F64)
    torch.testing.assert_close(resample(img, k, k), img, rtol=0, atol=1e-12)
    torch.testing.assert_close(resample(img.float(), k, k), img.float(), rtol=0, atol=1e-6)


def test_resample_reproduces_the_view_of_other_intrinsics():
    # zoom (spacing 1.2 → 0.9 mm) and a principal-point shift: the resampled old view equals the new
    # view computed directly, wherever the new pixel's footprint lies inside the old image
    from nanodrr_engine.camera import make_k_inv, resample

    sdd, h, w = 600.0, 30, 34
    k_old = make_k_inv(sdd, 1.2, 1.2, 0.0, 0.0, h, w, dtype=F64)
    k_new = make_k_inv(sdd, 0.9, 0.95, 3.0, -2.0, h, w, dtype=F64)
    got = resample(_linear_image(k_old, sdd, h, w), k_old, k_new)
    want = _linear_image(k_new, sdd, h, w)
    torch.testing.assert_close(got[..., 4:-4, 4:-4], want[..., 4:-4, 4:-4], rtol=0, atol=1e-10)


def test_resample_by_a_whole_pixel_shift_moves_the_image_and_fills_zeros():
    from nanodrr_engine.camera import make_k_inv, resample

    img = torch.rand(1, 1, 6, 7, generator=gen(9), dtype=F64)
    k_old = make_k_inv(500.0, 2.0, 2.0, 0.0, 0.0, 6, 7, dtype=F64)
    k_new = make_k_inv(500.0, 2.0, 2.0, 4.0, 0.0, 6, 7, dtype=F64)  # principal point 2 px right
    want = torch.zeros_like(img)
    want[..., 2:] = img[..., :-2]  # new pixel u sees old pixel u − 2
    torch.testing.assert_close(resample(img, k_old, k_new), want, rtol=0, atol=1e-12)


def test_resample_matches_nanodrr_for_principal_point_shifts():
    # nanodrr maps pixel indices, we map pixel centres: the same image unless the homography scales
    peer = pytest.importorskip("nanodrr.camera")
    from nanodrr_engine.camera import make_k_inv, resample

    img = torch.rand(2, 1, 16, 18, generator=gen(10), dtype=F64)
    k_old = make_k_inv(700.0, 1.5, 1.5, 0.0, 0.0, 16, 18, dtype=F64).expand(2, 3, 3)
    k_new = torch.cat(
        [make_k_inv(700.0, 1.5, 1.5, x0, y0, 16, 18, dtype=F64) for x0, y0 in ((2.3, -0.7), (-4.1, 3.3))]
    )
    torch.testing.assert_close(
        resample(img, k_old, k_new), peer.resample(img, k_old, k_new), rtol=0, atol=1e-12
    )


def test_resample_bad_input_is_named():
    from nanodrr_engine.camera import make_k_inv, resample

    k = make_k_inv(500.0, 2.0, 2.0, 0.0, 0.0, 6, 7)
    with pytest.raises(ValueError, match="img"):
        resample(torch.zeros(6, 7), k, k)
    with pytest.raises(ValueError, match="k_inv_new"):
        resample(torch.zeros(1, 1, 6, 7), k, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="k_inv_old"):
        resample(torch.zeros(2, 1, 6, 7), k.expand(3, 3, 3), k)
