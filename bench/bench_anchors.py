"""Encode/decode time and rate of every available anchor at its mid-sweep quality on a few KITTI frames.

Prints one row per anchor: the quality used, mean bpp and PSNR over the frames, and the median
encode and decode wall time per frame in milliseconds. Nothing is asserted; the numbers depend on
the machine and its load.

    .venv/bin/python bench/bench_anchors.py [--data-dir DIR] [--frames N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pcic_ros.experiments.anchors import ANCHORS, available_anchors
from pcic_ros.experiments.datasets import default_data_dir
from pcic_ros.experiments.metrics import bits_per_pixel, psnr

DEFAULT_DATA_DIR = default_data_dir()
FRAME_GLOB = "kitti_object/training/image_2/*.png"


def load_frames(data_dir: Path, count: int) -> list[np.ndarray]:
    """The first `count` KITTI object frames under data_dir, as H x W x 3 uint8 RGB."""
    paths = sorted(data_dir.glob(FRAME_GLOB))[:count]
    if not paths:
        raise FileNotFoundError(f"no frames match {data_dir / FRAME_GLOB}")
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def time_ms(function: Callable[..., object], *args: object) -> tuple[float, object]:
    """Wall time of one call in milliseconds, and what the call returned."""
    start = time.perf_counter()
    result = function(*args)
    return (time.perf_counter() - start) * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per frame, after one warm-up")
    args = parser.parse_args()

    frames = load_frames(args.data_dir, args.frames)
    unavailable = sorted(set(ANCHORS) - set(available_anchors()))
    if unavailable:
        print(f"skipping unavailable anchors: {', '.join(unavailable)}")
    print(f"{len(frames)} frames, {args.repeats} timed runs each")
    print(f"{'anchor':<10}{'quality':>8}{'bpp':>8}{'PSNR dB':>9}{'enc ms':>9}{'dec ms':>9}")
    for name in available_anchors():
        anchor = ANCHORS[name]
        quality = anchor.qualities[len(anchor.qualities) // 2]
        rates, psnrs, encode_ms, decode_ms = [], [], [], []
        for frame in frames:
            data = anchor.encode(frame, quality)
            anchor.decode(data)
            for _ in range(args.repeats):
                elapsed, data = time_ms(anchor.encode, frame, quality)
                encode_ms.append(elapsed)
                elapsed, decoded = time_ms(anchor.decode, data)
                decode_ms.append(elapsed)
            rates.append(bits_per_pixel(len(data), *frame.shape[:2]))
            psnrs.append(psnr(frame, decoded))
        print(
            f"{name:<10}{quality:>8}{statistics.mean(rates):>8.3f}{statistics.mean(psnrs):>9.2f}"
            f"{statistics.median(encode_ms):>9.1f}{statistics.median(decode_ms):>9.1f}"
        )


if __name__ == "__main__":
    main()
