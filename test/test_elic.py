"""ELIC, ELIC-PC, its ablations and ELIC(PA): bit-exact round trips on real crops, and the layers the
point cloud adds (and only those)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import LAYOUT_FRAMES, REPO, Codecs, assert_ablations_round_trip, crop_frame, load_layout_frame

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import unpack
from pcic_ros.codec.zoo import create_model, model_names
from pcic_ros.models.pointcloud import ABLATIONS, PointCloudConfig

MODELS = ("elic", "elic-pc")
#: Crop size: neither side a multiple of 64, so every round trip also exercises padding.
CROP = (100, 180)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def assert_decodes_in_a_fresh_process(frames: dict, decoder_model: str, crop: tuple[int, int], tmp_path) -> None:
    """A new process with a ``Codec(decoder_model)`` decodes each layout's frame (of a ``crop_frame``
    crop) to the encoder's reconstruction, building whatever model the headers name."""
    paths = {}
    for layout, frame in frames.items():
        path = tmp_path / f"{layout}.pcic"
        path.write_bytes(frame.data)
        np.save(tmp_path / f"{layout}.npy", frame.reconstruction)
        paths[str(path)] = layout
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO / "test")!r})
        from conftest import crop_frame
        from pcic_ros.codec.api import Codec
        codec = Codec({decoder_model!r}, 4, device="cpu")
        for path, layout in json.loads(sys.argv[1]).items():
            _, scan, calib = crop_frame(layout, {crop[0]}, {crop[1]})
            image = codec.decode(open(path, "rb").read(), scan, calib)
            assert (image == np.load(path[:-5] + ".npy")).all(), path
        print("decoded", len(json.loads(sys.argv[1])))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert f"decoded {len(paths)}" in result.stdout


@pytest.fixture(scope="module")
def codecs():
    return Codecs()


def encode_layouts(codecs, models: tuple[str, ...], crop: tuple[int, int]) -> dict:
    """Every model on every layout's crop, encoded once: (layout, model) -> (frame, image, scan, calib)."""
    out = {}
    for layout in LAYOUT_FRAMES:
        image, scan, calib = crop_frame(layout, *crop)
        for name in models:
            out[layout, name] = (codecs[name].encode_frame(image, scan, calib), image, scan, calib)
    return out


def assert_round_trip(codec: Codec, encoded_frame: tuple, padded: tuple[int, int]) -> list[bytes]:
    """The frame decodes to the encoder's reconstruction and its header describes the crop; returns
    the container's strings."""
    frame, image, scan, calib = encoded_frame
    decoded = codec.decode(frame.data, scan, calib)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, frame.reconstruction)
    header, strings = unpack(frame.data)
    assert (header.model, header.height, header.width) == (codec.model_name, *image.shape[:2])
    assert (header.padded_height, header.padded_width) == padded
    return strings


@pytest.fixture(scope="module")
def encoded(codecs):
    return encode_layouts(codecs, MODELS, CROP)


def test_registry_has_elic_every_ablation_and_the_widened_baseline():
    names = set(model_names())
    assert {"elic", "elic-pc", "elic-pa"} <= names
    assert {f"elic-pc-{ablation}" for ablation in ABLATIONS if ablation != "full"} <= names


@pytest.mark.parametrize("layout", sorted(LAYOUT_FRAMES))
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_bit_exact(codecs, encoded, layout, name):
    strings = assert_round_trip(codecs[name], encoded[layout, name], padded=(128, 192))
    # Two checkerboard passes for each of the five channel groups, then z: all in the one container.
    assert len(strings) == codecs[name].model.num_strings == 11


def test_elic_pc_decodes_in_a_fresh_process_to_the_encoders_reconstruction(encoded, tmp_path):
    # The decoder is set up for plain ELIC: it must build ELIC-PC from the headers alone.
    assert_decodes_in_a_fresh_process({layout: encoded[layout, "elic-pc"][0] for layout in LAYOUT_FRAMES}, "elic",
                                      CROP, tmp_path)  # fmt: skip


def test_every_ablation_round_trips_with_the_scan_only_where_it_is_used(codecs):
    assert_ablations_round_trip(codecs, "elic", *crop_frame("kitti_object", 60, 100), extra={"elic-pa": (False, False)})


