"""The container: exact round trip, and BitstreamError for every kind of damage."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from pcic_ros.codec.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    BitstreamError,
    FrameHeader,
    pack,
    read_header,
    stored_quality,
    unpack,
)

HEADER = FrameHeader(
    model="hyper-pc",
    quality=3,
    height=375,
    width=1242,
    padded_height=384,
    padded_width=1280,
    depth_fingerprint=bytes(range(8)),
    weights_fingerprint=b"\xde\xad\xbe\xef",
    zeros_fallback=True,
)
STRINGS = [bytes(random.Random(1).randbytes(3000)), b"\x01\x02\x03" * 50]


def test_round_trip_is_exact_and_layout_is_as_documented():
    data = pack(HEADER, STRINGS)
    header, strings = unpack(data)
    assert header == HEADER and strings == STRINGS
    assert read_header(data) == HEADER
    name = HEADER.model.encode()
    assert data[:4] == MAGIC and data[4] == FORMAT_VERSION == 2 and data[5] == 1
    assert struct.unpack_from("<f", data, 6) == (3.0,)
    assert data[10] == len(name) and data[11 : 11 + len(name)] == name
    offset = 11 + len(name)
    assert struct.unpack_from("<HHHH", data, offset) == (375, 1242, 384, 1280)
    assert data[offset + 8 : offset + 16] == HEADER.depth_fingerprint
    assert data[offset + 16 : offset + 20] == HEADER.weights_fingerprint
    assert data[offset + 20] == 2
    assert struct.unpack_from("<II", data, offset + 21) == (3000, 150)
    crc_at = offset + 29
    assert struct.unpack_from("<I", data, crc_at)[0] == zlib.crc32(data[crc_at + 4 :], zlib.crc32(data[:crc_at]))
    assert len(data) == crc_at + 4 + 3150


def test_every_truncation_is_rejected():
    data = pack(HEADER, STRINGS)
    for length in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:length])


def test_every_single_bit_flip_is_rejected():
    data = bytearray(pack(HEADER, STRINGS))
    rng = random.Random(7)
    positions = list(range(60)) + rng.sample(range(60, len(data)), 300)
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        with pytest.raises(BitstreamError):
            unpack(bytes(damaged))


def test_foreign_and_garbage_inputs_are_rejected():
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    for data in (b"", b"PCI", png, pack(HEADER, STRINGS) + b"x"):
        with pytest.raises(BitstreamError):
            unpack(data)
    rng = random.Random(3)
    for _ in range(2000):
        with pytest.raises(BitstreamError):
            unpack(MAGIC + rng.randbytes(rng.randrange(0, 80)))
    with pytest.raises(BitstreamError, match="expected bytes"):
        unpack("PCIC")


def _forge(**fields) -> bytes:
    """A container with a valid checksum whose header fields are set past validation."""
    values = {**HEADER.__dict__, **fields}
    name = values["model"].encode()
    quality = "<B" if values["version"] == 1 else "<f"
    head = struct.pack("<4sBB", MAGIC, values["version"], fields.get("flags", 0))
    head += struct.pack(quality, values["quality"]) + struct.pack("<B", len(name))
    head += name + struct.pack(
        "<HHHH8s4sB",
        values["height"],
        values["width"],
        values["padded_height"],
        values["padded_width"],
        values["depth_fingerprint"],
        values["weights_fingerprint"],
        1,
    )
    head += struct.pack("<I", 4)
    payload = b"abcd"
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 3}, "version"),
        ({"version": 0}, "version"),
        ({"flags": 0x80}, "flags"),
        ({"height": 0}, "height"),
        ({"width": 9000, "padded_width": 9000}, "width"),
        ({"height": 8000, "width": 8000, "padded_height": 8000, "padded_width": 8000}, "pixels"),
        ({"padded_height": 300}, "padded"),
        ({"quality": -0.5}, "quality"),
        ({"quality": 256.0}, "quality"),
        ({"quality": float("nan")}, "quality"),
        ({"quality": float("inf")}, "quality"),
        ({"version": 1, "quality": 0}, "quality"),
    ],
)
def test_out_of_range_fields_are_rejected_before_any_allocation(fields, message):
    with pytest.raises(BitstreamError, match=message):
        unpack(_forge(**fields))


def test_a_version_1_container_still_reads_with_its_integer_quality():
    header, strings = unpack(_forge(version=1, quality=4))
    assert header.version == 1 and header.quality == 4 and isinstance(header.quality, int)
    assert strings == [b"abcd"]


def test_a_real_quality_is_stored_exactly_as_float32():
    for quality in (0.0, 2.5, 4.2, 5.0):
        header = FrameHeader(**{**HEADER.__dict__, "quality": stored_quality(quality)})
        assert unpack(pack(header, STRINGS))[0] == header
    assert stored_quality(4.0) == 4 and isinstance(stored_quality(4.0), int)
    assert stored_quality(4.2) == struct.unpack("<f", struct.pack("<f", 4.2))[0] != 4.2
    with pytest.raises(ValueError, match="float32"):
        pack(FrameHeader(**{**HEADER.__dict__, "quality": 4.2}), STRINGS)


def test_pack_refuses_invalid_headers():
    with pytest.raises(ValueError):
        pack(FrameHeader(**{**HEADER.__dict__, "height": 0}), STRINGS)
    with pytest.raises(ValueError):
        pack(HEADER, [])
