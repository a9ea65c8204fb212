"""Multi-view sequence folders (models/sequences): both layouts, numeric order, companions, and every bad input
named by its file."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from models.sequences import MultiViewSequence, SequenceLayoutError, find_grid
from models.sequences.demo import rig_cameras, write_demo_sequence

T, V = 12, 3


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    return {layout: write_demo_sequence(root / layout, times=T, views=V, width=64, height=48, layout=layout)
            for layout in ("time-major", "view-major")}


@pytest.fixture
def copy(sequences, tmp_path):
    def make(layout="time-major"):
        dst = tmp_path / "seq"
        shutil.copytree(sequences[layout], dst)
        return dst
    return make


def test_both_layouts_read_the_same_sequence(sequences):
    a, b = (MultiViewSequence(sequences[k]) for k in ("time-major", "view-major"))
    assert (a.grid.layout, b.grid.layout) == ("time-major", "view-major")
    assert a.num_times == b.num_times == T and a.num_views == b.num_views == V
    for t, v in ((0, 0), (10, 2), (11, 1)):
        np.testing.assert_array_equal(a.image(t, v), b.image(t, v))
        np.testing.assert_array_equal(a.depth(t, v), b.depth(t, v))
        np.testing.assert_array_equal(a.dynamic_mask(t, v), b.dynamic_mask(t, v))
        np.testing.assert_array_equal(a.extrinsics(t, v), b.extrinsics(t, v))
    assert a.describe()["layout"] == "time-major" and a.describe()["image_sizes"] == [[48, 64]] * V


def test_numeric_order_and_exact_companions(sequences):
    seq = MultiViewSequence(sequences["time-major"])
    assert seq.grid.times == tuple(range(T))                               # time_10 after time_9, not after time_1
    assert seq.grid.paths[10][0].parent.name == "time_10"
    cam = rig_cameras(V, 64, 48)[2]
    np.testing.assert_allclose(seq.intrinsics(4, 2), cam.K)
    E = seq.extrinsics(4, 2)                                               # world-to-camera, OpenCV axes
    np.testing.assert_allclose(E @ np.append(cam.cam2world[:3, 3], 1.0), 0.0, atol=1e-12)   # centre -> origin
    forward_world = cam.cam2world[:3, 2]
    np.testing.assert_allclose(E[:, :3] @ forward_world, [0, 0, 1], atol=1e-12)           # z forward
    depth = seq.depth(0, 0)
    assert depth.dtype == np.float32 and (depth == 0).any() and (depth > 0).any()    # sky is 0 = invalid


def test_depth_unit_scales_to_metres(tmp_path, sequences):
    mm = write_demo_sequence(tmp_path / "mm", times=2, views=1, width=64, height=48, depth_unit=0.001)
    metres = MultiViewSequence(sequences["time-major"])
    np.testing.assert_allclose(MultiViewSequence(mm, depth_unit=0.001).depth(1, 0), metres.depth(1, 0), rtol=1e-6)


def test_dynamic_masks_mark_moving_objects(sequences):
    seq = MultiViewSequence(sequences["time-major"])
    assert any(seq.dynamic_mask(t, 0).any() for t in range(T))
    assert seq.dynamic_mask(0, 0).dtype == bool


def test_ambiguous_layout_names_both_readings(copy):
    root = copy()
    (root / "images" / "view0").mkdir()
    with pytest.raises(SequenceLayoutError, match=r"ambiguous.*time-major: time_<t>/view<k>.*view-major: view<k>/<t>"):
        find_grid(root / "images")


def test_unknown_layout_is_refused(tmp_path):
    (tmp_path / "images" / "cam_a").mkdir(parents=True)
    with pytest.raises(SequenceLayoutError, match="no sequence layout found"):
        MultiViewSequence(tmp_path)


def test_missing_view_at_one_time(copy):
    root = copy()
    (root / "images" / "time_7" / "view1.png").unlink()
    with pytest.raises(SequenceLayoutError, match=r"time_7: view\(s\) \[1\] missing"):
        MultiViewSequence(root)


def test_views_with_different_frame_counts(copy):
    root = copy("view-major")
    (root / "images" / "view2" / "11.png").unlink()
    with pytest.raises(SequenceLayoutError, match="different frame counts: view0 12, view1 12, view2 11"):
        MultiViewSequence(root)


def test_unreadable_image_names_the_file(copy):
    root = copy()
    (root / "images" / "time_3" / "view2.png").write_bytes(b"not a png")
    with pytest.raises(SequenceLayoutError, match=r"time_3/view2.png: not a readable image \(time 3, view 2\)"):
        MultiViewSequence(root)


def test_image_of_another_size(copy):
    root = copy()
    cv2.imwrite(str(root / "images" / "time_5" / "view0.png"), np.zeros((40, 64, 3), np.uint8))
    with pytest.raises(SequenceLayoutError, match=r"time_5/view0.png: 40 x 64 pixels, but view 0 is 48 x 64"):
        MultiViewSequence(root)


def test_calibration_of_the_wrong_shape(copy):
    root = copy()
    np.save(root / "intrs" / "time_2" / "view1.npy", np.eye(4))
    with pytest.raises(SequenceLayoutError, match=r"time_2/view1.npy: intrinsics must be 3 x 3"):
        MultiViewSequence(root)


def test_rotation_not_orthonormal(copy):
    root = copy()
    path = root / "extrs" / "time_0" / "view0.npy"
    E = np.load(path)
    E[:, :3] *= 1.1
    np.save(path, E)
    with pytest.raises(SequenceLayoutError, match=r"time_0/view0.npy: the rotation is not orthonormal"):
        MultiViewSequence(root)


def test_a_camera_that_moves_on_a_fixed_rig(copy):
    root = copy()
    path = root / "extrs" / "time_9" / "view2.npy"
    E = np.load(path)
    E[0, 3] += 0.05
    np.save(path, E)
    with pytest.raises(SequenceLayoutError, match=r"time_9/view2.npy: differs from time 0 of view 2, but the rig"):
        MultiViewSequence(root)
    assert MultiViewSequence(root, fixed_rig=False).extrinsics(9, 2)[0, 3] == pytest.approx(E[0, 3])


def test_depth_of_another_size_or_negative(copy):
    root = copy()
    np.save(root / "depths" / "time_4" / "view1.npy", np.zeros((48, 60), np.float32))
    with pytest.raises(SequenceLayoutError, match=r"time_4/view1.npy: depth of shape \(48, 60\), but its image is 48 x 64"):
        MultiViewSequence(root)
    d = np.ones((48, 64), np.float32)
    d[0, 0] = np.nan
    np.save(root / "depths" / "time_4" / "view1.npy", d)
    with pytest.raises(SequenceLayoutError, match="1 negative or non-finite depth"):
        MultiViewSequence(root)


def test_companion_that_does_not_cover_the_images(copy):
    root = copy()
    shutil.rmtree(root / "depths" / "time_11")
    with pytest.raises(SequenceLayoutError, match=r"depths: covers times 0..10 \(11\).*every image needs its depths"):
        MultiViewSequence(root)


def test_mask_values_and_size(copy):
    root = copy()
    cv2.imwrite(str(root / "masks" / "view_1" / "6.png"), np.full((48, 64), 128, np.uint8))
    with pytest.raises(SequenceLayoutError, match=r"view_1/6.png: a dynamic mask holds 0 and 255 only"):
        MultiViewSequence(root)
    cv2.imwrite(str(root / "masks" / "view_1" / "6.png"), np.zeros((24, 64), np.uint8))
    with pytest.raises(SequenceLayoutError, match=r"view_1/6.png: mask of 24 x 64 pixels"):
        MultiViewSequence(root)
