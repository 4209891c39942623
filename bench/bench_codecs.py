"""Coding time, peak memory, point-cloud branch time and parameters of every model family, CompressAI's
baselines and the classic anchors, measured in one run on the same KITTI frames (the paper's Table V and
more).

For each frame size (KITTI 1242 x 375; Waymo's 1920 x 1280 front camera, made from KITTI frames by
resizing the image and scaling the calibration, since there is no Waymo data here) and each device (CPU,
and CUDA when present) one row per codec: parameters (all, and the point-cloud branch PIP + MCM), rate
and PSNR, median encode and decode wall time per frame, the median time of the branch (its
floating-point forward as in training, and as the decoder runs it, in fixed point), peak memory of one
encode and one decode, and encode and decode time relative to JPEG on the CPU. The scan's projection
(``project_points`` + ``equalize_depth``, which ``Codec`` runs on both sides) is timed on its own, and
the ``ros`` part runs bench_ros_pipeline.py (HYPER-PC through the encoder and decoder nodes). Models
code real bitstreams through ``pcic_ros.codec.api.Codec``. Nothing is asserted; the numbers depend on the
machine and its load.

    .venv/bin/python bench/bench_codecs.py [--frames 2] [--repeats 2] [--sizes kitti,waymo] [--threads N]
        [--devices cpu,cuda] [--parts models,compressai,anchors,projection,ros] [--models hyper,hyper-pc,...]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from bench_anchors import DEFAULT_DATA_DIR, time_ms
from compressai.models import CompressionModel, Elic2022Official
from compressai.zoo import bmshj2018_hyperprior
from PIL import Image
from tqdm import tqdm

from pcic_ros.codec.api import Codec, depth_input
from pcic_ros.codec.frames import image_tensor, padded_size, tensor_image
from pcic_ros.codec.projection import Calibration, equalize_depth, project_points
from pcic_ros.codec.zoo import QUALITY_LAMBDAS, checkpoint_path, model_names
from pcic_ros.experiments.anchors import ANCHORS, available_anchors
from pcic_ros.experiments.datasets import Frame, discover_frames
from pcic_ros.experiments.metrics import bits_per_pixel, psnr
from pcic_ros.ros.memory import return_freed_memory

#: Frame sizes by name, as (height, width).
SIZES: dict[str, tuple[int, int]] = {"kitti": (375, 1242), "waymo": (1280, 1920)}
PARTS = ("models", "compressai", "anchors", "projection", "ros")
#: Every registered model but the paper's ablations of the branch (``<family>-pc-<ablation>``).
DEFAULT_MODELS = tuple(name for name in model_names() if "-pc-" not in name)
DEFAULT_ANCHORS = ("jpeg", "webp", "hevc")
COMPRESSAI_BASELINES = ("hyper", "elic")
#: The lambdas CompressAI's zoo trained bmshj2018-hyperprior with (MSE), by quality. Our QUALITY_LAMBDAS
#: use the same loss (RateDistortionLoss), so the nearest lambda is the comparable quality.
COMPRESSAI_MSE_LAMBDAS: dict[int, float] = dict(
    enumerate((0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800), start=1)
)
#: CompressAI's models need image sides that are multiples of this, as ours do.
COMPRESSAI_FACTOR = 64
MIB = 2**20


@dataclass(frozen=True)
class BenchFrame:
    """One KITTI frame brought to the benchmark's size."""

    name: str
    image: np.ndarray
    scan: np.ndarray
    calibration: Calibration


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """'kitti', 'waymo' or WIDTHxHEIGHT -> (label, (height, width))."""
    if text in SIZES:
        return text, SIZES[text]
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"size must be one of {', '.join(SIZES)} or WIDTHxHEIGHT, got {text!r}")
    return text, (int(height), int(width))


def comma_list(choices: Sequence[str] | None = None) -> Callable[[str], list[str]]:
    """An argparse type for 'a,b,c', checked against choices when given."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if choices is not None and item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return items

    return parse


def pick_frames(data_dir: Path, count: int) -> list[Frame]:
    """The first `count` frames below data_dir, those already at KITTI's 1242 x 375 first (fewer resized)."""
    frames = discover_frames(data_dir)

    def native_size(frame: Frame) -> tuple[int, int]:
        with Image.open(frame.image_path) as image:
            return image.height, image.width

    return sorted(frames, key=lambda frame: native_size(frame) != SIZES["kitti"])[:count]


