"""Training data: the c_proj cache (``pcic prepare``) and aligned random crops. Which frames train and
which validate, and the evaluation crop, are ``pcic_ros.experiments.protocol``'s.

- As in the paper (sec. IV.A), c_proj is projected once and stored as an array: the equalised depth
  map of eq. 3 (uint8, same size as the image) as a compressed ``.npz`` (the map is mostly zeros, so a
  frame takes tens of kilobytes), in a folder that mirrors the data folder.
  By default the cache sits beside the data (``<data>/c_proj_cache``); pass another folder when the
  data is read-only.
- ``CropDataset`` cuts random 256 x 256 crops of image and c_proj from the same pixels, and the
  randomly colour-transformed image that L_pre (eq. 5) is measured against. Sample ``k`` is a pure
  function of (seed, k), so a resumed or distributed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset
from tqdm import tqdm

from pcic_ros.codec.projection import DEFAULT_DEPTH_LEVELS, equalize_depth, project_points
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.datasets import DataError, Frame, discover_frames, load_image
from pcic_ros.experiments.protocol import DEFAULT_VALIDATION_SEQUENCES, split_by_sequence

__all__ = [
    "default_cache_dir",
    "cache_path",
    "prepare_cache",
    "load_c_proj",
    "ColourJitter",
    "CropDataset",
    "add_parser",
]


def default_cache_dir(data_root: str | Path) -> Path:
    """The cache beside the data: ``<data>/c_proj_cache``."""
    return Path(data_root) / "c_proj_cache"


def cache_path(frame: Frame, data_root: str | Path, cache_dir: str | Path, levels: int = DEFAULT_DEPTH_LEVELS) -> Path:
    """Where the cached c_proj of a frame lives: the image's path below the data root, in a folder per s."""
    try:
        relative = frame.image_path.resolve().relative_to(Path(data_root).resolve())
    except ValueError:
        raise DataError(f"{frame.image_path} is not below the data folder {data_root}") from None
    return Path(cache_dir) / f"levels-{levels}" / relative.with_suffix(".npz")


def _equalized_depth(frame: Frame, height: int, width: int, levels: int) -> np.ndarray:
    return equalize_depth(project_points(frame.scan(), frame.calibration(), height, width), levels)


