"""The codec API on real frames: bit-exact round trips, real rates, the zeros fallback, every error."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import LAYOUT_FRAMES, REPO, Codecs, assert_ablations_round_trip, crop_frame, load_layout_frame

from pcic_ros.codec.api import Codec, ScanError
from pcic_ros.codec.bitstream import BitstreamError, FrameHeader, ScanMismatchError, pack, read_header, unpack
from pcic_ros.codec.projection import Calibration, CalibrationError

MODELS = ("hyper", "hyper-pc")


@pytest.fixture(scope="module")
def codecs():
    return {name: Codec(name, quality=4, device="cpu") for name in MODELS}


@pytest.fixture(scope="module")
def encoded(codecs):
    """Every model on every layout's frame, encoded once."""
    out = {}
    for layout in LAYOUT_FRAMES:
        image, scan, calib = load_layout_frame(layout)
        for name, codec in codecs.items():
            out[layout, name] = (codec.encode_frame(image, scan, calib), image, scan, calib)
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUT_FRAMES))
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_bit_exact_with_real_rate(codecs, encoded, layout, name):
    frame, image, scan, calib = encoded[layout, name]
    height, width = image.shape[:2]
    assert height % 64 or width % 64, "the test frames must exercise padding"
    decoded = codecs[name].decode(frame.data, scan, calib)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, frame.reconstruction)
    assert frame.bits_per_pixel == pytest.approx(8 * len(frame.data) / (height * width))
    header = read_header(frame.data)
    assert (header.model, header.quality, header.height, header.width) == (name, 4, height, width)
    assert (header.padded_height, header.padded_width) == (-(-height // 64) * 64, -(-width // 64) * 64)
    assert not header.zeros_fallback
    # The payload is the entropy-coded strings: the file is the header plus a few kB, not raw pixels.
    assert 1000 < len(frame.data) < height * width // 4


def test_decoding_in_a_fresh_process_gives_the_same_image(encoded, tmp_path):
    frames = {}
    for (layout, name), (frame, _, _, _) in encoded.items():
        path = tmp_path / f"{layout}-{name}.pcic"
        path.write_bytes(frame.data)
        frames[str(path)] = (layout, name)
        np.save(tmp_path / f"{layout}-{name}.npy", frame.reconstruction)
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO / "test")!r})
        from conftest import load_layout_frame
        from pcic_ros.codec.api import Codec
        frames = json.loads(sys.argv[1])
        codec = Codec("hyper", 4, device="cpu")
        for path, (layout, name) in frames.items():
            _, scan, calib = load_layout_frame(layout)
            image = codec.decode(open(path, "rb").read(), scan, calib)
            assert (image == np.load(path[:-5] + ".npy")).all(), path
        print("decoded", len(frames))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(frames)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert f"decoded {len(frames)}" in result.stdout


def test_zeros_fallback_is_flagged_and_decodes_without_a_scan(codecs):
    image, scan, calib = load_layout_frame("kitti_object")
    codec = codecs["hyper-pc"]
    frame = codec.encode_frame(image, None, None)
    assert read_header(frame.data).zeros_fallback
    np.testing.assert_array_equal(codec.decode(frame.data), frame.reconstruction)
    # The scan is ignored for a fallback frame, whatever the decoder holds.
    np.testing.assert_array_equal(codec.decode(frame.data, scan, calib), frame.reconstruction)
    # A baseline model never needs a scan.
    baseline = codecs["hyper"].encode_frame(image, None, None)
    assert not read_header(baseline.data).zeros_fallback
    np.testing.assert_array_equal(codecs["hyper"].decode(baseline.data), baseline.reconstruction)



def test_encoding_without_the_reconstruction_writes_the_same_bytes(codecs, encoded):
    """The encoder node and ``Codec.encode`` skip the synthesis pass; the bitstream must not change."""
    frame, image, scan, calib = encoded["kitti_object", "hyper-pc"]
    sent = codecs["hyper-pc"].encode_frame(image, scan, calib, reconstruct=False)
    assert sent.reconstruction is None
    assert sent.data == frame.data == codecs["hyper-pc"].encode(image, scan, calib)


