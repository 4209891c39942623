"""Shared fixtures: real KITTI frames from ../shared/data, one per layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PCIC_DATA", REPO.parent / "shared" / "data"))

#: One frame per layout, with three different sizes that are not multiples of 64.
LAYOUT_FRAMES = {
    "kitti_raw": (
        "kitti_raw/2011_09_26/2011_09_26_drive_sfnd_sync/image_02/data/0000000010.png",
        "kitti_raw/2011_09_26/2011_09_26_drive_sfnd_sync/velodyne_points/data/0000000010.bin",
        "kitti_raw/2011_09_26",
    ),
    "kitti_object": (
        "kitti_object/training/image_2/000000.png",
        "kitti_object/training/velodyne/000000.bin",
        "kitti_object/training/calib/000000.txt",
    ),
    "kitti360_object": (
        "kitti360_object/training/image_2/0000003000.png",
        "kitti360_object/training/velodyne/0000003000.bin",
        "kitti360_object/training/calib/0000003000.txt",
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    if not DATA.is_dir():
        raise pytest.UsageError(f"the test data is missing: {DATA} (set PCIC_DATA)")


def load_layout_frame(layout: str):
    """(image, scan, calibration) of the layout's test frame."""
    from pcic_ros.cli import load_calibration
    from pcic_ros.datasets import load_image, load_scan

    image, scan, calib = LAYOUT_FRAMES[layout]
    return load_image(DATA / image), load_scan(DATA / scan), load_calibration(DATA / calib)


@pytest.fixture(scope="session", params=sorted(LAYOUT_FRAMES))
def layout_frame(request):
    return (request.param, *load_layout_frame(request.param))
