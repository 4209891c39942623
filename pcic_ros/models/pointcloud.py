"""The point-cloud branch (paper sec. III.C-E): PIP, MCM (FG + FF) and the Hyper Refiner.

The branch is model-agnostic: a codec (HYPER, ELIC, MLIC, ...) owns one ``PointCloudBranch`` and one
``HyperRefiner`` and feeds c1, c2, c3 into its transforms and c_hyper into the refiner. Which of these
paths exist is decided by a ``PointCloudConfig``; the paper's ablations are presets of it.

Two layouts of the branch (``PointCloudConfig.layout``):

- "paper": as the paper draws it. PIP and the first MCM layer, with attention blocks, run at full
  resolution, and c1, c2, c3 are concatenated to the inputs of the transform layers.
- "lean": the same parts, cheaper and able to start from a trained baseline. The depth map holds a
  point in about 4 % of the pixels, so 2 x 2 pixels are folded into channels (pixel unshuffle,
  lossless) and PIP and MCM run from half resolution down, with one attention block, at H/8; c1, c2,
  c3 come at H/2, H/4, H/8 to the transform layers that run there. Each feature reaches the codec
  through a join: a convolution with the geometry of the layer it joins, added to that layer's output
  and initialised to zero (``ZeroJoinedSequential``); the Hyper Refiner adds a correction whose last
  layer starts at zero to the baseline's entropy parameters. The baseline's layers keep their names
  and shapes, so a PC model loaded with a trained baseline's weights computes exactly that baseline
  (x + 0 is x in IEEE arithmetic) until training moves the joins: ControlNet's "zero convolutions".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from compressai.layers import AttentionBlock, ResidualBlock, conv3x3
from torch import Tensor, nn

__all__ = [
    "PointCloudConfig",
    "ABLATIONS",
    "PointCloudFeatures",
    "PointToImagePrediction",
    "MultiScaleContextMining",
    "HyperRefiner",
    "PointCloudBranch",
    "ConditionedSequential",
    "ZeroJoinedSequential",
    "LAYOUTS",
    "ablation_config",
]


@dataclass(frozen=True)
class PointCloudConfig:
    """Which parts of the point-cloud branch a model has, and their widths.

    Attributes:
        pip: predict a dense pseudo-image c_pre from c_proj (PIP); without it c_proj feeds MCM directly.
        fg_analysis: c1, c2, c3 are concatenated into the analysis transform (encoder side).
        fg_synthesis: c1, c2, c3 are concatenated into the synthesis transform (decoder side).
        ff: c_hyper (FF) feeds the Hyper Refiner; both sides then need the scan, since the entropy
            model's parameters depend on it.
        zeros_input: the branch always sees an all-zeros depth map (the paper's "zeros" study).
        channels: C, the channels of c1, c2, c3.
        hyper_channels: C', the channels of c_hyper.
        pip_channels: width of the PIP network.
        depth_levels: s of eq. 3.
    """

    pip: bool = True
    #: "paper": the paper's branch at full resolution, its features concatenated into the transforms.
    #: "lean": the branch from half resolution down, its features added to the baseline's layers
    #: through zero-initialised joins and a residual Hyper Refiner (see ``LEAN_LAYOUT_NOTES``).
    layout: str = "paper"
    fg_analysis: bool = True
    fg_synthesis: bool = True
    ff: bool = True
    zeros_input: bool = False
    # Widths are the paper's structure at CPU-friendly sizes: c1 and PIP run at full resolution.
    channels: int = 16
    hyper_channels: int = 64
    pip_channels: int = 16
    depth_levels: int = 255

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown point-cloud layout '{self.layout}'; choose from {', '.join(LAYOUTS)}")

    @property
    def lean(self) -> bool:
        return self.layout == "lean"

    @property
    def scan_at_encoder(self) -> bool:
        """Whether the encoder needs the scan (False only when no encoder-side path uses it)."""
        return not self.zeros_input and (self.fg_analysis or self.ff)

    @property
    def scan_at_decoder(self) -> bool:
        """Whether the decoder needs the scan."""
        return not self.zeros_input and (self.fg_synthesis or self.ff)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: The branch's layouts (see the module docstring).
LAYOUTS = ("paper", "lean")

#: The paper's ablations (Tables II-IV) as presets, applied to the full branch with ``replace``.
ABLATIONS: dict[str, dict[str, bool]] = {
    "full": {},
    "no-pip": {"pip": False},
    "no-fg": {"fg_analysis": False, "fg_synthesis": False},
    "no-ff": {"ff": False},
    "encoder-only": {"fg_synthesis": False, "ff": False},
    "decoder-only": {"fg_analysis": False, "ff": False},
    "zeros": {"zeros_input": True},
}


def ablation_config(name: str, base: PointCloudConfig | None = None) -> PointCloudConfig:
    """The ``PointCloudConfig`` of one of the paper's ablations (see ``ABLATIONS``)."""
    if name not in ABLATIONS:
        raise KeyError(f"unknown ablation '{name}'; choose from {sorted(ABLATIONS)}")
    return replace(base or PointCloudConfig(), **ABLATIONS[name])


class PointCloudFeatures(NamedTuple):
    """Outputs of the branch; an entry is None when the configuration does not use it."""

    c_pre: Tensor | None
    c1: Tensor | None
    c2: Tensor | None
    c3: Tensor | None
    c_hyper: Tensor | None


class PointToImagePrediction(nn.Module):
    """PIP (Fig. 4a): convolutions, residual and attention blocks from c_proj (1 ch) to c_pre (3 ch)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv3x3(1, channels),
            ResidualBlock(channels, channels),
            AttentionBlock(channels),
            ResidualBlock(channels, channels),
            conv3x3(channels, 3),
        )

    def forward(self, c_proj: Tensor) -> Tensor:
        return self.layers(c_proj)


def _extraction_layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """EL of Fig. 3: one convolution, one residual block, one attention block."""
    return nn.Sequential(conv3x3(in_ch, out_ch, stride=stride), ResidualBlock(out_ch, out_ch), AttentionBlock(out_ch))


def _fusion_layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """FL of Fig. 3: one convolution and one residual block."""
    return nn.Sequential(conv3x3(in_ch, out_ch, stride=stride), ResidualBlock(out_ch, out_ch))


class MultiScaleContextMining(nn.Module):
    """MCM (Fig. 3): FG makes c1 (H), c2 (H/2), c3 (H/4) with C channels; FF fuses them to c_hyper
    (H/16, C' channels)."""

    def __init__(self, in_channels: int, channels: int, hyper_channels: int) -> None:
        super().__init__()
        self.extract1 = _extraction_layer(in_channels, channels, stride=1)
        self.extract2 = _extraction_layer(channels, channels, stride=2)
        self.extract3 = _extraction_layer(channels, channels, stride=2)
        self.fuse1 = _fusion_layer(channels, channels, stride=2)  # c1 (H) -> H/2
        self.fuse2 = _fusion_layer(2 * channels, channels, stride=2)  # [., c2] (H/2) -> H/4
        self.fuse3 = _fusion_layer(2 * channels, hyper_channels, stride=2)  # [., c3] (H/4) -> H/8
        self.fuse4 = conv3x3(hyper_channels, hyper_channels, stride=2)  # H/8 -> H/16

    def generate(self, c_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """FG, eq. 6."""
        c1 = self.extract1(c_pre)
        c2 = self.extract2(c1)
        c3 = self.extract3(c2)
        return c1, c2, c3

    def fuse(self, c1: Tensor, c2: Tensor, c3: Tensor) -> Tensor:
        """FF, eq. 7."""
        fused = self.fuse1(c1)
        fused = self.fuse2(torch.cat([fused, c2], dim=1))
        fused = self.fuse3(torch.cat([fused, c3], dim=1))
        return self.fuse4(fused)


class HyperRefiner(nn.Module):
    """HR (Fig. 4b, eq. 13): three convolutions from the hyper-synthesis output (and c_hyper, when FF is
    on) to the entropy parameters that replace the hyper-synthesis output. ``final`` keeps the range of
    the parameters it replaces (e.g. a ReLU for scales)."""

    def __init__(
        self, hyper_out: int, condition_channels: int, final: nn.Module | None = None, residual: bool = False
    ) -> None:
        super().__init__()
        in_ch = hyper_out + condition_channels
        self.layers = nn.Sequential(
            conv3x3(in_ch, hyper_out),
            nn.LeakyReLU(inplace=True),
            conv3x3(hyper_out, hyper_out),
            nn.LeakyReLU(inplace=True),
            conv3x3(hyper_out, hyper_out),
            final if final is not None else nn.Identity(),
        )
        if residual:
            # A correction of the baseline's parameters that starts at none (the lean layout's warm start).
            # Zeroed after construction, so that the seeded initialisation of the others is unchanged.
            nn.init.zeros_(self.layers[4].weight)
            nn.init.zeros_(self.layers[4].bias)
        self.condition_channels = condition_channels
        self.residual = residual

    def forward(self, hyper_out: Tensor, c_hyper: Tensor | None) -> Tensor:
        inputs = hyper_out
        if self.condition_channels:
            if c_hyper is None:
                raise ValueError("this Hyper Refiner was built with FF and needs c_hyper")
            inputs = torch.cat([hyper_out, c_hyper], dim=1)
        refined = self.layers(inputs)
        return hyper_out + refined if self.residual else refined


class LeanPointToImagePrediction(nn.Module):
    """PIP of the lean layout: on the folded depth map (4 channels at H/2) to the folded c_pre (3 x 4
    channels at H/2; ``pixel_shuffle`` unfolds it to RGB at H)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(conv3x3(4, channels), ResidualBlock(channels, channels), conv3x3(channels, 3 * 4))

    def forward(self, folded: Tensor) -> Tensor:
        return self.layers(folded)


class LeanContextMining(nn.Module):
    """MCM of the lean layout: c1 (H/2), c2 (H/4), c3 (H/8) with C channels; FF fuses them to c_hyper
    (H/16, C' channels). Residual blocks throughout, one attention block, at H/8."""

    def __init__(self, in_channels: int, channels: int, hyper_channels: int) -> None:
        super().__init__()
        self.extract1 = nn.Sequential(conv3x3(in_channels, channels), ResidualBlock(channels, channels))
        self.extract2 = _fusion_layer(channels, channels, stride=2)
        self.extract3 = nn.Sequential(
            conv3x3(channels, channels, stride=2), ResidualBlock(channels, channels), AttentionBlock(channels)
        )
        self.fuse1 = conv3x3(channels, channels, stride=2)  # c1 (H/2) -> H/4
        self.fuse2 = _fusion_layer(2 * channels, channels, stride=2)  # [., c2] (H/4) -> H/8
        self.fuse3 = _fusion_layer(2 * channels, hyper_channels, stride=2)  # [., c3] (H/8) -> H/16

    def generate(self, folded: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c1 = self.extract1(folded)
        c2 = self.extract2(c1)
        c3 = self.extract3(c2)
        return c1, c2, c3

    def fuse(self, c1: Tensor, c2: Tensor, c3: Tensor) -> Tensor:
        fused = self.fuse2(torch.cat([self.fuse1(c1), c2], dim=1))
        return self.fuse3(torch.cat([fused, c3], dim=1))


class PointCloudBranch(nn.Module):
    """c_proj (B x 1 x H x W, equalised depth in [0, 1]) -> c_pre, c1, c2, c3, c_hyper."""

    def __init__(self, config: PointCloudConfig) -> None:
        super().__init__()
        self.config = config
        if config.lean:
            self.pip = LeanPointToImagePrediction(config.pip_channels) if config.pip else None
            self.mcm = LeanContextMining(12 if config.pip else 4, config.channels, config.hyper_channels)
        else:
            self.pip = PointToImagePrediction(config.pip_channels) if config.pip else None
            self.mcm = MultiScaleContextMining(3 if config.pip else 1, config.channels, config.hyper_channels)

    def forward(self, c_proj: Tensor, need_scales: bool = True, need_hyper: bool = True) -> PointCloudFeatures:
        """Run the parts of the branch a side needs: ``need_scales`` for c1..c3 in a transform,
        ``need_hyper`` for c_hyper (only when the configuration has FF)."""
        if self.config.zeros_input:
            c_proj = torch.zeros_like(c_proj)
        depth = F.pixel_unshuffle(c_proj, 2) if self.config.lean else c_proj
        predicted = self.pip(depth) if self.pip is not None else None
        # The lean PIP predicts c_pre folded: L_pre compares it unfolded, with the image.
        c_pre = F.pixel_shuffle(predicted, 2) if predicted is not None and self.config.lean else predicted
        need_hyper = need_hyper and self.config.ff
        if not (need_scales or need_hyper):
            return PointCloudFeatures(c_pre, None, None, None, None)
        c1, c2, c3 = self.mcm.generate(predicted if predicted is not None else depth)
        c_hyper = self.mcm.fuse(c1, c2, c3) if need_hyper else None
        return PointCloudFeatures(c_pre, c1, c2, c3, c_hyper)


def _zero_join(layer: nn.Module, channels: int) -> nn.Module:
    """A convolution of ``channels`` feature channels with the geometry of ``layer`` (kernel, stride,
    padding, transposed or not), no bias, all zeros: its output adds to the layer's."""
    if isinstance(layer, nn.ConvTranspose2d):
        geometry = (layer.kernel_size, layer.stride, layer.padding, layer.output_padding)
        join = nn.ConvTranspose2d(channels, layer.out_channels, *geometry, bias=False)
    elif isinstance(layer, nn.Conv2d):
        join = nn.Conv2d(channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, bias=False)
    else:
        raise TypeError(f"a feature joins a convolution, not a {type(layer).__name__}")
    nn.init.zeros_(join.weight)
    return join


class ZeroJoinedSequential(nn.Module):
    """A transform (g_a or g_s) of the lean layout: the baseline's layers, unchanged, and for each slot
    a zero-initialised join that adds a convolution of c_{k+1} to that layer's output.

    ``slots[i]`` is None for a plain layer, or k in {0, 1, 2}: layer i's output gets join(c_{k+1}),
    c_{k+1} having the resolution of the layer's input. Without features (a model whose point cloud
    is off on this side) it is exactly the baseline's transform.
    """

    def __init__(self, layers: list[nn.Module], slots: list[int | None], channels: int) -> None:
        super().__init__()
        if len(layers) != len(slots):
            raise ValueError("one slot per layer")
        self.layers = nn.ModuleList(layers)
        self.slots = list(slots)
        joined = [(i, layer) for i, (layer, slot) in enumerate(zip(layers, slots, strict=True)) if slot is not None]
        self.joins = nn.ModuleDict({str(i): _zero_join(layer, channels) for i, layer in joined})

    @property
    def conditioned(self) -> bool:
        return bool(self.joins)

    def forward(self, x: Tensor, features: PointCloudFeatures | None = None) -> Tensor:
        for i, (layer, slot) in enumerate(zip(self.layers, self.slots, strict=True)):
            out = layer(x)
            if slot is not None:
                if features is None:
                    raise ValueError("this transform is conditioned on the point cloud and needs c1, c2, c3")
                out = out + self.joins[str(i)]((features.c1, features.c2, features.c3)[slot])
            x = out
        return x


class ConditionedSequential(nn.Module):
    """A transform (g_a or g_s) whose layers may take a point-cloud feature concatenated to their input.

    ``slots[i]`` is None for a plain layer, or k in {0, 1, 2}: layer i receives ``cat([x, c_{k+1}])``.
    This is how every codec in the package plugs c1, c2, c3 into its transforms (eq. 9, 10).
    """

    def __init__(self, layers: list[nn.Module], slots: list[int | None]) -> None:
        super().__init__()
        if len(layers) != len(slots):
            raise ValueError("one slot per layer")
        self.layers = nn.ModuleList(layers)
        self.slots = list(slots)

    @property
    def conditioned(self) -> bool:
        return any(slot is not None for slot in self.slots)

    def forward(self, x: Tensor, features: PointCloudFeatures | None = None) -> Tensor:
        for layer, slot in zip(self.layers, self.slots, strict=True):
            if slot is not None:
                if features is None:
                    raise ValueError("this transform is conditioned on the point cloud and needs c1, c2, c3")
                x = torch.cat([x, (features.c1, features.c2, features.c3)[slot]], dim=1)
            x = layer(x)
        return x