def assert_features_enter_the_transforms_at_their_own_scale(name: str, height: int, width: int):
    """Each c_k (at H / 2^(k-1)) is concatenated once in the analysis and once in the synthesis;
    returns the model's point-cloud features for further checks."""
    model = create_model(name, pretrained=False)
    x, c_proj = torch.rand(1, 3, height, width), torch.rand(1, 1, height, width)
    features = model.training_features(c_proj)
    seen = []
    for transform in (model.g_a, model.g_s):
        for layer, slot in zip(transform.layers, transform.slots, strict=True):
            if slot is not None:
                layer.register_forward_pre_hook(lambda _, args, slot=slot: seen.append((slot, args[0].shape[-2:])))
    with torch.no_grad():
        model.g_s(model.g_a(x, features), features)
    scales = [(k, (height >> k, width >> k)) for k in range(3)]
    assert sorted(seen) == sorted(2 * scales)
    return features


def test_point_cloud_features_enter_the_transforms_at_their_own_scale():
    features = assert_features_enter_the_transforms_at_their_own_scale("elic-pc", 64, 128)
    assert features.c_hyper.shape[-2:] == (4, 8)


def test_ablations_change_only_the_side_they_name(codecs):
    baseline, full = codecs["elic"].model, codecs["elic-pc"].model
    decoder_only, encoder_only = codecs["elic-pc-decoder-only"].model, codecs["elic-pc-encoder-only"].model
    assert shapes(decoder_only.g_a) == shapes(baseline.g_a) and not decoder_only.g_a.conditioned
    assert shapes(encoder_only.g_s) == shapes(baseline.g_s) and not encoder_only.g_s.conditioned
    assert shapes(decoder_only.g_s) == shapes(full.g_s) and shapes(encoder_only.g_a) == shapes(full.g_a)
    assert shapes(full.g_a) != shapes(baseline.g_a) and shapes(full.g_s) != shapes(baseline.g_s)
    # The entropy model outside the refiner is ELIC's own in every variant.
    for model in (decoder_only, encoder_only, full):
        entropy = {k: v for k, v in shapes(model.latent_codec).items() if not k.startswith("refiner.")}
        assert entropy == shapes(baseline.latent_codec)
    assert baseline.refiner is None


def test_refiner_takes_c_hyper_only_with_ff(codecs):
    no_ff, full = codecs["elic-pc-no-ff"].model, codecs["elic-pc"].model
    side_channels = 2 * full.N
    hyper_channels = PointCloudConfig().hyper_channels
    assert no_ff.refiner.condition_channels == 0
    assert no_ff.refiner.layers[0].in_channels == side_channels
    assert full.refiner.layers[0].in_channels == side_channels + hyper_channels


def test_widened_elic_matches_elic_pc_in_parameter_count(codecs):
    elic, elic_pc, elic_pa = (parameter_count(codecs[name].model) for name in ("elic", "elic-pc", "elic-pa"))
    assert elic < elic_pc
    assert abs(elic_pa - elic_pc) <= 0.03 * elic_pc, (elic_pa, elic_pc)


def test_training_forward_reaches_every_point_cloud_path():
    model = create_model("elic-pc", pretrained=False).train()
    x, c_proj = torch.rand(2, 3, 64, 128), torch.rand(2, 1, 64, 128)
    out = model(x, c_proj)
    assert out["x_hat"].shape == x.shape and out["c_pre"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (2, model.M, 4, 8)
    assert out["likelihoods"]["z"].shape == (2, model.N, 1, 2)
    rate = sum(-likelihoods.log2().sum() for likelihoods in out["likelihoods"].values())
    (rate + (out["x_hat"] - x).square().mean()).backward()
    # FF's output is trained through the refiner, and the loss reaches back to PIP.
    assert model.branch.mcm.fuse4.weight.grad.abs().sum() > 0
    assert model.refiner.layers[0].weight.grad.abs().sum() > 0
    assert model.branch.pip.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_is_bit_exact():
    image, scan, calib = load_layout_frame("kitti_raw")
    for name in MODELS:
        codec = Codec(name, 4, device="cuda")
        frame = codec.encode_frame(image, scan, calib)
        np.testing.assert_array_equal(codec.decode(frame.data, scan, calib), frame.reconstruction, err_msg=name)
