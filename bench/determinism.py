"""Does a frame decode the same in another process with another thread count (or on another device)?

Encodes frames in one process (``--encode-threads``, ``--encode-device``) and decodes them in another
(``--decode-threads``, ``--decode-device``), then sorts every (model, frame) into:

- exact: the decoded image is the encoder's reconstruction, bit for bit;
- drift: the entropy decoding held (PSNR against the encoder's reconstruction >= 40 dB) but some
  pixels differ (the synthesis transform is floating point);
- broken: garbage or an error: the decoder rebuilt other distributions than the encoder used.

``--float-entropy-path`` measures the codec as it was before ``pcic_ros.codec.fixed_point``: the modules
that decide the distributions in floating point. The table also gives the mean bytes per frame and
the mean encode and decode time, so that the two runs show the fixed-point path's cost in rate and
time on the same frames.

    .venv/bin/python bench/determinism.py --models hyper hyper-pc --frames 12 [--float-entropy-path]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pcic_ros.experiments.datasets import default_data_dir

DEFAULT_DATA_DIR = default_data_dir()
DRIFT_PSNR_DB = 40.0


def _frames(data_dir: Path, count: int) -> list:
    from pcic_ros.experiments.datasets import discover_frames
    from pcic_ros.experiments.evaluation import pick_evenly

    frames = discover_frames(data_dir)
    return frames if count == 0 else pick_evenly(frames, count)


def _use_float_entropy_path() -> None:
    # Measurement only: puts back the floating-point evaluation that pcic_ros.codec.fixed_point replaced.
    from pcic_ros.codec import fixed_point

    fixed_point.evaluate = lambda function, *inputs, **kwargs: function(*inputs, **kwargs)


def _worker(args: argparse.Namespace) -> int:
    """One side, in its own process: encode every (model, frame) or decode what the other side wrote."""
    import time

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    if args.float_entropy_path:
        _use_float_entropy_path()
    from pcic_ros.codec.api import Codec

    work = Path(args.work)
    frames = _frames(Path(args.data_dir), args.frames)
    results = {}
    for model in args.models:
        codec = Codec(model, args.quality, device=args.device)
        for index, frame in enumerate(tqdm(frames, desc=f"{args.side} {model}", unit="frame", file=sys.stderr)):
            stem = work / f"{model}-{index:03d}"
            image, scan, calibration = frame.image(), frame.scan(), frame.calibration()
            started = time.perf_counter()
            if args.side == "encode":
                encoded = codec.encode_frame(image, scan, calibration)
                stem.with_suffix(".pcic").write_bytes(encoded.data)
                np.save(stem.with_suffix(".npy"), encoded.reconstruction)
                results[stem.name] = {"bytes": len(encoded.data), "encode_s": time.perf_counter() - started}
                continue
            expected = np.load(stem.with_suffix(".npy"))
            try:
                decoded = codec.decode(stem.with_suffix(".pcic").read_bytes(), scan, calibration)
            except ValueError as error:
                results[stem.name] = {"outcome": "broken", "error": str(error)}
                continue
            decode_s = time.perf_counter() - started
            difference = np.abs(decoded.astype(np.int16) - expected.astype(np.int16))
            mse = float(np.mean(difference.astype(np.float64) ** 2))
            psnr_db = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
            outcome = "exact" if mse == 0 else ("drift" if psnr_db >= DRIFT_PSNR_DB else "broken")
            results[stem.name] = {
                "outcome": outcome,
                "max_abs_diff": int(difference.max()),
                "psnr_db": psnr_db,
                "decode_s": decode_s,
            }
    (work / f"{args.side}.json").write_text(json.dumps(results, indent=1))
    return 0


def _side(args: argparse.Namespace, side: str, work: Path) -> None:
    threads, device = getattr(args, f"{side}_threads"), getattr(args, f"{side}_device")
    command = [sys.executable, __file__, "--side", side, "--work", str(work), "--data-dir", str(args.data_dir),
               "--frames", str(args.frames), "--quality", str(args.quality), "--models", *args.models,
               "--threads", str(threads), "--device", device]  # fmt: skip
    if args.float_entropy_path:
        command.append("--float-entropy-path")
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models", nargs="+", default=["hyper", "hyper-pc"])
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12, help="frames spread over the data; 0: all")
    parser.add_argument("--encode-threads", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--encode-device", default="cpu")
    parser.add_argument("--decode-device", default="cpu")
    parser.add_argument("--float-entropy-path", action="store_true", help="measure the pre-fixed-point codec")
    parser.add_argument("--output", type=Path, help="also write the per-frame outcomes here (JSON)")
    parser.add_argument("--side", choices=["encode", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return _worker(args)
    with tempfile.TemporaryDirectory() as work:
        _side(args, "encode", Path(work))
        _side(args, "decode", Path(work))
        encoded = json.loads((Path(work) / "encode.json").read_text())
        decoded = json.loads((Path(work) / "decode.json").read_text())
        results = {name: encoded[name] | row for name, row in decoded.items()}
    path = "float (before fixed point)" if args.float_entropy_path else "fixed point"
    print(f"entropy path: {path}; encode {args.encode_device} x{args.encode_threads} threads, "
          f"decode {args.decode_device} x{args.decode_threads} threads, quality {args.quality}")  # fmt: skip
    columns = ["frames", "exact", "drift", "broken", "max |diff|", "bytes", "encode s", "decode s"]
    print(f"{'model':<22}" + "".join(f"{c:>12}" for c in columns))
    for model in args.models:
        rows = [r for name, r in results.items() if name.rsplit("-", 1)[0] == model]
        counts = [sum(r["outcome"] == k for r in rows) for k in ("exact", "drift", "broken")]
        worst = max((r.get("max_abs_diff", 255) for r in rows), default=0)
        timed = [r for r in rows if "decode_s" in r]
        means = [
            f"{np.mean([r['bytes'] for r in rows]):.0f}",
            f"{np.mean([r['encode_s'] for r in rows]):.2f}",
            f"{np.mean([r['decode_s'] for r in timed]):.2f}" if timed else "-",
        ]
        print(f"{model:<22}" + "".join(f"{v:>12}" for v in [len(rows), *counts, worst, *means]))
    if args.output:
        args.output.write_text(json.dumps({"settings": vars(args) | {"data_dir": str(args.data_dir),
                                                                     "output": str(args.output)},
                                           "frames": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
