"""register(): recovers known poses on the chest phantom (ground truth = the pose the target was rendered at)."""

from __future__ import annotations

import math

import pytest
import torch
from nanodrr_engine import Subject, carm_to_rt_inv, make_k_inv, render
from nanodrr_engine.data.phantom import make_chest_phantom
from nanodrr_engine.metrics import target_registration_error
from nanodrr_engine.registration import Registration, register

H = W = 64
SDD, DEL = 1020.0, 6.0


@pytest.fixture(scope="module")
def case():
    vol, _, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 4.0))
    subject = Subject.from_array(vol, v2w)
    k = make_k_inv(SDD, DEL, DEL, 0.0, 0.0, H, W, dtype=torch.float64)
    # bone-like points: the phantom's voxels above 300 HU, in world mm
    idx = torch.nonzero(torch.as_tensor(vol) > 300)[::7].double()
    v2w_t = torch.as_tensor(v2w, dtype=torch.float64)
    points = (idx.flip(-1) @ v2w_t[:3, :3].T) + v2w_t[:3, 3]
    return subject, k, points


def _perturb(rt: torch.Tensor, subject, rot_deg, xyz_mm) -> torch.Tensor:
    """The true pose moved about the isocenter in its camera frame (independent of register's code)."""
    c = (
        torch.linalg.inv(rt[0]) @ torch.cat([subject.isocenter.double(), torch.ones(1, dtype=torch.float64)])
    )[:3]
    axis = torch.tensor(rot_deg, dtype=torch.float64)
    angle = math.radians(float(axis.norm()))
    u = axis / axis.norm()
    K = torch.tensor([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]], dtype=torch.float64)
    R = torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K  # Rodrigues
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = R
    T[:3, 3] = torch.tensor(xyz_mm, dtype=torch.float64) + c - R @ c
    return rt @ T


@pytest.mark.slow
@pytest.mark.parametrize(
    ("primary", "secondary", "rot", "xyz"),
    [(0.0, 0.0, (3.0, -2.0, 2.0), (5.0, -4.0, 6.0)), (25.0, -15.0, (-2.0, 3.0, -3.0), (-6.0, 5.0, 3.0)),
     (-20.0, 10.0, (2.0, 2.0, -3.0), (4.0, 6.0, -5.0))],
)  # fmt: skip
def test_tier_a_poses_are_recovered_to_sub_millimetre(case, primary, secondary, rot, xyz):
    subject, k, points = case
    truth = carm_to_rt_inv(primary, secondary, 850.0, subject.isocenter)[None]
    with torch.no_grad():
        target = render(subject, k, truth, SDD, H, W, method="joseph")
    start = _perturb(truth, subject, rot, xyz)
    before = float(target_registration_error(truth, start, points))
    assert before > 5.0
    result = register(subject, target, k, SDD, start, H, W)
    after = float(target_registration_error(truth, result.rt_inv, points))
    assert after < 1.0, (before, after, result.stop_reason, result.iterations)
    assert result.loss < result.initial_loss and result.render_equivalents < 150


def test_single_view_pose_is_registrations_pose(case):
    """One view: the correction's parameterization is Registration's (a perturbation about the isocenter)."""
    subject, k, _ = case
    rt = carm_to_rt_inv(10.0, 5.0, 850.0, subject.isocenter)[None]
    reg = Registration(subject, rt, k, SDD, H, W, eps=0.0)
    with torch.no_grad():
        reg._rot.copy_(torch.tensor([[0.05, -0.02, 0.03]]))
        reg._xyz.copy_(torch.tensor([[3.0, -2.0, 1.0]]))
    starts = torch.tensor([[0.05, -0.02, 0.03, 3.0, -2.0, 1.0]], dtype=torch.float64)
    result = register(
        subject, torch.rand(1, 1, H, W), k, SDD, rt, H, W, starts=starts, max_iterations=1, lr=(1e-12, 1e-12)
    )
    torch.testing.assert_close(result.rt_inv, reg.pose.double(), atol=1e-4, rtol=1e-5)


def test_biplane_shares_one_correction(case):
    subject, k, points = case
    truth = torch.cat([carm_to_rt_inv(p, 0.0, 850.0, subject.isocenter)[None] for p in (0.0, 90.0)])
    with torch.no_grad():
        target = render(subject, k, truth, SDD, H, W, method="joseph")
    # the patient moved: one world motion applied to both views
    moved = _perturb(truth[:1], subject, (2.0, 2.0, -2.0), (4.0, -5.0, 3.0))
    motion = moved[0] @ torch.linalg.inv(truth[0])
    start = motion @ truth
    result = register(subject, target, k, SDD, start, H, W)
    for b in range(2):
        assert float(target_registration_error(truth[b : b + 1], result.rt_inv[b : b + 1], points)) < 1.0
    # the views keep their relative geometry
    rel = torch.linalg.inv(result.rt_inv[0]) @ result.rt_inv[1]
    torch.testing.assert_close(rel, torch.linalg.inv(truth[0]) @ truth[1], atol=1e-6, rtol=0)


