"""``pcic eval`` and ``pcic report``: learned models and classic anchors on the same frames and crop.

Every number comes from real bitstreams: a model's rate is the size of the ``pcic`` container that
``Codec.encode`` writes (header included), an anchor's the size of the file its library writes. Per
image: bytes, bpp, PSNR (RGB, peak 255), MS-SSIM, encode and decode seconds. Per codec and quality
the mean over the frames makes one RD point; BD-rate and BD-PSNR of every curve against chosen
references use ``pcic_ros.experiments.metrics`` (the bjontegaard package, Akima interpolation). Results go to a
JSON file (everything), a CSV file (one row per image and setting) and an RD plot (PNG); ``pcic
report`` rebuilds the table and the figure from the JSON alone.

The crop is the paper's by default: the bottom 256 rows (those the LiDAR covers) and the middle 1242
columns of each frame. Models see it as a cropped camera (``crop_calibration``), so the scan is
projected into exactly the pixels that are coded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import re
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import stored_quality
from pcic_ros.codec.zoo import MODELS, QUALITY_LAMBDAS, checkpoint_path
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.anchors import ANCHORS, available_anchors, get_anchor
from pcic_ros.experiments.datasets import DataError, Frame, discover_frames
from pcic_ros.experiments.metrics import BD_INTERPOLATION, MS_SSIM_MIN_SIDE, bd_psnr, bd_rate, ms_ssim, psnr
from pcic_ros.experiments.protocol import (
    DEFAULT_VALIDATION_SEQUENCES,
    PAPER_CROP,
    crop_box,
    crop_calibration,
    split_by_sequence,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

__all__ = [
    "pick_evenly",
    "evaluate",
    "rd_curves",
    "bd_table",
    "write_results",
    "merge_results",
    "plot_rd",
    "render_tables",
    "update_markdown",
    "add_parser",
]

#: The block of a Markdown file that ``pcic report --markdown`` rewrites.
TABLE_START = "<!-- rd-table:start (pcic report writes this block) -->"
TABLE_END = "<!-- rd-table:end -->"

_CSV_FIELDS = (
    "codec",
    "kind",
    "quality",
    "frame",
    "width",
    "height",
    "bytes",
    "bpp",
    "psnr",
    "ms_ssim",
    "encode_s",
    "decode_s",
)


def pick_evenly(frames: Sequence[Frame], count: int) -> list[Frame]:
    """``count`` frames spread evenly over ``frames`` (all of them when ``count`` is 0 or too large)."""
    if count <= 0 or count >= len(frames):
        return list(frames)
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _measure(image: np.ndarray, decoded: np.ndarray) -> tuple[float | None, float | None]:
    quality = ms_ssim(image, decoded) if min(image.shape[:2]) >= MS_SSIM_MIN_SIDE else None
    return _finite_or_none(psnr(image, decoded)), quality


def evaluate(
    frames: Sequence[Frame],
    models: Sequence[str],
    qualities: Sequence[float] = tuple(QUALITY_LAMBDAS),
    anchors: Sequence[str] = (),
    crop: tuple[int, int] | None = PAPER_CROP,
    checkpoint_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    efforts: Sequence[int] = (0,),
) -> dict:
    """Code every frame with every model and quality and every anchor setting; returns the results
    dictionary that ``write_results`` stores (``meta``, ``records``, ``curves``; no BD table yet).

    Each model codes at every refinement effort of ``efforts`` (``Codec.encode``); a curve at effort N
    above 0 is named ``<model>+effort<N>``.

    ``checkpoint_dir`` holds ``<model>-q<quality>.pt`` files (``<model>.pt`` for a variable-rate model);
    by default each model uses the registry's shipped checkpoint, or its seeded untrained weights where
    none is shipped (``meta.weights`` says).
    """
    codecs: dict[tuple[str, float], Codec] = {}
    weights: dict[str, str] = {}
    for name in models:
        # As a container stores it: 4.0 given on the command line names the checkpoint of q4.
        for quality in map(stored_quality, qualities):
            path = checkpoint_path(name, quality)
            if checkpoint_dir:
                path = Path(checkpoint_dir) / path.name
            if checkpoint_dir and not path.is_file():
                raise FileNotFoundError(f"no checkpoint {path}")
            codecs[(name, quality)] = Codec(
                name, quality, device=device, checkpoint=str(path) if checkpoint_dir else None
            )
            weights[f"{name}-q{quality:g}"] = str(path) if path.is_file() else "untrained (seeded initialisation)"
    anchor_codecs = [get_anchor(name) for name in anchors]

    records: list[dict] = []
    settings = len(codecs) * len(efforts) + sum(len(anchor.qualities) for anchor in anchor_codecs)
    bar = tqdm(total=len(frames) * settings, desc="eval", unit="code", disable=not progress)
    for frame in frames:
        full = frame.image()
        top, left, height, width = crop_box(*full.shape[:2], crop)
        image = np.ascontiguousarray(full[top : top + height, left : left + width])
        scan, calibration = frame.scan(), crop_calibration(frame.calibration(), top, left)
        base = {"frame": f"{frame.sequence}/{frame.name}", "width": width, "height": height}
        for (name, quality), codec in codecs.items():
            for effort in efforts:
                start = time.perf_counter()
                data = codec.encode(image, scan, calibration, effort=effort)
                encoded = time.perf_counter()
                decoded = codec.decode(data, scan, calibration)
                decode_s = time.perf_counter() - encoded
                label = f"{name}+effort{effort}" if effort else name
                records.append(_record(base, label, "model", quality, data, image, decoded, encoded - start, decode_s))
                bar.update(1)
        for anchor in anchor_codecs:
            for quality in anchor.qualities:
                start = time.perf_counter()
                data = anchor.encode(image, quality)
                encoded = time.perf_counter()
                decoded = anchor.decode(data)
                decode_s = time.perf_counter() - encoded
                records.append(
                    _record(base, anchor.name, "anchor", quality, data, image, decoded, encoded - start, decode_s)
                )
                bar.update(1)
    bar.close()
    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "frames": [f"{frame.sequence}/{frame.name}" for frame in frames],
        "crop": list(crop) if crop else None,
        "crop_rule": "bottom rows, middle columns, clipped to the image" if crop else "whole frame",
        "device": device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "weights": weights,
        "anchors": {anchor.name: {"library": anchor.library, "chroma": anchor.chroma} for anchor in anchor_codecs},
        "bd_interpolation": BD_INTERPOLATION,
    }
    return {"meta": meta, "records": records, "curves": rd_curves(records)}


def _record(
    base: dict,
    codec: str,
    kind: str,
    quality: float,
    data: bytes,
    image: np.ndarray,
    decoded: np.ndarray,
    encode_s: float,
    decode_s: float,
) -> dict:
    quality_psnr, quality_ms_ssim = _measure(image, decoded)
    return {
        "codec": codec,
        "kind": kind,
        "quality": quality,
        **base,
        "bytes": len(data),
        "bpp": 8.0 * len(data) / (base["width"] * base["height"]),
        "psnr": quality_psnr,
        "ms_ssim": quality_ms_ssim,
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def rd_curves(records: Sequence[dict]) -> dict[str, dict]:
    """Per codec: its kind and one point per quality (means over the frames), in order of rate."""
    grouped: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    kinds: dict[str, str] = {}
    for record in records:
        grouped[record["codec"]][record["quality"]].append(record)
        kinds[record["codec"]] = record["kind"]
    curves = {}
    for codec, by_quality in grouped.items():
        points = [
            {
                "quality": quality,
                "frames": len(rows),
                **{
                    key: _mean([row[key] for row in rows]) for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")
                },
            }
            for quality, rows in by_quality.items()
        ]
        curves[codec] = {"kind": kinds[codec], "points": sorted(points, key=lambda p: p["bpp"])}
    return curves


def bd_table(curves: dict[str, dict], references: Sequence[str]) -> dict[str, dict[str, dict]]:
    """BD-rate (%) and BD-PSNR (dB) of every curve against each reference curve present; a pair the
    measures cannot be computed for (too few points, PSNR not rising, no overlap) carries a note."""
    table: dict[str, dict[str, dict]] = {}
    for reference in references:
        if reference not in curves:
            continue
        anchor = [p for p in curves[reference]["points"] if p["psnr"] is not None]
        table[reference] = {}
        for codec, curve in curves.items():
            if codec == reference:
                continue
            test = [p for p in curve["points"] if p["psnr"] is not None]
            entry: dict[str, float | str | None] = {"bd_rate": None, "bd_psnr": None}
            args = ([p["bpp"] for p in anchor], [p["psnr"] for p in anchor])
            args += ([p["bpp"] for p in test], [p["psnr"] for p in test])
            # The bjontegaard package warns when the curves overlap little; the table keeps the warning.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    entry["bd_rate"] = bd_rate(*args)
                    entry["bd_psnr"] = bd_psnr(*args)
                except ValueError as error:
                    entry["note"] = str(error)
            overlaps = [m.group(1) for w in caught if (m := re.search(r"overlap: '([\d.]+)'", str(w.message)))]
            if overlaps and "note" not in entry:
                entry["note"] = f"curves overlap only {' / '.join(overlaps)} % (the bjontegaard package asks 75 %)"
            table[reference][codec] = entry
    return table


def merge_results(base: dict, *updates: dict) -> dict:
    """``base`` with every codec that an update measured replaced by the update's records (e.g. models
    re-evaluated after new checkpoints, without re-running the anchors). The frames and the crop must
    be the same, or the curves would mix other images."""
    merged = {"meta": dict(base["meta"]), "records": list(base["records"])}
    for update in updates:
        for key in ("frames", "crop"):
            if update["meta"].get(key) != base["meta"].get(key):
                raise InvalidArgumentError(f"cannot merge results of other {key}: {update['meta'].get(key)}")
        replaced = {record["codec"] for record in update["records"]}
        merged["records"] = [r for r in merged["records"] if r["codec"] not in replaced] + update["records"]
        merged["meta"]["weights"] = {**merged["meta"].get("weights", {}), **update["meta"].get("weights", {})}
        merged["meta"].setdefault("merged", []).append(
            {"codecs": sorted(replaced), "created": update["meta"].get("created"), "torch": update["meta"].get("torch")}
        )
    merged["curves"] = rd_curves(merged["records"])
    return merged


def write_results(results: dict, output: str | Path) -> tuple[Path, Path]:
    """``results.json`` (everything) and ``results.csv`` (one row per image and setting) in ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output / "results.json", output / "results.csv"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        writer.writerows({key: record[key] for key in _CSV_FIELDS} for record in results["records"])
    return json_path, csv_path


