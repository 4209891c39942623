"""What every pcic_ros codec shares: CompressAI's CompressionModel plus an optional point-cloud branch."""

from __future__ import annotations

from compressai.models import CompressionModel
from torch import Tensor

from pcic_ros.fixed_point import compute_in_fixed_point
from pcic_ros.pointcloud import PointCloudBranch, PointCloudConfig, PointCloudFeatures

__all__ = ["PointCloudCompressionModel"]


class PointCloudCompressionModel(CompressionModel):
    """A learned image codec that may condition on a projected LiDAR scan.

    Subclasses build their transforms with ``ConditionedSequential`` and their entropy parameters with a
    ``HyperRefiner`` when ``point_cloud`` is set. ``c_proj`` everywhere is B x 1 x H x W, the equalised
    depth map of ``pcic_ros.projection.equalize_depth`` divided by 255, at the (padded) image size.
    """

    #: Image sides must be a multiple of this (the product of all down-sampling strides).
    downsampling_factor: int = 64

    def __init__(self, point_cloud: PointCloudConfig | None = None) -> None:
        super().__init__()
        self.point_cloud = point_cloud
        # c_hyper decides the entropy coder's distributions: see pcic_ros.fixed_point.
        self.branch = compute_in_fixed_point(PointCloudBranch(point_cloud)) if point_cloud is not None else None

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

    def decoder_features(self, c_proj: Tensor | None) -> PointCloudFeatures | None:
        """What the decoder needs: c1..c3 for the synthesis transform (if FG there) and c_hyper (if FF)."""
        fg = self.point_cloud is not None and self.point_cloud.fg_synthesis
        return self._features(c_proj, need_scales=fg)
