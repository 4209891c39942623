"""The pcic container: a versioned header followed by the entropy-coded strings.

Byte layout (format version 2, all integers little-endian; see docs/bitstream.md):

    offset  size  field
    0       4     magic b"PCIC"
    4       1     format version (2)
    5       1     flags: bit 0 = zeros fallback (no scan was used); other bits are 0
    6       4     quality, IEEE float32 (finite, 0..255)
    10      1     L = length of the model name (1..64)
    11      L     model name, ASCII
    11+L    2     image height (1..MAX_SIDE)
    13+L    2     image width (1..MAX_SIDE)
    15+L    2     padded height (multiple of the model's factor, >= height)
    17+L    2     padded width (multiple of the model's factor, >= width)
    19+L    8     depth fingerprint: projection.depth_fingerprint of the equalised depth map
    27+L    4     weights fingerprint: zoo.weights_fingerprint of the model
    31+L    1     K = number of strings (1..MAX_STRINGS)
    32+L    4*K   length of each string in bytes
    32+L+4K 4     CRC-32 of every byte before it and of the payload
    36+L+4K ...   payload: the K strings, back to back; the file ends exactly there

Version 1 differs only in the quality, one unsigned byte (1..255) at offset 6, which moves every later
field 3 bytes earlier. ``unpack`` still reads it (its single-rate models and qualities are unchanged);
``pack`` writes version 2. A variable-rate model's quality is any real number in its range: float32
holds what the model computes with (``stored_quality``), so encoder and decoder use the same value.

Any violation raises ``BitstreamError``: the only exception ``unpack`` and ``pcic_ros.codec.api.Codec.decode``
raise for bad data. Sizes are checked before anything is allocated.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from pcic_ros.errors import PcicError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "stored_quality",
    "MAX_SIDE",
    "MAX_PIXELS",
    "MAX_STRINGS",
    "FLAG_ZEROS_FALLBACK",
    "BitstreamError",
    "ScanMismatchError",
    "FrameHeader",
    "pack",
    "unpack",
    "read_header",
]

MAGIC = b"PCIC"
FORMAT_VERSION = 2
#: Versions ``unpack`` reads; ``pack`` writes FORMAT_VERSION.
READABLE_VERSIONS = (1, 2)
#: Largest image side and area a container may describe: bounds the decoder's memory.
MAX_SIDE = 8192
MAX_PIXELS = 3840 * 2160
MAX_STRINGS = 16
FLAG_ZEROS_FALLBACK = 0x01
_KNOWN_FLAGS = FLAG_ZEROS_FALLBACK
_MAX_NAME = 64


class BitstreamError(PcicError, ValueError):
    """The data is not a valid pcic container for this decoder: truncated, corrupted, foreign, from an
    unsupported version or model, or coded against another scan, calibration or set of weights."""


class ScanMismatchError(BitstreamError):
    """The frame was coded with a depth map other than the one the decoder holds (another scan or
    calibration), or the decoder holds no scan for a frame that needs one."""


def stored_quality(quality: float) -> int | float:
    """``quality`` as a container stores it: rounded to float32, and an int when it is whole (the
    single-rate models' 1..4 name their checkpoints by it)."""
    value = float(struct.unpack("<f", struct.pack("<f", float(quality)))[0])
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class FrameHeader:
    """Everything before the payload."""

    model: str
    quality: int | float
    height: int
    width: int
    padded_height: int
    padded_width: int
    depth_fingerprint: bytes
    weights_fingerprint: bytes
    zeros_fallback: bool = False
    version: int = FORMAT_VERSION

    @property
    def flags(self) -> int:
        return FLAG_ZEROS_FALLBACK if self.zeros_fallback else 0

    def validate(self) -> None:
        """Raise BitstreamError unless every field is in range."""
        if self.version not in READABLE_VERSIONS:
            raise BitstreamError(f"unsupported format version {self.version} (this decoder reads {_READABLE})")
        name = self.model.encode("ascii", errors="replace")
        if not 1 <= len(name) <= _MAX_NAME:
            raise BitstreamError(f"model name must be 1..{_MAX_NAME} ASCII characters")
        low = 1 if self.version == 1 else 0
        if not (math.isfinite(self.quality) and low <= self.quality <= 255):  # NaN fails the comparison too
            raise BitstreamError(f"quality {self.quality} out of range {low}..255")
        for label, size in (("height", self.height), ("width", self.width)):
            if not 1 <= size <= MAX_SIDE:
                raise BitstreamError(f"image {label} {size} out of range 1..{MAX_SIDE}")
        if self.height * self.width > MAX_PIXELS:
            raise BitstreamError(f"image of {self.height} x {self.width} exceeds {MAX_PIXELS} pixels")
        if not (self.height <= self.padded_height <= MAX_SIDE and self.width <= self.padded_width <= MAX_SIDE):
            raise BitstreamError("padded size smaller than the image or too large")
        if len(self.depth_fingerprint) != 8 or len(self.weights_fingerprint) != 4:
            raise BitstreamError("fingerprints must be 8 (depth) and 4 (weights) bytes")


_READABLE = ", ".join(str(v) for v in READABLE_VERSIONS)
_PREFIX = struct.Struct("<4sBB")
#: The quality and the name length, by version.
_QUALITY = {1: struct.Struct("<BB"), 2: struct.Struct("<fB")}
_SIZES = struct.Struct("<HHHH8s4sB")
_U32 = struct.Struct("<I")


def pack(header: FrameHeader, strings: list[bytes]) -> bytes:
    """Serialise a header and its strings into one container."""
    try:
        header.validate()
    except BitstreamError as error:
        raise ValueError(f"cannot pack: {error}") from None
    if not 1 <= len(strings) <= MAX_STRINGS:
        raise ValueError(f"1..{MAX_STRINGS} strings expected, got {len(strings)}")
    if header.version != FORMAT_VERSION:
        raise ValueError(f"cannot pack: this writer writes format version {FORMAT_VERSION} only")
    if stored_quality(header.quality) != header.quality:
        raise ValueError(f"cannot pack: quality {header.quality} is not a float32 (see stored_quality)")
    name = header.model.encode("ascii")
    head = bytearray(_PREFIX.pack(MAGIC, header.version, header.flags))
    head += _QUALITY[FORMAT_VERSION].pack(header.quality, len(name))
    head += name
    head += _SIZES.pack(
        header.height,
        header.width,
        header.padded_height,
        header.padded_width,
        header.depth_fingerprint,
        header.weights_fingerprint,
        len(strings),
    )
    for string in strings:
        head += _U32.pack(len(string))
    payload = b"".join(strings)
    crc = zlib.crc32(payload, zlib.crc32(bytes(head)))
    return bytes(head) + _U32.pack(crc) + payload


def _take(data: bytes | memoryview, offset: int, size: int, what: str) -> tuple[memoryview, int]:
    if offset + size > len(data):
        raise BitstreamError(f"truncated: {what} needs {size} bytes at offset {offset}, file has {len(data)}")
    return memoryview(data)[offset : offset + size], offset + size


def _parse(data: bytes | memoryview) -> tuple[FrameHeader, list[int], int, int]:
    """Header, string lengths, CRC and the offset of the payload."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    # Offsets below count bytes: a view of wider items, several dimensions or with strides would be misread.
    if isinstance(data, memoryview) and (data.ndim != 1 or data.itemsize != 1 or not data.c_contiguous):
        raise BitstreamError(f"expected a flat buffer of bytes, got a {data.format!r} view of shape {data.shape}")
    prefix, offset = _take(data, 0, _PREFIX.size, "the header")
    magic, version, flags = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise BitstreamError(f"not a pcic file (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported format version {version} (this decoder reads {_READABLE})")
    if flags & ~_KNOWN_FLAGS:
        raise BitstreamError(f"unknown flags 0x{flags:02x}")
    raw_quality, offset = _take(data, offset, _QUALITY[version].size, "the quality and name length")
    quality, name_length = _QUALITY[version].unpack(raw_quality)
    if not math.isfinite(quality):
        raise BitstreamError(f"quality {quality} is not a finite number")
    quality = stored_quality(quality)
    if not 1 <= name_length <= _MAX_NAME:
        raise BitstreamError(f"model name length {name_length} out of range 1..{_MAX_NAME}")
    raw_name, offset = _take(data, offset, name_length, "the model name")
    try:
        model = bytes(raw_name).decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("model name is not ASCII") from None
    sizes, offset = _take(data, offset, _SIZES.size, "the image size and fingerprints")
    height, width, padded_height, padded_width, depth_fp, weights_fp, count = _SIZES.unpack(sizes)
    header = FrameHeader(
        model=model,
        quality=quality,
        height=height,
        width=width,
        padded_height=padded_height,
        padded_width=padded_width,
        depth_fingerprint=bytes(depth_fp),
        weights_fingerprint=bytes(weights_fp),
        zeros_fallback=bool(flags & FLAG_ZEROS_FALLBACK),
        version=version,
    )
    header.validate()
    if not 1 <= count <= MAX_STRINGS:
        raise BitstreamError(f"string count {count} out of range 1..{MAX_STRINGS}")
    raw_lengths, offset = _take(data, offset, 4 * count, "the string lengths")
    lengths = list(struct.unpack(f"<{count}I", raw_lengths))
    raw_crc, offset = _take(data, offset, 4, "the checksum")
    return header, lengths, _U32.unpack(raw_crc)[0], offset


def read_header(data: bytes) -> FrameHeader:
    """Parse and validate only the header (for ``pcic info``); the payload is not checked."""
    return _parse(data)[0]


def unpack(data: bytes) -> tuple[FrameHeader, list[bytes]]:
    """Parse a container, verify its length and checksum, and return the header and the strings."""
    header, lengths, crc, offset = _parse(data)
    expected = offset + sum(lengths)
    if len(data) < expected:
        raise BitstreamError(f"truncated: header announces {expected} bytes, file has {len(data)}")
    if len(data) > expected:
        raise BitstreamError(f"{len(data) - expected} unexpected bytes after the payload")
    if zlib.crc32(memoryview(data)[offset:], zlib.crc32(memoryview(data)[: offset - 4])) != crc:
        raise BitstreamError("checksum mismatch: the file is corrupted")
    strings = []
    for length in lengths:
        strings.append(bytes(data[offset : offset + length]))
        offset += length
    return header, strings
