"""Variable-rate HYPER (gain units): any quality in the range codes bit-exactly, a quality outside it is
refused, rate follows quality, and a model started from a single-rate checkpoint codes exactly as that
checkpoint does at its quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA, LAYOUT_FRAMES, crop_frame, pcic

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import stored_quality
from pcic_ros.codec.projection import equalize_depth, project_points
from pcic_ros.codec.zoo import QUALITY_LAMBDAS, checkpoint_path, create_model
from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.experiments.evaluation import evaluate
from pcic_ros.experiments.metrics import psnr
from pcic_ros.experiments.training import _load_initial_weights, code_image, export_checkpoint
from pcic_ros.models.gain import QUALITY_RANGE, GainUnits, QualityError, check_quality, quality_lambda

QUALITIES = (0.0, 0.75, 1.5, 2.5, 3.0, 4.2, 5.0)


@pytest.fixture(scope="module")
def frame():
    return crop_frame("kitti_object", 128, 256)[0]


@pytest.fixture(scope="module")
def warm_started():
    """hyper-vr started from the shipped HYPER q3 (an untrained model codes every latent as 0)."""
    model = create_model("hyper-vr", pretrained=False)
    _load_initial_weights(model, checkpoint_path("hyper", 3))
    model.update(force=True)
    return model


def test_quality_scale_extends_the_papers_four_lambdas():
    assert [quality_lambda(q) for q in QUALITY_LAMBDAS] == pytest.approx(list(QUALITY_LAMBDAS.values()))
    assert quality_lambda(QUALITY_RANGE[0]) <= 0.002 and quality_lambda(QUALITY_RANGE[1]) >= 0.05


@pytest.mark.parametrize("quality", [-0.1, 5.01, float("nan"), "high", None])
def test_a_quality_outside_the_range_is_refused(quality):
    with pytest.raises(QualityError):
        check_quality(quality)
    model = create_model("hyper-vr", pretrained=False)
    with pytest.raises(QualityError):
        model.compress(torch.zeros(1, 3, 64, 64), quality=quality)


def test_gains_interpolate_exponentially_between_anchors():
    units = GainUnits(4, base_quality=3.0)
    with torch.no_grad():
        units.log_gain.normal_()
    q = torch.tensor([1.0, 1.25, 2.0, 5.0])
    gains = units.gain(q)[:, :, 0, 0]
    assert torch.allclose(gains[0], units.log_gain[1].exp()) and torch.allclose(gains[2], units.log_gain[2].exp())
    assert torch.allclose(gains[1], units.log_gain[1].exp() ** 0.75 * units.log_gain[2].exp() ** 0.25)
    assert torch.allclose(gains[3], units.log_gain[-1].exp())


def test_gains_start_as_quantisation_steps_and_inverse_gains_undo_them():
    units = GainUnits(3, base_quality=3.0)
    q = torch.tensor([0.0, 1.7, 3.0, 5.0])
    assert torch.allclose(units.gain(q) * units.inverse_gain(q), torch.ones(4, 3, 1, 1))
    assert torch.allclose(units.gain(q)[:, 0, 0, 0], 2.0 ** ((q - 3.0) / 2))


def test_a_warm_started_model_reconstructs_well_at_every_quality(frame, warm_started):
    """Before any post-training, other qualities only change the quantisation step of the q3 model:
    the reconstruction stays close to the image (a wrong inverse gain would wreck it)."""
    single = psnr(frame, code_image(create_model("hyper", 3), frame, None)[1])
    for quality in (0.0, 1.5, 4.5, 5.0):
        assert psnr(frame, code_image(warm_started, frame, None, quality)[1]) > single - 4.0, quality


def test_every_quality_round_trips_bit_exactly_and_rate_grows_with_quality(frame, warm_started):
    image, model = frame, warm_started
    sizes = []
    for quality in QUALITIES:
        out = model.compress(_tensor(image), reconstruct=True, quality=quality)
        decoded = model.decompress(out["strings"], out["shape"], quality=quality)["x_hat"]
        assert torch.equal(decoded, out["x_hat"]), f"quality {quality}"
        sizes.append(sum(len(s[0]) for s in out["strings"]))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


def test_started_from_a_single_rate_checkpoint_it_codes_as_that_checkpoint_at_its_quality(frame, warm_started):
    image, variable = frame, warm_started
    single = create_model("hyper", 3)
    bytes_variable, decoded_variable = code_image(variable, image, None, 3.0)
    bytes_single, decoded_single = code_image(single, image, None)
    assert bytes_variable == bytes_single
    assert (decoded_variable == decoded_single).all()


def test_a_checkpoint_of_another_architecture_is_refused():
    variable = create_model("hyper-vr", pretrained=False)
    with pytest.raises(ValueError, match="does not fit"):
        _load_initial_weights(variable, checkpoint_path("hyper-pc", 3))


def _tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


@pytest.fixture(scope="module")
def warm_started_file(tmp_path_factory, warm_started):
    return export_checkpoint(warm_started, tmp_path_factory.mktemp("hyper-vr") / "model.pt")


@pytest.mark.parametrize("quality", [0.3, 1.0, 2.5, 3.7, 4.2, 5.0])
def test_codec_round_trips_any_quality_on_every_layout(layout_frame, warm_started_file, quality):
    layout = layout_frame[0]
    image, scan, calibration = crop_frame(layout, 96, 160)
    codec = Codec("hyper-vr", quality, checkpoint=str(warm_started_file))
    frame = codec.encode_frame(image, scan, calibration)
    assert frame.header.quality == stored_quality(quality) and frame.header.version == 2
    # A decoder built for another quality reads the quality from the header, with the same weights.
    decoder = Codec("hyper-vr", 3, checkpoint=str(warm_started_file))
    assert np.array_equal(decoder.decode(frame.data, scan, calibration), frame.reconstruction)


def test_a_codec_at_another_quality_shares_its_weights_and_codes_as_one_made_for_it(frame, warm_started_file):
    """Codec.at_quality, which the encoder node's rate control uses per frame: free for a
    variable-rate model (the same network), the same bytes as a codec built at that quality; a
    single-rate model loads that quality's weights; a quality the model lacks is refused."""
    codec = Codec("hyper-vr", 4.5, checkpoint=str(warm_started_file))
    other = codec.at_quality(2.3)
    assert other.model is codec.model and codec.quality == 4.5 and other.quality == stored_quality(2.3)
    built = Codec("hyper-vr", 2.3, checkpoint=str(warm_started_file))
    assert other.encode(frame, None, None) == built.encode(frame, None, None)
    with pytest.raises(QualityError, match="outside the range"):
        codec.at_quality(5.5)
    single = Codec("hyper", 4)
    assert single.at_quality(2).model is not single.model
    assert single.at_quality(2).encode(frame, None, None) == Codec("hyper", 2).encode(frame, None, None)
    with pytest.raises(QualityError, match="one of"):
        single.at_quality(2.5)


