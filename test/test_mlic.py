"""MLIC, MLIC-PC and its ablations: bit-exact round trips on real crops, the multi-reference entropy model's
references (the global context reaches the parameters, and only the non-anchors'), one parallel step
per checkerboard half, and the parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LAYOUT_FRAMES, Codecs, assert_ablations_round_trip, crop_frame, load_layout_frame
from test_elic import (
    assert_decodes_in_a_fresh_process,
    assert_features_enter_the_transforms_at_their_own_scale,
    assert_round_trip,
    encode_layouts,
    parameter_count,
    shapes,
)

from pcic_ros.codec.api import Codec
from pcic_ros.codec.zoo import create_model, model_names
from pcic_ros.models import Elic
from pcic_ros.models.mlic import checkerboard_anchors
from pcic_ros.models.pointcloud import ABLATIONS

MODELS = ("mlic", "mlic-pc")
#: Crop size: neither side a multiple of 64, so every round trip also exercises padding; y is 4 x 8.
CROP = (60, 100)


@pytest.fixture(scope="module")
def codecs():
    return Codecs()


@pytest.fixture(scope="module")
def encoded(codecs):
    return encode_layouts(codecs, MODELS, CROP)


def test_registry_has_mlic_and_every_ablation():
    names = set(model_names())
    assert {"mlic", "mlic-pc"} <= names
    assert {f"mlic-pc-{ablation}" for ablation in ABLATIONS if ablation != "full"} <= names


@pytest.mark.parametrize("layout", sorted(LAYOUT_FRAMES))
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_bit_exact(codecs, encoded, layout, name):
    strings = assert_round_trip(codecs[name], encoded[layout, name], padded=(64, 128))
    # Anchors and non-anchors of each of the five slices, then z: all in the one container.
    assert len(strings) == codecs[name].model.num_strings == 11
    assert all(strings)


def test_mlic_pc_decodes_in_a_fresh_process_to_the_encoders_reconstruction(encoded, tmp_path):
    # The decoder is set up for plain MLIC: it must build MLIC-PC from the headers alone.
    assert_decodes_in_a_fresh_process({layout: encoded[layout, "mlic-pc"][0] for layout in LAYOUT_FRAMES}, "mlic",
                                      CROP, tmp_path)  # fmt: skip


def test_every_ablation_round_trips_with_the_scan_only_where_it_is_used(codecs):
    assert_ablations_round_trip(codecs, "mlic", *crop_frame("kitti360_object", 40, 60))


def test_decoding_takes_one_parallel_step_per_checkerboard_half(codecs, encoded, monkeypatch):
    frame, _, scan, calib = encoded["kitti_raw", "mlic-pc"]
    codec = codecs["mlic-pc"]
    entropy_model = codec.model.entropy_model
    calls: dict[str, int] = {}

    def count(label: str):
        def hook(*_):
            calls[label] = calls.get(label, 0) + 1

        return hook

    handles = [
        module.register_forward_hook(count(f"{kind}.{key}"))
        for kind in ("channel_context", "local_context", "global_context", "entropy_parameters")
        for key, module in getattr(entropy_model, kind).items()
    ]
    coder = entropy_model.gaussian_conditional
    decoded_symbols = []
    decompress = coder.decompress

    def counting_decompress(strings, indexes, *args, **kwargs):
        decoded_symbols.append(indexes.numel())
        return decompress(strings, indexes, *args, **kwargs)

    monkeypatch.setattr(coder, "decompress", counting_decompress)
    try:
        codec.decode(frame.data, scan, calib)
    finally:
        for handle in handles:
            handle.remove()

    slices = range(entropy_model.slices)
    expected = {f"local_context.y{k}": 1 for k in slices}
    expected |= {f"entropy_parameters.y{k}": 2 for k in slices}
    expected |= {f"{kind}.y{k}": 1 for kind in ("channel_context", "global_context") for k in slices if k}
    assert calls == expected
    # One rANS call per half, each on all of the half's symbols: 32 channels x 16 of the 4 x 8 positions.
    assert decoded_symbols == [32 * 16] * (2 * entropy_model.slices)


def test_global_context_moves_the_non_anchor_parameters_only():
    model = create_model("mlic", pretrained=False)
    entropy_model = model.entropy_model
    image = crop_frame("kitti_object", 64, 128)[0]
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
    captured = []
    entropy_model.gaussian_conditional.register_forward_pre_hook(
        lambda _, args, kwargs: captured.append((args[1], kwargs["means"])), with_kwargs=True
    )
    with torch.no_grad():
        y = model.g_a(x)
        side_params = model.latent_codec.hyper(y)["params"]
        entropy_model(y, side_params)
        for module in entropy_model.global_context.values():
            module.register_forward_hook(lambda _, __, output: torch.zeros_like(output))
        entropy_model(y, side_params)
    (scales, means), (scales_without, means_without) = captured
    anchors = checkerboard_anchors(*y.shape[-2:])
    g = entropy_model.slice_channels
    for with_global, without_global in ((scales, scales_without), (means, means_without)):
        first, second = with_global[:, :g], with_global[:, g : 2 * g]
        # The first slice has no previous slice, and anchors never see their own slice's global
        # context (later anchors do, through the channel context of the slices before them) ...
        assert torch.equal(first, without_global[:, :g])
        assert torch.equal(second[..., anchors], without_global[:, g : 2 * g][..., anchors])
        # ... but every later slice's non-anchors do.
        for k in range(1, entropy_model.slices):
            channels = slice(k * g, (k + 1) * g)
            assert not torch.equal(with_global[:, channels][..., ~anchors], without_global[:, channels][..., ~anchors])


def test_parameter_counts(codecs):
    mlic, mlic_pc = codecs["mlic"].model, codecs["mlic-pc"].model
    # The sizes docs/method.md states; a change of width must update them there.
    assert (parameter_count(mlic), parameter_count(mlic_pc)) == (9_445_475, 12_803_501)
    # MLIC's entropy model makes it the larger codec, as in the paper's Table V.
    assert parameter_count(mlic) > parameter_count(Elic())
    # The point cloud adds the branch, the refiner and the extra input channels of g_a and g_s: the
    # multi-reference entropy model and the hyperprior are MLIC's own.
    assert shapes(mlic_pc.entropy_model) == shapes(mlic.entropy_model)
    assert shapes(mlic_pc.latent_codec.hyper) == shapes(mlic.latent_codec.hyper)
    added = sum(parameter_count(module) for module in (mlic_pc.branch, mlic_pc.refiner))
    added += sum(parameter_count(getattr(mlic_pc, t)) - parameter_count(getattr(mlic, t)) for t in ("g_a", "g_s"))
    assert parameter_count(mlic_pc) - parameter_count(mlic) == added
    assert mlic.refiner is None and mlic_pc.refiner.condition_channels == mlic_pc.point_cloud.hyper_channels


def test_point_cloud_features_enter_the_transforms_at_their_own_scale():
    assert_features_enter_the_transforms_at_their_own_scale("mlic-pc", 64, 64)


def test_training_forward_reaches_every_reference():
    model = create_model("mlic-pc", pretrained=False).train()
    x, c_proj = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    out = model(x, c_proj)
    assert out["x_hat"].shape == x.shape and out["c_pre"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, model.M, 4, 4)
    assert out["likelihoods"]["z"].shape == (1, model.N, 1, 1)
    rate = sum(-likelihoods.log2().sum() for likelihoods in out["likelihoods"].values())
    (rate + (out["x_hat"] - x).square().mean()).backward()
    entropy_model = model.entropy_model
    last = f"y{entropy_model.slices - 1}"
    for module in (
        entropy_model.channel_context[last],
        entropy_model.local_context[last],
        entropy_model.global_context[last].key,
        entropy_model.global_context[last].query,
        model.refiner,
        model.branch.mcm.fuse4,
    ):
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0, module


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_is_bit_exact():
    image, scan, calib = load_layout_frame("kitti_raw")
    for name in MODELS:
        codec = Codec(name, 4, device="cuda")
        frame = codec.encode_frame(image, scan, calib)
        np.testing.assert_array_equal(codec.decode(frame.data, scan, calib), frame.reconstruction, err_msg=name)