def at_size(frame: Frame, height: int, width: int) -> BenchFrame:
    """The frame resized to height x width, with the projection matrix scaled to match so that the scan
    lands where it did in the original image."""
    image, calibration = frame.image(), frame.calibration()
    if image.shape[:2] != (height, width):
        scale = np.array([[width / image.shape[1]], [height / image.shape[0]], [1.0]])
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
        calibration = replace(calibration, projection=calibration.projection * scale)
    return BenchFrame(frame.name, image, frame.scan(), calibration)


def parameter_count(module: torch.nn.Module | None) -> int | None:
    return sum(p.numel() for p in module.parameters()) if module is not None else None


def synchronized(function: Callable[..., object], device: torch.device) -> Callable[..., object]:
    """``function`` followed by waiting for the GPU, so that wall time covers its kernels."""
    if device.type != "cuda":
        return function

    def call(*args: object) -> object:
        result = function(*args)
        torch.cuda.synchronize(device)
        return result

    return call


def _read_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def peak_memory(device: torch.device, function: Callable[..., object], *args: object) -> tuple[object, float]:
    """What ``function(*args)`` returns, and the peak memory it added in MiB: CUDA memory allocated by
    torch on a GPU; on the CPU the growth of the process's peak resident set (Linux; NaN elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = function(*args)
        torch.cuda.synchronize(device)
        return result, (torch.cuda.max_memory_allocated(device) - base) / MIB
    gc.collect()
    return_freed_memory()
    try:
        # Writing 5 resets the kernel's high-water mark (VmHWM) to the current resident set.
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        base = _read_status_kib("VmRSS")
    except OSError:
        return function(*args), math.nan
    result = function(*args)
    return result, (_read_status_kib("VmHWM") - base) * 1024 / MIB


class ZooCodec:
    """A registered pcic_ros model through ``Codec``: real container bytes, projection on both sides."""

    def __init__(self, name: str, quality: int, device: torch.device) -> None:
        self.codec = Codec(name, quality, device=str(device))
        self.device = device
        self.label = name
        weights = "shipped" if checkpoint_path(name, quality).is_file() else "untrained"
        self.setting = f"q{quality} {weights}"
        self.params = parameter_count(self.codec.model)
        self.branch_params = parameter_count(self.codec.model.branch)

    def encode(self, frame: BenchFrame) -> bytes:
        return self.codec.encode(frame.image, frame.scan, frame.calibration)

    def decode(self, data: bytes, frame: BenchFrame) -> np.ndarray:
        return self.codec.decode(data, frame.scan, frame.calibration)

    @staticmethod
    def byte_count(data: bytes) -> int:
        return len(data)

    def branch_input(self, frame: BenchFrame) -> torch.Tensor:
        """c_proj as ``Codec`` builds it: the equalised depth over 255, zero-padded to the model's factor."""
        model = self.codec.model
        height, width = frame.image.shape[:2]
        equalized = depth_input(frame.scan, frame.calibration, height, width, model.point_cloud.depth_levels)
        factor = model.downsampling_factor
        c_proj = torch.zeros((1, 1, height + -height % factor, width + -width % factor))
        c_proj[0, 0, :height, :width] = torch.from_numpy(equalized).float() / 255.0
        return c_proj.to(self.device)

    @torch.inference_mode()
    def run_branch(self, c_proj: torch.Tensor) -> None:
        """The PIP + MCM forward with every output (c_pre, c1..c3, c_hyper) in floating point, as in
        training (the paper's PC-time). Only in training mode: when coding the branch computes in fixed
        point (``pcic_ros.codec.fixed_point``), which ``run_decoder_branch`` times."""
        branch = self.codec.model.branch
        branch.train()
        try:
            branch(c_proj)
        finally:
            branch.eval()

    @torch.inference_mode()
    def run_decoder_branch(self, c_proj: torch.Tensor) -> None:
        """The branch as the decoder runs it while decoding (the outputs it needs, its arithmetic)."""
        self.codec.model.decoder_features(c_proj)


