"""The pcic command on a real frame, as a user runs it."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, LAYOUT_FRAMES, pcic

from pcic_ros.cli import main
from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import pack, unpack
from pcic_ros.codec.zoo import checkpoint_path
from pcic_ros.experiments.datasets import DataError, load_image, load_scan

IMAGE, SCAN, CALIB = (str(DATA / p) for p in LAYOUT_FRAMES["kitti_raw"])


def test_encode_info_decode_on_a_kitti_raw_frame(tmp_path):
    compressed, decoded = tmp_path / "frame.pcic", tmp_path / "frame.png"
    result = pcic("encode", IMAGE, "--scan", SCAN, "--calib", CALIB, "--model", "hyper", "-o", str(compressed))
    assert result.returncode == 0, result.stderr
    size = compressed.stat().st_size
    assert f"{size} bytes" in result.stdout and f"{8 * size / (1242 * 375):.4f} bpp" in result.stdout

    info = pcic("info", str(compressed))
    assert info.returncode == 0, info.stderr
    assert "model:             hyper\n" in info.stdout and "1242 x 375 (padded 1280 x 384)" in info.stdout

    result = pcic("decode", str(compressed), "--scan", SCAN, "--calib", CALIB, "-o", str(decoded))
    assert result.returncode == 0, result.stderr
    image = load_image(decoded)
    assert image.shape == load_image(IMAGE).shape


def test_errors_are_reported_without_a_traceback(tmp_path):
    compressed = tmp_path / "frame.pcic"
    result = pcic("encode", IMAGE, "--scan", SCAN, "--calib", CALIB, "-o", str(compressed))
    assert result.returncode == 0, result.stderr
    other_scan = SCAN.replace("0000000010", "0000000011")
    result = pcic("decode", str(compressed), "--scan", other_scan, "--calib", CALIB, "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "depth map differs" in result.stderr and "Traceback" not in result.stderr

    garbage = tmp_path / "garbage.pcic"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    result = pcic("info", str(garbage))
    assert result.returncode == 2 and "not a pcic file" in result.stderr

    result = pcic("encode", IMAGE, "--scan", SCAN, "-o", str(tmp_path / "y.pcic"))
    assert result.returncode == 2 and "--calib" in result.stderr


def test_every_error_bad_input_can_cause_is_a_pcic_error_and_keeps_its_builtin_base():
    """The CLI reports PcicError (and OSError) in one line with exit 2 and lets anything else show its
    traceback, so every user error the package defines must derive from it; callers that catch the
    built-in class (ValueError, LookupError, RuntimeError) keep working."""
    import importlib
    import inspect
    import pkgutil

    import pcic_ros
    from pcic_ros.errors import PcicError

    defined = {}
    for module_info in pkgutil.walk_packages(pcic_ros.__path__, "pcic_ros."):
        if module_info.name.endswith("__main__"):  # running it is the command itself
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__:
                defined[name] = value
    # Raised inside the decoder when a stream's arithmetic goes out of range; Codec.decode turns it
    # into a BitstreamError, so it never reaches a user. Private ones (a node's stop signal) neither.
    internal = {"FixedPointError"}
    assert {"BitstreamError", "CalibrationError", "DataError", "QualityError", "ScanError"} <= set(defined)
    for name, error in defined.items():
        if name not in internal and not name.startswith("_"):
            assert issubclass(error, PcicError), name
            assert error is PcicError or any(
                issubclass(error, builtin) for builtin in (ValueError, LookupError, RuntimeError)
            ), name


def _png(path, pixels: np.ndarray, colour_type: int, depth: int, size: tuple[int, int] | None = None) -> None:
    """A PNG written chunk by chunk, so that its header can lie: ``size`` (width, height) claims that
    size over the given pixels."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", *(size or (width, height)), depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    grey = np.arange(0, 65536, 257, dtype=">u2")[:256].reshape(16, 16)
    _png(tmp_path / "mono16.png", grey, colour_type=0, depth=16)
    image = load_image(tmp_path / "mono16.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], (grey.astype(np.uint32) // 257).astype(np.uint8))
    assert np.array_equal(image[..., 0], image[..., 2])


def test_unreadable_inputs_and_bad_options_are_refused_in_one_line(tmp_path, capsys):
    """Exit status 2 and a message naming the cause, never a traceback; nothing is written."""
    out = tmp_path / "out.pcic"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(IMAGE).read_bytes()[:5000])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    _png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8), colour_type=0, depth=8, size=(30000, 30000))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    cases = [
        (["encode", str(truncated), "-o", str(out)], "not a readable image"),
        (["encode", str(tmp_path / "empty.png"), "-o", str(out)], "not a readable image"),
        (["encode", str(tmp_path / "text.png"), "-o", str(out)], "not a readable image"),
        (["encode", str(tmp_path / "bomb.png"), "-o", str(out)], "decompression bomb"),
        (["encode", str(tmp_path), "-o", str(out)], "is a folder, not an image"),
        (["encode", IMAGE, "-o", str(tmp_path)], "is a folder"),
        (["encode", IMAGE, "-o", "-"], "standard output"),
        (["encode", IMAGE, "-o", str(out), "--model", "hyper", "--device", "bogus"], "unknown device"),
        (["encode", IMAGE, "-o", str(out), "--model", "hyper", "--checkpoint", str(tmp_path / "bad.pt")], "bad.pt"),
        (
            ["encode", IMAGE, "-o", str(out), "--model", "hyper", "--checkpoint", str(checkpoint_path("hyper-vr", 3))],
            "not weights of 'hyper' (Unexpected key(s) in state_dict: \"gain_units.",
        ),
        (["decode", str(tmp_path), "-o", str(tmp_path / "x.png")], "Is a directory"),
        (["info", str(tmp_path)], "Is a directory"),
        (["decode", str(tmp_path / "none.pcic"), "-o", str(tmp_path / "x.unknown")], "image extension"),
    ]
    if not torch.cuda.is_available():
        cases.append((["encode", IMAGE, "-o", str(out), "--model", "hyper", "--device", "cuda"], "no usable CUDA"))
    for arguments, cause in cases:
        assert main(arguments) == 2, arguments
        error = capsys.readouterr().err
        assert cause in error and "Traceback" not in error and error.count("\n") == 1, (arguments, error)
        assert not out.exists()


