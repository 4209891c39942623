"""Fuzzing the container parser and ``Codec.decode``: whatever the bytes, a valid result or the documented
exception (``BitstreamError``, or its subclass ``ScanMismatchError``), never another exception, a crash
or a hang.

The seeds are real containers of small crops of the KITTI test frames (test/fuzz_corpus/, rewritten by
``bench/fuzz_decode.py --write-corpus``). The strategies mutate them (bit flips, byte writes,
truncations, insertions, deletions, splices, header field overwrites, other model names, other image
sizes, moved string boundaries, replaced strings) and often re-seal the CRC, so that the damage gets
past the checksum to the model, the rANS decoder and the synthesis transform. ``bench/fuzz_decode.py``
runs the same properties for 100k+ cases; docs/fuzzing.md has its figures.
"""

from __future__ import annotations

import array
import faulthandler
import functools
import re
import resource
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, load_layout_frame
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from pcic_ros.codec.api import Codec, _ZeroPaddedDecoder
from pcic_ros.codec.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    MAX_PIXELS,
    MAX_SIDE,
    BitstreamError,
    FrameHeader,
    pack,
    read_header,
    unpack,
)
from pcic_ros.codec.projection import Calibration

CORPUS = REPO / "test" / "fuzz_corpus"
QUALITY = 1
#: A hang in C++ code cannot be interrupted from Python: past this, the process dies with every thread's
#: traceback. Generous, as the machine may be loaded; a seed's decode takes well under a second.
CASE_TIME_LIMIT_S = 60.0
#: Forged sizes that the format allows are decoded only up to this many padded pixels, to keep cases short.
DECODED_PIXELS_LIMIT = 320 * 320
#: A refused forged header must not allocate its image: the peak RSS may grow by less than this.
REFUSAL_RSS_GROWTH_MB = 512
#: The padding factor of every registered model (docs/bitstream.md).
FACTOR = 64
WRITE_CORPUS = ".venv/bin/python bench/fuzz_decode.py --write-corpus"


@dataclass(frozen=True)
class Seed:
    """One corpus file: a crop of a layout's test frame, coded at QUALITY by ``model``."""

    model: str
    layout: str
    top: int
    left: int
    height: int
    width: int
    with_scan: bool
    """Coded against the scan (the decoder needs it), else without one (baseline or zeros fallback)."""


SEEDS = {
    "hyper-64x64.pcic": Seed("hyper", "kitti_object", 200, 500, 64, 64, False),
    "hyper-40x100.pcic": Seed("hyper", "kitti_raw", 190, 600, 40, 100, False),
    "hyper-pc-48x60.pcic": Seed("hyper-pc", "kitti_object", 200, 500, 48, 60, True),
    "hyper-pc-fallback-64x64.pcic": Seed("hyper-pc", "kitti360_object", 180, 400, 64, 64, False),
}


