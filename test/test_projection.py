"""Projection (eq. 1-2) against an independent numpy computation, and eq. 3's properties, on real scans."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, LAYOUT_FRAMES, load_layout_frame

from pcic_ros.codec.api import depth_input
from pcic_ros.codec.projection import (
    Calibration,
    CalibrationError,
    depth_fingerprint,
    equalize_depth,
    project_points,
)


def reference_projection(points: np.ndarray, calib: Calibration, height: int, width: int) -> np.ndarray:
    """Straightforward homogeneous matrix products and a per-pixel minimum, written independently."""
    matrix = calib.projection @ calib.rectification @ calib.lidar_to_camera
    homogeneous = np.hstack([points[:, :3].astype(np.float64), np.ones((len(points), 1))])
    image_points = homogeneous @ matrix.T
    depth = image_points[:, 2]
    keep = depth > 0
    u = np.floor(image_points[keep, 0] / depth[keep]).astype(int)
    v = np.floor(image_points[keep, 1] / depth[keep]).astype(int)
    depth = depth[keep]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    out = np.full((height, width), np.inf)
    np.minimum.at(out, (v[inside], u[inside]), depth[inside])
    out[np.isinf(out)] = 0
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUT_FRAMES))
def test_projection_matches_independent_computation(layout):
    image, scan, calib = load_layout_frame(layout)
    height, width = image.shape[:2]
    depth = project_points(scan, calib, height, width)
    expected = reference_projection(scan, calib, height, width)
    assert depth.shape == (height, width) and depth.dtype == np.float32
    assert np.count_nonzero(depth) == np.count_nonzero(expected)
    # Thousands of points land in view; at most as many pixels as points.
    assert 5_000 < np.count_nonzero(depth) <= len(scan)
    np.testing.assert_allclose(depth, expected, rtol=1e-6)


def test_kitti_raw_calibration_composes_the_documented_matrices():
    calib = Calibration.from_kitti(DATA / LAYOUT_FRAMES["kitti_raw"][2])
    cam = (DATA / "kitti_raw/2011_09_26/calib_cam_to_cam.txt").read_text()
    p_rect_02 = next(line for line in cam.splitlines() if line.startswith("P_rect_02:"))
    np.testing.assert_array_equal(calib.projection.ravel(), [float(v) for v in p_rect_02.split()[1:]])
    assert np.allclose(calib.lidar_to_camera[3], [0, 0, 0, 1])
    assert np.allclose(calib.rectification[:3, :3] @ calib.rectification[:3, :3].T, np.eye(3), atol=1e-5)


def test_points_behind_outside_or_not_finite_are_dropped_and_nearest_wins():
    calib = Calibration.from_matrices(np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]]), np.eye(4))
    points = np.array(
        [
            [0.0, 0.0, 10.0],  # centre pixel (50, 40), depth 10
            [0.0, 0.0, 5.0],  # same pixel, nearer: wins
            [0.0, 0.0, 20.0],  # same pixel, farther
            [0.0, 0.0, -5.0],  # behind the camera
            [100.0, 0.0, 1.0],  # far outside the image
            [np.nan, 0.0, 3.0],  # not finite
        ],
        dtype=np.float32,
    )
    depth = project_points(points, calib, 80, 100)
    assert np.count_nonzero(depth) == 1
    assert depth[40, 50] == 5.0
    # A float64 scan with a coordinate float32 cannot hold: dropped, not an inf that breaks eq. 3.
    corrupt = np.vstack([points.astype(np.float64), [[0.0, 0.0, 1e300]]])
    depth = project_points(corrupt, calib, 80, 100)
    assert np.count_nonzero(depth) == 1 and np.isfinite(depth).all()
    assert np.count_nonzero(equalize_depth(depth)) == 1
    with pytest.raises(ValueError, match="non-finite"):
        equalize_depth(np.full((2, 2), np.inf, np.float32))


def test_empty_scan_gives_an_empty_map_and_bad_shapes_are_rejected():
    _, _, calib = load_layout_frame("kitti_object")
    assert not project_points(np.zeros((0, 4), np.float32), calib, 10, 20).any()
    with pytest.raises(ValueError, match="N x 3"):
        project_points(np.zeros((10, 2), np.float32), calib, 10, 20)
    with pytest.raises(ValueError):
        project_points(np.zeros((1, 4), np.float32), calib, 0, 20)


def test_missing_or_malformed_calibration_raises_calibration_error(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        Calibration.from_kitti_object(tmp_path / "missing.txt")
    bad = tmp_path / "calib.txt"
    bad.write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(CalibrationError, match="P2"):
        Calibration.from_kitti_object(bad)
    bad.write_text("P2: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(CalibrationError, match="Tr_velo_to_cam"):
        Calibration.from_kitti_object(bad)
    with pytest.raises(CalibrationError, match="NaN"):
        Calibration.from_matrices(np.full((3, 3), np.nan), np.eye(4))
    with pytest.raises(CalibrationError, match="last row"):
        Calibration.from_matrices(np.eye(3), np.ones((4, 4)))


def test_calibrations_that_cannot_be_right_are_refused_by_name(tmp_path):
    """A typo in a rotation, a scaled extrinsic, a key given twice, a number that is not one, a
    singular projection, a binary file: each a CalibrationError naming it, not a silent wrong frame."""
    source = (DATA / LAYOUT_FRAMES["kitti_object"][2]).read_text()
    assert Calibration.from_kitti_object(DATA / LAYOUT_FRAMES["kitti_object"][2])
    rows = dict(line.split(":", 1) for line in source.splitlines() if ":" in line)

    def calibration_with(key: str, values: str | None, extra: str = "") -> Path:
        changed = {**rows, key: f" {values}"} if values is not None else rows
        path = tmp_path / f"calib{len(list(tmp_path.iterdir()))}.txt"
        path.write_text("".join(f"{k}:{v}\n" for k, v in changed.items()) + extra)
        return path

    rotation = [float(v) for v in rows["R0_rect"].split()]
    typo = " ".join(str(v * 100 if i == 0 else v) for i, v in enumerate(rotation))
    scaled = " ".join(str(2 * float(v)) for v in rows["Tr_velo_to_cam"].split())
    cases = [
        (calibration_with("R0_rect", typo), "R_rect: its rotation is not a rotation"),
        (calibration_with("Tr_velo_to_cam", scaled), "T_cam_lidar: its rotation is not a rotation"),
        (calibration_with("P2", None, extra=f"P2:{rows['P2']}\n"), "'P2' is given twice"),
        (calibration_with("P2", rows["P2"].replace(".", ",", 1)), "'P2' is not a list of numbers"),
        (calibration_with("P2", " ".join(["0"] * 12)), "singular"),
    ]
    for path, message in cases:
        with pytest.raises(CalibrationError, match=re.escape(message)):
            Calibration.from_kitti_object(path)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    with pytest.raises(CalibrationError, match="not a text calibration file"):
        Calibration.from_kitti_object(tmp_path / "binary.txt")


def test_an_image_of_another_size_than_the_calibrations_camera_is_refused():
    image, scan, calibration = load_layout_frame("kitti_raw")
    assert calibration.image_size == (image.shape[1], image.shape[0])
    depth_input(scan, calibration, *image.shape[:2], 255)
    with pytest.raises(CalibrationError, match="calibration is for 1242 x 375 images, this one is 1000 x 375"):
        depth_input(scan, calibration, 375, 1000, 255)


@pytest.mark.parametrize("layout", sorted(LAYOUT_FRAMES))
def test_equalisation_properties_on_real_scans(layout):
    image, scan, calib = load_layout_frame(layout)
    depth = project_points(scan, calib, *image.shape[:2])
    levels = equalize_depth(depth)
    occupied = depth > 0
    # Empty pixels stay 0; every point gets a level in 1..255 and the farthest reaches 255.
    assert levels.dtype == np.uint8
    assert not levels[~occupied].any()
    assert levels[occupied].min() >= 1 and levels[occupied].max() == 255
    # Order preserving: a nearer point never gets a higher level.
    d, q = depth[occupied], levels[occupied].astype(int)
    order = np.argsort(d, kind="stable")
    assert np.all(np.diff(q[order]) >= 0)
    # Equalised: a point's level is its depth's CDF over the points, on 255 steps: the share of points
    # at or below each level k that occurs lies in ((k - 1) / 255, k / 255].
    used = np.unique(q)
    shares = np.searchsorted(np.sort(q), used, side="right") / q.size
    assert np.all(shares > (used - 1) / 255) and np.all(shares <= used / 255 + 1e-12)
    # Only structure is kept: shifting or scaling every depth changes nothing (eq. 3's normalisation).
    np.testing.assert_array_equal(equalize_depth(np.where(occupied, depth * 2 + 7, 0)), levels)
    # Deterministic, and the fingerprint sees a single changed pixel.
    np.testing.assert_array_equal(equalize_depth(depth), levels)
    changed = levels.copy()
    changed[np.argwhere(occupied)[0][0], np.argwhere(occupied)[0][1]] ^= 1
    assert depth_fingerprint(levels) != depth_fingerprint(changed)


def test_equalisation_scale_parameter():
    depth = np.zeros((4, 4), np.float32)
    depth[0, :4] = [1.0, 2.0, 3.0, 4.0]
    # With s = 1 depths round to two bins {0, 1}: the two near points share a level.
    coarse = equalize_depth(depth, levels=1)[0]
    assert coarse[0] == coarse[1] < coarse[2] == coarse[3] == 255
    fine = equalize_depth(depth, levels=255)[0]
    assert list(fine) == [64, 128, 192, 255]
    with pytest.raises(ValueError):
        equalize_depth(depth, levels=0)
