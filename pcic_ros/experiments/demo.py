"""``pcic demo``: the README's main job on the shipped defaults.

Encodes and decodes a handful of real KITTI frames with HYPER-PC and HYPER (the variable-rate models,
``DEMO_MODELS``) through real bitstreams, codes the same frames with JPEG at no fewer bits than
HYPER-PC (the smallest of its sweep that large), prints bpp / PSNR per frame and writes side-by-side
images (original | HYPER-PC | HYPER | JPEG) to the output folder, then sweeps both models over the
paper's four qualities and JPEG over its range on the same frames, writes the RD plot (``rd.png``)
and says how long it all took.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pcic_ros.codec.api import Codec
from pcic_ros.codec.zoo import checkpoint_path
from pcic_ros.experiments.anchors import get_anchor
from pcic_ros.experiments.datasets import DataError, Frame, default_data_dir, discover_frames
from pcic_ros.experiments.evaluation import evaluate, plot_rd
from pcic_ros.experiments.metrics import psnr

__all__ = ["DEMO_MODELS", "add_parser", "pick_frames", "run_demo", "jpeg_at_least"]

#: What the demo compares, by the label it prints: the variable-rate models (any quality 0..5).
DEMO_MODELS = {"HYPER-PC": "hyper-pc-vr", "HYPER": "hyper-vr"}


def pick_frames(frames: list[Frame], count: int) -> list[Frame]:
    """``count`` frames spread over the sequences (one per sequence first), in a fixed order."""
    by_sequence: dict[str, list[Frame]] = {}
    for frame in frames:
        by_sequence.setdefault(frame.sequence, []).append(frame)
    picked: list[Frame] = []
    round_index = 0
    while len(picked) < count and any(round_index < len(v) for v in by_sequence.values()):
        for sequence_frames in by_sequence.values():
            step = max(1, len(sequence_frames) // max(1, count))
            index = round_index * step
            if index < len(sequence_frames) and len(picked) < count:
                picked.append(sequence_frames[index])
        round_index += 1
    return picked


def jpeg_at_least(image: np.ndarray, target_bytes: int) -> tuple[bytes, int]:
    """The smallest JPEG encoding of the JPEG anchor's sweep with at least ``target_bytes`` (the
    largest when none is that large): JPEG is shown with no fewer bits than the learned codec."""
    jpeg = get_anchor("jpeg")
    encodings = sorted(((jpeg.encode(image, quality), quality) for quality in jpeg.qualities), key=lambda e: len(e[0]))
    return next((e for e in encodings if len(e[0]) >= target_bytes), encodings[-1])


def run_demo(
    data_dir: Path, output_dir: Path, frame_count: int, quality: float, device: str | None, rd_plot: bool = True
) -> list[dict]:
    started = time.perf_counter()
    frames = pick_frames(discover_frames(data_dir), frame_count)
    output_dir.mkdir(parents=True, exist_ok=True)
    codecs = {label: Codec(name, quality, device=device) for label, name in DEMO_MODELS.items()}
    for name in DEMO_MODELS.values():
        if not checkpoint_path(name, quality).is_file():
            print(f"note: no shipped checkpoint for {name}: using untrained (seeded) weights")
    jpeg = get_anchor("jpeg")
    rows = []
    for frame in tqdm(frames, desc="demo frames", unit="frame"):
        image, scan, calibration = frame.image(), frame.scan(), frame.calibration()
        pixels = image.shape[0] * image.shape[1]
        row: dict = {"frame": f"{frame.sequence}/{frame.name}", "size": f"{image.shape[1]}x{image.shape[0]}"}
        panels = [image]
        for name, codec in codecs.items():
            data = codec.encode(image, scan, calibration)
            decoded = codec.decode(data, scan, calibration)
            row[name] = (8 * len(data) / pixels, psnr(image, decoded))
            panels.append(decoded)
        jpeg_data, _ = jpeg_at_least(image, math.ceil(row["HYPER-PC"][0] * pixels / 8))
        jpeg_decoded = jpeg.decode(jpeg_data)
        row["jpeg"] = (8 * len(jpeg_data) / pixels, psnr(image, jpeg_decoded))
        panels.append(jpeg_decoded)
        Image.fromarray(np.concatenate(panels, axis=0)).save(
            output_dir / f"{frame.sequence.replace('/', '_')}_{frame.name}.png"
        )
        rows.append(row)
    print(f"\n{'frame':<46} {'size':>9}   {'HYPER-PC bpp/PSNR':>18}   {'HYPER bpp/PSNR':>16}   {'JPEG bpp/PSNR':>15}")
    for row in rows:
        cells = "   ".join(f"{row[k][0]:7.3f} /{row[k][1]:6.2f} dB" for k in (*DEMO_MODELS, "jpeg"))
        print(f"{row['frame']:<46} {row['size']:>9}   {cells}")
    print(f"\nside-by-side images (original | HYPER-PC | HYPER | JPEG, top to bottom) in {output_dir}")
    if rd_plot:
        device_name = str(codecs["HYPER"].device)
        sweep = evaluate(frames, list(DEMO_MODELS.values()), anchors=["jpeg"], crop=None, device=device_name)
        print(f"RD plot of the same frames (qualities 1-4 and the JPEG sweep): {plot_rd(sweep, output_dir / 'rd.png')}")
    print(f"demo done in {time.perf_counter() - started:.0f} s")
    return rows


def _run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data) if args.data else default_data_dir()
    if not data_dir.is_dir():
        raise DataError(f"no data at {data_dir}: pass --data or set PCIC_DATA")
    run_demo(data_dir, Path(args.output), args.frames, args.quality, args.device, rd_plot=not args.no_rd)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo")
    parser.add_argument("--data", help="KITTI data folder (default: $PCIC_DATA or ../shared/data)")
    parser.add_argument("--output", default="out/demo", help="folder for the side-by-side images")
    parser.add_argument("--frames", type=int, default=4, help="number of frames")
    parser.add_argument("--quality", type=float, default=4, help="quality of both models, 0..5 (default: 4)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-rd", action="store_true", help="skip the quality sweep and its RD plot")
    parser.set_defaults(func=_run)