@functools.cache
def seed_frame(name: str) -> tuple[np.ndarray, np.ndarray, Calibration]:
    """The seed's crop, the points of its frame's scan that land in the crop, and the calibration moved
    with the crop. Keeping only those points gives the same depth map and keeps each decode short."""
    seed = SEEDS[name]
    image, scan, calibration = load_layout_frame(seed.layout)
    crop = image[seed.top : seed.top + seed.height, seed.left : seed.left + seed.width].copy()
    shift = np.array([[1.0, 0.0, -seed.left], [0.0, 1.0, -seed.top], [0.0, 0.0, 1.0]])
    moved = Calibration(shift @ calibration.projection, calibration.rectification, calibration.lidar_to_camera)
    camera = scan[:, :3].astype(np.float64) @ moved.lidar_to_image[:3, :3].T + moved.lidar_to_image[:3, 3]
    depth = camera[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = camera[:, 0] / depth, camera[:, 1] / depth
    in_view = (depth > 0) & (u >= 0) & (u < seed.width) & (v >= 0) & (v < seed.height)
    return crop, scan[in_view], moved


def encode_seed(name: str) -> bytes:
    """The container of one seed, as the current encoder writes it."""
    seed = SEEDS[name]
    crop, scan, calibration = seed_frame(name)
    if not seed.with_scan:
        scan, calibration = None, None
    return Codec(seed.model, QUALITY, device="cpu").encode(crop, scan, calibration)


def write_corpus() -> list[Path]:
    """Rewrite every corpus file (after a format or weights change); returns the paths written."""
    CORPUS.mkdir(exist_ok=True)
    paths = []
    for name in SEEDS:
        path = CORPUS / name
        path.write_bytes(encode_seed(name))
        paths.append(path)
    return paths


@functools.cache
def seed_bytes(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def decoder_scan(name: str) -> tuple[np.ndarray | None, Calibration | None]:
    """What a decoder of the seed holds: its scan and calibration when it was coded with them."""
    if not SEEDS[name].with_scan:
        return None, None
    _, scan, calibration = seed_frame(name)
    return scan, calibration


@functools.cache
def decoder(model: str) -> Codec:
    """One CPU codec per model, shared by all cases (it builds the other models a header asks for)."""
    return Codec(model, QUALITY, device="cpu")


@contextmanager
def fuzz_case() -> Iterator[None]:
    """Run one case on one torch thread (the tensors are tiny, and threads fight on a loaded machine),
    ending the process with every thread's traceback if it runs longer than CASE_TIME_LIMIT_S."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(CASE_TIME_LIMIT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the cases: each returns its outcome and lets any undocumented exception through ----------------


def refusal(error: BitstreamError) -> str:
    """'<exception type>: <the check that failed>', the values left out of the message."""
    head = re.split(r"[:(]", str(error), maxsplit=1)[0]
    check = re.sub(r"(?<!\w)'[^']*'|\bq\d+\b|0x[0-9a-f]+|\d+(\.\.\d+)?", "", head)
    return f"{type(error).__name__}: {' '.join(check.split())}"


def check_parser(data: bytes | bytearray | memoryview) -> str:
    """'container', or the documented exception's ``refusal``. Whatever the parser accepts must be a
    well-formed container: a valid header, and packing it back gives the very same bytes."""
    try:
        header = read_header(data)
    except BitstreamError:
        header = None
    try:
        parsed, strings = unpack(data)
    except BitstreamError as error:
        return refusal(error)
    assert parsed == header, "unpack accepted what read_header refused, or read another header"
    parsed.validate()
    assert pack(parsed, strings) == bytes(data)
    return "container"


def check_decode(codec: Codec, data: bytes, scan: np.ndarray | None, calibration: Calibration | None) -> str:
    """'image' (then H x W x 3 uint8 of the header's size), or the documented exception's ``refusal``."""
    try:
        image = codec.decode(data, scan, calibration)
    except BitstreamError as error:
        return refusal(error)
    header = read_header(data)
    assert image.dtype == np.uint8 and image.shape == (header.height, header.width, 3), image.shape
    return "image"


def parser_case(data: bytes) -> str:
    """``check_parser`` on ``data`` as bytes, bytearray and memoryview: all three must agree."""
    with fuzz_case():
        outcome = check_parser(data)
        assert check_parser(bytearray(data)) == outcome
        assert check_parser(memoryview(data)) == outcome
    return outcome


def decode_case(model: str, case: tuple[str, bytes], with_scan: bool) -> str:
    """``check_decode`` by the ``model`` codec, holding the seed's scan if ``with_scan``."""
    name, data = case
    scan = decoder_scan(name) if with_scan else (None, None)
    with fuzz_case():
        return check_decode(decoder(model), data, *scan)


def forged_size_case(case: tuple[str, bytes]) -> str:
    """``decode_case`` by the hyper codec: sizes outside the documented ranges must be refused. Allowed
    sizes are decoded only up to DECODED_PIXELS_LIMIT padded pixels (larger ones are left out)."""
    sizes = forged_size_fields(case[1])
    allowed = allowed_size(*sizes)
    assume(not allowed or sizes[2] * sizes[3] <= DECODED_PIXELS_LIMIT)
    outcome = decode_case("hyper", case, True)
    assert allowed or outcome != "image", f"decoded an image of {sizes} (height, width, padded)"
    return outcome


# --- mutations of real containers ------------------------------------------------------------------


def header_fields(data: bytes | bytearray) -> dict[str, tuple[int, int]]:
    """(offset, size) of each header field found in ``data``, located as the parser reads them (the
    name length and string count come from the data itself, however damaged)."""
    fields = {"magic": (0, 4), "version": (4, 1), "flags": (5, 1), "quality": (6, 4), "name_length": (10, 1)}
    if len(data) > 10:
        name_length = data[10]
        fields["name"] = (11, name_length)
        offset = 11 + name_length
        for label, size in (
            ("height", 2),
            ("width", 2),
            ("padded_height", 2),
            ("padded_width", 2),
            ("depth_fingerprint", 8),
            ("weights_fingerprint", 4),
            ("string_count", 1),
        ):
            fields[label] = (offset, size)
            offset += size
        if len(data) >= offset:
            count = data[offset - 1]
            fields["string_lengths"] = (offset, 4 * count)
            fields["crc"] = (offset + 4 * count, 4)
    return {
        label: (offset, size) for label, (offset, size) in fields.items() if 0 < size and offset + size <= len(data)
    }


def reseal(data: bytearray) -> bytearray:
    """Recompute the CRC where the (possibly damaged) header puts it, as a forger would."""
    if "crc" in (fields := header_fields(data)):
        offset = fields["crc"][0]
        crc = zlib.crc32(data[offset + 4 :], zlib.crc32(data[:offset]))
        data[offset : offset + 4] = crc.to_bytes(4, "little")
    return data


def _field_values(size: int) -> st.SearchStrategy[int]:
    """Boundary values of the format's ranges first, then anything that fits in the field."""
    top = (1 << (8 * size)) - 1
    edges = [0, 1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 255, 256, 2160, 3840, MAX_SIDE, MAX_SIDE + 1, top - 1, top]
    return st.one_of(st.sampled_from([value for value in edges if value <= top]), st.integers(0, top))


MODEL_NAMES = [b"hyper", b"hyper-pc", b"hyper-pc-zeros", b"no-such-model", b"HYPER", b"hyper\x00", b"\xe9"]


def _flip_bit(draw: Callable, data: bytearray) -> bytearray:
    if data:
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return data


def _write_byte(draw: Callable, data: bytearray) -> bytearray:
    if data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return data


def _truncate(draw: Callable, data: bytearray) -> bytearray:
    return data[: draw(st.integers(0, len(data)))]


def _insert(draw: Callable, data: bytearray) -> bytearray:
    position = draw(st.integers(0, len(data)))
    return data[:position] + draw(st.binary(min_size=1, max_size=64)) + data[position:]


def _delete(draw: Callable, data: bytearray) -> bytearray:
    position = draw(st.integers(0, len(data)))
    return data[:position] + data[position + draw(st.integers(1, 64)) :]


def _splice(draw: Callable, data: bytearray) -> bytearray:
    other = seed_bytes(draw(st.sampled_from(sorted(SEEDS))))
    return data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]


def _overwrite_field(draw: Callable, data: bytearray) -> bytearray:
    fields = header_fields(data)
    if fields:
        offset, size = fields[draw(st.sampled_from(sorted(fields)))]
        data[offset : offset + size] = draw(_field_values(min(size, 8))).to_bytes(size, "little")
    return data


def _rename_model(draw: Callable, data: bytearray) -> bytearray:
    """Another model name (registered, unknown, not ASCII, or any bytes) with its length byte."""
    if "name" not in (fields := header_fields(data)):
        return data
    offset, size = fields["name"]
    name = draw(st.one_of(st.sampled_from(MODEL_NAMES), st.binary(max_size=70)))
    data[fields["name_length"][0]] = len(name) & 0xFF
    return data[:offset] + name + data[offset + size :]


def _resize_image(draw: Callable, data: bytearray) -> bytearray:
    """A small image size with the padding the model needs: the header stays valid, the strings don't fit."""
    fields = header_fields(data)
    if "padded_width" in fields:
        height, width = draw(st.integers(1, 256)), draw(st.integers(1, 256))
        offset = fields["height"][0]
        for index, size in enumerate((height, width, -(-height // FACTOR) * FACTOR, -(-width // FACTOR) * FACTOR)):
            data[offset + 2 * index : offset + 2 * index + 2] = size.to_bytes(2, "little")
    return data


def _move_string_boundaries(draw: Callable, data: bytearray) -> bytearray:
    """The same payload cut into strings elsewhere: the lengths still add up, the strings are wrong."""
    fields = header_fields(data)
    if "crc" not in fields or "string_lengths" not in fields:
        return data
    offset, size = fields["string_lengths"]
    payload = len(data) - fields["crc"][0] - 4
    if payload < 0:
        return data
    cuts = sorted(draw(st.lists(st.integers(0, payload), min_size=size // 4 - 1, max_size=size // 4 - 1)))
    lengths = [end - start for start, end in zip([0, *cuts], [*cuts, payload], strict=True)]
    data[offset : offset + size] = b"".join(length.to_bytes(4, "little") for length in lengths)
    return data


def _payload_offset(data: bytearray) -> int | None:
    """Where the (possibly damaged) header puts the payload, if inside ``data``."""
    if "crc" not in (fields := header_fields(data)):
        return None
    return fields["crc"][0] + 4


def _damage_payload(draw: Callable, data: bytearray) -> bytearray:
    """A few bytes of the strings overwritten: the header stays intact."""
    start = _payload_offset(data)
    if start is not None and start < len(data):
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(start, len(data) - 1))] = draw(st.integers(0, 255))
    return data


STRING_CONTENTS = st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from([b"\x00", b"\xff", b"\x0f\x00\x00\x00", b"\xff\xff\xff\x7f"]), st.integers(0, 2048)).map(
        lambda pattern: pattern[0] * pattern[1]
    ),
)


def _replace_string(draw: Callable, data: bytearray) -> bytearray:
    """One string replaced by other bytes (random, or runs that the rANS decoder escapes on) of any
    length, its length field written to match."""
    start = _payload_offset(data)
    if start is None or start > len(data) or "string_lengths" not in header_fields(data):
        return data
    offset, size = header_fields(data)["string_lengths"]
    lengths = [int.from_bytes(data[at : at + 4], "little") for at in range(offset, offset + size, 4)]
    if sum(lengths) != len(data) - start:
        return data
    ends = [start + sum(lengths[: index + 1]) for index in range(len(lengths))]
    strings = [data[begin:end] for begin, end in zip([start, *ends], ends, strict=False)]
    strings[draw(st.integers(0, len(strings) - 1))] = draw(STRING_CONTENTS)
    lengths_field = b"".join(len(string).to_bytes(4, "little") for string in strings)
    return data[:offset] + lengths_field + data[offset + size : start] + b"".join(strings)


MUTATIONS = [
    _flip_bit,
    _write_byte,
    _truncate,
    _insert,
    _delete,
    _splice,
    _overwrite_field,
    _rename_model,
    _resize_image,
    _move_string_boundaries,
    _damage_payload,
    _replace_string,
]
#: For the decoder: mostly damage that leaves a parseable header, so that most cases reach the model.
DECODER_MUTATIONS = MUTATIONS + 4 * [_damage_payload, _replace_string, _resize_image, _move_string_boundaries]


@st.composite
def mutated_containers(
    draw: Callable, seed_names: list[str], resealed: float = 0.5, mutations: list[Callable] = MUTATIONS
) -> tuple[str, bytes]:
    """(seed name, 1 to 4 ``mutations`` of that seed's container), re-sealed with probability ``resealed``."""
    name = draw(st.sampled_from(seed_names))
    data = bytearray(seed_bytes(name))
    for mutation in draw(st.lists(st.sampled_from(mutations), min_size=1, max_size=4)):
        data = mutation(draw, data)
    if draw(st.floats(0, 1, exclude_max=True)) < resealed:
        data = reseal(data)
    return name, bytes(data)


SIDES = st.one_of(
    st.integers(0, 300),
    st.sampled_from([0, 1, 63, 64, 65, 2160, 3840, 4096, MAX_SIDE - 64, MAX_SIDE - 1, MAX_SIDE, MAX_SIDE + 1]),
    st.integers(0, 0xFFFF),
)


@st.composite
def forged_sizes(draw: Callable) -> tuple[str, bytes]:
    """(seed name, the seed's container with any image and padded size and a valid CRC)."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(seed_bytes(name))
    height, width = draw(SIDES), draw(SIDES)
    if draw(st.booleans()):  # the padding the model needs, as far as 16 bits can hold it
        padded = (min(-(-height // FACTOR) * FACTOR, 0xFFFF), min(-(-width // FACTOR) * FACTOR, 0xFFFF))
    else:
        padded = (draw(SIDES), draw(SIDES))
    offset = header_fields(data)["height"][0]
    data[offset : offset + 8] = b"".join(size.to_bytes(2, "little") for size in (height, width, *padded))
    return name, bytes(reseal(data))


def allowed_size(height: int, width: int, padded_height: int, padded_width: int) -> bool:
    """Whether docs/bitstream.md allows this image and padded size for a model of FACTOR."""
    return (
        1 <= height <= MAX_SIDE
        and 1 <= width <= MAX_SIDE
        and height * width <= MAX_PIXELS
        and all(
            size <= padded < size + FACTOR and padded % FACTOR == 0
            for size, padded in ((height, padded_height), (width, padded_width))
        )
    )


def forged_size_fields(data: bytes) -> tuple[int, int, int, int]:
    offset = header_fields(data)["height"][0]
    return tuple(int.from_bytes(data[offset + 2 * index : offset + 2 * index + 2], "little") for index in range(4))


# --- the tests: 60 to 400 cases each; bench/fuzz_decode.py runs them for long ----------------------

ANY_BYTES = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: MAGIC + bytes([FORMAT_VERSION]) + tail),
)
HYPER_SEEDS = sorted(name for name, seed in SEEDS.items() if seed.model == "hyper")
HYPER_PC_SEEDS = sorted(name for name, seed in SEEDS.items() if seed.model == "hyper-pc")
#: Whether the decoder holds the seed's scan: in 3 cases out of 4 (without it, a frame coded with the
#: scan stops at the first check).
HOLDS_SCAN = st.sampled_from([True, True, True, False])

#: Every property as (strategy, case): the tests below run each for a few hundred cases,
#: bench/fuzz_decode.py for as many as asked.
PARSER_PROPERTIES: dict[str, tuple[st.SearchStrategy, Callable[..., str]]] = {
    "parser, arbitrary bytes": (ANY_BYTES, parser_case),
    "parser, mutated containers": (mutated_containers(sorted(SEEDS)), lambda case: parser_case(case[1])),
}
DECODE_PROPERTIES: dict[str, tuple[st.SearchStrategy, Callable[..., str]]] = {
    "hyper decoder, mutated hyper containers": (
        st.tuples(mutated_containers(HYPER_SEEDS, 0.9, DECODER_MUTATIONS), HOLDS_SCAN),
        lambda case: decode_case("hyper", *case),
    ),
    "hyper-pc decoder, mutated hyper-pc containers": (
        st.tuples(mutated_containers(HYPER_PC_SEEDS, 0.9, DECODER_MUTATIONS), HOLDS_SCAN),
        lambda case: decode_case("hyper-pc", *case),
    ),
    "hyper decoder, forged image sizes": (forged_sizes(), forged_size_case),
}
DOCUMENTED = ("BitstreamError: ", "ScanMismatchError: ")

PARSER = settings(max_examples=400, deadline=None, database=None, phases=[Phase.generate, Phase.shrink])
DECODE = settings(max_examples=60, deadline=None, database=None, phases=[Phase.generate, Phase.shrink])


def test_corpus_is_small_and_decodes_with_the_current_weights():
    assert sorted(path.name for path in CORPUS.iterdir()) == sorted(SEEDS)
    assert sum(path.stat().st_size for path in CORPUS.iterdir()) < 100_000
    for name, seed in SEEDS.items():
        header = read_header(seed_bytes(name))
        expected = (seed.model, QUALITY, seed.height, seed.width, seed.model != "hyper" and not seed.with_scan)
        assert (header.model, header.quality, header.height, header.width, header.zeros_fallback) == expected
        outcome = decode_case(seed.model, (name, seed_bytes(name)), True)
        assert outcome == "image", f"{name} no longer decodes ({outcome}): rewrite the corpus with {WRITE_CORPUS}"


@PARSER
@given(ANY_BYTES)
def test_parser_on_arbitrary_bytes(data):
    outcome = parser_case(data)
    assert outcome.startswith(DOCUMENTED) or (outcome == "container" and data.startswith(MAGIC))


@PARSER
@given(PARSER_PROPERTIES["parser, mutated containers"][0])
def test_parser_on_mutated_containers(case):
    assert parser_case(case[1]).startswith((*DOCUMENTED, "container"))


def test_parser_refuses_buffers_that_are_not_flat_bytes():
    data = seed_bytes("hyper-64x64.pcic")
    words = memoryview(array.array("I", data[: len(data) // 4 * 4]))
    for buffer in (words, memoryview(data)[::2], memoryview(data * 2).cast("B", (2, len(data)))):
        with pytest.raises(BitstreamError, match="flat"):
            unpack(buffer)
        with pytest.raises(BitstreamError, match="flat"):
            read_header(buffer)


@DECODE
@given(DECODE_PROPERTIES["hyper decoder, mutated hyper containers"][0])
def test_hyper_decoder_on_mutated_containers(case):
    assert decode_case("hyper", *case).startswith((*DOCUMENTED, "image"))


@DECODE
@given(DECODE_PROPERTIES["hyper-pc decoder, mutated hyper-pc containers"][0])
def test_hyper_pc_decoder_on_mutated_containers(case):
    assert decode_case("hyper-pc", *case).startswith((*DOCUMENTED, "image"))


def test_forged_sizes_are_refused_before_the_image_is_allocated():
    for name in SEEDS:  # build the models first: only the cases may grow the peak RSS
        decode_case("hyper", (name, seed_bytes(name)), True)
    peak = peak_rss_mb()
    outcomes = []

    @DECODE
    @given(forged_sizes())
    def forged(case):
        outcomes.append(forged_size_case(case))

    forged()
    assert any(outcome.startswith(DOCUMENTED) for outcome in outcomes)
    assert peak_rss_mb() - peak < REFUSAL_RSS_GROWTH_MB


# --- regressions -------------------------------------------------------------------------------------


def test_forged_strings_too_short_for_the_image_do_not_crash_the_decoder():
    """A 256 x 256 header with empty strings and a valid CRC made CompressAI's rANS decoder read far past
    its buffer: the process died with SIGSEGV. Run in a child process so that a crash fails the test."""
    header = read_header(seed_bytes("hyper-64x64.pcic"))
    forged = pack(
        FrameHeader(**{**header.__dict__, "height": 256, "width": 256, "padded_height": 256, "padded_width": 256}),
        [b"", b""],
    )
    script = textwrap.dedent(
        """
        import sys
        import torch
        from pcic_ros.codec.api import Codec
        torch.set_num_threads(1)
        image = Codec("hyper", 1, device="cpu").decode(sys.stdin.buffer.read())
        print(image.shape, image.dtype)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], input=forged, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip() == "(256, 256, 3) uint8"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_latents_beyond_the_fixed_point_range_are_refused_as_bad_data(name):
    """A z string found by the fuzzer decodes to latents so large that the fixed-point hyper-synthesis
    raised FixedPointError (an ArithmeticError), which escaped Codec.decode."""
    header, (y_string, _) = unpack(seed_bytes(name))
    forged = pack(header, [y_string, bytes.fromhex("ffff0700000000080017")])
    with pytest.raises(BitstreamError, match="fixed-point value outgrew"), fuzz_case():
        decoder(SEEDS[name].model).decode(forged, *decoder_scan(name))


class _PaddingRecorder:
    """Stands in for CompressAI's coder: decodes what ``_ZeroPaddedDecoder`` hands over, once as it is
    and once followed by 0xff bytes, which keep a bypass chain going if the decoder ever reaches them."""

    name = "ans"

    def __init__(self, coder: object) -> None:
        self._coder = coder

    def decode_with_indexes(self, padded: bytes, indexes: list[int], *tables: object) -> list[int]:
        symbols = self._coder.decode_with_indexes(padded, indexes, *tables)
        assert self._coder.decode_with_indexes(padded + b"\xff" * 65536, indexes, *tables) == symbols
        return symbols


STRINGS = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from([b"\xff", b"\x0f\x00\x00\x00", b"\xff\xff\xff\x7f", b"\x00"]), st.integers(0, 200)).map(
        lambda pattern: pattern[0] * pattern[1]
    ),
)


@settings(max_examples=100, deadline=None, database=None)
@given(STRINGS, st.integers(1, 3000), st.booleans(), st.data())
def test_the_padding_covers_every_read_of_the_rans_decoder(string, symbols, bottleneck, data):
    model = decoder("hyper").model
    entropy_model = model.entropy_bottleneck if bottleneck else model.gaussian_conditional
    tables = (
        entropy_model._quantized_cdf.tolist(),
        entropy_model._cdf_length.reshape(-1).int().tolist(),
        entropy_model._offset.reshape(-1).int().tolist(),
    )
    count = len(tables[0])
    indexes = data.draw(
        st.one_of(
            st.lists(st.integers(0, count - 1), min_size=symbols, max_size=symbols),
            st.integers(0, count - 1).map(lambda index: [index] * symbols),
        )
    )
    padded = _ZeroPaddedDecoder(_PaddingRecorder(entropy_model.entropy_coder._coder))
    with fuzz_case():
        assert len(padded.decode_with_indexes(string, indexes, *tables)) == symbols
