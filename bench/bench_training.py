"""Training and evaluation speed of HYPER and HYPER-PC on this machine, on real KITTI frames.

Training: optimiser steps per second of ``pcic train`` (data loading, eq. 14 loss, both Adams) at
the given crop and batch. Evaluation: median seconds to encode and to decode one frame with the
shipped checkpoints through ``Codec`` on the paper's 1242 x 256 crop (scan projection included).
Nothing is asserted; the numbers depend on the machine and its load.

    .venv/bin/python bench/bench_training.py [--data DIR] [--crop 128] [--batch 4] [--steps 6] [--frames 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pcic_ros.codec import Codec
from pcic_ros.datasets import discover_frames
from pcic_ros.evaluation import pick_evenly
from pcic_ros.training import TrainConfig, train
from pcic_ros.training_data import PAPER_CROP, crop_box, crop_calibration, split_by_sequence

DEFAULT_DATA = Path(os.environ.get("PCIC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = ("hyper", "hyper-pc")


def training_speed(model: str, data: Path, crop: int, batch: int, steps: int, device: str) -> float:
    """Steps per second over the logged steps after the first (which pays for start-up)."""
    with tempfile.TemporaryDirectory() as run:
        config = TrainConfig(
            model=model,
            data=str(data),
            cache=str(Path(run) / "cache"),
            crop_size=crop,
            batch_size=batch,
            steps=steps,
            num_workers=0,
            log_every=1,
            validate_every=10**9,
            validation_frames=1,
            checkpoint_every=10**9,
            device=device,
            output=str(Path(run) / "run"),
        )
        train(config, progress=False)
        with (Path(run) / "run" / "train_log.csv").open(newline="") as handle:
            rates = [float(row["steps_per_s"]) for row in csv.DictReader(handle)][1:]
    return statistics.median(rates)


def coding_times(model: str, data: Path, frame_count: int, device: str) -> tuple[float, float, float]:
    """(median encode s, median decode s, mean bpp) on validation frames cropped as the paper does."""
    frames = pick_evenly(split_by_sequence(discover_frames(data)).validation, frame_count)
    codec = Codec(model, 4, device=device)
    encode, decode, rates = [], [], []
    for frame in frames:
        image = frame.image()
        top, left, height, width = crop_box(*image.shape[:2], PAPER_CROP)
        image = np.ascontiguousarray(image[top : top + height, left : left + width])
        scan, calibration = frame.scan(), crop_calibration(frame.calibration(), top, left)
        start = time.perf_counter()
        payload = codec.encode(image, scan, calibration)
        encoded = time.perf_counter()
        codec.decode(payload, scan, calibration)
        decode.append(time.perf_counter() - encoded)
        encode.append(encoded - start)
        rates.append(8 * len(payload) / (height * width))
    return statistics.median(encode), statistics.median(decode), float(np.mean(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--crop", type=int, default=128, help="training crop side (the paper: 256)")
    parser.add_argument("--batch", type=int, default=4, help="training batch (the paper: 8)")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per model")
    parser.add_argument("--frames", type=int, default=3, help="validation frames coded per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"training: {args.crop} x {args.crop} crops, batch {args.batch}, median of {args.steps - 1} steps")
    for model in MODELS:
        rate = training_speed(model, args.data, args.crop, args.batch, args.steps, args.device)
        print(f"  {model:<9} {rate:7.2f} steps/s  {rate * args.batch:8.1f} crops/s")
    print(f"coding: quality 4, {PAPER_CROP[1]} x {PAPER_CROP[0]} crop, {args.frames} validation frames")
    for model in MODELS:
        encode_s, decode_s, bpp = coding_times(model, args.data, args.frames, args.device)
        print(f"  {model:<9} encode {encode_s * 1000:7.0f} ms  decode {decode_s * 1000:7.0f} ms  ({bpp:.3f} bpp)")


if __name__ == "__main__":
    main()
