"""Splits, the c_proj cache, aligned crops and the colour transform, on real frames of all three layouts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from pcic_ros.codec.projection import equalize_depth, project_points
from pcic_ros.experiments.datasets import DataError, discover_frames
from pcic_ros.experiments.protocol import PAPER_CROP, crop_box, crop_calibration, split_by_sequence
from pcic_ros.experiments.training_data import ColourJitter, CropDataset, cache_path, load_c_proj, prepare_cache

LAYOUT_DIRS = {"kitti_raw": "kitti_raw", "kitti_object": "kitti_object", "kitti360_object": "kitti360_object"}
#: kitti_raw: one drive of 78 frames, two drives of 10 scans seen by both colour cameras.
LAYOUT_COUNTS = {"kitti_raw": 78 + 2 * 10 * 2, "kitti_object": 27, "kitti360_object": 25}


@pytest.fixture(scope="module")
def frames():
    return discover_frames(DATA)


@pytest.fixture(scope="module")
def one_per_layout(frames):
    """The first frame of each of the three folders."""
    picked = {}
    for frame in frames:
        layout = next(name for name in LAYOUT_DIRS if f"/{LAYOUT_DIRS[name]}/" in frame.image_path.as_posix())
        picked.setdefault(layout, frame)
    return picked


@pytest.fixture(scope="module")
def cache(tmp_path_factory, one_per_layout):
    cache_dir = tmp_path_factory.mktemp("c_proj")
    written = prepare_cache(list(one_per_layout.values()), DATA, cache_dir, progress=False)
    assert written == 3
    return cache_dir


@pytest.mark.parametrize("layout", sorted(LAYOUT_DIRS))
def test_each_layout_is_read_from_its_own_folder_and_from_the_parent(layout, frames):
    own = discover_frames(DATA / LAYOUT_DIRS[layout])
    assert len(own) == LAYOUT_COUNTS[layout]
    from_parent = [f for f in frames if f"/{LAYOUT_DIRS[layout]}/" in f.image_path.as_posix()]
    assert [f.image_path for f in own] == [f.image_path for f in from_parent]
    image, scan = own[0].image(), own[0].scan()
    depth = project_points(scan, own[0].calibration(), *image.shape[:2])
    assert (depth > 0).sum() > 1000, "the scan lands on the image"


def test_default_split_holds_out_whole_sequences(frames):
    split = split_by_sequence(frames)
    train_sequences = {f.sequence for f in split.train}
    validation_sequences = {f.sequence for f in split.validation}
    assert not train_sequences & validation_sequences
    assert len(split.validation) == 27 and all("kitti_object" in f.image_path.as_posix() for f in split.validation)
    assert len(split.train) == LAYOUT_COUNTS["kitti_raw"] + LAYOUT_COUNTS["kitti360_object"]
    assert split.part("all") == split.train + split.validation


def test_split_patterns_name_sequences(frames):
    split = split_by_sequence(frames, ["2011_09_26_drive_0001_sync"])
    assert {f.sequence for f in split.validation} == {"2011_09_26_drive_0001_sync"}
    assert len(split.validation) == 10 * 2, "both cameras of the drive's 10 scans"
    assert {f.camera for f in split.validation} == {2, 3}


def test_kitti_raw_reads_both_colour_cameras_with_their_own_projection(frames):
    drive = [f for f in frames if f.sequence == "2011_09_26_drive_0002_sync"]
    left = {f.name: f for f in drive if f.camera == 2}
    right = {f.name: f for f in drive if f.camera == 3}
    assert len(left) == len(right) == 10 and left.keys() == right.keys()
    name = sorted(left)[0]
    assert right[name].image_path.parent.parent.name == "image_03"
    assert right[name].scan_path == left[name].scan_path, "one scan, seen by both cameras"
    left_calibration, right_calibration = left[name].calibration(), right[name].calibration()
    np.testing.assert_array_equal(right_calibration.lidar_to_camera, left_calibration.lidar_to_camera)
    # The stereo baseline: P_rect_03 differs from P_rect_02 in its translation column.
    assert not np.array_equal(right_calibration.projection, left_calibration.projection)
    for frame in (left[name], right[name]):
        image = frame.image()
        depth = project_points(frame.scan(), frame.calibration(), *image.shape[:2])
        assert (depth > 0).sum() > 1000, f"the scan lands on camera {frame.camera}'s image"


def test_cache_holds_the_equalised_projection_of_each_layout(cache, one_per_layout):
    for frame in one_per_layout.values():
        image = frame.image()
        expected = equalize_depth(project_points(frame.scan(), frame.calibration(), *image.shape[:2]))
        cached = load_c_proj(frame, DATA, cache)
        assert cached.dtype == np.uint8 and cached.shape == image.shape[:2]
        np.testing.assert_array_equal(cached, expected)
        assert cache_path(frame, DATA, cache).suffix == ".npz"


def test_prepare_skips_frames_already_cached(cache, one_per_layout):
    assert prepare_cache(list(one_per_layout.values()), DATA, cache, progress=False) == 0


def test_missing_cache_is_reported_before_training(tmp_path, one_per_layout):
    with pytest.raises(DataError, match="pcic prepare"):
        CropDataset(list(one_per_layout.values()), DATA, tmp_path, crop_size=64)


def test_crops_of_image_and_c_proj_come_from_the_same_pixels(cache, one_per_layout):
    dataset = CropDataset(list(one_per_layout.values()), DATA, cache, crop_size=96, seed=3)
    seen_layouts = set()
    for index in range(12):
        frame, top, left, _ = dataset.crop_origin(index)
        seen_layouts.add(frame.image_path.relative_to(DATA).parts[0])
        sample = dataset[index]
        image = frame.image()
        crop = image[top : top + 96, left : left + 96]
        np.testing.assert_array_equal((sample["image"].permute(1, 2, 0).numpy() * 255).round(), crop)
        cached = load_c_proj(frame, DATA, cache)[top : top + 96, left : left + 96]
        np.testing.assert_array_equal((sample["c_proj"][0].numpy() * 255).round(), cached)
        # Independently: projecting the scan into the cropped camera occupies the same pixels.
        crop_depth = project_points(frame.scan(), crop_calibration(frame.calibration(), top, left), 96, 96)
        agreement = np.mean((crop_depth > 0) == (cached > 0))
        assert agreement > 0.999
    assert len(seen_layouts) == 3


def test_samples_depend_only_on_seed_and_index(cache, one_per_layout):
    frames = list(one_per_layout.values())
    first = CropDataset(frames, DATA, cache, crop_size=64, seed=5)
    again = CropDataset(frames, DATA, cache, crop_size=64, seed=5)
    other = CropDataset(frames, DATA, cache, crop_size=64, seed=6)
    for index in (7, 0, 7):
        for key in ("image", "c_proj", "target"):
            assert np.array_equal(first[index][key].numpy(), again[index][key].numpy())
    assert any(not np.array_equal(first[i]["image"].numpy(), other[i]["image"].numpy()) for i in range(4))


def test_colour_transform_changes_colours_but_keeps_structure(cache, one_per_layout):
    dataset = CropDataset(list(one_per_layout.values()), DATA, cache, crop_size=128, seed=0)
    correlations, means = [], []
    for index in range(16):
        sample = dataset[index]
        x, target = sample["image"].numpy().ravel(), sample["target"].numpy().ravel()
        assert target.min() >= 0.0 and target.max() <= 1.0
        correlations.append(np.corrcoef(x, target)[0, 1])
        means.append(abs(target.mean() - x.mean()))
    assert all(abs(c) > 0.8 for c in correlations), "the target keeps the image's structure"
    assert any(c < 0 for c in correlations) and any(c > 0 for c in correlations), "some targets are inverted"
    assert max(means) > 0.1, "the colours change"


def test_colour_jitter_without_randomness_is_identity(cache, one_per_layout):
    dataset = CropDataset(list(one_per_layout.values()), DATA, cache, crop_size=64, seed=0)
    x = dataset[0]["image"]
    identity = ColourJitter(contrast=(1.0, 1.0), brightness=(1.0, 1.0), invert_probability=0.0)
    assert np.allclose(identity(x, np.random.default_rng(0)).numpy(), x.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((375, 1242), (119, 0, 256, 1242)),
        ((376, 1408), (120, 83, 256, 1242)),
        ((370, 1224), (114, 0, 256, 1224)),
        ((200, 300), (0, 0, 200, 300)),
    ],
)
def test_paper_crop_keeps_the_bottom_rows_and_middle_columns(size, box):
    assert crop_box(*size, PAPER_CROP) == box
    assert crop_box(*size, None) == (0, 0, *size)


def test_cropped_camera_sees_the_crop_of_the_full_projection(one_per_layout):
    for frame in one_per_layout.values():
        image = frame.image()
        top, left, height, width = crop_box(*image.shape[:2], PAPER_CROP)
        full = project_points(frame.scan(), frame.calibration(), *image.shape[:2])[top : top + height, left:]
        cropped = project_points(frame.scan(), crop_calibration(frame.calibration(), top, left), height, width)
        same = np.isclose(full[:, :width], cropped, rtol=1e-6)
        assert same.mean() > 0.999
        # The paper crop is where the LiDAR is: most of the frame's points fall in it.
        assert (cropped > 0).sum() > 0.9 * (
            project_points(frame.scan(), frame.calibration(), *image.shape[:2]) > 0
        ).sum()