class CompressAIModel:
    """One of CompressAI's own models, coding the image alone (it has no point-cloud input)."""

    branch_params = None

    def __init__(self, label: str, model: CompressionModel, setting: str, device: torch.device) -> None:
        model.update(force=True)
        self.model = model.eval().to(device)
        self.device = device
        self.label = label
        self.setting = setting
        self.params = parameter_count(model)

    @torch.inference_mode()
    def encode(self, frame: BenchFrame) -> dict:
        padded = padded_size(COMPRESSAI_FACTOR, *frame.image.shape[:2])
        return self.model.compress(image_tensor(frame.image, self.device, padded))

    @torch.inference_mode()
    def decode(self, coded: dict, frame: BenchFrame) -> np.ndarray:
        x_hat = self.model.decompress(coded["strings"], coded["shape"])["x_hat"]
        return tensor_image(x_hat, *frame.image.shape[:2])

    @staticmethod
    def byte_count(coded: dict) -> int:
        return sum(len(string) for batch in coded["strings"] for string in batch)


class AnchorCodec:
    """A classic codec of ``pcic_ros.experiments.anchors`` at the mid-sweep quality ``bench_anchors`` uses."""

    params = branch_params = None
    device = torch.device("cpu")

    def __init__(self, name: str) -> None:
        self.anchor = ANCHORS[name]
        self.quality = self.anchor.qualities[len(self.anchor.qualities) // 2]
        self.label = name
        self.setting = f"q{self.quality}"

    def encode(self, frame: BenchFrame) -> bytes:
        return self.anchor.encode(frame.image, self.quality)

    def decode(self, data: bytes, frame: BenchFrame) -> np.ndarray:
        return self.anchor.decode(data)

    @staticmethod
    def byte_count(data: bytes) -> int:
        return len(data)


Subject = ZooCodec | CompressAIModel | AnchorCodec


def compressai_quality(quality: int) -> int:
    """The bmshj2018-hyperprior quality whose training lambda is nearest (in ratio) to ours at `quality`."""
    ours = QUALITY_LAMBDAS[quality]
    return min(COMPRESSAI_MSE_LAMBDAS, key=lambda q: abs(math.log(COMPRESSAI_MSE_LAMBDAS[q] / ours)))


def compressai_baseline(name: str, quality: int, device: torch.device) -> CompressAIModel:
    """CompressAI's HYPER at the comparable quality, or its official-size ELIC; both untrained (no
    download), which changes the bitstream's content but not the network's work."""
    if name == "hyper":
        cai_quality = compressai_quality(quality)
        model = bmshj2018_hyperprior(quality=cai_quality, pretrained=False)
        return CompressAIModel("compressai-hyper", model, f"q{cai_quality} untrained", device)
    return CompressAIModel("compressai-elic", Elic2022Official(), "N192 untrained", device)


@dataclass
class Row:
    """One codec on one device at one frame size; times are medians in ms, memory peaks in MiB."""

    codec: str
    device: str
    setting: str
    params: int | None
    branch_params: int | None
    bpp: float
    psnr_db: float
    encode_ms: float
    decode_ms: float
    branch_ms: float | None
    decoder_branch_ms: float | None
    encode_mib: float
    decode_mib: float
    ratios: dict[str, float] = field(default_factory=dict)


def median_ms(function: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], repeats: int) -> float:
    """Median wall time of `repeats` calls on each input, after one untimed call."""
    function(inputs[0])
    return statistics.median(time_ms(function, x)[0] for x in inputs for _ in range(repeats))


def measure(subject: Subject, frames: list[BenchFrame], repeats: int) -> Row:
    """One untimed encode and decode of the first frame (paying one-time costs; its peak memory is the
    one reported), then `repeats` timed runs of each frame."""
    device = subject.device
    coded, encode_mib = peak_memory(device, subject.encode, frames[0])
    _, decode_mib = peak_memory(device, subject.decode, coded, frames[0])
    encode = synchronized(subject.encode, device)
    decode = synchronized(subject.decode, device)
    encode_ms, decode_ms, rates, psnrs = [], [], [], []
    for frame in frames:
        for _ in range(repeats):
            elapsed, coded = time_ms(encode, frame)
            encode_ms.append(elapsed)
            elapsed, decoded = time_ms(decode, coded, frame)
            decode_ms.append(elapsed)
        rates.append(bits_per_pixel(subject.byte_count(coded), *frame.image.shape[:2]))
        psnrs.append(psnr(frame.image, decoded))
    branch_ms = decoder_branch_ms = None
    if isinstance(subject, ZooCodec) and subject.codec.model.branch is not None:
        inputs = [subject.branch_input(frame) for frame in frames]
        branch_ms = median_ms(synchronized(subject.run_branch, device), inputs, repeats)
        decoder_branch_ms = median_ms(synchronized(subject.run_decoder_branch, device), inputs, repeats)
    return Row(
        subject.label,
        device.type,
        subject.setting,
        subject.params,
        subject.branch_params,
        statistics.mean(rates),
        statistics.mean(psnrs),
        statistics.median(encode_ms),
        statistics.median(decode_ms),
        branch_ms,
        decoder_branch_ms,
        encode_mib,
        decode_mib,
    )


