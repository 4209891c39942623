"""What every pcic_ros codec shares: CompressAI's CompressionModel plus an optional point-cloud branch."""

from __future__ import annotations

from compressai.models import CompressionModel
from torch import Tensor, nn

from pcic_ros.codec.fixed_point import compute_in_fixed_point
from pcic_ros.models.pointcloud import HyperRefiner, PointCloudBranch, PointCloudConfig, PointCloudFeatures

__all__ = ["PointCloudCompressionModel", "LatentCodecModel"]


class PointCloudCompressionModel(CompressionModel):
    """A learned image codec that may condition on a projected LiDAR scan.

    Subclasses build their transforms with ``ConditionedSequential`` and their entropy parameters with a
    ``HyperRefiner`` when ``point_cloud`` is set. ``c_proj`` everywhere is B x 1 x H x W, the equalised
    depth map of ``pcic_ros.codec.projection.equalize_depth`` divided by 255, at the (padded) image size.
    """

    #: Image sides must be a multiple of this (the product of all down-sampling strides).
    downsampling_factor: int = 64

    def __init__(self, point_cloud: PointCloudConfig | None = None) -> None:
        super().__init__()
        self.point_cloud = point_cloud
        # c_hyper decides the entropy coder's distributions: see pcic_ros.codec.fixed_point.
        self.branch = compute_in_fixed_point(PointCloudBranch(point_cloud)) if point_cloud is not None else None

    def transform_channels(self) -> tuple[int, int]:
        """Channels of c1, c2, c3 that the analysis and the synthesis transform take (0 where FG is off)."""
        pc = self.point_cloud
        if pc is None:
            return 0, 0
        return (pc.channels if pc.fg_analysis else 0), (pc.channels if pc.fg_synthesis else 0)

    def hyper_refiner(
        self, hyper_out: int, final: nn.Module | None = None, residual: bool = False
    ) -> HyperRefiner | None:
        """The Hyper Refiner over ``hyper_out`` channels of hyper-synthesis output (taking c_hyper when
        FF is on; ``residual``: correcting them), or None without a point-cloud branch."""
        pc = self.point_cloud
        if pc is None:
            return None
        return HyperRefiner(hyper_out, pc.hyper_channels if pc.ff else 0, final, residual)

    @property
    def scan_at_encoder(self) -> bool:
        return self.point_cloud is not None and self.point_cloud.scan_at_encoder

    @property
    def scan_at_decoder(self) -> bool:
        return self.point_cloud is not None and self.point_cloud.scan_at_decoder

    def _features(self, c_proj: Tensor | None, need_scales: bool) -> PointCloudFeatures | None:
        if self.branch is None or not (need_scales or self.point_cloud.ff):
            return None
        if c_proj is None:
            raise ValueError(f"{type(self).__name__} with a point-cloud branch needs c_proj on this side")
        return self.branch(c_proj, need_scales=need_scales, need_hyper=True)

    def training_features(self, c_proj: Tensor | None) -> PointCloudFeatures | None:
        """Everything the branch produces, for training."""
        return self._features(c_proj, need_scales=True)

    def encoder_features(self, c_proj: Tensor | None, reconstruct: bool = False) -> PointCloudFeatures | None:
        """What the encoder needs: c1..c3 for the analysis transform (if FG there; for the synthesis too
        with ``reconstruct``) and c_hyper (if FF)."""
        fg = self.point_cloud is not None and (self.point_cloud.fg_analysis or reconstruct)
        return self._features(c_proj, need_scales=fg)

    def scan_features(self, c_proj: Tensor | None) -> PointCloudFeatures | None:
        """Everything either side needs from the scan (c1..c3 and c_hyper), computed once ahead of the
        image: ``compress`` and ``decompress`` take it as ``features`` and give the bytes and images
        they give from ``c_proj``. None for a model without a branch."""
        return self._features(c_proj, need_scales=True) if self.branch is not None else None

    def decoder_features(self, c_proj: Tensor | None) -> PointCloudFeatures | None:
        """What the decoder needs: c1..c3 for the synthesis transform (if FG there) and c_hyper (if FF)."""
        fg = self.point_cloud is not None and self.point_cloud.fg_synthesis
        return self._features(c_proj, need_scales=fg)


class LatentCodecModel(PointCloudCompressionModel):
    """A codec whose y and z are coded by one latent codec taking c_hyper (``RefinedHyperpriorLatentCodec``
    of ``pcic_ros.models.elic``), as ELIC and MLIC are. Subclasses set ``self.latent_codec`` and give
    ``num_strings`` and ``latent_shapes``."""

    @property
    def num_strings(self) -> int:
        raise NotImplementedError

    def latent_shapes(self, height: int, width: int) -> dict:
        """The ``shape`` argument of the latent codec's ``decompress`` for z of height x width."""
        raise NotImplementedError

    @staticmethod
    def _c_hyper(features: PointCloudFeatures | None) -> Tensor | None:
        return features.c_hyper if features is not None else None

    def forward(self, x: Tensor, c_proj: Tensor | None = None) -> dict:
        features = self.training_features(c_proj)
        y = self.g_a(x, features)
        y_out = self.latent_codec(y, self._c_hyper(features))
        return {
            "x_hat": self.g_s(y_out["y_hat"], features),
            "likelihoods": y_out["likelihoods"],
            "c_pre": features.c_pre if features is not None else None,
        }

    def compress(
        self,
        x: Tensor,
        c_proj: Tensor | None = None,
        reconstruct: bool = False,
        features: PointCloudFeatures | None = None,
    ) -> dict:
        """Entropy-code x into ``num_strings`` strings (y's, then z). ``shape`` is z's size, from which
        ``decompress`` derives every other. With ``reconstruct`` also return the decoder's x_hat: the
        latent codec hands back y_hat as the decoder will rebuild it, so the two are identical.
        ``features`` (``scan_features``, computed ahead) replaces ``c_proj``."""
        # With reconstruct the synthesis needs its features too: run the branch once for both sides.
        features = features if features is not None else self.encoder_features(c_proj, reconstruct)
        y = self.g_a(x, features)
        coded = self.latent_codec.compress(y, self._c_hyper(features))
        out = {"strings": coded["strings"], "shape": coded["shape"]["hyper"]}
        if reconstruct:
            out["x_hat"] = self.g_s(coded["y_hat"], features).clamp_(0, 1)
        return out

    def decompress(
        self,
        strings: list,
        shape: tuple[int, int],
        c_proj: Tensor | None = None,
        features: PointCloudFeatures | None = None,
    ) -> dict:
        if len(strings) != self.num_strings:
            raise ValueError(f"{type(self).__name__} expects {self.num_strings} strings, got {len(strings)}")
        features = features if features is not None else self.decoder_features(c_proj)
        y_hat = self.latent_codec.decompress(strings, self.latent_shapes(*shape), self._c_hyper(features))["y_hat"]
        return {"x_hat": self.g_s(y_hat, features).clamp_(0, 1)}
