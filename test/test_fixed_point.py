"""The fixed-point path that decides the entropy coder's distributions (issue 5): close to the float
networks, and the same bits whatever the summation order, thread count or process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, load_layout_frame
from torch import nn
from torch.nn import functional as F

from pcic_ros.codec import fixed_point
from pcic_ros.codec.fixed_point import FRACTION_BITS, FixedPointError, _banded_conv2d, _sigmoid_table, evaluate
from pcic_ros.codec.projection import equalize_depth, project_points
from pcic_ros.codec.zoo import create_model

ONE = 2.0**FRACTION_BITS


@pytest.fixture(scope="module")
def hyper_pc():
    return create_model("hyper-pc", 2)


@pytest.fixture(scope="module")
def c_proj():
    """The equalised depth of a real frame's scan, cropped to 128 x 256 (divisible by 64)."""
    image, scan, calibration = load_layout_frame("kitti_object")
    height, width = image.shape[:2]
    depth = equalize_depth(project_points(scan, calibration, height, width))
    crop = depth[height - 128 :, width // 2 - 128 : width // 2 + 128]
    assert np.count_nonzero(crop) > 500
    return torch.from_numpy(crop.astype(np.float32) / 255.0)[None, None]


def on_grid(value: torch.Tensor) -> bool:
    return torch.equal(torch.round(value.double() * ONE), value.double() * ONE)


def test_branch_and_scales_stay_close_to_the_float_networks_used_in_training(hyper_pc, c_proj):
    z_hat = torch.round(torch.randn(1, hyper_pc.N, 2, 4, generator=torch.Generator().manual_seed(0)) * 3)
    with torch.no_grad():
        hyper_pc.train()
        try:
            expected = hyper_pc.branch(c_proj)
            expected_scales = hyper_pc._scales(z_hat, expected)
        finally:
            hyper_pc.eval()
        fixed = hyper_pc.branch(c_proj)
        scales = hyper_pc._scales(z_hat, fixed)
    assert not on_grid(expected.c_hyper) and on_grid(fixed.c_hyper) and on_grid(scales)
    for name in ("c_pre", "c1", "c2", "c3", "c_hyper"):
        reference, value = getattr(expected, name), getattr(fixed, name)
        assert value.dtype == torch.float32 and value.shape == reference.shape
        assert torch.allclose(value, reference, atol=2e-3), name
    assert torch.allclose(scales, expected_scales, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["hyper-pc", "elic-pc", "mlic-pc"])
def test_the_modules_that_decide_distributions_compute_in_fixed_point(name):
    model = create_model(name, 1, pretrained=False)
    marked = {path for path, module in model.named_modules() if getattr(module, "computes_in_fixed_point", False)}
    if name == "hyper-pc":
        expected = {"branch", "h_s", "refiner"}
    elif name == "mlic-pc":
        expected = {"branch", "latent_codec.hyper.h_s", "latent_codec.refiner"}
        for k in range(model.slices):
            expected |= {f"latent_codec.y.{part}.y{k}" for part in ("local_context", "entropy_parameters")}
            if k:
                expected |= {f"latent_codec.y.{part}.y{k}" for part in ("channel_context", "global_context")}
    else:
        groups = len(model.groups)
        expected = {"branch", "latent_codec.hyper.h_s", "latent_codec.refiner"}
        expected |= {f"latent_codec.y.channel_context.y{k}" for k in range(1, groups)}
        for k in range(groups):
            prefix = f"latent_codec.y.latent_codec.y{k}"
            expected |= {f"{prefix}.context_prediction", f"{prefix}.entropy_parameters"}
    assert marked == expected
    # The marking changes no parameter name: checkpoints load as before.
    assert set(model.state_dict()) == set(create_model(name, 1, pretrained=False).state_dict())


def test_summation_order_does_not_change_a_bit():
    """Permuting the input channels (of the input and the kernel alike) reorders every convolution's
    sums; float32 results move, fixed-point results must not."""
    torch.manual_seed(1)
    layer = nn.Conv2d(64, 32, 5, padding=2)
    x = torch.randn(1, 64, 24, 24) * 4
    order = torch.randperm(64)
    permuted = nn.Conv2d(64, 32, 5, padding=2)
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, order])
        permuted.bias.copy_(layer.bias)
    assert torch.equal(evaluate(layer, x), evaluate(permuted, x[:, order]))
    transposed = nn.ConvTranspose2d(64, 32, 5, stride=2, padding=2, output_padding=1)
    permuted_transposed = nn.ConvTranspose2d(64, 32, 5, stride=2, padding=2, output_padding=1)
    with torch.no_grad():
        permuted_transposed.weight.copy_(transposed.weight[order])
        permuted_transposed.bias.copy_(transposed.bias)
    assert torch.equal(evaluate(transposed, x), evaluate(permuted_transposed, x[:, order]))


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "dilation", "groups"),
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 1, 2, 1, 1), (5, 2, (2, 1), 1, 2), (3, 1, 2, 2, 1), (1, 1, 0, 1, 1),
     (4, 3, 0, 1, 1)],
)  # fmt: skip
def test_convolving_a_band_of_rows_at_a_time_gives_the_whole_frames_bits(
    monkeypatch, kernel_size, stride, padding, dilation, groups
):
    """The CPU path convolves bands of output rows (for the cache); with bands of one or a few rows, at
    the top and bottom edges and odd heights, every output must be the whole convolution's."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randint(-(2**20), 2**20, (1, 8, 37, 29), generator=generator).double()
    kernel = torch.randint(-4095, 4096, (6, 8 // groups, kernel_size, kernel_size), generator=generator).double()
    whole = torch.conv2d(x, kernel, None, stride, padding, dilation, groups)
    row_bytes = kernel[0].numel() * whole.shape[-1] * 8
    for rows in (1, 3):
        monkeypatch.setattr(fixed_point, "_BAND_BYTES", rows * row_bytes)
        assert torch.equal(_banded_conv2d(x, kernel, stride, padding, dilation, groups), whole)


EVALUATE_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from pcic_ros.codec.fixed_point import evaluate
from pcic_ros.codec.zoo import create_model
model = create_model("hyper-pc", 2)
c_proj = torch.from_numpy(np.load(sys.argv[2]))
z_hat = torch.from_numpy(np.load(sys.argv[3]))
with torch.no_grad():
    np.save(sys.argv[4], model._scales(z_hat, model.branch(c_proj)).numpy())
"""


