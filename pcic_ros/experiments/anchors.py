"""Classic image codecs that the learned codec is compared against ("anchors").

Each anchor wraps a library codec with the settings a user gets by default (AVIF's encoder speed
aside, see _AVIF_SPEED), apart from the quality knob, which is swept. The sweeps run from low to
high rate and were chosen on KITTI frames (about 1242 x 375) so that every curve that can go that
low starts near 0.1 bpp and every curve ends above about 2 bpp, which makes BD-rate against learned
codecs at 0.1-1.5 bpp an interpolation, not an extrapolation. Two codecs cannot reach 0.1 bpp:
JPEG bottoms out at 0.17-0.22 bpp (quality 1) and JPEG XL at 0.12-0.21 bpp (its largest distance),
depending on the frame.

Chroma is stated per anchor because it bounds PSNR: KITTI frames carry so much full-resolution
chroma detail that 4:2:0 subsampling by itself caps PSNR at roughly 29-31 dB, so the 4:2:0 anchors
(JPEG, WebP, HEVC) flatten out there however many bits they spend, while the 4:4:4 ones keep rising.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image, features

from pcic_ros.errors import PcicError

_IMAGECODECS_HINT = "imagecodecs (pip install imagecodecs==2026.1.14, as pinned in requirements.txt)"
_PILLOW_HEIF_HINT = "pillow-heif, whose wheel bundles x265 (pip install pillow-heif==1.8.1)"


class AnchorUnavailableError(PcicError, RuntimeError):
    """The library an anchor needs is missing or was built without that codec."""


def _import_or_none(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an H x W x 3 uint8 RGB array, got shape {shape} of {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def _as_rgb(decoded: np.ndarray) -> np.ndarray:
    if decoded.ndim != 3 or decoded.shape[2] != 3 or decoded.dtype != np.uint8:
        raise ValueError(f"decoder returned shape {decoded.shape} of {decoded.dtype}, not H x W x 3 uint8")
    return decoded


@dataclass(frozen=True)
class Anchor:
    """One classic codec: its quality sweep and an encode/decode pair on H x W x 3 uint8 RGB."""

    name: str
    library: str
    chroma: str
    quality_meaning: str
    qualities: tuple[int, ...]
    install_hint: str
    _probe: Callable[[], bool]
    _encode: Callable[[np.ndarray, int], bytes]
    _decode: Callable[[bytes], np.ndarray]

    def is_available(self) -> bool:
        """Whether the library and codec this anchor needs can be used in this environment."""
        return self._probe()

    def require(self) -> None:
        """Raise AnchorUnavailableError, naming what to install, when the codec cannot be used."""
        if not self._probe():
            raise AnchorUnavailableError(f"the {self.name} anchor needs {self.install_hint}")

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        """Compress an H x W x 3 uint8 RGB image at one setting of this anchor's quality knob."""
        self.require()
        return bytes(self._encode(_check_image(image), quality))

    def decode(self, data: bytes) -> np.ndarray:
        """Decompress bytes made by encode() back to an H x W x 3 uint8 RGB image."""
        self.require()
        return _as_rgb(self._decode(data))


def _pillow_probe(feature: str) -> Callable[[], bool]:
    return lambda: bool(features.check(feature))


def _pillow_encoder(image_format: str) -> Callable[[np.ndarray, int], bytes]:
    def encode(image: np.ndarray, quality: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=image_format, quality=quality)
        return buffer.getvalue()

    return encode


def _pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _imagecodecs_probe(codec: str) -> Callable[[], bool]:
    def probe() -> bool:
        imagecodecs = _import_or_none("imagecodecs")
        codec_info = getattr(imagecodecs, codec, None)
        return bool(getattr(codec_info, "available", False))

    return probe


def _imagecodecs_function(name: str) -> Callable[..., np.ndarray | bytes]:
    return getattr(importlib.import_module("imagecodecs"), name)


def _imagecodecs_decoder(name: str) -> Callable[[bytes], np.ndarray]:
    # Looked up per call, so that importing this module never needs imagecodecs.
    return lambda data: _imagecodecs_function(name)(data)


def _jpeg2k_encode(image: np.ndarray, target_psnr_db: int) -> bytes:
    # imagecodecs hands `level` to OpenJPEG as a fixed-quality layer target in dB; the default
    # (no level) would be lossless.
    return _imagecodecs_function("jpeg2k_encode")(image, level=target_psnr_db)


# avifenc's default speed: at imagecodecs' own default, libaom took 6-20 s per KITTI frame here,
# against 0.1-0.3 s at speed 6.
_AVIF_SPEED = 6


def _avif_encode(image: np.ndarray, quality: int) -> bytes:
    return _imagecodecs_function("avif_encode")(image, level=quality, speed=_AVIF_SPEED)