def projection_times(frames: list[BenchFrame], repeats: int) -> tuple[float, float]:
    """(median ms of project_points + equalize_depth, mean share of pixels a point lands on)."""
    times, occupancy = [], []
    for frame in frames:
        height, width = frame.image.shape[:2]

        def project(frame: BenchFrame = frame, height: int = height, width: int = width) -> np.ndarray:
            return equalize_depth(project_points(frame.scan, frame.calibration, height, width))

        equalized = project()
        times.extend(time_ms(project)[0] for _ in range(repeats))
        occupancy.append(float((equalized > 0).mean()))
    return statistics.median(times), statistics.mean(occupancy)


def _millions(count: int | None) -> str:
    return f"{count / 1e6:.2f}" if count is not None else "-"


def _number(value: float | None, digits: int) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "-"


#: (title, width, cell of a row) of the printed table.
COLUMNS: list[tuple[str, int, Callable[[Row], str]]] = [
    ("codec", 17, lambda r: r.codec),
    ("device", 7, lambda r: r.device),
    ("setting", 13, lambda r: r.setting),
    ("params M", 9, lambda r: _millions(r.params)),
    ("PC M", 6, lambda r: _millions(r.branch_params)),
    ("bpp", 7, lambda r: _number(r.bpp, 3)),
    ("PSNR", 7, lambda r: _number(r.psnr_db, 2)),
    ("enc ms", 9, lambda r: _number(r.encode_ms, 1)),
    ("dec ms", 9, lambda r: _number(r.decode_ms, 1)),
    ("PC ms", 8, lambda r: _number(r.branch_ms, 1)),
    ("PC dec ms", 10, lambda r: _number(r.decoder_branch_ms, 1)),
    ("enc MiB", 8, lambda r: _number(r.encode_mib, 0)),
    ("dec MiB", 8, lambda r: _number(r.decode_mib, 0)),
    ("enc/JPEG", 9, lambda r: _number(r.ratios.get("encode"), 2)),
    ("dec/JPEG", 9, lambda r: _number(r.ratios.get("decode"), 2)),
]


