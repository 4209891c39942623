"""Lossy LiDAR scans: a scan coded with Google's Draco (through DracoPy) and decoded again.

The paper (sec. IV.B.2) asks whether the point-cloud branch still helps when the scan itself reaches
the codec lossy-compressed, as it would in a vehicle that sends its scans too. Encoder and decoder then
both hold the *decoded* scan (the encoder decodes its own Draco bytes), so they project the same points
and the image is coded against that depth map.

Why Draco and not a codec of our own: the question is how the image codec copes with the loss a real
point-cloud codec introduces, not how good a point-cloud codec we can write. Draco is widely deployed,
maintained, ships as a wheel (the paper's G-PCC reference software has no Python package), and its loss
is simple to state: positions are quantised uniformly over the scan's bounding cube, so every
coordinate lands within half a step (largest extent / (2^bits - 1)) of where it was
(``quantization_error_bound``), and no point is dropped or added. The points come back in Draco's
order, not the scan's; projection (``pcic_ros.codec.projection``) does not depend on the order.

Reflectance is not coded: the codec reads only x, y, z (the depth of eq. 1-3), so coding it would add
bits that no model uses. The decoded scan has the KITTI layout (N x 4 float32) with the reflectance
column set to zero, so it goes wherever ``pcic_ros.experiments.datasets.load_scan``'s arrays go.
"""

from __future__ import annotations

import DracoPy
import numpy as np

from pcic_ros.errors import PcicError

__all__ = [
    "MIN_QUANTIZATION_BITS",
    "MAX_QUANTIZATION_BITS",
    "ScanCompressionError",
    "compress_scan",
    "decompress_scan",
    "round_trip_scan",
    "quantization_error_bound",
]

#: Draco's range of position quantisation; past about 24 bits a float32 scan gains nothing.
MIN_QUANTIZATION_BITS = 1
MAX_QUANTIZATION_BITS = 30

# Draco's best compression (its encoding speed 0). On a 115k-point KITTI scan it was no slower than the
# faster settings and 8 % smaller than its default.
_COMPRESSION_LEVEL = 10


class ScanCompressionError(PcicError, ValueError):
    """A scan cannot be Draco-coded (empty, malformed, non-finite), or bytes are not a Draco point cloud."""


def _xyz(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (3, 4) or not np.issubdtype(points.dtype, np.number):
        raise ScanCompressionError(f"scan must be a numeric N x 3 or N x 4 array, got {points.dtype} {points.shape}")
    if points.shape[0] == 0:
        raise ScanCompressionError("the scan has no points")
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        # Draco cannot place NaN or inf in its bounding box; which points to drop is the caller's choice.
        raise ScanCompressionError(f"{int((~finite).sum())} of the scan's {len(xyz)} points are not finite")
    return xyz


def _check_bits(quantization_bits: int) -> int:
    if isinstance(quantization_bits, bool) or not isinstance(quantization_bits, (int, np.integer)):
        raise ScanCompressionError(f"quantization_bits must be an integer, got {quantization_bits!r}")
    if not MIN_QUANTIZATION_BITS <= quantization_bits <= MAX_QUANTIZATION_BITS:
        raise ScanCompressionError(
            f"quantization_bits must be in {MIN_QUANTIZATION_BITS}..{MAX_QUANTIZATION_BITS}, got {quantization_bits}"
        )
    return int(quantization_bits)


def quantization_error_bound(points: np.ndarray, quantization_bits: int) -> float:
    """The largest distance, per coordinate, between a point and its Draco-decoded self (metres): half a
    quantisation step over the scan's largest extent, plus float32 rounding. Draco dequantises as
    origin + q * (extent / (2^bits - 1)) in float32: the step, the product and the sum are each rounded,
    together by under 1.5 float32 spacings of the larger of the extent and the largest coordinate."""
    xyz = _xyz(points)
    bits = _check_bits(quantization_bits)
    extent = (xyz.max(axis=0) - xyz.min(axis=0)).max()
    rounding = 2 * float(np.spacing(max(extent, np.abs(xyz).max())))
    return float(extent) / (2**bits - 1) / 2 + rounding


def compress_scan(points: np.ndarray, quantization_bits: int) -> bytes:
    """Draco bytes of a scan's positions (N x 3 or N x 4, metres), quantised to ``quantization_bits``
    per coordinate over its bounding cube; reflectance is not coded (see the module's notes)."""
    xyz = _xyz(points)
    bits = _check_bits(quantization_bits)
    try:
        return DracoPy.encode(xyz, quantization_bits=bits, compression_level=_COMPRESSION_LEVEL)
    except DracoPy.EncodingFailedException as error:
        raise ScanCompressionError(f"Draco could not encode the scan: {error}") from None


def decompress_scan(data: bytes) -> np.ndarray:
    """The scan of ``compress_scan``'s bytes: N x 4 float32 (x, y, z, reflectance = 0), in Draco's order."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ScanCompressionError("no Draco bytes to decode")
    try:
        decoded = DracoPy.decode(bytes(data))
    except (DracoPy.FileTypeException, ValueError, RuntimeError) as error:
        raise ScanCompressionError(f"not a Draco point cloud: {error}") from None
    xyz = np.asarray(decoded.points, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ScanCompressionError(f"the Draco data holds no x, y, z points (got shape {xyz.shape})")
    scan = np.zeros((xyz.shape[0], 4), dtype=np.float32)
    scan[:, :3] = xyz
    return scan


def round_trip_scan(points: np.ndarray, quantization_bits: int) -> tuple[np.ndarray, int]:
    """(the scan as a Draco decoder sees it, the number of Draco bytes): what both sides of a codec
    hold when the scan travels Draco-coded."""
    data = compress_scan(points, quantization_bits)
    return decompress_scan(data), len(data)
