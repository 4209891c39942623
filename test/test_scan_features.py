"""The scan's part of coding, ahead of the image (``Codec.scan_features``): the same bytes and images
as coding from the scan itself, on both sides, and a clear refusal for features that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import crop_frame

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import ScanMismatchError


@pytest.fixture(scope="module")
def frame():
    return crop_frame("kitti_raw", 128, 256)


@pytest.mark.parametrize(("name", "quality"), [("hyper-pc-vr", 2.5), ("hyper-pc", 1), ("hyper-vr", 3.0)])
def test_features_computed_ahead_code_and_decode_exactly_as_the_scan(frame, name, quality):
    image, scan, calibration = frame
    codec = Codec(name, quality, device="cpu")
    features = codec.scan_features(scan, calibration, *image.shape[:2])
    data = codec.encode(image, scan, calibration)
    assert codec.encode(image, features=features, scan=None, calibration=None) == data
    assert np.array_equal(codec.decode(data, features=features), codec.decode(data, scan, calibration))
    with_reconstruction = codec.encode_frame(image, None, None, reconstruct=True, features=features)
    assert with_reconstruction.data == data
    assert np.array_equal(with_reconstruction.reconstruction, codec.decode(data, scan, calibration))


def test_refinement_runs_on_features_computed_ahead(frame):
    image, scan, calibration = frame
    codec = Codec("hyper-pc-vr", 2.0, device="cpu")
    features = codec.scan_features(scan, calibration, *image.shape[:2])
    refined = codec.encode(image, None, None, effort=3, features=features)
    assert refined == codec.encode(image, scan, calibration, effort=3)


def test_features_that_do_not_fit_the_frame_are_refused(frame):
    image, scan, calibration = frame
    codec = Codec("hyper-pc-vr", 2.0, device="cpu")
    data = codec.encode(image, scan, calibration)
    other_scan = scan.copy()
    other_scan[:, 0] += 0.5
    with pytest.raises(ScanMismatchError, match="another depth map"):
        codec.decode(data, features=codec.scan_features(other_scan, calibration, *image.shape[:2]))
    with pytest.raises(ScanMismatchError, match="for 256 x 64 frames, this one is 256 x 128"):
        codec.encode(image, None, None, features=codec.scan_features(scan, calibration, 64, 256))
    with pytest.raises(ScanMismatchError, match="another model"):
        codec.decode(data, features=Codec("hyper-pc", 1, device="cpu").scan_features(scan, calibration, 128, 256))
    with pytest.raises(ValueError, match="not both"):
        codec.encode(image, scan, calibration, features=codec.scan_features(scan, calibration, 128, 256))


def test_features_of_no_scan_code_the_zeros_fallback(frame):
    image, _, _ = frame
    codec = Codec("hyper-pc-vr", 2.0, device="cpu")
    features = codec.scan_features(None, None, *image.shape[:2])
    frame_without = codec.encode_frame(image, None, None, features=features)
    assert frame_without.header.zeros_fallback
    assert frame_without.data == codec.encode(image, None, None)
    assert np.array_equal(codec.decode(frame_without.data), frame_without.reconstruction)
