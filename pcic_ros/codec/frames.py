"""Between a frame and a model's tensors: padding to the model's multiple, the depth map as c_proj, and
the crop back to the frame. ``Codec``, training's validation and the benchmarks code frames through
these, so that all of them pad and round the way a decoder does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["padded_size", "image_tensor", "depth_tensor", "tensor_image"]


def padded_size(factor: int, height: int, width: int) -> tuple[int, int]:
    """The frame's size rounded up to multiples of ``factor`` (a model's downsampling factor)."""
    return -(-height // factor) * factor, -(-width // factor) * factor


def image_tensor(image: np.ndarray, device: torch.device | str, padded: tuple[int, int]) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x padded float in [0, 1]. Replicate padding keeps the padded border
    cheap to code; it is cropped away after decoding."""
    height, width = image.shape[:2]
    x = torch.tensor(image, device=device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return F.pad(x, (0, padded[1] - width, 0, padded[0] - height), mode="replicate")


def depth_tensor(
    equalized: np.ndarray | None, height: int, width: int, padded: tuple[int, int], device: torch.device | str
) -> torch.Tensor:
    """The equalised depth map (H x W uint8 of eq. 3, or None for the all-zeros fallback) as c_proj:
    1 x 1 x padded float in [0, 1], zero in the padding."""
    c_proj = torch.zeros((1, 1, *padded), dtype=torch.float32)
    if equalized is not None:
        c_proj[0, 0, :height, :width] = torch.from_numpy(equalized).float().div_(255.0)
    return c_proj.to(device)


def tensor_image(x_hat: torch.Tensor, height: int, width: int) -> np.ndarray:
    """1 x 3 x H' x W' float in [0, 1] -> the H x W x 3 uint8 frame (rounded, clamped, cropped)."""
    pixels = x_hat[0, :, :height, :width].mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().cpu().numpy()
