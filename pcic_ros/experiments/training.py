"""``pcic train``: train HYPER / HYPER-PC with the loss of eq. 14, on CPU, one GPU or many (DDP).

    L = R(y_hat | z_hat, c) + R(z_hat) + lambda * D(x, x_hat) + alpha * L_pre,   L_pre = D(rand(x), c_pre)

R is in bits per pixel and D = 255^2 * MSE on images in [0, 1] (CompressAI's RateDistortionLoss, for
which the paper's lambdas 0.004 ... 0.032 are meant); L_pre uses the same D. alpha follows a schedule
given as fractions of the run (the paper: 0.01 for the first half, 0.005 up to 90 %, then 0). Adam for
the network, a second Adam for CompressAI's auxiliary loss of the entropy bottleneck.

A run is a folder: ``config.yaml`` (every hyperparameter), ``train_log.csv``, ``validation_log.csv``,
``last.pt`` (weights, optimisers, scheduler and step, for ``--resume``) and ``model.pt`` (weights with
updated CDFs, loadable by ``pcic_ros.codec.zoo.create_model(name, quality, checkpoint=...)``; ``--install``
copies it to where the registry finds it by name).

Runs are reproducible: the samples of step s depend only on (seed, s) (see ``CropDataset``), and the
quantisation noise of step s only on (seed, s, rank), so a resumed run continues exactly as an
uninterrupted one would. Under ``torchrun`` the process group comes from the environment (NCCL on
CUDA, gloo on CPU) and ``batch_size`` is the global batch, split evenly over the processes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from compressai.losses import RateDistortionLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pcic_ros.codec.frames import depth_tensor, image_tensor, padded_size, tensor_image
from pcic_ros.codec.projection import equalize_depth, project_points
from pcic_ros.codec.zoo import (
    MODELS,
    QUALITY_LAMBDAS,
    checkpoint_path,
    create_model,
    round_for_storage,
    stored_state_dict,
)
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.datasets import DataError, default_data_dir, discover_frames
from pcic_ros.experiments.metrics import psnr
from pcic_ros.experiments.protocol import (
    DEFAULT_VALIDATION_SEQUENCES,
    PAPER_CROP,
    crop_box,
    crop_calibration,
    split_by_sequence,
)
from pcic_ros.experiments.training_data import CropDataset, default_cache_dir, prepare_cache, run_standalone
from pcic_ros.models import PointCloudCompressionModel
from pcic_ros.models.gain import QUALITY_RANGE, quality_lambda

__all__ = [
    "TrainConfig",
    "PRECISIONS",
    "VALIDATION_QUALITIES",
    "alpha_at",
    "export_checkpoint",
    "code_image",
    "train",
    "add_parser",
]


#: Training precisions: autocast dtype of the forward pass (None: none).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Every hyperparameter of a run; ``config.yaml`` in the run folder is this, written out."""

    model: str = "hyper-pc"
    #: The single-rate model's quality; a variable-rate model draws one per sample instead.
    quality: int = 4
    #: lambda of eq. 14; None means QUALITY_LAMBDAS[quality] (single-rate models only).
    lmbda: float | None = None
    #: Weights to start from (a run's model.pt or a shipped checkpoint; a single-rate one for a
    #: variable-rate model, whose gain units then start as ``GainUnits`` documents), or None.
    init_from: str | None = None
    data: str = field(default_factory=lambda: str(default_data_dir()))
    #: c_proj cache; None means beside the data (see ``pcic prepare``).
    cache: str | None = None
    validation_sequences: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION_SEQUENCES))
    crop_size: int = 256
    #: Global batch: split evenly over the processes of a distributed run.
    batch_size: int = 8
    #: "fp32", or "bf16": the forward pass under bfloat16 autocast, the loss in float32 (for GPUs; on
    #: this project's 2-core CPU, which has no AVX-512, it was 28x slower: docs/training.md).
    precision: str = "fp32"
    steps: int = 1_000_000
    learning_rate: float = 1e-4
    #: Learning rate of what a point-cloud model has and its baseline lacks (branch, joins, Hyper
    #: Refiner), or None for ``learning_rate``: warm-started from a trained baseline, those parts start
    #: from nothing while the rest is only fine-tuned, so they may learn faster (docs/training.md).
    branch_learning_rate: float | None = None
    #: [fraction of the run, factor]: the learning rate is multiplied by factor from that point on.
    learning_rate_drops: list[list[float]] = field(default_factory=list)
    aux_learning_rate: float = 1e-3
    #: [until fraction of the run, alpha], in order; the paper's 0.01 / 0.005 / 0 over 1M steps.
    alpha_schedule: list[list[float]] = field(default_factory=lambda: [[0.5, 0.01], [0.9, 0.005], [1.0, 0.0]])
    clip_max_norm: float = 1.0
    seed: int = 0
    #: 'cpu', 'cuda' or None for CUDA when available.
    device: str | None = None
    num_workers: int = 2
    log_every: int = 10
    validate_every: int = 1000
    #: Validation frames, spread evenly over the validation split (0: all of them).
    validation_frames: int = 8
    #: Crop of the validation frames, [height, width] (the paper's 1242 x 256), or None for whole frames.
    validation_crop: list[int] | None = field(default_factory=lambda: list(PAPER_CROP))
    checkpoint_every: int = 1000
    #: Keep every checkpoint's model.pt as snapshots/model-STEP.pt, so that runs of different speeds
    #: can be compared at equal steps afterwards (a few MB each).
    keep_snapshots: bool = False
    output: str = "out/train/run"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InvalidArgumentError(f"unknown model '{self.model}'; registered: {', '.join(sorted(MODELS))}")
        if self.quality not in QUALITY_LAMBDAS:
            raise InvalidArgumentError(f"quality must be one of {sorted(QUALITY_LAMBDAS)}, got {self.quality}")
        if self.variable_rate and self.lmbda is not None:
            raise InvalidArgumentError(
                f"{self.model} draws lambda per sample over its quality range: lmbda must be null"
            )
        for name in ("crop_size", "batch_size", "steps", "log_every", "validate_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.branch_learning_rate is not None and not self.branch_learning_rate > 0:
            raise InvalidArgumentError(
                f"branch_learning_rate must be positive or null, got {self.branch_learning_rate}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        fractions = [float(until) for until, _ in self.alpha_schedule]
        if not fractions or fractions != sorted(fractions) or fractions[-1] < 1.0:
            raise InvalidArgumentError(
                "alpha_schedule must be [until_fraction, alpha] pairs in order, the last reaching 1.0"
            )

    @property
    def variable_rate(self) -> bool:
        return MODELS[self.model].variable_rate

    @property
    def lagrangian(self) -> float:
        return self.lmbda if self.lmbda is not None else QUALITY_LAMBDAS[self.quality]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: object) -> TrainConfig:
        """Read a config file; keyword arguments that are not None replace its values."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgumentError(f"{path}: unknown settings {', '.join(unknown)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))


def alpha_at(schedule: Sequence[Sequence[float]], step: int, steps: int) -> float:
    """alpha of eq. 14 at ``step`` of a ``steps``-long run: the first entry whose fraction is not passed."""
    fraction = step / steps
    for until, alpha in schedule:
        if fraction < until:
            return float(alpha)
    return float(schedule[-1][1])


def _step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class StepBatches(Sampler[list[int]]):
    """Batches of sample numbers for steps [start, stop): step s, rank r takes s * B + r * b + (0..b-1)."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world_size: int) -> None:
        self.start, self.stop = start, stop
        self.global_batch, self.rank = global_batch, rank
        self.local_batch = global_batch // world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local_batch
            yield list(range(first, first + self.local_batch))


def _optimizers(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """CompressAI's split: the entropy bottleneck's quantiles are trained by the auxiliary loss alone."""
    main = [(name, p) for name, p in model.named_parameters() if not name.endswith(".quantiles")]
    aux = [p for name, p in model.named_parameters() if name.endswith(".quantiles")]
    if config.branch_learning_rate is None:
        groups = [{"params": [p for _, p in main]}]
    else:
        groups = [
            {"params": [p for name, p in main if not _added_by_point_cloud(name)]},
            {"params": [p for name, p in main if _added_by_point_cloud(name)], "lr": config.branch_learning_rate},
        ]
        groups = [group for group in groups if group["params"]]
    return torch.optim.Adam(groups, lr=config.learning_rate), torch.optim.Adam(aux, lr=config.aux_learning_rate)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    drops = sorted((int(fraction * config.steps), float(factor)) for fraction, factor in config.learning_rate_drops)

    def factor(step: int) -> float:
        return math.prod(f for at, f in drops if step >= at)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def export_checkpoint(model: PointCloudCompressionModel, path: str | Path, metadata: dict | None = None) -> Path:
    """Write weights that code real bitstreams: parameters rounded for storage (int8 convolution kernels
    with a scale per channel, fp16 for the rest; ``zoo.round_for_storage``) and every buffer as it is.

    The parameters are rounded *before* CompressAI's ``update()`` builds the CDF tables, so the stored
    tables are exactly those of the stored weights; integer tables stay int32, and the float scale table
    stays float32. A model loaded from the file is therefore identical to the exported one, and encoder
    and decoder in any process agree bit for bit.
    """
    model = copy.deepcopy(model).cpu().eval()
    round_for_storage(model)
    # The bisection search places the entropy bottleneck's quantiles more precisely than a short run
    # of the auxiliary loss does; the CDF tables are then rebuilt from the rounded quantiles.
    model.update(force=True, update_quantiles=True)
    stored_parameters = round_for_storage(model)
    model.update(force=True)
    state = {name: stored_parameters.get(name, tensor.clone()) for name, tensor in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"state_dict": state, **(metadata or {})}, partial)
    partial.replace(path)
    return path


@torch.inference_mode()
def code_image(
    model: PointCloudCompressionModel, image: np.ndarray, equalized: np.ndarray | None, quality: float | None = None
) -> tuple[int, np.ndarray]:
    """Compress and decompress one H x W x 3 uint8 image through real bitstreams, padded as ``Codec``
    pads; returns (bytes of the y and z strings, decoded image). The model must be ``update()``-d;
    ``quality`` is for a variable-rate model."""
    device = next(model.parameters()).device
    height, width = image.shape[:2]
    padded = padded_size(model.downsampling_factor, height, width)
    x = image_tensor(image, device, padded)
    c_proj = depth_tensor(equalized, height, width, padded, device) if model.branch is not None else None
    rate = {"quality": quality} if quality is not None else {}
    out = model.compress(x, c_proj, **rate)
    x_hat = model.decompress(out["strings"], out["shape"], c_proj, **rate)["x_hat"]
    num_bytes = sum(len(string) for strings in out["strings"] for string in strings)
    return num_bytes, tensor_image(x_hat, height, width)


class _Validation:
    """The validation frames, cropped and projected once; ``run`` codes them with a copy of the model."""

    def __init__(self, config: TrainConfig, frames: Sequence, levels: int) -> None:
        count = len(frames) if config.validation_frames == 0 else min(config.validation_frames, len(frames))
        picked = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()] if count else []
        crop = tuple(config.validation_crop) if config.validation_crop else None
        self.items = []
        for frame in picked:
            image = frame.image()
            top, left, height, width = crop_box(*image.shape[:2], crop)
            calibration = crop_calibration(frame.calibration(), top, left)
            equalized = equalize_depth(project_points(frame.scan(), calibration, height, width), levels)
            self.items.append((np.ascontiguousarray(image[top : top + height, left : left + width]), equalized))

    def run(
        self, model: PointCloudCompressionModel, qualities: Sequence[float | None] = (None,)
    ) -> tuple[list[dict], list[np.ndarray]]:
        """Mean bpp and PSNR of the frames at each quality (None: a single-rate model's own), and the
        first frame as decoded at each quality."""
        model = copy.deepcopy(model).eval()
        model.update(force=True)
        rows, first_frames = [], []
        for quality in qualities:
            bpps, psnrs = [], []
            for index, (image, equalized) in enumerate(self.items):
                num_bytes, decoded = code_image(model, image, equalized, quality)
                bpps.append(8.0 * num_bytes / (image.shape[0] * image.shape[1]))
                psnrs.append(psnr(image, decoded))
                if index == 0:
                    first_frames.append(decoded)
            row = {} if quality is None else {"quality": quality}
            rows.append({**row, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
        return rows, first_frames


#: Where a variable-rate model is validated: every anchor of its gain units.
VALIDATION_QUALITIES: tuple[float, ...] = tuple(
    float(q) for q in range(int(QUALITY_RANGE[0]), int(QUALITY_RANGE[1]) + 1)
)


def rate_distortion_loss(out: dict, x: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 14 without L_pre with one lambda per sample (B values): CompressAI's RateDistortionLoss takes
    one lambda for the batch. bpp and MSE are per sample, then averaged, which for equal lambdas is
    exactly RateDistortionLoss's value."""
    pixels = x.shape[2] * x.shape[3]
    bpp = sum(torch.log(likelihoods).flatten(1).sum(1) for likelihoods in out["likelihoods"].values())
    bpp = bpp / (-math.log(2) * pixels)
    mse = F.mse_loss(out["x_hat"], x, reduction="none").flatten(1).mean(1)
    return {"loss": (bpp + lmbda * 255**2 * mse).mean(), "bpp_loss": bpp.mean(), "mse_loss": mse.mean()}


def _sample_qualities(seed: int, step: int, rank: int, count: int) -> torch.Tensor:
    """The qualities of step s's samples on a rank, uniform over QUALITY_RANGE: a function of (seed, s,
    rank) only, like the quantisation noise, so that a resumed run draws what it would have drawn."""
    generator = torch.Generator().manual_seed(_step_seed(seed + 1, step, rank))
    low, high = QUALITY_RANGE
    return low + (high - low) * torch.rand(count, generator=generator)


def _append_csv(path: Path, row: dict[str, object]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (by a run that stopped before its next checkpoint)."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if int(row["step"]) <= last_step)


def _as_float32(value: object) -> object:
    """A model's output with every floating-point tensor in float32 (after an autocast forward)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _as_float32(item) for key, item in value.items()}
    return value


def _agree(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank when it is true on any (the ranks' clocks differ; they must stop together)."""
    if world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


#: The buffers CompressAI's ``update()`` derives from the weights.
_CODER_TABLES = frozenset({"_quantized_cdf", "_offset", "_cdf_length", "scale_table"})


def _added_by_point_cloud(name: str) -> bool:
    """A parameter of the point-cloud branch, of a join into a transform or of the Hyper Refiner."""
    return name.startswith(("branch.", "refiner.")) or ".joins." in name


def _initialised_by_the_model(name: str) -> bool:
    return name.startswith("gain_units.") or _added_by_point_cloud(name) or name.rsplit(".", 1)[-1] in _CODER_TABLES


def _load_initial_weights(model: PointCloudCompressionModel, path: Path) -> None:
    """Start from a checkpoint's weights. Only what the checkpoint's model may lack keeps its initial
    values: a variable-rate model's gain units (from a single-rate checkpoint), and a lean point-cloud
    model's branch, joins and Hyper Refiner (from its baseline's checkpoint: the warm start). The
    entropy coder's tables are left out: they are rebuilt from the trained weights at every export."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = {
        name: tensor
        for name, tensor in stored_state_dict(state.get("state_dict", state)).items()
        if name.rsplit(".", 1)[-1] not in _CODER_TABLES
    }
    # nn.Module's own loader: CompressAI's override resizes the tables and so needs them present.
    try:
        missing, unexpected = torch.nn.Module.load_state_dict(model, weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise InvalidArgumentError(f"{path} does not fit {type(model).__name__}: {error}") from None
    allowed = {name for name in missing if _initialised_by_the_model(name)}
    if unexpected or set(missing) - allowed:
        raise InvalidArgumentError(
            f"{path} does not fit {type(model).__name__}: missing {sorted(set(missing) - allowed)}, "
            f"unexpected {sorted(unexpected)}"
        )


def _distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size); initialises the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def train(
    config: TrainConfig,
    resume: bool = False,
    install: bool = False,
    progress: bool = True,
    until: int | None = None,
    time_limit: float | None = None,
) -> dict[str, float]:
    """Run (or, with ``resume``, continue) training as configured; returns the last validation result
    (for a variable-rate model the mean over ``VALIDATION_QUALITIES``, and each under "by_quality").

    Rank 0 writes the run folder; every rank trains. ``until`` stops the run after that step with a
    checkpoint (schedules still follow ``config.steps``); ``time_limit`` (seconds) stops it with a
    checkpoint after the first step that ends past the limit, as a time-limited job needs; ``resume``
    continues from either exactly. With ``install`` the exported model is also copied to where
    ``create_model`` finds it by name (``zoo.checkpoint_path``).
    """
    started = time.monotonic()
    stop = config.steps if until is None else min(until, config.steps)
    rank, local_rank, world_size = _distributed()
    if config.batch_size % world_size:
        raise InvalidArgumentError(f"batch_size {config.batch_size} does not split over {world_size} processes")
    device = _device(config, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    output = Path(config.output)
    data_root = Path(config.data)
    cache_dir = Path(config.cache) if config.cache else default_cache_dir(data_root)

    split = split_by_sequence(discover_frames(data_root), config.validation_sequences)
    if not split.train:
        raise DataError(f"no training frames in {data_root} outside {config.validation_sequences}")
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output / "config.yaml")
        prepare_cache(split.train, data_root, cache_dir, progress=False)
    if world_size > 1:
        dist.barrier()

    model = create_model(config.model, config.quality, pretrained=False, device=device).train()
    if config.init_from and not resume:
        _load_initial_weights(model, Path(config.init_from))
    levels = model.point_cloud.depth_levels if model.point_cloud is not None else 255
    optimizer, aux_optimizer = _optimizers(model, config)
    # Only the main optimiser's parameters are clipped: the quantiles' gradient is the auxiliary loss's.
    main_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    has_pip = model.branch is not None and model.branch.pip is not None
    pip_ids = {id(p) for p in model.branch.pip.parameters()} if has_pip else set()
    clip_groups = [
        group
        for group in (
            [p for p in main_parameters if id(p) in pip_ids],
            [p for p in main_parameters if id(p) not in pip_ids],
        )
        if group
    ]
    scheduler = _scheduler(optimizer, config)
    start = 0
    if resume:
        state = torch.load(output / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        if rank == 0:
            for log in ("train_log.csv", "validation_log.csv"):
                _truncate_csv(output / log, start)

    network: torch.nn.Module = model
    if world_size > 1:
        # The quantiles only get gradients from the auxiliary loss, which is computed outside the
        # forward pass and depends on nothing but the quantiles themselves: identical on every rank.
        ignored = [name for name, _ in model.named_parameters() if name.endswith(".quantiles")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        network = DistributedDataParallel(
            model,
            device_ids=[local_rank] if device.type == "cuda" else None,
            broadcast_buffers=False,
            # Without FF the fusion half of MCM takes no part in the loss.
            find_unused_parameters=model.point_cloud is not None and not model.point_cloud.ff,
        )

    dataset = CropDataset(split.train, data_root, cache_dir, config.crop_size, config.seed, levels)
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatches(start, stop, config.batch_size, rank, world_size),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    validation = _Validation(config, split.validation, levels) if rank == 0 and split.validation else None
    criterion = None if config.variable_rate else RateDistortionLoss(lmbda=config.lagrangian)
    uses_scan = model.branch is not None
    autocast_dtype = PRECISIONS[config.precision]
    last_validation: dict = {}

    def save(step: int) -> None:
        state = {
            "step": step,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": dataclasses.asdict(config),
        }
        torch.save(state, output / "last.pt.partial")
        (output / "last.pt.partial").replace(output / "last.pt")
        quality = None if config.variable_rate else config.quality
        metadata = {"model": config.model, "quality": quality, "steps": step}
        export_checkpoint(model, output / "model.pt", metadata=metadata)
        if config.keep_snapshots:
            (output / "snapshots").mkdir(exist_ok=True)
            shutil.copyfile(output / "model.pt", output / "snapshots" / f"model-{step:07d}.pt")

    def validate(step: int) -> None:
        nonlocal last_validation
        if validation is None:
            return
        rows, first_frames = validation.run(model, VALIDATION_QUALITIES if config.variable_rate else (None,))
        for row, decoded in zip(rows, first_frames, strict=True):
            _append_csv(output / "validation_log.csv", {"step": step, **row})
            suffix = f"_q{row['quality']:g}" if "quality" in row else ""
            board.add_scalar(f"validation/bpp{suffix}", row["bpp"], step)
            board.add_scalar(f"validation/psnr{suffix}", row["psnr"], step)
            board.add_image(f"validation/decoded{suffix}", decoded, step, dataformats="HWC")
        last_validation = {key: float(np.mean([row[key] for row in rows])) for key in ("bpp", "psnr")}
        if config.variable_rate:
            last_validation["by_quality"] = rows

    # Event files beside the CSV logs; a resumed run first drops the events logged after its checkpoint.
    board = SummaryWriter(output / "tensorboard", purge_step=start + 1 if resume else None) if rank == 0 else None
    rate = "variable rate" if config.variable_rate else f"q{config.quality}"
    bar = tqdm(total=config.steps, initial=start, desc=f"{config.model} {rate}", disable=rank != 0 or not progress)
    tick = time.perf_counter()
    skipped = 0  # steps whose gradient was not finite, left out instead of spoiling the weights
    for step, batch in enumerate(loader, start=start):
        torch.manual_seed(_step_seed(config.seed, step, rank))
        x = batch["image"].to(device, non_blocking=True)
        c_proj = batch["c_proj"].to(device, non_blocking=True) if uses_scan else None
        qualities = _sample_qualities(config.seed, step, rank, x.shape[0]).to(device) if config.variable_rate else None
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = network(x, c_proj, qualities) if qualities is not None else network(x, c_proj)
        if autocast_dtype is not None:
            out = _as_float32(out)
        if qualities is not None:
            terms = rate_distortion_loss(out, x, quality_lambda(qualities))
        else:
            terms = criterion(out, x)
        alpha = alpha_at(config.alpha_schedule, step, config.steps)
        loss = terms["loss"]
        pre_loss = torch.zeros((), device=device)
        if out["c_pre"] is not None:
            pre_loss = 255**2 * F.mse_loss(out["c_pre"], batch["target"].to(device, non_blocking=True))
            loss = loss + alpha * pre_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = True
        if config.clip_max_norm > 0:
            # Clipped apart: L_pre reaches only PIP, and its gradient would otherwise set the norm.
            norms = [torch.nn.utils.clip_grad_norm_(group, config.clip_max_norm) for group in clip_groups]
            # The norms are of all-reduced gradients, so every rank takes the same decision.
            finite = bool(torch.isfinite(torch.stack(norms)).all())
        if finite:
            optimizer.step()
        else:
            skipped += 1
        scheduler.step()
        aux_loss = model.aux_loss()
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_optimizer.step()

        done = step + 1
        bar.update(1)
        if rank == 0 and (done % config.log_every == 0 or done == config.steps):
            now = time.perf_counter()
            row = {
                "step": done,
                "loss": float(loss.detach()),
                "bpp": float(terms["bpp_loss"].detach()),
                "mse": float(terms["mse_loss"].detach()),
                "pre_loss": float(pre_loss.detach()),
                "alpha": alpha,
                "aux_loss": float(aux_loss.detach()),
                "learning_rate": scheduler.get_last_lr()[0],
                "skipped_steps": skipped,
                "steps_per_s": config.log_every / max(now - tick, 1e-9),
            }
            tick = now
            _append_csv(output / "train_log.csv", row)
            for name, value in row.items():
                if name != "step":
                    board.add_scalar(f"train/{name}", value, done)
            bar.set_postfix(loss=f"{row['loss']:.3f}", bpp=f"{row['bpp']:.3f}")
        if rank == 0 and (done % config.validate_every == 0 or done == config.steps):
            validate(done)
        out_of_time = time_limit is not None and _agree(time.monotonic() - started > time_limit, world_size, device)
        if rank == 0 and (done % config.checkpoint_every == 0 or done == stop or out_of_time):
            save(done)
        if out_of_time:
            break
    bar.close()
    if board is not None:
        board.close()
    if rank == 0 and install:
        shutil.copyfile(output / "model.pt", checkpoint_path(config.model, config.quality))
    if world_size > 1:
        dist.barrier()
    return last_validation


def _run(args: argparse.Namespace) -> int:
    overrides = {
        "model": args.model,
        "quality": args.quality,
        "data": args.data,
        "cache": args.cache,
        "steps": args.steps,
        "device": args.device,
        "output": args.output,
        "seed": args.seed,
        "init_from": args.init_from,
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "precision": args.precision,
    }
    if args.resume:
        config = TrainConfig.from_yaml(Path(args.resume) / "config.yaml", steps=args.steps, device=args.device)
        config.output = args.resume
    elif args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig(**{key: value for key, value in overrides.items() if value is not None})
    time_limit = None if args.time_limit is None else 60.0 * args.time_limit
    result = train(config, resume=bool(args.resume), install=args.install, until=args.until, time_limit=time_limit)
    if result and int(os.environ.get("RANK", "0")) == 0:
        print(f"{config.output}: validation {result['bpp']:.4f} bpp, {result['psnr']:.2f} dB")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML run configuration (see config/train/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--install", action="store_true", help="copy the result to the registry's checkpoint path")
    parser.add_argument("--model", choices=sorted(MODELS), help="overrides the config")
    parser.add_argument("--quality", type=int, choices=sorted(QUALITY_LAMBDAS), help="overrides the config")
    parser.add_argument("--data", help="overrides the config")
    parser.add_argument("--cache", help="overrides the config")
    parser.add_argument("--steps", type=int, help="overrides the config (with --resume: extend the run)")
    parser.add_argument("--device", help="overrides the config")
    parser.add_argument("--until", type=int, metavar="STEP", help="stop after STEP with a checkpoint (resume later)")
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop with a checkpoint once this much time has passed (resume later with --resume)",
    )
    parser.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights; overrides the config")
    parser.add_argument("--crop-size", type=int, help="overrides the config")
    parser.add_argument("--batch-size", type=int, help="overrides the config")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), help="overrides the config")
    parser.add_argument("--output", help="run folder; overrides the config")
    parser.add_argument("--seed", type=int, help="overrides the config")
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``pcic train`` on its own (``python -m pcic_ros.experiments.training``), e.g. under ``torchrun``."""
    return run_standalone("train", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
