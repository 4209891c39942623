"""What encoder-side refinement (``Codec.encode(effort=N)``) costs and buys, per effort, on real frames.

For each effort: the median encode time per frame (the refinement's steps and the coding of both
candidates included), the decode time (unchanged by design), and the mean bpp, PSNR and
bpp + lambda * MSE over the frames, at one quality. Frames are validation frames in the paper's crop
(the bottom 256 rows) unless ``--crop full``. Rate-distortion over the whole quality range, as BD-rate,
is ``pcic eval --effort``'s (docs/results.md); this bench is for the time. Nothing is asserted; the
numbers depend on the machine and its load.

    .venv/bin/python bench/bench_refinement.py [--model hyper-vr] [--quality 3] [--efforts 0,10,30]
        [--frames 2] [--threads 2] [--device cpu] [--crop paper|full]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_anchors import DEFAULT_DATA_DIR

from pcic_ros.codec.api import Codec
from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.experiments.evaluation import pick_evenly
from pcic_ros.experiments.metrics import psnr
from pcic_ros.experiments.protocol import PAPER_CROP, crop_box, crop_calibration, split_by_sequence
from pcic_ros.models.gain import quality_lambda


def _efforts(text: str) -> list[int]:
    try:
        efforts = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got '{text}'") from None
    if any(effort < 0 for effort in efforts):
        raise argparse.ArgumentTypeError("efforts must be 0 or more")
    return efforts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--model", default="hyper-vr")
    parser.add_argument("--quality", type=float, default=3.0)
    parser.add_argument("--efforts", type=_efforts, default=[0, 10, 30])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", choices=["paper", "full"], default="paper")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = pick_evenly(split_by_sequence(discover_frames(args.data_dir)).part("validation"), args.frames)
    codec = Codec(args.model, args.quality, device=args.device)
    lmbda = quality_lambda(codec.quality)
    inputs = []
    for frame in frames:
        image = frame.image()
        top, left, height, width = crop_box(*image.shape[:2], PAPER_CROP if args.crop == "paper" else None)
        crop = np.ascontiguousarray(image[top : top + height, left : left + width])
        inputs.append((crop, frame.scan(), crop_calibration(frame.calibration(), top, left)))
    print(
        f"{args.model} q{codec.quality:g} (lambda {lmbda:g}) on {len(inputs)} validation frame(s) of "
        f"{inputs[0][0].shape[1]} x {inputs[0][0].shape[0]}, {args.device}, {torch.get_num_threads()} threads"
    )
    print("| effort | encode ms | decode ms | bpp | PSNR dB | bpp + lambda MSE |")
    print("|---:|---:|---:|---:|---:|---:|")
    for effort in args.efforts:
        encode_ms, decode_ms, bpps, psnrs, losses = [], [], [], [], []
        for image, scan, calibration in inputs:
            started = time.perf_counter()
            data = codec.encode(image, scan, calibration, effort=effort)
            encoded = time.perf_counter()
            decoded = codec.decode(data, scan, calibration)
            decode_ms.append(1000 * (time.perf_counter() - encoded))
            encode_ms.append(1000 * (encoded - started))
            bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
            mse = float(np.mean((decoded.astype(np.float64) - image) ** 2))
            bpps.append(bpp)
            psnrs.append(psnr(image, decoded))
            losses.append(bpp + lmbda * mse)
        print(
            f"| {effort} | {statistics.median(encode_ms):.0f} | {statistics.median(decode_ms):.0f} | "
            f"{np.mean(bpps):.4f} | {np.mean(psnrs):.2f} | {np.mean(losses):.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
