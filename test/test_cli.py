"""The pcic command on a real frame, as a user runs it."""

from __future__ import annotations

import numpy as np
from conftest import DATA, LAYOUT_FRAMES, pcic

from pcic_ros.experiments.datasets import load_image

IMAGE, SCAN, CALIB = (str(DATA / p) for p in LAYOUT_FRAMES["kitti_raw"])


def test_encode_info_decode_on_a_kitti_raw_frame(tmp_path):
    compressed, decoded = tmp_path / "frame.pcic", tmp_path / "frame.png"
    result = pcic("encode", IMAGE, "--scan", SCAN, "--calib", CALIB, "--model", "hyper", "-o", str(compressed))
    assert result.returncode == 0, result.stderr
    size = compressed.stat().st_size
    assert f"{size} bytes" in result.stdout and f"{8 * size / (1242 * 375):.4f} bpp" in result.stdout

    info = pcic("info", str(compressed))
    assert info.returncode == 0, info.stderr
    assert "model:             hyper\n" in info.stdout and "1242 x 375 (padded 1280 x 384)" in info.stdout

    result = pcic("decode", str(compressed), "--scan", SCAN, "--calib", CALIB, "-o", str(decoded))
    assert result.returncode == 0, result.stderr
    image = load_image(decoded)
    assert image.shape == load_image(IMAGE).shape


def test_errors_are_reported_without_a_traceback(tmp_path):
    compressed = tmp_path / "frame.pcic"
    result = pcic("encode", IMAGE, "--scan", SCAN, "--calib", CALIB, "-o", str(compressed))
    assert result.returncode == 0, result.stderr
    other_scan = SCAN.replace("0000000010", "0000000011")
    result = pcic("decode", str(compressed), "--scan", other_scan, "--calib", CALIB, "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "depth map differs" in result.stderr and "Traceback" not in result.stderr

    garbage = tmp_path / "garbage.pcic"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    result = pcic("info", str(garbage))
    assert result.returncode == 2 and "not a pcic file" in result.stderr

    result = pcic("encode", IMAGE, "--scan", SCAN, "-o", str(tmp_path / "y.pcic"))
    assert result.returncode == 2 and "--calib" in result.stderr