def test_decoder_refuses_frames_larger_than_it_accepts_before_decoding(encoded):
    frame, image, scan, calib = encoded["kitti_object", "hyper"]
    height, width = image.shape[:2]
    assert Codec("hyper", 4, device="cpu", max_decode_pixels=height * width).decode(frame.data).shape == image.shape
    # A forged header asks for the format's largest image: refused from the header alone.
    header, strings = unpack(frame.data)
    forged = dataclasses.replace(header, height=2160, width=3840, padded_height=2176, padded_width=3840)
    small = Codec("hyper", 4, device="cpu", max_decode_pixels=1920 * 1280)
    with pytest.raises(BitstreamError, match="larger than this decoder accepts"):
        small.decode(pack(forged, strings))
    with pytest.raises(BitstreamError, match="larger than this decoder accepts"):
        Codec("hyper", 4, device="cpu", max_decode_pixels=height * width - 1).decode(frame.data)
    with pytest.raises(ValueError, match="max_decode_pixels"):
        Codec("hyper", 4, device="cpu", max_decode_pixels=0)

def test_decoder_with_another_scan_or_calibration_refuses(codecs, encoded):
    frame, _, scan, calib = encoded["kitti_object", "hyper-pc"]
    codec = codecs["hyper-pc"]
    with pytest.raises(ScanMismatchError, match="coded with a LiDAR scan"):
        codec.decode(frame.data)
    _, other_scan, _ = load_layout_frame("kitti_raw")
    with pytest.raises(ScanMismatchError, match="differs"):
        codec.decode(frame.data, other_scan[: len(other_scan) // 2], calib)
    moved = calib.lidar_to_camera.copy()
    moved[0, 3] += 0.05
    with pytest.raises(ScanMismatchError, match="differs"):
        codec.decode(frame.data, scan, Calibration(calib.projection, calib.rectification, moved))
    with pytest.raises(ScanMismatchError, match="unusable"):
        codec.decode(frame.data, scan, None)


def test_damaged_and_foreign_files_raise_bitstream_error(codecs, encoded):
    frame, _, scan, calib = encoded["kitti_object", "hyper-pc"]
    codec = codecs["hyper-pc"]
    for data in (frame.data[:-1], frame.data[: len(frame.data) // 2], b"", b"GIF89a" + frame.data[6:]):
        with pytest.raises(BitstreamError):
            codec.decode(data, scan, calib)
    corrupted = bytearray(frame.data)
    corrupted[-100] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum"):
        codec.decode(bytes(corrupted), scan, calib)
    header, strings = unpack(frame.data)
    for change, message in (
        ({"model": "no-such-model"}, "unknown model"),
        ({"quality": 9}, "cannot build"),
        ({"weights_fingerprint": b"\x00\x00\x00\x00"}, "other weights"),
        ({"padded_width": header.padded_width + 64}, "padding"),
        ({"padded_width": header.padded_width + 1}, "multiple"),
    ):
        forged = pack(FrameHeader(**{**header.__dict__, **change}), strings)
        with pytest.raises(BitstreamError, match=message):
            codec.decode(forged, scan, calib)


def test_bad_encoder_inputs_raise_clear_errors(codecs):
    image, scan, calib = load_layout_frame("kitti_object")
    codec = codecs["hyper-pc"]
    with pytest.raises(ValueError, match="H x W x 3"):
        codec.encode(image[..., 0], scan, calib)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(image.astype(np.float32), scan, calib)
    with pytest.raises(ScanError, match="N x 3"):
        codec.encode(image, scan[:, :2], calib)
    with pytest.raises(ScanError, match="none of the scan"):
        codec.encode(image, np.zeros((0, 4), np.float32), calib)
    behind = scan.copy()
    behind[:, 0] = -np.abs(behind[:, 0]) - 1  # KITTI LiDAR x points forward: everything behind the car
    with pytest.raises(ScanError, match="none of the scan"):
        codec.encode(image, behind, calib)
    with pytest.raises(CalibrationError, match="without its calibration"):
        codec.encode(image, scan, None)


def test_every_ablation_model_round_trips_and_uses_the_scan_where_it_should():
    # A 192 x 128 crop where the LiDAR has points.
    image, scan, calib = crop_frame("kitti_object", 128, 192, top=200, left=500)
    assert_ablations_round_trip(Codecs(quality=1), "hyper", image, scan, calib)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_is_bit_exact():
    image, scan, calib = load_layout_frame("kitti_object")
    codec = Codec("hyper-pc", 4, device="cuda")
    frame = codec.encode_frame(image, scan, calib)
    np.testing.assert_array_equal(codec.decode(frame.data, scan, calib), frame.reconstruction)
