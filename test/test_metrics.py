"""PSNR, MS-SSIM, bits per pixel and the Bjontegaard deltas against hand-computed values."""

import math

import numpy as np
import pytest

from pcic_ros.experiments.metrics import MS_SSIM_MIN_SIDE, bd_psnr, bd_rate, bits_per_pixel, ms_ssim, psnr

# A typical learned-codec RD curve: bpp and PSNR in dB, low to high rate.
RATES = [0.12, 0.25, 0.45, 0.8, 1.3]
PSNRS = [26.0, 28.4, 30.5, 32.6, 34.5]


def _textured_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(xs / 9.0)[..., None] * np.cos(ys / 13.0)[..., None] * np.ones(3)
    return np.clip(base + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)


def _add_noise(image, sigma, seed=1):
    noisy = image + np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def test_psnr_of_identical_images_is_infinite():
    image = _textured_image(8, 8)
    assert psnr(image, image.copy()) == math.inf


def test_psnr_matches_hand_computation():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2, 0] = 10  # one error of 10 among 48 values: MSE = 100 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 48 / 100), abs=1e-12)


def test_psnr_counts_all_channels_and_does_not_wrap_uint8():
    a = np.full((2, 2, 3), 250, np.uint8)
    b = np.full((2, 2, 3), 5, np.uint8)  # a - b would wrap to 245 or 11 if computed in uint8
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 245**2), abs=1e-12)
    assert psnr(b, a) == psnr(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32)),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)),
    ],
    ids=["shape-mismatch", "float", "grey"],
)
def test_psnr_rejects_images_it_cannot_score(a, b):
    with pytest.raises(ValueError):
        psnr(a, b)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    image = _textured_image(MS_SSIM_MIN_SIDE, 200)
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-9)
    slight = ms_ssim(image, _add_noise(image, 4))
    heavy = ms_ssim(image, _add_noise(image, 25))
    assert 1.0 > slight > heavy > 0.0


def test_ms_ssim_refuses_images_below_its_minimum_size():
    image = _textured_image(MS_SSIM_MIN_SIDE - 1, 400)
    with pytest.raises(ValueError, match=f"at least {MS_SSIM_MIN_SIDE} pixels"):
        ms_ssim(image, image)


def test_bits_per_pixel():
    assert bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)
    assert bits_per_pixel(0, 10, 10) == 0.0
    with pytest.raises(ValueError):
        bits_per_pixel(100, 0, 10)
    with pytest.raises(ValueError):
        bits_per_pixel(-1, 10, 10)


def test_bd_rate_of_a_curve_against_itself_is_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("factor", "expected_percent"), [(0.9, -10.0), (1.25, 25.0)])
def test_bd_rate_of_a_constant_rate_factor(factor, expected_percent):
    test_rates = [rate * factor for rate in RATES]
    assert bd_rate(RATES, PSNRS, test_rates, PSNRS) == pytest.approx(expected_percent, abs=1e-6)


def test_bd_rate_ignores_point_order():
    order = [3, 0, 4, 2, 1]
    shuffled_rates = [RATES[i] * 0.9 for i in order]
    shuffled_psnrs = [PSNRS[i] for i in order]
    assert bd_rate(RATES, PSNRS, shuffled_rates, shuffled_psnrs) == pytest.approx(-10.0, abs=1e-6)


def test_bd_rate_accepts_curves_with_different_point_counts():
    # Both curves sample PSNR = 30 + 5 * log2(bpp), which Akima reproduces exactly (it is linear in log rate).
    anchor_rates = np.geomspace(0.1, 2.0, 10)
    test_rates = np.geomspace(0.15, 1.5, 5) * 0.8
    anchor_psnrs = 30 + 5 * np.log2(anchor_rates)
    test_psnrs = 30 + 5 * np.log2(test_rates / 0.8)
    assert bd_rate(anchor_rates, anchor_psnrs, test_rates, test_psnrs) == pytest.approx(-20.0, abs=1e-6)


def test_bd_psnr_of_a_one_db_gain_is_one():
    assert bd_psnr(RATES, PSNRS, RATES, [p + 1.0 for p in PSNRS]) == pytest.approx(1.0, abs=1e-9)
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("rates", "psnrs", "message"),
    [
        (RATES[:3], PSNRS[:3], "at least 4"),
        (RATES, PSNRS[:4], "equal length"),
        ([0.0, *RATES[1:]], PSNRS, "positive"),
        (RATES, [*PSNRS[:4], math.inf], "finite"),
        (RATES, [26.0, 28.4, 28.0, 32.6, 34.5], "rise strictly"),
        ([0.12, 0.25, 0.25, 0.8, 1.3], PSNRS, "rise strictly"),
    ],
    ids=["too-few", "length-mismatch", "zero-rate", "lossless-point", "psnr-dips", "repeated-rate"],
)
@pytest.mark.parametrize("metric", [bd_rate, bd_psnr])
def test_bd_metrics_reject_unusable_curves(metric, rates, psnrs, message):
    with pytest.raises(ValueError, match=message):
        metric(RATES, PSNRS, rates, psnrs)
    with pytest.raises(ValueError, match=message):
        metric(rates, psnrs, RATES, PSNRS)


def test_bd_metrics_refuse_curves_that_do_not_overlap():
    higher_psnrs = [p + 20 for p in PSNRS]
    with pytest.raises(ValueError, match="PSNR ranges do not overlap"):
        bd_rate(RATES, PSNRS, RATES, higher_psnrs)
    higher_rates = [r * 100 for r in RATES]
    with pytest.raises(ValueError, match="rate ranges do not overlap"):
        bd_psnr(RATES, PSNRS, higher_rates, PSNRS)