def prepare_cache(
    frames: Sequence[Frame],
    data_root: str | Path,
    cache_dir: str | Path,
    levels: int = DEFAULT_DEPTH_LEVELS,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Project every frame's scan once and store its equalised depth map; returns how many were written."""
    written = 0
    for frame in tqdm(frames, desc="c_proj", unit="frame", disable=not progress):
        path = cache_path(frame, data_root, cache_dir, levels)
        if path.is_file() and not overwrite:
            continue
        height, width = frame.image().shape[:2]
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so that an interrupted run never leaves a truncated array behind.
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez_compressed(partial, c_proj=_equalized_depth(frame, height, width, levels))
        partial.replace(path)
        written += 1
    return written


def load_c_proj(
    frame: Frame, data_root: str | Path, cache_dir: str | Path, levels: int = DEFAULT_DEPTH_LEVELS
) -> np.ndarray:
    """The cached equalised depth map (uint8, H x W) of a frame; DataError if ``pcic prepare`` did not run."""
    path = cache_path(frame, data_root, cache_dir, levels)
    if not path.is_file():
        raise DataError(f"no cached c_proj for {frame.image_path} at {path}: run `pcic prepare` first")
    with np.load(path) as arrays:
        depth = arrays["c_proj"]
    if depth.dtype != np.uint8 or depth.ndim != 2:
        raise DataError(f"{path}: expected a 2-D uint8 array, got {depth.dtype} {depth.shape}")
    return depth


@dataclass(frozen=True)
class ColourJitter:
    """The random colour transformation rand(x) of eq. 5 (Fig. 5): contrast, brightness, inversion.

    The paper names the operations but not their ranges; these keep the structure of the image and
    vary its colours widely, so that PIP learns structure rather than exact RGB values.
    """

    contrast: tuple[float, float] = (0.5, 1.5)
    brightness: tuple[float, float] = (0.5, 1.5)
    invert_probability: float = 0.5

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``image``: 3 x H x W float in [0, 1]; returns the transformed image, also in [0, 1]."""
        out = TF.adjust_contrast(image, float(rng.uniform(*self.contrast)))
        out = TF.adjust_brightness(out, float(rng.uniform(*self.brightness)))
        if rng.random() < self.invert_probability:
            out = TF.invert(out)
        return out


@lru_cache(maxsize=256)
def _cached_image(path: Path) -> np.ndarray:
    return load_image(path)


class CropDataset(Dataset):
    """Sample ``k`` -> aligned random crops {"image", "c_proj", "target"} of one training frame.

    ``image`` and ``target`` are 3 x S x S floats in [0, 1] (``target`` = rand(image), eq. 5), ``c_proj``
    is 1 x S x S, the cached equalised depth / 255. Frame, crop position and colour transform are drawn
    from a generator seeded with (seed, k), so any index can be asked for in any order, by any worker.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        data_root: str | Path,
        cache_dir: str | Path,
        crop_size: int = 256,
        seed: int = 0,
        levels: int = DEFAULT_DEPTH_LEVELS,
        jitter: ColourJitter | None = None,
    ) -> None:
        if not frames:
            raise DataError("no training frames")
        if crop_size < 1:
            raise InvalidArgumentError(f"crop size must be positive, got {crop_size}")
        self.frames = list(frames)
        self.data_root = Path(data_root)
        self.cache_dir = Path(cache_dir)
        self.crop_size = crop_size
        self.seed = seed
        self.levels = levels
        self.jitter = jitter or ColourJitter()
        # Fail at start-up, not hours into a run, when the cache is incomplete.
        missing = [f for f in self.frames if not cache_path(f, self.data_root, self.cache_dir, levels).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.frames)} frames have no cached c_proj in {self.cache_dir} "
                f"(first: {missing[0].image_path}): run `pcic prepare` first"
            )

    def __len__(self) -> int:
        """Number of frames; indices are sample numbers and may go beyond it."""
        return len(self.frames)

    def crop_origin(self, index: int) -> tuple[Frame, int, int, np.random.Generator]:
        """The frame and top-left corner of sample ``index``, and the generator for what follows."""
        rng = np.random.default_rng([self.seed, index])
        frame = self.frames[int(rng.integers(len(self.frames)))]
        height, width = _cached_image(frame.image_path).shape[:2]
        if height < self.crop_size or width < self.crop_size:
            raise DataError(f"{frame.image_path} ({width} x {height}) is smaller than the {self.crop_size} crop")
        top = int(rng.integers(height - self.crop_size + 1))
        left = int(rng.integers(width - self.crop_size + 1))
        return frame, top, left, rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame, top, left, rng = self.crop_origin(index)
        image = _cached_image(frame.image_path)
        depth = load_c_proj(frame, self.data_root, self.cache_dir, self.levels)
        if depth.shape != image.shape[:2]:
            raise DataError(f"cached c_proj {depth.shape} does not match image {image.shape[:2]} of {frame.image_path}")
        rows, cols = slice(top, top + self.crop_size), slice(left, left + self.crop_size)
        x = torch.from_numpy(np.ascontiguousarray(image[rows, cols])).permute(2, 0, 1).float().div_(255.0)
        c_proj = torch.from_numpy(np.ascontiguousarray(depth[rows, cols])).unsqueeze(0).float().div_(255.0)
        return {"image": x, "c_proj": c_proj, "target": self.jitter(x, rng)}


def _prepare(args: argparse.Namespace) -> int:
    frames = discover_frames(args.data)
    cache_dir = Path(args.cache) if args.cache else default_cache_dir(args.data)
    written = prepare_cache(frames, args.data, cache_dir, args.levels, overwrite=args.overwrite)
    split = split_by_sequence(frames, args.validation_sequences or DEFAULT_VALIDATION_SEQUENCES)
    print(f"{cache_dir}: {written} c_proj arrays written, {len(frames) - written} already there")
    for name, part in (("train", split.train), ("validation", split.validation)):
        sequences = sorted({frame.sequence for frame in part})
        print(f"{name}: {len(part)} frames from {len(sequences)} sequence(s): {', '.join(sequences)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare")
    parser.add_argument("--data", required=True, help="KITTI data folder (raw, object or KITTI-360 object layout)")
    parser.add_argument("--cache", help="cache folder (default: <data>/c_proj_cache; use one when data is read-only)")
    parser.add_argument("--levels", type=int, default=DEFAULT_DEPTH_LEVELS, help="s of eq. 3")
    parser.add_argument("--overwrite", action="store_true", help="re-project frames already cached")
    parser.add_argument(
        "--validation-sequences",
        nargs="+",
        help=f"sequence patterns held out for validation (default: {' '.join(DEFAULT_VALIDATION_SEQUENCES)})",
    )
    parser.set_defaults(func=_prepare)


def run_standalone(command: str, add_command: Callable, argv: list[str] | None) -> int:
    """``pcic COMMAND ARGV`` for a command that ``add_command`` registers, without the rest of the pcic
    command and its ROS dependencies: for ``torchrun`` and for machines that only train."""
    parser = argparse.ArgumentParser(prog="pcic")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """``pcic prepare`` on its own (``python -m pcic_ros.experiments.training_data``)."""
    return run_standalone("prepare", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
