"""Model registry: a name (as written in every bitstream) -> model class and configuration.

Like CompressAI's zoo, a model is asked for by name and quality. Quality q in 1..4 is the model trained
with lambda = QUALITY_LAMBDAS[q] (MSE, the paper's four rate points). Weights come from a checkpoint
(``pcic_ros/checkpoints/<name>-q<quality>.pt`` when shipped, or a path); without one the model is
initialised from a seed derived from its name and quality, so that an encoder and a decoder in other
processes build the very same untrained model.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pcic_ros.codec.bitstream import MAX_STRINGS
from pcic_ros.errors import PcicError
from pcic_ros.models import Elic, Mlic, PointCloudCompressionModel, ScaleHyperprior
from pcic_ros.models.gain import QualityError, check_quality
from pcic_ros.models.pointcloud import ABLATIONS, PointCloudConfig, ablation_config

__all__ = [
    "CheckpointError",
    "QUALITY_LAMBDAS",
    "ModelSpec",
    "MODELS",
    "register_model",
    "model_names",
    "check_model_quality",
    "create_model",
    "checkpoint_path",
    "weights_fingerprint",
    "round_for_storage",
    "stored_state_dict",
    "CHECKPOINT_DIR",
]

QUALITY_LAMBDAS: dict[int, float] = {1: 0.004, 2: 0.008, 3: 0.016, 4: 0.032}
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model."""

    name: str
    factory: Callable[..., PointCloudCompressionModel]
    kwargs: dict = field(default_factory=dict)
    description: str = ""

    def build(self) -> PointCloudCompressionModel:
        return self.factory(**self.kwargs)

    @property
    def variable_rate(self) -> bool:
        """One network for the whole QUALITY_RANGE (gain units), with one checkpoint for all qualities."""
        return bool(self.kwargs.get("variable_rate", False))


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model '{spec.name}' is already registered")
    if not spec.name.isascii() or len(spec.name) > 64:
        raise ValueError("model names are ASCII, at most 64 characters (they are written in bitstreams)")
    MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return sorted(MODELS)


def _register_with_point_cloud(base: str, factory: Callable[..., PointCloudCompressionModel], label: str) -> None:
    """Register ``<base>-pc`` and one ``<base>-pc-<ablation>`` per paper ablation of the branch."""
    for ablation in ABLATIONS:
        name = f"{base}-pc" if ablation == "full" else f"{base}-pc-{ablation}"
        config = {"point_cloud": ablation_config(ablation, PointCloudConfig())}
        register_model(ModelSpec(name, factory, config, f"{label} with the point-cloud branch ({ablation})"))


register_model(ModelSpec("hyper", ScaleHyperprior, {}, "Balle 2018 scale hyperprior (HYPER)"))
_register_with_point_cloud("hyper", ScaleHyperprior, "HYPER")
# The variable-rate HYPER under training (docs/training.md): post-trained from the shipped HYPER q3.
register_model(
    ModelSpec("hyper-vr", ScaleHyperprior, {"variable_rate": True}, "HYPER with gain units: any quality in 0..5")
)
# Its point-cloud model: the lean branch, warm-started from hyper-vr (pcic_ros.models.pointcloud, "lean").
register_model(
    ModelSpec(
        "hyper-pc-vr",
        ScaleHyperprior,
        {"variable_rate": True, "point_cloud": PointCloudConfig(layout="lean")},
        "HYPER-PC, lean branch joined to hyper-vr's layers: any quality in 0..5",
    )
)
register_model(ModelSpec("elic", Elic, {}, "He 2022 ELIC: uneven channel groups, checkerboard context (ELIC)"))
_register_with_point_cloud("elic", Elic, "ELIC")
# ELIC(PA): ELIC widened until it has as many parameters as ELIC-PC (N = 112: 0.6% fewer), the latent
# kept as it is; test_elic checks the match whenever a width changes.
register_model(ModelSpec("elic-pa", Elic, {"N": 112}, "ELIC widened to ELIC-PC's parameter count (ELIC(PA))"))
register_model(ModelSpec("mlic", Mlic, {}, "Jiang 2023 MLIC: channel, local and global spatial context (MLIC)"))
_register_with_point_cloud("mlic", Mlic, "MLIC")


def checkpoint_path(name: str, quality: float) -> Path:
    """Where the shipped checkpoint of a model and quality lives (it may not exist); a variable-rate
    model has one for all its qualities."""
    if name in MODELS and MODELS[name].variable_rate:
        return CHECKPOINT_DIR / f"{name}.pt"
    return CHECKPOINT_DIR / f"{name}-q{quality}.pt"