def plot_rd(results: dict, path: str | Path, title: str | None = None) -> Path:
    """Every curve on one PSNR-over-bpp figure: models solid, anchors dashed."""
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    for codec, curve in results["curves"].items():
        points = [p for p in curve["points"] if p["psnr"] is not None]
        style = "-o" if curve["kind"] == "model" else "--."
        axes.plot([p["bpp"] for p in points], [p["psnr"] for p in points], style, label=codec.upper(), linewidth=1.5)
    meta = results["meta"]
    crop = f"{meta['crop'][1]} x {meta['crop'][0]} crop" if meta.get("crop") else "whole frames"
    axes.set_title(title or f"RD on {len(meta['frames'])} frames ({crop})")
    axes.set_xlabel("bits per pixel")
    axes.set_ylabel("PSNR (dB, RGB)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_tables(results: dict) -> str:
    """Markdown: the RD points of every codec, then the BD table against each reference."""
    lines = [
        "| codec | quality | bpp | PSNR (dB) | MS-SSIM | encode (ms) | decode (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for codec, curve in results["curves"].items():
        for p in curve["points"]:
            lines.append(
                f"| {codec.upper()} | {p['quality']} | {p['bpp']:.4f} | {_cell(p['psnr'], 2)} | "
                f"{_cell(p['ms_ssim'], 4)} | {p['encode_s'] * 1000:.0f} | {p['decode_s'] * 1000:.0f} |"
            )
    for reference, rows in results.get("bd", {}).items():
        lines += [
            "",
            f"BD against {reference.upper()} ({results['meta']['bd_interpolation']} interpolation; "
            "negative BD-rate = fewer bits for the same PSNR):",
            "",
            "| codec | BD-rate (%) | BD-PSNR (dB) | note |",
            "|---|---:|---:|---|",
        ]
        for codec, entry in rows.items():
            note = entry.get("note", "")
            lines.append(f"| {codec.upper()} | {_cell(entry['bd_rate'], 2)} | {_cell(entry['bd_psnr'], 2)} | {note} |")
    return "\n".join(lines) + "\n"


def update_markdown(path: str | Path, tables: str) -> None:
    """Replace the block between TABLE_START and TABLE_END in a Markdown file with ``tables``."""
    path = Path(path)
    text = path.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise InvalidArgumentError(f"{path} has no '{TABLE_START}' ... '{TABLE_END}' block")
    path.write_text(text[: start + len(TABLE_START)] + "\n" + tables + text[end:])


def parse_crop(value: str) -> tuple[int, int] | None:
    """A --crop argument: 'paper' (PAPER_CROP), 'full' (None) or WIDTHxHEIGHT, as (height, width)."""
    if value == "paper":
        return PAPER_CROP
    if value == "full":
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop must be 'paper', 'full' or WIDTHxHEIGHT, got '{value}'") from None
    return height, width


def _run_eval(args: argparse.Namespace) -> int:
    split = split_by_sequence(discover_frames(args.data), args.validation_sequences or DEFAULT_VALIDATION_SEQUENCES)
    frames = pick_evenly(split.part(args.split), args.frames)
    if not frames:
        raise DataError(f"no frames in the {args.split} split of {args.data}")
    anchors = available_anchors() if args.anchor is None else args.anchor
    for name in sorted(set(ANCHORS) - set(anchors)) if args.anchor is None else ():
        print(f"note: the {name} anchor is not available here ({ANCHORS[name].install_hint})")
    device = args.device or "cpu"
    results = evaluate(
        frames, args.model, args.quality, anchors, args.crop, args.checkpoint_dir, device, efforts=args.effort
    )
    results["meta"].update({"data": str(args.data), "split": args.split})
    results["bd"] = bd_table(results["curves"], args.bd_anchor)
    json_path, csv_path = write_results(results, args.output)
    figure = plot_rd(results, Path(args.output) / "rd.png")
    print(render_tables(results))
    print(f"{json_path}, {csv_path}, {figure}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    results = json.loads(Path(args.results).read_text())
    references = args.bd_anchor or list(results.get("bd", {}))
    if args.merge:
        results = merge_results(results, *(json.loads(Path(path).read_text()) for path in args.merge))
    # BD figures are recomputed from the stored curves, so the report follows the current method.
    results["bd"] = bd_table(results["curves"], references)
    if args.merge:
        json_path, csv_path = write_results(results, Path(args.results).parent)
        print(f"merged into {json_path} and {csv_path}")
    tables = render_tables(results)
    print(tables)
    if args.figure:
        print(f"figure: {plot_rd(results, args.figure)}")
    if args.markdown:
        update_markdown(args.markdown, tables)
        print(f"table: {args.markdown}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval")
    parser.add_argument("--data", required=True, help="KITTI data folder")
    parser.add_argument("--model", nargs="+", default=["hyper-pc", "hyper"], choices=sorted(MODELS))
    parser.add_argument(
        "--quality",
        nargs="+",
        type=float,
        default=sorted(QUALITY_LAMBDAS),
        help="qualities of every model: 1..4 for single-rate ones, any of 0..5 for variable-rate ones",
    )
    parser.add_argument(
        "--anchor", nargs="*", choices=list(ANCHORS), help="classic codecs to sweep (default: every available one)"
    )
    parser.add_argument(
        "--bd-anchor", nargs="+", default=["jpeg", "hyper"], help="references for BD-rate (default: jpeg hyper)"
    )
    parser.add_argument("--split", default="validation", choices=["train", "validation", "all"])
    parser.add_argument("--validation-sequences", nargs="+", help="sequence patterns of the validation split")
    parser.add_argument("--frames", type=int, default=0, help="evaluate this many frames, spread evenly (0: all)")
    parser.add_argument(
        "--crop", type=parse_crop, default=PAPER_CROP, help="'paper' (1242x256, default), 'full' or WIDTHxHEIGHT"
    )
    parser.add_argument(
        "--checkpoint-dir", help="folder of <model>-q<quality>.pt and <model>.pt (default: the shipped ones)"
    )
    parser.add_argument(
        "--effort",
        nargs="+",
        type=int,
        default=[0],
        help="refinement efforts of every model (pcic encode --effort; HYPER family), each its own curve (default: 0)",
    )
    parser.add_argument("--device", default="cpu", help="device of the learned models (default: cpu)")
    parser.add_argument("--output", default="out/eval", help="folder for results.json, results.csv and rd.png")
    parser.set_defaults(func=_run_eval)

    report = subparsers.add_parser("report")
    report.add_argument("results", help="results.json of pcic eval")
    report.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS",
        help="results.json files whose codecs replace those in RESULTS (same frames and crop); RESULTS is rewritten",
    )
    report.add_argument("--figure", help="write the RD plot here (PNG)")
    report.add_argument("--markdown", help=f"rewrite the {TABLE_START} block of this Markdown file")
    report.add_argument("--bd-anchor", nargs="+", help="references for BD-rate (default: those of the eval)")
    report.set_defaults(func=_run_report)
