"""MLIC (Jiang et al. 2023) and MLIC-PC (the same codec with the point-cloud branch).

MLIC's multi-reference entropy model (MEM) is not in CompressAI. ``MultiReferenceLatentCodec`` builds it
from CompressAI parts: ``GaussianConditional`` and its rANS coder for the symbols, a
``CheckerboardMaskedConv2d`` for the local context, and it sits as the codec of y inside the same
``RefinedHyperpriorLatentCodec`` as ELIC-PC, so the Hyper Refiner works here exactly as there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import HyperLatentCodec, LatentCodec
from compressai.layers import (
    CheckerboardMaskedConv2d,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv1x1,
    conv3x3,
    sequential_channel_ramp,
    subpel_conv3x3,
)
from compressai.ops import quantize_ste
from torch import Tensor, nn

from pcic_ros.codec.fixed_point import compute_in_fixed_point
from pcic_ros.models.base import LatentCodecModel
from pcic_ros.models.elic import RefinedHyperpriorLatentCodec, _conditioned
from pcic_ros.models.pointcloud import HyperRefiner, PointCloudConfig

__all__ = ["GlobalSpatialContext", "Mlic", "MultiReferenceLatentCodec", "checkerboard_anchors"]

#: ``code_half(slice, mask, scales, means)``: code the positions of ``mask`` of one slice with these
#: Gaussian parameters and return the slice's y_hat there (zero elsewhere).
HalfCoder = Callable[[int, Tensor, Tensor, Tensor], Tensor]


def checkerboard_anchors(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """The anchor half of a height x width checkerboard (True where row + column is even): the
    positions decoded first, which ``CheckerboardMaskedConv2d`` reads to predict the other half."""
    rows = torch.arange(height, device=device).unsqueeze(1)
    columns = torch.arange(width, device=device).unsqueeze(0)
    return (rows + columns) % 2 == 0


def _scatter(values: Tensor, mask: Tensor) -> Tensor:
    """B x C x K values of the K positions of ``mask`` -> B x C x H x W, zero elsewhere."""
    out = values.new_zeros((*values.shape[:2], *mask.shape))
    out[:, :, mask] = values
    return out


class GlobalSpatialContext(nn.Module):
    """MLIC's global spatial context of a slice's non-anchors, from its anchors and the previous slice.

    Adjacent slices of y show the same spatial structure, so MLIC takes the attention map between the
    positions of the previous slice (fully decoded) as the map between the same positions of the
    current one: queries from the previous slice at every position, keys from the previous slice at
    the anchors, values from the current slice's decoded anchors. Each non-anchor thus gathers the
    anchors, anywhere in the frame, whose previous-slice features resemble its own.

    The attention is MLIC++'s linear form: softmax over channels for each query, softmax over anchor
    positions for each key channel. The product of the two is a row-stochastic attention map that is
    never formed; the keys and values are first reduced to a (C / heads)^2 summary per head, so time
    and memory grow linearly with the number of positions (a full map would need a few GB at 4K).
    Everything is one batched step over all positions: no per-pixel work.
    """

    def __init__(self, channels: int, out_channels: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} heads do not divide {channels} channels")
        self.heads = heads
        self.query = conv1x1(channels, channels)
        self.key = conv1x1(channels, channels)
        self.value = conv1x1(channels, channels)
        self.project = conv1x1(channels, out_channels)

    def forward(self, previous: Tensor, anchors: Tensor, anchor_mask: Tensor) -> Tensor:
        """``previous``: the previous slice's y_hat; ``anchors``: this slice's y_hat on ``anchor_mask``
        (zero elsewhere). Returns the context at every position; only the non-anchors' is used."""
        batch, channels, height, width = previous.shape
        heads = (batch, self.heads, channels // self.heads, -1)
        queries = self.query(previous).reshape(heads).softmax(dim=2)
        keys = self.key(previous)[:, :, anchor_mask].reshape(heads).softmax(dim=3)
        values = self.value(anchors)[:, :, anchor_mask].reshape(heads)
        # summary[c, v] = sum over anchors q of keys[c, q] * values[v, q]; then
        # context[v, p] = sum_c queries[c, p] * summary[c, v] = sum_q attention[p, q] * values[v, q].
        summary = keys @ values.transpose(2, 3)
        context = summary.transpose(2, 3) @ queries
        return self.project(context.reshape(batch, channels, height, width))


class MultiReferenceLatentCodec(LatentCodec):
    """MLIC's multi-reference entropy model for y, given the hyperprior's side parameters.

    y is cut into ``slices`` equal slices of channels, coded one after the other. Each slice is coded in
    two checkerboard halves, anchors then non-anchors, and each half is one parallel step: one run of
    the slice's entropy-parameter network over all positions, one ``GaussianConditional`` call on the
    half's symbols (one rANS string). The Gaussian parameters of slice k come from

    - the side parameters (hyperprior, refined with c_hyper in MLIC-PC), for both halves;
    - the channel context: a small network over all slices before k, for both halves (k > 0);
    - the local spatial context: a 5x5 checkerboard masked convolution over slice k's decoded anchors,
      for the non-anchors;
    - the global spatial context (``GlobalSpatialContext``) from slice k's anchors and slice k - 1,
      for the non-anchors (k > 0).

    As in the checkerboard model of He et al. 2021, one pointwise network per slice serves both
    halves: for the anchors the spatial contexts, not yet known, are zeros. The encoder walks exactly
    the decoder's steps on the dequantised symbols, so both compute the same parameters.
    """

    def __init__(self, slices: int, slice_channels: int, side_channels: int, heads: int = 4) -> None:
        super().__init__()
        if slices < 1:
            raise ValueError("at least one slice")
        g = slice_channels
        self.slices, self.slice_channels = int(slices), int(g)

        def ramp(in_ch: int, out_ch: int, kernel_size: int) -> nn.Module:
            return sequential_channel_ramp(
                in_ch,
                out_ch,
                min_ch=out_ch,
                num_layers=3,
                interp="linear",
                make_layer=nn.Conv2d,
                make_act=nn.GELU,
                kernel_size=kernel_size,
                stride=1,
                padding=kernel_size // 2,
            )

        self.channel_context = nn.ModuleDict({f"y{k}": ramp(k * g, 2 * g, 3) for k in range(1, slices)})
        self.local_context = nn.ModuleDict(
            {f"y{k}": CheckerboardMaskedConv2d(g, 2 * g, kernel_size=5, stride=1, padding=2) for k in range(slices)}
        )
        self.global_context = nn.ModuleDict({f"y{k}": GlobalSpatialContext(g, 2 * g, heads) for k in range(1, slices)})
        # Parameter aggregation is pointwise (1x1), as in ELIC: the spatial reach is the contexts' own.
        self.entropy_parameters = nn.ModuleDict(
            {f"y{k}": ramp(side_channels + self.context_channels(k) + (k > 0) * 2 * g, 2 * g, 1) for k in range(slices)}
        )
        self.gaussian_conditional = GaussianConditional(None)

    def context_channels(self, k: int) -> int:
        """Channels of slice k's spatial contexts (local, and global after the first slice)."""
        return (2 if k > 0 else 1) * 2 * self.slice_channels

    def _walk(self, side_params: Tensor, code_half: HalfCoder) -> Tensor:
        """Run the decoding order (slice by slice, anchors then non-anchors), handing each half's
        Gaussian parameters to ``code_half``; return y_hat. Encoder, decoder and training share it."""
        batch, _, height, width = side_params.shape
        anchor_mask = checkerboard_anchors(height, width, side_params.device)
        decoded: list[Tensor] = []
        for k in range(self.slices):
            key = f"y{k}"
            references = [side_params]
            if k > 0:
                references.append(self.channel_context[key](torch.cat(decoded, dim=1)))
            unknown = side_params.new_zeros((batch, self.context_channels(k), height, width))
            params = self.entropy_parameters[key](torch.cat([*references, unknown], dim=1))
            anchors = code_half(k, anchor_mask, *params.chunk(2, dim=1))

            contexts = [self.local_context[key](anchors)]
            if k > 0:
                contexts.append(self.global_context[key](decoded[-1], anchors, anchor_mask))
            params = self.entropy_parameters[key](torch.cat([*references, *contexts], dim=1))
            non_anchors = code_half(k, ~anchor_mask, *params.chunk(2, dim=1))
            decoded.append(anchors + non_anchors)
        return torch.cat(decoded, dim=1)

    def _check_slices(self, y: Tensor) -> tuple[Tensor, ...]:
        if y.shape[1] != self.slices * self.slice_channels:
            raise ValueError(f"y has {y.shape[1]} channels, expected {self.slices} x {self.slice_channels}")
        return y.split(self.slice_channels, dim=1)

    def forward(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        y_slices = self._check_slices(y)
        scales = [torch.zeros_like(s) for s in y_slices]
        means = [torch.zeros_like(s) for s in y_slices]

        def code_half(k: int, mask: Tensor, scales_k: Tensor, means_k: Tensor) -> Tensor:
            scales[k] = torch.where(mask, scales_k, scales[k])
            means[k] = torch.where(mask, means_k, means[k])
            # y_hat as the decoder sees it (rounded around the mean), with straight-through gradients.
            return torch.where(mask, quantize_ste(y_slices[k] - means_k) + means_k, 0.0)

        y_hat = self._walk(side_params, code_half)
        _, likelihoods = self.gaussian_conditional(y, torch.cat(scales, dim=1), means=torch.cat(means, dim=1))
        return {"likelihoods": {"y": likelihoods}, "y_hat": y_hat}

    def compress(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        """2 x ``slices`` strings (anchors, non-anchors of each slice) and the decoder's y_hat."""
        y_slices = self._check_slices(y)
        strings: list[list[bytes]] = []
        coder = self.gaussian_conditional

        def code_half(k: int, mask: Tensor, scales_k: Tensor, means_k: Tensor) -> Tensor:
            values, means_k = y_slices[k][:, :, mask], means_k[:, :, mask]
            strings.append(coder.compress(values, coder.build_indexes(scales_k[:, :, mask]), means_k))
            # The very values the decoder gets back: the coded integers plus the same means.
            return _scatter(coder.dequantize(coder.quantize(values, "symbols", means_k), means_k), mask)

        y_hat = self._walk(side_params, code_half)
        return {"strings": strings, "shape": tuple(y.shape[-2:]), "y_hat": y_hat}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], side_params: Tensor) -> dict[str, Any]:
        if len(strings) != 2 * self.slices:
            raise ValueError(f"expected {2 * self.slices} strings for y, got {len(strings)}")
        if tuple(side_params.shape[-2:]) != tuple(shape):
            raise ValueError(f"side parameters of {tuple(side_params.shape[-2:])} for a latent of {tuple(shape)}")
        pending = iter(strings)
        coder = self.gaussian_conditional

        def code_half(k: int, mask: Tensor, scales_k: Tensor, means_k: Tensor) -> Tensor:
            indexes = coder.build_indexes(scales_k[:, :, mask])
            return _scatter(coder.decompress(next(pending), indexes, means=means_k[:, :, mask]), mask)

        return {"y_hat": self._walk(side_params, code_half)}


class Mlic(LatentCodecModel):
    """MLIC, optionally with the point-cloud branch (MLIC-PC).

    Transforms: MLIC's, residual blocks after Cheng et al. 2020 (strided residual blocks down, sub-pixel
    residual blocks up, y at H/16). With ``point_cloud``, c1 (H), c2 (H/2), c3 (H/4) are concatenated
    to the inputs of the analysis blocks at those scales and of the synthesis blocks that leave H/4 and
    H/2, and the synthesis ends in a 3x3 convolution over [features, c1] instead of a sub-pixel
    convolution to RGB: the same places as in ELIC-PC and HYPER-PC (eq. 9-10).

    Entropy model: a hyperprior (z, ``EntropyBottleneck``) whose side parameters, refined with c_hyper
    by the Hyper Refiner in MLIC-PC (eq. 12-13), feed ``MultiReferenceLatentCodec``.

    Args:
        N: channels of the transforms and of z (the official model uses 192; see ``Elic`` for why
            these models are narrower).
        M: latent channels (official: 320).
        slices: slices of y; each is coded as two strings, and with z the frame's
            2 * slices + 1 strings must fit the container. The official 10 slices of 32 channels
            become 5 of 32 at M = 160.
        heads: attention heads of the global spatial context.
        point_cloud: the point-cloud branch's configuration, or None for plain MLIC.
    """

    def __init__(
        self,
        N: int = 96,
        M: int = 160,
        slices: int = 5,
        heads: int = 4,
        point_cloud: PointCloudConfig | None = None,
    ) -> None:
        super().__init__(point_cloud)
        if slices < 1 or M % slices:
            raise ValueError(f"{slices} slices do not divide M = {M}")
        ca, cs = self.transform_channels()
        a1, a2, a3 = (0, 1, 2) if ca else (None, None, None)

        self.g_a = _conditioned(
            [
                (ResidualBlockWithStride(3 + ca, N), a1),
                (ResidualBlock(N, N), None),
                (ResidualBlockWithStride(N + ca, N), a2),
                (ResidualBlock(N, N), None),
                (ResidualBlockWithStride(N + ca, N), a3),
                (ResidualBlock(N, N), None),
                (conv3x3(N, M, stride=2), None),
            ]
        )
        self.g_s = _conditioned(
            [
                (ResidualBlock(M, N), None),
                (ResidualBlockUpsample(N, N), None),
                (ResidualBlock(N, N), None),
                (ResidualBlockUpsample(N, N), None),
                (ResidualBlock(N, N), None),
                (ResidualBlockUpsample(N + cs, N), 2 if cs else None),
                (ResidualBlock(N, N), None),
                # With c1 the step to full resolution yields features, and RGB comes from [features, c1].
                *(
                    [(subpel_conv3x3(N + cs, cs, 2), 1), (conv3x3(2 * cs, 3), 0)]
                    if cs
                    else [(subpel_conv3x3(N, 3, 2), None)]
                ),
            ]
        )

        side_channels = 2 * M
        h_a = nn.Sequential(
            conv3x3(M, N),
            nn.GELU(),
            conv3x3(N, N),
            nn.GELU(),
            conv3x3(N, N, stride=2),
            nn.GELU(),
            conv3x3(N, N),
            nn.GELU(),
            conv3x3(N, N, stride=2),
        )
        h_s = nn.Sequential(
            conv3x3(N, M),
            nn.GELU(),
            subpel_conv3x3(M, M, 2),
            nn.GELU(),
            conv3x3(M, M),
            nn.GELU(),
            subpel_conv3x3(M, M, 2),
            nn.GELU(),
            conv3x3(M, side_channels),
        )
        # The side parameters are features for parameter aggregation, not scales: no final activation.
        refiner = self.hyper_refiner(side_channels)
        entropy_model = MultiReferenceLatentCodec(slices, M // slices, side_channels, heads)
        # Everything that computes means and scales: the same bits on every machine (pcic_ros.codec.fixed_point).
        deciding = [h_s, *([refiner] if refiner is not None else [])]
        for contexts in (entropy_model.channel_context, entropy_model.local_context, entropy_model.global_context):
            deciding += list(contexts.values())
        for module in [*deciding, *entropy_model.entropy_parameters.values()]:
            compute_in_fixed_point(module)
        self.latent_codec = RefinedHyperpriorLatentCodec(
            {
                "y": entropy_model,
                "hyper": HyperLatentCodec(entropy_bottleneck=EntropyBottleneck(N), h_a=h_a, h_s=h_s, quantizer="ste"),
            },
            refiner,
        )
        self.N, self.M, self.slices = int(N), int(M), int(slices)

    @property
    def refiner(self) -> HyperRefiner | None:
        """The Hyper Refiner (None for plain MLIC)."""
        return self.latent_codec.refiner

    @property
    def entropy_model(self) -> MultiReferenceLatentCodec:
        """The multi-reference entropy model of y."""
        return self.latent_codec.y

    @property
    def num_strings(self) -> int:
        """Strings per frame: anchors and non-anchors of each slice, then z."""
        return 2 * self.slices + 1

    def latent_shapes(self, height: int, width: int) -> dict:
        # h_a halves y twice: y is 4x the size of z.
        return {"y": (4 * height, 4 * width), "hyper": (height, width)}