def test_one_and_two_threads_in_other_processes_give_the_same_scales(c_proj, tmp_path):
    z_hat = torch.round(torch.randn(1, 96, 2, 4, generator=torch.Generator().manual_seed(2)) * 3)
    np.save(tmp_path / "c_proj.npy", c_proj.numpy())
    np.save(tmp_path / "z_hat.npy", z_hat.numpy())
    for threads in (1, 2):
        arguments = [str(threads), *(str(tmp_path / n) for n in ("c_proj.npy", "z_hat.npy", f"scales{threads}.npy"))]
        subprocess.run([sys.executable, "-c", EVALUATE_SCRIPT, *arguments], check=True, cwd=REPO, timeout=300)
    one, two = np.load(tmp_path / "scales1.npy"), np.load(tmp_path / "scales2.npy")
    assert one.tobytes() == two.tobytes()


def test_sigmoid_table_is_monotonic_and_within_one_step_of_the_sigmoid():
    table = _sigmoid_table()
    x = torch.arange(-4096, 4097, dtype=torch.float64) / 256
    assert table[0] == 0 and table[-1] == ONE and table[4096] == ONE / 2
    assert torch.all(table[1:] >= table[:-1])
    assert torch.all((table - torch.sigmoid(x) * ONE).abs() <= 0.5 + 1e-6)


def test_gelu_softmax_and_matmul_follow_their_float_counterparts():
    x = torch.linspace(-12, 12, 4001).reshape(1, 1, 1, -1)
    # GELU is x times a table entry, which is within half a step: the error grows with |x|.
    assert torch.all((evaluate(nn.GELU(), x) - F.gelu(x)).abs() <= (0.5 * x.abs() + 1) / ONE)
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(3)) * 5
    probabilities = evaluate(lambda v: v.softmax(dim=2), logits)
    assert torch.allclose(probabilities, logits.softmax(dim=2), atol=4 / ONE)
    assert torch.allclose(probabilities.sum(dim=2), torch.ones(3, 7), atol=50 / ONE)
    a, b = torch.randn(4, 8, 16) * 3, torch.randn(4, 16, 5) * 3
    assert torch.allclose(evaluate(torch.matmul, a, b), a @ b, atol=1e-3)


def test_operations_without_an_exact_rule_are_refused():
    with pytest.raises(FixedPointError, match="no fixed-point rule"):
        evaluate(nn.Tanh(), torch.ones(1, 1, 2, 2))
    with pytest.raises(FixedPointError, match="fixed-point tensors"):
        evaluate(lambda x: x + 1.0, torch.ones(1, 1, 2, 2))


def test_growth_past_exact_integers_is_refused():
    layer = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    with pytest.raises(FixedPointError, match="2\\*\\*52"):
        evaluate(layer, torch.full((1, 1, 2, 2), 2.0**40))
