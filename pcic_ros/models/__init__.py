"""The codec models: CompressAI-style compression models with an optional point-cloud branch."""

from pcic_ros.models.base import PointCloudCompressionModel
from pcic_ros.models.elic import Elic
from pcic_ros.models.hyper import ScaleHyperprior
from pcic_ros.models.mlic import Mlic

__all__ = ["Elic", "Mlic", "PointCloudCompressionModel", "ScaleHyperprior"]
