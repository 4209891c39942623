"""The classic anchor codecs on a real KITTI frame: round trips, quality floors, and rate sweeps."""

import dataclasses
import sys

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from pcic_ros.experiments.anchors import ANCHORS, AnchorUnavailableError, available_anchors, get_anchor
from pcic_ros.experiments.metrics import bits_per_pixel, psnr

# KITTI raw's 1242 x 375 has an odd height, which the 4:2:0 codecs have to pad and crop back.
FRAME = "kitti_raw/2011_09_26/2011_09_26_drive_sfnd_sync/image_02/data/0000000000.png"

# Subsampling chroma alone costs KITTI frames about 29.5 dB, so 4:2:0 anchors cannot be held to
# the floor the full-chroma ones reach.
PSNR_FLOOR_DB = {"4:2:0": 28.0, "4:4:4": 33.0}


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    path = DATA / FRAME
    if not path.exists():
        raise FileNotFoundError(f"KITTI frame {path} not found; set PCIC_DATA to the shared data folder")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def sweeps(frame):
    """Per anchor, (quality, encoded bytes, decoded image) for its whole sweep, computed once."""
    cache = {}

    def sweep(name):
        if name not in cache:
            anchor = ANCHORS[name]
            cache[name] = []
            for quality in anchor.qualities:
                data = anchor.encode(frame, quality)
                cache[name].append((quality, data, anchor.decode(data)))
        return cache[name]

    return sweep


@pytest.mark.parametrize("name", list(ANCHORS))
def test_round_trip_keeps_shape_and_dtype(name, frame, sweeps):
    for quality, _, decoded in sweeps(name):
        assert decoded.shape == frame.shape, f"{name} at quality {quality}"
        assert decoded.dtype == np.uint8


@pytest.mark.parametrize("name", list(ANCHORS))
def test_highest_quality_is_close_to_the_original(name, frame, sweeps):
    _, _, decoded = sweeps(name)[-1]
    floor = PSNR_FLOOR_DB[ANCHORS[name].chroma[:5]]
    assert psnr(frame, decoded) > floor


@pytest.mark.parametrize("name", list(ANCHORS))
def test_size_and_psnr_fall_as_quality_falls(name, frame, sweeps):
    # BD metrics need a curve that is monotonic in both rate and distortion.
    results = sweeps(name)
    sizes = [len(data) for _, data, _ in results]
    psnrs = [psnr(frame, decoded) for _, _, decoded in results]
    assert np.all(np.diff(sizes) > 0), sizes
    assert np.all(np.diff(psnrs) > 0), psnrs


@pytest.mark.parametrize("name", list(ANCHORS))
def test_sweep_spans_the_learned_codec_rates(name, frame, sweeps):
    height, width = frame.shape[:2]
    rates = [bits_per_pixel(len(data), height, width) for _, data, _ in sweeps(name)]
    # JPEG and JPEG XL cannot go below 0.12-0.22 bpp on KITTI; the others reach 0.1 and less.
    assert rates[0] < 0.2
    assert rates[-1] > 2.0


def test_every_anchor_is_available_in_the_project_environment():
    assert available_anchors() == list(ANCHORS)
    assert set(ANCHORS) == {"jpeg", "webp", "jpeg2000", "avif", "jpegxl", "hevc"}


def test_unknown_anchor_names_the_known_ones():
    with pytest.raises(KeyError, match="jpeg2000"):
        get_anchor("bpg")


def test_missing_library_raises_and_names_what_to_install(monkeypatch, frame):
    # A None entry in sys.modules makes `import pillow_heif` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    assert "hevc" not in available_anchors()
    with pytest.raises(AnchorUnavailableError, match="pip install pillow-heif"):
        get_anchor("hevc")
    with pytest.raises(AnchorUnavailableError, match="pip install pillow-heif"):
        ANCHORS["hevc"].encode(frame, 50)


def test_codec_built_without_support_is_reported(frame):
    no_codec = dataclasses.replace(ANCHORS["avif"], _probe=lambda: False)
    with pytest.raises(AnchorUnavailableError, match="imagecodecs"):
        no_codec.decode(b"")


@pytest.mark.parametrize(
    "bad_image",
    [np.zeros((16, 16), np.uint8), np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 3), np.float32)],
    ids=["grey", "rgba", "float"],
)
def test_encode_rejects_anything_but_rgb_uint8(bad_image):
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        ANCHORS["jpeg"].encode(bad_image, 50)