def _seed(name: str, quality: float) -> int:
    key = name if MODELS[name].variable_rate else f"{name}/q{quality}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """4-byte fingerprint of every parameter and buffer (CDF tables included); bitstreams carry it so
    that a decoder with other weights refuses instead of decoding garbage."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:4]


def _quantize_kernel(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per slice of the first dimension (an output channel of a
    convolution, an input channel of a transposed one)."""
    scale = kernel.detach().abs().amax(dim=tuple(range(1, kernel.dim())), keepdim=True).float() / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (kernel.detach().float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def _dequantize_kernel(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # One float32 multiplication, correctly rounded on every IEEE machine: a loaded model holds exactly
    # the weights the exporter built its CDF tables from.
    return values.float() * scale


def round_for_storage(model: torch.nn.Module) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """Round the model's parameters in place to what a checkpoint file holds, and return those values.

    Convolution kernels (4-D parameters, nearly all of the weights) are stored as int8 with a scale per
    channel: on the shipped HYPER and HYPER-PC checkpoints this moved PSNR by under 0.01 dB and bpp by
    under 0.1 % against fp16 (docs/training.md), at half the size. Every other parameter is stored as
    fp16. The returned mapping holds the fp16 parameters by name and, under ``"int8"``, each kernel's
    ``{"values", "scale"}``.
    """
    stored: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 4:
                values, scale = _quantize_kernel(parameter)
                parameter.copy_(_dequantize_kernel(values, scale))
                stored[name] = {"values": values, "scale": scale}
            else:
                parameter.copy_(parameter.half().float())
                stored[name] = parameter.detach().half().clone()
    return stored


def stored_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """The float32 state dict of a checkpoint file's ``state_dict`` (int8 kernels dequantised, fp16
    parameters widened; integer buffers such as the CDF tables as they are)."""
    restored = {}
    for name, value in state.items():
        if isinstance(value, dict):
            restored[name] = _dequantize_kernel(value["values"], value["scale"])
        else:
            restored[name] = value.float() if value.is_floating_point() else value
    return restored


class CheckpointError(PcicError, ValueError):
    """A checkpoint file is unreadable, or holds weights of another model."""


def _load_checkpoint(model: PointCloudCompressionModel, checkpoint: str | Path, name: str) -> None:
    """Load a checkpoint file's weights into ``model`` (registered as ``name``), or CheckpointError."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {checkpoint}") from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{checkpoint}: not a readable checkpoint ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}: not a checkpoint (it holds a {type(state).__name__})")
    try:
        model.load_state_dict(stored_state_dict(state.get("state_dict", state)))
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{checkpoint}: not weights of '{name}' ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    """torch's load errors run to pages; their first line names the cause (the next one, shortened,
    when the first only introduces a list, as load_state_dict's does)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return lines[1] if len(lines[1]) <= 160 else lines[1][:157] + "..."
    return lines[0]


def check_model_quality(name: str, quality: float) -> ModelSpec:
    """The registered model ``name`` when it codes at ``quality`` (KeyError: no such model;
    QualityError: a quality it does not have)."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; registered: {', '.join(model_names())}")
    spec = MODELS[name]
    if spec.variable_rate:
        check_quality(quality)
    elif quality not in QUALITY_LAMBDAS:
        raise QualityError(f"quality must be one of {sorted(QUALITY_LAMBDAS)}, got {quality}")
    return spec


def create_model(
    name: str,
    quality: float = 4,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
) -> PointCloudCompressionModel:
    """Build a registered model in eval mode with its entropy coder's CDF tables ready.

    Args:
        name: a registered name (see ``model_names()``).
        quality: 1..4 (lambda = QUALITY_LAMBDAS[quality]); for a variable-rate model any number in
            ``QUALITY_RANGE`` (the weights are the same for all; the quality is passed when coding).
        checkpoint: a checkpoint file to load; by default the shipped one when it exists.
        pretrained: when False, or when no checkpoint exists, use the seeded untrained weights.
    """
    spec = check_model_quality(name, quality)
    if checkpoint is None and pretrained and checkpoint_path(name, quality).is_file():
        checkpoint = checkpoint_path(name, quality)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(name, quality))
        model = spec.build()
    # The container, not the model, bounds the strings of a frame (HYPER writes 2).
    strings = getattr(model, "num_strings", 2)
    if strings > MAX_STRINGS:
        raise ValueError(f"'{name}' writes {strings} strings per frame; a container holds {MAX_STRINGS}")
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, name)
    else:
        model.update(force=True)
    return model.eval().to(device)
