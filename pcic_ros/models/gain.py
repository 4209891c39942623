"""Gain units: one network for a continuous range of rates (Cui et al., CVPR 2021, "Asymmetric gained
deep image compression with continuous rate adaptation").

The latent y is scaled channel by channel before quantisation (a gain, y * g(q)) and scaled back after
it (an inverse gain, y_hat / g'(q)), so a larger gain spends more bits on finer quantisation. One gain
vector and one inverse-gain vector are learnt per anchor quality; between two anchors the vectors are
interpolated exponentially (linearly in their logarithms), which gives every real quality in the range
its own rate. The hyperprior then sees the gained latent, so the scales it predicts follow the quality
without a change to the entropy model (and to its fixed-point arithmetic).

The quality scale extends the paper's four rate points: ``quality_lambda(q) = 0.004 * 2 ** (q - 1)``,
so q = 1, 2, 3, 4 are the paper's lambdas 0.004 ... 0.032 and the range [0, 5] covers lambda 0.002
to 0.064.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pcic_ros.errors import PcicError

__all__ = ["QUALITY_RANGE", "QualityError", "quality_lambda", "check_quality", "GainUnits"]

#: The continuous quality range of a variable-rate model, (lowest, highest).
QUALITY_RANGE: tuple[float, float] = (0.0, 5.0)


class QualityError(PcicError, ValueError):
    """A quality outside what a model covers."""


def quality_lambda(quality: float | Tensor) -> float | Tensor:
    """lambda of eq. 14 for a quality: 0.004 * 2 ** (quality - 1) (the paper's four at 1, 2, 3, 4)."""
    return 0.004 * 2.0 ** (quality - 1)


def check_quality(quality: float) -> float:
    """``quality`` as a float when it lies in QUALITY_RANGE, else QualityError."""
    try:
        value = float(quality)
    except (TypeError, ValueError):
        raise QualityError(f"quality must be a number, got {quality!r}") from None
    low, high = QUALITY_RANGE
    if not low <= value <= high:  # also False for NaN
        raise QualityError(f"quality {quality} is outside the range {low:g} to {high:g}")
    return value


class GainUnits(nn.Module):
    """Learnt gains and inverse gains of ``channels`` latent channels at the integer qualities of
    QUALITY_RANGE, interpolated for the qualities between them.

    ``base_quality`` is the quality whose gains start at 1: a single-rate model trained at that
    quality's lambda is exactly the variable-rate model at that quality before post-training. The
    other anchors start at gains of 2 ** ((q - base_quality) / 2), inverse gains their reciprocals:
    quantisation steps sqrt(2) apart for lambdas 2 apart, where a high-rate MSE codec's optimal steps
    are.
    """

    def __init__(self, channels: int, base_quality: float = 3.0) -> None:
        super().__init__()
        low, high = QUALITY_RANGE
        anchors = torch.arange(math.ceil(low), math.floor(high) + 1, dtype=torch.float32)
        self.register_buffer("anchors", anchors, persistent=False)
        start = ((anchors - base_quality) * (math.log(2.0) / 2.0)).unsqueeze(1).repeat(1, channels)
        self.log_gain = nn.Parameter(start.clone())
        # The inverse gain starts as the gain's reciprocal: y_hat / g(q) brings y back to its own scale.
        self.log_inverse_gain = nn.Parameter(-start)

    def _interpolate(self, table: Tensor, quality: Tensor) -> Tensor:
        """B x C x 1 x 1 vectors of ``table`` (anchors x C, in logs) at the B qualities."""
        position = (quality.to(table.dtype) - self.anchors[0]).clamp(0, len(self.anchors) - 1)
        below = position.floor().long().clamp(max=len(self.anchors) - 2)
        fraction = (position - below).unsqueeze(1)
        logs = table[below] * (1 - fraction) + table[below + 1] * fraction
        return logs.exp()[:, :, None, None]

    def gain(self, quality: Tensor) -> Tensor:
        return self._interpolate(self.log_gain, quality)

    def inverse_gain(self, quality: Tensor) -> Tensor:
        return self._interpolate(self.log_inverse_gain, quality)


def quality_tensor(quality: float | Tensor | None, batch: int, device: torch.device) -> Tensor:
    """One quality per sample, as a float32 tensor of B values."""
    if quality is None:
        raise QualityError("a variable-rate model needs a quality")
    if isinstance(quality, Tensor):
        if quality.dim() == 0:
            quality = quality.expand(batch)
        if quality.shape != (batch,):
            raise QualityError(f"one quality per sample expected, got shape {tuple(quality.shape)} for {batch}")
        return quality.to(device=device, dtype=torch.float32)
    return torch.full((batch,), check_quality(quality), device=device, dtype=torch.float32)
