"""The ``pcic`` command: encode, decode, info, and the subcommands other modules add.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit code). Only the module of the
command being run is imported (``SUBCOMMANDS``), and torch only by commands that code: ``pcic --help``
and ``pcic info`` answer at once instead of after loading every library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pcic_ros.codec.bitstream import read_header
from pcic_ros.codec.projection import Calibration, CalibrationError
from pcic_ros.errors import InvalidArgumentError, PcicError
from pcic_ros.experiments.datasets import load_image, load_scan

__all__ = ["main", "build_parser"]

#: Subcommands defined in other modules: name -> (module that adds it, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pcic_ros.experiments.demo", "encode/decode a few real frames with HYPER-PC, HYPER and JPEG"),
    "prepare": ("pcic_ros.experiments.training_data", "project every scan once and cache c_proj for training"),
    "train": ("pcic_ros.experiments.training", "train a model (eq. 14); under torchrun, distributed"),
    "eval": ("pcic_ros.experiments.evaluation", "rate-distortion of models and classic anchors on real frames"),
    "report": ("pcic_ros.experiments.evaluation", "RD table and figure from an eval's results.json"),
    "bag": ("pcic_ros.bags", "rosbag2 (MCAP) tools: from-kitti, play, record, decode"),
    "launch": ("pcic_ros.ros.launch_runner", "run a launch/*.launch.xml file without ros2 launch"),
    "study": ("pcic_ros.experiments.study", "the paper's experiments: train, evaluate, BD-rate tables"),
}
#: The commands defined here.
CORE_COMMANDS = {
    "encode": "compress an image (with its LiDAR scan) into a .pcic file",
    "decode": "decompress a .pcic file to an image",
    "info": "print the header of a .pcic file",
}


def _frame_inputs(args: argparse.Namespace) -> tuple[np.ndarray | None, Calibration | None]:
    if args.scan is None:
        return None, None
    if args.calib is None:
        raise CalibrationError("--scan needs --calib (KITTI raw date folder or KITTI object calib file)")
    return load_scan(args.scan), Calibration.from_kitti(args.calib)


#: What `pcic decode` accepts by default: a Full HD frame (about 3.4 GB and 2 minutes for HYPER-PC on
#: this 2-core CPU; a forged 4K header drove a decode past 9.4 GB).
DEFAULT_MAX_DECODE_PIXELS = 1920 * 1080


def _positive(value: str) -> int:
    """A count of 1 or more, for argparse."""
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, got '{value}'")
    return count


def _steps(value: str) -> int:
    """A count of 0 or more, for argparse."""
    try:
        steps = int(value)
    except ValueError:
        steps = -1
    if steps < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, 0 or more, got '{value}'")
    return steps


def _output_path(output: str, source: str) -> Path:
    """Where a command may write: not its own input, not a folder, not '-' (no stdout mode)."""
    path = Path(output)
    if output == "-":
        raise InvalidArgumentError("-o - (standard output) is not supported: give a file name")
    if path.is_dir():
        raise InvalidArgumentError(f"-o {output} is a folder: give a file name")
    if path.exists() and Path(source).exists() and path.resolve() == Path(source).resolve():
        raise InvalidArgumentError(f"-o {output} is the input file: it would be overwritten")
    return path


def _encode(args: argparse.Namespace) -> int:
    from pcic_ros.codec.api import Codec

    output = _output_path(args.output, args.image)
    image = load_image(args.image)
    scan, calibration = _frame_inputs(args)
    codec = Codec(args.model, args.quality, device=args.device, checkpoint=args.checkpoint)
    frame = codec.encode_frame(image, scan, calibration, reconstruct=False, effort=args.effort)
    output.write_bytes(frame.data)
    fallback = " (all-zeros fallback: no scan)" if frame.header.zeros_fallback else ""
    summary = f"{len(frame.data)} bytes, {frame.bits_per_pixel:.4f} bpp, {args.model} q{codec.quality:g}"
    print(f"{output}: {summary}{fallback}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from pcic_ros.codec.api import Codec

    output = _output_path(args.output, args.input)
    if output.suffix.lower() not in Image.registered_extensions():
        raise InvalidArgumentError(f"{output}: give the decoded image a file name with an image extension, e.g. .png")
    data = Path(args.input).read_bytes()
    header = read_header(data)
    scan, calibration = _frame_inputs(args)
    codec = Codec(header.model, header.quality, device=args.device, max_decode_pixels=args.max_pixels)
    image = codec.decode(data, scan, calibration)
    Image.fromarray(image).save(output)
    print(f"{args.output}: {image.shape[1]} x {image.shape[0]} from {header.model} q{header.quality:g}")
    return 0


def _info(args: argparse.Namespace) -> int:
    data = Path(args.input).read_bytes()
    header = read_header(data)
    pixels = header.height * header.width
    print(f"file:              {args.input}")
    print(f"format version:    {header.version}")
    print(f"model:             {header.model}")
    print(f"quality:           {header.quality:g}")
    print(
        f"image size:        {header.width} x {header.height} (padded {header.padded_width} x {header.padded_height})"
    )
    print(f"zeros fallback:    {'yes (no scan used)' if header.zeros_fallback else 'no'}")
    print(f"depth fingerprint: {header.depth_fingerprint.hex()}")
    print(f"weights:           {header.weights_fingerprint.hex()}")
    print(f"size:              {len(data)} bytes, {8 * len(data) / pixels:.4f} bpp")
    return 0


def _add_frame_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scan", help="LiDAR scan (KITTI .bin, float32 x y z r); omit for the zeros fallback")
    parser.add_argument("--calib", help="KITTI raw date folder or KITTI object calibration file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


class _HelpedSubparsers:
    """The subparsers action as a subcommand module sees it: each command gets its help from
    SUBCOMMANDS, the one place that lists them."""

    def __init__(self, subparsers: argparse._SubParsersAction) -> None:
        self._subparsers = subparsers

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        return self._subparsers.add_parser(name, help=SUBCOMMANDS[name][1], **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The pcic parser, complete for ``command`` (for every command when None); the others are there
    by name and help only, so that building it imports nothing the command does not need."""
    parser = argparse.ArgumentParser(prog="pcic", description="LiDAR-assisted learned image compression")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = set(CORE_COMMANDS) | set(SUBCOMMANDS) if command is None else {command}
    if "encode" in wanted:
        _add_encode_parser(sub)
    else:
        sub.add_parser("encode", help=CORE_COMMANDS["encode"])
    decode = sub.add_parser("decode", help=CORE_COMMANDS["decode"])
    decode.add_argument("input", help=".pcic file")
    decode.add_argument("-o", "--output", required=True, help="output image (PNG)")
    decode.add_argument(
        "--max-pixels",
        type=_positive,
        default=DEFAULT_MAX_DECODE_PIXELS,
        help="refuse frames larger than this (default: 1920 x 1080). A file's header, not its size, says what "
        "decoding costs: a forged 49-byte file can ask for gigabytes",
    )
    _add_frame_arguments(decode)
    decode.set_defaults(func=_decode)

    info = sub.add_parser("info", help=CORE_COMMANDS["info"])
    info.add_argument("input")
    info.set_defaults(func=_info)

    modules = dict.fromkeys(module for name, (module, _) in SUBCOMMANDS.items() if name in wanted)
    for module in modules:
        importlib.import_module(module).add_parser(_HelpedSubparsers(sub))
    for name, (module, help_text) in SUBCOMMANDS.items():
        if module not in modules:
            sub.add_parser(name, help=help_text)
    return parser