def _table_line(cells: Sequence[str]) -> str:
    """The first three columns (names) left-aligned, the figures right-aligned."""
    return "".join(
        f"{cell:<{width}}" if index < 3 else f"{cell:>{width}}"
        for index, (cell, (_, width, _)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def format_table(rows: list[Row]) -> str:
    lines = [_table_line([title for title, _, _ in COLUMNS])]
    lines += [_table_line([cell(row) for _, _, cell in COLUMNS]) for row in rows]
    return "\n".join(lines)


def add_ratios(rows: list[Row]) -> None:
    """Every row's encode and decode time over JPEG's on the CPU, when JPEG was measured."""
    jpeg = next((row for row in rows if row.codec == "jpeg"), None)
    if jpeg is None:
        return
    for row in rows:
        row.ratios = {"encode": row.encode_ms / jpeg.encode_ms, "decode": row.decode_ms / jpeg.decode_ms}


def point_cloud_overhead(rows: list[Row]) -> list[str]:
    """For each -pc model whose base model was measured on the same device: what the branch costs."""
    by_key = {(row.codec, row.device): row for row in rows}
    lines = []
    for row in rows:
        base = by_key.get((row.codec.removesuffix("-pc"), row.device))
        if not row.codec.endswith("-pc") or base is None:
            continue
        lines.append(
            f"  {row.codec} vs {base.codec} on {row.device}: params x{row.params / base.params:.2f}, "
            f"encode x{row.encode_ms / base.encode_ms:.2f}, decode x{row.decode_ms / base.decode_ms:.2f}, "
            f"branch as the decoder runs it {row.decoder_branch_ms / row.decode_ms:.0%} of decode"
        )
    return lines


def size_description(label: str, height: int, width: int, names: list[str]) -> str:
    if label == "kitti":
        return f"KITTI {width} x {height}: frames {', '.join(names)} (resized to this size when not already at it)"
    origin = f"KITTI frames {', '.join(names)} resized to this size, calibration scaled to match"
    if label == "waymo":
        return f"Waymo-size {width} x {height}: {origin} (there is no Waymo data here)"
    return f"{width} x {height}: {origin}"


def machine_description(devices: list[torch.device]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    text = (
        f"CPU {cpu}, {os.cpu_count()} cores (load average {load}), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    if any(device.type == "cuda" for device in devices):
        return text + f"; GPU {torch.cuda.get_device_name()}"
    return text + "; CUDA not available: CPU only"


def subjects_for(args: argparse.Namespace, device: torch.device) -> list[Callable[[], Subject]]:
    """Builders of what is measured on `device`, built one at a time so that only one model is in memory."""
    builders: list[Callable[[], Subject]] = []
    if "models" in args.parts:
        builders += [lambda name=name: ZooCodec(name, args.quality, device) for name in args.models]
    if "compressai" in args.parts:
        builders += [lambda name=name: compressai_baseline(name, args.quality, device) for name in args.compressai]
    if "anchors" in args.parts and device.type == "cpu":
        builders += [lambda name=name: AnchorCodec(name) for name in args.anchors]
    return builders


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="holds kitti_object/ (the coded frames) and kitti_raw/ (the ROS part's drive)",
    )
    parser.add_argument("--frames", type=int, default=2, help="KITTI frames coded at each size")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per frame, after one untimed run")
    parser.add_argument(
        "--sizes",
        type=comma_list(),
        default=["kitti", "waymo"],
        help=f"frame sizes: {', '.join(SIZES)} or WIDTHxHEIGHT",
    )
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--devices", type=comma_list(("cpu", "cuda")), default=default_devices.split(","))
    parser.add_argument("--parts", type=comma_list(PARTS), default=list(PARTS))
    parser.add_argument("--models", type=comma_list(model_names()), default=list(DEFAULT_MODELS))
    parser.add_argument("--compressai", type=comma_list(COMPRESSAI_BASELINES), default=list(COMPRESSAI_BASELINES))
    parser.add_argument("--anchors", type=comma_list(tuple(ANCHORS)), default=list(DEFAULT_ANCHORS))
    parser.add_argument("--quality", type=int, choices=sorted(QUALITY_LAMBDAS), default=4)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ros-frames", type=int, default=4, help="frames through the ROS nodes, per mode")
    args = parser.parse_args(argv)
    args.sizes = [parse_size(text) for text in args.sizes]
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: CUDA is not available here")
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(name) for name in args.devices]
    unavailable = [name for name in args.anchors if name not in available_anchors()]
    if unavailable:
        print(f"skipping unavailable anchors: {', '.join(unavailable)}")
        args.anchors = [name for name in args.anchors if name not in unavailable]
    print(machine_description(devices))
    print(
        f"times: median over {args.frames} frames x {args.repeats} runs, after one untimed run per codec, "
        "whose peak memory is reported"
    )
    sources = pick_frames(args.data_dir / "kitti_object", args.frames)
    for label, (height, width) in args.sizes:
        frames = [at_size(frame, height, width) for frame in sources]
        print()
        print(size_description(label, height, width, [frame.name for frame in frames]))
        if "projection" in args.parts:
            elapsed, occupancy = projection_times(frames, args.repeats)
            print(
                f"projection (project_points + equalize_depth, CPU, both sides): {elapsed:.1f} ms, "
                f"{occupancy:.2%} of pixels hold a point"
            )
        builders = [(device, build) for device in devices for build in subjects_for(args, device)]
        rows = []
        for device, build in tqdm(builders, desc=f"{label} codecs", file=sys.stderr, leave=False):
            rows.append(measure(build(), frames, args.repeats))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if rows:
            add_ratios(rows)
            print(format_table(rows))
            overhead = point_cloud_overhead(rows)
            if overhead:
                print("point-cloud branch overhead:")
                print("\n".join(overhead))
    if "ros" in args.parts:
        from bench_ros_pipeline import run_pipeline_bench

        print()
        device = args.devices[-1]
        run_pipeline_bench(
            args.data_dir / "kitti_raw", args.ros_frames, "hyper-pc", args.quality, device, threads=args.threads
        )


if __name__ == "__main__":
    main()
