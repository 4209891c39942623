"""ELIC (He et al. 2022) and ELIC-PC (the same codec with the point-cloud branch).

The transforms are those of CompressAI's ``Elic2022Official`` written as ``ConditionedSequential`` so
that c1, c2, c3 can enter them; the entropy model is built from the very latent codecs
``Elic2022Official`` is built from (hyperprior for z; uneven channel groups, each with a checkerboard
spatial context, for y). The Hyper Refiner sits between the two, as in HYPER-PC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
    LatentCodec,
)
from compressai.layers import AttentionBlock, CheckerboardMaskedConv2d, conv3x3, sequential_channel_ramp
from compressai.models.sensetime import ResidualBottleneckBlock
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from pcic_ros.codec.fixed_point import compute_in_fixed_point
from pcic_ros.models.base import LatentCodecModel
from pcic_ros.models.pointcloud import ConditionedSequential, HyperRefiner, PointCloudConfig

__all__ = ["Elic", "RefinedHyperpriorLatentCodec", "elic_groups"]


def elic_groups(M: int) -> list[int]:
    """ELIC's uneven channel groups for M latent channels: the official [16, 16, 32, 64, M - 128] at
    M = 320, scaled with M so that narrower models keep the same proportions."""
    head = [M // 20, M // 20, M // 10, M // 5]
    return [*head, M - sum(head)]


class RefinedHyperpriorLatentCodec(HyperpriorLatentCodec):
    """CompressAI's hyperprior codec with the Hyper Refiner between its two codecs (eq. 12-13).

    ``HyperpriorLatentCodec`` hands the hyper-synthesis output ("params": ELIC's side information for
    means and scales) straight to the codec of y; here it first goes through ``refiner`` together with
    c_hyper. c_hyper is an argument of every call rather than state on the module, so one model can
    code several frames at once from different threads. Without a refiner this is exactly
    ``HyperpriorLatentCodec``.
    """

    def __init__(self, latent_codec: Mapping[str, LatentCodec], refiner: HyperRefiner | None = None) -> None:
        super().__init__(latent_codec)
        self.refiner = refiner

    def _side_params(self, params: Tensor, c_hyper: Tensor | None) -> Tensor:
        return params if self.refiner is None else self.refiner(params, c_hyper)

    def forward(self, y: Tensor, c_hyper: Tensor | None = None) -> dict[str, Any]:
        hyper_out = self.hyper(y)
        y_out = self.y(y, self._side_params(hyper_out["params"], c_hyper))
        return {
            "likelihoods": {"y": y_out["likelihoods"]["y"], "z": hyper_out["likelihoods"]["z"]},
            "y_hat": y_out["y_hat"],
        }

    def compress(self, y: Tensor, c_hyper: Tensor | None = None) -> dict[str, Any]:
        hyper_out = self.hyper.compress(y)
        y_out = self.y.compress(y, self._side_params(hyper_out["params"], c_hyper))
        return {
            "strings": [*y_out["strings"], *hyper_out["strings"]],
            "shape": {"y": y_out["shape"], "hyper": hyper_out["shape"]},
            "y_hat": y_out["y_hat"],
        }

    def decompress(
        self, strings: list[list[bytes]], shape: dict[str, Any], c_hyper: Tensor | None = None
    ) -> dict[str, Any]:
        *y_strings, z_strings = strings
        hyper_out = self.hyper.decompress([z_strings], shape["hyper"])
        y_out = self.y.decompress(y_strings, shape["y"], self._side_params(hyper_out["params"], c_hyper))
        return {"y_hat": y_out["y_hat"]}


def _bottlenecks(channels: int) -> list[nn.Module]:
    return [ResidualBottleneckBlock(channels, channels) for _ in range(3)]


def _conditioned(stages: list[tuple[nn.Module, int | None]]) -> ConditionedSequential:
    """A ConditionedSequential from (layer, slot) pairs, so that each slot is written next to its layer."""
    return ConditionedSequential([layer for layer, _ in stages], [slot for _, slot in stages])


class Elic(LatentCodecModel):
    """ELIC, optionally with the point-cloud branch (ELIC-PC).

    Without ``point_cloud`` the layers are those of CompressAI's ``Elic2022Official``, with the
    channel-context widths (224 and 128 at M = 320) scaled with M. With it: c1 (H), c2 (H/2), c3 (H/4)
    are concatenated to the inputs of the down-sampling convolutions at those scales and of the
    up-sampling convolutions that leave H/4 and H/2; the last synthesis step then ends in a 3x3
    convolution over [features, c1] instead of a transposed convolution to RGB, as in HYPER-PC. The
    Hyper Refiner turns [h_s(z_hat), c_hyper] into the side parameters that every channel group's
    parameter aggregation reads (eq. 9-13).

    Args:
        N: channels of the transforms. The default is half of the official 192: run time grows with the
            square of the width and these models run on CPUs in cars.
        M: latent channels, half of the official 320 for the same reason.
        groups: channel groups of y (default ``elic_groups(M)``).
        point_cloud: the point-cloud branch's configuration, or None for plain ELIC.
    """

    def __init__(
        self, N: int = 96, M: int = 160, groups: list[int] | None = None, point_cloud: PointCloudConfig | None = None
    ) -> None:
        super().__init__(point_cloud)
        groups = list(groups) if groups is not None else elic_groups(M)
        if sum(groups) != M or min(groups) < 1:
            raise ValueError(f"channel groups {groups} must be positive and add up to M = {M}")
        ca, cs = self.transform_channels()
        a1, a2, a3 = (0, 1, 2) if ca else (None, None, None)

        self.g_a = _conditioned(
            [
                (conv(3 + ca, N), a1),
                *((block, None) for block in _bottlenecks(N)),
                (conv(N + ca, N), a2),
                *((block, None) for block in _bottlenecks(N)),
                (AttentionBlock(N), None),
                (conv(N + ca, N), a3),
                *((block, None) for block in _bottlenecks(N)),
                (conv(N, M), None),
                (AttentionBlock(M), None),
            ]
        )
        self.g_s = _conditioned(
            [
                (AttentionBlock(M), None),
                (deconv(M, N), None),
                *((block, None) for block in _bottlenecks(N)),
                (deconv(N, N), None),
                (AttentionBlock(N), None),
                *((block, None) for block in _bottlenecks(N)),
                (deconv(N + cs, N), 2 if cs else None),
                *((block, None) for block in _bottlenecks(N)),
                # With c1 the step to full resolution yields features, and RGB comes from [features, c1].
                *([(deconv(N + cs, cs), 1), (conv3x3(2 * cs, 3), 0)] if cs else [(deconv(N, 3), None)]),
            ]
        )

        h_a = nn.Sequential(
            conv(M, N, kernel_size=3, stride=1),
            nn.ReLU(inplace=True),
            conv(N, N),
            nn.ReLU(inplace=True),
            conv(N, N),
        )
        h_s = nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N * 3 // 2),
            nn.ReLU(inplace=True),
            deconv(N * 3 // 2, N * 2, kernel_size=3, stride=1),
        )
        # ELIC's g_ch: context from the groups already decoded.
        channel_context = {
            f"y{k}": nn.Sequential(
                conv(sum(groups[:k]), M * 7 // 10, stride=1),
                nn.ReLU(inplace=True),
                conv(M * 7 // 10, M * 2 // 5, stride=1),
                nn.ReLU(inplace=True),
                conv(M * 2 // 5, groups[k] * 2, stride=1),
            )
            for k in range(1, len(groups))
        }
        # Each group: checkerboard spatial context (g_sp) and parameter aggregation of spatial context,
        # channel context and the (refined) hyper side parameters.
        group_codecs = {
            f"y{k}": CheckerboardLatentCodec(
                latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
                context_prediction=CheckerboardMaskedConv2d(g, g * 2, kernel_size=5, stride=1, padding=2),
                entropy_parameters=sequential_channel_ramp(
                    g * 2 + (k > 0) * g * 2 + N * 2,
                    g * 2,
                    min_ch=N * 2,
                    num_layers=3,
                    interp="linear",
                    make_layer=nn.Conv2d,
                    make_act=lambda: nn.ReLU(inplace=True),
                    kernel_size=1,
                    stride=1,
                    padding=0,
                ),
            )
            for k, g in enumerate(groups)
        }
        # ELIC's side parameters are features for parameter aggregation, not scales: no final activation.
        refiner = self.hyper_refiner(N * 2)
        # Everything that computes means and scales: the same bits on every machine (pcic_ros.codec.fixed_point).
        deciding = [h_s, *channel_context.values(), *([refiner] if refiner is not None else [])]
        for codec in group_codecs.values():
            deciding += [codec.context_prediction, codec.entropy_parameters]
        for module in deciding:
            compute_in_fixed_point(module)
        self.latent_codec = RefinedHyperpriorLatentCodec(
            {
                "y": ChannelGroupsLatentCodec(
                    groups=groups, channel_context=channel_context, latent_codec=group_codecs
                ),
                "hyper": HyperLatentCodec(entropy_bottleneck=EntropyBottleneck(N), h_a=h_a, h_s=h_s, quantizer="ste"),
            },
            refiner,
        )
        self.N, self.M, self.groups = int(N), int(M), groups

    @property
    def refiner(self) -> HyperRefiner | None:
        """The Hyper Refiner (None for plain ELIC)."""
        return self.latent_codec.refiner

    @property
    def num_strings(self) -> int:
        """Strings per frame: two checkerboard passes per channel group, then z."""
        return 2 * len(self.groups) + 1

    def latent_shapes(self, height: int, width: int) -> dict:
        # h_a halves y twice: every group of y is 4x the size of z.
        return {"y": [(g, 4 * height, 4 * width) for g in self.groups], "hyper": (height, width)}