def test_cancel_propagates_and_bad_input_is_named(case):
    subject, k, _ = case
    rt = carm_to_rt_inv(0.0, 0.0, 850.0, subject.isocenter)[None]
    with torch.no_grad():
        target = render(subject, k, rt, SDD, H, W, method="joseph")

    class Cancelled(Exception):
        pass

    calls = []

    def cancel(fraction, message):
        calls.append(fraction)
        if len(calls) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        register(subject, target, k, SDD, rt, H, W, progress=cancel)
    assert len(calls) == 3
    for kwargs, match in [
        ({"target": target[:, :, :32]}, "target: expected shape"),
        ({"target": torch.zeros_like(target)}, "constant"),
        ({"target": target * float("nan")}, "NaN"),
        ({"rt_inv": rt * 2}, "rt_inv"),
        ({"method": "siddon"}, "method"),
        ({"factors": [64]}, "factors"),
        ({"starts": 0}, "starts"),
        ({"mask": torch.zeros(1, 1, H, W)}, "mask"),
    ]:
        args = {"target": target, "rt_inv": rt} | kwargs
        with pytest.raises(ValueError, match=match):
            register(subject, args["target"], k, SDD, args["rt_inv"], H, W, **{
                key: v for key, v in kwargs.items() if key not in ("target", "rt_inv")
            })  # fmt: skip


def test_mask_ignores_what_the_x_ray_shows_and_the_ct_does_not(case):
    """A target whose left third is covered (a lead apron, a label): masked out, the pose is still found;
    not masked, the cover pulls the fit away. With a third of the pixels gone the loss plateaus sooner, so
    this case needs the schedule's ``patience=10`` (the default 5 stops at 1.3 mm)."""
    subject, k, points = case
    truth = carm_to_rt_inv(10.0, 5.0, 850.0, subject.isocenter)[None]
    with torch.no_grad():
        target = render(subject, k, truth, SDD, H, W, method="joseph")
    covered = target.clone()
    covered[..., : W // 3] = target.max() * 2.0  # nothing the CT renders
    mask = torch.ones(1, 1, H, W, dtype=torch.bool)
    mask[..., : W // 3] = False
    start = _perturb(truth, subject, (2.0, -2.0, 2.0), (4.0, 5.0, -4.0))
    result = register(subject, covered, k, SDD, start, H, W, mask=mask, patience=10)
    masked = float(target_registration_error(truth, result.rt_inv, points))
    assert masked < 1.0
    unmasked = register(subject, covered, k, SDD, start, H, W, patience=10)
    assert float(target_registration_error(truth, unmasked.rt_inv, points)) > 2 * masked


def test_channel_weights_register_on_bone(case):
    """Labelmap-weighted similarity: at the true pose a bone-only target (channels 7-9 of the phantom) is
    closer to the bone-weighted DRR than to the plain one, and the pose is found from a start."""
    _, k, points = case
    vol, labels, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 4.0))
    labelled = Subject.from_array(vol, v2w, labels)
    bone = torch.zeros(labelled.n_classes)
    bone[7:10] = 1.0
    truth = carm_to_rt_inv(-15.0, 10.0, 850.0, labelled.isocenter)[None]
    with torch.no_grad():
        channels = render(labelled, k, truth, SDD, H, W, method="joseph")
    target = (channels * bone[None, :, None, None]).sum(1, keepdim=True)
    once = {"max_iterations": 1, "patience": 1, "decays": 1, "factors": [1]}
    weighted = register(labelled, target, k, SDD, truth, H, W, channel_weights=bone, **once).initial_loss
    plain = register(labelled, target, k, SDD, truth, H, W, **once).initial_loss
    assert weighted < 0.5 * plain  # (not 0: patches where the bone image is empty score 0, not 1)
    start = _perturb(truth, labelled, (-2.0, 2.0, 2.0), (-4.0, 4.0, 5.0))
    result = register(labelled, target, k, SDD, start, H, W, channel_weights=bone)
    assert float(target_registration_error(truth, result.rt_inv, points)) < 1.0


def test_several_starts_keep_the_best(case):
    """Given the start that undoes a 40° error among its candidates, register picks it and succeeds."""
    subject, k, points = case
    truth = carm_to_rt_inv(0.0, 0.0, 850.0, subject.isocenter)[None]
    with torch.no_grad():
        target = render(subject, k, truth, SDD, H, W, method="joseph")
    far = _perturb(truth, subject, (0.0, 40.0, 0.0), (0.0, 0.0, 0.0))  # 40° about the camera's y axis
    # the correction is a rotation of -40° about y through the isocenter: (ω, t) = ((0, -40°, 0), 0)
    undo = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, -math.radians(40.0), 0.0, 0.0, 0.0, 0.0]])
    single = register(subject, target, k, SDD, far, H, W)
    several = register(subject, target, k, SDD, far, H, W, starts=undo)
    assert float(target_registration_error(truth, several.rt_inv, points)) < 1.0
    assert several.loss < single.loss
