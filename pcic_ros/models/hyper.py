"""HYPER (Balle et al. 2018, scale hyperprior) and HYPER-PC (the same codec with the point-cloud branch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN, conv3x3
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from torch import Tensor, nn

from pcic_ros.codec.fixed_point import compute_in_fixed_point
from pcic_ros.models.base import PointCloudCompressionModel
from pcic_ros.models.gain import GainUnits, quality_tensor
from pcic_ros.models.pointcloud import ConditionedSequential, PointCloudConfig, PointCloudFeatures, ZeroJoinedSequential

__all__ = ["ScaleHyperprior"]


class ScaleHyperprior(PointCloudCompressionModel):
    """Balle 2018's scale hyperprior, optionally with the point-cloud branch (HYPER-PC).

    Without ``point_cloud`` the layers are those of CompressAI's ``bmshj2018-hyperprior``. With it:
    c1 (H), c2 (H/2), c3 (H/4) are concatenated to the inputs of the analysis layers at those scales
    and to the synthesis layers that run at them (the last synthesis step then ends in a 3x3
    convolution over [features, c1] instead of a transposed convolution to RGB), and the Hyper Refiner
    turns [h_s(z_hat), c_hyper] into the scales of the Gaussian conditional (eq. 9-13). HYPER's entropy
    parameters are scales only (zero mean), so the refiner outputs scales.

    With ``variable_rate`` the model covers a continuous quality range with gain units on y
    (``pcic_ros.models.gain``): ``forward``, ``compress`` and ``decompress`` then take a ``quality``.
    """

    def __init__(
        self,
        N: int = 96,
        M: int = 144,
        point_cloud: PointCloudConfig | None = None,
        variable_rate: bool = False,
    ) -> None:
        super().__init__(point_cloud)
        if point_cloud is not None and point_cloud.lean:
            self._build_lean_transforms(N, M, point_cloud)
        else:
            self._build_transforms(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3),
            nn.ReLU(inplace=True),
            conv(N, N),
            nn.ReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N),
            nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3),
            nn.ReLU(inplace=True),
        )
        lean = point_cloud is not None and point_cloud.lean
        # The paper's refiner replaces the scales (a ReLU keeps them positive); the lean one corrects
        # them, and the Gaussian conditional's lower bound keeps the sum positive.
        self.refiner = self.hyper_refiner(M, final=None if lean else nn.ReLU(inplace=True), residual=lean)
        # The scales pick the CDF tables: the same bits on every machine (pcic_ros.codec.fixed_point).
        compute_in_fixed_point(self.h_s)
        if self.refiner is not None:
            compute_in_fixed_point(self.refiner)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        self.gain_units = GainUnits(M) if variable_rate else None
        self.N, self.M = int(N), int(M)

    def _build_transforms(self, N: int, M: int) -> None:
        """HYPER's transforms, or the paper layout's: c1..c3 concatenated to the layers at their scales."""
        ca, cs = self.transform_channels()
        fg_a, fg_s = ca > 0, cs > 0
        self.g_a = ConditionedSequential(
            [conv(3 + ca, N), GDN(N), conv(N + ca, N), GDN(N), conv(N + ca, N), GDN(N), conv(N, M)],
            [0, None, 1, None, 2, None, None] if fg_a else [None] * 7,
        )
        if fg_s:
            self.g_s = ConditionedSequential(
                [
                    deconv(M, N),
                    GDN(N, inverse=True),
                    deconv(N, N),
                    GDN(N, inverse=True),
                    deconv(N + cs, N),
                    GDN(N, inverse=True),
                    deconv(N + cs, cs),
                    GDN(cs, inverse=True),
                    conv3x3(2 * cs, 3),
                ],
                [None, None, None, None, 2, None, 1, None, 0],
            )
        else:
            self.g_s = ConditionedSequential(_synthesis_layers(N, M), [None] * 7)

    def _build_lean_transforms(self, N: int, M: int, point_cloud: PointCloudConfig) -> None:
        """The lean layout: HYPER's own layers, c1 (H/2), c2 (H/4), c3 (H/8) joined to the layers
        whose input has their resolution."""
        analysis = [conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)]
        self.g_a = ZeroJoinedSequential(
            analysis, [None, None, 0, None, 1, None, 2] if point_cloud.fg_analysis else [None] * 7, point_cloud.channels
        )
        self.g_s = ZeroJoinedSequential(
            _synthesis_layers(N, M),
            [None, None, 2, None, 1, None, 0] if point_cloud.fg_synthesis else [None] * 7,
            point_cloud.channels,
        )

    @property
    def variable_rate(self) -> bool:
        return self.gain_units is not None

    def _gained(self, y: Tensor, quality: float | Tensor | None) -> Tensor:
        """y scaled by the gain of its quality (as it is for a single-rate model, which takes none)."""
        if self.gain_units is None:
            return y
        return y * self.gain_units.gain(quality_tensor(quality, y.shape[0], y.device))

    def _ungained(self, y_hat: Tensor, quality: float | Tensor | None) -> Tensor:
        """Quantised y brought back by the inverse gain of its quality (single-rate: unchanged)."""
        if self.gain_units is None:
            return y_hat
        return y_hat * self.gain_units.inverse_gain(quality_tensor(quality, y_hat.shape[0], y_hat.device))

    def _scales(self, z_hat: Tensor, features: PointCloudFeatures | None) -> Tensor:
        scales = self.h_s(z_hat)
        if self.refiner is not None:
            scales = self.refiner(scales, features.c_hyper if features is not None else None)
        return scales

    def forward(self, x: Tensor, c_proj: Tensor | None = None, quality: float | Tensor | None = None) -> dict:
        features = self.training_features(c_proj)
        y = self._gained(self.g_a(x, features), quality)
        z = self.h_a(y.abs())
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales = self._scales(z_hat, features)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales)
        x_hat = self.g_s(self._ungained(y_hat, quality), features)
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
            "c_pre": features.c_pre if features is not None else None,
        }

    def compress(
        self,
        x: Tensor,
        c_proj: Tensor | None = None,
        reconstruct: bool = False,
        quality: float | Tensor | None = None,
        features: PointCloudFeatures | None = None,
    ) -> dict:
        """Entropy-code x. With ``reconstruct`` also return the decoder's x_hat, computed from the same
        dequantised symbols the decoder will see (so the two are identical). ``features``
        (``scan_features``, computed ahead) replaces ``c_proj``."""
        # With reconstruct the synthesis needs its features too: run the branch once for both sides.
        features = features if features is not None else self.encoder_features(c_proj, reconstruct)
        y, z = self.analyse(x, features, quality)
        return self.compress_latents(y, z, features, reconstruct, quality)

    def analyse(
        self, x: Tensor, features: PointCloudFeatures | None, quality: float | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The encoder's latents before quantisation: y (gained for its quality) and z = h_a(|y|)."""
        y = self._gained(self.g_a(x, features), quality)
        return y, self.h_a(y.abs())

    def compress_latents(
        self,
        y: Tensor,
        z: Tensor,
        features: PointCloudFeatures | None,
        reconstruct: bool = False,
        quality: float | Tensor | None = None,
    ) -> dict:
        """Entropy-code given latents (``analyse``'s, or refined ones: the decoder cannot tell)."""
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        indexes = self.gaussian_conditional.build_indexes(self._scales(z_hat, features))
        y_strings = self.gaussian_conditional.compress(y, indexes)
        out = {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}
        if reconstruct:
            symbols = self.gaussian_conditional.quantize(y, "symbols")
            y_hat = self.gaussian_conditional.dequantize(symbols).to(z_hat.dtype)
            out["x_hat"] = self.g_s(self._ungained(y_hat, quality), features).clamp_(0, 1)
        return out

    def latent_rate_distortion(
        self,
        y: Tensor,
        z: Tensor,
        x: Tensor,
        features: PointCloudFeatures | None,
        quality: float | Tensor | None,
        pixels: tuple[int, int],
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Bits per pixel of coding y and z as they round, the same with uniform noise in place of the
        rounding (a smoother gradient for the rate, as in training), and the MSE of the reconstruction
        from the rounded latents; differentiable in y and z.

        The rounded rate is the information content under the entropy models, within a few bytes of
        what the coder writes; rounding passes its gradient straight through. The MSE covers the
        top-left ``pixels`` (height, width) of x, the frame without its padding, and rates are per
        pixel of it.
        """
        medians = self.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
        z_hat = quantize_ste(z - medians) + medians
        y_hat = quantize_ste(y)
        scales = self._scales(z_hat, features)
        height, width = pixels
        rates = []
        for y_coded, z_coded in ((y_hat, z_hat), (_noisy(y, generator), _noisy(z, generator))):
            channels = z_coded.shape[1]
            # EntropyBottleneck's density is per channel over C x 1 x N values (as its forward arranges them).
            z_likelihoods, _, _ = self.entropy_bottleneck._likelihood(z_coded.transpose(0, 1).reshape(channels, 1, -1))
            z_likelihoods = self.entropy_bottleneck.likelihood_lower_bound(z_likelihoods)
            y_likelihoods = self.gaussian_conditional._likelihood(y_coded, scales)
            y_likelihoods = self.gaussian_conditional.likelihood_lower_bound(y_likelihoods)
            bits = -(torch.log2(z_likelihoods).sum() + torch.log2(y_likelihoods).sum())
            rates.append(bits / (height * width))
        x_hat = self.g_s(self._ungained(y_hat, quality), features)
        mse = F.mse_loss(x_hat[..., :height, :width], x[..., :height, :width])
        return rates[0], rates[1], mse

    def decompress(
        self,
        strings: list,
        shape: tuple[int, int],
        c_proj: Tensor | None = None,
        quality: float | Tensor | None = None,
        features: PointCloudFeatures | None = None,
    ) -> dict:
        if len(strings) != 2:
            raise ValueError(f"{type(self).__name__} expects 2 strings (y, z), got {len(strings)}")
        features = features if features is not None else self.decoder_features(c_proj)
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        indexes = self.gaussian_conditional.build_indexes(self._scales(z_hat, features))
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype)
        return {"x_hat": self.g_s(self._ungained(y_hat, quality), features).clamp_(0, 1)}


def _noisy(latent: Tensor, generator: torch.Generator) -> Tensor:
    """``latent`` plus uniform noise in [-0.5, 0.5), drawn from ``generator`` (reproducible encodes)."""
    noise = torch.rand(latent.shape, generator=generator, device=latent.device, dtype=latent.dtype)
    return latent + noise - 0.5


def _synthesis_layers(N: int, M: int) -> list[nn.Module]:
    """HYPER's synthesis transform (CompressAI's bmshj2018-hyperprior)."""
    return [
        deconv(M, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, 3),
    ]