def test_cli_codes_a_real_quality_and_refuses_one_outside_the_range(tmp_path, warm_started_file):
    image, scan, calib = (str(DATA / p) for p in LAYOUT_FRAMES["kitti_raw"])
    args = ["--model", "hyper-vr", "--checkpoint", str(warm_started_file), "--scan", scan, "--calib", calib]
    encoded = pcic("encode", image, "-o", str(tmp_path / "f.pcic"), "--quality", "2.5", *args)
    assert encoded.returncode == 0, encoded.stderr
    assert "quality:           2.5" in pcic("info", str(tmp_path / "f.pcic")).stdout
    refused = pcic("encode", image, "-o", str(tmp_path / "g.pcic"), "--quality", "5.5", *args)
    assert refused.returncode == 2 and "outside the range" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "g.pcic").exists()


def test_a_warm_started_point_cloud_model_codes_exactly_as_its_baseline(warm_started_file):
    """hyper-pc-vr loaded with hyper-vr's weights: at step 0 its joins and refiner add exact zeros, so
    the y and z strings and the reconstruction are the baseline's, byte for byte, at any quality."""
    baseline = create_model("hyper-vr", checkpoint=warm_started_file)
    model = create_model("hyper-pc-vr", pretrained=False)
    _load_initial_weights(model, warm_started_file)
    model.update(force=True)
    image, scan, calibration = crop_frame("kitti_raw", 128, 256)
    equalized = equalize_depth(project_points(scan, calibration, *image.shape[:2]))
    assert equalized.any()
    for quality in (0.5, 2.5, 4.2):
        assert code_image(model, image, equalized, quality)[0] == code_image(baseline, image, None, quality)[0]
        pc_strings = model.compress(_tensor(image), _c_proj(equalized), quality=quality)["strings"]
        assert pc_strings == baseline.compress(_tensor(image), quality=quality)["strings"]
        decoded = code_image(model, image, equalized, quality)[1]
        assert np.array_equal(decoded, code_image(baseline, image, None, quality)[1])


def _c_proj(equalized):
    return torch.from_numpy(equalized).float().div(255.0)[None, None]


def test_eval_codes_a_variable_rate_model_at_real_qualities_from_its_one_checkpoint(tmp_path, warm_started_file):
    (tmp_path / "hyper-vr.pt").write_bytes(warm_started_file.read_bytes())
    frame = discover_frames(DATA / "kitti_object")[0]
    results = evaluate([frame], ["hyper-vr"], [1.5, 3.0, 4.5], crop=(64, 256), checkpoint_dir=tmp_path, progress=False)
    records = results["records"]
    assert [record["quality"] for record in records] == [1.5, 3, 4.5]
    assert [record["bpp"] for record in records] == sorted(record["bpp"] for record in records)
    assert set(results["meta"]["weights"].values()) == {str(tmp_path / "hyper-vr.pt")}