def _add_encode_parser(sub: argparse._SubParsersAction) -> None:
    from pcic_ros.codec.zoo import model_names

    encode = sub.add_parser("encode", help=CORE_COMMANDS["encode"])
    encode.add_argument("image", help="RGB image (PNG, ...)")
    encode.add_argument("-o", "--output", required=True, help="output .pcic file")
    encode.add_argument("--model", default="hyper-pc-vr", choices=model_names())
    encode.add_argument(
        "--quality",
        type=float,
        default=4,
        help="1, 2, 3 or 4 for a single-rate model; any number from 0 to 5 for a variable-rate one (hyper-vr)",
    )
    encode.add_argument("--checkpoint", help="weights file instead of the shipped ones")
    encode.add_argument(
        "--effort",
        type=_steps,
        default=0,
        help="refine the latents in this many steps before coding (HYPER family): fewer bits for the same "
        "decoder, about a second per step for a KITTI frame on 2 CPU cores; default 0",
    )
    _add_frame_arguments(encode)
    encode.set_defaults(func=_encode)


def _command(argv: list[str]) -> str:
    """The subcommand of a pcic command line ('' when there is none, e.g. ``pcic --help``)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    # CompressAI calls the deprecated torch.jit.script at import; that is not the user's concern.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.func(args)
    except PcicError as error:
        print(f"pcic {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing file, a folder where a file belongs, a full disk, no permission
        where = f": {error.filename}" if error.filename else ""
        print(f"pcic {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