def test_encode_refuses_to_overwrite_its_own_input(tmp_path, capsys):
    source = tmp_path / "frame.png"
    source.write_bytes(Path(IMAGE).read_bytes())
    assert main(["encode", str(source), "-o", str(tmp_path / "." / "frame.png"), "--model", "hyper"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert source.read_bytes() == Path(IMAGE).read_bytes()


def test_a_scan_that_is_not_float32_points_is_refused(tmp_path):
    scan = load_scan(SCAN)
    scan.astype(np.float64).tofile(tmp_path / "float64.bin")
    with pytest.raises(DataError, match="float64"):
        load_scan(tmp_path / "float64.bin")
    (tmp_path / "long.bin").write_bytes(Path(SCAN).read_bytes() + b"\0\0\0")
    with pytest.raises(DataError, match="not a whole number of 16-byte points"):
        load_scan(tmp_path / "long.bin")
    assert np.array_equal(load_scan(SCAN), scan)


def test_decode_refuses_a_forged_header_asking_for_a_huge_frame_at_once(tmp_path, capsys):
    """A valid 4K container whose strings hold a tiny frame: the header alone decides the cost, so the
    CLI refuses above --max-pixels (Full HD by default) before allocating anything."""
    image = load_image(IMAGE)[:64, :64]
    frame = Codec("hyper", 1, device="cpu").encode_frame(image, None, None, reconstruct=False)
    forged = dataclasses.replace(frame.header, height=2160, width=3840, padded_height=2176, padded_width=3840)
    _, strings = unpack(frame.data)
    (tmp_path / "4k.pcic").write_bytes(pack(forged, strings))
    assert main(["decode", str(tmp_path / "4k.pcic"), "-o", str(tmp_path / "4k.png")]) == 2
    assert "3840 x 2160 frame is larger than this decoder accepts" in capsys.readouterr().err
    assert not (tmp_path / "4k.png").exists()
    small = ["decode", str(tmp_path / "4k.pcic"), "-o", str(tmp_path / "x.png"), "--max-pixels", "4096"]
    assert main(small) == 2 and "larger than this decoder accepts (4096 pixels" in capsys.readouterr().err
