"""Rate and distortion measures for comparing codecs: PSNR, MS-SSIM, bits per pixel, BD-rate, BD-PSNR."""

from __future__ import annotations

import math
from collections.abc import Sequence

import bjontegaard
import numpy as np
import torch
from pytorch_msssim import ms_ssim as _pytorch_ms_ssim

from pcic_ros.errors import InvalidArgumentError

# Akima rather than the VCEG/JVET sheet's PCHIP: the bjontegaard package's authors found it the
# more accurate and stable of the two, and unlike the original cubic polynomial fit it cannot swing
# between widely spaced points.
BD_INTERPOLATION = "akima"

# Fewer points than the four of the original Bjontegaard definition leave too little curve to
# interpolate between.
MIN_RD_POINTS = 4

_MS_SSIM_WINDOW = 11
# pytorch_msssim needs the smaller side above (window - 1) * 2**4: MS-SSIM halves the image four times.
MS_SSIM_MIN_SIDE = (_MS_SSIM_WINDOW - 1) * 2**4 + 1


def _check_image_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, image in (("a", a), ("b", b)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            found = getattr(image, "dtype", type(image))
            raise ValueError(f"{name} must be a uint8 numpy array, got {found}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be H x W x 3 RGB, got shape {image.shape}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two H x W x 3 uint8 RGB images, peak 255, mean squared error over all channels.

    Identical images give inf.
    """
    _check_image_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, 11-pixel Gaussian window, data range 255) of two H x W x 3 uint8 RGB images.

    Each channel is scored separately and the scores averaged. Both sides must be at least
    MS_SSIM_MIN_SIDE pixels.
    """
    _check_image_pair(a, b)
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs both sides to be at least {MS_SSIM_MIN_SIDE} pixels, got {a.shape[0]} x {a.shape[1]}"
        )

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1).unsqueeze(0)

    with torch.no_grad():
        score = _pytorch_ms_ssim(
            to_tensor(a), to_tensor(b), data_range=255.0, size_average=True, win_size=_MS_SSIM_WINDOW
        )
    return float(score)


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    """Rate of a compressed image: 8 * num_bytes spread over height * width pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if num_bytes < 0:
        raise ValueError(f"byte count cannot be negative, got {num_bytes}")
    return 8.0 * num_bytes / (height * width)


def _rd_curve(name: str, rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    rate_array = np.asarray(rates, dtype=np.float64)
    psnr_array = np.asarray(psnrs, dtype=np.float64)
    if rate_array.ndim != 1 or rate_array.shape != psnr_array.shape:
        raise InvalidArgumentError(
            f"{name}: rates and PSNRs must be 1-D and of equal length, got {rate_array.shape} and {psnr_array.shape}"
        )
    if len(rate_array) < MIN_RD_POINTS:
        raise InvalidArgumentError(f"{name}: BD metrics need at least {MIN_RD_POINTS} RD points, got {len(rate_array)}")
    if not (np.all(np.isfinite(rate_array)) and np.all(rate_array > 0)):
        raise InvalidArgumentError(f"{name}: rates must be finite and positive, got {rate_array.tolist()}")
    if not np.all(np.isfinite(psnr_array)):
        raise InvalidArgumentError(f"{name}: PSNRs must be finite (drop lossless points), got {psnr_array.tolist()}")
    order = np.argsort(rate_array)
    rate_array, psnr_array = rate_array[order], psnr_array[order]
    if np.any(np.diff(rate_array) <= 0) or np.any(np.diff(psnr_array) <= 0):
        raise InvalidArgumentError(
            f"{name}: PSNR must rise strictly with rate, and no rate may repeat; got rates "
            f"{rate_array.tolist()} with PSNRs {psnr_array.tolist()}"
        )
    return rate_array, psnr_array


def _overlap(low_a: float, high_a: float, low_b: float, high_b: float) -> bool:
    return min(high_a, high_b) > max(low_a, low_b)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
) -> float:
    """Bjontegaard-delta rate of the test curve against the anchor, in percent (negative = test saves bits).

    Log rate is interpolated as a function of PSNR with Akima interpolation (the bjontegaard
    package's method 'akima') and averaged over the PSNR range both curves cover. The curves may
    have different numbers of points, at least MIN_RD_POINTS each, and PSNR must rise strictly with
    rate on each. Raises ValueError if the PSNR ranges do not overlap.
    """
    anchor_r, anchor_d = _rd_curve("anchor", anchor_rates, anchor_psnrs)
    test_r, test_d = _rd_curve("test", test_rates, test_psnrs)
    if not _overlap(anchor_d[0], anchor_d[-1], test_d[0], test_d[-1]):
        raise InvalidArgumentError(
            f"PSNR ranges do not overlap: anchor {anchor_d[0]:.2f}-{anchor_d[-1]:.2f} dB, "
            f"test {test_d[0]:.2f}-{test_d[-1]:.2f} dB"
        )
    return float(
        bjontegaard.bd_rate(anchor_r, anchor_d, test_r, test_d, method=BD_INTERPOLATION, require_matching_points=False)
    )


def bd_psnr(
    anchor_rates: Sequence[float],
    anchor_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
) -> float:
    """Bjontegaard-delta PSNR of the test curve against the anchor, in dB (positive = test is better).

    PSNR is interpolated as a function of log rate with Akima interpolation (the bjontegaard
    package's method 'akima') and averaged over the log-rate range both curves cover. Inputs are
    checked as for bd_rate; raises ValueError if the rate ranges do not overlap.
    """
    anchor_r, anchor_d = _rd_curve("anchor", anchor_rates, anchor_psnrs)
    test_r, test_d = _rd_curve("test", test_rates, test_psnrs)
    if not _overlap(anchor_r[0], anchor_r[-1], test_r[0], test_r[-1]):
        raise InvalidArgumentError(
            f"rate ranges do not overlap: anchor {anchor_r[0]:.4g}-{anchor_r[-1]:.4g}, "
            f"test {test_r[0]:.4g}-{test_r[-1]:.4g}"
        )
    return float(
        bjontegaard.bd_psnr(anchor_r, anchor_d, test_r, test_d, method=BD_INTERPOLATION, require_matching_points=False)
    )