def _jpegxl_encode(image: np.ndarray, quality: int) -> bytes:
    return _imagecodecs_function("jpegxl_encode")(image, level=quality)


def _hevc_probe() -> bool:
    pillow_heif = _import_or_none("pillow_heif")
    return pillow_heif is not None and bool(pillow_heif.libheif_info().get("HEIF"))


def _hevc_encode(image: np.ndarray, quality: int) -> bytes:
    pillow_heif = importlib.import_module("pillow_heif")
    buffer = io.BytesIO()
    height, width = image.shape[:2]
    pillow_heif.encode("RGB", (width, height), image.tobytes(), buffer, quality=quality)
    return buffer.getvalue()


def _hevc_decode(data: bytes) -> np.ndarray:
    pillow_heif = importlib.import_module("pillow_heif")
    heif_file = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    if heif_file.mode != "RGB":
        raise ValueError(f"HEIF image decoded as mode {heif_file.mode}, not RGB")
    return np.asarray(heif_file)


ANCHORS: dict[str, Anchor] = {
    anchor.name: anchor
    for anchor in (
        Anchor(
            name="jpeg",
            library="Pillow (libjpeg-turbo), baseline Huffman, default tables",
            chroma="4:2:0 (Pillow's default)",
            quality_meaning="libjpeg quality 1-95",
            qualities=(1, 5, 10, 20, 35, 50, 65, 80, 90, 95),
            install_hint="Pillow built with JPEG support (pip install pillow==13.0.0)",
            _probe=_pillow_probe("jpg"),
            _encode=_pillow_encoder("JPEG"),
            _decode=_pillow_decode,
        ),
        Anchor(
            name="webp",
            library="Pillow (libwebp), lossy, method 4",
            chroma="4:2:0 (lossy WebP has no other mode)",
            quality_meaning="libwebp quality 0-100",
            qualities=(0, 5, 15, 30, 50, 70, 85, 95),
            install_hint="Pillow built with WebP support (pip install pillow==13.0.0)",
            _probe=_pillow_probe("webp"),
            _encode=_pillow_encoder("WEBP"),
            _decode=_pillow_decode,
        ),
        Anchor(
            name="jpeg2000",
            library="imagecodecs (OpenJPEG), JP2 container, irreversible 9/7 wavelet with colour transform",
            chroma="4:4:4 (no subsampling)",
            quality_meaning="OpenJPEG fixed-quality target PSNR in dB",
            qualities=(20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40),
            install_hint=_IMAGECODECS_HINT,
            _probe=_imagecodecs_probe("JPEG2K"),
            _encode=_jpeg2k_encode,
            _decode=_imagecodecs_decoder("jpeg2k_decode"),
        ),
        Anchor(
            name="avif",
            library=f"imagecodecs (libavif with libaom), speed {_AVIF_SPEED}",
            chroma="4:4:4 (libavif's default for RGB input)",
            quality_meaning="libavif quality 0-100",
            qualities=(2, 10, 20, 30, 40, 50, 60, 70, 80),
            install_hint=_IMAGECODECS_HINT,
            _probe=_imagecodecs_probe("AVIF"),
            _encode=_avif_encode,
            _decode=_imagecodecs_decoder("avif_decode"),
        ),
        Anchor(
            name="jpegxl",
            library="imagecodecs (libjxl), VarDCT, effort 7",
            chroma="4:4:4 (XYB colour space, no subsampling)",
            quality_meaning="libjxl quality 0-100 (mapped to a Butteraugli distance)",
            qualities=(0, 10, 30, 50, 70, 80, 90, 95),
            install_hint=_IMAGECODECS_HINT,
            _probe=_imagecodecs_probe("JPEGXL"),
            _encode=_jpegxl_encode,
            _decode=_imagecodecs_decoder("jpegxl_decode"),
        ),
        Anchor(
            name="hevc",
            library="pillow-heif (libheif with x265), HEIF still image, HEVC intra, 8 bit",
            chroma="4:2:0 (x265's default)",
            quality_meaning="libheif quality 0-100",
            qualities=(2, 10, 20, 30, 40, 50, 60, 70),
            install_hint=_PILLOW_HEIF_HINT,
            _probe=_hevc_probe,
            _encode=_hevc_encode,
            _decode=_hevc_decode,
        ),
    )
}


def available_anchors() -> list[str]:
    """Names of the anchors whose codec can be used in this environment, in registry order."""
    return [name for name, anchor in ANCHORS.items() if anchor.is_available()]


def get_anchor(name: str) -> Anchor:
    """The anchor called `name`; raises KeyError for an unknown name, AnchorUnavailableError if unusable."""
    if name not in ANCHORS:
        raise KeyError(f"unknown anchor {name!r}; known anchors: {', '.join(ANCHORS)}")
    anchor = ANCHORS[name]
    anchor.require()
    return anchor
