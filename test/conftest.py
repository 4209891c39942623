"""Shared fixtures: real KITTI frames from ../shared/data, one per layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcic_ros.experiments.datasets import default_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_dir()

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


def pcic(*args: str) -> subprocess.CompletedProcess:
    """The pcic command as a user runs it, in a child process."""
    return subprocess.run([sys.executable, "-m", "pcic_ros.cli", *args], capture_output=True, text=True, timeout=600)


def load_layout_frame(layout: str):
    """(image, scan, calibration) of the layout's test frame."""
    from pcic_ros.codec.projection import Calibration
    from pcic_ros.experiments.datasets import load_image, load_scan

    image, scan, calib = LAYOUT_FRAMES[layout]
    return load_image(DATA / image), load_scan(DATA / scan), Calibration.from_kitti(DATA / calib)


@pytest.fixture(scope="session", params=sorted(LAYOUT_FRAMES))
def layout_frame(request):
    return (request.param, *load_layout_frame(request.param))


def crop_frame(layout: str, height: int, width: int, top: int | None = None, left: int | None = None):
    """(image, scan, calibration) of a height x width crop of the layout's frame, by default at the
    bottom centre, where the LiDAR has points; cropping moves the principal point by the offset."""
    from pcic_ros.codec.projection import Calibration

    image, scan, calib = load_layout_frame(layout)
    top = image.shape[0] - height - 30 if top is None else top
    left = image.shape[1] // 2 - width // 2 if left is None else left
    shift = np.array([[1.0, 0, -left], [0, 1.0, -top], [0, 0, 1.0]])
    cropped = Calibration(shift @ calib.projection, calib.rectification, calib.lidar_to_camera)
    return image[top : top + height, left : left + width].copy(), scan, cropped


class Codecs(dict):
    """One Codec per registered model at one quality, built on first use and shared by the tests
    (building is slow)."""

    def __init__(self, quality: int = 4) -> None:
        super().__init__()
        self.quality = quality

    def __missing__(self, name: str):
        from pcic_ros.codec.api import Codec

        self[name] = Codec(name, quality=self.quality, device="cpu")
        return self[name]


#: Which sides need the scan, (encoder, decoder), for each of the paper's ablations of the branch.
ABLATION_SCAN_SIDES = {
    "no-pip": (True, True),
    "no-fg": (True, True),
    "no-ff": (True, True),
    "encoder-only": (True, False),
    "decoder-only": (False, True),
    "zeros": (False, False),
}


def assert_ablations_round_trip(codecs: Codecs, family: str, image, scan, calib, extra: dict | None = None) -> None:
    """Every ablation of ``family``-pc (and the ``extra`` models) round-trips bit-exactly, with the scan
    given to the decoder only where the ablation uses it there."""
    from pcic_ros.codec.bitstream import read_header

    expectations = {f"{family}-pc-{ablation}": sides for ablation, sides in ABLATION_SCAN_SIDES.items()}
    for name, (at_encoder, at_decoder) in (expectations | (extra or {})).items():
        codec = codecs[name]
        assert (codec.model.scan_at_encoder, codec.model.scan_at_decoder) == (at_encoder, at_decoder), name
        frame = codec.encode_frame(image, scan, calib)
        assert not read_header(frame.data).zeros_fallback
        decoder_scan = (scan, calib) if at_decoder else (None, None)
        np.testing.assert_array_equal(codec.decode(frame.data, *decoder_scan), frame.reconstruction, err_msg=name)


def bag_calibration(camera_info, tf_message, lidar_frame: str = "velodyne"):
    """The calibration `pcic bag decode` and the nodes build from a bag's CameraInfo and /tf_static."""
    from pcic_ros.ros.tf_buffer import TransformBuffer, frame_calibration

    transforms = TransformBuffer()
    for transform in tf_message.transforms:
        transforms.add(transform, static=True)
    size = (int(camera_info.width), int(camera_info.height))
    return frame_calibration(camera_info, transforms, camera_info.header.frame_id, lidar_frame, 0, *size)
