"""Encoder-side refinement (``effort``): refined frames are ordinary bitstreams that the unchanged
decoder decodes exactly as the encoder reconstructed them, in this process and in others with either
thread count; effort 0 and a spent time budget code today's bytes; refinement never raises the
frame's measured R + lambda * D, and on real frames it lowers it."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import DATA, LAYOUT_FRAMES, REPO, crop_frame, pcic

from pcic_ros.codec.api import Codec
from pcic_ros.codec.zoo import checkpoint_path, create_model
from pcic_ros.experiments.training import _load_initial_weights, export_checkpoint
from pcic_ros.models.gain import quality_lambda

EFFORT = 8


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """hyper-vr as shipped, and hyper-pc-vr warm-started from it (its joins add zeros, but its synthesis
    takes the scan's features: refinement runs through them)."""
    model = create_model("hyper-pc-vr", pretrained=False)
    _load_initial_weights(model, checkpoint_path("hyper-vr", 3))
    model.update(force=True)
    warm_started = export_checkpoint(model, tmp_path_factory.mktemp("hyper-pc-vr") / "model.pt")
    return {
        "hyper-vr": Codec("hyper-vr", 2.5, device="cpu"),
        "hyper-pc-vr": Codec("hyper-pc-vr", 1.5, device="cpu", checkpoint=str(warm_started)),
    }


@pytest.fixture(scope="module")
def frames():
    return {layout: crop_frame(layout, 128, 256) for layout in ("kitti_raw", "kitti_object")}


def rate_distortion(codec: Codec, data: bytes, image: np.ndarray, scan, calibration) -> float:
    """bpp + lambda * MSE (0..255) of a coded frame as its decoder outputs it."""
    decoded = codec.decode(data, scan, calibration)
    mse = float(np.mean((decoded.astype(np.float64) - image) ** 2))
    return 8 * len(data) / (image.shape[0] * image.shape[1]) + quality_lambda(codec.quality) * mse


@pytest.mark.parametrize("name", ["hyper-vr", "hyper-pc-vr"])
def test_refinement_never_raises_the_frames_rate_distortion_and_lowers_it_on_real_frames(codecs, frames, name):
    codec = codecs[name]
    gains = []
    for image, scan, calibration in frames.values():
        inputs = (image, scan, calibration)
        plain = rate_distortion(codec, codec.encode(*inputs), *inputs)
        refined = rate_distortion(codec, codec.encode(*inputs, effort=EFFORT), *inputs)
        assert refined <= plain
        gains.append(1 - refined / plain)
    assert max(gains) > 0.01, gains


def test_effort_zero_and_a_spent_time_budget_code_todays_bytes(codecs, frames):
    codec = codecs["hyper-pc-vr"]
    image, scan, calibration = frames["kitti_raw"]
    today = codec.encode(image, scan, calibration)
    assert codec.encode(image, scan, calibration, effort=0) == today
    assert codec.encode(image, scan, calibration, effort=EFFORT, deadline=time.monotonic()) == today
    refined = codec.encode(image, scan, calibration, effort=EFFORT)
    assert refined != today
    assert codec.encode(image, scan, calibration, effort=EFFORT) == refined  # the same image, the same bytes


DECODE_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from pcic_ros.codec.api import Codec
from pcic_ros.codec.projection import Calibration
matrices = np.load(sys.argv[3])
calibration = Calibration(matrices[0, :3], matrices[1], matrices[2])
scan = np.load(sys.argv[4])
codec = Codec("hyper-vr", 3, device="cpu")
np.save(sys.argv[5], codec.decode(open(sys.argv[2], "rb").read(), scan, calibration))
"""


def test_a_refined_frame_decodes_as_the_encoder_reconstructed_it_in_other_processes_and_thread_counts(
    codecs, frames, tmp_path
):
    """The entropy path is exact (fixed point): a decoder in another process gives the encoder's
    reconstruction bit for bit with the encoder's thread count (2), and within the synthesis'
    floating-point rounding (1 in a few pixels) with another (1)."""
    codec = codecs["hyper-vr"]
    image, scan, calibration = frames["kitti_object"]
    assert torch.get_num_threads() == 2
    frame = codec.encode_frame(image, scan, calibration, reconstruct=True, effort=EFFORT)
    assert np.array_equal(codec.decode(frame.data, scan, calibration), frame.reconstruction)
    (tmp_path / "frame.pcic").write_bytes(frame.data)
    matrices = np.zeros((3, 4, 4))
    matrices[0, :3, :4] = calibration.projection
    matrices[1], matrices[2] = calibration.rectification, calibration.lidar_to_camera
    np.save(tmp_path / "calibration.npy", matrices)
    np.save(tmp_path / "scan.npy", scan)
    for threads in (1, 2):
        paths = [str(tmp_path / name) for name in ("frame.pcic", "calibration.npy", "scan.npy", f"{threads}.npy")]
        subprocess.run([sys.executable, "-c", DECODE_SCRIPT, str(threads), *paths], check=True, cwd=REPO, timeout=300)
    assert np.array_equal(np.load(tmp_path / "2.npy"), frame.reconstruction)
    other = np.load(tmp_path / "1.npy").astype(int) - frame.reconstruction
    assert np.abs(other).max() <= 1 and np.count_nonzero(other) <= 0.001 * other.size


@pytest.mark.parametrize("effort", [-1, 1.5, True, "3"])
def test_an_effort_that_is_not_a_count_of_steps_is_refused(codecs, frames, effort):
    image, scan, calibration = frames["kitti_raw"]
    with pytest.raises(ValueError, match="whole number of refinement steps"):
        codecs["hyper-vr"].encode(image, scan, calibration, effort=effort)


def test_a_model_that_cannot_refine_refuses_effort_and_codes_without_it():
    codec = Codec("elic", 4, device="cpu")
    image, scan, calibration = crop_frame("kitti_raw", 64, 64)
    with pytest.raises(ValueError, match="cannot refine its latents"):
        codec.encode(image, scan, calibration, effort=1)
    assert codec.check_effort(0) == 0


def test_cli_encodes_with_effort_and_refuses_a_negative_one(tmp_path):
    image, scan, calib = (str(DATA / p) for p in LAYOUT_FRAMES["kitti_raw"])
    args = ["--model", "hyper-vr", "--quality", "3", "--scan", scan, "--calib", calib]
    refined = pcic("encode", image, "-o", str(tmp_path / "r.pcic"), "--effort", "2", *args)
    assert refined.returncode == 0, refined.stderr
    decoded = pcic("decode", str(tmp_path / "r.pcic"), "-o", str(tmp_path / "r.png"), "--scan", scan, "--calib", calib)
    assert decoded.returncode == 0, decoded.stderr
    refused = pcic("encode", image, "-o", str(tmp_path / "n.pcic"), "--effort", "-1", *args)
    assert refused.returncode == 2 and "whole number of steps" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "n.pcic").exists()
