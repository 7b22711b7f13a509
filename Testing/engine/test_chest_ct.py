"""The real chest CT of ../shared in the reference view of geometry.md."""

from __future__ import annotations

import pytest
import torch
from nanodrr_engine import DRR, Subject, available_backends, make_rt_inv


@pytest.fixture(scope="module")
def chest(chest_ct_dir):
    return Subject.from_filepath(chest_ct_dir / "ct.nii.gz", chest_ct_dir / "labels.nii.gz")


def reference_pose(subject):
    return make_rt_inv(torch.zeros(1, 3), torch.tensor([[0.0, 850.0, 0.0]]), "AP", subject.isocenter)


@pytest.mark.slow
def test_reference_view_renders_the_chest(chest, chest_ct_dir):
    drr = DRR.from_carm_intrinsics(1020.0, 2.0, 2.0, 0.0, 0.0, 200, 200)
    img = drr(chest, reference_pose(chest))
    assert img.shape == (1, 119, 200, 200) and torch.isfinite(img).all()
    total = img.sum(1)[0]
    # an X-ray: the mediastinum and spine attenuate more than the air-filled lung fields beside them
    assert total[40:100, 92:108].mean() > 1.3 * total[40:100, 40:60].mean()
    # channels are anatomy: the vertebrae project onto the middle columns, the right lung onto the
    # image's left half (column 0 is the patient's right in the AP reference view)
    rows = (chest_ct_dir / "structures.csv").read_text().strip().splitlines()[1:]
    names = {int(r.split(",")[3]): r.split(",")[2] for r in rows}
    spine = img[0, [i for i, n in names.items() if n.startswith("vertebrae")]].sum(0).sum(0)
    assert spine[70:130].sum() > 0.9 * spine.sum()
    right = (
        img[0, [i for i, n in names.items() if n.startswith("lung") and n.endswith("right")]].sum(0).sum(0)
    )
    assert right[:100].sum() > 0.9 * right.sum()


@pytest.mark.slow
def test_reference_view_matches_nanodrr(chest):
    peer = pytest.importorskip("nanodrr.drr")
    from nanodrr.data import Subject as PeerSubject

    plain = Subject.from_array(chest._image_hu[0, 0], chest.voxel_to_world)
    theirs = PeerSubject(
        chest._image_hu.clone(),
        torch.zeros(1),  # unused without a labelmap
        chest.voxel_to_world,
        chest.world_to_voxel,
        chest.voxel_to_grid,
        chest.isocenter,
        max_label=0,
    )
    rt = reference_pose(chest)
    ours = DRR.from_carm_intrinsics(1020.0, 8.0, 8.0, 0.0, 0.0, 50, 50)
    expected = peer.DRR.from_carm_intrinsics(1020.0, 8.0, 8.0, 0.0, 0.0, 50, 50)(theirs, rt, backend="torch")
    for backend in available_backends("cpu"):
        torch.testing.assert_close(ours(plain, rt, backend=backend), expected, rtol=1e-4, atol=1e-5)
