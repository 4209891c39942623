"""Training and evaluation speed of the trained model families on this machine, on real KITTI frames.

Training: optimiser steps per second of ``pcic train`` (data loading, eq. 14 loss, both Adams) for
every combination of model, crop side, precision (fp32, or bfloat16 autocast) and torch thread count
asked for, as a table; pixels per second compares crop sides. Evaluation: median seconds to encode and
to decode one frame through ``Codec`` on the paper's 1242 x 256 crop (scan projection included).
Nothing is asserted; the numbers depend on the machine and its load.

    .venv/bin/python bench/bench_training.py [--data DIR] [--models hyper-vr,hyper-pc-vr] [--crops 128,256]
        [--precisions fp32,bf16] [--threads 1,2] [--batch 8] [--steps 4] [--frames 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pcic_ros.codec.api import Codec
from pcic_ros.experiments.datasets import default_data_dir, discover_frames
from pcic_ros.experiments.evaluation import pick_evenly
from pcic_ros.experiments.protocol import PAPER_CROP, crop_box, crop_calibration, split_by_sequence
from pcic_ros.experiments.training import TrainConfig, train

DEFAULT_DATA = default_data_dir()
MODELS = ("hyper-vr", "hyper-pc-vr")


def training_speed(
    model: str, data: Path, crop: int, batch: int, steps: int, device: str, precision: str = "fp32"
) -> float:
    """Steps per second over the logged steps after the first (which pays for start-up)."""
    with tempfile.TemporaryDirectory() as run:
        config = TrainConfig(
            model=model,
            data=str(data),
            cache=str(Path(run) / "cache"),
            crop_size=crop,
            batch_size=batch,
            precision=precision,
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


def _names(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", type=_names, default=list(MODELS), help="comma-separated registered models")
    parser.add_argument("--crops", type=_names, default=["128", "256"], help="training crop sides (the paper: 256)")
    parser.add_argument("--precisions", type=_names, default=["fp32", "bf16"], help="fp32, bf16")
    parser.add_argument("--threads", type=_names, default=[str(torch.get_num_threads())], help="torch threads")
    parser.add_argument("--batch", type=int, default=8, help="training batch (the paper: 8)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per setting (the first is not timed)")
    parser.add_argument("--frames", type=int, default=3, help="validation frames coded per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    print(f"device {args.device}, torch {torch.__version__}; batch {args.batch}, median of {args.steps - 1} steps")
    print(f"  {'model':<12}{'crop':>6}{'precision':>11}{'threads':>9}{'steps/s':>10}{'Mpixel/s':>10}")
    for model in args.models:
        for crop in map(int, args.crops):
            for precision in args.precisions:
                for threads in map(int, args.threads):
                    torch.set_num_threads(threads)
                    rate = training_speed(model, args.data, crop, args.batch, args.steps, args.device, precision)
                    pixels = rate * args.batch * crop * crop / 1e6
                    print(f"  {model:<12}{crop:>6}{precision:>11}{threads:>9}{rate:>10.2f}{pixels:>10.3f}", flush=True)
    print(f"coding: quality 4, {PAPER_CROP[1]} x {PAPER_CROP[0]} crop, {args.frames} validation frames")
    for model in args.models:
        encode_s, decode_s, bpp = coding_times(model, args.data, args.frames, args.device)
        print(f"  {model:<12} encode {encode_s * 1000:7.0f} ms  decode {decode_s * 1000:7.0f} ms  ({bpp:.3f} bpp)")


if __name__ == "__main__":
    main()
