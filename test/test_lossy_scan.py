"""Draco round trips of a real scan of every layout (pcic_ros.experiments.lossy_scan), and a frame coded against the
decoded scan on both sides."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LAYOUT_FRAMES, load_layout_frame
from scipy.spatial import cKDTree

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import ScanMismatchError
from pcic_ros.experiments.lossy_scan import (
    MAX_QUANTIZATION_BITS,
    ScanCompressionError,
    compress_scan,
    decompress_scan,
    quantization_error_bound,
    round_trip_scan,
)
from pcic_ros.experiments.protocol import crop_box, crop_calibration

BITS = (8, 10, 12, 14)


@pytest.fixture(scope="module", params=sorted(LAYOUT_FRAMES))
def scan(request) -> np.ndarray:
    return load_layout_frame(request.param)[1]


def farthest_match(a: np.ndarray, b: np.ndarray) -> float:
    """The largest per-coordinate (Chebyshev) distance from a point of ``a`` to its nearest point of ``b``."""
    return float(cKDTree(b[:, :3]).query(a[:, :3], p=np.inf)[0].max())


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_keeps_every_point_within_the_quantisation_bound(scan, bits):
    decoded = decompress_scan(compress_scan(scan, bits))
    assert decoded.dtype == np.float32 and decoded.shape == scan.shape
    # Reflectance is not coded: the column is there, and zero.
    assert not decoded[:, 3].any()
    bound = quantization_error_bound(scan, bits)
    # Draco reorders the points, so each side is matched to its nearest point on the other.
    assert farthest_match(scan, decoded) <= bound
    assert farthest_match(decoded, scan) <= bound
    # A coarse grid really moves the points (the bound is not met by returning the scan unchanged).
    if bits <= 10:
        assert farthest_match(scan, decoded) > bound / 4


def test_more_bits_cost_more_bytes_and_leave_less_error(scan):
    sizes, errors = [], []
    for bits in BITS:
        decoded, size = round_trip_scan(scan, bits)
        sizes.append(size)
        errors.append(farthest_match(scan, decoded))
    assert sizes == sorted(set(sizes)), sizes
    assert errors == sorted(set(errors), reverse=True), errors
    # Even at 14 bits the positions take fewer bytes than the raw float32 x, y, z.
    assert sizes[-1] < scan.shape[0] * 12


def test_an_n_x_3_scan_codes_like_its_n_x_4_form(scan):
    assert compress_scan(scan[:, :3], 10) == compress_scan(scan, 10)


def test_bad_input_raises_clear_errors(scan):
    with pytest.raises(ScanCompressionError, match="no points"):
        compress_scan(np.zeros((0, 4), np.float32), 10)
    with pytest.raises(ScanCompressionError, match="N x 3 or N x 4"):
        compress_scan(scan[:, :2], 10)
    with pytest.raises(ScanCompressionError, match="N x 3 or N x 4"):
        compress_scan(scan.astype(str), 10)
    broken = scan.copy()
    broken[[3, 7], 1] = [np.nan, np.inf]
    with pytest.raises(ScanCompressionError, match="2 of the scan's .* points are not finite"):
        compress_scan(broken, 10)
    for bits in (0, MAX_QUANTIZATION_BITS + 1, -3):
        with pytest.raises(ScanCompressionError, match="must be in 1..30"):
            compress_scan(scan, bits)
    for bits in (10.0, True, "10"):
        with pytest.raises(ScanCompressionError, match="must be an integer"):
            compress_scan(scan, bits)
    data = compress_scan(scan, 10)
    for bad in (b"", data[: len(data) // 2], b"not draco at all", np.frombuffer(data, np.uint8)):
        with pytest.raises(ScanCompressionError):
            decompress_scan(bad)


def test_frame_coded_with_the_decoded_scan_round_trips_bit_exactly():
    full, scan, calibration = load_layout_frame("kitti_raw")
    top, left, height, width = crop_box(*full.shape[:2], (64, 128))
    image = np.ascontiguousarray(full[top : top + height, left : left + width])
    calibration = crop_calibration(calibration, top, left)
    data = compress_scan(scan, 8)
    # The encoder decodes its own Draco bytes; the decoder decodes the bytes it received.
    frame = Codec("elic-pc", 1, device="cpu").encode_frame(image, decompress_scan(data), calibration)
    decoder = Codec("elic-pc", 1, device="cpu")
    assert np.array_equal(decoder.decode(frame.data, decompress_scan(bytes(data)), calibration), frame.reconstruction)
    assert not frame.header.zeros_fallback
    # At 8 bits the points move enough to change the depth map: the original scan is no substitute.
    with pytest.raises(ScanMismatchError):
        decoder.decode(frame.data, scan, calibration)
